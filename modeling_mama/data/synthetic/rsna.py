"""The RSNA Screening Mammography look-alike: `train.csv` / `test.csv` plus `{train,test}_images/<patient>/<image>.dcm`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
)

from .dicom_writer import _write_csv
from .files import (
    _choice,
    _Deck,
    _EncodingDecks,
    _image_seed,
    _ImageJob,
    _remove_stale_partials,
    _start_lookalike,
    _uid,
    _write_images,
)
from .rendering import Lesion, _random_position
from .tables import DEFAULT_IMAGE_SIZE, RSNA_TEST_COLUMNS, RSNA_TRAIN_COLUMNS

# ----------------------------------------------------------------------------------------------
# RSNA screening mammography
# ----------------------------------------------------------------------------------------------

_RSNA_MACHINES = {1: [49, 48, 29, 21, 93, 216, 210], 2: [170, 190, 197]}


def _rsna_malignant_lesions(rng: np.random.Generator, position) -> list[Lesion]:
    kind = rng.uniform()
    mass = Lesion(kind="mass", shape="irregular", margin=_choice(rng, ["spiculated", "indistinct"]),
                  density="high", size=rng.uniform(0.05, 0.08), position=position)
    calcs = Lesion(kind="calcifications", morphology=_choice(rng, ["pleomorphic", "fine-linear"]),
                   distribution=_choice(rng, ["clustered", "segmental"]), size=rng.uniform(0.025, 0.04),
                   position=position)
    if kind < 0.55:
        return [mass]
    if kind < 0.8:
        return [calcs]
    return [mass, calcs]


def generate_rsna(
    out_dir,
    *,
    num_patients: int = 20,
    image_size=DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write an RSNA screening look-alike (train.csv, test.csv, *_images/) and return its root.

    Cancer is a breast-level label: every view of a cancer breast shows the lesion.

    >>> import tempfile
    >>> root = generate_rsna(tempfile.mkdtemp(), num_patients=1, image_size=(48, 40), progress=False)
    >>> (root / "train.csv").exists(), (root / "train_images").is_dir()
    (True, True)
    """
    root, height, width = _start_lookalike(out_dir, "rsna", ("num_patients", num_patients), image_size=image_size,
                                           seed=seed)
    rng = np.random.default_rng([seed, 2])
    decks = _EncodingDecks(rng, [JPEG2000Lossless] * 4 + [ExplicitVRLittleEndian])
    mirrored_deck = _Deck(rng, [False] * 11 + [True])
    used_patients: set[int] = set()
    used_images: set[int] = set()
    train_rows, test_rows, jobs = [], [], []
    num_test = max(1, num_patients // 10)

    for index in range(num_patients + num_test):
        split = "train" if index < num_patients else "test"
        patient_id = int(rng.integers(10000, 65535))
        while patient_id in used_patients:
            patient_id = int(rng.integers(10000, 65535))
        used_patients.add(patient_id)
        site = int(_choice(rng, [1, 2], [0.7, 0.3]))
        machine = int(_choice(rng, _RSNA_MACHINES[site]))
        density_value = int(_choice(rng, [1, 2, 3, 4], [0.1, 0.42, 0.38, 0.1]))
        density_letter = "ABCD"[density_value - 1] if site == 1 and rng.uniform() < 0.7 else None
        age = float(rng.integers(38, 89)) if rng.uniform() > 0.05 else None
        implant = int(rng.uniform() < 0.03)
        # Breast-level cancer; the first two patients cover both labels.
        cancer_side = {0: "L", 1: None}.get(index, _choice(rng, ["L", "R"]) if rng.uniform() < 0.25 else None)
        # A scanner's photometric convention is a machine property.
        photometric = "MONOCHROME1" if machine in (29, 190) else None
        for laterality in ("L", "R"):
            cancer = int(cancer_side == laterality)
            position = _random_position(rng)
            if cancer:
                lesions = _rsna_malignant_lesions(rng, position)
                birads = 0.0
            else:
                birads = float(_choice(rng, [1.0, 2.0, 0.0], [0.7, 0.2, 0.1]))
                lesions = [Lesion(kind="mass", shape="oval", density="low", size=rng.uniform(0.02, 0.03),
                                  position=position)] if birads == 2.0 else []
            if site == 2 or rng.uniform() < 0.2:
                birads = None
            biopsy = int(cancer or rng.uniform() < 0.05)
            invasive = int(cancer and rng.uniform() < 0.85)
            views = ["CC", "MLO"] + ([_choice(rng, ["MLO", "CC", "AT", "ML", "LM"])] if rng.uniform() < 0.1 else [])
            for view in views:
                image_id = int(rng.integers(10**6, 2**31 - 1))
                while image_id in used_images:
                    image_id = int(rng.integers(10**6, 2**31 - 1))
                used_images.add(image_id)
                relative = f"{split}_images/{patient_id}/{image_id}.dcm"
                jobs.append(_ImageJob(
                    path=str(root / relative), seed=_image_seed(seed, f"rsna/{relative}"), height=height,
                    width=width, laterality=laterality, view=view, density=density_value,
                    lesions=tuple(lesions), encoding=decks.draw(photometric=photometric),
                    mirrored=mirrored_deck.draw(),
                    tags={"PatientID": str(patient_id), "InstanceNumber": 1,
                          "SOPInstanceUID": f"1.2.840.10009.1.2.3.{patient_id}.1.{image_id}",
                          "StudyInstanceUID": _uid(seed, "rsna-study", patient_id),
                          "SeriesInstanceUID": _uid(seed, "rsna-series", patient_id, image_id)},
                ))
                common = {"site_id": site, "patient_id": patient_id, "image_id": image_id,
                          "laterality": laterality, "view": view, "age": age, "implant": implant,
                          "machine_id": machine}
                if split == "train":
                    train_rows.append({
                        **common, "cancer": cancer, "biopsy": biopsy, "invasive": invasive, "BIRADS": birads,
                        "density": density_letter,
                        "difficult_negative_case": bool(biopsy and not cancer),
                    })
                else:
                    test_rows.append({**common, "prediction_id": f"{patient_id}_{laterality}"})

    _write_images(jobs, workers=workers, progress=progress, description="RSNA images")
    _write_csv(pd.DataFrame(train_rows, columns=RSNA_TRAIN_COLUMNS), root / "train.csv")
    _write_csv(pd.DataFrame(test_rows, columns=RSNA_TEST_COLUMNS), root / "test.csv")
    _remove_stale_partials(root)
    return root
