"""The EMBED look-alike: metadata, clinical and legend tables plus `cohort_N/<patient>/<study>/<SOP>.dcm`."""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from .dicom_writer import _write_csv
from .files import (
    _choice,
    _date,
    _EncodingDecks,
    _image_seed,
    _ImageJob,
    _remove_stale_partials,
    _start_lookalike,
    _uid,
    _write_images,
)
from .rendering import Lesion, _random_position
from .tables import (
    _LEGEND,
    DEFAULT_IMAGE_SIZE,
    EMBED_CLINICAL_COLUMNS,
    EMBED_DICOM_ROOT,
    EMBED_LEGEND_COLUMNS,
    EMBED_METADATA_COLUMNS,
    EMBED_METADATA_EXTRA_COLUMNS,
    EMBED_PNG_ROOT,
    FULL_IMAGE_SIZE,
)

# ----------------------------------------------------------------------------------------------
# EMBED
# ----------------------------------------------------------------------------------------------

_RACES = [
    "African American  or Black", "Caucasian or White", "Asian",
    "Native Hawaiian or Other Pacific Islander", "American Indian or Alaskan Native", "Multiple",
    "Unknown, Unavailable or Unreported", None,
]
_RACE_P = [0.40, 0.40, 0.065, 0.01, 0.005, 0.01, 0.07, 0.04]
_ETHNICITIES = ["Non-Hispanic or Latino", "Hispanic or Latino", "Unknown, Unavailable or Unreported", None]
_ETHNICITY_P = [0.86, 0.056, 0.04, 0.044]
_MANUFACTURERS = [
    ("HOLOGIC, Inc.", "Selenia Dimensions"), ("GE MEDICAL SYSTEMS", "Senographe Essential"),
    ("FUJIFILM Corporation", "FDR-3000AWS"),
]
# How the first patients start, so that even a tiny dataset has every kind of exam.
_FIRST_SCENARIOS = ["N", "A", "B", "S", "N", "M", "P", "K"]

# The micro-calcification benchmark (`generate_embed(microcalcifications=...)`): a suspicious cluster
# (BI-RADS 4) coded with these legend codes, biopsied and found to be ductal carcinoma in situ, the
# cancer that most often shows as nothing but micro-calcifications.
_MICRO_MORPHOLOGY = {"I": "pleomorphic", "A": "amorphous", "P": "punctate"}  # calcfind -> renderer words
_MICRO_DISTRIBUTION = {"C": "clustered", "G": "grouped"}  # calcdistri -> renderer words


@dataclass
class _EmbedPatient:
    empi: int
    cohort: int
    race: str | None
    ethnicity: str | None
    birth: dt.date
    density: int
    male: bool


@dataclass
class _EmbedFinding:
    asses: str
    side: str | None
    massshape: str | None = None
    massmargin: str | None = None
    massdens: str | None = None
    calcfind: str | None = None
    calcdistri: str | None = None
    position: tuple[float, float] = (0.5, 0.0)
    pathology: dict = field(default_factory=dict)
    microcalcifications: bool = False  # the coded calcifications are drawn as micro-calcifications


@dataclass
class _EmbedExam:
    patient: _EmbedPatient
    acc: int
    date: dt.date
    screening: bool
    imaged_sides: tuple[str, ...]
    desc: str
    findings: list[_EmbedFinding]
    manufacturer: tuple[str, str] = _MANUFACTURERS[0]


