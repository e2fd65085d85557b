"""A real OHIF viewer in a real browser, for the viewer acceptance test (tests/test_viewer_ohif.py).

Three loopback pieces, each started and stopped by the test, every wait bounded:

- Orthanc with its DICOMweb plugin (``scripts/orthanc_server.sh`` with ``ORTHANC_DICOMWEB=1``);
- :class:`ViewerServer`: the built OHIF viewer of the npm package ``@ohif/app`` (its ``dist/``,
  installed by ``scripts/install_ohif.sh``) served at the root of its own port (the build is compiled
  for the base path ``/``), ``index.html`` for every unknown path (the viewer's client-side routes),
  an ``app-config.js`` whose data source is Orthanc's DICOMweb, and ``/dicom-web/`` forwarded to
  Orthanc, so that the viewer and its data share one origin;
- :class:`Browser`: Debian's headless ``chromium`` driven over the Chrome DevTools Protocol with a
  small client on ``websocket-client``: it navigates, evaluates JavaScript, clicks like a user
  (``Input.dispatchMouseEvent``), takes screenshots and records every console message and uncaught
  exception of the page.

Nothing here knows about the project's outputs; the test decides what to upload and to assert.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import itertools
import json
import os
import shutil
import signal
import socketserver
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OHIF_VERSION = "3.13.2"  # keep equal to scripts/install_ohif.sh
OHIF_DIST = ROOT / "build" / "ohif" / f"app-{OHIF_VERSION}" / "dist"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
# Flags the viewer needs in a headless container: WebGL through SwiftShader (no GPU), no sandbox
# (root in CI), no first-run UI, nothing fetched from outside.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars")


class ViewerTestError(RuntimeError):
    """A step of the browser session failed; the message says which and what was seen."""


def chromium_path() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


# ------------------------------------------------------------------------------------------ viewer
def app_config_js(data_source_name: str = "orthanc") -> str:
    """The viewer's ``app-config.js``: one DICOMweb data source at ``<origin>/dicom-web`` (the
    forwarded Orthanc), no confirmation prompts (the SEG and SR load when opened), no
    investigational-use dialog."""
    return f"""window.config = {{
  name: 'lnmet-acceptance-test',
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  showLoadingIndicator: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  strictZSpacingForVolumeViewport: true,
  maxNumberOfWebWorkers: 2,
  disableConfirmationPrompts: true,
  investigationalUseDialog: {{ option: 'never' }},
  defaultDataSourceName: '{data_source_name}',
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: '{data_source_name}',
      configuration: {{
        friendlyName: 'Orthanc on loopback',
        name: '{data_source_name}',
        wadoUriRoot: window.location.origin + '/dicom-web',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: {{ enabled: true }},
      }},
    }},
  ],
}};
"""


class _ViewerHandler(http.server.SimpleHTTPRequestHandler):
    """Static files of the viewer, ``index.html`` for unknown paths, ``/dicom-web`` to Orthanc."""

    server: "_ViewerHTTPServer"
    protocol_version = "HTTP/1.1"

    def __init__(self, request, client_address, server):
        super().__init__(request, client_address, server, directory=str(server.dist))

    def log_message(self, fmt, *args):  # noqa: D102 - keep pytest output quiet
        self.server.log.append(fmt % args)

    # -- forwarding
    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("connection", "keep-alive", "accept-encoding", "content-length")}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            self.send_error(502, f"Orthanc did not answer: {exc}")
            return
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _is_forwarded(self) -> bool:
        return self.path == "/dicom-web" or self.path.startswith("/dicom-web/")

    def do_POST(self):  # noqa: N802 - http.server API
        if self._is_forwarded():
            return self._forward()
        self.send_error(405)

    def do_GET(self):  # noqa: N802
        if self._is_forwarded():
            return self._forward()
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/app-config.js":
            data = self.server.app_config.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/javascript")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)
            return
        local = Path(self.translate_path(path))
        if path == "/" or not local.exists():
            self.path = "/index.html"  # the viewer's own routes (/viewer, /segmentation, ...)
        return super().do_GET()


class _ViewerHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, dist: Path, orthanc_port: int, app_config: str):
        self.dist = dist
        self.orthanc_port = orthanc_port
        self.app_config = app_config
        self.log: list[str] = []
        super().__init__(("127.0.0.1", 0), _ViewerHandler)


class ViewerServer:
    """The OHIF build served on a free loopback port (``with ViewerServer(dist, port) as v: v.url``)."""

    def __init__(self, dist: Path, orthanc_http_port: int):
        if not (Path(dist) / "index.html").is_file():
            raise ViewerTestError(f"{dist}: no index.html; run scripts/install_ohif.sh")
        self._server = _ViewerHTTPServer(Path(dist), int(orthanc_http_port), app_config_js())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="ohif-viewer-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "ViewerServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# ----------------------------------------------------------------------------------------- browser
@dataclass
class PageLog:
    """What the page said: console messages (level, text) and uncaught exceptions (text)."""

    console: list[tuple[str, str]] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)

    def errors(self) -> list[str]:
        return [text for level, text in self.console if level in ("error", "assert")] + self.exceptions


class Browser:
    """Headless chromium with one page, driven over the DevTools protocol.

    ``with Browser(profile_dir) as b: b.navigate(url); b.wait_for("js expression", 60, "what")``.
    Every call has a time limit; leaving the ``with`` block ends chromium (TERM, then KILL).
    """

    def __init__(self, profile_dir: Path, width: int = 1600, height: int = 1000, start_timeout_s: float = 60):
        import websocket  # websocket-client (requirements.txt)

        self._websocket = websocket
        exe = chromium_path()
        if exe is None:
            raise ViewerTestError("chromium is not installed (Debian package 'chromium')")
        self.profile = Path(profile_dir)
        self.profile.mkdir(parents=True, exist_ok=True)
        (self.profile / "user-data" / "DevToolsActivePort").unlink(missing_ok=True)  # a stale port
        self.log = PageLog()
        self._ids = itertools.count(1)
        self._events: list[dict] = []
        self._stderr = open(self.profile / "chromium.log", "wb")
        self._proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--window-size={width},{height}", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={self.profile / 'user-data'}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self._stderr, start_new_session=True)
        try:
            port = self._devtools_port(start_timeout_s)
            page = self._page_target(port, start_timeout_s)
            self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30,
                                                   suppress_origin=True)
            for method in ("Page.enable", "Runtime.enable", "Log.enable"):
                self.call(method)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except Exception:
            self.close()
            raise

    # -- start-up
    def _devtools_port(self, timeout_s: float) -> int:
        marker = self.profile / "user-data" / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ViewerTestError(f"chromium exited with code {self._proc.returncode} at start-up "
                                      f"(log: {self.profile / 'chromium.log'})")
            if marker.is_file():
                lines = marker.read_text().split()
                if lines and lines[0].isdigit():
                    return int(lines[0])
            time.sleep(0.1)
        raise ViewerTestError(f"chromium did not open its DevTools port within {timeout_s:.0f} s")

    def _page_target(self, port: int, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
                    pages = [t for t in json.loads(resp.read()) if t.get("type") == "page"]
                if pages:
                    return pages[0]
            except OSError:
                pass
            time.sleep(0.2)
        raise ViewerTestError(f"chromium showed no page target within {timeout_s:.0f} s")

    # -- protocol
    def _record(self, message: dict) -> None:
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.log.console.append((params.get("type", "log"), text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.log.exceptions.append(f"{details.get('text', '')} {exc.get('description', '')}".strip())
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.log.console.append((entry.get("level", "info"), f"[{entry.get('source')}] {entry.get('text', '')}"))
        self._events.append(message)

    def call(self, method: str, params: dict | None = None, timeout_s: float = 30) -> dict:
        """Send one command and wait (at most ``timeout_s``) for its answer; events seen meanwhile
        are recorded in :attr:`log`."""
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ViewerTestError(f"DevTools command {method} got no answer within {timeout_s:.0f} s")
            self._ws.settimeout(left)
            try:
                message = json.loads(self._ws.recv())
            except self._websocket.WebSocketTimeoutException as exc:
                raise ViewerTestError(f"DevTools command {method} got no answer within {timeout_s:.0f} s") from exc
            if message.get("id") == ident:
                if "error" in message:
                    raise ViewerTestError(f"DevTools command {method} failed: {message['error']}")
                return message.get("result", {})
            self._record(message)

    def evaluate(self, expression: str, timeout_s: float = 30) -> Any:
        """Value of a JavaScript expression in the page (promises awaited, result as JSON)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout_s=timeout_s)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise ViewerTestError(f"JavaScript failed: {details.get('exception', {}).get('description', details)}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
        """Poll a JavaScript expression until it is truthy; its value, or an error naming ``what``."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise ViewerTestError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(poll_s)

    def navigate(self, url: str, before_load_js: str | None = None) -> None:
        if before_load_js:
            self.call("Page.addScriptToEvaluateOnNewDocument", {"source": before_load_js})
        self.call("Page.navigate", {"url": url})

    def click(self, selector: str, count: int = 1) -> None:
        """Click (``count`` 2: double-click) the centre of the first element matching ``selector``,
        with real mouse events."""
        rect = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        if rect is None:
            raise ViewerTestError(f"nothing on the page matches {selector!r}")
        x, y = rect
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                self.call("Input.dispatchMouseEvent",
                          {"type": kind, "x": x, "y": y, "button": "left", "clickCount": n})

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"}, timeout_s=60)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def drain(self, seconds: float) -> None:
        """Read the page's events for ``seconds`` (console messages arrive between commands)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._ws.settimeout(left)
            try:
                self._record(json.loads(self._ws.recv()))
            except self._websocket.WebSocketTimeoutException:
                return

    # -- end
    def close(self) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        self._stderr.close()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
