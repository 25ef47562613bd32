"""RSNA Screening Mammography Breast Cancer Detection -> a `datasets.DatasetDict` (DESIGN.md schema).

    python data_scripts/rsna.py --root RSNA --out data/rsna [--split-source train.csv|test.csv]
        [--workers N] [--image-size 1024] [--limit N] [--seed 0]

Reads `train.csv` (or `test.csv`) and `{train|test}_images/{patient_id}/{image_id}.dcm` as
published (most files are JPEG 2000 lossless; decoding needs pylibjpeg + pylibjpeg-openjpeg).

- `--split-source train.csv` (default): the only table with labels; its patients are split 70/10/20
  into train/validation/test (seeded, by patient: `common.assign_patients`).
- `--split-source test.csv`: the competition's test table (no labels): one `test` split, labels None.
- Identity: `patient_id`; RSNA has no exam id and holds one screening exam per patient, so
  `exam_id` is the patient id (the multi-view pairing then pairs views of that exam).
- Labels: `cancer` from `cancer` (0/1); `birads` from `BIRADS`, whose RSNA codes 0/1/2 mean
  0 = recall (BI-RADS 0, "additional imaging required"), 1 = BI-RADS 1 (negative), 2 = BI-RADS 2
  (benign), so the code is the BI-RADS category itself; `density` from A-D -> 1-4. Empty cells are
  None. Any other value sends the image to the failures file ("bad value in column ...").
- Report fields (`ReportFields.from_mapping(row, reports.RSNA_COLUMNS)`): what RSNA has: laterality,
  view, age (whole years), and density / BIRADS (so `report_density` / `report_birads` equal the
  labels); procedure, reason, race, ethnicity, image type and the finding words are None.
"""

from __future__ import annotations

from typing import Any

from ...labels import DENSITY_OF_LETTER
from ...reports import RSNA_COLUMNS, ReportFields
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

SPLIT_SOURCES = ("train.csv", "test.csv")
TRAIN_COLUMNS = ["patient_id", "image_id", "laterality", "view", "age", "cancer", "BIRADS", "density"]
TEST_COLUMNS = ["patient_id", "image_id", "laterality", "view"]
BIRADS_OF_CODE = {0: 0, 1: 1, 2: 2}  # RSNA's 0 is a recall, i.e. BI-RADS 0


def rsna_labels(record: dict[str, Any]) -> dict[str, int | None]:
    """`cancer`, `birads`, `density` of one train.csv row (None when the cell is empty).

    >>> rsna_labels({"cancer": "1", "BIRADS": "0.0", "density": "C"})
    {'cancer': 1, 'birads': 0, 'density': 3}
    """
    cancer = parse_int(record.get("cancer"), "cancer")
    if cancer not in (None, 0, 1):
        raise RowError(f"bad value in column cancer: {record.get('cancer')!r} is not 0 or 1")
    code = parse_int(record.get("BIRADS"), "BIRADS")
    if code is not None and code not in BIRADS_OF_CODE:
        raise RowError(f"bad value in column BIRADS: {record.get('BIRADS')!r} is not 0, 1 or 2")
    letter = cell_text(record.get("density"))
    if letter is not None and letter.upper() not in DENSITY_OF_LETTER:
        raise RowError(f"bad value in column density: {letter!r} is not A, B, C or D")
    return {
        "cancer": cancer,
        "birads": None if code is None else BIRADS_OF_CODE[code],
        "density": None if letter is None else DENSITY_OF_LETTER[letter.upper()],
    }


def plan_rsna(root, *, split_source: str = "train.csv", limit: int | None = None, seed: int = 0,
              ) -> tuple[list[dict], list[dict]]:
    """The output rows (schema columns but `image`, plus split/table/row_index) and the rows refused
    from the table, without decoding any image."""
    root = check_root(root)
    if split_source not in SPLIT_SOURCES:
        raise ConverterError(f"--split-source {split_source!r} is not one of {', '.join(SPLIT_SOURCES)}.")
    labelled = split_source == "train.csv"
    table = find_table(root, [split_source], what=f"RSNA {split_source}")
    records = read_table(table, TRAIN_COLUMNS if labelled else TEST_COLUMNS)
    if limit is not None:
        records = records[:limit]
    images_dir = root / ("train_images" if labelled else "test_images")

    for record in records:
        record["patient_id"], record["image_id"] = normalize_id(record["patient_id"]), normalize_id(record["image_id"])
    duplicates = duplicate_rows(records, [record["image_id"] for record in records])
    planned, refused = [], []
    for index, record in enumerate(records):
        row: dict[str, Any] = {
            "patient_id": record["patient_id"], "exam_id": record["patient_id"], "image_id": record["image_id"],
            "laterality": parse_laterality(record["laterality"]), "view": cell_text(record["view"]),
            "source_path": None, "table": table.name, "row_index": index,
        }
        if row["patient_id"] and row["image_id"]:
            row["source_path"] = str(images_dir / row["patient_id"] / f"{row['image_id']}.dcm")
        try:
            if not row["patient_id"] or not row["image_id"]:
                raise RowError("no patient_id / image_id")
            if index in duplicates:
                raise RowError(duplicates[index])
            labels = rsna_labels(record) if labelled else {"cancer": None, "birads": None, "density": None}
            fields = ReportFields.from_mapping(record, RSNA_COLUMNS)
            row.update(view=fields.view, **report_columns(fields), **labels)
        except ValueError as error:
            refused.append(failure(row, row_error(error)))
            continue
        planned.append(row)

    if labelled:
        split_rows(planned, seed=seed)
    else:
        for row in planned:
            row["split"] = "test"
    return planned, refused


@register_converter
class RsnaConverter(DatasetConverter):
    """RSNA-Mammo; `split_source` is train.csv (labels, 70/10/20 by patient) or test.csv (one test split)."""

    name = "rsna"
    description = "RSNA images"

    option_defaults = {"split_source": "train.csv"}
    planner = staticmethod(plan_rsna)

    def split_names(self) -> tuple[str, ...]:
        return ("train", "validation", "test") if self.options["split_source"] == "train.csv" else ("test",)


def convert_rsna(root, out, *, split_source: str = "train.csv", **convert_options):
    """Convert RSNA-Mammo under `root` into a DatasetDict saved at `out`; returns it (loaded back).

    Splits: train/validation/test for `train.csv`, test only for `test.csv`. `convert_options`:
    `DatasetConverter.convert`'s.
    """
    return RsnaConverter(root, split_source=split_source).convert(out, **convert_options)
