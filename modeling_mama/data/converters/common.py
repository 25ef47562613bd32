"""What the EMBED, RSNA and VinDr converters share: tables, splits, the image cache, the writer.

A converter reads a dataset's own tables as published, decides for every listed image whether it
becomes an output row or a failure (with a reason), and hands the rows to `write_dataset`, which

1. decodes the DICOM files in a process pool (`workers`), with a tqdm bar; each finished image is
   cached as a 16-bit PNG under `<out>/.cache/<image_id>.png`, written under a temporary name and
   renamed, so a killed run loses at most the images in flight and a re-run skips cached images;
2. logs an image that cannot be decoded to `<out>/failures.csv` (image_id, source_path, reason,
   table, row_index) without stopping the run; failures are retried on a re-run. A problem of the
   machine instead (disk full, read-only file system, no permission to write `<out>`) stops the
   run with a `StorageError` that says what to do; the cache keeps what was finished;
3. commits the `datasets.DatasetDict`, `failures.csv` and `conversion.json` as one new version
   (`commit_dataset`): `load_from_disk(out)` sees the old dataset or the complete new one at every
   instant, also when the process is killed during the switch. `conversion.json` records the
   options, the counts and what was done to the stored images (`STORED_IMAGES`: oriented, cropped;
   `image_size`).

Nothing is read from outside the dataset folder (a table id with `../` or an absolute path is a
failure, `refuse_outside_roots`), and nothing is written, renamed or removed outside `<out>`
(`inside`; split names read from disk must be plain folder names).

Image preprocessing (`preprocess_image`): calibrated pixels from `read_dicom`, chest wall left
(`orient_breast`, laterality from the table, checked against the pixels), cropped to the breast
(`crop_to_breast`), shrunk so the long side is at most `image_size` (Lanczos, never enlarged; 0
keeps the native size), and stored as a 16-bit grayscale PNG (value = round(pixel * 65535)).
JPEG 2000 files are decoded at reduced resolution (a power of two) when the breast crop is still at
least `image_size` long there, several times faster than a full decode; the cores that the workers
leave idle go to the threads of a full decode. The `datasets.Image()` feature keeps such a PNG byte
for byte: `load_from_disk` gives a PIL image of mode I;16 with the same uint16 values.

Tables are read as text (`read_table`), so "61.0", "False" or "00123" reach the parsers exactly as
published; empty cells (and "nan", "NaN", "None", "NULL", "N/A", "<NA>") become None.

>>> split_patients(["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10"], seed=0).count("train")
7
>>> parse_int("61.0"), parse_int("")
(61, None)
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin

from ...dicom import read_dataset, read_dicom, reduced_size
from ...file_utils_mama import atomic_path, record_settings, write_text_atomic
from ...hub import CONVERSION_FILE
from ...image_utils_mama import IMAGE_SUFFIXES
from ..pool import map_in_processes
from ...labels import (  # noqa: F401
    cell_text,
    normalize_id,
    normalize_laterality,
    parse_age,
    parse_int,
    parse_number,
)


def parse_laterality(value) -> str | None:
    """An image's side, "L" / "R", from a table cell; None for anything else (the DICOM tags or the
    pixels decide then)."""
    return normalize_laterality(value, allow_bilateral=False, strict=False)


DEFAULT_IMAGE_SIZE = 1024
"""Long side of the stored images (pixels)."""

PROBE_SIDE = 256
"""Long side (at least) of the thumbnail a JPEG 2000 file is first decoded at, to find its breast crop."""

SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
# A dataset with an official train/test split: validation is 1/8 of the training patients (10% of all at 80/20).
VALIDATION_FRACTIONS = {"train": 7.0, "validation": 1.0}
FAILURE_COLUMNS = ["image_id", "source_path", "reason", "table", "row_index"]

# The output schema (DESIGN.md "Dataset schema"): identity, image, report fields, labels.
REPORT_COLUMNS = [
    "procedure", "reason", "race", "ethnicity", "age", "image_type", "report_density", "report_birads",
    "mass_shape", "mass_density", "calc_find", "calc_distribution", "mass_margin", "pathology",
]
LABEL_COLUMNS = ["birads", "density", "cancer"]
_INTEGER_COLUMNS = {"age", "report_density", "report_birads", "birads", "density", "cancer"}
# Lesion boxes [x0, y0, x1, y1] in the stored image's pixels (after orientation, crop and resize); [] when unknown.
BOX_COLUMN = "lesion_boxes"
COLUMNS = ["patient_id", "exam_id", "image_id", "laterality", "view", "source_path", "image",
           *REPORT_COLUMNS, *LABEL_COLUMNS, BOX_COLUMN]

CACHE_DIR = ".cache"
PARTIAL_DIR = ".partial"
SETTINGS_FILE = "settings.json"
SUMMARY_FILE = CONVERSION_FILE  # its `dataset` key is what the training scripts record (hub.py)
FAILURES_FILE = "failures.csv"
SHARD_FILE = "shard.json"
# Only the cache format changes this; a cache written by another format version is refused.
CACHE_FORMAT = 1
# Errors of the machine, not of one input file: a disk or quota that is full, a read-only file system.
FULL_OR_READ_ONLY = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# ... and, when writing into the output folder, a permission problem: each stops the run (StorageError).
ENVIRONMENT_ERRNOS = FULL_OR_READ_ONLY | {errno.EACCES, errno.EPERM}
# What `preprocess_image` did to every stored image, recorded in conversion.json so that training and
# evaluation neither orient nor crop them again (modeling_mama.training.converted.stored_image_options).
STORED_IMAGES = {"image_orientation": "chest_wall_left", "image_cropped_to_breast": True}


class ConverterError(ValueError):
    """A problem with the user's input (folder, table, column, option); the message says what to do."""


class RowError(ValueError):
    """One table row cannot be used (e.g. a malformed value); the row goes to the failures file."""


def features():
    """The `datasets.Features` of every converted split."""
    import datasets

    types = {name: datasets.Value("int64" if name in _INTEGER_COLUMNS else "string") for name in COLUMNS}
    types["image"] = datasets.Image()
    types[BOX_COLUMN] = datasets.List(datasets.List(datasets.Value("float32"), length=4))
    return datasets.Features(types)


# ----------------------------------------------------------------------------------------------
# Reading tables as published
# ----------------------------------------------------------------------------------------------