def _embed_descriptors(rng: np.random.Generator, asses: str) -> dict:
    """Coded descriptors of one finding, with the gaps real reports have."""
    if asses == "N":
        return {}
    if asses in ("B", "P"):
        if rng.uniform() < 0.55:
            return {
                "massshape": _choice(rng, ["O", "R", "N", "G"], [0.5, 0.3, 0.1, 0.1]),
                "massmargin": _choice(rng, ["D", "U", None], [0.7, 0.15, 0.15]),
                "massdens": _choice(rng, ["=", "-", "0", None], [0.4, 0.3, 0.1, 0.2]),
            }
        if asses == "P":
            return {"calcfind": "P", "calcdistri": _choice(rng, ["G", "C"])}
        return {"calcfind": _choice(rng, ["9", "C", "E", "V", "R", "Q"]),
                "calcdistri": _choice(rng, ["D", "R", "S", None])}
    if asses == "A":
        kind = rng.uniform()
        if kind < 0.35:
            return {"massshape": _choice(rng, ["S", "F", "B", "V"])}
        if kind < 0.6:
            return {"massshape": _choice(rng, ["X", "O", "G", "A"]),
                    "massmargin": _choice(rng, ["I", "U", "D", None]), "massdens": _choice(rng, ["=", "+", None])}
        if kind < 0.8:
            return {"calcfind": _choice(rng, ["A", "P", "I"]), "calcdistri": _choice(rng, ["G", "C", "R"])}
        return {}  # "additional evaluation" with nothing coded
    # S, M, K: a suspicious mass and/or suspicious calcifications.
    kind = rng.uniform()
    mass = {"massshape": _choice(rng, ["X", "X", "O", "R"] if asses == "S" else ["X"]),
            "massmargin": _choice(rng, ["S", "I", "M"] if asses != "S" else ["I", "M", "S", "U"]),
            "massdens": _choice(rng, ["+", "=", None], [0.5, 0.35, 0.15])}
    calcs = {"calcfind": _choice(rng, ["K", "I", "F", "B", "A"]), "calcdistri": _choice(rng, ["G", "C", "S", "L"])}
    if kind < 0.5:
        return mass
    if kind < 0.75:
        return calcs
    if kind < 0.9:
        return {**mass, **calcs}
    return {}


def _embed_lesions(rng: np.random.Generator, finding: _EmbedFinding) -> list[Lesion]:
    """The visible lesions of one clinical row (its codes translated to the renderer's words)."""
    if finding.asses == "N":
        return []
    malignant_looking = finding.asses in ("S", "M", "K")
    size_range = {"B": (0.022, 0.035), "P": (0.02, 0.032), "A": (0.03, 0.045), "S": (0.045, 0.06),
                  "M": (0.06, 0.085), "K": (0.06, 0.085)}[finding.asses]
    lesions = []
    shape_code = finding.massshape
    if shape_code is not None:
        if shape_code in ("S", "F", "B", "V"):
            lesions.append(Lesion(kind="asymmetry", size=rng.uniform(0.08, 0.12), position=finding.position))
        elif shape_code in ("A", "Q"):
            lesions.append(Lesion(kind="distortion", size=rng.uniform(0.05, 0.08), position=finding.position))
        else:
            lesions.append(Lesion(
                kind="mass",
                shape={"R": "round", "X": "irregular"}.get(shape_code, "oval"),
                margin={"D": "circumscribed", "U": "obscured", "M": "microlobulated", "I": "indistinct",
                        "S": "spiculated"}.get(finding.massmargin,
                                               "indistinct" if malignant_looking else "circumscribed"),
                density={"+": "high", "=": "iso", "-": "low", "0": "fat"}.get(
                    finding.massdens, "fat" if shape_code in ("N", "Y") else ("high" if malignant_looking else "iso")),
                size=rng.uniform(*size_range),
                position=finding.position,
            ))
    if finding.microcalcifications:
        return [Lesion(kind="microcalcifications", morphology=_MICRO_MORPHOLOGY[finding.calcfind],
                       distribution=_MICRO_DISTRIBUTION[finding.calcdistri], size=rng.uniform(0.02, 0.035),
                       position=finding.position)]
    if finding.calcfind is not None:
        morphology = {"A": "amorphous", "I": "pleomorphic", "K": "pleomorphic", "F": "fine-linear",
                      "B": "fine-linear", "P": "punctate", "R": "punctate"}.get(finding.calcfind, "coarse")
        distribution = {"G": "grouped", "C": "clustered", "S": "segmental", "L": "linear", "R": "regional",
                        "D": "diffuse"}.get(finding.calcdistri, "grouped")
        lesions.append(Lesion(kind="calcifications", morphology=morphology, distribution=distribution,
                              size=rng.uniform(0.025, 0.04), position=finding.position))
    if not lesions:
        # Nothing coded, yet the radiologist saw something the BI-RADS category stands for.
        if finding.asses == "A":
            lesions.append(Lesion(kind="asymmetry", size=rng.uniform(0.08, 0.12), position=finding.position))
        elif malignant_looking:
            lesions.append(Lesion(kind="mass", shape="irregular", margin="spiculated", density="high",
                                  size=rng.uniform(*size_range), position=finding.position))
        else:
            lesions.append(Lesion(kind="mass", shape="oval", size=rng.uniform(*size_range), position=finding.position))
    return lesions


