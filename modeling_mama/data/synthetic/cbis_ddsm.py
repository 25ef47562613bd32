"""The CBIS-DDSM look-alike: the four case-description CSVs next to `CBIS-DDSM/`, as a TCIA download
(NBIA Data Retriever, "descriptive" folder names) leaves them.

    <root>/mass_case_description_train_set.csv  (and _test_set, calc_..._train_set, calc_..._test_set)
    <root>/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-74994/1.000000-full mammogram images-24515/1-1.dcm
    <root>/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC_1/07-21-2016-DDSM-82440/1.000000-ROI mask images-97010/1-1.dcm
    <root>/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC_1/07-21-2016-DDSM-82440/1.000000-cropped images-32102/1-1.dcm

What the real release does and a converter must cope with:

- One CSV row per **abnormality**: an image with two findings has two rows; the mass tables spell
  the density column `breast_density`, the calcification tables `breast density`.
- The CSV's `image file path` is `<case folder>/<StudyInstanceUID>/<SeriesInstanceUID>/000000.dcm`,
  which the download does not reproduce: only the case folder name matches. Path cells may end in a
  newline; finding cells may be `N/A`; types may be two joined by `-` (`PLEOMORPHIC-FINE_LINEAR_BRANCHING`).
- An image with a mass and a calcification is listed in a Mass and a Calc table, under two case
  folders holding the same picture. A patient's masses and calcifications may sit in different
  splits (here: the fifth patient's calcification is in the test table, its mass in training).
- ROI folders `<case folder>_<abnormality id>` hold the mask (the full image's size, 0 / 255) and the
  crop, either in two series folders or as `1-1.dcm` / `1-2.dcm` of one folder in either order.
- Files are Secondary Capture with Modality MG, 16-bit, mostly RLE lossless; the side is in
  `(0020,0060) Laterality`, the view only in `PatientOrientation` or nowhere (then only the folder
  name says it); pictures are scanned films (`film`: bright film edges, burned-in labels, scratches).

`roi_fraction` < 1 leaves out the ROI folders of some abnormalities and `drop_full_images` the full
image of the last listed case folders, as a partial download does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from .dicom_writer import _atomic_write, _write_csv, image_dataset
from .files import (
    _Breast,
    _choice,
    _Deck,
    _image_seed,
    _remove_stale_partials,
    _run_jobs,
    _start_lookalike,
)
from .film import film_dataset, film_mammogram
from .rendering import Lesion, _random_position
from .tables import (
    CBIS_CALC_COLUMNS,
    CBIS_CALC_DISTRIBUTIONS,
    CBIS_CALC_TYPES,
    CBIS_MASS_COLUMNS,
    CBIS_MASS_MARGINS,
    CBIS_MASS_SHAPES,
    CBIS_TABLES,
    SECONDARY_CAPTURE,
)

CBIS_FOLDER = "CBIS-DDSM"
CBIS_DEFAULT_IMAGE_SIZE = (320, 208)  # portrait, as the scanned films are
_UID_PREFIX = "1.3.6.1.4.1.9590.100.1.2."
_TABLE_PREFIX = {("mass", "train"): "Mass-Training", ("mass", "test"): "Mass-Test",
                 ("calc", "train"): "Calc-Training", ("calc", "test"): "Calc-Test"}
_SIDE_WORDS = {"L": "LEFT", "R": "RIGHT"}
# Drawing a CBIS finding (its first code when two are joined by "-").
_MASS_DRAWING = {"IRREGULAR": ("irregular", "mass"), "OVAL": ("oval", "mass"), "ROUND": ("round", "mass"),
                 "LOBULATED": ("oval", "mass"), "ARCHITECTURAL_DISTORTION": ("irregular", "distortion"),
                 "FOCAL_ASYMMETRIC_DENSITY": ("oval", "asymmetry")}
_MARGIN_DRAWING = {"SPICULATED": "spiculated", "ILL_DEFINED": "indistinct", "CIRCUMSCRIBED": "circumscribed",
                   "OBSCURED": "obscured", "MICROLOBULATED": "microlobulated"}
_CALC_DRAWING = {"PLEOMORPHIC": "pleomorphic", "AMORPHOUS": "amorphous", "PUNCTATE": "punctate",
                 "FINE_LINEAR_BRANCHING": "fine-linear", "LUCENT_CENTER": "coarse", "ROUND_AND_REGULAR": "punctate"}
_DISTRIBUTION_DRAWING = {"CLUSTERED": "clustered", "SEGMENTAL": "segmental", "LINEAR": "linear",
                         "REGIONAL": "regional", "DIFFUSELY_DISTRIBUTED": "diffuse"}


@dataclass(frozen=True)
class _Abnormality:
    """One CSV row's finding (codes as published) and how it is drawn."""

    kind: str  # "mass" or "calc"
    table: tuple[str, str]  # (kind, split) of the table listing it
    first: str | None  # mass shape / calc type
    second: str | None  # mass margins / calc distribution
    assessment: int
    pathology: str
    subtlety: int
    lesion: Lesion


