"""Synthetic look-alikes of EMBED, RSNA and VinDr-Mammo, written as real DICOM files.

The real datasets need an access application, so converters, processors and training code are
developed and tested on these look-alikes: the same folder shapes, the same table columns, real
DICOM files (pydicom) with the awkward parts of real mammograms (MONOCHROME1, 12-16 stored bits,
rescale slope/intercept, LINEAR and SIGMOID windows, JPEG 2000 lossless and RLE lossless pixel
data, missing laterality tags), and pictures that carry the tables' labels:

- the breast is a half ellipse against the chest wall, with a pectoral muscle triangle on MLO-like
  views; images are stored the way mammography units store them: a **left** breast has its chest
  wall on the **left** of the array and a **right** breast on the **right** (PatientOrientation
  ``A\\R`` / ``P\\L`` for CC views), so a reader flips right breasts to put every chest wall left;
- the fibroglandular tissue covers about 10 / 30 / 55 / 80 % of the breast for density 1-4 (A-D)
  and is brighter for denser breasts;
- masses (round / oval / irregular, circumscribed to spiculated, low to high density) and
  calcification clusters follow the findings: none for a negative breast, small benign ones for
  BI-RADS 2-3, larger irregular masses and clustered pleomorphic calcifications for BI-RADS 4-6,
  on the side of the finding and at the same place in every view of that breast.

Layouts (``<root>`` is the folder given to the generator):

- EMBED: ``tables/EMBED_OpenData_metadata.csv``, ``tables/EMBED_OpenData_clinical.csv``,
  ``tables/AWS_Open_Data_Clinical_Legend.csv`` and ``cohort_{1,2}/<empi_anon>/<study>/<SOP>.dcm``.
  ``anon_dicom_path`` holds the provider's absolute path (``/mnt/NAS2/mammo/anon_dicom/cohort_1/...``)
  that a converter re-roots. As in the public release, ``ROI_SSC`` screen-save rows are listed in
  the metadata but have **no file**; ``C-view`` rows do. The legend has the real file's extra
  ``Discription`` column and space-padded ``tissueden`` meanings; the metadata has four extra
  DICOM-derived columns (Manufacturer, ManufacturerModelName, Rows, Columns).
- RSNA: ``train.csv`` + ``train_images/<patient_id>/<image_id>.dcm`` (and a small ``test.csv`` +
  ``test_images/``); about one image in twelve is stored mirrored (its PatientOrientation says so),
  as on some real units, so orientation must be checked against the pixels.
- VinDr: ``breast-level_annotations.csv``, ``finding_annotations.csv`` and
  ``images/<study_id>/<image_id>.dicom``; boxes are in stored-pixel coordinates.

Everything is deterministic given the seed, whatever the number of worker processes: every image
has its own seed derived from the dataset seed and its path. Files are written under a temporary
name and renamed, so a killed run never leaves a half-written file, and running again into the
same folder with the same settings only writes what is missing.

Modules: `tables` (published column names and legends), `rendering` (pixels), `dicom_writer`
(DICOM datasets), `files` (atomic files, worker jobs, seeds), and one module per look-alike
(`embed`, `rsna`, `vindr`). The command line is `data_scripts/synthetic.py`.

>>> import numpy as np
>>> pixels = render_mammogram(np.random.default_rng(0), height=64, width=52, laterality="L",
...                           view="CC", density=3, findings=[])
>>> pixels.shape, pixels.dtype
((64, 52), dtype('uint16'))
"""

from .dicom_writer import DicomEncoding, mammogram_dataset
from .embed import generate_embed
from .files import parse_image_size
from .rendering import Lesion, render_mammogram
from .rsna import generate_rsna
from .tables import DEFAULT_IMAGE_SIZE, FULL_IMAGE_SIZE, MG_FOR_PRESENTATION
from .vindr import generate_vindr

GENERATORS = {"embed": generate_embed, "rsna": generate_rsna, "vindr": generate_vindr}

__all__ = [
    "DEFAULT_IMAGE_SIZE", "FULL_IMAGE_SIZE", "GENERATORS", "MG_FOR_PRESENTATION", "DicomEncoding", "Lesion",
    "generate_embed", "generate_rsna", "generate_vindr", "mammogram_dataset", "parse_image_size", "render_mammogram",
]