def _embed_pathology(rng: np.random.Generator, finding: _EmbedFinding, exam_date: dt.date) -> dict:
    biopsied = {"S": 0.85, "M": 0.95, "K": 1.0}.get(finding.asses, 0.0)
    if rng.uniform() >= biopsied:
        return {}
    malignant_p = {"S": 0.3, "M": 0.9, "K": 1.0}[finding.asses]
    if rng.uniform() < malignant_p:
        severity = 0 if rng.uniform() < 0.75 else 1
    else:
        severity = _choice(rng, [2, 4, 5], [0.2, 0.7, 0.1])
    codes = {0: ["ID", "IDC", "IL", "I"], 1: ["DC", "DCH", "DS"], 2: ["ADH", "ALH", "LS"],
             4: ["FA", "FC", "BEN", "PA", "FN"], 5: ["NBT"]}[severity]
    paths = [_choice(rng, codes)]
    if rng.uniform() < 0.3:
        paths.append(_choice(rng, ["FC", "CCC", "AD", "SA"]))
    return {
        "bside": finding.side,
        "procdate_anon": _date(exam_date + dt.timedelta(days=int(rng.integers(5, 26)))),
        "type": _choice(rng, ["B", "S"], [0.8, 0.2]),
        **{f"path{i + 1}": code for i, code in enumerate(paths)},
        "path_severity": float(severity),
    }


def _embed_patient(rng: np.random.Generator, empi: int, patient_index: int, *, allow_male: bool = True) -> _EmbedPatient:
    male = allow_male and patient_index >= len(_FIRST_SCENARIOS) and rng.uniform() < 0.01
    return _EmbedPatient(
        empi=empi,
        cohort=2 if patient_index == 1 or (patient_index > 1 and rng.uniform() < 0.25) else 1,
        race=_choice(rng, _RACES, _RACE_P),
        ethnicity=_choice(rng, _ETHNICITIES, _ETHNICITY_P),
        birth=dt.date(1935, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 40))),
        density=5 if male else int(_choice(rng, [1, 2, 3, 4], [0.12, 0.40, 0.36, 0.12])),
        male=male,
    )


