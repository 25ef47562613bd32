"""Any folder of mammography DICOM files (a hospital's own export) -> a `datasets.DatasetDict`.

    python data_scripts/dicom_folder.py --root EXPORT --out data/site [--labels labels.csv]
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

Every file below `--root` is looked at (hidden files and folders skipped, any extension): its header
alone is read (`scan_mammograms`), so a tree of 100,000 files is scanned in minutes.

- Kept: 2D mammograms (Modality MG, one frame, not "For Processing"). Every other file is listed in
  `failures.csv` with the reason ("not a DICOM file", "not a mammogram (Modality CT)", "not 2D
  (tomosynthesis, 60 frames)", "For Processing image ...", "no image", "duplicate image ...").
- Identity: `exam_id` = `StudyInstanceUID`, `patient_id` = `PatientID` (the exam when missing),
  `image_id` = `SOPInstanceUID` (the relative path when missing).
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
- Splits: train / validation / test 70/10/20 by patient, seeded (`common.split_patients`).

`scan_mammograms` is the reusable part (the CMMD converter scans with it too).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ...dicom import MAMMOGRAPHY_MODALITY, header_laterality, header_view
from ...labels import cell_text, parse_age, parse_birads, parse_density
from ...reports import FIELD_NAMES, ReportFields
from .common import (
    DEFAULT_IMAGE_SIZE,
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
    split_patients,
)

TOMOSYNTHESIS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.13.1.3"  # Breast Tomosynthesis Image Storage
FOR_PROCESSING_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2.1"  # Digital Mammography X-Ray, For Processing
KEY_COLUMNS = ("sop_instance_uid", "path")
LABEL_COLUMNS = ("birads", "density", "cancer")


class NotAMammogram(ValueError):
    """A file that is not a 2D mammogram; the message is the reason recorded in `failures.csv`."""


@dataclass(frozen=True)
class HeaderRecord:
    """What the header of one 2D mammogram says (`read_mammogram_header`).

    `relative` is the path below the scanned root (POSIX form). `laterality` / `view` are None when
    nothing in the header or the path names them; `*_source` say where each came from.
    """

    path: str
    relative: str
    sop_instance_uid: str | None
    study_instance_uid: str | None
    patient_id: str | None
    laterality: str | None
    laterality_source: str | None
    view: str | None
    view_source: str | None
    age: int | None
    procedure: str | None
    rows: int
    columns: int


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = None if value is None else str(value).strip()
    return text or None


def read_mammogram_header(path, root) -> HeaderRecord:
    """The `HeaderRecord` of one file, reading its header only (`stop_before_pixels`).

    The relative path (folders and file name, e.g. `patient7/L_CC.dcm`) is the name hint for the view
    and the laterality. Raises `NotAMammogram` with the reason for anything that is not a 2D
    mammogram "For Presentation".
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path, root = Path(path), Path(root)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise NotAMammogram("not a DICOM file") from None
    except Exception as error:  # truncated or garbled headers fail in many ways inside pydicom
        raise NotAMammogram(f"unreadable DICOM header ({type(error).__name__}: {error})") from None
    modality = _text(ds, "Modality")
    if modality != MAMMOGRAPHY_MODALITY:
        raise NotAMammogram(f"not a mammogram (Modality {modality or 'missing'})")
    sop_class = str(ds.get("SOPClassUID") or "")
    frames = int(ds.get("NumberOfFrames") or 1)
    if sop_class == TOMOSYNTHESIS_SOP_CLASS or frames > 1:
        raise NotAMammogram(f"not 2D ({'tomosynthesis, ' if sop_class == TOMOSYNTHESIS_SOP_CLASS else ''}"
                            f"{frames} frames)")
    if sop_class == FOR_PROCESSING_SOP_CLASS or (_text(ds, "PresentationIntentType") or "").upper() == "FOR PROCESSING":
        raise NotAMammogram("For Processing image (raw detector data); convert the For Presentation image")
    if not ds.get("Rows") or not ds.get("Columns"):
        raise NotAMammogram("no image")
    relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    hint = relative.rsplit(".", 1)[0] if "." in Path(relative).name else relative
    view, view_source = header_view(ds, name_hint=hint)
    laterality, laterality_source = header_laterality(ds, name_hint=hint)
    try:
        age = parse_age(_text(ds, "PatientAge"))
    except ValueError:
        age = None  # a malformed age only leaves the report's age unknown
    return HeaderRecord(
        path=str(path), relative=relative, sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"), patient_id=_text(ds, "PatientID"),
        laterality=laterality, laterality_source=laterality_source, view=view, view_source=view_source, age=age,
        procedure=_text(ds, "StudyDescription"), rows=int(ds.Rows), columns=int(ds.Columns),
    )


