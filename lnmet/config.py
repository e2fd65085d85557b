"""The product's settings in ``app.yaml``, loaded and validated.

Every operator reads its own section through :func:`load_settings`. A missing or malformed value
raises :class:`SettingsError` whose message names the setting (``attention.classes.spleen.d_max``),
so that the application stops at start instead of failing half-way through a study.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lnmet.labels import ORGAN_CLASSES
from lnmet.quality_checks import CHECKS, CRITICAL, WARNING

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "app.yaml"
CONFIG_ENV = "PDAC_LN_CONFIG"  # overrides the path of app.yaml
ORGAN_NIFTI_ENV = "PDAC_LN_ORGAN_NIFTI"  # overrides app.yaml organ_nifti_path
ORGAN_SOURCES = ("model", "input_seg", "nifti")  # app.yaml organ_source (lnmet.organ_sources)


class SettingsError(ValueError):
    """A setting in app.yaml is missing or invalid; the message names it."""


@dataclass(frozen=True)
class AttentionClass:
    key: str
    label: int
    d_min: float
    d_max: float


@dataclass(frozen=True)
class AttentionSettings:
    ramp_mm: float
    classes: tuple[AttentionClass, ...]


@dataclass(frozen=True)
class SeriesSelectionSettings:
    min_slices: int
    rules: dict[str, list[dict[str, Any]]]
    fallback_on_timing: bool


@dataclass(frozen=True)
class RegistrationSettings:
    working_spacing_mm: float
    affine_iterations: int
    bspline_mesh_mm: float
    bspline_iterations: int
    shrink_factors: tuple[int, ...]
    smoothing_sigmas_mm: tuple[float, ...]
    sampling_fraction: float
    max_samples: int | None = None  # at most this many metric samples per level (None: sampling_fraction alone)


@dataclass(frozen=True)
class LNDetectionSettings:
    probability_threshold: float
    min_volume_mm3: float
    positive_threshold: float | None
    min_density_hu: float | None = None  # components of fat density (upper-quartile venous HU below) dropped
    rim_fat_hu: float | None = None  # node voxels below this HU within one working voxel of the edge trimmed
    min_voxels: int = 1  # a node has at least this many voxels of the venous series' own grid


@dataclass(frozen=True)
class QualityCheckSetting:
    """One check of the quality gate (``quality_gate.<name>``): accepted range and severity."""

    name: str
    min: float | None
    max: float | None
    severity: str  # "critical" (a failure makes the study not assessable) or "warning"
    structures: tuple[str, ...] = ()  # organ_connectivity: the organs it looks at


@dataclass(frozen=True)
class QualityGateSettings:
    """The ``quality_gate`` section: one :class:`QualityCheckSetting` per check of lnmet.quality_checks.CHECKS."""

    checks: dict[str, QualityCheckSetting]


@dataclass(frozen=True)
class ResourceSettings:
    """The ``resources`` section the MAP packager copies into pkg.json (sizes in bytes)."""

    cpu: float
    gpu: int
    memory_bytes: int
    gpu_memory_bytes: int


@dataclass(frozen=True)
class Settings:
    """All product settings of app.yaml."""

    app_title: str
    app_version: str
    series_selection: SeriesSelectionSettings
    missing_arterial: str  # "error" or "single_phase"
    registration: RegistrationSettings
    attention: AttentionSettings
    ln_detection: LNDetectionSettings
    patient_threshold: float | None
    outputs: dict[str, bool] = field(default_factory=dict)
    source: str = ""
    resources: ResourceSettings | None = None
    # Phases checked by their content at intake (lnmet.phase_content): "error" | "warn" | "off", and
    # by how many HU the venous series' brightest large vessel may exceed the arterial one's.
    phase_content_check: str = "error"
    phase_content_margin_hu: float = 50.0
    quality_gate: QualityGateSettings | None = None
    organ_source: str = "model"  # one of ORGAN_SOURCES
    organ_nifti_path: str | None = None  # TotalSegmentator output ($PDAC_LN_ORGAN_NIFTI overrides app.yaml)
    # A patient probability closer to the threshold than this is "borderline" in every output.
    patient_borderline_margin: float = 0.0
    # How far (mm) from the segmented pancreas a tumour component may lie when none overlaps it
    # (lnmet.tumour.primary_tumour).
    tumour_pancreas_reach_mm: float = 10.0
    # Tumour components whose upper quartile of venous HU is below this are fluid or fat, not a solid
    # tumour, and are set aside (lnmet.tumour); None: no density check.
    tumour_min_density_hu: float | None = None


def _get(d: Any, path: str, key: str) -> Any:
    if not isinstance(d, dict):
        raise SettingsError(f"app.yaml: '{path}' must be a mapping")
    if key not in d:
        raise SettingsError(f"app.yaml: missing setting '{path + '.' if path else ''}{key}'")
    return d[key]


def _number(value: Any, name: str, *, lo: float | None = None, hi: float | None = None,
            integer: bool = False, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise SettingsError(f"app.yaml: setting '{name}' must be {kind}, got {value!r}")
    if lo is not None and value < lo:
        raise SettingsError(f"app.yaml: setting '{name}' must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise SettingsError(f"app.yaml: setting '{name}' must be <= {hi}, got {value!r}")
    return value


def _parse_attention(section: Any) -> AttentionSettings:
    ramp = _number(_get(section, "attention", "ramp_mm"), "attention.ramp_mm", lo=0.0)
    classes = _get(section, "attention", "classes")
    if not isinstance(classes, dict):
        raise SettingsError("app.yaml: 'attention.classes' must be a mapping of class -> {label, d_min, d_max}")
    expected = {c.key: c.label for c in ORGAN_CLASSES}
    unknown = sorted(set(classes) - set(expected))
    missing = sorted(set(expected) - set(classes))
    if unknown:
        raise SettingsError(f"app.yaml: unknown class(es) in 'attention.classes': {', '.join(unknown)}")
    if missing:
        raise SettingsError(f"app.yaml: missing class(es) in 'attention.classes': {', '.join(missing)}")
    parsed = []
    for c in ORGAN_CLASSES:
        entry = classes[c.key]
        base = f"attention.classes.{c.key}"
        label = _number(_get(entry, base, "label"), f"{base}.label", integer=True)
        if label != expected[c.key]:
            raise SettingsError(f"app.yaml: setting '{base}.label' must be {expected[c.key]}, got {label}")
        d_min = float(_number(_get(entry, base, "d_min"), f"{base}.d_min"))
        d_max = float(_number(_get(entry, base, "d_max"), f"{base}.d_max"))
        if d_max < d_min:
            raise SettingsError(f"app.yaml: setting '{base}.d_max' ({d_max}) must be >= d_min ({d_min})")
        parsed.append(AttentionClass(c.key, label, d_min, d_max))
    return AttentionSettings(ramp_mm=float(ramp), classes=tuple(parsed))


def _parse_rules(section: Any) -> dict[str, list[dict[str, Any]]]:
    rules = _get(section, "series_selection", "rules")
    if not isinstance(rules, dict) or set(rules) - {"arterial", "venous"}:
        raise SettingsError("app.yaml: 'series_selection.rules' must map 'arterial'/'venous' to lists of conditions")
    out: dict[str, list[dict[str, Any]]] = {}
    for phase in ("arterial", "venous"):
        lst = rules.get(phase, []) or []
        if not isinstance(lst, list):
            raise SettingsError(f"app.yaml: 'series_selection.rules.{phase}' must be a list of condition mappings")
        for i, cond in enumerate(lst):
            if not isinstance(cond, dict) or not cond:
                raise SettingsError(f"app.yaml: 'series_selection.rules.{phase}[{i}]' must be a non-empty mapping")
            for attr, value in cond.items():
                if isinstance(value, str):
                    try:
                        re.compile(value)
                    except re.error as exc:
                        raise SettingsError(
                            f"app.yaml: 'series_selection.rules.{phase}[{i}].{attr}' is not a valid regex: {exc}"
                        ) from None
        out[phase] = [dict(c) for c in lst]
    return out


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_QUANTITY_FACTOR = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
                    "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _quantity(value: Any, name: str) -> int:
    """A memory size such as ``8Gi`` or ``512Mi`` (Kubernetes quantity) in bytes."""
    m = _QUANTITY.match(str(value).strip()) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if m is None:
        raise SettingsError(f"app.yaml: setting '{name}' must be a memory size such as '8Gi' or '512Mi', got {value!r}")
    return int(float(m.group(1)) * _QUANTITY_FACTOR[m.group(2)])


def _parse_application_formats(app: Any) -> None:
    """The packager copies ``input-formats``/``output-formats`` into app.json: lists of strings."""
    for key in ("input-formats", "output-formats"):
        value = _get(app, "application", key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise SettingsError(f"app.yaml: setting 'application.{key}' must be a non-empty list of strings")


def _parse_resources(section: Any) -> ResourceSettings:
    cpu = _number(_get(section, "resources", "cpu"), "resources.cpu", lo=0.1)
    gpu = _number(_get(section, "resources", "gpu"), "resources.gpu", lo=0, integer=True)
    memory = _quantity(_get(section, "resources", "memory"), "resources.memory")
    if memory <= 0:
        raise SettingsError("app.yaml: setting 'resources.memory' must be > 0")
    gpu_memory = _quantity(_get(section, "resources", "gpuMemory"), "resources.gpuMemory")
    return ResourceSettings(cpu=float(cpu), gpu=gpu, memory_bytes=memory, gpu_memory_bytes=gpu_memory)


def _parse_quality_gate(section: Any) -> QualityGateSettings:
    """``quality_gate``: every check of :data:`lnmet.quality_checks.CHECKS` with ``min``/``max`` (numbers or
    null; at least one), ``severity`` critical|warning, and ``structures`` for organ_connectivity."""
    if not isinstance(section, dict):
        raise SettingsError("app.yaml: 'quality_gate' must be a mapping of check name -> {min, max, severity}")
    unknown = sorted(set(section) - set(CHECKS))
    if unknown:
        raise SettingsError(f"app.yaml: unknown check(s) in 'quality_gate': {', '.join(unknown)} "
                            f"(known: {', '.join(CHECKS)})")
    missing = [name for name in CHECKS if name not in section]
    if missing:
        raise SettingsError(f"app.yaml: missing check(s) in 'quality_gate': {', '.join(missing)}")
    organ_keys = {c.key for c in ORGAN_CLASSES}
    checks = {}
    for name in CHECKS:
        entry = section[name]
        base = f"quality_gate.{name}"
        if not isinstance(entry, dict):
            raise SettingsError(f"app.yaml: '{base}' must be a mapping with min, max and severity")
        extra = sorted(set(entry) - {"min", "max", "severity", "structures"})
        if extra:
            raise SettingsError(f"app.yaml: unknown key(s) in '{base}': {', '.join(extra)} (expected min, max, severity)")
        lo = _number(entry.get("min"), f"{base}.min", allow_none=True)
        hi = _number(entry.get("max"), f"{base}.max", allow_none=True)
        if lo is None and hi is None:
            raise SettingsError(f"app.yaml: setting '{base}' needs a 'min' or a 'max' (the accepted range)")
        if lo is not None and hi is not None and hi < lo:
            raise SettingsError(f"app.yaml: setting '{base}.max' ({hi}) must be >= min ({lo})")
        severity = _get(entry, base, "severity")
        if severity not in (CRITICAL, WARNING):
            raise SettingsError(f"app.yaml: setting '{base}.severity' must be '{CRITICAL}' or '{WARNING}', got {severity!r}")
        structures: tuple[str, ...] = ()
        if "structures" in entry or name == "organ_connectivity":
            raw_structures = _get(entry, base, "structures")
            if (not isinstance(raw_structures, list) or not raw_structures
                    or any(not isinstance(k, str) or k not in organ_keys for k in raw_structures)):
                raise SettingsError(f"app.yaml: setting '{base}.structures' must be a non-empty list of organ keys "
                                    f"({', '.join(c.key for c in ORGAN_CLASSES)}), got {raw_structures!r}")
            structures = tuple(raw_structures)
        checks[name] = QualityCheckSetting(name=name, min=None if lo is None else float(lo),
                                           max=None if hi is None else float(hi), severity=severity,
                                           structures=structures)
    return QualityGateSettings(checks=checks)


def _parse_organ_source(raw: dict[str, Any]) -> tuple[str, str | None]:
    """``organ_source`` (default ``model``) and the TotalSegmentator path ``organ_nifti_path``,
    which ``$PDAC_LN_ORGAN_NIFTI`` overrides; ``nifti`` needs one of the two."""
    source = raw.get("organ_source", "model")
    if source not in ORGAN_SOURCES:
        raise SettingsError(
            f"app.yaml: setting 'organ_source' must be one of {', '.join(ORGAN_SOURCES)}, got {source!r}")
    path = raw.get("organ_nifti_path")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise SettingsError(
            f"app.yaml: setting 'organ_nifti_path' must be a path (string) or null, got {path!r}")
    path = os.environ.get(ORGAN_NIFTI_ENV, "").strip() or path
    if source == "nifti" and not path:
        raise SettingsError(
            "app.yaml: setting 'organ_source' is 'nifti' but no TotalSegmentator output is given: set "
            f"'organ_nifti_path' or the environment variable {ORGAN_NIFTI_ENV}")
    return source, path


def parse_settings(raw: Any, source: str = "app.yaml") -> Settings:
    """Validate the parsed YAML document and return typed settings."""
    if not isinstance(raw, dict):
        raise SettingsError(f"{source}: the document must be a mapping")
    app = _get(raw, "", "application")
    title = _get(app, "application", "title")
    if not isinstance(title, str) or not title.strip():
        raise SettingsError("app.yaml: setting 'application.title' must be a non-empty string")
    version_raw = _get(app, "application", "version")
    if not isinstance(version_raw, str):
        raise SettingsError(
            f"app.yaml: setting 'application.version' must be a quoted string such as \"1.0.0\", got {version_raw!r}"
        )
    version = version_raw
    _parse_application_formats(app)
    resources = _parse_resources(_get(raw, "", "resources"))
    if not re.fullmatch(r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?", version):
        raise SettingsError(f"app.yaml: setting 'application.version' must be a semantic version, got {version!r}")

    sel = _get(raw, "", "series_selection")
    selection = SeriesSelectionSettings(
        min_slices=_number(_get(sel, "series_selection", "min_slices"), "series_selection.min_slices",
                           lo=2, integer=True),
        rules=_parse_rules(sel),
        fallback_on_timing=bool(sel.get("fallback_on_timing", True)),
    )

    policy = _get(raw, "", "phase_policy")
    missing_arterial = _get(policy, "phase_policy", "missing_arterial")
    if missing_arterial not in ("error", "single_phase"):
        raise SettingsError(
            f"app.yaml: setting 'phase_policy.missing_arterial' must be 'error' or 'single_phase', got {missing_arterial!r}"
        )

    content_check = policy.get("content_check", "error")
    if content_check not in ("error", "warn", "off"):
        raise SettingsError(
            f"app.yaml: setting 'phase_policy.content_check' must be 'error', 'warn' or 'off', got {content_check!r}")
    content_margin = float(_number(policy.get("content_margin_hu", 50.0), "phase_policy.content_margin_hu",
                                   lo=0.0, hi=500.0))

    reg = _get(raw, "", "registration")
    shrink = _get(reg, "registration", "shrink_factors")
    sigmas = _get(reg, "registration", "smoothing_sigmas_mm")
    if not isinstance(shrink, list) or not shrink or not isinstance(sigmas, list) or len(sigmas) != len(shrink):
        raise SettingsError(
            "app.yaml: 'registration.shrink_factors' and 'registration.smoothing_sigmas_mm' must be lists of equal length"
        )
    registration = RegistrationSettings(
        working_spacing_mm=float(_number(_get(reg, "registration", "working_spacing_mm"),
                                         "registration.working_spacing_mm", lo=0.1, hi=20)),
        affine_iterations=_number(_get(reg, "registration", "affine_iterations"),
                                  "registration.affine_iterations", lo=0, integer=True),
        bspline_mesh_mm=float(_number(_get(reg, "registration", "bspline_mesh_mm"),
                                      "registration.bspline_mesh_mm", lo=5)),
        bspline_iterations=_number(_get(reg, "registration", "bspline_iterations"),
                                   "registration.bspline_iterations", lo=0, integer=True),
        shrink_factors=tuple(_number(s, "registration.shrink_factors", lo=1, integer=True) for s in shrink),
        smoothing_sigmas_mm=tuple(float(_number(s, "registration.smoothing_sigmas_mm", lo=0)) for s in sigmas),
        sampling_fraction=float(_number(_get(reg, "registration", "sampling_fraction"),
                                        "registration.sampling_fraction", lo=0.001, hi=1.0)),
        max_samples=_number(reg.get("max_samples"), "registration.max_samples", lo=1000, integer=True,
                            allow_none=True),
    )

    attention = _parse_attention(_get(raw, "", "attention"))

    det = _get(raw, "", "ln_detection")
    ln_detection = LNDetectionSettings(
        probability_threshold=float(_number(_get(det, "ln_detection", "probability_threshold"),
                                            "ln_detection.probability_threshold", lo=0.0, hi=1.0)),
        min_volume_mm3=float(_number(_get(det, "ln_detection", "min_volume_mm3"),
                                     "ln_detection.min_volume_mm3", lo=0.0)),
        positive_threshold=_number(det.get("positive_threshold"), "ln_detection.positive_threshold",
                                   lo=0.0, hi=1.0, allow_none=True),
        min_density_hu=_number(det.get("min_density_hu"), "ln_detection.min_density_hu", lo=-1024.0, hi=3071.0,
                               allow_none=True),
        rim_fat_hu=_number(det.get("rim_fat_hu"), "ln_detection.rim_fat_hu", lo=-1024.0, hi=3071.0,
                           allow_none=True),
        min_voxels=int(_number(det.get("min_voxels", 1), "ln_detection.min_voxels", lo=1, integer=True)),
    )

    pc = _get(raw, "", "patient_classifier")
    patient_threshold = _number(pc.get("threshold"), "patient_classifier.threshold", lo=0.0, hi=1.0,
                                allow_none=True)
    borderline_margin = _number(pc.get("borderline_margin", 0.0), "patient_classifier.borderline_margin",
                                lo=0.0, hi=0.5)

    pdac = raw.get("pdac_segmentation") or {}
    if not isinstance(pdac, dict):
        raise SettingsError(f"app.yaml: 'pdac_segmentation' must be a mapping, got {pdac!r}")
    reach = _number(pdac.get("pancreas_reach_mm", 10.0), "pdac_segmentation.pancreas_reach_mm", lo=0.0, hi=100.0)
    tumour_density = _number(pdac.get("min_density_hu"), "pdac_segmentation.min_density_hu", lo=-1024.0, hi=3071.0,
                             allow_none=True)

    outputs_raw = _get(raw, "", "outputs")
    outputs: dict[str, bool] = {}
    for key in ("seg", "sr", "pdf", "json"):
        value = _get(outputs_raw, "outputs", key)
        if not isinstance(value, bool):
            raise SettingsError(f"app.yaml: setting 'outputs.{key}' must be true or false, got {value!r}")
        outputs[key] = value
    organ_source, organ_nifti_path = _parse_organ_source(raw)

    quality_gate = _parse_quality_gate(_get(raw, "", "quality_gate"))

    return Settings(
        app_title=str(title), app_version=version, series_selection=selection,
        missing_arterial=missing_arterial, registration=registration, attention=attention,
        ln_detection=ln_detection, patient_threshold=patient_threshold, outputs=outputs, source=source,
        resources=resources, phase_content_check=content_check, phase_content_margin_hu=content_margin,
        quality_gate=quality_gate, organ_source=organ_source, organ_nifti_path=organ_nifti_path,
        patient_borderline_margin=float(borderline_margin), tumour_pancreas_reach_mm=float(reach),
        tumour_min_density_hu=None if tumour_density is None else float(tumour_density),
    )


def config_path(path: str | os.PathLike | None = None) -> Path:
    """The app.yaml in use: the argument, else $PDAC_LN_CONFIG, else the project's own."""
    return Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """Read and validate app.yaml (see :func:`config_path` for which file)."""
    p = config_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SettingsError(f"configuration file not found: {p}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{p}: not valid YAML: {exc}") from None
    return parse_settings(raw, source=str(p))
