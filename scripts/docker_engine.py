#!/usr/bin/env python
"""A Docker engine for building and running the MAP image on a plain Debian host.

Used by ``scripts/build_map_image.py`` and ``tests/test_map_image.py``:

* :func:`docker_client` is Debian's own client, ``/usr/bin/docker`` (package ``docker.io``), called by
  its full path on purpose: machines of this project also have ``/usr/local/bin/docker`` (version 28,
  no buildx plugin) first on PATH, which refuses BuildKit builds, and without BuildKit a Dockerfile
  with ``RUN --mount`` does not build. Debian's client with ``DOCKER_BUILDKIT=1`` builds through the
  daemon's own BuildKit and resolves a ``FROM`` image that exists only locally.
* :func:`install_host_tools` installs ``docker.io`` and ``debootstrap`` with apt where they are
  missing (root, or passwordless sudo).
* :func:`docker_engine` uses the engine that answers, or starts ``dockerd`` for the time of a
  ``with`` block and stops it afterwards. The daemon it starts has no bridge network and touches no
  iptables rules: builds and containers run with ``--network none`` (nothing in them reaches a
  network), and it listens only on its unix socket.

``python scripts/docker_engine.py check`` says whether an engine can be had here, and why not.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

DEBIAN_CLIENT = Path("/usr/bin/docker")
DOCKERD = Path("/usr/sbin/dockerd")
HOST_PACKAGES = {"docker.io": DEBIAN_CLIENT, "debootstrap": Path("/usr/sbin/debootstrap")}
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 60


class DockerUnavailable(RuntimeError):
    """No Docker engine can be used here; the message says why."""


@dataclass
class Engine:
    """The engine in use: the client to call and whether this process started the daemon."""

    client: str
    started: bool
    log: Path | None = None

    def env(self) -> dict[str, str]:
        """Environment for client calls: BuildKit on (``RUN --mount`` needs it)."""
        return {**os.environ, "DOCKER_BUILDKIT": "1"}

    def run(self, *args: str, check: bool = True, timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
        """``docker ARGS`` with this engine's client; output captured as text unless told otherwise."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        done = subprocess.run([self.client, *args], env=self.env(), timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            err = done.stderr if isinstance(done.stderr, str) else ""
            raise RuntimeError(f"docker {' '.join(args[:3])} ... failed (exit {done.returncode}): {err.strip()[-2000:]}")
        return done


def root_prefix() -> list[str] | None:
    """[] as root, ["sudo", "-n"] where passwordless sudo works, else None."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def install_host_tools(log=print) -> None:
    """Install docker.io and debootstrap with apt where missing. Raises DockerUnavailable."""
    missing = [pkg for pkg, path in HOST_PACKAGES.items() if not path.exists()]
    if not missing:
        return
    sudo = root_prefix()
    if sudo is None:
        raise DockerUnavailable(f"{', '.join(missing)} not installed and no root or passwordless sudo to install them")
    log(f"[docker] installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        done = subprocess.run([*sudo, *cmd], capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            raise DockerUnavailable(f"could not install {' '.join(missing)}: {done.stderr.strip()[-1000:]}")


def docker_client() -> str:
    """Debian's docker client (see the module docstring). Raises DockerUnavailable."""
    if not DEBIAN_CLIENT.is_file():
        raise DockerUnavailable(f"{DEBIAN_CLIENT} not found (Debian package docker.io)")
    return str(DEBIAN_CLIENT)


def engine_answers(client: str) -> bool:
    """True when a daemon answers on the default socket."""
    try:
        done = subprocess.run([client, "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def _start_dockerd(client: str, state_dir: Path) -> subprocess.Popen:
    sudo = root_prefix()
    if sudo is None:
        raise DockerUnavailable("no Docker engine answers and starting dockerd needs root or passwordless sudo")
    if not DOCKERD.is_file():
        raise DockerUnavailable(f"{DOCKERD} not found (Debian package docker.io)")
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "dockerd.log"
    cmd = [*sudo, str(DOCKERD), "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
           "--pidfile", str(state_dir / "dockerd.pid")]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise DockerUnavailable(f"dockerd exited with {proc.returncode}: " + " | ".join(tail))
        if engine_answers(client):
            return proc
        time.sleep(1)
    _stop_dockerd(proc)
    raise DockerUnavailable(f"dockerd did not answer within {START_TIMEOUT_S} s (log: {log_path})")


def _stop_dockerd(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # dockerd stops its containerd itself; the group only if it hangs
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@contextmanager
def docker_engine(state_dir: Path, install: bool = True, keep: bool = False, log=print) -> Iterator[Engine]:
    """An engine for the ``with`` block: the one that answers, else a dockerd started here and
    stopped at the end (unless ``keep``). Raises DockerUnavailable, saying why."""
    if install:
        install_host_tools(log)
    client = docker_client()
    if engine_answers(client):
        yield Engine(client, started=False)
        return
    log("[docker] no engine answers: starting dockerd (no bridge network, no iptables)")
    proc = _start_dockerd(client, state_dir)
    try:
        yield Engine(client, started=True, log=state_dir / "dockerd.log")
    finally:
        if keep:
            log(f"[docker] dockerd left running (pid {proc.pid}); stop it with: kill {proc.pid}")
        else:
            _stop_dockerd(proc)


def main(argv: list[str]) -> int:
    if argv[:1] != ["check"]:
        print(__doc__)
        return 2
    root = Path(__file__).resolve().parent.parent
    try:
        with docker_engine(root / "build" / "docker", install=False) as engine:
            version = engine.run("version", "--format", "{{.Server.Version}}").stdout.strip()
            print(f"Docker engine {version} usable ({'started here' if engine.started else 'already running'})")
    except DockerUnavailable as exc:
        print(f"no Docker engine: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