def check_root(root, *, option: str = "--root") -> Path:
    """The dataset folder as a Path; a clear error when it does not exist or is not a folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise ConverterError(f"{option} {path} does not exist: pass the dataset folder as published.")
    if not path.is_dir():
        raise ConverterError(f"{option} {path} is not a folder: pass the dataset folder, not a file in it.")
    return path


def find_table(root: Path, candidates: Sequence[str], *, what: str) -> Path:
    """The first of `candidates` (paths relative to `root`) that exists, else a clear error."""
    for candidate in candidates:
        if (root / candidate).is_file():
            return root / candidate
    tried = ", ".join(str(root / candidate) for candidate in candidates)
    raise ConverterError(f"The {what} table is missing: looked for {tried}. "
                         "Pass --root the dataset folder as published (with its tables).")


def read_table(path, required: Iterable[str], *, sep: str = ",") -> list[dict[str, str | None]]:
    """Rows of a CSV file as dicts of stripped text (None for an empty / NaN cell), in file order.

    Every cell is kept as published: "61.0" stays "61.0", "False" stays "False". Raises
    `ConverterError` naming the file for a missing file and naming the column(s) for missing columns.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(path, "w").write("id,age\\n7, 61.0 \\n8,\\n")
    >>> read_table(path, ["id", "age"])
    [{'id': '7', 'age': '61.0'}, {'id': '8', 'age': None}]
    """
    path = Path(path)
    if not path.is_file():
        raise ConverterError(f"Table {path} does not exist.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, sep=sep)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise ConverterError(f"Table {path} cannot be read as CSV: {error}") from error
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ConverterError(
            f"Table {path} lacks the column(s) {', '.join(repr(c) for c in missing)} "
            f"(it has {', '.join(frame.columns)}). Is this the file as published?")
    return [{column: cell_text(value) for column, value in record.items()}
            for record in frame.to_dict(orient="records")]


def duplicate_rows(records: Sequence[Mapping], keys: Sequence, *, name: str = "image_id") -> dict[int, str]:
    """Records whose key repeats an earlier record's: {index: reason}. The first occurrence is kept.

    `keys` holds one key per record (None = no key, never a duplicate). An exact copy of an
    earlier record is a "duplicate row"; a different record with the same key is a
    "duplicate <name>" naming the kept row, because the table then says two things about one image.

    >>> records = [{"id": "a", "x": 1}, {"id": "a", "x": 1}, {"id": "a", "x": 2}]
    >>> duplicate_rows(records, [r["id"] for r in records], name="id")
    {1: 'duplicate row', 2: 'duplicate id: row 0 has the same id with other values'}
    """
    first_index: dict[Any, int] = {}
    reasons: dict[int, str] = {}
    for index, (record, key) in enumerate(zip(records, keys)):
        if key is None:
            continue
        if key not in first_index:
            first_index[key] = index
            continue
        kept = first_index[key]
        if dict(records[kept]) == dict(record):
            reasons[index] = "duplicate row"
        else:
            reasons[index] = f"duplicate {name}: row {kept} has the same {name} with other values"
    return reasons


def report_columns(fields) -> dict[str, Any]:
    """The schema's report columns of a `reports.ReportFields` (`report_birads` / `report_density`
    are what the report says; the labels `birads` / `density` are set by each converter)."""
    return {
        "procedure": fields.procedure, "reason": fields.reason, "race": fields.race, "ethnicity": fields.ethnicity,
        "age": fields.age, "image_type": fields.image_type, "report_density": fields.density,
        "report_birads": fields.birads, "mass_shape": fields.mass_shape, "mass_density": fields.mass_density,
        "calc_find": fields.calc_find, "calc_distribution": fields.calc_distribution,
        "mass_margin": fields.mass_margin, "pathology": fields.pathology,
    }


def row_error(error: ValueError) -> str:
    """The failure reason of a row that raised: RowError's own text, other ValueErrors prefixed."""
    message = str(error)
    return message if isinstance(error, RowError) or message.startswith("bad value") else f"bad value: {message}"


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def _apportion(total: int, fractions: Sequence[float]) -> list[int]:
    """Integer counts summing to `total`, proportional to `fractions` (largest remainder), and at
    least 1 each when `total` allows it (so a small dataset still has every split)."""
    quotas = [total * fraction / sum(fractions) for fraction in fractions]
    counts = [int(math.floor(quota)) for quota in quotas]
    for index in sorted(range(len(quotas)), key=lambda i: (counts[i] - quotas[i], i))[:total - sum(counts)]:
        counts[index] += 1
    if total >= len(counts):
        for index in range(len(counts)):
            while counts[index] == 0:
                donor = max(range(len(counts)), key=lambda i: counts[i])
                counts[donor] -= 1
                counts[index] += 1
    return counts


def assign_patients(patient_ids: Iterable, *, seed: int, fractions: Mapping[str, float] = SPLIT_FRACTIONS,
                    ) -> dict[str, str]:
    """Seeded patient-level split: {patient_id: split name}.

    The rule: the distinct patient ids, sorted as text, are shuffled with
    `numpy.random.default_rng([seed, 0])`; the first `n_1` go to the first split, the next `n_2`
    to the second, and so on, where the `n_k` are the fractions of the number of patients rounded
    by largest remainder (each split gets at least one patient when there are enough patients).
    Every image of a patient is in that patient's split, so no patient is in two splits.

    >>> sorted(assign_patients(["a", "b", "c"], seed=0, fractions={"train": 0.5, "test": 0.5}).items())
    [('a', 'train'), ('b', 'test'), ('c', 'train')]
    """
    patients = sorted({str(patient) for patient in patient_ids})
    order = np.random.default_rng([seed, 0]).permutation(len(patients))
    counts = _apportion(len(patients), list(fractions.values()))
    assignment: dict[str, str] = {}
    position = 0
    for name, count in zip(fractions, counts):
        for index in order[position:position + count]:
            assignment[patients[index]] = name
        position += count
    return assignment


def split_patients(patient_ids: Sequence, *, seed: int, fractions: Mapping[str, float] = SPLIT_FRACTIONS) -> list[str]:
    """The split of each entry of `patient_ids` (one per image), by `assign_patients`."""
    assignment = assign_patients(patient_ids, seed=seed, fractions=fractions)
    return [assignment[str(patient)] for patient in patient_ids]