def _embed_exams(rng: np.random.Generator, num_exams: int) -> list[_EmbedExam]:
    exams: list[_EmbedExam] = []
    used_empi: set[int] = set()
    used_acc: set[int] = set()
    patient_index = 0

    def new_acc() -> int:
        while True:
            acc = int(rng.integers(10**15, 10**16))
            if acc not in used_acc:
                used_acc.add(acc)
                return acc

    while len(exams) < num_exams:
        empi = int(rng.integers(10**7, 10**8))
        if empi in used_empi:
            continue
        used_empi.add(empi)
        patient = _embed_patient(rng, empi, patient_index)
        first_day = dt.date(2013, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 4)))
        first_day = max(first_day, dt.date(patient.birth.year + 40, 1, 1))
        visits = int(_choice(rng, [1, 2, 3], [0.55, 0.3, 0.15]))
        for visit in range(visits):
            day = first_day + dt.timedelta(days=int(365 * visit + rng.integers(-20, 40)))
            if visit == 0 and patient_index < len(_FIRST_SCENARIOS):
                scenario = _FIRST_SCENARIOS[patient_index]
            elif patient.male:
                scenario = _choice(rng, ["N", "B"])
            else:
                scenario = _choice(rng, ["N", "B", "A", "P", "S", "M", "K"], [0.5, 0.2, 0.14, 0.04, 0.07, 0.03, 0.02])
            manufacturer = _MANUFACTURERS[int(rng.choice(3, p=[0.92, 0.06, 0.02]))]
            if scenario in ("N", "B", "A", "P"):
                exam = _screening_exam(rng, patient, new_acc(), day, scenario, manufacturer)
            else:
                side = _choice(rng, ["L", "R"])
                exam = _diagnostic_exam(rng, patient, new_acc(), day, scenario, side, _random_position(rng),
                                        manufacturer)
            exams.append(exam)
            if len(exams) >= num_exams:
                break
            callback = [f for f in exam.findings if f.asses == "A" and f.side in ("L", "R")]
            if callback and (patient_index == 1 or rng.uniform() < 0.7):
                # BI-RADS 0 at screening: a diagnostic work-up of that breast weeks later.
                followup_day = day + dt.timedelta(days=int(rng.integers(10, 40)))
                outcome = "S" if patient_index == 1 else _choice(
                    rng, ["N", "B", "P", "S", "M"], [0.25, 0.25, 0.1, 0.25, 0.15])
                exams.append(_diagnostic_exam(rng, patient, new_acc(), followup_day, outcome, callback[0].side,
                                              callback[0].position, manufacturer))
                if len(exams) >= num_exams:
                    break
        patient_index += 1
    return exams


def _microcalcification_exams(rng: np.random.Generator, num_exams: int, fraction: float) -> list[_EmbedExam]:
    """The micro-calcification benchmark: one bilateral 2D screening exam per patient, no finding but
    micro-calcification clusters, on exactly round(fraction x breasts) breasts drawn at random."""
    affected = np.zeros(2 * num_exams, dtype=bool)
    affected[:round(fraction * 2 * num_exams)] = True
    affected = affected[rng.permutation(affected.size)]
    empis = rng.choice(9 * 10**7, size=num_exams, replace=False) + 10**7
    accs = rng.choice(9 * 10**15, size=num_exams, replace=False) + 10**15
    exams = []
    for index in range(num_exams):
        # Past the fixed first scenarios: the patient draws are those of any later patient.
        patient = _embed_patient(rng, int(empis[index]), len(_FIRST_SCENARIOS) + index, allow_male=False)
        day = max(dt.date(2013, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 4))),
                  dt.date(patient.birth.year + 40, 1, 1))
        sides = [side for side, hit in zip(("R", "L"), affected[2 * index:2 * index + 2]) if hit]
        findings = [] if sides else [_EmbedFinding("N", None)]
        for side in ("R", "L") if sides else ():
            if side not in sides:
                findings.append(_EmbedFinding("N", side))
                continue
            finding = _EmbedFinding("S", side, position=_random_position(rng), microcalcifications=True,
                                    calcfind=_choice(rng, list(_MICRO_MORPHOLOGY)),
                                    calcdistri=_choice(rng, list(_MICRO_DISTRIBUTION)))
            finding.pathology = {
                "bside": side, "procdate_anon": _date(day + dt.timedelta(days=int(rng.integers(5, 26)))),
                "type": "B", "path1": "DC", "path_severity": 1.0,
            }
            findings.append(finding)
        manufacturer = _MANUFACTURERS[int(rng.choice(3, p=[0.92, 0.06, 0.02]))]
        desc = _choice(rng, ["MG Screening Bilateral", "MG Screening Bilateral w/CAD"])  # no tomosynthesis
        exams.append(_EmbedExam(patient, int(accs[index]), day, True, ("R", "L"), desc, findings, manufacturer))
    return exams


