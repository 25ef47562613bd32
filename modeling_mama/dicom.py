"""Read a mammogram DICOM file into calibrated float pixels plus the metadata MaMA needs.

`read_dicom` decodes every transfer syntax the public mammography datasets use (uncompressed,
deflated, RLE, JPEG lossless, JPEG-LS, JPEG 2000 lossless and lossy) through pydicom 3 and its
pylibjpeg plugins, then applies the grey-level pipeline of the DICOM standard in floating point:

1. Modality LUT: `RescaleSlope` / `RescaleIntercept`, or a Modality LUT Sequence.
2. VOI LUT: a VOI LUT Sequence, else a window (`WindowCenter` / `WindowWidth`) with the
   `VOILUTFunction` LINEAR (default), LINEAR_EXACT or SIGMOID, else the min-max range of the image.
3. MONOCHROME1 inversion, so that high values are always dense / bright.

The result is float32 in [0, 1] with no 8-bit round trip: two stored values that differ stay
different. Calibration is a pure function of the stored value, so for stored data of at most
16 bits it is tabulated once (65,536 entries) and applied with one gather; `DicomImage.calibrate`
applies it to any sub-array (a crop or a preview) without calibrating the whole image.

JPEG 2000 stores an image as resolution levels (a wavelet pyramid), so a smaller version of it
can be decoded without decoding the full one: `read_dicom(path, reduce=r)` decodes the image at
1/2**r of its size (each side rounded up) in a fraction of the time (a 3328 x 2560 codestream:
about 4x faster at r = 1, 15x at r = 2). The stored values are the codestream's own low-pass image
(for lossless files exactly the wavelet's LL band of the full decode, close to its 2**r x 2**r
block means) and the calibration is the file's, unchanged. `image.reduction` says which reduction
was applied: 0 for transfer syntaxes without resolution levels and for images whose calibration
depends on their own value range (no VOI transform in the file), which are always decoded fully.

>>> from pydicom.data import get_testdata_file
>>> import warnings
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore", NotMammogramWarning)  # a CR radiograph, not MG
...     image = read_dicom(get_testdata_file("RG1_UNCR.dcm"))
>>> image.pixels.shape, image.pixels.dtype, image.photometric_interpretation
((1955, 1841), dtype('float32'), 'MONOCHROME1')
>>> 0.0 <= float(image.pixels.min()) <= float(image.pixels.max()) <= 1.0
True
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from .image_utils_mama import PREVIEW_SIDE, infer_laterality
from .labels import VIEW_POSITIONS

MAMMOGRAPHY_MODALITY = "MG"
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

# What to `pip install` for each family of compressed transfer syntaxes (pydicom's plugin names).
_JPEG2000_PACKAGES = "pylibjpeg pylibjpeg-openjpeg"
_LIBJPEG_PACKAGES = "pylibjpeg pylibjpeg-libjpeg"
JPEG2000_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
"""JPEG 2000 transfer syntaxes `read_dicom(..., reduce=r)` decodes at reduced resolution (with Pillow)."""
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG_PACKAGES,  # JPEG Baseline (8-bit)
    "1.2.840.10008.1.2.4.51": _LIBJPEG_PACKAGES,  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": _LIBJPEG_PACKAGES,  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": _LIBJPEG_PACKAGES,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": _LIBJPEG_PACKAGES,  # JPEG-LS Lossless (pyjpegls also works)
    "1.2.840.10008.1.2.4.81": _LIBJPEG_PACKAGES,  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _JPEG2000_PACKAGES,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _JPEG2000_PACKAGES,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _JPEG2000_PACKAGES,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": _JPEG2000_PACKAGES,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _JPEG2000_PACKAGES,  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE (pydicom also decodes it natively)
}

# View Code Sequence meanings (DICOM CID 4014) for files that leave ViewPosition empty.
_VIEW_CODE_MEANINGS = {
    "craniocaudal": "CC",
    "mediolateraloblique": "MLO",
    "mediolateral": "ML",
    "lateromedial": "LM",
    "lateromedialoblique": "LMO",
    "craniocaudalexaggeratedlaterally": "XCCL",
    "craniocaudalexaggeratedmedially": "XCCM",
    "caudocranialfrombelow": "FB",
}
# Where a view / laterality may be written, in the order they are trusted. Free text (descriptions,
# protocol names, folder names) is read word by word (`view_from_text`, `laterality_from_text`).
VIEW_TAGS = ("ViewPosition", "ViewCodeSequence", "PatientOrientation")
LATERALITY_TAGS = ("ImageLaterality", "Laterality")
TEXT_TAGS = ("SeriesDescription", "ProtocolName")
# Views read from free text: the view positions that are not also common words or direction letters
# ("AT", "CV", "TAN", "ISO" are words; "RL", "RM" start like a side).
_TEXT_VIEWS = frozenset(VIEW_POSITIONS) - {"AT", "CV", "TAN", "ISO", "RL", "RM"}
_PATIENT_DIRECTIONS = set("APRLHF")


class DicomError(ValueError):
    """A DICOM file that cannot be turned into a mammogram; the message names the file and the cause."""


class NotMammogramWarning(UserWarning):
    """The file's Modality is not MG (pass `refuse_non_mg=True` to `read_dicom` to make this an error)."""


