"""Find the mammograms in a folder of DICOM files (or a CSV of paths) from their headers alone.

A PACS export or a site's test set is a tree of files: 2D mammograms next to tomosynthesis volumes,
"For Processing" raw images, structured reports, other modalities and the odd text file, often
without a file extension. `scan_dicoms` reads only each file's header (pydicom
`stop_before_pixels`: a few kB, whatever the size of the pixel data), keeps the 2D "For
Presentation" full-field mammograms as `DicomRecord`s and lists every other file as a `ScanFailure`
with the reason; it never stops for one file. Synthesized 2D images (C-View, `ImageType` value
GENERATED_2D, reconstructed from a tomosynthesis volume) are left out unless asked for: the recipe
pre-trains on full-field 2D images only, and a C-View next to the 2D image of the same view would count
that view twice in its breast's score. `group_by_exam` then groups the records into exams
(`StudyInstanceUID`) and breasts (laterality).

The header does not always say which breast an image shows: a record without an `ImageLaterality` or
`Laterality` tag has `laterality=None`, and `dicom.read_dicom` infers it from the pixels once the image
is decoded (its `laterality_source` says `"pixels"`).

>>> from modeling_mama.data.dicom_scan import group_by_exam, scan_dicoms
>>> records, failures = scan_dicoms("pacs_export/")                        # doctest: +SKIP
>>> for exam_id, breasts in group_by_exam(records).items():                 # doctest: +SKIP
...     print(exam_id, {side: [r.view for r in views] for side, views in breasts.items()})
1.2.840.1136...  {'L': ['CC', 'MLO'], 'R': ['CC', 'MLO']}
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from tqdm.auto import tqdm

from ..dicom import MAMMOGRAPHY_MODALITY, _text, _view_position
from ..labels import parse_age
from ..reports import ReportFields

# SOP classes that hold no 2D image, or an image the model was not trained on.
TOMOSYNTHESIS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.13.1.3"  # Breast Tomosynthesis Image Storage
FOR_PROCESSING_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2.1"  # Digital Mammography X-Ray, For Processing
SYNTHESIZED_2D = "GENERATED_2D"  # ImageType value of a 2D image computed from a tomosynthesis volume
LATERALITY_TAGS = ("ImageLaterality", "Laterality")


class ScanError(ValueError):
    """A file that is not a 2D mammogram; the message is the reason recorded in `failures.csv`."""


@dataclass(frozen=True)
class DicomRecord:
    """What the header of one 2D mammogram says.

    `exam_id` is the `StudyInstanceUID` (the file's folder when the tag is missing: the files of one
    study are usually stored together); `image_id` the `SOPInstanceUID` (the path when missing).
    `laterality` / `view` are None when the header does not give them, and `laterality_source` /
    `view_source` name the tag each came from.
    """

    path: str
    image_id: str
    exam_id: str
    patient_id: str | None
    laterality: str | None
    laterality_source: str | None
    view: str | None
    view_source: str | None
    age: int | None
    procedure: str | None
    rows: int
    columns: int

    def report_fields(self, laterality: str | None = None) -> ReportFields:
        """The report fields the header gives (the paper's metadata sections for zero-shot prompts).

        `laterality` overrides the header's (e.g. the side `read_dicom` inferred from the pixels).
        `procedure` is the `StudyDescription`, which is what EMBED's procedure column holds.
        """
        return ReportFields(procedure=self.procedure, age=self.age, laterality=laterality or self.laterality,
                            view=self.view)


@dataclass(frozen=True)
class ScanFailure:
    """A file that was not kept, and why (e.g. "not a DICOM file", "not a mammogram (Modality CT)")."""

    path: str
    reason: str


def read_header(path: str | os.PathLike, *, include_synthesized_2d: bool = False) -> DicomRecord:
    """The `DicomRecord` of one file, reading its header only.

    Raises:
        ScanError: the file is not DICOM, not MG, not a single 2D frame, a "For Processing" image, a
            synthesized 2D image (unless `include_synthesized_2d`), or holds no image; the message is
            the reason alone (the caller knows the path).
        FileNotFoundError: `path` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise ScanError("not a DICOM file") from None
    except Exception as error:  # truncated or garbled headers fail in many ways inside pydicom
        raise ScanError(f"unreadable DICOM header ({type(error).__name__}: {error})") from None
    _check_is_2d_mammogram(ds, include_synthesized_2d)
    laterality, laterality_source = _header_laterality(ds)
    view = _view_position(ds)
    view_source = None if view is None else ("ViewPosition" if _text(ds, "ViewPosition") else "ViewCodeSequence")
    try:
        age = parse_age(_text(ds, "PatientAge"))
    except ValueError:
        age = None  # a malformed age only removes it from the prompt
    return DicomRecord(
        path=str(path),
        image_id=_text(ds, "SOPInstanceUID") or str(path),
        exam_id=_text(ds, "StudyInstanceUID") or str(path.parent),
        patient_id=_text(ds, "PatientID"),
        laterality=laterality,
        laterality_source=laterality_source,
        view=view,
        view_source=view_source,
        age=age,
        procedure=_text(ds, "StudyDescription"),
        rows=int(ds.get("Rows") or 0),
        columns=int(ds.get("Columns") or 0),
    )


def list_files(source: str | os.PathLike, *, path_column: str = "path",
               exclude: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The files to scan: every file under a folder (recursively, hidden files and folders skipped,
    sorted), or the `path_column` of a CSV (relative paths are relative to the CSV's folder).

    `exclude` lists files to leave out (e.g. the prediction output written into the same folder).
    """
    source = Path(source)
    excluded = {Path(path).resolve() for path in exclude}
    if source.is_dir():
        files = []
        for folder, subfolders, names in os.walk(source):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            files += [Path(folder) / name for name in sorted(names) if not name.startswith(".")]
    elif source.is_file() and source.suffix.lower() == ".csv":
        import pandas as pd

        table = pd.read_csv(source, dtype=str, keep_default_na=False)
        if path_column not in table.columns:
            raise ValueError(f"{source}: no {path_column!r} column (columns: {', '.join(table.columns)}); "
                             f"name the column of file paths with path_column (--path_column).")
        files = [path if path.is_absolute() else source.parent / path
                 for path in (Path(value) for value in table[path_column] if value.strip())]
    elif source.exists():
        raise ValueError(f"{source}: expected a folder of DICOM files or a .csv file with a {path_column!r} column.")
    else:
        raise FileNotFoundError(f"{source}: no such folder or CSV file.")
    return [path for path in files if path.resolve() not in excluded]


def scan_dicoms(source: str | os.PathLike | Sequence[str | os.PathLike], *, path_column: str = "path",
                exclude: Iterable[str | os.PathLike] = (), include_synthesized_2d: bool = False,
                progress: bool = False) -> tuple[list[DicomRecord], list[ScanFailure]]:
    """Read the headers of a folder's files (or a CSV's, or a list of paths): (records, failures).

    Records come in file order; a second file with the same `SOPInstanceUID` (a copy of an image) is
    a failure, so that no image counts twice in its breast's score.
    """
    if isinstance(source, (str, os.PathLike)):
        paths = list_files(source, path_column=path_column, exclude=exclude)
    else:
        paths = [Path(path) for path in source]
    records: list[DicomRecord] = []
    failures: list[ScanFailure] = []
    first_path: dict[str, str] = {}
    for path in tqdm(paths, desc="reading headers", unit="file", disable=not progress):
        try:
            record = read_header(path, include_synthesized_2d=include_synthesized_2d)
        except FileNotFoundError:
            failures.append(ScanFailure(str(path), "file missing"))
            continue
        except ScanError as error:
            failures.append(ScanFailure(str(path), str(error)))
            continue
        if record.image_id in first_path:
            reason = f"duplicate image (same SOPInstanceUID as {first_path[record.image_id]})"
            failures.append(ScanFailure(str(path), reason))
            continue
        first_path[record.image_id] = record.path
        records.append(record)
    return records, failures


def group_by_exam(records: Iterable[DicomRecord]) -> dict[str, dict[str | None, list[DicomRecord]]]:
    """{exam_id: {laterality: [records]}}, exams and breasts in order of first appearance.

    Records whose header gives no laterality are grouped under None (their side is known only after
    decoding, from the pixels).
    """
    exams: dict[str, dict[str | None, list[DicomRecord]]] = {}
    for record in records:
        exams.setdefault(record.exam_id, {}).setdefault(record.laterality, []).append(record)
    return exams


def _check_is_2d_mammogram(ds: Dataset, include_synthesized_2d: bool) -> None:
    file_meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID") or (file_meta.get("MediaStorageSOPClassUID") if file_meta else "") or "")
    modality = _text(ds, "Modality")
    if modality != MAMMOGRAPHY_MODALITY:
        described = f" ({UID(sop_class).name})" if sop_class and modality is None else ""
        raise ScanError(f"not a mammogram (Modality {modality or 'missing'}{described})")
    frames = int(ds.get("NumberOfFrames") or 1)
    if sop_class == TOMOSYNTHESIS_SOP_CLASS or frames > 1:
        raise ScanError(f"not 2D ({'tomosynthesis, ' if sop_class == TOMOSYNTHESIS_SOP_CLASS else ''}{frames} frames)")
    if sop_class == FOR_PROCESSING_SOP_CLASS or (_text(ds, "PresentationIntentType") or "").upper() == "FOR PROCESSING":
        raise ScanError("For Processing image (raw detector data); the model reads For Presentation images")
    image_type = [str(value).strip().upper() for value in (ds.get("ImageType") or [])]
    if SYNTHESIZED_2D in image_type and not include_synthesized_2d:
        raise ScanError("synthesized 2D image (C-View: ImageType GENERATED_2D); left out unless include_synthesized_2d")
    if not ds.get("Rows") or not ds.get("Columns"):
        described = f" ({UID(sop_class).name})" if sop_class else ""
        raise ScanError(f"no image{described}")


def _header_laterality(ds: Dataset) -> tuple[str | None, str | None]:
    for keyword in LATERALITY_TAGS:
        value = (_text(ds, keyword) or "").upper()
        if value in ("L", "R"):
            return value, keyword
    return None, None


__all__ = [
    "DicomRecord", "LATERALITY_TAGS", "ScanError", "ScanFailure", "group_by_exam", "list_files", "read_header",
    "scan_dicoms",
]
