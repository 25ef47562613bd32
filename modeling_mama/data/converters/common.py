"""What the EMBED, RSNA and VinDr converters share: tables, splits, the image cache, the writer.

A converter reads a dataset's own tables as published, decides for every listed image whether it
becomes an output row or a failure (with a reason), and hands the rows to `write_dataset`, which

1. decodes the DICOM files in a process pool (`workers`), with a tqdm bar; each finished image is
   cached as a 16-bit PNG under `<out>/.cache/<image_id>.png`, written under a temporary name and
   renamed, so a killed run loses at most the images in flight and a re-run skips cached images;
2. logs an image that cannot be decoded to `<out>/failures.csv` (image_id, source_path, reason,
   table, row_index) without stopping the run; failures are retried on a re-run;
3. saves the `datasets.DatasetDict` into `<out>/.partial/`, renames its split folders into `<out>`
   and replaces `<out>/dataset_dict.json` last: `load_from_disk(out)` sees the old dataset, no
   dataset, or the complete new one, never a mix. `conversion.json` records the options, the counts
  and what was done to the stored images (`STORED_IMAGES`: oriented, cropped; `image_size`).

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
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin
from tqdm.auto import tqdm

from ...dicom import read_dataset, read_dicom, reduced_size
from ...image_utils_mama import IMAGE_SUFFIXES
from ...labels import cell_text, normalize_id, normalize_laterality, parse_age, parse_int, parse_number  # noqa: F401


def parse_laterality(value) -> str | None:
    """An image's side, "L" / "R", from a table cell; None for anything else (the DICOM tags or the
    pixels decide then)."""
    return normalize_laterality(value, allow_bilateral=False, strict=False)


DEFAULT_IMAGE_SIZE = 1024
"""Long side of the stored images (pixels)."""

PROBE_SIDE = 256
"""Long side (at least) of the thumbnail a JPEG 2000 file is first decoded at, to find its breast crop."""

SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
FAILURE_COLUMNS = ["image_id", "source_path", "reason", "table", "row_index"]

# The output schema (DESIGN.md "Dataset schema"): identity, image, report fields, labels.
REPORT_COLUMNS = [
    "procedure", "reason", "race", "ethnicity", "age", "image_type", "report_density", "report_birads",
    "mass_shape", "mass_density", "calc_find", "calc_distribution",
]
LABEL_COLUMNS = ["birads", "density", "cancer"]
_INTEGER_COLUMNS = {"age", "report_density", "report_birads", "birads", "density", "cancer"}
COLUMNS = ["patient_id", "exam_id", "image_id", "laterality", "view", "source_path", "image",
           *REPORT_COLUMNS, *LABEL_COLUMNS]

CACHE_DIR = ".cache"
PARTIAL_DIR = ".partial"
SETTINGS_FILE = "settings.json"
SUMMARY_FILE = "conversion.json"
FAILURES_FILE = "failures.csv"
SHARD_FILE = "shard.json"
# Only the cache format changes this; a cache written by another format version is refused.
CACHE_FORMAT = 1
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
    from ...image_processing_mama import crop_to_breast, load_mammogram, orient_breast

    if not isinstance(source, (str, os.PathLike)) or Path(source).suffix.lower() in IMAGE_SUFFIXES:
        image, file_laterality = load_mammogram(source)
        used = laterality or file_laterality
        pixels = crop_to_breast(orient_breast(image, used))
        return to_uint16(resize_long_side(np.asarray(pixels, dtype=np.float32), image_size)), used, 0

    dataset = read_dataset(source)
    native_side = max(int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0))
    reduction = largest_reduction(native_side, image_size)
    first = max(reduction, largest_reduction(native_side, PROBE_SIDE)) if reduction else 0
    image = read_dicom(dataset, reduce=first, decode_threads=decode_threads)
    while True:
        used = laterality or image.laterality
        pixels = crop_to_breast(orient_breast(image.pixels, used))
        if image.reduction == 0 or (image.reduction <= reduction and max(pixels.shape) >= image_size):
            break
        estimate = max(pixels.shape) << image.reduction  # the crop's long side at the native size
        reduction = min(reduction, image.reduction - 1, largest_reduction(estimate, image_size))
        image = read_dicom(dataset, reduce=reduction, decode_threads=decode_threads)
    resized = resize_long_side(np.asarray(pixels, dtype=np.float32), image_size)
    return to_uint16(resized), used, image.reduction


def cache_name(image_id: str) -> str:
    """File name of an image in the cache: the id itself when it is a safe file name."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}", image_id):
        return f"{image_id}.png"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", image_id)[:100]
    return f"{safe}-{hashlib.sha1(image_id.encode()).hexdigest()[:10]}.png"


