"""Synthetic mammograms as real DICOM files: MG "For Presentation" datasets with the encodings
real files use (MONOCHROME1, 12-16 stored bits, rescale, LINEAR / SIGMOID windows, JPEG 2000 and RLE)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from .rendering import _view_is_mlo_like
from .tables import MG_FOR_PRESENTATION

# ----------------------------------------------------------------------------------------------
# DICOM files
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomEncoding:
    """How a picture is stored, i.e. what a reader has to undo to get it back.

    `photometric` MONOCHROME1 stores `2**bits_stored - 1 - value`; `rescale` (slope, intercept)
    adds a modality LUT; the window is chosen on the breast and expressed after the modality LUT;
    `voi_lut_function` None leaves the tag out (LINEAR by default); `laterality_tag` names the tag
    carrying the laterality ("ImageLaterality", "Laterality" or None for a file without one).
    """

    bits_stored: int = 12
    photometric: str = "MONOCHROME2"
    rescale: tuple[float, float] | None = None
    voi_lut_function: str | None = None
    second_window: bool = False
    transfer_syntax: str = ExplicitVRLittleEndian
    laterality_tag: str | None = "ImageLaterality"


def _voi_window(pixels: np.ndarray, maxval: int) -> tuple[float, float]:
    """Centre and width (stored MONOCHROME2 units) spanning the breast's values."""
    step = max(1, min(pixels.shape) // 256)
    sample = pixels[::step, ::step].astype(np.float64)
    breast = sample[sample > 0.12 * maxval]
    if breast.size < 16:
        breast = sample.ravel()
    low, high = np.percentile(breast, [0.5, 99.5])
    width = max(high - low, 1.0) * 1.1 + 1.0
    return (low + high) / 2.0, width


def _patient_orientation(laterality: str, view: str, flipped: bool) -> list[str]:
    """Row direction (A: towards the nipple, P: towards the chest wall) and column direction."""
    row = "P" if flipped else "A"
    if _view_is_mlo_like(view):
        column = "F"
    else:
        column = "L" if laterality == "R" else "R"
    return [row, column]


def mammogram_dataset(
    pixels: np.ndarray,
    encoding: DicomEncoding = DicomEncoding(),
    *,
    laterality: str,
    view_position: str,
    flipped: bool | None = None,
    tags: Mapping[str, object] | None = None,
) -> Dataset:
    """A "For Presentation" MG dataset holding `pixels` (MONOCHROME2 values, dense = bright).

    `flipped` says whether the chest wall is on the right of the array (default: for right
    breasts); it sets PatientOrientation. `tags` adds or overrides DICOM keywords (PatientID,
    StudyInstanceUID, SOPInstanceUID, ...); missing UIDs are generated.

    >>> import numpy as np
    >>> ds = mammogram_dataset(np.full((32, 24), 900, np.uint16), laterality="L", view_position="CC")
    >>> ds.Modality, ds.ImageLaterality, list(ds.PatientOrientation), ds.BitsStored
    ('MG', 'L', ['A', 'R'], 12)
    """
    if not 8 <= encoding.bits_stored <= 16:
        raise ValueError(f"bits_stored={encoding.bits_stored} must be between 8 and 16 (16 bits are allocated)")
    maxval = 2**encoding.bits_stored - 1
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be a 2-D array, got shape {pixels.shape}")
    if int(pixels.max(initial=0)) > maxval:
        raise ValueError(f"pixel values up to {int(pixels.max())} do not fit in {encoding.bits_stored} stored bits")
    if encoding.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric={encoding.photometric!r} must be MONOCHROME1 or MONOCHROME2")
    tags = dict(tags or {})
    if flipped is None:
        flipped = laterality == "R"

    centre, width = _voi_window(pixels, maxval)
    stored = pixels.astype(np.uint16)
    if encoding.photometric == "MONOCHROME1":
        stored = (maxval - stored).astype(np.uint16)
        centre = maxval - centre
    slope, intercept = encoding.rescale or (1.0, 0.0)
    centre, width = slope * centre + intercept, slope * width

    ds = Dataset()
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = tags.pop("SOPInstanceUID", None) or generate_uid()
    ds.StudyInstanceUID = tags.pop("StudyInstanceUID", None) or generate_uid()
    ds.SeriesInstanceUID = tags.pop("SeriesInstanceUID", None) or generate_uid()
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BodyPartExamined = "BREAST"
    ds.ViewPosition = view_position
    if encoding.laterality_tag is not None:
        setattr(ds, encoding.laterality_tag, laterality)
    ds.PatientOrientation = _patient_orientation(laterality, view_position, flipped)
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = encoding.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = 0
    if encoding.second_window:
        ds.WindowCenter = [f"{centre:.2f}", f"{centre:.2f}"]
        ds.WindowWidth = [f"{width:.2f}", f"{1.6 * width:.2f}"]
        ds.WindowCenterWidthExplanation = ["NORMAL", "WIDE"]
    else:
        ds.WindowCenter = f"{centre:.2f}"
        ds.WindowWidth = f"{width:.2f}"
    if encoding.voi_lut_function is not None:
        ds.VOILUTFunction = encoding.voi_lut_function
    if encoding.rescale is not None:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if encoding.transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
    elif encoding.transfer_syntax in (JPEG2000Lossless, RLELossless):
        ds.compress(encoding.transfer_syntax, stored, generate_instance_uid=False)
    else:
        raise ValueError(
            f"transfer syntax {encoding.transfer_syntax} is not written here: use "
            f"{ExplicitVRLittleEndian} (uncompressed), {JPEG2000Lossless} or {RLELossless}"
        )
    return ds


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary name in the same folder, then rename: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    write(temporary)
    os.replace(temporary, path)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    _atomic_write(path, lambda temporary: frame.to_csv(temporary, index=False))
