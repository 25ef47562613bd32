"""The CMMD look-alike: the clinical sheet next to `CMMD/<ID1>/<date>-NA-NA-<n>/1.000000-NA-<n>/1-k.dcm`.

- `CMMD_clinicaldata_revision.xlsx` (or its CSV export with `table_format="csv"`): `ID1, LeftRight,
  Age, number, abnormality, classification, subtype`, one row per affected breast; `number` is the
  breast's image count; `subtype` only for D2 patients (all malignant), empty for D1.
- One study and one series per patient; the CC and MLO views of each affected breast, numbered
  `1-1.dcm`, `1-2.dcm`, ... in no particular order.
- Digital MG files, mostly 8-bit (8 bits allocated), some 12-bit; the side in `ImageLaterality`; the
  view in `ViewPosition` for about half the files and only in the View Code Sequence ("cranio-caudal",
  "medio-lateral oblique") for the rest, so a reader must look at both.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset

from .dicom_writer import DicomEncoding, _atomic_write, _write_csv
from .files import (
    _choice,
    _Deck,
    _image_seed,
    _ImageJob,
    _remove_stale_partials,
    _start_lookalike,
    _uid,
    _write_images,
)
from .rendering import Lesion, _random_position
from .tables import CMMD_CLINICAL_COLUMNS, CMMD_CLINICAL_FILE, CMMD_SUBTYPES

CMMD_DEFAULT_IMAGE_SIZE = (256, 208)
_VIEW_CODES = {"CC": ("R-10242", "cranio-caudal"), "MLO": ("R-10226", "medio-lateral oblique")}


def _view_code(view: str) -> list[Dataset]:
    value, meaning = _VIEW_CODES[view]
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SRT", meaning
    return [item]


def _cmmd_lesions(rng: np.random.Generator, abnormality: str, malignant: bool, position) -> list[Lesion]:
    lesions = []
    if abnormality in ("mass", "both"):
        lesions.append(Lesion(kind="mass", shape="irregular" if malignant else "oval",
                              margin="spiculated" if malignant else "circumscribed",
                              density="high" if malignant else "iso",
                              size=rng.uniform(0.05, 0.08) if malignant else rng.uniform(0.03, 0.05), position=position))
    if abnormality in ("calcification", "both"):
        lesions.append(Lesion(kind="calcifications", morphology="pleomorphic" if malignant else "punctate",
                              distribution="clustered" if malignant else "grouped", size=rng.uniform(0.03, 0.045),
                              position=position))
    return lesions


def generate_cmmd(
    out_dir,
    *,
    num_patients: int = 10,
    image_size=CMMD_DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    table_format: str = "xlsx",
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write a CMMD look-alike (clinical sheet + `CMMD/` folders) and return its root.

    `table_format` "xlsx" writes the sheet as published (needs openpyxl), "csv" its CSV export.

    >>> import tempfile
    >>> root = generate_cmmd(tempfile.mkdtemp(), num_patients=1, image_size=(48, 40), table_format="csv",
    ...                      progress=False)
    >>> [path.relative_to(root).parts[:2] for path in sorted(root.rglob("*.dcm"))][:1]
    [('CMMD', 'D1-0001')]
    """
    if table_format not in ("xlsx", "csv"):
        raise ValueError(f"table_format={table_format!r} must be 'xlsx' or 'csv'")
    root, height, width = _start_lookalike(out_dir, "cmmd", ("num_patients", num_patients), image_size=image_size,
                                           seed=seed, table_format=table_format)
    rng = np.random.default_rng([seed, 6])
    bits_deck = _Deck(rng, [8] * 5 + [12])
    view_in_position_deck = _Deck(rng, [True, False])
    num_d2 = num_patients // 3
    rows, jobs = [], []
    for index in range(num_patients):
        d2 = index >= num_patients - num_d2
        patient = f"D2-{index - (num_patients - num_d2) + 1:04d}" if d2 else f"D1-{index + 1:04d}"
        age = int(rng.integers(28, 86))
        sides = [_choice(rng, ["L", "R"])] if rng.uniform() < 0.85 else ["L", "R"]
        day = dt.date(2010, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3000)))
        study = f"{day:%m-%d-%Y}-NA-NA-{int(rng.integers(10000, 99999))}"
        series = f"1.000000-NA-{int(rng.integers(10000, 99999))}"
        study_uid, series_uid = _uid(seed, "cmmd-study", patient), _uid(seed, "cmmd-series", patient)
        images = []
        for side in sides:
            malignant = d2 or index == 0 or bool(rng.uniform() < 0.5)
            if index == 1:
                malignant = False  # the first patients cover both classes
            abnormality = _choice(rng, ["calcification", "mass", "both"], [0.35, 0.45, 0.2])
            position = _random_position(rng)
            lesions = _cmmd_lesions(rng, abnormality, malignant, position)
            density = int(_choice(rng, [1, 2, 3, 4], [0.1, 0.3, 0.45, 0.15]))
            images += [(side, view, density, lesions) for view in ("CC", "MLO")]
            rows.append({"ID1": patient, "LeftRight": side, "Age": age, "number": 2, "abnormality": abnormality,
                         "classification": "Malignant" if malignant else "Benign",
                         "subtype": _choice(rng, CMMD_SUBTYPES) if d2 else None})
        for number, position in enumerate(rng.permutation(len(images)), start=1):
            side, view, density, lesions = images[position]
            relative = f"CMMD/{patient}/{study}/{series}/1-{number}.dcm"
            tags = {"PatientID": patient, "PatientAge": f"{age:03d}Y", "StudyInstanceUID": study_uid,
                    "SeriesInstanceUID": series_uid, "SOPInstanceUID": _uid(seed, "cmmd-sop", relative),
                    "InstanceNumber": number, "Manufacturer": "GE MEDICAL SYSTEMS"}
            if not view_in_position_deck.draw():
                tags.update(ViewPosition=None, ViewCodeSequence=_view_code(view))
            jobs.append(_ImageJob(
                path=str(root / relative), seed=_image_seed(seed, f"cmmd/{relative}"), height=height, width=width,
                laterality=side, view=view, density=density, lesions=tuple(lesions),
                encoding=DicomEncoding(bits_stored=bits_deck.draw()), tags=tags))

    _write_images(jobs, workers=workers, progress=progress, description="CMMD images")
    frame = pd.DataFrame(rows, columns=CMMD_CLINICAL_COLUMNS)
    if table_format == "xlsx":
        _atomic_write(root / CMMD_CLINICAL_FILE, lambda temporary: frame.to_excel(temporary, index=False,
                                                                                   engine="openpyxl"))
    else:
        _write_csv(frame, root / CMMD_CLINICAL_FILE.replace(".xlsx", ".csv"))
    _remove_stale_partials(root)
    return root