def _screening_exam(rng, patient, acc, day, scenario, manufacturer) -> _EmbedExam:
    tomo = rng.uniform() < 0.35
    if tomo:
        desc = _choice(rng, ["MG Screen Bilat w/Tomo/CAD Stnd Protocol", "MG Screening Bilat w/Tomosynthesis"])
    else:
        desc = _choice(rng, ["MG Screening Bilateral", "MG Screening Bilateral w/CAD"])
    findings: list[_EmbedFinding] = []
    if scenario == "N":
        findings.append(_EmbedFinding("N", None))
    elif scenario in ("B", "P"):
        side = _choice(rng, ["L", "R", "B"], [0.4, 0.4, 0.2] if scenario == "B" else [0.5, 0.5, 0.0])
        findings.append(_EmbedFinding(scenario, side, position=_random_position(rng),
                                      **_embed_descriptors(rng, scenario)))
        if rng.uniform() < 0.2:
            findings.append(_EmbedFinding("B", _choice(rng, ["L", "R"]), position=_random_position(rng),
                                          **_embed_descriptors(rng, "B")))
    else:  # "A": a BI-RADS 0 row, usually followed by a row for the other breast
        side = _choice(rng, ["L", "R"])
        findings.append(_EmbedFinding("A", side, position=_random_position(rng), **_embed_descriptors(rng, "A")))
        if rng.uniform() < 0.25:
            findings.append(_EmbedFinding("A", side, position=_random_position(rng), **_embed_descriptors(rng, "A")))
        other = "R" if side == "L" else "L"
        if rng.uniform() < 0.8:
            other_asses = _choice(rng, ["N", "B"], [0.7, 0.3])
            findings.append(_EmbedFinding(other_asses, other, position=_random_position(rng),
                                          **_embed_descriptors(rng, other_asses)))
    return _EmbedExam(patient, acc, day, True, ("R", "L"), desc, findings, manufacturer)


def _diagnostic_exam(rng, patient, acc, day, outcome, side, position, manufacturer) -> _EmbedExam:
    bilateral = rng.uniform() < 0.3
    tomo = rng.uniform() < 0.35
    word = {"L": "Left", "R": "Right"}[side]
    if bilateral:
        desc = "MG Diagnostic Bilateral w/Tomo/CAD" if tomo else "MG Diagnostic Mammo Bilateral"
    else:
        desc = f"MG Diagnostic  {word} w/Tomosynthesis" if tomo else f"MG Diagnostic {word} w/CAD"
    findings = [_EmbedFinding(outcome, side, position=position, **_embed_descriptors(rng, outcome))]
    if outcome in ("S", "M") and rng.uniform() < 0.3:
        findings.append(_EmbedFinding("B", side, position=_random_position(rng),
                                      **_embed_descriptors(rng, "B")))
    for finding in findings:
        finding.pathology = _embed_pathology(rng, finding, day) if finding.asses in ("S", "M", "K") else {}
    return _EmbedExam(patient, acc, day, False, ("R", "L") if bilateral else (side,), desc, findings, manufacturer)


def _format_rois(boxes: Sequence[tuple[float, float, float, float]], height: int, width: int) -> str:
    """EMBED's ROI string: a tuple of (ymin, xmin, ymax, xmax) integer tuples."""
    items = []
    for y0, x0, y1, x1 in boxes:
        items.append((int(math.floor(y0)), int(math.floor(x0)), min(int(math.ceil(y1)), height - 1),
                      min(int(math.ceil(x1)), width - 1)))
    return repr(tuple(items))


def _embed_clinical_rows(rng: np.random.Generator, exam: _EmbedExam) -> list[dict]:
    """One row per finding; the exam-level fields are repeated on every row, as in EMBED."""
    patient = exam.patient
    # The report may be signed a day or two after the images were taken.
    report_day = exam.date + dt.timedelta(days=int(_choice(rng, [0, 0, 0, 0, 0, 0, 0, 0, 1, 2])))
    age = (exam.date - patient.birth).days / 365.25
    common = {
        "empi_anon": patient.empi, "acc_anon": exam.acc, "study_date_anon": _date(report_day), "desc": exam.desc,
        "tissueden": float(patient.density) if rng.uniform() > 0.04 else None,
        "total_l_find": float(sum(f.side in ("L", "B") for f in exam.findings if f.asses != "N")),
        "total_r_find": float(sum(f.side in ("R", "B") for f in exam.findings if f.asses != "N")),
        "RACE_DESC": patient.race, "ETHNIC_GROUP_DESC": patient.ethnicity,
        "age_at_study": round(age, 6) if rng.uniform() > 0.02 else None,
    }
    return [
        {**common, "asses": finding.asses, "numfind": number, "side": finding.side,
         "massshape": finding.massshape, "massmargin": finding.massmargin, "massdens": finding.massdens,
         "calcfind": finding.calcfind, "calcdistri": finding.calcdistri, **finding.pathology}
        for number, finding in enumerate(exam.findings, start=1)
    ]