@dataclass(frozen=True)
class _Case:
    """One case folder: the full image as one table lists it, and its abnormalities' ROI folders."""

    folder: str
    full_path: str | None  # None: left out of the download
    uids: tuple[str, str, str]  # study, series, SOP of the full image
    rois: tuple  # per abnormality: (lesion index, abnormality id, mask path or None, crop path or None)


@dataclass(frozen=True)
class _CbisJob(_Breast):
    """One scanned film and every file that holds it (its case folders and their ROI folders)."""

    cases: tuple[_Case, ...]
    transfer_syntax: str
    view_in_header: bool

    def outputs(self) -> list[str]:
        paths = [case.full_path for case in self.cases if case.full_path]
        for case in self.cases:
            paths += [path for _, _, mask, crop in case.rois for path in (mask, crop) if path]
        return paths


def _write_cbis_image(job: _CbisJob) -> None:
    film = film_mammogram(np.random.default_rng(job.seed), height=job.height, width=job.width,
                          laterality=job.laterality, view=job.view, density=job.density, findings=job.lesions)
    for case in job.cases:
        study, series, sop = case.uids
        tags = {"PatientID": case.folder, "StudyInstanceUID": study, "SeriesInstanceUID": series,
                "SOPInstanceUID": sop, "SeriesDescription": "full mammogram images"}
        if case.full_path:
            dataset = film_dataset(film, laterality=job.laterality, view=job.view if job.view_in_header else None,
                                   transfer_syntax=job.transfer_syntax, tags=tags)
            _write_dicom(case.full_path, dataset)
        for lesion_index, abnormality_id, mask_path, crop_path in case.rois:
            # A finding drawn outside the picture (it never is with the default geometry) gets an empty mask.
            box = film.lesion_boxes[lesion_index] or (0, 0, 8, 8)
            roi_tags = {"Modality": "MG", "Laterality": job.laterality, "PatientID": f"{case.folder}_{abnormality_id}",
                        "StudyInstanceUID": _cbis_uid(job.seed, case.folder, abnormality_id, "study")}
            if mask_path:
                mask = _roi_mask(film.pixels.shape, box) if film.lesion_boxes[lesion_index] else np.zeros(
                    film.pixels.shape, np.uint8)
                dataset = image_dataset(mask, bits_stored=8, sop_class=SECONDARY_CAPTURE,
                                        tags={**roi_tags, **_roi_uids(job.seed, case.folder, abnormality_id, "mask"),
                                              "SeriesDescription": "ROI mask images"})
                _write_dicom(mask_path, dataset)
            if crop_path:
                x0, y0, x1, y1 = (round(value) for value in box)
                crop = film.pixels[max(0, y0 - 4):y1 + 4, max(0, x0 - 4):x1 + 4]
                dataset = image_dataset(crop, bits_stored=16, sop_class=SECONDARY_CAPTURE,
                                        tags={**roi_tags, **_roi_uids(job.seed, case.folder, abnormality_id, "crop"),
                                              "SeriesDescription": "cropped images"})
                _write_dicom(crop_path, dataset)


