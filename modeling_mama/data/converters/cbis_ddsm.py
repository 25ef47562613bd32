"""CBIS-DDSM (scanned film, CC BY 3.0) -> a `datasets.DatasetDict` (DESIGN.md schema).

    python data_scripts/cbis_ddsm.py --root CBIS --out data/cbis [--workers N] [--image-size 1024]
        [--limit N] [--seed 0]

Reads the four case-description tables (`mass_case_description_{train,test}_set.csv`,
`calc_case_description_{train,test}_set.csv`; at `--root` or anywhere below it) and the DICOM files
of a TCIA download, found by **case folder name** anywhere below `--root` (e.g.
`CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/<date>-DDSM-<n>/1.000000-full mammogram images-<n>/1-1.dcm`,
or the `<case folder>/<StudyUID>/<SeriesUID>/000000.dcm` layout the tables' paths name): the
tables' own paths are never followed.

- One row per image: the tables list abnormalities, and every abnormality of an image (the same
  patient, side and view, from any of the four tables) is merged into the image's one row and one
  report. An image listed in a Mass and a Calc table sits in two case folders holding the same
  picture; the first found is converted. `image_id` is `<patient>_<LEFT|RIGHT>_<CC|MLO>`.
- Identity: `patient_id` as published (`P_00001`); a DDSM case is one screening exam, so `exam_id`
  is the patient id.
- Labels: `birads` = the highest `assessment` of the image's abnormalities (0-5), `density` from the
  density column (`breast_density` in the mass tables, `breast density` in the calc tables; 1-4),
  `cancer` = 1 when any abnormality is MALIGNANT, else 0.
- Splits: the official one. An image listed in a test table is in `test` (also when a training table
  lists it too, so no test picture is trained on); the others are training images, a seeded eighth of
  whose patients (`common.assign_patients`) form `validation` (about 70/10/20 overall).
- Report (`reports.build_report`): side, view, density, BI-RADS, one sentence per abnormality
  ("The mass is Irregular and Spiculated.", "A Clustered Pleomorphic calcification is present.":
  codes as words, "-"-joined codes as "x and y", `N/A` left out) and the pathology ("Pathology: The
  finding is malignant."). CBIS-DDSM has no age, procedure or race.
- Lesion boxes: each abnormality's ROI folder `<case folder>_<abnormality id>` is searched for the
  mask, the file with the full image's rows and columns (the crop is smaller; TCIA stores them as
  `1-1.dcm` / `1-2.dcm` in either order). Its nonzero box, carried through orientation, crop and
  resize, goes to `lesion_boxes`. A missing ROI folder is normal (a download of the full images
  only): no box, no failure.
- Failures (`failures.csv`): an image whose full-image file is found nowhere ("file missing"), an
  image with an unreadable value ("bad value in column assessment: ..."), decode errors.

Planning reads the tables and the headers of the files (rows and columns, to tell mask from crop),
never pixel data; masks are decoded by the image workers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...labels import cell_text, normalize_pathology
from ...reports import FINDING_SEPARATOR, ReportFields
from .common import (
    VALIDATION_FRACTIONS,
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

TABLES = {
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calc", "train"): "calc_case_description_train_set.csv",
    ("calc", "test"): "calc_case_description_test_set.csv",
}
COMMON_COLUMNS = ["patient_id", "left or right breast", "image view", "abnormality id", "assessment", "pathology"]
DENSITY_COLUMN = {"mass": "breast_density", "calc": "breast density"}
FINDING_COLUMNS = {"mass": ("mass shape", "mass margins"), "calc": ("calc type", "calc distribution")}
CASE_PREFIX = {("mass", "train"): "Mass-Training", ("mass", "test"): "Mass-Test",
               ("calc", "train"): "Calc-Training", ("calc", "test"): "Calc-Test"}
SIDES = {"LEFT": "L", "RIGHT": "R"}
VIEWS = ("CC", "MLO")
# A case folder (full image) or an ROI folder (`_<abnormality id>`), as TCIA names them.
CASE_FOLDER = re.compile(r"(?:Mass|Calc)-(?:Training|Test)_P_\d+_(?:LEFT|RIGHT)_(?:CC|MLO)(?:_\d+)?")


def finding_words(code) -> str | None:
    """A CBIS-DDSM finding code as report words: "FINE_LINEAR_BRANCHING" -> "Fine linear branching",
    two codes joined by "-" -> "x and y"; `N/A` / empty -> None.

    >>> finding_words("PLEOMORPHIC-FINE_LINEAR_BRANCHING"), finding_words("ILL_DEFINED"), finding_words("N/A")
    ('Pleomorphic and fine linear branching', 'Ill defined', None)
    """
    text = cell_text(code)
    if text is None:
        return None
    parts = [part.replace("_", " ").strip().lower() for part in text.split("-")]
    phrase = " and ".join(part for part in parts if part)
    return (phrase[:1].upper() + phrase[1:]) or None


def find_files(root: Path) -> dict[str, list[Path]]:
    """{case or ROI folder name: its DICOM files (sorted)}, for every such folder anywhere below `root`."""
    folders: dict[str, list[Path]] = {}
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        name = Path(folder).name
        if CASE_FOLDER.fullmatch(name):
            files = sorted(Path(inner) / file for inner, _, inner_names in os.walk(folder)
                           for file in inner_names if file.lower().endswith(".dcm") and not file.startswith("."))
            folders.setdefault(name, []).extend(files)
            subfolders.clear()  # everything below was just listed
    return folders


def dicom_shape(path: Path) -> tuple[int, int] | None:
    """(rows, columns) from a DICOM header (pixel data not read); None if unreadable."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        return int(header.Rows), int(header.Columns)
    except Exception:  # an unreadable file is simply not a candidate
        return None