def _embed_lesions_by_side(rng: np.random.Generator, exam: _EmbedExam) -> dict[str, list[tuple[Lesion, bool]]]:
    """Per breast, the lesions to draw and whether the radiologist marked each one (an ROI)."""
    lesions_by_side: dict[str, list[tuple[Lesion, bool]]] = {"L": [], "R": []}
    for finding in exam.findings:
        sides = ("L", "R") if finding.side == "B" else ((finding.side,) if finding.side else ())
        marked = finding.asses in ("A", "P", "S", "M", "K")
        for lesion in _embed_lesions(rng, finding):
            for side in sides:
                lesions_by_side[side].append((lesion, marked and lesion.distribution != "diffuse"))
    return lesions_by_side


def _embed_exam_files(rng, exam: _EmbedExam, *, root: Path, seed: int, height: int, width: int,
                      decks: _EncodingDecks, always_roi: bool = False) -> tuple[list[_ImageJob], list[dict]]:
    """The image files of one exam and their metadata rows (plus a screen-save row, sometimes).

    Marked findings get an ROI on 85% of the exams, or on all of them with `always_roi`."""
    patient = exam.patient
    lesions_by_side = _embed_lesions_by_side(rng, exam)
    has_roi = rng.uniform() < 0.85 or always_roi
    study_uid = _uid(seed, "embed-study", exam.acc)
    study_dir = f"cohort_{patient.cohort}/{patient.empi}/{study_uid}"
    # The metadata's description occasionally differs from the report's, as data entry does.
    description = exam.desc if rng.uniform() > 0.05 else exam.desc.replace("Bilateral", "Bilat")
    age = int((exam.date - patient.birth).days / 365.25)
    jobs, rows = [], []
    for index, image in enumerate(_embed_exam_images(rng, exam, lesions_by_side)):
        sop = _uid(seed, "embed-sop", exam.acc, index)
        relative = f"{study_dir}/{sop}.dcm"
        lesions = lesions_by_side[image["laterality"]]
        job = _ImageJob(
            # A C-view shares its 2D image's key, hence the same breast and findings.
            path=str(root / relative), seed=_image_seed(seed, f"embed/{exam.acc}/{image['key']}"),
            height=height, width=width, laterality=image["laterality"], view=image["view"],
            density=patient.density, lesions=tuple(lesion for lesion, _ in lesions), encoding=decks.draw(),
            spot_zoom=image["spot_zoom"], synthetic_2d=image["type"] == "C-view",
            tags={
                "SOPInstanceUID": sop, "StudyInstanceUID": study_uid,
                "SeriesInstanceUID": _uid(seed, "embed-series", exam.acc, image["series"]),
                "PatientID": str(patient.empi), "AccessionNumber": str(exam.acc),
                "StudyDate": exam.date.strftime("%Y%m%d"), "StudyDescription": description,
                "SeriesDescription": image["series"], "Manufacturer": exam.manufacturer[0],
                "ManufacturerModelName": exam.manufacturer[1], "PatientSex": "M" if patient.male else "F",
                "PatientAge": f"{age:03d}Y", "InstanceNumber": index + 1,
                "PixelSpacing": [f"{0.07 * FULL_IMAGE_SIZE[0] / height / (image['spot_zoom'] or 1):.4f}"] * 2,
                "ImageType": ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D"]
                if image["type"] == "C-view" else ["DERIVED", "PRIMARY"],
            },
        )
        jobs.append(job)
        boxes = [box for box, (_, marked) in zip(job.boxes(), lesions) if marked and box is not None]
        boxes = boxes if has_roi else []
        png_name = hashlib.md5(f"{seed}/{sop}".encode()).hexdigest() + ".png"
        row = {
            "empi_anon": patient.empi, "acc_anon": exam.acc, "anon_dicom_path": f"{EMBED_DICOM_ROOT}/{relative}",
            "png_path": f"{EMBED_PNG_ROOT}/cohort_{patient.cohort}/{patient.empi}/{png_name}",
            "png_filename": png_name, "study_date_anon": _date(exam.date), "StudyDescription": description,
            "SeriesDescription": image["series"], "FinalImageType": image["type"],
            "ImageLateralityFinal": image["laterality"], "ViewPosition": image["view"],
            "spot_mag": float(image["spot_zoom"] is not None), "num_roi": len(boxes),
            "ROI_coords": _format_rois(boxes, height, width), "SRC_DST": None, "match_level": None,
            "Manufacturer": exam.manufacturer[0], "ManufacturerModelName": exam.manufacturer[1],
            "Rows": height, "Columns": width,
        }
        if boxes:
            # The ROI was drawn on a screen save (the source), then matched to 2D (1) and C-view (2).
            screensave_sop = _uid(seed, "embed-ssc", exam.acc, image["laterality"])
            row["SRC_DST"] = repr((f"{EMBED_DICOM_ROOT}/{study_dir}/{screensave_sop}.dcm",) * len(boxes))
            row["match_level"] = repr((2 if image["type"] == "C-view" else 1,) * len(boxes))
        rows.append(row)
    return jobs, rows


