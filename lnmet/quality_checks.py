"""The quality gate's catalogue: the name, unit and meaning of every check, and the two severities.

Kept apart from :mod:`lnmet.quality` (which measures the checks) so that :mod:`lnmet.config` can
validate app.yaml's ``quality_gate`` section against it without importing the measurements.
"""

from __future__ import annotations

from lnmet.labels import ORGAN_CLASSES

CRITICAL, WARNING = "critical", "warning"


def volume_check_name(key: str) -> str:
    """Name of the volume check of an organ/vessel class (``lnmet.labels`` key)."""
    return f"volume_{key}_ml"


# Every check: name -> (unit, what is measured). The order is the order of the report.
CHECKS: dict[str, tuple[str, str]] = {
    "scan_length_mm": ("mm", "craniocaudal length of the venous series"),
    "body_width_mm": ("mm", "left-right width of the body (median over slices)"),
    "pancreas_margin_mm": ("mm", "distance from the segmented pancreas to the nearer end of the scan"),
    **{volume_check_name(c.key): ("mL", f"volume of the segmented {c.name.lower()}") for c in ORGAN_CLASSES},
    "aorta_diameter_mm": ("mm", "aortic diameter (median over slices, from the axial cross-section area)"),
    "organ_connectivity": ("fraction", "share of each organ's volume in its largest connected piece (smallest)"),
    "spleen_left_of_aorta_mm": ("mm", "how far the spleen's centre lies to the patient's left of the aorta's"),
    "pancreas_anterior_to_aorta_mm": ("mm", "how far the pancreas's centre lies in front of the aorta's "
                                            "(at the pancreas's levels)"),
    "venous_aorta_hu": ("HU", "median venous-phase attenuation inside the segmented aorta"),
    "venous_spleen_hu": ("HU", "median venous-phase attenuation inside the segmented spleen"),
    "venous_pancreas_hu": ("HU", "median venous-phase attenuation inside the segmented pancreas"),
    "arterial_aorta_hu": ("HU", "median arterial-phase attenuation inside the segmented aorta"),
    "arterial_minus_venous_aorta_hu": ("HU", "aortic attenuation, arterial minus venous phase"),
    "intensity_in_training_range": ("fraction",
                                    "share of tissue voxels inside each model's training intensity range (smallest)"),
    "node_count": ("nodes", "number of segmented lymph nodes"),
    "node_depth_mm": ("mm", "depth of the shallowest lymph node beneath the skin"),
    "nodes_in_body_wall": ("nodes", "lymph nodes shallower beneath the skin than node_depth_mm's minimum"),
}
