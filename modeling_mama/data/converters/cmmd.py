"""CMMD, The Chinese Mammography Database (digital, CC BY 4.0) -> a `datasets.DatasetDict` (DESIGN.md schema).

    python data_scripts/cmmd.py --root CMMD_DOWNLOAD --out data/cmmd [--clinical CMMD_clinicaldata_revision.xlsx]
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

Reads the clinical sheet (`CMMD_clinicaldata_revision.xlsx`, read with openpyxl, or its CSV export;
at `--root` or below it unless `--clinical` names it) with the columns `ID1, LeftRight, Age, number,
abnormality, classification, subtype` (one row per breast), and the `.dcm` files of the TCIA download
(`CMMD/<ID1>/<date>-NA-NA-<n>/1.000000-NA-<n>/1-1.dcm, 1-2.dcm, ...`), whose headers alone are
scanned (`data.dicom_scan.scan_dicoms`).

- One row per image, joined to its breast's clinical row by patient (`ID1`: the `PatientID` tag, else
  the folder below `--root` named like an `ID1`) and side (the image's `ImageLaterality` /
  `Laterality`). The view comes from the header as `dicom.header_view` reads it (ViewPosition, View
  Code Sequence, ...). CMMD images the affected breasts only: an image of a breast the sheet does not
  list, or whose side the header does not say, goes to `failures.csv`; so does a sheet row with no
  image.
- Identity: `patient_id` = `ID1`, `exam_id` = `StudyInstanceUID`, `image_id` = `SOPInstanceUID`.
- Labels: `cancer` from `classification` (Malignant 1, Benign 0); `birads` and `density` are None
  (CMMD has neither; nothing is guessed).
- Report: age, side, view, the abnormality ("Findings: The mammogram shows that a mass and a
  calcification are present."; the finding words are "Generic", EMBED's legend word for a finding
  without descriptors) and the pathology ("Pathology: The finding is malignant.").
- Splits: 70/10/20 by patient, seeded (`common.split_rows`); CMMD publishes no split.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...labels import cell_text, normalize_pathology
from ...reports import ReportFields
from ..dicom_scan import list_files, scan_dicoms
from .common import (
    ConverterError,
    DatasetConverter,
    RowError,
    check_root,
    failure,
    parse_laterality,
    read_table,
    register_converter,
    report_columns,
    row_error,
    split_rows,
)
from .dicom_folder import header_row

CLINICAL_NAMES = ("CMMD_clinicaldata_revision.xlsx", "CMMD_clinicaldata_revision.csv")
CLINICAL_COLUMNS = ["ID1", "LeftRight", "Age", "abnormality", "classification"]
PATIENT_ID = re.compile(r"D\d-\d{4}")
ABNORMALITY_WORDS = {"mass": ("Generic", None), "calcification": (None, "Generic"), "both": ("Generic", "Generic")}


def read_sheet(path: Path, required) -> list[dict[str, str | None]]:
    """The clinical sheet's rows as text (like `common.read_table`), from an .xlsx workbook (its first
    sheet) or a CSV export."""
    if path.suffix.lower() not in (".xlsx", ".xlsm"):
        return read_table(path, required)
    import pandas as pd

    try:
        frame = pd.read_excel(path, dtype=str, keep_default_na=False, na_filter=False)
    except ImportError as error:
        raise ConverterError(f"Reading {path} needs openpyxl (pip install openpyxl), or export the sheet to CSV "
                             f"and pass that file with --clinical ({error}).") from error
    except (ValueError, OSError) as error:
        raise ConverterError(f"{path} cannot be read as an Excel workbook: {error}") from error
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ConverterError(f"{path} lacks the column(s) {', '.join(repr(c) for c in missing)} "
                             f"(it has {', '.join(frame.columns)}). Is this the CMMD clinical sheet as published?")
    return [{column: cell_text(value) for column, value in record.items()} for record in frame.to_dict("records")]


def find_clinical(root: Path, clinical=None) -> Path:
    """The clinical sheet: `clinical` when given, else the first of `CLINICAL_NAMES` at or below `root`."""
    if clinical is not None:
        path = Path(clinical).expanduser()
        if not path.is_file():
            raise ConverterError(f"--clinical {path} does not exist.")
        return path
    for name in CLINICAL_NAMES:
        found = [root / name] if (root / name).is_file() else sorted(root.rglob(name))
        if found:
            return found[0]
    raise ConverterError(f"The CMMD clinical sheet is missing: looked for {' or '.join(CLINICAL_NAMES)} in {root} "
                         "and below. Download it from the TCIA page of CMMD, or pass its path with --clinical.")


def cmmd_fields(record: dict[str, Any], laterality: str | None, view: str | None) -> tuple[ReportFields, dict]:
    """Report fields and labels of an image of the breast described by clinical `record`.

    >>> fields, labels = cmmd_fields({"Age": "44", "abnormality": "both", "classification": "Malignant"}, "L", "CC")
    >>> fields.age, fields.mass_shape, fields.calc_find, fields.pathology, labels
    (44, 'Generic', 'Generic', 'malignant', {'birads': None, 'density': None, 'cancer': 1})
    """
    abnormality = (cell_text(record.get("abnormality")) or "").lower()
    if abnormality and abnormality not in ABNORMALITY_WORDS:
        raise RowError(f"bad value in column abnormality: {record.get('abnormality')!r} is not calcification, "
                       "mass or both")
    mass, calcification = ABNORMALITY_WORDS.get(abnormality, (None, None))
    try:
        pathology = normalize_pathology(record.get("classification"))
    except ValueError:
        raise RowError(f"bad value in column classification: {record.get('classification')!r} is not Benign or "
                       "Malignant") from None
    fields = ReportFields(age=record.get("Age"), laterality=laterality, view=view, mass_shape=mass,
                          calc_find=calcification, pathology=pathology)
    cancer = None if pathology is None else int(pathology == "malignant")
    return fields, {"birads": None, "density": None, "cancer": cancer}


def plan_cmmd(root, *, clinical=None, limit: int | None = None, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The output rows (schema columns but `image`, plus split/table/row_index) and the refusals."""
    root = check_root(root)
    sheet = find_clinical(root, clinical)
    breasts: dict[tuple[str, str], tuple[int, dict]] = {}
    refused = []
    for index, record in enumerate(read_sheet(sheet, CLINICAL_COLUMNS)):
        patient, side = cell_text(record["ID1"]), parse_laterality(record["LeftRight"])
        entry = {"image_id": None, "source_path": None, "table": sheet.name, "row_index": index}
        if not patient or side is None:
            refused.append({**entry, "reason": f"bad value in column LeftRight / ID1: {record['ID1']!r}, "
                                               f"{record['LeftRight']!r}"})
        elif (patient, side) in breasts:
            refused.append({**entry, "reason": f"duplicate breast: row {breasts[(patient, side)][0]} describes "
                                               f"{patient} {side} too"})
        else:
            breasts[(patient, side)] = (index, record)

    files = [path for path in list_files(root) if path.suffix.lower() == ".dcm"]  # TCIA writes .dcm files
    records, scan_failures = scan_dicoms(files[:limit] if limit is not None else files)
    refused += [{"image_id": None, "source_path": entry.path, "reason": entry.reason, "table": None,
                 "row_index": None} for entry in scan_failures]
    known_patients = {patient for patient, _ in breasts}
    planned, used = [], set()
    for record in records:
        folders = [part for part in Path(record.path).relative_to(root).parts if PATIENT_ID.fullmatch(part)]
        patient = record.patient_id if record.patient_id in known_patients else (folders[0] if folders else
                                                                                 record.patient_id)
        row = {**header_row(record), "patient_id": patient, "table": sheet.name, "row_index": None}
        try:
            if record.laterality is None:
                raise RowError("laterality unknown: the header has no ImageLaterality / Laterality (CMMD joins "
                               "images to the clinical sheet by side)")
            if (patient, record.laterality) not in breasts:
                raise RowError(f"no clinical row for {patient} {record.laterality} in {sheet.name}")
            index, clinical_row = breasts[(patient, record.laterality)]
            row["row_index"] = index
            used.add((patient, record.laterality))
            fields, labels = cmmd_fields(clinical_row, record.laterality, record.view)
        except ValueError as error:
            refused.append(failure(row, row_error(error)))
            continue
        row.update(laterality=record.laterality, view=fields.view, **report_columns(fields), **labels)
        planned.append(row)
    if limit is None:
        for key, (index, _) in breasts.items():
            if key not in used:
                refused.append({"image_id": None, "source_path": None, "table": sheet.name, "row_index": index,
                                "reason": f"no image of {key[0]} {key[1]} found below {root}"})
    return split_rows(planned, seed=seed), refused


@register_converter
class CmmdConverter(DatasetConverter):
    """CMMD: one row per image joined to its breast's clinical row; 70/10/20 by patient."""

    name = "cmmd"
    description = "CMMD images"

    option_defaults = {"clinical": None}
    planner = staticmethod(plan_cmmd)


def convert_cmmd(root, out, *, clinical=None, **convert_options):
    """Convert CMMD under `root` into a DatasetDict saved at `out`; returns it (loaded back).

    `convert_options`: `DatasetConverter.convert`'s (`limit` reads only the first N files, in sorted order).
    """
    return CmmdConverter(root, clinical=clinical).convert(out, **convert_options)
