"""EMBED (Emory Breast Imaging Dataset) -> a `datasets.DatasetDict` (DESIGN.md schema).

    python data_scripts/embed.py --root EMBED --out data/embed [--dicom-root DIR]
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

Reads, as published, `tables/EMBED_OpenData_metadata.csv` (or `_reduced`), `tables/EMBED_OpenData_clinical.csv`
(or `_reduced`), `tables/AWS_Open_Data_Clinical_Legend.csv` (the tables may also sit directly in
`--root`), and the DICOM files `cohort_N/<empi_anon>/<study>/<SOPInstanceUID>.dcm`.

- Images: one output row per metadata row with `FinalImageType == "2D"`; every other row goes to
  `failures.csv` ("not 2D (FinalImageType C-view)"), as do repeated rows ("duplicate row"), files
  that are not there ("file missing") and files that cannot be decoded ("decode error: ...").
  `image_id` is the file name without `.dcm` (the SOPInstanceUID), `patient_id` is `empi_anon`,
  `exam_id` is `acc_anon`.
- Paths: `anon_dicom_path` is an absolute path on the provider's machine
  (`/mnt/NAS2/mammo/anon_dicom/cohort_1/...`). Everything before its `cohort_N/` component is
  replaced by `--dicom-root` (default: `--root`), the folder that holds `cohort_1/`, `cohort_2/`.
- Join (METHOD.md section 3, `reports.select_clinical_row`): the clinical rows with the image's
  `acc_anon`; among them those whose `side` is the image's `ImageLateralityFinal`, else those with
  side B (or no side), else all; then the BI-RADS 0 row when every candidate is BI-RADS <= 2 and
  one is 0, otherwise the highest BI-RADS. An image whose exam has no clinical row is kept, with
  its metadata-only report and labels None.
- Report fields (`ReportFields.from_embed`): metadata (StudyDescription, FinalImageType,
  ImageLateralityFinal, ViewPosition) + the chosen clinical row (RACE_DESC, ETHNIC_GROUP_DESC,
  age_at_study, tissueden, asses, massshape, massdens, calcfind, calcdistri) + the legend's words.
- Labels, from the chosen clinical row: `birads` from `asses` (A=0 N=1 B=2 P=3 S=4 M=5 K=6; X and
  empty -> None); `density` from `tissueden` (1-4 = A-D; 5 = male -> None; the report keeps 5 as
  `report_density`); `cancer` from `path_severity`: 0 (invasive) or 1 (in situ / non-invasive
  cancer) -> 1; 2-6 (high risk, borderline, benign, negative, non-breast cancer) -> 0; empty (no
  pathology, e.g. a screening exam never biopsied) -> None.
- Splits: train/validation/test = 70/10/20 of the patients (`common.assign_patients`, seeded), plus
  `test_balanced`: among the test rows with a BI-RADS label, every BI-RADS class present keeps as
  many images as the smallest class has, drawn with the seed (`common.balanced_subset`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

from ...labels import MALE_DENSITY, parse_birads, parse_density
from ...reports import ReportFields, load_embed_legend, select_clinical_row
from .common import (
    ConverterError,
    DatasetConverter,
    RowError,
    cell_text,
    check_root,
    duplicate_rows,
    failure,
    find_table,
    normalize_id,
    parse_int,
    parse_laterality,
    read_table,
    register_converter,
    report_columns,
    row_error,
    split_rows,
)

METADATA_TABLES = ["tables/EMBED_OpenData_metadata.csv", "tables/EMBED_OpenData_metadata_reduced.csv",
                   "EMBED_OpenData_metadata.csv", "EMBED_OpenData_metadata_reduced.csv"]
CLINICAL_TABLES = ["tables/EMBED_OpenData_clinical.csv", "tables/EMBED_OpenData_clinical_reduced.csv",
                   "EMBED_OpenData_clinical.csv", "EMBED_OpenData_clinical_reduced.csv"]
LEGEND_TABLES = ["tables/AWS_Open_Data_Clinical_Legend.csv", "AWS_Open_Data_Clinical_Legend.csv"]
METADATA_COLUMNS = [
    "empi_anon", "acc_anon", "anon_dicom_path", "FinalImageType", "ImageLateralityFinal", "ViewPosition",
]
CLINICAL_COLUMNS = ["acc_anon", "side", "asses", "tissueden", "path_severity"]

IMAGE_TYPE_2D = "2D"
CANCER_SEVERITIES = (0, 1)  # invasive, non-invasive (in situ) cancer
KNOWN_SEVERITIES = range(0, 7)
SPLITS = ("train", "validation", "test")
BALANCED_SPLIT = "test_balanced"


def reroot_dicom_path(anon_dicom_path: str, dicom_root) -> Path:
    """The provider's absolute path moved under `dicom_root`, from its `cohort_N/` component on.

    >>> reroot_dicom_path("/mnt/NAS2/mammo/anon_dicom/cohort_1/123/1.2/1.2.3.dcm", "/data/embed").as_posix()
    '/data/embed/cohort_1/123/1.2/1.2.3.dcm'
    """
    parts = PurePosixPath(anon_dicom_path.replace("\\", "/")).parts
    for index, part in enumerate(parts):
        if re.fullmatch(r"cohort_\d+", part):
            return Path(dicom_root, *parts[index:])
    raise RowError(f"cannot re-root anon_dicom_path {anon_dicom_path!r}: it has no cohort_N/ folder")


def cancer_from_severity(value) -> int | None:
    """EMBED `path_severity` -> cancer label (1 for 0 invasive / 1 in situ, 0 for 2-6, None when empty).

    >>> [cancer_from_severity(v) for v in ("0.0", "1", "4.0", "6", None)]
    [1, 1, 0, 0, None]
    """
    severity = parse_int(value, "path_severity")
    if severity is None:
        return None
    if severity not in KNOWN_SEVERITIES:
        raise RowError(f"bad value in column path_severity: {cell_text(value)!r} is not 0-6")
    return int(severity in CANCER_SEVERITIES)


def embed_labels(clinical: dict[str, Any] | None) -> dict[str, int | None]:
    """`birads`, `density` and `cancer` of an image from its chosen clinical row (None without one).

    >>> embed_labels({"asses": "S", "tissueden": "5.0", "path_severity": "1.0"})
    {'birads': 4, 'density': None, 'cancer': 1}
    """
    if clinical is None:
        return {"birads": None, "density": None, "cancer": None}
    birads = parse_birads(clinical.get("asses"))
    density = parse_density(clinical.get("tissueden"))
    return {
        "birads": birads,
        "density": None if density == MALE_DENSITY else density,
        "cancer": cancer_from_severity(clinical.get("path_severity")),
    }


def _image_id(anon_dicom_path: str | None) -> str | None:
    """The file name without `.dcm`: EMBED names each file by its SOPInstanceUID."""
    if not anon_dicom_path:
        return None
    return PurePosixPath(anon_dicom_path.replace("\\", "/")).name.removesuffix(".dcm") or None


def _local_path(anon_dicom_path: str | None, dicom_root: Path) -> str | None:
    """The re-rooted path when there is one (failures name the user's file), else the path as listed."""
    try:
        return str(reroot_dicom_path(anon_dicom_path, dicom_root)) if anon_dicom_path else None
    except RowError:
        return anon_dicom_path


def plan_embed(root, *, dicom_root=None, limit: int | None = None, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The output rows (schema columns but `image`, plus split/table/row_index) and the rows refused
    from the tables, without decoding any image."""
    root = check_root(root)
    dicom_root = root if dicom_root is None else check_root(dicom_root, option="--dicom-root")
    metadata_table = find_table(root, METADATA_TABLES, what="EMBED metadata")
    clinical_table = find_table(root, CLINICAL_TABLES, what="EMBED clinical")
    legend_table = find_table(root, LEGEND_TABLES, what="EMBED legend")
    try:
        legend = load_embed_legend(legend_table)
    except ValueError as error:
        raise ConverterError(str(error)) from error
    metadata = read_table(metadata_table, METADATA_COLUMNS)
    if limit is not None:
        metadata = metadata[:limit]
    clinical_by_exam: dict[str, list[dict]] = defaultdict(list)
    for clinical in read_table(clinical_table, CLINICAL_COLUMNS):
        clinical_by_exam[normalize_id(clinical["acc_anon"])].append(clinical)

    image_ids = [_image_id(record["anon_dicom_path"]) for record in metadata]
    is_2d = [record["FinalImageType"] == IMAGE_TYPE_2D for record in metadata]
    duplicates = duplicate_rows(metadata, [image_id if ok else None for image_id, ok in zip(image_ids, is_2d)])
    planned, refused = [], []
    for index, record in enumerate(metadata):
        row: dict[str, Any] = {
            "patient_id": normalize_id(record["empi_anon"]), "exam_id": normalize_id(record["acc_anon"]),
            "image_id": image_ids[index], "source_path": _local_path(record["anon_dicom_path"], dicom_root),
            "table": metadata_table.name, "row_index": index,
        }
        try:
            if not is_2d[index]:
                raise RowError(f"not 2D (FinalImageType {record['FinalImageType'] or 'empty'})")
            if index in duplicates:
                raise RowError(duplicates[index])
            if not row["image_id"]:
                raise RowError("no anon_dicom_path")
            if not row["patient_id"] or not row["exam_id"]:
                raise RowError("no empi_anon / acc_anon")
            row["source_path"] = str(reroot_dicom_path(record["anon_dicom_path"], dicom_root))
            laterality = parse_laterality(record["ImageLateralityFinal"])
            clinical = select_clinical_row(clinical_by_exam.get(row["exam_id"], []), laterality)
            # Metadata values win; an empty one falls back to the clinical row (e.g. desc for StudyDescription).
            joined = {**(clinical or {}), **{key: value for key, value in record.items() if value is not None}}
            joined["ImageLateralityFinal"] = laterality
            fields = ReportFields.from_embed(joined, legend)
            row.update(laterality=laterality, view=fields.view, **report_columns(fields), **embed_labels(clinical))
        except ValueError as error:
            refused.append(failure(row, row_error(error)))
            continue
        planned.append(row)

    return split_rows(planned, seed=seed), refused


@register_converter
class EmbedConverter(DatasetConverter):
    """EMBED; `dicom_root` is the folder holding `cohort_1/`, `cohort_2/` (default: `root`)."""

    name = "embed"
    description = "EMBED images"
    balanced = ("test", "birads", BALANCED_SPLIT)

    option_defaults = {"dicom_root": None}
    planner = staticmethod(plan_embed)

    def source_roots(self) -> list[Path]:
        return [Path(self.options["dicom_root"] or self.root)]

    def convert(self, out, **kwargs):
        if self.options["dicom_root"] is None:
            self.options["dicom_root"] = self.root  # recorded in conversion.json as the folder actually read
        return super().convert(out, **kwargs)


def convert_embed(root, out, *, dicom_root=None, **convert_options):
    """Convert EMBED under `root` into a DatasetDict saved at `out`; returns it (loaded back).

    Splits: train, validation, test (70/10/20 by patient) and test_balanced (see the module docstring).
    `convert_options`: `DatasetConverter.convert`'s.
    """
    return EmbedConverter(root, dicom_root=dicom_root).convert(out, **convert_options)
