"""The MONAI Deploy application: start-up checks, the operator graph, progress and the summary.

Graph (ports in each operator module's docstring)::

    StudyLoader -> PhaseSelector -> SeriesToVolume -> OrganSource -> PhaseRegistration -> OrganSegmentation
      -> AttentionMap -> LNSegmentation -> LNIdentification -> PDACSegmentation -> PatientClassifier
      -> QualityGate -> SEGBuilder / SRBuilder / PDFReportBuilder / ResultsJSONBuilder -> OutputPublisher

The quality gate (app.yaml ``quality_gate``) withholds the patient-level decision when the scan is
outside what the models know ("not assessable"); that is a result, not a failure: exit status 0.

Run: ``python app -i INPUT -o OUTPUT -m MODELS [-l DEBUG]`` or with the ``HOLOSCAN_*`` variables.
Before the graph runs, :mod:`app.startup` validates app.yaml, verifies every model against
``model_manifest.json``, checks the input/output folders and picks the device. Each operator's
``compute`` is timed (one log line per stage, :mod:`lnmet.timing`) and a summary with the total
time and the peak memory ends the run.

Exit status: 0 success; 1 the study could not be processed (bad input, missing phase, an operator
failed, or an operator never ran); 2 bad command-line arguments; 3 a start-up check failed (setting,
model, input/output path: an input that is missing, a file or empty, an output that is a file or
cannot be written); 128 + the signal number when stopped by SIGTERM (143) or SIGINT (130). On
failure the last line on stderr is ``ERROR: <what and where>``, whole, on one line; details (e.g.
every series phase selection considered) are logged on the lines before it. The output folder is
left as it was (the publisher writes all outputs atomically at the end; an output folder that the
run created is removed again; a stop during publishing waits for the publisher to finish or roll back).

Logging: the application's own lines at INFO (``-l`` sets the level); Holoscan's and GXF's own log
(INFO lines, the CUDA-driver warning on machines without a GPU, and their echo of an operator's
exception, which the application reports itself) only with ``-l DEBUG`` or ``HOLOSCAN_LOG_LEVEL``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from holoscan.conditions import CountCondition
from monai.deploy.core import Application, ConditionType, Operator, parse_args

from app.startup import StartupError, StartupState, check_input, check_output, run_startup_checks
from lnmet import timing
from lnmet.types import ModelInfo

logger = logging.getLogger(__name__)

TIMINGS_ENV = "PDAC_LN_TIMINGS"  # optional: write the stage timings as JSON to this path (benchmarks)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STARTUP = 0, 1, 2, 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # exit status 128 + signal number, with the final ERROR line
PUBLISHER = "output_publisher"
PUBLISH_WAIT_S = 60.0  # a stop during publishing waits this long for the publisher to finish or roll back


# --------------------------------------------------------------------------------------------
# Timing of every operator
# --------------------------------------------------------------------------------------------

_TIMED: dict[type, type] = {}
_RUNNING: set[str] = set()  # operators whose compute is running now (to name them when stopped)
_RUNNING_LOCK = threading.Lock()


def timed_operator(cls: type) -> type:
    """A subclass of the operator class whose ``compute`` runs inside :func:`lnmet.timing.stage`.

    Holoscan calls ``compute`` through the class, so the timing wraps it by subclassing (same
    name, docstring and ports) rather than by patching instances.
    """
    if cls not in _TIMED:
        def compute(self: Any, op_input: Any, op_output: Any, context: Any) -> None:
            with _RUNNING_LOCK:
                _RUNNING.add(self.name)
            try:
                with timing.stage(self.name, log=logger):
                    cls.compute(self, op_input, op_output, context)
            finally:
                with _RUNNING_LOCK:
                    _RUNNING.discard(self.name)

        _TIMED[cls] = type(cls.__name__, (cls,), {
            "compute": compute, "__doc__": cls.__doc__, "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        })
    return _TIMED[cls]


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------

@dataclass
class Node:
    """One operator of the graph.

    ``kwargs(state)`` gives the keyword arguments the app can offer the operator; only those its
    constructor accepts are passed (operators take what they need: ``settings``, ``device``, model
    paths...). ``models`` names the models it needs (checked against the manifest at start).
    """

    name: str
    module: str
    cls: str
    kwargs: Callable[[StartupState], dict[str, Any]] = lambda state: {}
    models: tuple[str, ...] = ()
    source: bool = False  # no upstream operator: runs once (CountCondition)


@dataclass
class Flow:
    src: str
    dst: str
    ports: set[tuple[str, str]] = field(default_factory=set)


def _load_class(node: Node) -> type:
    """The operator class of a node."""
    return getattr(importlib.import_module(node.module), node.cls)


def _accepted_kwargs(cls: type, offered: dict[str, Any]) -> dict[str, Any]:
    """The offered keyword arguments that ``cls.__init__`` declares by name (an operator's
    ``**kwargs`` go to the SDK's Operator, so nothing is passed through them)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in offered.items() if k in params}


def _common(state: StartupState) -> dict[str, Any]:
    return {"settings": state.settings, "device": state.device}


def _with_model(name: str) -> Callable[[StartupState], dict[str, Any]]:
    """Settings, device and the verified file of model ``name``."""
    return lambda st: {**_common(st), "model_path": st.models[name].file}


def _reported_models(state: StartupState) -> list[ModelInfo]:
    """Every verified model, as the outputs report it (file relative to the models folder)."""
    return [replace(info, file=f"{info.name}/{Path(info.file).name}") for info in state.models.values()]


def _writer(key: str) -> Callable[[StartupState], dict[str, Any]]:
    """A builder, enabled by app.yaml ``outputs.<key>``."""
    return lambda st: {**_common(st), "enabled": st.settings.outputs.get(key, True)}


ORGAN_MODEL, LN_SEG_MODEL, PDAC_MODEL = "organ_seg", "ln_seg", "pdac_seg"
LN_CLS_MODEL, PATIENT_MODEL = "ln_cls", "patient_cls"


def _working_spacing(state: StartupState) -> dict[str, Any]:
    """The working grid's spacing is the organ model's (paper: 0.68 x 0.68 x 0.80 mm)."""
    info = state.models.get(ORGAN_MODEL)
    spacing = info.metadata.get("spacing_mm") if info else None
    return {"target_spacing_mm": tuple(float(v) for v in spacing)} if spacing else {}


def _nodes() -> list[Node]:
    """The graph's operators, in data-flow (topological) order."""
    return [
        Node("study_loader", "operators.study_loader", "StudyLoaderOperator",
             lambda st: {"input_folder": st.input_path}, source=True),
        Node("phase_selector", "operators.phase_selector", "PhaseSelectorOperator", _common),
        Node("series_to_volume", "operators.series_to_volume", "SeriesToVolumeOperator", _common),
        Node("organ_source", "operators.organ_source", "OrganSourceOperator", _common),
        Node("phase_registration", "operators.phase_registration", "PhaseRegistrationOperator",
             lambda st: {**_common(st), **_working_spacing(st)}),
        Node("organ_segmentation", "operators.organ_segmentation", "OrganSegmentationOperator",
             _with_model(ORGAN_MODEL), models=(ORGAN_MODEL,)),
        Node("attention_map", "operators.attention_map", "AttentionMapOperator", _common),
        Node("ln_segmentation", "operators.ln_segmentation", "LNSegmentationOperator",
             _with_model(LN_SEG_MODEL), models=(LN_SEG_MODEL,)),
        Node("ln_identification", "operators.ln_identification", "LNIdentificationOperator",
             _with_model(LN_CLS_MODEL), models=(LN_CLS_MODEL,)),
        Node("pdac_segmentation", "operators.pdac_segmentation", "PDACSegmentationOperator",
             _with_model(PDAC_MODEL), models=(PDAC_MODEL,)),
        Node("patient_classifier", "operators.patient_classifier", "PatientClassifierOperator",
             lambda st: {**_with_model(PATIENT_MODEL)(st), "models": _reported_models(st)}, models=(PATIENT_MODEL,)),
        Node("quality_gate", "operators.quality_gate", "QualityGateOperator", _common),
        Node("seg_builder", "operators.seg_builder", "SEGBuilderOperator", _writer("seg")),
        Node("sr_builder", "operators.sr_builder", "SRBuilderOperator", _writer("sr")),
        Node("pdf_report_builder", "operators.pdf_report_builder", "PDFReportBuilderOperator", _writer("pdf")),
        Node("results_json_builder", "operators.results_json_builder", "ResultsJSONBuilderOperator",
             _writer("json")),
        Node("output_publisher", "operators.output_publisher", "OutputPublisherOperator",
             lambda st: {"output_folder": st.output_path}),
    ]


def _flows() -> list[Flow]:
    """The graph's edges (source port -> destination port)."""
    reg = {("registered_phases", "registered_phases")}
    return [
        Flow("study_loader", "phase_selector", {("dicom_series", "dicom_series")}),
        Flow("phase_selector", "series_to_volume", {("phase_selection", "phase_selection")}),
        # The organ source (app.yaml organ_source) is read and checked before registration and passes
        # the volumes on, so that an unusable site segmentation stops the run before minutes of work.
        Flow("study_loader", "organ_source", {("dicom_series", "dicom_series")}),
        Flow("series_to_volume", "organ_source",
             {("venous_volume", "venous_volume"), ("arterial_volume", "arterial_volume")}),
        Flow("organ_source", "phase_registration",
             {("venous_volume", "venous_volume"), ("arterial_volume", "arterial_volume")}),
        Flow("phase_registration", "organ_segmentation", reg),
        Flow("organ_source", "organ_segmentation", {("site_organs", "site_organs")}),
        Flow("organ_segmentation", "attention_map", {("organs_working", "organs_working")}),
        Flow("phase_registration", "ln_segmentation", reg),
        Flow("attention_map", "ln_segmentation", {("attention", "attention")}),
        Flow("phase_registration", "ln_identification", reg),
        Flow("ln_segmentation", "ln_identification", {("ln_probability", "ln_probability")}),
        Flow("organ_segmentation", "ln_identification", {("organs", "organs")}),
        Flow("attention_map", "ln_identification", {("attention", "attention")}),
        Flow("phase_registration", "pdac_segmentation", reg),
        Flow("organ_segmentation", "pdac_segmentation", {("organs_working", "organs_working")}),
        Flow("phase_registration", "patient_classifier", reg),
        Flow("pdac_segmentation", "patient_classifier", {("pdac", "pdac"), ("pdac_working", "pdac_working"),
                                                         ("tumour_selection", "tumour_selection")}),
        Flow("ln_identification", "patient_classifier", {("ln_findings", "ln_findings")}),
        Flow("organ_segmentation", "patient_classifier", {("organ_sources", "organ_sources")}),
        Flow("patient_classifier", "quality_gate", {("analysis_results", "analysis_results")}),
        Flow("phase_registration", "quality_gate", reg),
        Flow("organ_segmentation", "quality_gate", {("organs_working", "organs_working")}),
        Flow("attention_map", "quality_gate", {("attention", "attention")}),
        Flow("pdac_segmentation", "quality_gate", {("pdac_working", "pdac_working")}),
        Flow("quality_gate", "seg_builder", {("analysis_results", "analysis_results")}),
        Flow("quality_gate", "sr_builder", {("analysis_results", "analysis_results")}),
        Flow("quality_gate", "pdf_report_builder", {("analysis_results", "analysis_results")}),
        Flow("quality_gate", "results_json_builder", {("analysis_results", "analysis_results")}),
        Flow("seg_builder", "sr_builder", {("seg_dataset", "seg_dataset")}),
        Flow("seg_builder", "results_json_builder", {("seg_dataset", "seg_dataset")}),
        Flow("sr_builder", "results_json_builder", {("sr_dataset", "sr_dataset")}),
        Flow("pdf_report_builder", "results_json_builder", {("pdf_document", "pdf_document")}),
        Flow("seg_builder", "output_publisher", {("seg_dataset", "seg_dataset")}),
        Flow("sr_builder", "output_publisher", {("sr_dataset", "sr_dataset")}),
        Flow("pdf_report_builder", "output_publisher", {("pdf_document", "pdf_document")}),
        Flow("results_json_builder", "output_publisher", {("results_document", "results_document")}),
    ]


def required_models() -> tuple[str, ...]:
    """The models the graph's operators need (each must be in the manifest at start)."""
    names: list[str] = []
    for node in _nodes():
        names.extend(m for m in node.models if m not in names)
    return tuple(names)


def build_graph(app: Application, state: StartupState) -> list[Operator]:
    """Create the operators and connect them; returns them in data-flow order."""
    ops: dict[str, Operator] = {}
    for node in _nodes():
        cls = _load_class(node)
        args = (CountCondition(app, 1),) if node.source else ()
        kwargs = _accepted_kwargs(cls, node.kwargs(state))
        ops[node.name] = timed_operator(cls)(app, *args, name=node.name, **kwargs)
    for flow in _flows():
        app.add_flow(ops[flow.src], ops[flow.dst], flow.ports)
        for _, in_port in flow.ports:
            _require_message(ops[flow.dst], in_port)
    logger.info("graph: %s", " -> ".join(ops))
    return list(ops.values())


def _require_message(op: Operator, port: str) -> None:
    """Make a connected input that the operator declared optional (ConditionType.NONE) wait for its
    message: otherwise the operator may run before a slower upstream branch has delivered it."""
    spec = op.spec.inputs.get(port)
    if spec is None:
        return
    kinds = [c[0] for c in spec.conditions]
    if ConditionType.NONE in kinds and ConditionType.MESSAGE_AVAILABLE not in kinds:
        spec.condition(ConditionType.MESSAGE_AVAILABLE, min_size=1)


class PDACLNMetApp(Application):
    """LN metastasis prediction for PDAC from arterial + venous CT (Zheng et al., IJCV 2024).

    Research use only; not for clinical decisions.
    """

    def __init__(self, *args: Any, state: StartupState | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state = state
        self.operators_built: list[Operator] = []

    def compose(self) -> None:
        if self.state is None:  # run directly (PDACLNMetApp().run()): do the start-up checks here
            ctx = Application.init_app_context(self.argv)
            self.state = run_startup_checks(ctx.input_path, ctx.output_path, ctx.model_path, required_models())
        self.operators_built = build_graph(self, self.state)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def _peek_args(argv: list[str]) -> argparse.Namespace:
    """The input, output and log level the run will use, read before the SDK's parser (which would
    create the output folder and exit 2 on a missing input)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--input", "-i")
    parser.add_argument("--output", "-o")
    parser.add_argument("--log-level", "-l", dest="log_level")
    known, _ = parser.parse_known_args(argv[1:])
    known.input = Path(known.input or os.environ.get("HOLOSCAN_INPUT_PATH") or "input").absolute()
    known.output = Path(known.output or os.environ.get("HOLOSCAN_OUTPUT_PATH") or "output").absolute()
    known.log_level = (known.log_level or "").upper()
    return known


def quiet_holoscan(log_level: str) -> None:
    """Keep Holoscan's and GXF's own log (INFO lines, the CUDA-driver warning, their echo of an
    operator's exception) out of the user's view unless ``-l DEBUG`` asks for everything.
    ``HOLOSCAN_LOG_LEVEL``, when set, wins (Holoscan reads it itself)."""
    if os.environ.get("HOLOSCAN_LOG_LEVEL"):
        return
    from holoscan.logger import LogLevel, set_log_level

    set_log_level(LogLevel.DEBUG if log_level == "DEBUG" else LogLevel.CRITICAL)


class StopRequested(Exception):
    """SIGTERM/SIGINT arrived while the graph ran."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _raise_stop(signum: int, frame: Any) -> None:
    raise StopRequested(signum)


def _catch_stop_signals() -> None:
    """Route SIGTERM/SIGINT to :class:`StopRequested` (Python allows it in the main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _raise_stop)


def run_graph(app: Application, poll_s: float = 0.2) -> None:
    """``app.run()`` in Holoscan's worker thread while the main thread waits, so that SIGTERM/SIGINT
    reach the application's own handler (raising :class:`StopRequested`) instead of Holoscan's,
    which exits after 3 s without a word when an operator is busy. Holoscan installs its handler
    when the graph starts, so ours is installed again while waiting."""
    future = app.run_async()
    try:
        while True:
            _catch_stop_signals()
            try:
                future.result(timeout=poll_s)
                return
            except TimeoutError:
                continue
    except StopRequested:
        with _RUNNING_LOCK:
            publishing = PUBLISHER in _RUNNING
        if publishing:  # let the publisher finish (or roll back): never leave a half-written folder
            logger.warning("stop requested while publishing the outputs: waiting up to %.0f s for it to end",
                           PUBLISH_WAIT_S)
            try:
                future.result(timeout=PUBLISH_WAIT_S)
            except BaseException:  # noqa: BLE001 - the stop is what is reported
                pass
        raise


def _restore_output(path: Path, existed: bool) -> None:
    """After a failure: remove the output folder if this run created it and it is still empty."""
    if existed or not path.is_dir():
        return
    try:
        path.rmdir()
    except OSError:
        logger.warning("output folder %s was created by this run and is not empty", path)


def _one_line(exc: BaseException) -> str:
    """The first line of an error's message: the whole statement of what is wrong (errors put their
    details, such as every series considered, on the lines after it)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _log_details(exc: BaseException) -> None:
    """The lines of an error's message after the first, logged before the final ERROR line."""
    lines = str(exc).strip().splitlines()[1:]
    if lines:
        logger.error("details:\n%s", "\n".join("  " + line for line in lines))


def _peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_gpu_mib(device: str) -> float | None:
    """Peak GPU memory allocated by torch in this process, in MiB (None on CPU)."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def _summary(state: StartupState | None, total: float, ok: bool) -> None:
    lines = timing.TIMER.summary_lines(total_seconds=total)
    status = "finished" if ok else "FAILED"
    device = state.device if state else "n/a"
    gpu = _peak_gpu_mib(device)
    gpu_text = f", peak GPU memory {gpu:.0f} MiB" if gpu is not None else ""
    logger.info("run %s in %.2f s on %s; peak memory %.0f MiB%s; stages (wall time):\n%s",
                status, total, device, _peak_rss_mib(), gpu_text, "\n".join(lines))
    if state is not None and ok:
        logger.info("outputs in %s", state.output_path)
    out = os.environ.get(TIMINGS_ENV)
    if out:
        timing.TIMER.to_json(out, total_seconds=total, ok=ok, device=device, peak_rss_mib=_peak_rss_mib(),
                             peak_gpu_mib=gpu)


def _silence_logging() -> None:
    """Before the final ERROR line of a signal stop: no log record may follow it. The graph's worker
    thread may still be running an operator that logs; records are written under their handler's
    lock, so holding every handler's lock (never released: the process ends with ``os._exit``) lets
    a record being written finish and keeps any later one out."""
    logging.disable(logging.CRITICAL)
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for handler in {h for lg in loggers for h in lg.handlers}:
        handler.acquire()
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - a broken stream must not hide the final line
            pass
    sys.stderr.flush()


def _stop_handlers() -> dict[int, Any] | None:
    """The current SIGTERM/SIGINT handlers (None outside the main thread, where none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """Run the application; returns the exit status (see the module docstring).

    ``started``: ``time.perf_counter()`` at process start, so that the total includes the imports.
    The caller's SIGTERM/SIGINT handlers are restored on return (``main`` also runs inside other
    processes, e.g. the cohort's Ray workers, whose own handlers must survive a study).
    """
    previous = _stop_handlers()
    try:
        return _main(argv, started)
    finally:
        for signum, handler in (previous or {}).items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _main(argv: list[str] | None, started: float | None) -> int:
    t0 = started if started is not None else time.perf_counter()
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv[1:]):
        # Holoscan's parser would print only its own options; show the application's.
        print("PDAC lymph-node metastasis prediction from arterial + venous CT (research use only).\n"
              "Writes SEG/seg.dcm, SR/sr.dcm, PDF/report.pdf, PDF/report.dcm and results.json.\n")
        print("Paths default to HOLOSCAN_INPUT_PATH, HOLOSCAN_OUTPUT_PATH and HOLOSCAN_MODEL_PATH;\n"
              "settings come from $PDAC_LN_CONFIG, else HOLOSCAN_CONFIG_PATH, else the app's app.yaml.\n")
        parse_args(["python app", "--help"])  # the SDK's own argument parser (exits 0)
    peek = _peek_args(argv)
    out_path = peek.output
    out_existed = out_path.exists()
    quiet_holoscan(peek.log_level)
    state: StartupState | None = None
    error: str | None = None
    status = EXIT_OK
    try:
        _catch_stop_signals()
        # Paths first, before the SDK's parser: it would create the output folder, and exit 2 (a
        # usage error) for an input that does not exist; both are start-up failures (exit 3).
        check_input(peek.input)
        check_output(peek.output)
        # Holoscan expects [interpreter, script, args...] when argv is given explicitly.
        app = PDACLNMetApp([sys.executable, *argv])
        ctx = Application.init_app_context(app.argv)
        if peek.log_level != "DEBUG":  # highdicom logs every module it copies at INFO
            logging.getLogger("highdicom").setLevel(logging.WARNING)
        logger.info("input %s, output %s, models %s", ctx.input_path, ctx.output_path, ctx.model_path)
        with timing.stage("start-up checks", log=logger):
            state = run_startup_checks(ctx.input_path, ctx.output_path, ctx.model_path, required_models())
        app.state = state
        run_graph(app)
        ran = {r.name for r in timing.TIMER.records if r.ok}
        idle = [op.name for op in app.operators_built if op.name not in ran]
        if idle:  # Holoscan ends a graph whose operators wait for messages that never come
            status = EXIT_FAILED
            error = (f"the graph stopped before these operators ran: {', '.join(idle)}; no outputs written "
                     "(run with -l DEBUG to see Holoscan's log)")
    except SystemExit as exc:  # argparse: bad command line (it printed its own message)
        _restore_output(out_path, out_existed)
        return exc.code if isinstance(exc.code, int) and exc.code else EXIT_USAGE
    except StartupError as exc:
        status, error = EXIT_STARTUP, _one_line(exc)
    except StopRequested as exc:
        with _RUNNING_LOCK:
            running = sorted(_RUNNING)
        published = any(r.name == PUBLISHER and r.ok for r in timing.TIMER.records)
        status = 128 + exc.signum
        error = (f"{exc} during {'stage ' + ', '.join(running) if running else 'start-up'}; "
                 + ("the outputs had been published before the stop" if published else "no outputs written"))
    except Exception as exc:  # an operator failed: Holoscan re-raises its exception from run()
        logger.debug("failure", exc_info=True)
        _log_details(exc)
        status, error = EXIT_FAILED, f"{type(exc).__name__}: {_one_line(exc)}"
    if status != EXIT_OK and not (status > 128 and error and "published before" in error):
        _restore_output(out_path, out_existed)
    _summary(state, time.perf_counter() - t0, status == EXIT_OK)
    if status > 128:
        _silence_logging()
    if error is not None:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)  # the last line, for people and callers
    if status > 128:  # stopped by a signal: the graph's worker thread may still be busy in an operator
        sys.stdout.flush()
        os._exit(status)
    return status