def _screensave_row(rng: np.random.Generator, source: dict) -> dict:
    """The radiologist's screen save behind a 2D image's ROI: listed, but (as in the public data) no file."""
    path = ast.literal_eval(source["SRC_DST"])[0]
    offset = int(rng.integers(20, 60))  # the ROI sits elsewhere on the screen than on the image
    y0, x0, y1, x1 = ast.literal_eval(source["ROI_coords"])[0]
    png_name = hashlib.md5(path.encode()).hexdigest() + ".png"
    return {
        **source, "anon_dicom_path": path, "png_filename": png_name,
        "png_path": str(Path(source["png_path"]).with_name(png_name)),
        "SeriesDescription": "Screen Save", "FinalImageType": "ROI_SSC", "ViewPosition": None, "spot_mag": None,
        "num_roi": 1, "ROI_coords": repr(((y0 + offset, x0 + offset, y1 + offset, x1 + offset),)),
        "SRC_DST": repr((source["anon_dicom_path"],)), "match_level": None,
    }


def generate_embed(
    out_dir,
    *,
    num_exams: int = 40,
    image_size=DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    microcalcifications: float | None = None,
) -> Path:
    """Write an EMBED look-alike (tables + DICOM files) under `out_dir` and return its root.

    `microcalcifications=None` (default) writes the usual mix of exams and findings. A fraction p in
    [0, 1] writes the **micro-calcification benchmark** instead: one bilateral 2D screening exam per
    patient (all four standard views, mostly), no mass or other finding anywhere, and a cluster of
    8-20 micro-calcifications (2-3 px dots, see `rendering`) on exactly round(p x 2 x num_exams)
    breasts drawn at random. Each affected breast has its own clinical row: BI-RADS 4 (`asses` S),
    `calcfind` I / A / P (fine pleomorphic, amorphous, punctate), `calcdistri` C / G (clustered,
    grouped), so its report says e.g. "A Clustered Fine pleomorphic calcification is present.", a
    biopsy finding DCIS (`path_severity` 1), and an ROI on every image that shows it; the other breasts
    are BI-RADS 1. The dots survive only at full resolution: generate at a full-field size (e.g.
    `image_size=(2048, 1664)`) and convert at native resolution to keep them.

    >>> import tempfile
    >>> root = generate_embed(tempfile.mkdtemp(), num_exams=2, image_size=(48, 40), progress=False)
    >>> sorted(p.name for p in (root / "tables").iterdir())
    ['AWS_Open_Data_Clinical_Legend.csv', 'EMBED_OpenData_clinical.csv', 'EMBED_OpenData_metadata.csv']
    """
    if microcalcifications is not None and not 0.0 <= float(microcalcifications) <= 1.0:
        raise ValueError(f"microcalcifications={microcalcifications} must be a fraction of breasts in [0, 1]")
    root, height, width = _start_lookalike(
        out_dir, "embed", ("num_exams", num_exams), image_size=image_size, seed=seed,
        microcalcifications=None if microcalcifications is None else float(microcalcifications))
    rng = np.random.default_rng([seed, 1])
    if microcalcifications is None:
        exams = _embed_exams(rng, num_exams)
    else:
        exams = _microcalcification_exams(rng, num_exams, float(microcalcifications))
    decks = _EncodingDecks(rng, [ExplicitVRLittleEndian] * 4 + [JPEG2000Lossless] * 3 + [RLELossless])

    metadata_rows: list[dict] = []
    clinical_rows: list[dict] = []
    jobs: list[_ImageJob] = []
    for exam in exams:
        clinical_rows += _embed_clinical_rows(rng, exam)
        exam_jobs, exam_rows = _embed_exam_files(rng, exam, root=root, seed=seed, height=height, width=width,
                                                 decks=decks, always_roi=microcalcifications is not None)
        jobs += exam_jobs
        metadata_rows += exam_rows
        marked_2d = [row for row in exam_rows if row["num_roi"] and row["FinalImageType"] == "2D"]
        listed = any(row["FinalImageType"] == "ROI_SSC" for row in metadata_rows)
        if marked_2d and (not listed or rng.uniform() < 0.5):
            metadata_rows.append(_screensave_row(rng, marked_2d[0]))

    _write_images(jobs, workers=workers, progress=progress, description="EMBED images")
    tables = root / "tables"
    legend = pd.DataFrame(
        [(header, description, code, meaning)
         for (header, description), rows in _LEGEND.items() for code, meaning in rows],
        columns=EMBED_LEGEND_COLUMNS,
    )
    _write_csv(pd.DataFrame(metadata_rows, columns=EMBED_METADATA_COLUMNS + EMBED_METADATA_EXTRA_COLUMNS),
               tables / "EMBED_OpenData_metadata.csv")
    _write_csv(pd.DataFrame(clinical_rows, columns=EMBED_CLINICAL_COLUMNS), tables / "EMBED_OpenData_clinical.csv")
    _write_csv(legend, tables / "AWS_Open_Data_Clinical_Legend.csv")
    _remove_stale_partials(root)
    return root