def split_rows(rows: list[dict], *, seed: int, fractions: Mapping[str, float] = SPLIT_FRACTIONS,
               within: str | None = None) -> list[dict]:
    """Set the `split` of planned rows by patient (`assign_patients`) and return them.

    With `within`, only the rows already in that split are divided (e.g. a dataset's official
    training rows into train and validation, its official test rows untouched).
    """
    chosen = [row for row in rows if within is None or row["split"] == within]
    assignment = assign_patients([row["patient_id"] for row in chosen], seed=seed, fractions=fractions)
    for row in chosen:
        row["split"] = assignment[str(row["patient_id"])]
    return rows


@dataclass(frozen=True)
class Shard:
    """Part `index` of `count` of a conversion, for running one dataset on several machines.

    Every converter plans all rows and splits from the full tables first (so the splits are those of
    a single run), then keeps the rows of the patients with `shard_of(patient_id, count) == index`:
    a patient is never in two shards. `merge.merge_shards` assembles the shard folders into the
    DatasetDict a single run writes (same rows, order, splits and images).
    """

    count: int = 1
    index: int = 0

    def __post_init__(self):
        if self.count < 1:
            raise ConverterError(f"--num-shards {self.count} must be at least 1.")
        if not 0 <= self.index < self.count:
            raise ConverterError(
                f"--shard-index {self.index} must be between 0 and --num-shards - 1 = {self.count - 1}.")

    def holds(self, patient_id) -> bool:
        return self.count == 1 or shard_of(patient_id, self.count) == self.index


def shard_of(patient_id, count: int) -> int:
    """The shard (0 .. count-1) of a patient: the SHA-1 of its id as text, modulo `count`.

    >>> shard_of("10234", 3), shard_of("10234", 3) == shard_of(10234, 3)
    (0, True)
    """
    digest = hashlib.sha1(str(patient_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def balanced_subset(labels: Sequence, *, seed: int) -> list[int]:
    """Indices of a class-balanced subset: every class present gets the size of the smallest one.

    The rule: rows with a label (None is skipped) are grouped by label; m = the smallest group's
    size; for each label in increasing order, m indices are drawn without replacement with
    `numpy.random.default_rng([seed, 1])` (one generator, used class after class). The result is
    sorted (the subset keeps the split's row order).

    >>> labels = [0, 1, 1, 2, 2, 2, None]
    >>> subset = balanced_subset(labels, seed=0)
    >>> sorted(Counter(labels[i] for i in subset).items())
    [(0, 1), (1, 1), (2, 1)]
    """
    by_label: dict[Any, list[int]] = {}
    for index, label in enumerate(labels):
        if label is not None:
            by_label.setdefault(label, []).append(index)
    if not by_label:
        return []
    size = min(len(indices) for indices in by_label.values())
    rng = np.random.default_rng([seed, 1])
    chosen: list[int] = []
    for label in sorted(by_label):
        indices = by_label[label]
        chosen.extend(indices[i] for i in rng.choice(len(indices), size=size, replace=False))
    return sorted(chosen)


# ----------------------------------------------------------------------------------------------
# Images: preprocessing (runs in worker processes) and the cache
# ----------------------------------------------------------------------------------------------


def resize_long_side(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """Shrink float pixels (Lanczos, antialiased) so the long side is `image_size`; never enlarge.
    `image_size` 0 keeps the native size.

    >>> resize_long_side(np.zeros((300, 200), np.float32), 150).shape
    (150, 100)
    """
    height, width = pixels.shape
    long_side = max(height, width)
    if image_size == 0 or long_side <= image_size:
        return pixels
    scale = image_size / long_side
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32)).resize(
        size, Image.Resampling.LANCZOS)
    return np.asarray(resized)


def to_uint16(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint16 (round(x * 65535), clipped: Lanczos can overshoot a little)."""
    return np.rint(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)


def largest_reduction(long_side: int, image_size: int) -> int:
    """The largest r with ceil(long_side / 2**r) >= image_size (0 for `image_size` 0: native size).

    >>> largest_reduction(3328, 1024), largest_reduction(4096, 1024), largest_reduction(3328, 0)
    (1, 2, 0)
    """
    if image_size <= 0:
        return 0
    reduction = 0
    while reduced_size(long_side, reduction + 1) >= image_size:
        reduction += 1
    return reduction


@dataclass(frozen=True)
class StoredGeometry:
    """How a stored image was made from its source file: decoded at 1/2**`reduction` of the file's
    `native_shape` (giving `decoded_shape`), `flipped` left-right (chest wall moved left), cropped to
    `crop` (x0, y0, x1, y1 in the oriented decoded image), resized to `stored_shape` (height, width).
    `map_box` carries a box of the file's native pixels onto the stored image."""

    native_shape: tuple[int, int]
    reduction: int
    decoded_shape: tuple[int, int]
    flipped: bool
    crop: tuple[int, int, int, int]
    stored_shape: tuple[int, int]

    def map_box(self, box) -> list[float] | None:
        """A native box (x0, y0, x1, y1, end-exclusive pixel edges) in stored pixels, clipped to the
        stored image (rounded to 0.01); None when it lies outside the crop.

        >>> StoredGeometry((100, 80), 0, (100, 80), True, (10, 20, 50, 100), (40, 20)).map_box((60, 30, 70, 50))
        [0.0, 5.0, 5.0, 15.0]
        >>> StoredGeometry((200, 160), 1, (100, 80), True, (10, 20, 50, 100), (40, 20)).map_box((120, 60, 140, 100))
        [0.0, 5.0, 5.0, 15.0]
        """
        x0, y0, x1, y1 = (float(value) / 2**self.reduction for value in box)  # a reduced pixel spans 2**r
        if self.flipped:
            x0, x1 = self.decoded_shape[1] - x1, self.decoded_shape[1] - x0
        left, top, right, bottom = self.crop
        scale_x = self.stored_shape[1] / (right - left)
        scale_y = self.stored_shape[0] / (bottom - top)
        x0, x1 = (min(max((x - left) * scale_x, 0.0), self.stored_shape[1]) for x in (x0, x1))
        y0, y1 = (min(max((y - top) * scale_y, 0.0), self.stored_shape[0]) for y in (y0, y1))
        if x1 <= x0 or y1 <= y0:
            return None
        return [round(value, 2) for value in (x0, y0, x1, y1)]


def _oriented_crop(pixels: np.ndarray, laterality: str | None):
    """`crop_to_breast(orient_breast(pixels, laterality))`, with whether it flipped and its box."""
    from ...image_utils_mama import breast_bbox, needs_flip

    flipped = needs_flip(pixels, laterality)
    oriented = pixels[:, ::-1] if flipped else pixels
    x0, y0, x1, y1 = breast_bbox(oriented)
    return oriented[y0:y1, x0:x1], flipped, (x0, y0, x1, y1)


def preprocess_image(source, *, laterality: str | None, image_size: int,
                     decode_threads: int = 1) -> tuple[np.ndarray, str | None, int]:
    """A mammogram file -> (uint16 [H, W] chest wall left, breast-cropped, long side <= image_size;
    the laterality used: the table's, else the file's tags or pixel mass; the decode's reduction).

    A DICOM file is decoded at the largest reduction 2**r (`read_dicom`'s `reduce`; JPEG 2000 only)
    at which the breast crop still has a long side of at least `image_size`, so the stored image
    is as large as the one a full decode gives. The crop is only known after decoding: a thumbnail
    (long side >= `PROBE_SIDE`, a few hundredths of a second) estimates it, and if the crop found at
    the chosen reduction is still too short, the next level is decoded. `image_size` 0 keeps the
    native size (a full decode).
    """
    pixels, used, geometry = preprocess_image_geometry(source, laterality=laterality, image_size=image_size,
                                                       decode_threads=decode_threads)
    return pixels, used, geometry.reduction


def preprocess_image_geometry(source, *, laterality: str | None, image_size: int, decode_threads: int = 1,
                              ) -> tuple[np.ndarray, str | None, StoredGeometry]:
    """`preprocess_image` with the `StoredGeometry` that maps the file's pixels onto the stored image."""
    from ...image_processing_mama import load_mammogram

    if not isinstance(source, (str, os.PathLike)) or Path(source).suffix.lower() in IMAGE_SUFFIXES:
        image, file_laterality = load_mammogram(source)
        used = laterality or file_laterality
        pixels, flipped, box = _oriented_crop(image, used)
        stored = to_uint16(resize_long_side(np.asarray(pixels, dtype=np.float32), image_size))
        shape = tuple(image.shape)
        return stored, used, StoredGeometry(shape, 0, shape, flipped, box, tuple(stored.shape))

    dataset = read_dataset(source)
    native_side = max(int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0))
    reduction = largest_reduction(native_side, image_size)
    first = max(reduction, largest_reduction(native_side, PROBE_SIDE)) if reduction else 0
    image = read_dicom(dataset, reduce=first, decode_threads=decode_threads)
    while True:
        used = laterality or image.laterality
        pixels, flipped, box = _oriented_crop(image.pixels, used)
        if image.reduction == 0 or (image.reduction <= reduction and max(pixels.shape) >= image_size):
            break
        estimate = max(pixels.shape) << image.reduction  # the crop's long side at the native size
        reduction = min(reduction, image.reduction - 1, largest_reduction(estimate, image_size))
        image = read_dicom(dataset, reduce=reduction, decode_threads=decode_threads)
    stored = to_uint16(resize_long_side(np.asarray(pixels, dtype=np.float32), image_size))
    return stored, used, StoredGeometry(image.native_shape, image.reduction, tuple(image.shape), flipped, box,
                                        tuple(stored.shape))


def mask_box(path, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) of the nonzero pixels of a lesion mask file (DICOM or image) drawn
    on an image of `shape`; None for an empty mask or one of another size (it cannot be placed)."""
    from ...image_utils_mama import _is_image_file, _to_gray_array

    if _is_image_file(path):
        mask = _to_gray_array(path)
    else:
        import pydicom

        mask = pydicom.dcmread(path).pixel_array
    if mask.shape != tuple(shape):
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def cache_name(image_id: str) -> str:
    """File name of an image in the cache: the id itself when it is a safe file name."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}", image_id):
        return f"{image_id}.png"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", image_id)[:100]
    return f"{safe}-{hashlib.sha1(image_id.encode()).hexdigest()[:10]}.png"


