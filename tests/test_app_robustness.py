"""The application's behaviour at its edges (issue 15), in real ``python app`` runs with stand-in
models: start-up failures exit 3 as the README says, SIGTERM ends with the final ERROR line, the
ERROR line is whole with its details on the lines before it, blank pixel data stop the run at intake
naming the series, and Holoscan's own log stays out of view unless ``-l DEBUG``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.application import required_models
from app_support import _big_stack, last_error_line, make_standin_models, run_app
from test_intake_support import copy_study

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    models, manifest = make_standin_models(tmp_path_factory.mktemp("standins"), names=required_models())
    return models, {"PDAC_LN_MODEL_MANIFEST": str(manifest)}


def test_input_that_is_a_file_exits_3(tmp_path, standins, tiny_study_dir):
    models, env = standins
    a_file = next((tiny_study_dir / "dicom" / "venous").glob("*.dcm"))
    out = tmp_path / "out"
    done = run_app(["-i", str(a_file), "-o", str(out), "-m", str(models)], env=env)
    assert done.returncode == 3, done.stderr[-2000:]
    assert last_error_line(done) == (f"ERROR: input is a file, not a folder: {a_file}; give the folder that holds "
                                     "the study's DICOM files")
    assert not out.exists()


@pytest.mark.parametrize("where", ["under a file", "read-only"])
def test_output_that_cannot_be_written_exits_3(tmp_path, standins, tiny_study_dir, where):
    models, env = standins
    if where == "under a file":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "out"
    else:
        if os.geteuid() == 0:  # root writes through permission bits: use a file system that refuses
            out = Path("/proc/lnmet-test-output")
        else:
            ro = tmp_path / "read_only"
            ro.mkdir()
            ro.chmod(0o555)
            out = ro / "out"
    done = run_app(["-i", str(tiny_study_dir / "dicom"), "-o", str(out), "-m", str(models)], env=env)
    assert done.returncode == 3, done.stderr[-2000:]
    assert last_error_line(done).startswith(f"ERROR: output folder cannot be written: {out}")
    assert not out.exists()


def test_missing_phase_error_line_is_whole_and_holoscan_log_hidden(tmp_path, standins, tiny_study_dir):
    """The final line states the whole problem (it used to end at "What was considered:"); the
    series considered are logged before it; Holoscan/GXF INFO lines and the CUDA-driver warning are
    not shown, and ``-l DEBUG`` shows Holoscan's log again."""
    models, env = standins
    venous_only = tmp_path / "venous_only"
    shutil.copytree(tiny_study_dir / "dicom" / "venous", venous_only / "venous")
    done = run_app(["-i", str(venous_only), "-o", str(tmp_path / "o1"), "-m", str(models)], env=env)
    assert done.returncode == 1
    line = last_error_line(done)
    assert line.startswith("ERROR: PhaseSelectionError: study ") and line.endswith("single_phase in app.yaml")
    before = done.stderr[: done.stderr.rindex("ERROR: ")]
    assert "details:" in before and "every series considered and why" in before and "candidate series" in before
    for noise in ("[info]", "[warning]", "CUDA driver", "gxf_executor"):
        assert noise not in done.stderr, f"{noise!r} shown without -l DEBUG"
    debug = run_app(["-i", str(venous_only), "-o", str(tmp_path / "o2"), "-m", str(models), "-l", "DEBUG"], env=env)
    assert debug.returncode == 1 and "[info]" in debug.stderr


def test_blank_pixel_data_stop_at_intake_naming_the_series(tmp_path, standins, tiny_study_dir):
    models, env = standins
    copy_study(tiny_study_dir / "dicom", tmp_path / "blank",
               lambda ds, k: setattr(ds, "PixelData", bytes(len(ds.PixelData))))
    done = run_app(["-i", str(tmp_path / "blank"), "-o", str(tmp_path / "out"), "-m", str(models)], env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    line = last_error_line(done)
    assert line.startswith("ERROR: PixelValueError: series ") and "every voxel is -1024 HU" in line
    assert "stage 'phase_registration' started" not in done.stderr  # refused at intake, before any computation
    assert not (tmp_path / "out").exists()


def test_sigterm_ends_with_the_error_line(tmp_path, standins, tiny_study_dir):
    """SIGTERM while the graph runs: exit 143, the final ``ERROR: stopped by SIGTERM during stage ...``
    line, the run summary, and no output folder left behind."""
    models, env = standins
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PDAC_LN_", "HOLOSCAN_"))}
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app"), "-i", str(tiny_study_dir / "dicom"), "-o",
                                 str(out), "-m", str(models)], stdout=subprocess.DEVNULL, stderr=err,
                                env={**base, **env}, cwd=ROOT, preexec_fn=_big_stack)
        try:
            deadline = time.monotonic() + 300
            while "stage 'study_loader' started" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    text = log.read_text()
    assert rc == 128 + signal.SIGTERM, text[-2000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("ERROR: stopped by SIGTERM during stage ") and last.endswith("no outputs written")
    assert "run FAILED" in text
    assert not out.exists()


def test_main_in_process_restores_the_callers_signal_handlers(tmp_path, tiny_study_dir):
    """``main`` runs inside other processes too (the cohort's Ray workers): the handlers it sets
    for SIGTERM/SIGINT must not outlive the call."""
    from app.application import main

    def callers_handler(signum, frame):  # pragma: no cover - never delivered
        pass

    a_file = next((tiny_study_dir / "dicom" / "venous").glob("*.dcm"))
    before = {s: signal.signal(s, callers_handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = main(["app", "-i", str(a_file), "-o", str(tmp_path / "out"), "-m", str(tmp_path)])
        assert code == 3
        assert signal.getsignal(signal.SIGTERM) is callers_handler
        assert signal.getsignal(signal.SIGINT) is callers_handler
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_no_log_line_follows_the_final_error_line_of_a_stop():
    """A stop's final ERROR line stays last although another thread keeps logging (the graph's
    worker thread may still be running an operator when the main thread reports the stop)."""
    script = (
        "import logging, os, sys, threading, time\n"
        "logging.basicConfig(stream=sys.stderr, level=logging.INFO)\n"
        "from app.application import _silence_logging\n"
        "def chatter():\n"
        "    while True:\n"
        "        logging.getLogger('operators.phase_selector').info('candidate series ' + 'x' * 200)\n"
        "threading.Thread(target=chatter, daemon=True).start()\n"
        "time.sleep(0.3)\n"
        "_silence_logging()\n"
        "print('ERROR: stopped by SIGTERM', file=sys.stderr, flush=True)\n"
        "time.sleep(0.3)\n"
        "os._exit(143)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          preexec_fn=_big_stack)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 143 and "candidate series" in done.stderr, done.stderr[-500:]
    assert lines[-1] == "ERROR: stopped by SIGTERM"