def full_image(files: Sequence[Path]) -> Path | None:
    """The full mammogram among a case folder's files: the largest image (a case folder holds one)."""
    sized = [(size[0] * size[1], str(path), path) for path in files if (size := dicom_shape(path))]
    return max(sized)[2] if sized else None


def roi_mask(files: Sequence[Path], shape: tuple[int, int] | None) -> Path | None:
    """The ROI mask among an ROI folder's files: the one with the full image's `shape` (the crop is
    smaller); None when no file matches."""
    if shape is None:
        return None
    matches = [path for path in files if dicom_shape(path) == shape]
    return matches[0] if matches else None


def _abnormality(record: dict[str, Any], kind: str) -> dict[str, Any]:
    """One table row's finding: side, view, id, density, BI-RADS, pathology and words."""
    side = SIDES.get((cell_text(record["left or right breast"]) or "").upper())
    if side is None:
        raise RowError(f"bad value in column left or right breast: {record['left or right breast']!r} "
                       "is not LEFT or RIGHT")
    view = (cell_text(record["image view"]) or "").upper()
    if view not in VIEWS:
        raise RowError(f"bad value in column image view: {record['image view']!r} is not CC or MLO")
    assessment = parse_int(record["assessment"], "assessment")
    if assessment is not None and not 0 <= assessment <= 6:
        raise RowError(f"bad value in column assessment: {record['assessment']!r} is not a BI-RADS category 0-6")
    density_column = DENSITY_COLUMN[kind]
    density = parse_int(record[density_column], density_column)
    if density is not None and not 1 <= density <= 4:
        raise RowError(f"bad value in column {density_column}: {record[density_column]!r} is not 1-4")
    try:
        pathology = normalize_pathology(record["pathology"])
    except ValueError:
        raise RowError(f"bad value in column pathology: {record['pathology']!r} is not MALIGNANT, BENIGN or "
                       "BENIGN_WITHOUT_CALLBACK") from None
    first, second = FINDING_COLUMNS[kind]
    return {"kind": kind, "side": side, "view": view, "id": parse_int(record["abnormality id"], "abnormality id"),
            "density": density, "assessment": assessment, "pathology": pathology,
            "first": finding_words(record.get(first)), "second": finding_words(record.get(second))}


def merged_fields(abnormalities: Sequence[dict[str, Any]]) -> tuple[ReportFields, dict[str, int | None]]:
    """The report fields and labels of one image from its abnormalities (see the module docstring)."""
    masses = [a for a in abnormalities if a["kind"] == "mass"]
    calcs = [a for a in abnormalities if a["kind"] == "calc"]

    def joined(items, key):
        return FINDING_SEPARATOR.join(item[key] or "" for item in items) if any(item[key] for item in items) else None

    assessments = [a["assessment"] for a in abnormalities if a["assessment"] is not None]
    densities = [a["density"] for a in abnormalities if a["density"] is not None]
    pathologies = {a["pathology"] for a in abnormalities if a["pathology"]}
    pathology = "malignant" if "malignant" in pathologies else ("benign" if pathologies else None)
    fields = ReportFields(
        laterality=abnormalities[0]["side"], view=abnormalities[0]["view"], density=densities[0] if densities else None,
        birads=max(assessments) if assessments else None, mass_shape=joined(masses, "first"),
        mass_margin=joined(masses, "second"), calc_find=joined(calcs, "first"),
        calc_distribution=joined(calcs, "second"), pathology=pathology,
    )
    labels = {"birads": fields.birads, "density": fields.density,
              "cancer": None if pathology is None else int(pathology == "malignant")}
    return fields, labels