def write_png(path: Path, pixels: np.ndarray, *, laterality: str | None,
              lesion_boxes: Sequence[Sequence[float]] | None = None) -> None:
    """A 16-bit grayscale PNG, written under a temporary name then renamed (all or nothing); the
    laterality used and the lesion boxes (when the job had some) ride along as text chunks."""
    info = PngImagePlugin.PngInfo()
    if laterality:
        info.add_text("laterality", laterality)
    if lesion_boxes is not None:
        info.add_text(BOX_COLUMN, json.dumps([list(box) for box in lesion_boxes]))
    with atomic_path(path) as temporary:  # a failed write (disk full...) removes its temporary file
        Image.fromarray(pixels).save(temporary, format="PNG", pnginfo=info)


def read_cached_laterality(path: Path) -> str | None:
    with Image.open(path) as image:
        return image.text.get("laterality") or None


def read_cached_boxes(path: Path) -> list[list[float]] | None:
    """The lesion boxes stored with a cached PNG (None: it was written without any)."""
    with Image.open(path) as image:
        text = image.text.get(BOX_COLUMN)
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class ImageJob:
    """One image to decode; picklable for the process pool."""

    image_id: str
    source_path: str
    laterality: str | None
    image_size: int
    cache_path: str
    decode_threads: int = 1
    # Lesions to carry onto the stored image: boxes in source pixels, and mask files (`mask_box`).
    source_boxes: tuple = ()
    lesion_masks: tuple = ()

    @property
    def has_lesions(self) -> bool:
        return bool(self.source_boxes or self.lesion_masks)


@dataclass(frozen=True)
class ImageResult:
    image_id: str
    failure: str | None
    laterality: str | None
    reduction: int | None = None  # the decode's reduction; None when the image came from the cache
    lesion_boxes: tuple | None = None  # stored-image boxes of a job with lesions


