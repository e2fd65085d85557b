"""Coded concepts used in the DICOM SEG and SR.

Standard concepts come from DICOM PS3.16 (context groups named beside each); they were checked
against pydicom's copy of the DICOM tables (``pydicom.sr.codedict.codes``). Where DICOM has no
concept for what we state (the distance from a node to its nearest organ, the decision threshold,
the method of the patient-level classifier, notices), the concept comes from this product's own
private coding scheme ``99LNMET``, declared in the Coding Scheme Identification Sequence of the SR.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from lnmet.labels import ORGAN_BY_KEY, StructureClass

# ---------------------------------------------------------------- SEG categories / types (CID 7150/7151)
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # 91723000, CID 7150
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure  # 49755003, CID 7150
NEOPLASM = codes.SCT.Neoplasm  # 108369006, CID 7151
NEOPLASM_SECONDARY = codes.SCT.NeoplasmSecondary  # 14799000 "Neoplasm, Secondary" (metastasis), CID 7151
LYMPH_NODE = codes.SCT.LymphNode  # 59441001, CID 7151 / 7166
PANCREAS = codes.SCT.Pancreas  # 15776009
ABDOMEN = codes.SCT.Abdomen  # 818981001

# ---------------------------------------------------------------- SR measurement names and units
VOLUME = codes.SCT.Volume  # 118565006, CID 7469
# CID 7470. The code meanings are written "Long Axis"/"Short Axis" (DICOM's own spelling in earlier
# editions; pydicom has "Long axis"): the cornerstone/OHIF SR loader finds the two axes of a
# bidirectional measurement by these exact meanings. Code value and scheme are what identify them.
SHORT_AXIS = CodedConcept(codes.SCT.ShortAxis.value, "SCT", "Short Axis")  # 103340004
LONG_AXIS = CodedConcept(codes.SCT.LongAxis.value, "SCT", "Long Axis")  # 103339001
DIAMETER = codes.SCT.Diameter  # 81827009, CID 7470
MAXIMUM = codes.SCT.Maximum  # 56851009, CID 7464 (derivation: the tumour's diameter is the maximum axial one)
CENTER_OF_MASS = codes.DCM.CenterOfMass  # 128138: purpose of the node's/tumour's centre point (SCOORD3D)
THRESHOLD_VALUE = codes.DCM.ThresholdValue  # 122411: the node-level decision threshold
ATTENUATION = codes.DCM.AttenuationCoefficient  # 112031, with derivation "Mean"
MEAN = codes.SCT.Mean  # 373098007, CID 7464
PROBABILITY_OF_CANCER = codes.DCM.ProbabilityOfCancer  # 111047, CID 6048
DISTANCE = codes.DCM.Distance  # 121206
METASTASIS = codes.SCT.Metastasis  # 128462008
PRESENT = codes.SCT.Present  # 52101004, CID 240
ABSENT = codes.SCT.Absent  # 272519000, CID 240
PRESENCE_UNDETERMINED = codes.DCM.PresenceUndetermined  # 121059
# Quality gate verdict (patient-level group): concept and the three values of CID 6044 "Image usability".
QUALITY_ASSESSMENT = codes.DCM.QualityAssessment  # 111050
QUALITY_MET = codes.DCM.UsableMeetsTheQualityControlStandard  # 111237: assessed, every check passed
QUALITY_WARNINGS = codes.DCM.UsableDoesNotMeetTheQualityControlStandard  # 111236: assessed, warnings
QUALITY_UNUSABLE = codes.DCM.UnusableQualityRendersImageUnusable  # 111235: not assessable

UNIT_MM3 = codes.UCUM.CubicMillimeter
UNIT_MM = codes.UCUM.Millimeter
UNIT_HU = codes.UCUM.HounsfieldUnit
UNIT_NONE = codes.UCUM.NoUnits  # "1": probabilities and thresholds are dimensionless

# Procedure reported (TID 1500 row 4, CID 100 is extensible and has no abdominal CT): SNOMED CT
# "Computed tomography of abdomen" (procedure).
PROCEDURE_REPORTED = CodedConcept("169070004", "SCT", "Computed tomography of abdomen")
DEVICE_OBSERVER = codes.DCM.Device
# TID 1500 row 12: the report-level "Qualitative Evaluations" container.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence  # CID 7162

# ---------------------------------------------------------------- private scheme 99LNMET
PRIVATE_SCHEME = "99LNMET"
PRIVATE_SCHEME_NAME = "PDAC lymph node metastasis research application concepts"


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


# The distance from a node to its nearest organ/vessel is the standard Distance (DCM 121206); which
# structure is nearest has no standard concept.
NEAREST_STRUCTURE = _private("LNM002", "Nearest organ or vessel")
RESEARCH_USE_NOTICE = _private("LNM010", "Research use notice")
MODEL_USED = _private("LNM011", "Model used")
SINGLE_PHASE_STATEMENT = _private("LNM012", "Single-phase analysis")
SERIES_USED = _private("LNM013", "Series used")
PATIENT_LEVEL_STATEMENT = _private("LNM014", "Patient-level result statement")
TUMOUR_STATEMENT = _private("LNM015", "Tumour segmentation statement")
QUALITY_GATE_STATEMENT = _private("LNM016", "Quality gate")
ORGAN_SOURCE = _private("LNM017", "Organ and vessel segmentation source")
PATIENT_METHODS = {
    "combined": _private("LNM020", "Tumour and lymph node classifier (Zheng et al. 2024)"),
    "tumour_only": _private("LNM021", "Tumour-only classifier"),
    "nodes_only": _private("LNM022", "Lymph-node-only classifier"),
}


def coding_scheme_identification() -> Dataset:
    """An item of the Coding Scheme Identification Sequence declaring ``99LNMET``."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "lnmet project"
    return item


def structure_concept(key: str) -> CodedConcept:
    """The SNOMED CT concept of an organ/vessel class (``lnmet.labels`` key)."""
    cls: StructureClass = ORGAN_BY_KEY[key]
    return CodedConcept(cls.snomed_code, "SCT", cls.snomed_meaning)


def structure_modifier(key: str) -> CodedConcept | None:
    """The SNOMED CT modifier post-coordinated with the class's concept, if it has one."""
    mod = ORGAN_BY_KEY[key].snomed_modifier
    return CodedConcept(mod[0], "SCT", mod[1]) if mod else None