def _embed_exam_images(rng, exam: _EmbedExam, lesions_by_side) -> list[dict]:
    """The images of one exam: standard views, some missing or extra, spot views, C-views."""
    tomo = "Tomo" in exam.desc
    images = []

    def add(laterality, view, series, spot_zoom=None, final_type="2D", key=None):
        images.append({"laterality": laterality, "view": view, "series": series, "spot_zoom": spot_zoom,
                       "type": final_type, "key": key or f"{laterality}-{view}-{len(images)}"})

    for side in exam.imaged_sides:
        views = ["CC", "MLO"] if exam.screening or rng.uniform() < 0.7 else ["CC", "ML"]
        if exam.screening and rng.uniform() < 0.08:
            views.remove(_choice(rng, views))  # a view is missing
        if rng.uniform() < 0.1:
            views.append(_choice(rng, ["CC", "MLO", "XCCL"]))  # an extra view (large breast, axilla)
        for view in views:
            add(side, view, f"{side} {view}")
            if tomo and view != "XCCL":
                add(side, view, f"{side} {view} C-View", final_type="C-view", key=images[-1]["key"])
        if not exam.screening and lesions_by_side[side]:
            for _ in range(int(rng.integers(1, 3))):
                view = _choice(rng, ["CC", "ML", "XCCL"])
                zoom = _choice(rng, [1.5, 1.8])
                add(side, view, f"{side} {view} {'SPOT' if zoom == 1.5 else 'MAG'}", spot_zoom=zoom)
    return images
