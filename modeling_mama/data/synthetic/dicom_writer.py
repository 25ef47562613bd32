"""Synthetic mammograms as real DICOM files: the one DICOM writer of the package and of its tests.

`image_dataset` writes any single-frame grayscale image the way real files store it: MG "For
Presentation" or Secondary Capture (scanned film), MONOCHROME1 or MONOCHROME2, 8-16 stored bits
(8 or 16 allocated), rescale slope / intercept, one or several windows with LINEAR / LINEAR_EXACT /
SIGMOID functions, a VOI LUT Sequence, explicit little endian, RLE lossless or JPEG 2000 lossless
pixel data, and any other tag added, overridden or left out (`tags={"ViewPosition": None}`).
`mammogram_dataset` is the generators' mammogram on top of it: a window chosen on the breast, the
laterality in the tag an `DicomEncoding` names, the view and the PatientOrientation a unit writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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

from ...file_utils_mama import atomic_path
from .rendering import _view_is_mlo_like
from .tables import MG_FOR_PRESENTATION, SECONDARY_CAPTURE  # noqa: F401  (the SOP classes written here)

WRITTEN_SYNTAXES = (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless)

# ----------------------------------------------------------------------------------------------
# DICOM files
# ----------------------------------------------------------------------------------------------


def _decimal_string(value: float) -> str:
    """A DS value (at most 16 characters) that keeps four decimals of `value`."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def image_dataset(
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    windows: Sequence[tuple[float, float]] = (),
    voi_function: str | None = None,
    voi_lut: tuple[int, int, np.ndarray] | None = None,
    sop_class: str = MG_FOR_PRESENTATION,
    transfer_syntax: str = ExplicitVRLittleEndian,
    tags: Mapping[str, object] | None = None,
) -> Dataset:
    """A single-frame grayscale dataset whose calibrated picture is `pixels`.

    `pixels` are MONOCHROME2 stored values (dense = bright, below 2**bits_stored). `windows` are
    (centre, width) pairs and `voi_lut` is (first mapped value, bits, table), both for that
    MONOCHROME2 picture after the modality LUT (`rescale` = (slope, intercept)). A MONOCHROME1 file
    stores `2**bits_stored - 1 - value` and mirrors the VOI to match (modality value K - x with
    K = slope * (2**bits_stored - 1) + 2 * intercept: window centres K - c, plus 1 for LINEAR, and
    the VOI LUT reversed), so a correct reader calibrates both files to the same image.

    8 stored bits or fewer are allocated 8 bits, more 16. `tags` adds or overrides DICOM keywords
    (None leaves the keyword out); missing UIDs are generated. The VOI is written as given, invalid
    values included (readers are tested on them). Raises ValueError for pixel values that do not
    fit, a photometric interpretation other than MONOCHROME1 / 2 and transfer syntaxes not written here.

    >>> ds = image_dataset(np.full((4, 3), 200, np.uint16), bits_stored=8, sop_class=SECONDARY_CAPTURE,
    ...                    tags={"Modality": "MG", "PatientOrientation": "CC"})
    >>> ds.BitsAllocated, ds.Modality, ds.PatientOrientation, "ViewPosition" in ds
    (8, 'MG', 'CC', False)
    """
    if not 1 <= bits_stored <= 16:
        raise ValueError(f"bits_stored={bits_stored} must be between 1 and 16")
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be a 2-D array, got shape {pixels.shape}")
    top = 2**bits_stored - 1
    if pixels.size and (int(pixels.max()) > top or int(pixels.min()) < 0):
        raise ValueError(f"pixel values up to {int(pixels.max())} do not fit in {bits_stored} stored bits")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric={photometric!r} must be MONOCHROME1 or MONOCHROME2")
    if transfer_syntax not in WRITTEN_SYNTAXES:
        raise ValueError(
            f"transfer syntax {transfer_syntax} is not written here: use "
            f"{ExplicitVRLittleEndian} (uncompressed), {JPEG2000Lossless} or {RLELossless}"
        )
    allocated = 8 if bits_stored <= 8 else 16
    dtype = np.uint8 if allocated == 8 else np.uint16
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    windows = [(float(center), float(width)) for center, width in windows]
    stored = pixels.astype(dtype)
    if photometric == "MONOCHROME1":
        mirror = slope * top + 2 * intercept
        stored = (top - pixels.astype(np.int64)).astype(dtype)
        shift = 1 if (voi_function or "LINEAR") == "LINEAR" else 0
        windows = [(mirror - center + shift, width) for center, width in windows]
        if voi_lut is not None:
            first, lut_bits, table = voi_lut
            table = np.asarray(table)
            voi_lut = (int(mirror) - (first + len(table) - 1), lut_bits, (2**lut_bits - 1) - table[::-1])

    tags = dict(tags or {})
    ds = Dataset()
    ds.SOPClassUID = sop_class
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(ds, keyword, tags.pop(keyword, None) or generate_uid())
    ds.Modality = "MG" if sop_class == MG_FOR_PRESENTATION else "OT"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = _decimal_string(slope), _decimal_string(intercept)
    if windows:
        centres = [_decimal_string(center) for center, _ in windows]
        widths = [_decimal_string(width) for _, width in windows]
        ds.WindowCenter = centres if len(windows) > 1 else centres[0]
        ds.WindowWidth = widths if len(windows) > 1 else widths[0]
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        first, lut_bits, table = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(table), int(first), int(lut_bits)]
        item.LUTData = [int(value) for value in table]
        ds.VOILUTSequence = [item]
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.astype("<u2" if allocated == 16 else np.uint8).tobytes()
        ds["PixelData"].VR = "OW" if allocated == 16 else "OB"
    else:
        ds.compress(transfer_syntax, stored, generate_instance_uid=False)
    return ds


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
    StudyInstanceUID, SOPInstanceUID, ...; None leaves one out); missing UIDs are generated.

    >>> import numpy as np
    >>> ds = mammogram_dataset(np.full((32, 24), 900, np.uint16), laterality="L", view_position="CC")
    >>> ds.Modality, ds.ImageLaterality, list(ds.PatientOrientation), ds.BitsStored
    ('MG', 'L', ['A', 'R'], 12)
    """
    if not 8 <= encoding.bits_stored <= 16:
        raise ValueError(f"bits_stored={encoding.bits_stored} must be between 8 and 16")
    maxval = 2**encoding.bits_stored - 1
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be a 2-D array, got shape {pixels.shape}")
    if flipped is None:
        flipped = laterality == "R"
    centre, width = _voi_window(pixels, maxval)
    slope, intercept = encoding.rescale or (1.0, 0.0)
    centre, width = slope * centre + intercept, slope * width
    windows = [(centre, width), (centre, 1.6 * width)] if encoding.second_window else [(centre, width)]
    own_tags: dict[str, object] = {
        "PresentationIntentType": "FOR PRESENTATION",
        "ImageType": ["DERIVED", "PRIMARY"],
        "BodyPartExamined": "BREAST",
        "ViewPosition": view_position,
        "PatientOrientation": _patient_orientation(laterality, view_position, flipped),
    }
    if encoding.laterality_tag is not None:
        own_tags[encoding.laterality_tag] = laterality
    if encoding.second_window:
        own_tags["WindowCenterWidthExplanation"] = ["NORMAL", "WIDE"]
    if encoding.rescale is not None:
        own_tags["RescaleType"] = "US"
    return image_dataset(
        pixels, bits_stored=encoding.bits_stored, photometric=encoding.photometric, rescale=encoding.rescale,
        windows=windows, voi_function=encoding.voi_lut_function, transfer_syntax=encoding.transfer_syntax,
        tags={**own_tags, **dict(tags or {})},
    )


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temporary)`, then the temporary file replaces `path`: all or nothing (`file_utils_mama.atomic_path`)."""
    with atomic_path(path) as temporary:
        write(temporary)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    _atomic_write(path, lambda temporary: frame.to_csv(temporary, index=False))
