"""Any folder of mammography DICOM files (a hospital's own export) -> a `datasets.DatasetDict`.

    python data_scripts/dicom_folder.py --root EXPORT --out data/site [--labels labels.csv]
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

Every file below `--root` is looked at (hidden files and folders skipped, any extension): its header
alone is read (`data.dicom_scan.scan_dicoms`, the scan batch prediction uses), so a tree of 100,000
files is scanned in minutes.

- Kept: 2D mammograms (Modality MG, one frame, not "For Processing", not a synthesized C-View). Every
  other file is listed in `failures.csv` with the reason ("not a DICOM file", "not a mammogram
  (Modality CT)", "not 2D (tomosynthesis, 60 frames)", "For Processing image ...", "synthesized 2D
  image ...", "no image", "duplicate image ...").
- Identity: `exam_id` = `StudyInstanceUID` (the file's folder when missing), `patient_id` =
  `PatientID` (the exam when missing), `image_id` = `SOPInstanceUID` (the file's path when missing).
- View and laterality as `dicom.header_view` / `dicom.header_laterality` read them (tags, then
  descriptions, then the file's relative path as the name hint); a side named nowhere is read from
  the pixel mass when the image is decoded.
- Report fields from the header: age (`PatientAge`), procedure (`StudyDescription`), side and view.
- `--labels labels.csv` (optional): one row per image, keyed by a `sop_instance_uid` column or a
  `path` column (relative to `--root`, or absolute). Its columns `birads` (0-6, "BI-RADS 4", EMBED
  letters), `density` (1-4 or A-D), `cancer` (0/1) are the labels, and any `reports.ReportFields`
  name (`procedure`, `reason`, `race`, `ethnicity`, `age`, `image_type`, `laterality`, `view`,
  `density`, `birads`, `mass_shape`, `mass_density`, `mass_margin`, `calc_find`, `calc_distribution`,
  `pathology`) fills the report, over what the header says; other columns are ignored. An image
  without a row keeps None labels; a row naming no scanned image goes to `failures.csv`.
- Splits: train / validation / test 70/10/20 by patient, seeded (`common.split_rows`).

`named_by_path` adds the path as the view / laterality hint to the scan's records (the CMMD converter
scans the same way).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ...dicom import laterality_from_text, view_from_text
from ...labels import cell_text, parse_birads, parse_density
from ...reports import FIELD_NAMES, ReportFields
from ..dicom_scan import DicomRecord, list_files, scan_dicoms
from .common import (
    ConverterError,
    DatasetConverter,
    RowError,
    check_root,
    failure,
    parse_int,
    read_table,
    register_converter,
    report_columns,
    row_error,
    split_rows,
)

KEY_COLUMNS = ("sop_instance_uid", "path")
LABEL_COLUMNS = ("birads", "density", "cancer")


def named_by_path(record: DicomRecord, root: Path) -> DicomRecord:
    """The record with the view and laterality its path below `root` names (folders and file name,
    e.g. `patient7/L_CC.dcm`) filled in where the header names none (source "hint")."""
    path = Path(record.path)
    relative = path.relative_to(root) if path.is_relative_to(root) else path
    hint = relative.with_suffix("").as_posix()
    updates = {}
    if record.view is None and (view := view_from_text(hint)):
        updates.update(view=view, view_source="hint")
    if record.laterality is None and (laterality := laterality_from_text(hint)):
        updates.update(laterality=laterality, laterality_source="hint")
    return dataclasses.replace(record, **updates) if updates else record


def header_row(record: DicomRecord) -> dict[str, Any]:
    """The identity columns of a scanned mammogram: patient, exam, image, file."""
    return {"patient_id": record.patient_id or record.exam_id, "exam_id": record.exam_id,
            "image_id": record.image_id, "source_path": record.path}


def folder_labels(record: dict[str, Any] | None) -> dict[str, int | None]:
    """`birads`, `density`, `cancer` of a labels.csv row (None when absent / empty).

    >>> folder_labels({"birads": "BI-RADS 4", "density": "C", "cancer": "1"})
    {'birads': 4, 'density': 3, 'cancer': 1}
    """
    record = record or {}
    try:
        birads = parse_birads(cell_text(record.get("birads")))
        density = parse_density(cell_text(record.get("density")))
    except ValueError as error:
        raise RowError(f"bad value in labels.csv: {error}") from None
    cancer = parse_int(record.get("cancer"), "cancer")
    if cancer not in (None, 0, 1):
        raise RowError(f"bad value in column cancer: {record.get('cancer')!r} is not 0 or 1")
    return {"birads": birads, "density": density if density in (1, 2, 3, 4) else None, "cancer": cancer}


def read_labels(path, root: Path) -> tuple[dict[str, dict], dict[str, dict], Path]:
    """labels.csv as ({sop_instance_uid: row}, {resolved path: row}, the table's path)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConverterError(f"--labels {path} does not exist.")
    records = read_table(path, [])
    columns = set(records[0]) if records else set()
    if not columns & set(KEY_COLUMNS):
        raise ConverterError(f"--labels {path} needs a {' or a '.join(KEY_COLUMNS)} column to name its images "
                             f"(it has {', '.join(sorted(columns)) or 'no columns'}).")
    by_uid, by_path = {}, {}
    for index, record in enumerate(records):
        record = {**record, "_row_index": index}
        if record.get("sop_instance_uid"):
            by_uid[record["sop_instance_uid"]] = record
        if record.get("path"):
            listed = Path(record["path"])
            by_path[str((listed if listed.is_absolute() else root / listed).resolve())] = record
    return by_uid, by_path, path


def plan_dicom_folder(root, *, labels=None, limit: int | None = None, seed: int = 0, progress: bool = False,
                      ) -> tuple[list[dict], list[dict]]:
    """The output rows (schema columns but `image`, plus split/table/row_index) and the files refused."""
    root = check_root(root)
    files = list_files(root, exclude=[labels] if labels is not None else ())  # labels.csv may sit in --root
    if limit is not None:
        files = files[:limit]
    records, scan_failures = scan_dicoms(files, progress=progress)
    records = [named_by_path(record, root) for record in records]
    refused = [{"image_id": None, "source_path": entry.path, "reason": entry.reason, "table": None, "row_index": None}
               for entry in scan_failures]
    by_uid, by_path, table = read_labels(labels, root) if labels is not None else ({}, {}, None)
    used: set[int] = set()
    planned = []
    for record in records:
        row = {**header_row(record), "table": table.name if table else None, "row_index": None}
        listed = by_uid.get(record.image_id) or by_path.get(str(Path(record.path).resolve()))
        fields = {"age": record.age, "procedure": record.procedure, "laterality": record.laterality,
                  "view": record.view}
        try:
            if listed is not None:
                used.add(listed["_row_index"])
                row["row_index"] = listed["_row_index"]
                fields.update({name: listed[name] for name in FIELD_NAMES if listed.get(name) is not None})
            report = ReportFields(**fields)
            row.update(laterality=report.laterality if report.laterality in ("L", "R") else None, view=report.view,
                       **report_columns(report), **folder_labels(listed))
        except ValueError as error:
            refused.append(failure(row, row_error(error)))
            continue
        planned.append(row)
    for listed in [*by_uid.values(), *by_path.values()]:
        if listed["_row_index"] not in used and limit is None:
            used.add(listed["_row_index"])
            refused.append({"image_id": listed.get("sop_instance_uid"), "source_path": listed.get("path"),
                            "reason": "listed in the labels table but not found among the scanned mammograms",
                            "table": table.name, "row_index": listed["_row_index"]})
    return split_rows(planned, seed=seed), refused


@register_converter
class DicomFolderConverter(DatasetConverter):
    """A folder of DICOM files, with an optional labels table; 70/10/20 by patient."""

    name = "dicom_folder"
    description = "DICOM images"

    option_defaults = {"labels": None}
    planner = staticmethod(plan_dicom_folder)


def convert_dicom_folder(root, out, *, labels=None, **convert_options):
    """Convert every 2D mammogram below `root` into a DatasetDict saved at `out`; returns it (loaded back).

    `convert_options`: `DatasetConverter.convert`'s (`limit` reads only the first N files, in sorted order).
    """
    return DicomFolderConverter(root, labels=labels).convert(out, **convert_options)