@dataclass(eq=False)
class Calibration:
    """The grey-level pipeline of one image: stored pixel value -> float in [0, 1].

    Stages, in the order of the DICOM standard (PS3.3 C.11):

    * Modality LUT: `modality_lut` (a table indexed by `stored - modality_lut_first`, clamped to its
      ends) when the file has a Modality LUT Sequence, else `stored * slope + intercept`.
    * VOI, chosen by `voi`:
      - `"window"`: `window_center` c and `window_width` w with `voi_function`
        (x is the modality output, y the result before clipping to [0, 1]):
        LINEAR (PS3.3 C.11.2.1.2.1): y = 0 if x <= c - 0.5 - (w - 1) / 2, y = 1 if
        x > c - 0.5 + (w - 1) / 2, else y = (x - (c - 0.5)) / (w - 1) + 0.5;
        LINEAR_EXACT (C.11.2.1.3.2): y = (x - c) / w + 0.5;
        SIGMOID (C.11.2.1.3.1): y = 1 / (1 + exp(-4 (x - c) / w)).
      - `"lut"`: the VOI LUT Sequence table `voi_lut`, indexed by `round(x) - voi_lut_first`
        (clamped to its ends), divided by `voi_lut_max` (2**bits - 1 from the LUT Descriptor).
      - `"minmax"`: (x - lo) / (hi - lo) over `value_range`, the modality output range of the image.
    * MONOCHROME1 inversion when `invert`: y -> 1 - y.
    """

    slope: float = 1.0
    intercept: float = 0.0
    modality_lut: np.ndarray | None = None
    modality_lut_first: int = 0
    voi: str = "minmax"
    window_center: float | None = None
    window_width: float | None = None
    voi_function: str = "LINEAR"
    voi_lut: np.ndarray | None = None
    voi_lut_first: int = 0
    voi_lut_max: float = 1.0
    value_range: tuple[float, float] = (0.0, 1.0)
    invert: bool = False
    _tables: dict = field(default_factory=dict, init=False, repr=False)  # dtype -> (table, offset)

    def modality(self, stored: np.ndarray) -> np.ndarray:
        """Apply the Modality LUT stage (float64 out)."""
        if self.modality_lut is not None:
            index = np.clip(stored.astype(np.int64) - self.modality_lut_first, 0, len(self.modality_lut) - 1)
            return self.modality_lut[index].astype(np.float64)
        return stored.astype(np.float64) * self.slope + self.intercept

    def voi_transform(self, values: np.ndarray) -> np.ndarray:
        """Apply the VOI stage to modality values (float64 in [0, 1] out)."""
        if self.voi == "lut":
            index = np.clip(np.rint(values).astype(np.int64) - self.voi_lut_first, 0, len(self.voi_lut) - 1)
            return self.voi_lut[index] / self.voi_lut_max
        if self.voi == "minmax":
            lo, hi = self.value_range
            return np.zeros_like(values) if hi <= lo else (values - lo) / (hi - lo)
        center, width = self.window_center, self.window_width
        if self.voi_function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        if self.voi_function == "LINEAR_EXACT":
            return np.clip((values - center) / width + 0.5, 0.0, 1.0)
        if width == 1:  # LINEAR with width 1 is a step at c - 0.5
            return (values > center - 0.5).astype(np.float64)
        return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)

    def apply(self, stored: np.ndarray) -> np.ndarray:
        """Calibrate stored values directly (any integer dtype); float32 in [0, 1]."""
        values = self.voi_transform(self.modality(stored))
        if self.invert:
            values = 1.0 - values
        return values.astype(np.float32)

    def table(self, dtype: np.dtype) -> tuple[np.ndarray, int]:
        """The calibrated value of every value of an integer `dtype` of at most 16 bits, and its offset."""
        info = np.iinfo(dtype)
        return self.apply(np.arange(info.min, info.max + 1, dtype=np.int64)), int(info.min)

    def __call__(self, stored: np.ndarray) -> np.ndarray:
        """Calibrate an array of stored values (a whole image, a crop or a preview)."""
        dtype = np.dtype(stored.dtype)
        if dtype.kind not in "ui" or dtype.itemsize > 2:
            return self.apply(stored)
        if dtype not in self._tables:
            self._tables[dtype] = self.table(dtype)
        table, offset = self._tables[dtype]
        if offset == 0:
            return table[stored]
        return table[stored.astype(np.int32) - offset]