def run_job(job: ImageJob) -> ImageResult:
    """Decode, preprocess and cache one image.

    A problem with the input file (missing, not DICOM, undecodable, unreadable) becomes the image's
    failure reason and the run goes on. A problem of the machine (`ENVIRONMENT_ERRNOS` while
    decoding, any `OSError` while writing the cache) is raised: it would fail every later image
    too, so the run must stop instead of listing every image as failed.
    """
    if not Path(job.source_path).is_file():
        return ImageResult(job.image_id, "file missing", None)
    try:
        pixels, laterality, geometry = preprocess_image_geometry(
            job.source_path, laterality=job.laterality, image_size=job.image_size, decode_threads=job.decode_threads)
        boxes = stored_boxes(job, geometry) if job.has_lesions else None
    except OSError as error:
        if error.errno in FULL_OR_READ_ONLY:
            raise
        return ImageResult(job.image_id, f"decode error: {error}", None)
    except Exception as error:  # one bad file must not stop a 480,000-image run
        message = str(error) or type(error).__name__
        return ImageResult(job.image_id, f"decode error: {message}", None)
    write_png(Path(job.cache_path), pixels, laterality=laterality, lesion_boxes=boxes)
    return ImageResult(job.image_id, None, laterality, geometry.reduction,
                       None if boxes is None else tuple(map(tuple, boxes)))