def write_png(path: Path, pixels: np.ndarray, *, laterality: str | None) -> None:
    """A 16-bit grayscale PNG, written under a temporary name then renamed (all or nothing)."""
    info = PngImagePlugin.PngInfo()
    if laterality:
        info.add_text("laterality", laterality)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    Image.fromarray(pixels).save(temporary, format="PNG", pnginfo=info)
    os.replace(temporary, path)


def read_cached_laterality(path: Path) -> str | None:
    with Image.open(path) as image:
        return image.text.get("laterality") or None


@dataclass(frozen=True)
class ImageJob:
    """One image to decode; picklable for the process pool."""

    image_id: str
    source_path: str
    laterality: str | None
    image_size: int
    cache_path: str
    decode_threads: int = 1


@dataclass(frozen=True)
class ImageResult:
    image_id: str
    failure: str | None
    laterality: str | None
    reduction: int | None = None  # the decode's reduction; None when the image came from the cache


def run_job(job: ImageJob) -> ImageResult:
    """Decode, preprocess and cache one image; any error becomes a failure reason, never a crash."""
    if not Path(job.source_path).is_file():
        return ImageResult(job.image_id, "file missing", None)
    try:
        pixels, laterality, reduction = preprocess_image(
            job.source_path, laterality=job.laterality, image_size=job.image_size, decode_threads=job.decode_threads)
        write_png(Path(job.cache_path), pixels, laterality=laterality)
    except Exception as error:  # one bad file must not stop a 480,000-image run
        message = str(error) or type(error).__name__
        return ImageResult(job.image_id, f"decode error: {message}", None)
    return ImageResult(job.image_id, None, laterality, reduction)


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def process_images(jobs: Sequence[ImageJob], *, workers: int = 1, progress: bool = True,
                   description: str = "images") -> dict[str, ImageResult]:
    """Run the jobs whose PNG is not cached yet (in `workers` processes) and report every job."""
    results: dict[str, ImageResult] = {}
    todo = []
    for job in jobs:
        if Path(job.cache_path).is_file():
            # The laterality the image was oriented with is only needed when the table has none.
            laterality = job.laterality or read_cached_laterality(Path(job.cache_path))
            results[job.image_id] = ImageResult(job.image_id, None, laterality)
        else:
            todo.append(job)
    # Cores the workers leave idle go to the decoder's threads (a full JPEG 2000 decode).
    threads = max(1, available_cores() // max(1, min(workers, len(todo))))
    todo = [dataclasses.replace(job, decode_threads=threads) for job in todo]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=description, unit="img", disable=not progress)
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            results[job.image_id] = run_job(job)
            bar.update()
    else:
        # fork keeps the imported modules (importing torch/transformers again costs seconds per worker).
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        chunksize = max(1, min(16, len(todo) // (4 * workers)))
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for result in pool.map(run_job, todo, chunksize=chunksize):
                results[result.image_id] = result
                bar.update()
    bar.close()
    return results


# ----------------------------------------------------------------------------------------------
# The output folder: cache, failures, atomic DatasetDict
# ----------------------------------------------------------------------------------------------


def prepare_output(out, settings: Mapping[str, Any]) -> Path:
    """Create `out` (or reuse one of our own output folders) and check its cache matches `settings`.

    A folder that holds other files is refused (the converter replaces split folders in it), as
    is a cache written with different settings (its images would not match the options).
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConverterError(f"--out {out} is a file: pass a folder to write the dataset into.")
    cache = out / CACHE_DIR
    settings = {"cache_format": CACHE_FORMAT, **settings}
    ours = (cache / SETTINGS_FILE).is_file() or (out / SUMMARY_FILE).is_file()
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise ConverterError(
            f"--out {out} already holds files that this converter did not write: use an empty or new folder.")
    cache.mkdir(parents=True, exist_ok=True)
    manifest = cache / SETTINGS_FILE
    if manifest.is_file():
        previous = json.loads(manifest.read_text())
        if previous != settings:
            raise ConverterError(
                f"{out} was converted with {previous}, not {settings}: re-run with the same options to "
                f"resume, or write to a new --out folder (or delete {cache}).")
    else:
        write_text_atomic(manifest, json.dumps(settings, sort_keys=True, indent=1))
    for partial in [*cache.glob(".*.partial-*"), *out.glob(".*.partial-*")]:
        partial.unlink()  # a file a killed run was writing
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    return out


def write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_failures(path: Path, failures: Sequence[Mapping[str, Any]]) -> None:
    """`failures.csv` (FAILURE_COLUMNS, one row per image that is not in the dataset), atomically."""
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FAILURE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for failure in failures:
            writer.writerow({column: "" if failure.get(column) is None else failure.get(column)
                             for column in FAILURE_COLUMNS})
    os.replace(temporary, path)


def failure(row: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """A failures-file entry for a planned row (`row` holds image_id, source_path, table, row_index)."""
    return {"image_id": row.get("image_id"), "source_path": row.get("source_path"), "reason": reason,
            "table": row.get("table"), "row_index": row.get("row_index")}


def commit_dataset(out: Path, dataset_dict) -> None:
    """Save `dataset_dict` into `out` so that readers never see a half-written dataset.

    It is saved in `out/.partial/`; then the old `dataset_dict.json` is removed (from here until the
    last step `out` holds no dataset), old and new split folders are replaced by renames, and the new
    `dataset_dict.json` is moved in last with `os.replace`.
    """
    partial = out / PARTIAL_DIR
    shutil.rmtree(partial, ignore_errors=True)
    # datasets writes no shard at all for an empty split and then cannot load it: ask for one.
    empty_splits = {name: 1 for name, split in dataset_dict.items() if len(split) == 0}
    dataset_dict.save_to_disk(str(partial), num_shards=empty_splits)
    marker = out / "dataset_dict.json"
    old_splits: list[str] = []
    if marker.is_file():
        old_splits = list(json.loads(marker.read_text()).get("splits", []))
        marker.unlink()
    for split in {*old_splits, *dataset_dict}:
        if (out / split).is_dir() and split not in (CACHE_DIR, PARTIAL_DIR):
            shutil.rmtree(out / split)
    for split in dataset_dict:
        os.replace(partial / split, out / split)
    os.replace(partial / "dataset_dict.json", marker)
    shutil.rmtree(partial, ignore_errors=True)


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
            `row_index` (where the row came from, for the failures file).
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
                     str(cache / cache_name(row["image_id"]))) for row in rows]
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
    write_failures(out / FAILURES_FILE, failures)
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        commit_dataset(out, dataset_dict)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    # How many of the images decoded in this run were decoded at 1/2**r of their size, by r.
    reductions = Counter(str(result.reduction) for result in results.values() if result.reduction is not None)
    counts = {name: len(columns["image_id"]) for name, columns in by_split.items()}
    info = {**(summary or {}), "image_size": image_size, **STORED_IMAGES, "seed": seed}
    if shard.count > 1:
        info["shard"] = {"index": shard.index, "count": shard.count}
        write_text_atomic(out / SHARD_FILE, json.dumps(
            {"index": shard.index, "count": shard.count, "balanced": balanced, "order": order}))
    else:
        (out / SHARD_FILE).unlink(missing_ok=True)
    write_summary(out, info, counts, failures, reductions)
    if not keep_cache:
        shutil.rmtree(cache)
    return datasets.load_from_disk(str(out))


def sort_failures(failures: list[dict[str, Any]]) -> None:
    """The failures file's order: by table, then row."""
    failures.sort(key=lambda entry: (str(entry.get("table")), _row_order(entry.get("row_index"))))


def write_summary(out: Path, info: Mapping[str, Any], counts: Mapping[str, int], failures: Sequence[Mapping],
                  reductions: Mapping[str, int]) -> None:
    """`conversion.json`: the run's options (`info`, with `image_size` and `seed`), rows per split,
    failures by reason and how many images were decoded at 1/2**r of their size, by r."""
    image_size = info["image_size"]
    reasons = Counter(entry["reason"].split(":")[0] for entry in failures)
    write_text_atomic(out / SUMMARY_FILE, json.dumps(
        {**info, "stored_size": "native" if image_size == 0 else f"long side at most {image_size} px",
         "decode_reductions": dict(sorted(reductions.items())), "rows": dict(counts),
         "failures": len(failures), "failure_reasons": dict(sorted(reasons.items()))}, indent=1, default=str))


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


class DatasetConverter:
    """The contract every converter follows (DESIGN.md "Add a dataset").

    A converter reads a dataset as published under `root` and writes the package's one schema. A
    subclass sets

    - `name`: the registry key (`CONVERTERS[name]`), recorded as `converter` in `conversion.json`;
      the datasets' licence terms are looked up under it (`hub.DATASET_TERMS`);
    - `description`: what the progress bar shows;
    - `balanced`: `(source split, label column, new split)` for a class-balanced extra split, or None;

    and implements `plan(limit=, seed=)`, which reads the tables (never an image) and returns the
    planned rows (the schema columns except `image`, plus `split`, `table`, `row_index`) and the rows
    refused with a reason. `split_names()` lists the splits written (default train/validation/test).
    Options of the dataset (e.g. EMBED's `dicom_root`) are keyword arguments of `__init__`, kept in
    `options` and recorded in `conversion.json`. `convert(out, ...)` does the rest: option checks, the
    resumable image cache, `failures.csv`, the atomic `DatasetDict` and `conversion.json`.
    Register a subclass with `@register_converter`; its command line is `data_scripts/<name>.py`.
    """

    name: str = ""
    description: str = "images"
    balanced: tuple[str, str, str] | None = None

    def __init__(self, root, **options):
        self.root = root
        self.options = options

    def plan(self, *, limit: int | None = None, seed: int = 0) -> tuple[list[dict], list[dict]]:
        raise NotImplementedError(f"{type(self).__name__} must implement plan(limit=, seed=).")

    def split_names(self) -> tuple[str, ...]:
        return tuple(SPLIT_FRACTIONS)

    def convert(self, out, *, image_size: int = DEFAULT_IMAGE_SIZE, workers: int = 1, limit: int | None = None,
                seed: int = 0, progress: bool = True, keep_cache: bool = True, shard: Shard | None = None):
        """Convert the dataset into a `DatasetDict` saved at `out`; returns it (loaded back).

        `image_size` 0 keeps the native size; `shard` converts one part of the patients (see `Shard`).
        """
        check_options(image_size=image_size, workers=workers, limit=limit)
        rows, refused = self.plan(limit=limit, seed=seed)
        out = prepare_output(out, {"converter": self.name, "image_size": image_size})
        options = {key: None if value is None else str(value) for key, value in self.options.items()}
        return write_dataset(
            out, rows, refused, split_names=self.split_names(), image_size=image_size, workers=workers,
            progress=progress, description=self.description, balanced=self.balanced, seed=seed,
            summary={"converter": self.name, "root": str(Path(self.root)), **options, "limit": limit},
            keep_cache=keep_cache, shard=shard,
        )


CONVERTERS: dict[str, type[DatasetConverter]] = {}


def register_converter(cls: type[DatasetConverter]) -> type[DatasetConverter]:
    """Class decorator: make a converter reachable as `CONVERTERS[cls.name]`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name`.")
    CONVERTERS[cls.name] = cls
    return cls
