"""The VinDr-Mammo look-alike: breast-level and finding annotation tables plus `images/<study>/<image>.dicom`."""

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
    _EncodingDecks,
    _image_seed,
    _ImageJob,
    _remove_stale_partials,
    _start_lookalike,
    _uid,
    _write_images,
)
from .rendering import Lesion, _random_position
from .tables import DEFAULT_IMAGE_SIZE, VINDR_BREAST_COLUMNS, VINDR_FINDING_COLUMNS

# ----------------------------------------------------------------------------------------------
# VinDr-Mammo
# ----------------------------------------------------------------------------------------------

_VINDR_CATEGORIES = {
    3: [["Mass"], ["Focal Asymmetry"], ["Suspicious Calcification"]],
    4: [["Mass"], ["Suspicious Calcification"], ["Architectural Distortion"], ["Mass", "Suspicious Calcification"]],
    5: [["Mass"], ["Mass", "Suspicious Calcification"], ["Suspicious Calcification"]],
}


def _vindr_lesions(rng: np.random.Generator, categories: list[str], birads: int, position) -> list[Lesion]:
    lesions = []
    for category in categories:
        if category == "Mass":
            shape, margin = {3: ("oval", "circumscribed"), 4: ("irregular", "indistinct"),
                             5: ("irregular", "spiculated")}[birads]
            size = {3: (0.025, 0.035), 4: (0.045, 0.06), 5: (0.06, 0.085)}[birads]
            lesions.append(Lesion(kind="mass", shape=shape, margin=margin, density="high" if birads >= 4 else "iso",
                                  size=rng.uniform(*size), position=position))
        elif category == "Suspicious Calcification":
            morphology = {3: "punctate", 4: "amorphous", 5: "pleomorphic"}[birads]
            lesions.append(Lesion(kind="calcifications", morphology=morphology,
                                  distribution="grouped" if birads == 3 else "clustered",
                                  size=rng.uniform(0.025, 0.04), position=position))
        elif category in ("Focal Asymmetry", "Asymmetry"):
            lesions.append(Lesion(kind="asymmetry", size=rng.uniform(0.08, 0.12), position=position))
        else:
            lesions.append(Lesion(kind="distortion", size=rng.uniform(0.05, 0.08), position=position))
    return lesions


def generate_vindr(
    out_dir,
    *,
    num_studies: int = 20,
    image_size=DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write a VinDr-Mammo look-alike (two annotation CSVs + images/*.dicom) and return its root.

    >>> import tempfile
    >>> root = generate_vindr(tempfile.mkdtemp(), num_studies=1, image_size=(48, 40), progress=False)
    >>> len(list((root / "images").glob("*/*.dicom")))
    4
    """
    root, height, width = _start_lookalike(out_dir, "vindr", ("num_studies", num_studies), image_size=image_size,
                                           seed=seed)
    rng = np.random.default_rng([seed, 3])
    decks = _EncodingDecks(rng, [ExplicitVRLittleEndian] * 3 + [JPEG2000Lossless])
    breast_rows, finding_rows, jobs = [], [], []

    def hex_id() -> str:
        return rng.bytes(16).hex()

    for index in range(num_studies):
        study_id = hex_id()
        density = int(_choice(rng, [1, 2, 3, 4], [0.1, 0.25, 0.45, 0.2]))
        split = "test" if rng.uniform() < 0.2 else "training"
        manufacturer = _choice(rng, [("SIEMENS", "Mammomat Inspiration"), ("Planmed", "Planmed Nuance"),
                                     ("IMS s.r.l.", "GIOTTO IMAGE 3DL")])
        for laterality in ("R", "L"):
            series_id = hex_id()
            if index == 0:
                birads = 4 if laterality == "L" else 1  # the first study covers a finding and a normal breast
            else:
                birads = int(_choice(rng, [1, 2, 3, 4, 5], [0.45, 0.25, 0.1, 0.12, 0.08]))
            position = _random_position(rng)
            categories: list[str] = []
            if birads >= 3:
                options = _VINDR_CATEGORIES[birads]
                categories = list(options[-1 if index == 0 else int(rng.integers(len(options)))])
                lesions = _vindr_lesions(rng, categories, birads, position)
            elif birads == 2:
                # Benign findings are visible but not boxed in VinDr.
                lesions = [Lesion(kind="calcifications", morphology="coarse", distribution="regional",
                                  size=0.03, position=position)]
            else:
                lesions = []
            for view in ("CC", "MLO"):
                image_id = hex_id()
                relative = f"images/{study_id}/{image_id}.dicom"
                job = _ImageJob(
                    path=str(root / relative), seed=_image_seed(seed, f"vindr/{relative}"), height=height,
                    width=width, laterality=laterality, view=view, density=density, lesions=tuple(lesions),
                    encoding=decks.draw(),
                    tags={"PatientID": study_id[:12], "Manufacturer": manufacturer[0],
                          "ManufacturerModelName": manufacturer[1],
                          "SOPInstanceUID": _uid(seed, "vindr-sop", image_id),
                          "StudyInstanceUID": _uid(seed, "vindr-study", study_id),
                          "SeriesInstanceUID": _uid(seed, "vindr-series", series_id)},
                )
                jobs.append(job)
                common = {"study_id": study_id, "series_id": series_id, "image_id": image_id,
                          "laterality": laterality, "view_position": view, "height": height, "width": width,
                          "breast_birads": f"BI-RADS {birads}", "breast_density": f"DENSITY {'ABCD'[density - 1]}",
                          "split": split}
                breast_rows.append(common)
                boxes = [box for box in job.boxes() if box is not None] if categories else []
                if boxes:
                    # One annotated finding: the union of its lesions' boxes.
                    y0, x0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
                    y1, x1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
                    finding_rows.append({**common, "finding_categories": repr(categories),
                                         "finding_birads": f"BI-RADS {birads}", "xmin": round(x0, 2),
                                         "ymin": round(y0, 2), "xmax": round(x1, 2), "ymax": round(y1, 2)})
                else:
                    finding_rows.append({**common, "finding_categories": repr(["No Finding"]), "finding_birads": None,
                                         "xmin": None, "ymin": None, "xmax": None, "ymax": None})

    _write_images(jobs, workers=workers, progress=progress, description="VinDr images")
    _write_csv(pd.DataFrame(breast_rows, columns=VINDR_BREAST_COLUMNS), root / "breast-level_annotations.csv")
    _write_csv(pd.DataFrame(finding_rows, columns=VINDR_FINDING_COLUMNS), root / "finding_annotations.csv")
    _remove_stale_partials(root)
    return root