def list_files(root: Path) -> list[Path]:
    """Every file below `root`, hidden files and folders skipped, in sorted order."""
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        files += [Path(folder) / name for name in sorted(names) if not name.startswith(".")]
    return files


def scan_mammograms(root, *, files: Sequence[Path] | None = None, progress: bool = False,
                    ) -> tuple[list[HeaderRecord], list[tuple[str, str]]]:
    """Read the headers of the files below `root` (or of `files`): (2D mammograms, [(path, reason)]).

    Records keep file order; a second file with the same `SOPInstanceUID` is a failure ("duplicate
    image"), so no image is converted twice.
    """
    root = Path(root)
    records: list[HeaderRecord] = []
    failures: list[tuple[str, str]] = []
    first: dict[str, str] = {}
    paths = list_files(root) if files is None else list(files)
    for path in tqdm(paths, desc="reading headers", unit="file", disable=not progress):
        try:
            record = read_mammogram_header(path, root)
        except NotAMammogram as error:
            failures.append((str(path), str(error)))
            continue
        if record.sop_instance_uid and record.sop_instance_uid in first:
            failures.append((str(path), f"duplicate image (same SOPInstanceUID as {first[record.sop_instance_uid]})"))
            continue
        if record.sop_instance_uid:
            first[record.sop_instance_uid] = record.path
        records.append(record)
    return records, failures


def header_row(record: HeaderRecord) -> dict[str, Any]:
    """The identity columns of a scanned mammogram: patient, exam, image, file."""
    exam = record.study_instance_uid or str(Path(record.relative).parent)
    return {
        "patient_id": record.patient_id or exam, "exam_id": exam,
        "image_id": record.sop_instance_uid or record.relative, "source_path": record.path,
    }


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
    files = list_files(root)
    if labels is not None:
        label_path = Path(labels).expanduser().resolve()
        files = [path for path in files if path.resolve() != label_path]  # labels.csv may sit in --root
    if limit is not None:
        files = files[:limit]
    records, scan_failures = scan_mammograms(root, files=files, progress=progress)
    refused = [{"image_id": None, "source_path": path, "reason": reason, "table": None, "row_index": None}
               for path, reason in scan_failures]
    by_uid, by_path, table = read_labels(labels, root) if labels is not None else ({}, {}, None)
    used: set[int] = set()
    planned = []
    for record in records:
        row = {**header_row(record), "table": table.name if table else None, "row_index": None}
        listed = by_uid.get(record.sop_instance_uid) or by_path.get(str(Path(record.path).resolve()))
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
    for row, split in zip(planned, split_patients([row["patient_id"] for row in planned], seed=seed)):
        row["split"] = split
    return planned, refused


@register_converter
class DicomFolderConverter(DatasetConverter):
    """A folder of DICOM files, with an optional labels table; 70/10/20 by patient."""

    name = "dicom_folder"
    description = "DICOM images"

    def __init__(self, root, *, labels=None):
        super().__init__(root, labels=labels)

    def plan(self, *, limit: int | None = None, seed: int = 0) -> tuple[list[dict], list[dict]]:
        return plan_dicom_folder(self.root, labels=self.options["labels"], limit=limit, seed=seed)


def convert_dicom_folder(root, out, *, labels=None, image_size: int = DEFAULT_IMAGE_SIZE, workers: int = 1,
                         limit: int | None = None, seed: int = 0, progress: bool = True, keep_cache: bool = True):
    """Convert every 2D mammogram below `root` into a DatasetDict saved at `out`; returns it (loaded back).

    `limit` reads only the first N files (in sorted order).
    """
    return DicomFolderConverter(root, labels=labels).convert(
        out, image_size=image_size, workers=workers, limit=limit, seed=seed, progress=progress, keep_cache=keep_cache)