@dataclass(eq=False)
class DicomImage:
    """A decoded, calibrated single-frame mammogram and the metadata the rest of the package uses.

    `pixels` (float32 [H, W] in [0, 1], high = dense, original geometry) is computed on first use;
    `calibrate(stored_pixels[...])` calibrates only a part of the image. `laterality_source` says
    where `laterality` came from: `"ImageLaterality"`, `"Laterality"`, `"SeriesDescription"`,
    `"ProtocolName"`, `"hint"` (the caller's `name_hint`, e.g. a folder name) or `"pixels"` (the side
    of the pixel mass, when nothing else names a side). `view_source` says where `view_position`
    came from: `"ViewPosition"`, `"ViewCodeSequence"`, `"PatientOrientation"`, `"SeriesDescription"`,
    `"ProtocolName"` or `"hint"` (None when nothing names the view). See `header_view`.
    `reduction` r > 0 means the pixels were decoded at 1/2**r of the native size `native_shape`
    (see `read_dicom`'s `reduce`).
    """

    stored_pixels: np.ndarray
    calibration: Calibration
    laterality: str | None
    laterality_source: str | None
    view_position: str | None
    photometric_interpretation: str
    manufacturer: str | None
    pixel_spacing: tuple[float, float] | None
    patient_id: str | None
    study_instance_uid: str | None
    sop_instance_uid: str | None
    modality: str | None
    bits_stored: int
    transfer_syntax_uid: str | None
    path: str | None
    reduction: int = 0
    native_shape: tuple[int, int] | None = None
    view_source: str | None = None

    @cached_property
    def pixels(self) -> np.ndarray:
        return self.calibration(self.stored_pixels)

    def calibrate(self, stored: np.ndarray) -> np.ndarray:
        """Calibrate any array of this image's stored values (e.g. `image.stored_pixels[100:200, :50]`)."""
        return self.calibration(stored)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.stored_pixels.shape)

    def preview(self) -> tuple[np.ndarray, int]:
        """A calibrated preview sampling every `stride`-th pixel (long side about 512), and the stride."""
        stride = max(1, max(self.shape) // PREVIEW_SIDE)
        return self.calibrate(self.stored_pixels[::stride, ::stride]), stride


def read_dicom(source: str | os.PathLike | Dataset, *, refuse_non_mg: bool = False, voi_index: int = 0,
               reduce: int = 0, decode_threads: int = 1, name_hint: str | None = None) -> DicomImage:
    """Decode and calibrate a single-frame grayscale DICOM image.

    Args:
        source: a file path or an already-read `pydicom.Dataset` (it must carry its pixel data and,
            for compressed data, `file_meta.TransferSyntaxUID`).
        refuse_non_mg: raise `DicomError` (instead of warning with `NotMammogramWarning`) when the
            Modality is not MG.
        voi_index: which VOI transform to use when the file lists several (several window
            centre/width pairs, or several VOI LUT Sequence items). The default 0 takes the first.
            The standard calls several values "alternative views" without ranking them (PS3.3
            C.8.11.3.1.5, DX / MG images); the first is what viewers show on opening the image and
            what pydicom's `apply_voi_lut` uses, so it is the reproducible, conventional choice.
            A file with both a VOI LUT Sequence and windows gets the LUT, as in pydicom.
        reduce: decode at 1/2**reduce of the native size (each side rounded up) when the pixel data
            allows it: JPEG 2000 (`JPEG2000_SYNTAXES`) with a calibration that does not depend on
            the image's own value range (a window or a VOI LUT in the file). Asking for more levels
            than the codestream has gives the most it has; anything else is decoded fully.
            `image.reduction` is what was applied. The stored values are the codestream's low-pass
            image in the file's own stored-value scale, so the calibration is exactly the file's.
        decode_threads: threads for a full JPEG 2000 decode when `imagecodecs` is installed (it
            decodes code-blocks in parallel); worth it only when cores are idle, e.g. one
            conversion worker on a multi-core machine.
        name_hint: how the dataset names the image outside the file (e.g. the folder name
            "Calc-Test_P_00038_RIGHT_MLO"); read for the view and the laterality when the header
            names neither (`header_view`, `header_laterality`), before the pixel mass.

    Raises:
        DicomError: not a DICOM file, no pixel data, multi-frame or colour data, a compressed
            transfer syntax whose decoder is not installed (the message names the pip packages),
            undecodable data, or an invalid VOI LUT.
        FileNotFoundError: `source` is a path that does not exist.
    """
    ds, path = _read_dataset(source)
    name = path or f"<pydicom Dataset SOPInstanceUID={ds.get('SOPInstanceUID', '?')}>"
    modality = _text(ds, "Modality")
    if modality != MAMMOGRAPHY_MODALITY:
        message = (f"{name}: Modality is {modality or 'missing'}, not MG (mammography); "
                   "the calibration still applies, but check this is the file you meant")
        if refuse_non_mg:
            raise DicomError(message + ".")
        warnings.warn(message + " (pass refuse_non_mg=True to refuse such files).", NotMammogramWarning, stacklevel=2)
    _check_single_grayscale_frame(ds, name)
    if reduce < 0:
        raise ValueError(f"reduce={reduce} must be 0 (full resolution) or more.")
    reduction, stored = 0, None
    if reduce and _calibration_is_pointwise(ds):
        reduction, stored = _decode_jpeg2000(ds, reduce)
    if stored is None:
        reduction, stored = 0, _decode(ds, name, decode_threads)
    calibration = _calibration(ds, stored, name, voi_index)
    image = DicomImage(
        stored_pixels=stored,
        calibration=calibration,
        laterality=None,
        laterality_source=None,
        view_position=None,
        photometric_interpretation=str(ds.PhotometricInterpretation).strip(),
        manufacturer=_text(ds, "Manufacturer"),
        pixel_spacing=_pixel_spacing(ds),
        patient_id=_text(ds, "PatientID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        modality=modality,
        bits_stored=int(ds.get("BitsStored") or stored.dtype.itemsize * 8),
        transfer_syntax_uid=_transfer_syntax(ds),
        path=path,
        reduction=reduction,
        native_shape=(int(ds.Rows), int(ds.Columns)),
    )
    image.view_position, image.view_source = header_view(ds, name_hint=name_hint)
    image.laterality, image.laterality_source = header_laterality(ds, name_hint=name_hint)
    if image.laterality is None:
        preview, _ = image.preview()
        image.laterality = infer_laterality(preview)
        image.laterality_source = "pixels" if image.laterality else None
    return image


def read_dataset(path: str | os.PathLike) -> Dataset:
    """The `pydicom.Dataset` of a DICOM file, with `read_dicom`'s errors (to decode it more than once)."""
    return _read_dataset(path)[0]


def _read_dataset(source) -> tuple[Dataset, str | None]:
    """The dataset and the path of its file (None for a dataset that was not read from a file)."""
    if isinstance(source, Dataset):
        filename = getattr(source, "filename", None)
        return source, (str(filename) if isinstance(filename, (str, os.PathLike)) else None)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"read_dicom expects a path or a pydicom Dataset, got {type(source).__name__}.")
    path = Path(source)
    if path.is_dir():
        files = sorted(entry.name for entry in path.iterdir() if entry.is_file())
        example = f" (it holds {', '.join(files[:3])}{', ...' if len(files) > 3 else ''})" if files else ""
        raise DicomError(f"{path} is a folder, not a DICOM file{example}: pass one of its files, or convert a whole "
                         "folder of DICOM files with data_scripts/dicom_folder.py.")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such DICOM file.")
    try:
        return pydicom.dcmread(path), str(path)
    except InvalidDicomError as error:
        raise DicomError(f"{path}: not a DICOM file ({error}).") from error
    except Exception as error:  # a truncated or garbled file fails in many ways inside pydicom
        raise DicomError(f"{path}: could not be parsed as DICOM ({type(error).__name__}: {error}).") from error


def _check_single_grayscale_frame(ds: Dataset, name: str) -> None:
    if "PixelData" not in ds:
        kind = "float pixel data, which is not supported" if (
            "FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else "no pixel data"
        sop_class = ds.get("SOPClassUID")
        described = f" (SOP class {UID(sop_class).name})" if sop_class else ""
        raise DicomError(f"{name}: {kind}{described}; expected a mammogram image (is the file truncated?).")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DicomError(
            f"{name}: multi-frame data ({frames} frames, e.g. a tomosynthesis volume) is not supported; "
            "use the 2D or synthesised 2D (C-view) image of the exam.")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    samples = int(ds.get("SamplesPerPixel") or 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
        raise DicomError(
            f"{name}: unsupported pixel data: PhotometricInterpretation {photometric or 'missing'} with "
            f"{samples} sample(s) per pixel; only grayscale MONOCHROME1 / MONOCHROME2 images are supported.")


def _transfer_syntax(ds: Dataset) -> str | None:
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    return str(syntax) if syntax else None


def _decode(ds: Dataset, name: str, threads: int = 1) -> np.ndarray:
    syntax = _transfer_syntax(ds)
    if threads > 1 and syntax in JPEG2000_SYNTAXES:
        stored = _decode_jpeg2000_threaded(ds, threads)
        if stored is not None:
            return stored
    if syntax is not None and UID(syntax).is_encapsulated:
        uid = UID(syntax)
        try:
            decoder = get_decoder(uid)
        except NotImplementedError as error:
            raise DicomError(
                f"{name}: pixel data in transfer syntax {uid.name} ({uid}) cannot be decoded by pydicom; "
                "convert the file to an uncompressed or JPEG / JPEG-LS / JPEG 2000 / RLE syntax.") from error
        if not decoder.is_available:
            packages = DECODER_PACKAGES.get(str(uid), "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
            raise DicomError(
                f"{name}: pixel data is compressed with {uid.name} ({uid}) and no decoder for it is "
                f"installed; install one with `pip install {packages}`.")
    try:
        stored = ds.pixel_array
    except Exception as error:  # decoder plugins raise many types for corrupt streams
        described = f" ({UID(syntax).name})" if syntax else ""
        raise DicomError(f"{name}: could not decode the pixel data{described}: {error}") from error
    if stored.ndim != 2:
        raise DicomError(f"{name}: decoded pixel data has shape {stored.shape}; expected one 2D frame.")
    return stored


def reduced_size(size: int, reduction: int) -> int:
    """Length of a side of `size` pixels decoded at 1/2**reduction (JPEG 2000 rounds up).

    >>> reduced_size(3328, 1), reduced_size(1955, 3)
    (1664, 245)
    """
    return -(-size // (1 << reduction))


def _pillow_reduced_size(size: int, reduction: int) -> int:
    """The side length Pillow's JPEG 2000 plugin allocates for `reduce = reduction`."""
    return int((size + ((1 << reduction) >> 1)) / (1 << reduction))


def _calibration_is_pointwise(ds: Dataset) -> bool:
    """Whether the calibration is a function of the stored value alone (not of the image's range)."""
    return bool(ds.get("VOILUTSequence")) or (ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None)


def _codestream(ds: Dataset) -> bytes | None:
    """The JPEG 2000 codestream of a single-frame dataset, or None for other pixel data."""
    if _transfer_syntax(ds) not in JPEG2000_SYNTAXES or "PixelData" not in ds:
        return None
    try:
        return get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception:  # a malformed encapsulation: let pydicom's full decode report it
        return None


@dataclass(frozen=True)
class _CodestreamHeader:
    rows: int
    columns: int
    precision: int
    signed: bool
    levels: int  # wavelet decomposition levels: the most `reduce` can be


def _codestream_header(codestream: bytes) -> _CodestreamHeader | None:
    """Size, sample format and decomposition levels from the main header (SIZ and COD markers,
    ISO/IEC 15444-1 A.5.1 and A.6.1); None for what is not a plain one-component codestream."""
    if codestream[:4] != b"\xff\x4f\xff\x51" or len(codestream) < 44:
        return None
    (length, _, xsiz, ysiz, xosiz, yosiz, _, _, _, _, components) = struct.unpack_from(">HHIIIIIIIIH", codestream, 4)
    if components != 1 or xosiz or yosiz:
        return None
    ssiz = codestream[4 + 38]
    header = {"rows": ysiz, "columns": xsiz, "precision": (ssiz & 0x7F) + 1, "signed": bool(ssiz & 0x80)}
    position = 4 + length
    while position + 4 <= len(codestream):
        marker, length = struct.unpack_from(">HH", codestream, position)
        if marker == 0xFF52:  # COD: Scod, progression, layers (2), MCT, then the decomposition levels
            return _CodestreamHeader(**header, levels=codestream[position + 9])
        if marker in (0xFF90, 0xFFD9):  # the first tile, or the end: no COD in the main header
            return None
        position += 2 + length
    return None


def _stored_dtype(ds: Dataset) -> np.dtype:
    """The numpy dtype pydicom gives this dataset's pixels."""
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    itemsize = max(1, int(ds.get("BitsAllocated") or 16) // 8)
    return np.dtype(f"{'i' if signed else 'u'}{itemsize}")


def _as_stored(values: np.ndarray, ds: Dataset, header: _CodestreamHeader) -> np.ndarray:
    """Codestream sample values -> the array pydicom's decoders give (its dtype; and its sign
    correction when the codestream's signedness disagrees with PixelRepresentation)."""
    dtype = _stored_dtype(ds)
    stored = values.astype(dtype)
    shift = 8 * dtype.itemsize - header.precision
    if shift > 0 and header.signed != (dtype.kind == "i"):
        np.left_shift(stored, shift, out=stored)
        np.right_shift(stored, shift, out=stored)
    return stored


def _decode_jpeg2000(ds: Dataset, reduce: int) -> tuple[int, np.ndarray | None]:
    """(reduction, stored pixels) of a JPEG 2000 dataset decoded with Pillow at 1/2**reduction,
    or (0, None) when Pillow cannot do it exactly (the caller then decodes fully with pydicom).

    Pillow scales samples of p bits to its 16-bit (or 8-bit) mode: value << (16 - p), after adding
    2**(p - 1) to signed samples. That is undone here, then pydicom's own conventions are applied
    (`_as_stored`), so the values are in the same scale as pydicom's full decode.
    """
    codestream = _codestream(ds)
    header = _codestream_header(codestream) if codestream is not None else None
    if header is None or header.precision > 16 or (header.rows, header.columns) != (int(ds.Rows), int(ds.Columns)):
        return 0, None
    # Pillow sizes a reduced image round(size / 2**r) where OpenJPEG decodes ceil(size / 2**r): take
    # the largest reduction where the two agree (all of them for the usual even detector sizes).
    reduction = min(reduce, header.levels)
    while reduction and any(_pillow_reduced_size(side, reduction) != reduced_size(side, reduction)
                            for side in (header.rows, header.columns)):
        reduction -= 1
    if reduction == 0:
        return 0, None
    try:
        with Image.open(io.BytesIO(codestream), formats=["JPEG2000"]) as image:
            image.reduce = reduction
            image.load()
            values = np.asarray(image)
    except Exception:  # Pillow without OpenJPEG, or a stream it rejects: pydicom decides
        return 0, None
    shape = (reduced_size(header.rows, reduction), reduced_size(header.columns, reduction))
    bits = 8 * values.dtype.itemsize
    shift = bits - header.precision
    if values.shape != shape or values.dtype.kind != "u" or shift < 0 or (values & ((1 << shift) - 1)).any():
        return 0, None  # not the layout assumed above (another Pillow version): decode fully instead
    samples = (values >> shift).astype(np.int32)
    if header.signed:
        samples -= 1 << (header.precision - 1)
    return reduction, _as_stored(samples, ds, header)


def _decode_jpeg2000_threaded(ds: Dataset, threads: int) -> np.ndarray | None:
    """A full JPEG 2000 decode with `threads` OpenJPEG threads (imagecodecs), or None without it."""
    try:
        import imagecodecs
    except ImportError:
        return None
    codestream = _codestream(ds)
    header = _codestream_header(codestream) if codestream is not None else None
    if header is None or header.precision > 16 or (header.rows, header.columns) != (int(ds.Rows), int(ds.Columns)):
        return None
    try:
        samples = imagecodecs.jpeg2k_decode(codestream, numthreads=threads)
    except Exception:  # let pydicom's decoder try (and report) it
        return None
    if samples.shape != (header.rows, header.columns):
        return None
    return _as_stored(samples, ds, header)


def _calibration(ds: Dataset, stored: np.ndarray, name: str, voi_index: int) -> Calibration:
    calibration = Calibration(invert=str(ds.PhotometricInterpretation).strip() == "MONOCHROME1")
    signed = int(ds.get("PixelRepresentation") or 0) == 1

    modality_items = ds.get("ModalityLUTSequence")
    if modality_items:
        item = modality_items[0]
        table, first, _ = _lut(ds, item, name, "Modality LUT Sequence", signed)
        calibration.modality_lut, calibration.modality_lut_first = table, first
    else:
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        calibration.slope = float(slope) if slope not in (None, "") else 1.0
        calibration.intercept = float(intercept) if intercept not in (None, "") else 0.0
        if calibration.slope == 0 or not math.isfinite(calibration.slope) or not math.isfinite(calibration.intercept):
            # Slope 0 maps every pixel to the intercept: an all-black image that looks like a decoded one.
            raise DicomError(f"{name}: RescaleSlope {slope} / RescaleIntercept {intercept} would turn every pixel "
                             "into the same value; the file's modality rescale tags are broken (re-export it, or "
                             "fix (0028,1053) RescaleSlope).")

    voi_items = ds.get("VOILUTSequence")
    if voi_items:
        if voi_index >= len(voi_items):
            raise DicomError(f"{name}: voi_index={voi_index} but the VOI LUT Sequence has {len(voi_items)} item(s).")
        table, first, bits = _lut(ds, voi_items[voi_index], name, "VOI LUT Sequence", signed)
        calibration.voi, calibration.voi_lut, calibration.voi_lut_first = "lut", table, first
        # Some writers put a larger value in the table than the descriptor's bit depth allows.
        calibration.voi_lut_max = float(max(2**bits - 1, table.max(initial=1)))
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            centers, widths = _numbers(ds["WindowCenter"].value), _numbers(ds["WindowWidth"].value)
        except (TypeError, ValueError) as error:
            raise DicomError(f"{name}: WindowCenter / WindowWidth are not numbers ({error}).") from error
        count = min(len(centers), len(widths))
        if voi_index >= count:
            raise DicomError(f"{name}: voi_index={voi_index} but the file lists {count} window(s).")
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        center, width = centers[voi_index], widths[voi_index]
        if function not in VOI_FUNCTIONS:
            raise DicomError(f"{name}: VOILUTFunction {function!r} is not one of {VOI_FUNCTIONS}.")
        if (function == "LINEAR" and width < 1) or width <= 0:
            raise DicomError(f"{name}: WindowWidth {width} is invalid for the {function} VOI function.")
        calibration.voi, calibration.voi_function = "window", function
        calibration.window_center, calibration.window_width = center, width
    else:
        calibration.value_range = _modality_range(calibration, stored)
    return calibration


def _modality_range(calibration: Calibration, stored: np.ndarray) -> tuple[float, float]:
    """Smallest and largest modality output over the image (for images without a VOI transform)."""
    low, high = int(stored.min()), int(stored.max())
    if calibration.modality_lut is not None:
        values = calibration.modality(np.arange(low, high + 1))
    else:
        values = calibration.modality(np.array([low, high]))
    return float(values.min()), float(values.max())


def _lut(ds: Dataset, item: Dataset, name: str, what: str, signed: bool) -> tuple[np.ndarray, int, int]:
    """Table, first mapped value and bit depth of a Modality / VOI LUT Sequence item."""
    try:
        count, first, bits = (int(value) for value in item.LUTDescriptor)
        element = item["LUTData"]
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise DicomError(f"{name}: the {what} item has no valid LUTDescriptor / LUTData ({error}).") from error
    count = count or 65536  # 0 means 2**16 entries
    if signed and first > 32767:  # the descriptor's first value is US or SS depending on the pixels
        first -= 65536
    if element.VR == "OW" or isinstance(element.value, (bytes, bytearray)):
        little_endian = getattr(ds, "original_encoding", (None, True))[1] is not False
        table = np.frombuffer(element.value, dtype="<u2" if little_endian else ">u2")[:count]
    else:
        table = np.asarray(element.value if isinstance(element.value, (list, tuple, MultiValue))
                           else [element.value], dtype=np.float64)
    if len(table) == 0:
        raise DicomError(f"{name}: the {what} item has an empty LUTData.")
    return table.astype(np.float64), first, bits


def _numbers(value) -> list[float]:
    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    return [float(v) for v in values]


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """Row and column spacing in mm: PixelSpacing, else ImagerPixelSpacing (MG often has only the latter)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            spacing = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and min(spacing) > 0:
            return spacing
    return None


def view_from_text(text: str | None) -> str | None:
    """The view position a free text names, word by word; None when it names none or several.

    Words are split at anything but letters and digits; a view may be glued to its side ("LMLO",
    "CCR") or spelled out ("medio-lateral oblique"). Only view codes that are not also common
    words are read (not "AT", "CV", "TAN", "ISO", "RL", "RM").

    >>> [view_from_text(t) for t in ("Calc-Test_P_00038_RIGHT_MLO", "L CC", "LMLO", "medio-lateral oblique",
    ...                              "full mammogram images", "CC and MLO", None)]
    ['MLO', 'CC', 'MLO', 'MLO', None, None, None]
    """
    views = {view for view, _ in _text_words(text) if view}
    return views.pop() if len(views) == 1 else None


def laterality_from_text(text: str | None) -> str | None:
    """"L" / "R" from the words of a free text (L, R, LEFT, RIGHT, or a side glued to a view such as
    "RCC"); None when it names no side or both.

    >>> [laterality_from_text(t) for t in ("Mass-Training_P_00001_LEFT_CC", "R MLO", "LMLO", "LM", "L and R")]
    ['L', 'R', 'L', None, None]
    """
    sides = {side for _, side in _text_words(text) if side}
    return sides.pop() if len(sides) == 1 else None


def _text_words(text: str | None) -> list[tuple[str | None, str | None]]:
    """(view, side) read from each word of `text` (either may be None)."""
    if not text:
        return []
    upper = str(text).upper()
    found: list[tuple[str | None, str | None]] = []
    letters = "".join(ch for ch in upper if ch.isalpha()).lower()
    for meaning in sorted(_VIEW_CODE_MEANINGS, key=len, reverse=True):  # longest first: "...oblique" before "..."
        if meaning in letters:
            found.append((_VIEW_CODE_MEANINGS[meaning], None))
            letters = letters.replace(meaning, " ")
    for word in (word for word in "".join(ch if ch.isalnum() else " " for ch in upper).split()):
        if word in ("L", "LEFT") or word in ("R", "RIGHT"):
            found.append((None, word[0]))
        elif word in _TEXT_VIEWS:
            found.append((word, None))
        elif len(word) >= 3 and word[0] in "LR" and word[1:] in _TEXT_VIEWS:
            found.append((word[1:], word[0]))
        elif len(word) >= 3 and word[-1] in "LR" and word[:-1] in _TEXT_VIEWS:
            found.append((word[:-1], word[-1]))
    return found


def _view_position(ds: Dataset) -> str | None:
    """The view position the header gives (`header_view` without its source)."""
    return header_view(ds)[0]


def header_view(ds: Dataset, *, name_hint: str | None = None) -> tuple[str | None, str | None]:
    """(view position, where it came from) from what real files carry, most trusted first:

    1. `ViewPosition` (as written, upper case);
    2. `ViewCodeSequence` code meanings (DICOM CID 4014, e.g. "medio-lateral oblique");
    3. a `PatientOrientation` value that is a view name rather than directions ("CC", "MLO": scanned
       films such as CBIS-DDSM write the view there);
    4. the words of `SeriesDescription`, then `ProtocolName` (`view_from_text`);
    5. `name_hint`, the dataset's own naming of the image (e.g. its folder name), as "hint".

    >>> ds = Dataset()
    >>> ds.PatientOrientation = "MLO"
    >>> header_view(ds), header_view(Dataset(), name_hint="Calc-Test_P_00038_RIGHT_CC")
    (('MLO', 'PatientOrientation'), ('CC', 'hint'))
    """
    view = _text(ds, "ViewPosition")
    if view:
        return view.upper(), "ViewPosition"
    for item in ds.get("ViewCodeSequence") or []:
        meaning = "".join(ch for ch in str(item.get("CodeMeaning", "")).lower() if ch.isalpha())
        if meaning in _VIEW_CODE_MEANINGS:
            return _VIEW_CODE_MEANINGS[meaning], "ViewCodeSequence"
    orientation = ds.get("PatientOrientation")
    values = orientation if isinstance(orientation, (list, tuple, MultiValue)) else [orientation]
    for value in values:
        word = str(value or "").strip().upper()
        if word in VIEW_POSITIONS and not set(word) <= _PATIENT_DIRECTIONS:
            return word, "PatientOrientation"
    return _from_text_tags(ds, view_from_text, name_hint)


def header_laterality(ds: Dataset, *, name_hint: str | None = None) -> tuple[str | None, str | None]:
    """(laterality "L" / "R", where it came from) from the header, most trusted first:
    `ImageLaterality`, `Laterality`, the words of `SeriesDescription` and `ProtocolName`
    (`laterality_from_text`), then `name_hint` ("hint"). (None, None) when none names a side:
    `read_dicom` then reads it from the pixel mass.

    >>> ds = Dataset()
    >>> ds.Laterality = "R"
    >>> header_laterality(ds), header_laterality(Dataset(), name_hint="Mass-Training_P_00001_LEFT_CC")
    (('R', 'Laterality'), ('L', 'hint'))
    """
    for keyword in LATERALITY_TAGS:
        value = (_text(ds, keyword) or "").upper()
        if value in ("L", "R"):
            return value, keyword
    return _from_text_tags(ds, laterality_from_text, name_hint)


def _from_text_tags(ds: Dataset, parse, name_hint: str | None) -> tuple[str | None, str | None]:
    """The last resorts of `header_view` / `header_laterality`: `parse` (a `*_from_text`) on each of
    `TEXT_TAGS`, then on `name_hint`; (value, its source: the keyword or "hint") or (None, None)."""
    for keyword in TEXT_TAGS:
        value = parse(_text(ds, keyword))
        if value:
            return value, keyword
    value = parse(name_hint)
    return (value, "hint") if value else (None, None)


__all__ = [
    "Calibration", "DECODER_PACKAGES", "DicomError", "DicomImage", "JPEG2000_SYNTAXES", "LATERALITY_TAGS",
    "MAMMOGRAPHY_MODALITY", "NotMammogramWarning", "TEXT_TAGS", "VIEW_TAGS", "header_laterality", "header_view",
    "laterality_from_text", "read_dataset", "read_dicom", "reduced_size", "view_from_text",
]