def _roi_uids(seed: int, folder: str, abnormality_id: int, what: str) -> dict[str, str]:
    """Series and SOP instance UIDs of an ROI file, derived from the seed: the same dataset twice is the same bytes."""
    return {"SeriesInstanceUID": _cbis_uid(seed, folder, abnormality_id, what, "series"),
            "SOPInstanceUID": _cbis_uid(seed, folder, abnormality_id, what, "sop")}


def _write_dicom(path: str, dataset) -> None:
    _atomic_write(Path(path), lambda temporary: pydicom.dcmwrite(temporary, dataset, enforce_file_format=True))


def _roi_mask(shape: tuple[int, int], box) -> np.ndarray:
    """The radiologist's outline: a filled ellipse a little larger than the lesion's box (0 / 255)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = max(1.5, 0.6 * (x1 - x0)), max(1.5, 0.6 * (y1 - y0))
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    inside = ((xs + 0.5 - cx) / rx) ** 2 + ((ys + 0.5 - cy) / ry) ** 2 <= 1.0
    return np.where(inside, 255, 0).astype(np.uint8)


def _cbis_uid(*parts) -> str:
    return generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(part) for part in parts])


def _draw_mass(rng, shape_code: str | None, margin_code: str | None, malignant: bool, position) -> Lesion:
    shape, kind = _MASS_DRAWING.get((shape_code or "OVAL").split("-")[0], ("oval", "mass"))
    margin = _MARGIN_DRAWING.get((margin_code or "CIRCUMSCRIBED").split("-")[0], "circumscribed")
    size = rng.uniform(0.05, 0.08) if malignant else rng.uniform(0.035, 0.055)
    return Lesion(kind=kind, shape=shape, margin=margin, density="high" if malignant else "iso", size=size,
                  position=position)


def _draw_calc(rng, type_code: str | None, distribution_code: str | None, position) -> Lesion:
    morphology = _CALC_DRAWING.get((type_code or "PUNCTATE").split("-")[0], "punctate")
    distribution = _DISTRIBUTION_DRAWING.get((distribution_code or "CLUSTERED").split("-")[0], "clustered")
    return Lesion(kind="calcifications", morphology=morphology, distribution=distribution,
                  size=rng.uniform(0.03, 0.05), position=position)


def _patient_plan(rng: np.random.Generator, index: int) -> list[tuple[str, str, str]]:
    """(side, kind, split) of each breast finding group of patient `index`; the first five patients
    cover the layouts a converter must handle (see the module docstring)."""
    fixed = {
        0: [("L", "mass", "train"), ("L", "mass", "train")],  # two masses on the same images
        1: [("R", "calc", "train")],
        2: [("L", "mass", "train"), ("L", "calc", "train")],  # one image in a Mass and a Calc table
        3: [("R", "mass", "test")],
        4: [("L", "mass", "train"), ("L", "calc", "test")],  # the same image in two splits
    }
    if index in fixed:
        return fixed[index]
    split = "test" if rng.uniform() < 0.25 else "train"
    side = _choice(rng, ["L", "R"])
    groups = [(side, _choice(rng, ["mass", "calc"]), split)]
    if rng.uniform() < 0.3:
        groups.append((side, _choice(rng, ["mass", "calc"]), split))
    return groups


def generate_cbis_ddsm(
    out_dir,
    *,
    num_patients: int = 12,
    image_size=CBIS_DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    roi_fraction: float = 1.0,
    drop_full_images: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write a CBIS-DDSM look-alike (four CSVs + `CBIS-DDSM/` case folders) and return its root.

    >>> import tempfile
    >>> root = generate_cbis_ddsm(tempfile.mkdtemp(), num_patients=1, image_size=(96, 72), progress=False)
    >>> sorted(path.name for path in root.glob("*.csv"))[:2]
    ['calc_case_description_test_set.csv', 'calc_case_description_train_set.csv']
    >>> sorted(path.name for path in (root / "CBIS-DDSM").iterdir())
    ['Mass-Training_P_00001_LEFT_CC', 'Mass-Training_P_00001_LEFT_CC_1', 'Mass-Training_P_00001_LEFT_CC_2', \
'Mass-Training_P_00001_LEFT_MLO', 'Mass-Training_P_00001_LEFT_MLO_1', 'Mass-Training_P_00001_LEFT_MLO_2']
    """
    if not 0.0 <= roi_fraction <= 1.0:
        raise ValueError(f"roi_fraction={roi_fraction} must be in [0, 1]")
    root, height, width = _start_lookalike(out_dir, "cbis_ddsm", ("num_patients", num_patients),
                                           image_size=image_size, seed=seed, roi_fraction=roi_fraction,
                                           drop_full_images=drop_full_images)
    rng = np.random.default_rng([seed, 5])
    syntax_deck = _Deck(rng, [RLELossless] * 3 + [ExplicitVRLittleEndian])
    header_view_deck = _Deck(rng, [True] * 3 + [False])
    rows = {table: [] for table in CBIS_TABLES}
    jobs = []
    start = dt.date(2016, 7, 20)

    for index in range(num_patients):
        patient_id = f"P_{index + 1:05d}"
        density = int(_choice(rng, [1, 2, 3, 4], [0.15, 0.35, 0.35, 0.15]))
        abnormalities_by_side: dict[str, list[_Abnormality]] = {}
        for side, kind, split in _patient_plan(rng, index):
            malignant = bool(rng.uniform() < 0.45) or index == 0
            pathology = "MALIGNANT" if malignant else _choice(rng, ["BENIGN", "BENIGN_WITHOUT_CALLBACK"], [0.7, 0.3])
            assessment = int(_choice(rng, [4, 5])) if malignant else int(_choice(rng, [0, 2, 3, 4], [0.15, 0.3, 0.3, 0.25]))
            position = _random_position(rng)
            if kind == "mass":
                first, second = _choice(rng, CBIS_MASS_SHAPES), _choice(rng, CBIS_MASS_MARGINS)
                lesion = _draw_mass(rng, first, second, malignant, position)
            else:
                first, second = _choice(rng, CBIS_CALC_TYPES), _choice(rng, CBIS_CALC_DISTRIBUTIONS)
                lesion = _draw_calc(rng, first, second, position)
            if rng.uniform() < 0.08:
                second = "N/A"  # the release leaves some descriptors out
            abnormalities_by_side.setdefault(side, []).append(_Abnormality(
                kind=kind, table=(kind, split), first=first, second=second, assessment=assessment,
                pathology=pathology, subtlety=int(rng.integers(1, 6)), lesion=lesion))
        for side, abnormalities in abnormalities_by_side.items():
            views = ["CC", "MLO"] if rng.uniform() > 0.1 or index < 5 else [_choice(rng, ["CC", "MLO"])]
            for view in views:
                image_seed = _image_seed(seed, f"cbis/{patient_id}/{side}/{view}")
                cases = []
                for table in CBIS_TABLES:
                    listed = [(number, abnormality) for number, abnormality in enumerate(abnormalities)
                              if abnormality.table == table]
                    if not listed:
                        continue
                    folder = f"{_TABLE_PREFIX[table]}_{patient_id}_{_SIDE_WORDS[side]}_{view}"
                    day = start + dt.timedelta(days=int(rng.integers(0, 3)))
                    date = f"{day:%m-%d-%Y}-DDSM-{int(rng.integers(10000, 99999))}"
                    full = (root / CBIS_FOLDER / folder / date /
                            f"1.000000-full mammogram images-{int(rng.integers(10000, 99999))}" / "1-1.dcm")
                    uids = tuple(_cbis_uid(seed, folder, what) for what in ("study", "series", "sop"))
                    rois = []
                    for abnormality_id, (number, abnormality) in enumerate(listed, start=1):
                        roi_folder = root / CBIS_FOLDER / f"{folder}_{abnormality_id}" / (
                            f"{day:%m-%d-%Y}-DDSM-{int(rng.integers(10000, 99999))}")
                        mask_series = roi_folder / f"1.000000-ROI mask images-{int(rng.integers(10000, 99999))}"
                        if rng.uniform() < 0.6:  # two series folders
                            mask = mask_series / "1-1.dcm"
                            crop = roi_folder / f"1.000000-cropped images-{int(rng.integers(10000, 99999))}" / "1-1.dcm"
                        else:  # one series, the mask as 1-1 or 1-2
                            mask, crop = ((mask_series / "1-1.dcm", mask_series / "1-2.dcm") if rng.uniform() < 0.5
                                          else (mask_series / "1-2.dcm", mask_series / "1-1.dcm"))
                        if rng.uniform() >= roi_fraction:
                            mask = crop = None
                        rois.append((number, abnormality_id, None if mask is None else str(mask),
                                     None if crop is None else str(crop)))
                        roi_uids = [_cbis_uid(seed, folder, abnormality_id, what) for what in ("study", "series")]
                        newline = "\n" if rng.uniform() < 0.3 else ""
                        base = {
                            "patient_id": patient_id, "left or right breast": _SIDE_WORDS[side], "image view": view,
                            "abnormality id": abnormality_id,
                            "abnormality type": "mass" if abnormality.kind == "mass" else "calcification",
                            "assessment": abnormality.assessment, "pathology": abnormality.pathology,
                            "subtlety": abnormality.subtlety,
                            "image file path": f"{folder}/{uids[0]}/{uids[1]}/000000.dcm" + newline,
                            "cropped image file path": f"{folder}_{abnormality_id}/{roi_uids[0]}/{roi_uids[1]}/000000.dcm",
                            "ROI mask file path": f"{folder}_{abnormality_id}/{roi_uids[0]}/{roi_uids[1]}/000001.dcm\n",
                        }
                        if abnormality.kind == "mass":
                            base.update({"breast_density": density, "mass shape": abnormality.first,
                                         "mass margins": abnormality.second})
                        else:
                            base.update({"breast density": density, "calc type": abnormality.first,
                                         "calc distribution": abnormality.second})
                        rows[table].append(base)
                    cases.append(_Case(folder=folder, full_path=str(full), uids=uids, rois=tuple(rois)))
                jobs.append(_CbisJob(
                    seed=image_seed, height=height, width=width, laterality=side, view=view, density=density,
                    lesions=tuple(abnormality.lesion for abnormality in abnormalities), cases=tuple(cases),
                    transfer_syntax=syntax_deck.draw(), view_in_header=header_view_deck.draw()))

    # A partial download: the last listed case folders have no full image.
    for position in range(len(jobs) - 1, max(-1, len(jobs) - 1 - drop_full_images), -1):
        cases = list(jobs[position].cases)
        cases[-1] = dataclasses.replace(cases[-1], full_path=None)
        jobs[position] = dataclasses.replace(jobs[position], cases=tuple(cases))

    _run_jobs(jobs, _write_cbis_image, done=lambda job: all(Path(path).exists() for path in job.outputs()),
              workers=workers, progress=progress, description="CBIS-DDSM images")
    for (kind, split), name in CBIS_TABLES.items():
        columns = CBIS_MASS_COLUMNS if kind == "mass" else CBIS_CALC_COLUMNS
        _write_csv(pd.DataFrame(rows[(kind, split)], columns=columns), root / name)
    _remove_stale_partials(root)
    return root
