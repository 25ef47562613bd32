"""VinDr-Mammo -> a `datasets.DatasetDict` (DESIGN.md schema).

    python data_scripts/vindr.py --root VINDR --out data/vindr [--workers N] [--image-size 1024]
        [--limit N] [--seed 0]

Reads, as published, `breast-level_annotations.csv` (one row per image), `finding_annotations.csv`
(one row per finding, "['No Finding']" for none) and `images/<study_id>/<image_id>.dicom`.

- Identity: VinDr publishes no patient id; each study is one patient's four-view exam, so
  `patient_id` and `exam_id` are both the `study_id`.
- Labels: `birads` from `breast_birads` ("BI-RADS 1".."BI-RADS 5" -> 1..5), `density` from
  `breast_density` ("DENSITY A".."DENSITY D" -> 1..4), empty -> None; `cancer` is None (VinDr has
  no pathology).
- Splits: the dataset's own: `test` rows -> test; `training` rows -> train, with a seeded
  patient-level validation split carved out of them: 1/8 of the training studies (so that
  train/validation/test is about 70/10/20, `common.assign_patients`).
- Report fields: laterality, view, density and BI-RADS of the breast (`reports.VINDR_COLUMNS`),
  plus words from the image's finding rows (`finding_categories` is a stringified list, parsed with
  `ast.literal_eval`, never `eval`): a mass-like category fills `mass_shape` ("Mass" -> "Generic",
  EMBED's word for an unspecified mass; "Architectural Distortion", "Focal Asymmetry",
  "Asymmetry", "Global Asymmetry", "Suspicious Lymph Node" -> the same words in sentence case, as
  in EMBED's `massshape`), "Suspicious Calcification" fills `calc_find` ("Suspicious"). When an
  image has several, the finding with the highest `finding_birads` wins (first in the table on a
  tie). VinDr describes neither mass density nor calcification distribution, so these stay None
  (and the report, which needs both halves, prints no mass / calcification sentence).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ...labels import parse_birads, parse_density
from ...reports import VINDR_COLUMNS, ReportFields
from .common import (
    VALIDATION_FRACTIONS,
    DatasetConverter,
    RowError,
    cell_text,
    check_root,
    duplicate_rows,
    failure,
    find_table,
    parse_laterality,
    read_table,
    register_converter,
    report_columns,
    row_error,
    split_rows,
)

BREAST_TABLE = "breast-level_annotations.csv"
FINDING_TABLE = "finding_annotations.csv"
BREAST_COLUMNS = ["study_id", "image_id", "laterality", "view_position", "breast_birads", "breast_density", "split"]
FINDING_COLUMNS = ["image_id", "finding_categories", "finding_birads"]
SPLIT_OF_VINDR = {"training": "train", "test": "test"}
SPLITS = ("train", "validation", "test")

MASS_WORDS = {
    "Mass": "Generic",
    "Architectural Distortion": "Architectural distortion",
    "Focal Asymmetry": "Focal asymmetry",
    "Asymmetry": "Asymmetry",
    "Global Asymmetry": "Global asymmetry",
    "Suspicious Lymph Node": "Suspicious lymph node",
}
CALCIFICATION_WORDS = {"Suspicious Calcification": "Suspicious"}


def parse_categories(text) -> list[str]:
    """VinDr's stringified list ("['Mass', 'Suspicious Calcification']") as a list, safely.

    >>> parse_categories("['Mass', 'Suspicious Calcification']"), parse_categories(None)
    (['Mass', 'Suspicious Calcification'], [])
    """
    text = cell_text(text)
    if text is None:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise RowError(f"bad value in column finding_categories: {text!r} is not a list") from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise RowError(f"bad value in column finding_categories: {text!r} is not a list of names")
    return [item.strip() for item in value]


def finding_words(findings: Sequence[dict]) -> dict[str, str | None]:
    """`mass_shape` and `calc_find` from an image's finding rows (see the module docstring).

    >>> finding_words([{"finding_categories": "['Mass']", "finding_birads": "BI-RADS 3"},
    ...                {"finding_categories": "['Focal Asymmetry', 'Suspicious Calcification']",
    ...                 "finding_birads": "BI-RADS 4"}])
    {'mass_shape': 'Focal asymmetry', 'calc_find': 'Suspicious'}
    """
    graded = []
    for order, finding in enumerate(findings):
        birads = parse_birads(finding.get("finding_birads"))
        graded.append((-1 if birads is None else birads, -order, parse_categories(finding.get("finding_categories"))))
    words: dict[str, str | None] = {"mass_shape": None, "calc_find": None}
    for _, _, categories in sorted(graded, reverse=True):
        for category in categories:
            if words["mass_shape"] is None and category in MASS_WORDS:
                words["mass_shape"] = MASS_WORDS[category]
            if words["calc_find"] is None and category in CALCIFICATION_WORDS:
                words["calc_find"] = CALCIFICATION_WORDS[category]
    return words


def vindr_labels(record: dict[str, Any]) -> dict[str, int | None]:
    """`birads` (1-5), `density` (1-4) of one breast-level row; `cancer` is unknown in VinDr.

    >>> vindr_labels({"breast_birads": "BI-RADS 4", "breast_density": "DENSITY C"})
    {'birads': 4, 'density': 3, 'cancer': None}
    """
    density = parse_density(record.get("breast_density"))
    if density is not None and not 1 <= density <= 4:
        raise RowError(f"bad value in column breast_density: {record.get('breast_density')!r} is not DENSITY A-D")
    return {"birads": parse_birads(record.get("breast_birads")), "density": density, "cancer": None}


def plan_vindr(root, *, limit: int | None = None, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The output rows (schema columns but `image`, plus split/table/row_index) and the rows refused
    from the tables, without decoding any image."""
    root = check_root(root)
    breast_table = find_table(root, [BREAST_TABLE], what="VinDr breast-level annotations")
    finding_table = find_table(root, [FINDING_TABLE], what="VinDr finding annotations")
    records = read_table(breast_table, BREAST_COLUMNS)
    if limit is not None:
        records = records[:limit]
    findings_by_image: dict[str, list[dict]] = defaultdict(list)
    for finding in read_table(finding_table, FINDING_COLUMNS):
        findings_by_image[finding["image_id"]].append(finding)

    duplicates = duplicate_rows(records, [record["image_id"] for record in records])
    planned, refused = [], []
    for index, record in enumerate(records):
        study_id, image_id = record["study_id"], record["image_id"]
        row: dict[str, Any] = {
            "patient_id": study_id, "exam_id": study_id, "image_id": image_id,
            "laterality": parse_laterality(record["laterality"]),
            "source_path": str(root / "images" / study_id / f"{image_id}.dicom") if study_id and image_id else None,
            "table": breast_table.name, "row_index": index,
        }
        try:
            if not study_id or not image_id:
                raise RowError("no study_id / image_id")
            if index in duplicates:
                raise RowError(duplicates[index])
            if record["split"] not in SPLIT_OF_VINDR:
                raise RowError(f"bad value in column split: {record['split']!r} is not training or test")
            fields = ReportFields.from_mapping(record, VINDR_COLUMNS)
            fields.mass_shape, fields.calc_find = finding_words(findings_by_image.get(image_id, [])).values()
            row.update(view=fields.view, split=SPLIT_OF_VINDR[record["split"]], **report_columns(fields),
                       **vindr_labels(record))
        except ValueError as error:
            refused.append(failure(row, row_error(error)))
            continue
        planned.append(row)

    return split_rows(planned, seed=seed, fractions=VALIDATION_FRACTIONS, within="train"), refused


@register_converter
class VindrConverter(DatasetConverter):
    """VinDr-Mammo: train and validation carved from VinDr's training studies, test VinDr's own."""

    name = "vindr"
    description = "VinDr images"

    planner = staticmethod(plan_vindr)


def convert_vindr(root, out, **convert_options):
    """Convert VinDr-Mammo under `root` into a DatasetDict saved at `out`; returns it (loaded back).

    Splits: train and validation (carved from VinDr's training studies) and test (VinDr's own).
    `convert_options`: `DatasetConverter.convert`'s.
    """
    return VindrConverter(root).convert(out, **convert_options)