def plan_cbis_ddsm(root, *, limit: int | None = None, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The output rows (schema columns but `image`, plus split/table/row_index and the lesion masks)
    and the images refused, without decoding any pixel data."""
    root = check_root(root)
    tables = {}
    for key, name in TABLES.items():
        found = [root / name] if (root / name).is_file() else sorted(root.rglob(name))
        if not found:
            raise ConverterError(
                f"The CBIS-DDSM table {name} is missing: looked in {root} and below. Download the four "
                "case-description CSVs from the TCIA page of CBIS-DDSM and put them next to the CBIS-DDSM folder.")
        tables[key] = found[0]

    # Group the abnormality rows by image, in table order.
    images: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (kind, split), path in tables.items():
        required = [*COMMON_COLUMNS, DENSITY_COLUMN[kind], *FINDING_COLUMNS[kind]]
        for index, record in enumerate(read_table(path, required)):
            patient = cell_text(record["patient_id"])
            key = (patient, (cell_text(record["left or right breast"]) or "").upper(),
                   (cell_text(record["image view"]) or "").upper())
            images.setdefault(key, {"records": []})["records"].append({"kind": kind, "split": split, "table": path.name, "row_index": index,
                                     "record": record})
    order = list(images)
    if limit is not None:
        order = order[:limit]

    files = find_files(root)
    planned, refused = [], []
    for key in order:
        patient, side_word, view = key
        records = images[key]["records"]
        first = records[0]
        image_id = f"{patient}_{side_word}_{view}"
        case_folders = []
        for entry in records:
            folder = f"{CASE_PREFIX[(entry['kind'], entry['split'])]}_{image_id}"
            if folder not in case_folders:
                case_folders.append(folder)
        source = next((path for folder in case_folders if (path := full_image(files.get(folder, [])))), None)
        listed_path = (cell_text(first["record"].get("image file path")) or case_folders[0]).strip()
        row: dict[str, Any] = {
            "patient_id": patient, "exam_id": patient, "image_id": image_id,
            "source_path": str(source) if source else str(root / listed_path),
            "table": first["table"], "row_index": first["row_index"],
        }
        try:
            if not patient:
                raise RowError("no patient_id")
            abnormalities, seen = [], {}
            for entry in records:
                abnormality = _abnormality(entry["record"], entry["kind"])
                identity = (entry["kind"], entry["split"], abnormality["id"])
                if identity in seen:
                    if seen[identity] != abnormality:
                        raise RowError(f"abnormality {abnormality['id']} of {image_id} is listed twice in "
                                       f"{entry['table']} with different values")
                    continue  # an exact copy of a row
                seen[identity] = abnormality
                abnormality["folder"] = f"{CASE_PREFIX[(entry['kind'], entry['split'])]}_{image_id}"
                abnormalities.append(abnormality)
            fields, labels = merged_fields(abnormalities)
        except ValueError as error:
            refused.append(failure(row, row_error(error)))
            continue
        if source is None:
            refused.append(failure(row, f"file missing: no case folder {' or '.join(case_folders)} with a DICOM "
                                        f"file below {root}"))
            continue
        shape = dicom_shape(source)
        masks = []
        for abnormality in abnormalities:
            mask = roi_mask(files.get(f"{abnormality['folder']}_{abnormality['id']}", []), shape)
            if mask is not None:
                masks.append(str(mask))
        row.update(laterality=fields.laterality, view=fields.view, **report_columns(fields), **labels,
                   split="test" if any(entry["split"] == "test" for entry in records) else "train",
                   lesion_masks=masks)
        planned.append(row)

    return split_rows(planned, seed=seed, fractions=VALIDATION_FRACTIONS, within="train"), refused


@register_converter
class CbisDdsmConverter(DatasetConverter):
    """CBIS-DDSM: the official train/test split, validation carved from training by patient."""

    name = "cbis_ddsm"
    description = "CBIS-DDSM images"

    planner = staticmethod(plan_cbis_ddsm)


def convert_cbis_ddsm(root, out, **convert_options):
    """Convert CBIS-DDSM under `root` into a DatasetDict saved at `out`; returns it (loaded back).

    `convert_options`: `DatasetConverter.convert`'s.
    """
    return CbisDdsmConverter(root).convert(out, **convert_options)