def stored_boxes(job: ImageJob, geometry: StoredGeometry) -> list[list[float]]:
    """The job's lesion boxes (given, and read from its mask files) in the stored image's pixels.
    A mask that cannot be read or placed gives no box; the image itself is still converted."""
    boxes = list(job.source_boxes)
    for path in job.lesion_masks:
        try:
            box = mask_box(path, geometry.native_shape)
        except Exception:  # a broken mask file loses its box, not the mammogram
            box = None
        if box is not None:
            boxes.append(box)
    return [mapped for mapped in (geometry.map_box(box) for box in boxes) if mapped is not None]


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def process_images(jobs: Sequence[ImageJob], *, workers: int = 1, progress: bool = True,
                   description: str = "images") -> dict[str, ImageResult]:
    """Run the jobs whose PNG is not cached yet (in `workers` processes) and report every job."""
    results: dict[str, ImageResult] = {}
    todo = []
    for job in jobs:
        cached = Path(job.cache_path)
        boxes = read_cached_boxes(cached) if cached.is_file() and job.has_lesions else None
        if cached.is_file() and not (job.has_lesions and boxes is None):
            # The laterality the image was oriented with is only needed when the table has none.
            laterality = job.laterality or read_cached_laterality(cached)
            results[job.image_id] = ImageResult(job.image_id, None, laterality,
                                                lesion_boxes=None if boxes is None else tuple(map(tuple, boxes)))
        else:
            todo.append(job)
    # Cores the workers leave idle go to the decoder's threads (a full JPEG 2000 decode).
    threads = max(1, available_cores() // max(1, min(workers, len(todo))))
    todo = [dataclasses.replace(job, decode_threads=threads) for job in todo]
    for result in map_in_processes(run_job, todo, workers=workers, progress=progress, description=description,
                                   done=len(jobs) - len(todo)):
        results[result.image_id] = result
    return results


# ----------------------------------------------------------------------------------------------
# The output folder: cache, failures, atomic DatasetDict
# ----------------------------------------------------------------------------------------------


class StorageError(OSError):
    """The output folder cannot be written (disk full, read-only file system, no permission).

    The run stops (a machine problem would fail every remaining image); the message names the folder,
    the cause and what to do. Nothing already committed is touched: the previous dataset (if any)
    stays loadable, and the images cached so far are reused by the next run.
    """


def storage_error(error: OSError, out: Path) -> StorageError:
    """A `StorageError` explaining `error` (raised while writing into `out`) in a sentence."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = (f"Free some space (or pass --out a folder on a larger disk) and run the same command again: "
                  f"the images finished so far are cached in {out / CACHE_DIR} and are not decoded again.")
    elif error.errno == errno.EROFS:
        advice = "The file system is read-only: pass --out a folder on a writable disk."
    elif error.errno in (errno.EACCES, errno.EPERM):
        advice = "You may not write there: pass --out a folder you can write to (or fix its permissions)."
    else:
        advice = "Check the disk and the folder, then run the same command again (it resumes)."
    where = f" ({error.filename})" if error.filename else ""
    cause = error.strerror or str(error)
    storage = StorageError(f"Cannot write the converted dataset to {out}: {cause}{where}. {advice}")
    storage.errno = error.errno
    return storage


def inside(out: Path, path: Path) -> Path:
    """`path` itself, after checking that it lies inside the output folder `out` (its folder, with
    symbolic links resolved, is `out` or below, and its name is a plain name): nothing the converter
    writes, renames or removes may resolve outside `--out`."""
    root = os.path.realpath(out)
    parent = os.path.realpath(path.parent)
    if path.name in ("", ".", "..") or (parent != root and not parent.startswith(root + os.sep)):
        raise ConverterError(f"Refusing to touch {path}: it is not inside the output folder {out}.")
    return path


def remove_inside(out: Path, path: Path) -> None:
    """Remove a file, a symbolic link (never what it points to) or a folder tree inside `out`."""
    inside(out, path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def check_split_name(name: str, *, source: Path) -> str:
    """A split name read from disk, checked to be a plain folder name ("train", "test_balanced")."""
    if not isinstance(name, str) or not SPLIT_NAME.fullmatch(name) or name in (".", ".."):
        raise ConverterError(
            f"{source} lists a split {name!r}, which is not a plain folder name: this file was not written by a "
            f"converter. Move it away (or use a new --out folder) and run again.")
    return name


def prepare_output(out, settings: Mapping[str, Any]) -> Path:
    """Create `out` (or reuse one of our own output folders) and check its cache matches `settings`.

    A folder that holds other files is refused (the converter replaces split folders in it), as
    is a cache written with different settings (its images would not match the options), and a
    `dataset_dict.json` whose split names are not plain folder names. Leftovers of a killed run
    (temporary files, dataset versions that never became current) are removed.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConverterError(f"--out {out} is a file: pass a folder to write the dataset into.")
    cache = out / CACHE_DIR
    settings = {"cache_format": CACHE_FORMAT, **settings}
    ours = (cache / SETTINGS_FILE).is_file() or (out / SUMMARY_FILE).is_file() or (out / CURRENT_LINK).is_symlink()
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise ConverterError(
            f"--out {out} already holds files that this converter did not write: use an empty or new folder.")
    marker = out / DATASET_DICT_FILE
    if marker.is_file():
        for name in _listed_splits(marker):
            check_split_name(name, source=marker)
    cache.mkdir(parents=True, exist_ok=True)
    record_settings(cache / SETTINGS_FILE, settings, lambda previous: ConverterError(
        f"{out} was converted with {previous}, not {settings}: re-run with the same options to "
        f"resume, or write to a new --out folder (or delete {cache})."))
    for partial in [*cache.glob(".*.partial"), *cache.glob(".*.partial-*"), *out.glob(".*.partial"),
                    *out.glob(".*.partial-*")]:
        remove_inside(out, partial)  # a file a killed run (SIGKILL: no clean-up) was writing
    if (out / PARTIAL_DIR).exists():
        remove_inside(out, out / PARTIAL_DIR)  # left by versions before the versioned layout
    _remove_stale_versions(out)
    return out


def failures_csv(failures: Sequence[Mapping[str, Any]]) -> str:
    """The text of `failures.csv`: FAILURE_COLUMNS, one row per image that is not in the dataset."""
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=FAILURE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for failure in failures:
        writer.writerow({column: "" if failure.get(column) is None else failure.get(column)
                         for column in FAILURE_COLUMNS})
    return handle.getvalue()


def failure(row: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """A failures-file entry for a planned row (`row` holds image_id, source_path, table, row_index)."""
    return {"image_id": row.get("image_id"), "source_path": row.get("source_path"), "reason": reason,
            "table": row.get("table"), "row_index": row.get("row_index")}


# The committed output: `out/.versions/<n>/` holds one complete version (the DatasetDict as
# `save_to_disk` writes it, plus failures.csv and conversion.json); `out/.current` is a relative
# symbolic link to the current version; every name a reader opens in `out` (dataset_dict.json,
# one folder per split, failures.csv, conversion.json) is a link through `.current`. Replacing
# `.current` (one `os.replace`) switches all of them at once.
VERSIONS_DIR = ".versions"
CURRENT_LINK = ".current"
DATASET_DICT_FILE = "dataset_dict.json"
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _listed_splits(marker: Path) -> list:
    try:
        splits = json.loads(marker.read_text()).get("splits", [])
    except (OSError, ValueError, AttributeError) as error:
        raise ConverterError(f"{marker} cannot be read as a dataset_dict.json ({error}): move it away (or use a "
                             "new --out folder) and run again.") from error
    return list(splits) if isinstance(splits, list) else [splits]


def _current_version(out: Path) -> str | None:
    link = out / CURRENT_LINK
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def _next_version(out: Path) -> str:
    numbers = [int(entry.name) for entry in (out / VERSIONS_DIR).glob("*") if entry.name.isdigit()]
    current = _current_version(out)
    if current is not None and current.isdigit():
        numbers.append(int(current))
    return str(max(numbers, default=0) + 1)


def _remove_stale_versions(out: Path, keep: str | None = None) -> None:
    """Remove every version but the current one (and `keep`): the old one after a switch, or one a
    killed run left half-written."""
    versions = out / VERSIONS_DIR
    if not versions.is_dir():
        return
    current = _current_version(out)
    for entry in versions.iterdir():
        if entry.name not in (current, keep):
            remove_inside(out, entry)


def _link(out: Path, name: str, target: str) -> None:
    """Make `out/name` the relative symbolic link `target` (atomically replacing another link)."""
    path = inside(out, out / name)
    if path.is_symlink() and os.readlink(path) == target:
        return
    temporary = inside(out, out / f".{name}.partial-{os.getpid()}")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, path)


def _retire_unversioned(out: Path) -> None:
    """A dataset written before the versioned layout (real dataset_dict.json and split folders) is
    removed before the links replace it; `load_from_disk` sees no dataset until the switch."""
    marker = out / DATASET_DICT_FILE
    if marker.is_symlink() or not marker.is_file():
        return
    splits = [check_split_name(name, source=marker) for name in _listed_splits(marker)]
    marker.unlink()
    for name in [*splits, FAILURES_FILE, SUMMARY_FILE, SHARD_FILE]:
        path = out / name
        if path.exists() and not path.is_symlink():
            remove_inside(out, path)


def _link_names(out: Path, names: Sequence[str]) -> None:
    for name in names:
        path = out / name
        if path.exists() and not path.is_symlink():
            remove_inside(out, path)  # only an unversioned leftover can be a real file or folder here
        _link(out, name, f"{CURRENT_LINK}/{name}")


def _unlink_names(out: Path, keep: Sequence[str]) -> None:
    """Remove the links of names the current version does not have (e.g. a split no longer written)."""
    for entry in out.iterdir():
        if entry.is_symlink() and entry.name not in keep and os.readlink(entry).startswith(f"{CURRENT_LINK}/"):
            remove_inside(out, entry)


def commit_dataset(out: Path, dataset_dict, *, files: Mapping[str, str] | None = None) -> None:
    """Save `dataset_dict` (and the text `files`, e.g. failures.csv) as the new version of `out`'s dataset.

    Every converter (and a step that merges shards into one DatasetDict) commits through here. What a
    reader (`datasets.load_from_disk(out)`) sees at each instant:

    1. the new version is written into `out/.versions/<n>/`, which no reader looks at: the old
       dataset (or none, on a first run) is what it sees, unchanged;
    2. a link `out/<name> -> .current/<name>` is made for every split and file of the new version that
       has none yet (a link to a name the current version lacks is never read: the current
       `dataset_dict.json` does not list it); old dataset still;
    3. `out/.current` is replaced by a link to the new version with one `os.replace`: from this
       instant every name resolves into the new version: the new dataset;
    4. the old version and the links of names only it had are removed: new dataset.

    A process killed at any point leaves the old or the new dataset loadable; the next run removes
    what the killed one left (`prepare_output`). A folder converted before this layout existed
    (real split folders) is the exception, once: its dataset is removed just before step 2, so until
    step 3 a reader finds no dataset. A reader that has already opened the old version keeps
    reading its files (they are memory-mapped) even after step 4 removes them.
    """
    version = _next_version(out)
    target = inside(out, out / VERSIONS_DIR / version)
    target.parent.mkdir(exist_ok=True)
    names = [*dataset_dict, DATASET_DICT_FILE, *(files or {})]
    for name in names:
        check_split_name(name, source=out)
    try:
        # datasets writes no shard at all for an empty split and then cannot load it: ask for one.
        empty_splits = {name: 1 for name, split in dataset_dict.items() if len(split) == 0}
        dataset_dict.save_to_disk(str(target), num_shards=empty_splits)
        for name, text in (files or {}).items():
            write_text_atomic(target / name, text)
    except BaseException:
        remove_inside(out, target)
        raise
    _retire_unversioned(out)
    _link_names(out, names)
    _link(out, CURRENT_LINK, f"{VERSIONS_DIR}/{version}")
    _remove_stale_versions(out, keep=version)
    _unlink_names(out, names)


def write_dataset(
    out: Path,
    rows: Sequence[dict[str, Any]],
    failures: Sequence[dict[str, Any]],
    *,
    split_names: Sequence[str],
    image_size: int,
    workers: int = 1,
    progress: bool = True,
    description: str = "images",
    balanced: tuple[str, str, str] | None = None,
    seed: int = 0,
    summary: Mapping[str, Any] | None = None,
    keep_cache: bool = True,
    shard: Shard | None = None,
):
    """Decode the rows' images, then write the DatasetDict, `failures.csv` and `conversion.json`.

    Args:
        out: a folder returned by `prepare_output`.
        rows: planned output rows: the schema columns except `image`, plus `split`, `table` and
            `row_index` (where the row came from, for the failures file), and optionally the lesions
            to carry onto the stored image: `source_boxes` ((x0, y0, x1, y1) in the source file's
            pixels) and `lesion_masks` (mask files of the source's size); their stored-image boxes
            become `lesion_boxes` (a row without lesions may set `lesion_boxes` itself; default []).
        failures: rows already refused from the tables (not 2D, duplicate row, ...).
        split_names: the splits to write, in order (an empty split is written empty).
        balanced: `(source split, label column, new split)`: add a class-balanced subset of the
            source split's successfully decoded rows (`balanced_subset` with `seed`).
        keep_cache: keep `out/.cache` (re-runs are then instant); False deletes it at the end.
        shard: write only this shard's patients (`rows` and their splits are planned over all
            patients). The tables' refusals (`failures`) go to shard 0; the balanced subset needs
            every shard and is made by the merge; `shard.json` records where each row stands in
            the single-run order, for the merge.

    Returns the `datasets.DatasetDict` as loaded back from `out`.
    """
    import datasets

    shard = shard or Shard()
    positions = [index for index, row in enumerate(rows) if shard.holds(row["patient_id"])]
    rows = [rows[index] for index in positions]
    if shard.index > 0:
        failures = []
    cache = out / CACHE_DIR
    jobs = [ImageJob(row["image_id"], row["source_path"], row.get("laterality"), image_size,
                     str(cache / cache_name(row["image_id"])), source_boxes=tuple(row.get("source_boxes") or ()),
                     lesion_masks=tuple(row.get("lesion_masks") or ())) for row in rows]
    results = process_images(jobs, workers=workers, progress=progress, description=description)
    failures = list(failures)
    by_split: dict[str, dict[str, list]] = {name: {column: [] for column in COLUMNS} for name in split_names}
    order: dict[str, list[int]] = {name: [] for name in split_names}  # single-run positions of the rows
    for row, job, position in zip(rows, jobs, positions):
        result = results[row["image_id"]]
        if result.failure is not None:
            failures.append(failure(row, result.failure))
            continue
        order[row["split"]].append(position)
        columns = by_split[row["split"]]
        for column in COLUMNS:
            if column == "image":
                columns["image"].append({"path": job.cache_path, "bytes": None})
            elif column == "laterality":
                columns["laterality"].append(row.get("laterality") or result.laterality)
            elif column == BOX_COLUMN:
                boxes = result.lesion_boxes if result.lesion_boxes is not None else row.get(BOX_COLUMN)
                columns[BOX_COLUMN].append([list(box) for box in boxes or []])
            else:
                columns[column].append(row.get(column))
    if balanced is not None and shard.count == 1:
        source, label, name = balanced
        chosen = balanced_subset(by_split[source][label], seed=seed)
        by_split[name] = {column: [values[i] for i in chosen] for column, values in by_split[source].items()}
    schema = features()
    dataset_dict = datasets.DatasetDict({
        name: datasets.Dataset.from_dict(columns, features=schema) for name, columns in by_split.items()
    })
    sort_failures(failures)
    # How many of the images decoded in this run were decoded at 1/2**r of their size, by r.
    reductions = Counter(str(result.reduction) for result in results.values() if result.reduction is not None)
    counts = {name: len(columns["image_id"]) for name, columns in by_split.items()}
    info = {**(summary or {}), "image_size": image_size, **STORED_IMAGES, "seed": seed}
    files = {FAILURES_FILE: failures_csv(failures)}
    if shard.count > 1:
        info["shard"] = {"index": shard.index, "count": shard.count}
        files[SHARD_FILE] = json.dumps({"index": shard.index, "count": shard.count, "balanced": balanced,
                                        "order": order})
    files[SUMMARY_FILE] = summary_json(info, counts, failures, reductions)
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        # The dataset, its failures, its summary (and a shard's place in the run) become current together.
        commit_dataset(out, dataset_dict, files=files)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    if not keep_cache:
        remove_inside(out, cache)
    return datasets.load_from_disk(str(out))


def sort_failures(failures: list[dict[str, Any]]) -> None:
    """The failures file's order: by table, then row."""
    failures.sort(key=lambda entry: (str(entry.get("table")), _row_order(entry.get("row_index"))))


def summary_json(info: Mapping[str, Any], counts: Mapping[str, int], failures: Sequence[Mapping],
                 reductions: Mapping[str, int]) -> str:
    """The text of `conversion.json`: the run's options (`info`, with `image_size` and `seed`), rows per
    split, failures by reason and how many images were decoded at 1/2**r of their size, by r."""
    image_size = info["image_size"]
    reasons = Counter(entry["reason"].split(":")[0] for entry in failures)
    return json.dumps(
        {**info, "stored_size": "native" if image_size == 0 else f"long side at most {image_size} px",
         "decode_reductions": dict(sorted(reductions.items())), "rows": dict(counts),
         "failures": len(failures), "failure_reasons": dict(sorted(reasons.items()))}, indent=1, default=str)


def _row_order(row_index) -> int:
    return -1 if row_index is None else int(row_index)


# ----------------------------------------------------------------------------------------------
# The converter contract
# ----------------------------------------------------------------------------------------------


def check_options(*, image_size: int, workers: int, limit: int | None) -> None:
    if image_size != 0 and image_size < 16:
        raise ConverterError(f"--image-size {image_size} is too small: use at least 16, or 0 for the native size "
                             f"(default {DEFAULT_IMAGE_SIZE}).")
    if workers < 1:
        raise ConverterError(f"--workers {workers} must be at least 1.")
    if limit is not None and limit < 1:
        raise ConverterError(f"--limit {limit} must be at least 1 (or leave it out to convert everything).")


def refuse_outside_roots(rows: Sequence[dict], roots: Sequence[Path]) -> tuple[list[dict], list[dict]]:
    """Split planned rows into those whose `source_path` lies under one of `roots` and failures.

    The check is on the path as written (normalised, `..` resolved textually, symbolic links not
    followed), so an id in a table such as "../../etc/x" or "/home/someone/x" never makes the
    converter read a file outside the dataset, while a dataset whose folders are links to another
    disk still converts.

    >>> rows = [{"image_id": "a", "source_path": "/data/ds/p/a.dcm"}, {"image_id": "b", "source_path": "/data/ds/p/../../b.dcm"}]
    >>> kept, refused = refuse_outside_roots(rows, [Path("/data/ds")])
    >>> [row["image_id"] for row in kept], refused[0]["reason"]
    (['a'], 'source path outside the dataset folder: /data/ds/p/../../b.dcm (the table holds a ../ or absolute path)')
    """
    allowed = [os.path.abspath(root) for root in roots]
    kept, refused = [], []
    for row in rows:
        path = os.path.abspath(str(row["source_path"]))  # abspath also normalises ".." away
        if any(path.startswith(root.rstrip(os.sep) + os.sep) for root in allowed):
            kept.append(row)
        else:
            refused.append(failure(row, f"source path outside the dataset folder: {row['source_path']} "
                                        "(the table holds a ../ or absolute path)"))
    return kept, refused


class DatasetConverter:
    """The contract every converter follows (DESIGN.md "Add a dataset").

    A converter reads a dataset as published under `root` and writes the package's one schema. A
    subclass sets

    - `name`: the registry key (`CONVERTERS[name]`), recorded as `converter` in `conversion.json`;
      it is also the licence key of the data (`hub.DATASET_TERMS`), recorded as `dataset` (except
      for the package's synthetic look-alikes, recorded as `synthetic`), which the training scripts
      copy into every model trained on it;
    - `description`: what the progress bar shows;
    - `balanced`: `(source split, label column, new split)` for a class-balanced extra split, or None;
    - `option_defaults`: the dataset's own options (e.g. EMBED's `dicom_root`) and their defaults:
      the keyword arguments `__init__` accepts, kept in `options` and recorded in `conversion.json`;
    - `planner`: `staticmethod(plan_<name>)`, a function `(root, *, limit, seed, **options)` that
      reads the tables (never an image) and returns the planned rows (the schema columns except
      `image`, plus `split`, `table`, `row_index`) and the rows refused with a reason (`plan()`
      calls it; a subclass may override `plan()` instead).

    `split_names()` lists the splits written (default train/validation/test) and `source_roots()` the
    folders images may be read from (default `root`; a row whose `source_path` is elsewhere is
    refused). `convert(out, ...)` does the rest: option checks, the resumable image cache,
    `failures.csv`, the atomic `DatasetDict` and `conversion.json`. Register a subclass with
    `@register_converter`; its command line is `data_scripts/<name>.py`, and its function
    `convert_<name>(root, out, *, <options>, **convert_options)` is one line:
    `<Name>Converter(root, <options>).convert(out, **convert_options)`.
    """

    name: str = ""
    description: str = "images"
    balanced: tuple[str, str, str] | None = None
    option_defaults: Mapping[str, Any] = {}
    planner: Callable[..., tuple[list[dict], list[dict]]] | None = None

    def __init__(self, root, **options):
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            accepted = ", ".join(self.option_defaults) or "none"
            raise TypeError(f"{type(self).__name__} got unknown option(s) {', '.join(unknown)} (accepted: {accepted})")
        self.root = root
        self.options = {**self.option_defaults, **options}

    def plan(self, *, limit: int | None = None, seed: int = 0) -> tuple[list[dict], list[dict]]:
        if self.planner is None:
            raise NotImplementedError(f"{type(self).__name__} must set `planner` or implement plan(limit=, seed=).")
        return self.planner(self.root, limit=limit, seed=seed, **self.options)

    def split_names(self) -> tuple[str, ...]:
        return tuple(SPLIT_FRACTIONS)

    def source_roots(self) -> list[Path]:
        return [Path(self.root)]

    def dataset_name(self) -> str:
        """The licence key of the converted data: `name`, or "synthetic" for a generated look-alike."""
        from ..synthetic.files import SYNTHETIC_MANIFEST

        return "synthetic" if (Path(self.root) / SYNTHETIC_MANIFEST).is_file() else self.name

    def convert(self, out, *, image_size: int = DEFAULT_IMAGE_SIZE, workers: int = 1, limit: int | None = None,
                seed: int = 0, progress: bool = True, keep_cache: bool = True, shard: Shard | None = None):
        """Convert the dataset into a `DatasetDict` saved at `out`; returns it (loaded back).

        `image_size` is the stored long side (0 keeps the native size); `limit` reads only the first N
        files or table rows; `keep_cache` keeps the resumable image cache; `shard` converts one part of
        the patients (see `Shard`).
        Raises `ConverterError` for a problem with the input (folder, table, column, option) and
        `StorageError` when `out` cannot be written (disk full, read-only, no permission).
        """
        check_options(image_size=image_size, workers=workers, limit=limit)
        rows, refused = self.plan(limit=limit, seed=seed)
        rows, outside = refuse_outside_roots(rows, self.source_roots())
        options = {key: None if value is None else str(value) for key, value in self.options.items()}
        folder = Path(out).expanduser()
        try:
            out = prepare_output(out, {"converter": self.name, "image_size": image_size})
            return write_dataset(
                out, rows, [*refused, *outside], split_names=self.split_names(), image_size=image_size,
                workers=workers, progress=progress, description=self.description, balanced=self.balanced,
                seed=seed, keep_cache=keep_cache, shard=shard,
                summary={"converter": self.name, "dataset": self.dataset_name(), "root": str(Path(self.root)),
                         **options, "limit": limit},
            )
        except StorageError:
            raise
        except OSError as error:
            if error.errno not in ENVIRONMENT_ERRNOS:
                raise
            raise storage_error(error, folder) from error


CONVERTERS: dict[str, type[DatasetConverter]] = {}


def register_converter(cls: type[DatasetConverter]) -> type[DatasetConverter]:
    """Class decorator: make a converter reachable as `CONVERTERS[cls.name]`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name`.")
    CONVERTERS[cls.name] = cls
    return cls
