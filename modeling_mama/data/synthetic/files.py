"""Plumbing shared by the look-alike generators: atomic files, per-image jobs run in worker
processes, deterministic seeds and UIDs, resumable output folders."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pydicom
from pydicom.uid import (
    generate_uid,
)

from ...file_utils_mama import record_settings
from ..pool import map_in_processes
from .dicom_writer import DicomEncoding, _atomic_write, mammogram_dataset
from .rendering import (
    Lesion,
    _ImagePlan,
    _output_boxes,
    _plan_image,
    _render_plan,
    _stored_flip,
)
from .tables import FULL_IMAGE_SIZE

# Written into every generated root: the converters read it to record the data as "synthetic"
# (not as the dataset it looks like) in conversion.json, which decides the licence of trained weights.
SYNTHETIC_MANIFEST = ".synthetic.json"

# ----------------------------------------------------------------------------------------------
# Image jobs (run in worker processes)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Breast:
    """What a job draws: one view of a breast (its random seed, pixel size, side, view, density, findings)."""

    seed: int
    height: int
    width: int
    laterality: str
    view: str
    density: int
    lesions: tuple[Lesion, ...]


@dataclass(frozen=True)
class _ImageJob(_Breast):
    """Everything needed to render and write one file; picklable for the process pool."""

    path: str
    encoding: DicomEncoding
    tags: dict = field(default_factory=dict)
    spot_zoom: float | None = None
    synthetic_2d: bool = False
    mirrored: bool = False

    def plan(self) -> _ImagePlan:
        return _plan_image(
            np.random.default_rng(self.seed), height=self.height, width=self.width, view=self.view,
            density=self.density, findings=self.lesions, spot_zoom=self.spot_zoom,
        )

    def boxes(self) -> list[tuple[float, float, float, float] | None]:
        return _output_boxes(self.plan(), flip=_stored_flip(self.laterality, self.mirrored))


def _write_image(job: _ImageJob) -> str:
    path = Path(job.path)
    flip = _stored_flip(job.laterality, job.mirrored)
    pixels = _render_plan(job.plan(), bits_stored=job.encoding.bits_stored, flip=flip, synthetic_2d=job.synthetic_2d)
    dataset = mammogram_dataset(
        pixels, job.encoding, laterality=job.laterality, view_position=job.view, flipped=flip, tags=job.tags,
    )
    _atomic_write(path, lambda temporary: pydicom.dcmwrite(temporary, dataset, enforce_file_format=True))
    return job.path


def _write_images(jobs: Sequence[_ImageJob], *, workers: int, progress: bool, description: str) -> None:
    _run_jobs(jobs, _write_image, done=lambda job: Path(job.path).exists(), workers=workers, progress=progress,
              description=description)


def _run_jobs(jobs: Sequence, write: Callable, *, done: Callable, workers: int, progress: bool,
              description: str) -> None:
    """`write(job)` for every job not `done` yet, in `workers` processes, with a progress bar."""
    todo = [job for job in jobs if not done(job)]
    # Each job has its own seed, so the output does not depend on which worker runs it.
    for _ in map_in_processes(write, todo, workers=workers, progress=progress, description=description,
                              chunksize=max(1, len(todo) // (8 * max(1, workers)))):
        pass


def _image_seed(dataset_seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{dataset_seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=[str(part) for part in parts])


class _Deck:
    """Draws from a shuffled pile refilled when empty: every value shows up every few draws."""

    def __init__(self, rng: np.random.Generator, pile: Sequence):
        self._rng, self._pile, self._left = rng, list(pile), []

    def draw(self):
        if not self._left:
            self._left = [self._pile[i] for i in self._rng.permutation(len(self._pile))]
        return self._left.pop()


class _EncodingDecks:
    """The storage variants of a dataset, each one guaranteed to appear regularly."""

    def __init__(self, rng: np.random.Generator, transfer_syntaxes: Sequence[str]):
        self.transfer_syntax = _Deck(rng, transfer_syntaxes)
        self.bits_stored = _Deck(rng, [12, 12, 12, 12, 14, 14, 16])
        self.photometric = _Deck(rng, ["MONOCHROME2"] * 6 + ["MONOCHROME1"])
        self.rescale = _Deck(rng, [None] * 4 + [(1.0, -512.0), (0.5, 0.0)])
        self.voi_lut_function = _Deck(rng, [None] * 4 + ["LINEAR", "SIGMOID"])
        self.second_window = _Deck(rng, [False] * 4 + [True])
        self.laterality_tag = _Deck(rng, ["ImageLaterality"] * 14 + ["Laterality", None])

    def draw(self, *, photometric: str | None = None) -> DicomEncoding:
        return DicomEncoding(
            bits_stored=self.bits_stored.draw(),
            photometric=photometric or self.photometric.draw(),
            rescale=self.rescale.draw(),
            voi_lut_function=self.voi_lut_function.draw(),
            second_window=self.second_window.draw(),
            transfer_syntax=self.transfer_syntax.draw(),
            laterality_tag=self.laterality_tag.draw(),
        )


# ----------------------------------------------------------------------------------------------
# Shared generator plumbing
# ----------------------------------------------------------------------------------------------


def parse_image_size(image_size) -> tuple[int, int]:
    """(rows, columns) from a pair, "HxW" or "full" (3328x2560).

    >>> parse_image_size("256x208"), parse_image_size("full"), parse_image_size((64, 52))
    ((256, 208), (3328, 2560), (64, 52))
    """
    if isinstance(image_size, str):
        text = image_size.strip().lower()
        if text == "full":
            return FULL_IMAGE_SIZE
        parts = text.split("x")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise ValueError(f"image size {image_size!r} must look like '256x208' (rows x columns) or 'full'")
        image_size = (int(parts[0]), int(parts[1]))
    height, width = (int(value) for value in image_size)
    if height < 16 or width < 16:
        raise ValueError(f"image size {height}x{width} is too small: use at least 16x16")
    return height, width


def _prepare_root(out_dir, settings: dict) -> Path:
    """Create the folder and record the settings; refuse to mix two different datasets."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / SYNTHETIC_MANIFEST
    record_settings(manifest, settings, lambda previous: ValueError(
        f"{manifest} says this folder holds a synthetic dataset made with {previous}, "
        f"not {settings}: use an empty folder, or the same settings to resume"))
    return root


def _start_lookalike(out_dir, name: str, count: tuple[str, int], *, image_size, seed: int,
                     **options) -> tuple[Path, int, int]:
    """What every `generate_<name>` does first: check its count (e.g. `("num_patients", 20)`) is at least
    1, parse `image_size`, and prepare `out_dir` with the settings (format, count, size, seed and the
    look-alike's `options` that are not None). Returns `(root, height, width)`."""
    count_name, number = count
    if number < 1:
        raise ValueError(f"{count_name}={number} must be at least 1")
    height, width = parse_image_size(image_size)
    settings = {"format": name, count_name: number, "image_size": [height, width], "seed": seed,
                **{key: value for key, value in options.items() if value is not None}}
    return _prepare_root(out_dir, settings), height, width


def _remove_stale_partials(root: Path) -> None:
    """Temporary files of an interrupted run that this run did not need to rewrite."""
    for partial in root.rglob(".*.partial"):
        partial.unlink()


def _date(day: dt.date) -> str:
    return day.isoformat()


def _choice(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    return options[int(rng.choice(len(options), p=p))]
