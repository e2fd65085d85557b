"""Label values and coded concepts shared by every part of the product.

The ten organ/vessel classes are those of the attention map of Zheng et al. (IJCV 2024), in the
order of their Table 7; their integer values are the values of the organ label map.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StructureClass:
    """One organ/vessel class of the attention map."""

    label: int  # value in the organ label map
    key: str  # key in app.yaml's `attention.classes`
    name: str  # display name
    snomed_code: str  # SNOMED CT concept for DICOM SEG / SR
    snomed_meaning: str
    # Optional SNOMED CT modifier (code, meaning) post-coordinated with the concept above, e.g. a
    # laterality where the DICOM context groups have no concept of their own for the structure.
    snomed_modifier: tuple[str, str] | None = None


ORGAN_CLASSES: tuple[StructureClass, ...] = (
    StructureClass(1, "spleen", "Spleen", "78961009", "Spleen"),
    StructureClass(2, "esophagus", "Esophagus", "32849002", "Esophagus"),
    StructureClass(3, "stomach", "Stomach", "69695003", "Stomach"),
    StructureClass(4, "aorta", "Aorta", "15825003", "Aorta"),
    StructureClass(5, "pancreas", "Pancreas", "15776009", "Pancreas"),
    StructureClass(6, "duodenum", "Duodenum", "38848004", "Duodenum"),
    StructureClass(7, "sma", "Superior mesenteric artery", "42258001", "Superior mesenteric artery"),
    # Codes and meanings as in DICOM PS3.16 CID 4 / CID 7151 (checked against pydicom's tables):
    # 57850000 is "Truncus coeliacus"; the DICOM context groups have no left gastric artery concept,
    # so it is "Gastric artery" (23771002) with the laterality modifier "Left" (7771000).
    StructureClass(8, "tc_sa", "Truncus coeliacus & splenic artery", "57850000", "Truncus coeliacus"),
    StructureClass(9, "lga", "Left gastric artery", "23771002", "Gastric artery", ("7771000", "Left")),
    StructureClass(10, "cha_pha", "Common & proper hepatic artery", "76015000", "Hepatic artery"),
)

ORGAN_BY_KEY = {c.key: c for c in ORGAN_CLASSES}
ORGAN_BY_LABEL = {c.label: c for c in ORGAN_CLASSES}
NUM_ORGAN_CLASSES = len(ORGAN_CLASSES)

# Values of the full anatomy label map written by the synthetic generator (ground truth only; the
# first ten equal the organ classes above).
ANATOMY_LABELS: dict[str, int] = {
    "background_air": 0,
    **{c.key: c.label for c in ORGAN_CLASSES},
    "body_fat": 11,
    "muscle_wall": 12,
    "subcutaneous_fat": 13,
    "bone_cortical": 14,
    "bone_cancellous": 15,
    "spinal_canal": 16,
    "liver": 17,
    "kidney_left": 18,
    "kidney_right": 19,
    "ivc": 20,
    "portal_splenic_vein": 21,
    "bowel": 22,
    "bowel_lumen": 23,
    "stomach_lumen": 24,
    "gas": 25,  # bowel gas
    "pdac": 26,
    "lymph_node": 27,
    "ln_necrosis": 28,
    "distractor_nodule": 29,
    "gallbladder": 30,
    "paraspinal_muscle": 31,
    "duodenum_lumen": 32,
    "stomach_gas": 33,
    # generator 2.0: the neighbours a network must learn to reject (ground truth only)
    "costal_cartilage": 34,
    "table_shell": 35,
    "table_core": 36,
    "lung": 37,
    "hepatic_vein": 38,
    "kidney_medulla": 39,
    "renal_pelvis": 40,
    "renal_sinus_fat": 41,
    "faeces": 42,
    "pancreas_fat": 43,
    "other_artery": 44,
    "other_vein": 45,
    "calcification": 46,
    "adrenal": 47,
    "skin": 48,
    # generator 2.1
    "duodenum_gas": 49,
}

# Anatomy labels that belong to an organ class in the organ label map (lumen and tumour included).
ANATOMY_TO_ORGAN: dict[int, int] = {
    **{c.label: c.label for c in ORGAN_CLASSES},
    24: 3,  # stomach lumen -> stomach
    33: 3,  # stomach gas -> stomach
    32: 6,  # duodenum lumen -> duodenum
    49: 6,  # duodenal gas -> duodenum
    26: 5,  # PDAC -> pancreas
    43: 5,  # interlobular fat inside the pancreas outline -> pancreas
}

# Labels of the patient-level class and of LN classes.
LN_NEGATIVE = 1
LN_POSITIVE = 2
