"""Held-out evidence: what a bundled model reached on generated studies it never saw, and the
sentence every output prints from it.

A model's ``trained_on`` says where it learnt; it does not say whether its answer carries any
skill. The figures measured by ``evaluation/app_mode.py`` on held-out seeds (as the app runs) are
recorded beside each model in ``model_manifest.json`` (key ``held_out``) by
``scripts/record_held_out.py``, tied to the SHA-256 of the file that was measured: a retrained
model loses them (``scripts/update_model_manifest.py`` keeps them only for an unchanged file).
The SEG, SR, PDF and results.json then say how far the patient-level answer can be trusted, and
say so plainly when the confidence interval does not exclude chance.

Pure data and text, no torch and no Holoscan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# The patient model's figure per prediction method (lnmet.types.PatientPrediction.method).
PATIENT_FIGURE = {"combined": "patient_auc_combined", "tumour_only": "patient_auc_tumour_only",
                  "nodes_only": "patient_auc_nodes_only"}
PATIENT_MODEL = "patient_cls"


class HeldOutError(ValueError):
    """A held-out record is malformed; the message names the field and what was expected."""


@dataclass(frozen=True)
class HeldOutFigure:
    """One measured figure: ``value`` with its 95% CI when one was computed, and ``chance``, the
    value a rule without skill gets (0.5 for an AUC or a balanced accuracy; None where none applies,
    e.g. a Dice)."""

    key: str
    label: str
    value: float
    ci95: tuple[float, float] | None = None
    chance: float | None = None

    @property
    def skill_shown(self) -> bool | None:
        """True when the figure is above chance with its whole CI; None where chance does not apply."""
        if self.chance is None:
            return None
        low = self.ci95[0] if self.ci95 is not None else self.value
        return bool(low > self.chance)

    def text(self) -> str:
        """``label value [low-high]``."""
        ci = f" (95% CI {self.ci95[0]:.2f}-{self.ci95[1]:.2f})" if self.ci95 is not None else ""
        return f"{self.label} {self.value:.2f}{ci}"

    def as_dict(self, derived: bool = False) -> dict[str, Any]:
        """The manifest's form; ``derived`` adds ``skill_shown`` (results.json, for readers)."""
        out = {"key": self.key, "label": self.label, "value": self.value,
               "ci95": list(self.ci95) if self.ci95 is not None else None, "chance": self.chance}
        return {**out, "skill_shown": self.skill_shown} if derived else out


@dataclass(frozen=True)
class HeldOutEvidence:
    """The figures of one model file (``sha256``) on held-out studies described by ``setting``."""

    sha256: str
    setting: str
    measured: str  # ISO date of the evaluation run
    command: str  # how to measure it again
    figures: tuple[HeldOutFigure, ...]

    def figure(self, key: str) -> HeldOutFigure | None:
        return next((f for f in self.figures if f.key == key), None)

    def summary(self) -> str:
        """One line: every figure, then the setting."""
        return "; ".join(f.text() for f in self.figures) + f" (on {self.setting})"

    def as_dict(self, derived: bool = False) -> dict[str, Any]:
        """The manifest's form; ``derived`` adds each figure's ``skill_shown`` (results.json)."""
        return {"sha256": self.sha256, "setting": self.setting, "measured": self.measured, "command": self.command,
                "figures": [f.as_dict(derived) for f in self.figures]}

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> HeldOutEvidence:
        """Parse and check a record; :class:`HeldOutError` names ``where`` and the bad field."""
        if not isinstance(doc, dict):
            raise HeldOutError(f"{where}: 'held_out' must be an object")
        for key in ("sha256", "setting", "measured", "command"):
            if not isinstance(doc.get(key), str) or not doc[key]:
                raise HeldOutError(f"{where}: held_out has no '{key}' (a non-empty string is expected)")
        figures = doc.get("figures")
        if not isinstance(figures, list) or not figures:
            raise HeldOutError(f"{where}: held_out 'figures' must be a non-empty list")
        parsed = []
        for i, f in enumerate(figures):
            at = f"{where}: held_out figures[{i}]"
            if not isinstance(f, dict) or not isinstance(f.get("key"), str) or not isinstance(f.get("label"), str):
                raise HeldOutError(f"{at}: an object with 'key' and 'label' strings is expected")
            value = f.get("value")
            if not _finite(value):
                raise HeldOutError(f"{at} ({f['key']}): 'value' must be a finite number, got {value!r}")
            ci = f.get("ci95")
            if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_finite(v) for v in ci)
                                       and ci[0] <= value <= ci[1]):
                raise HeldOutError(f"{at} ({f['key']}): 'ci95' must be [low, high] around the value, got {ci!r}")
            chance = f.get("chance")
            if chance is not None and not _finite(chance):
                raise HeldOutError(f"{at} ({f['key']}): 'chance' must be a number or null, got {chance!r}")
            parsed.append(HeldOutFigure(f["key"], f["label"], float(value),
                                        (float(ci[0]), float(ci[1])) if ci is not None else None,
                                        float(chance) if chance is not None else None))
        keys = [f.key for f in parsed]
        if len(set(keys)) != len(keys):
            raise HeldOutError(f"{where}: held_out lists a figure twice ({', '.join(sorted(keys))})")
        return cls(doc["sha256"], doc["setting"], doc["measured"], doc["command"], tuple(parsed))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def patient_evidence_statement(method: str, name: str, version: str, evidence: HeldOutEvidence | None) -> str:
    """How far the patient-level answer can be trusted, from the patient model's held-out figure
    for the method that gave the answer; said plainly when none is recorded or none shows skill."""
    figure = evidence.figure(PATIENT_FIGURE.get(method, "")) if evidence is not None else None
    if figure is None:
        return (f"No held-out figure is recorded for {name} {version} ({method} method): how well this "
                "patient-level answer separates patients it has not seen is not known.")
    text = f"On {evidence.setting}, this patient-level answer ({method} method) reached {figure.text()}"
    if figure.skill_shown:
        return text + ": better than chance on generated studies; it has not been measured on real patients."
    return text + ": no skill beyond chance was shown; do not rely on this answer."
