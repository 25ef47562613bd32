"""Small synthetic mammography DICOM files, written with pydicom, in every transfer syntax the public
datasets use. A test helper other tests can import (`from dicom_factory import write_mammogram`).

`breast_pixels` draws a breast-like image (tissue against the chest wall, noisy background, a bright
marker in the opposite corner); `mammogram_dataset` wraps pixels in an MG "For Presentation"
dataset; `encode` re-encodes a dataset in another transfer syntax; `write_mammogram` does all three.

Encoders: RLE (pydicom, native), JPEG 2000 lossless / lossy (pylibjpeg-openjpeg), JPEG-LS lossless /
near-lossless (pyjpegls), JPEG lossless process 14 and SV1 (imagecodecs, libjpeg-turbo), deflated
(pydicom's writer). `missing_encoder(name)` says which package a syntax needs when it is absent.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    UID,
    generate_uid,
)

DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000_lossless": JPEG2000Lossless,
    "jpeg2000": JPEG2000,
    "jpegls_lossless": JPEGLSLossless,
    "jpegls_near_lossless": JPEGLSNearLossless,
    "jpeg_lossless": JPEGLossless,
    "jpeg_lossless_sv1": JPEGLosslessSV1,
}
LOSSY = {"jpeg2000", "jpegls_near_lossless"}
# The module each encoder needs (None: pydicom alone), and the pip package that provides it.
_ENCODER_MODULES = {
    "jpeg2000_lossless": ("openjpeg", "pylibjpeg-openjpeg"),
    "jpeg2000": ("openjpeg", "pylibjpeg-openjpeg"),
    "jpegls_lossless": ("jpeg_ls", "pyjpegls"),
    "jpegls_near_lossless": ("jpeg_ls", "pyjpegls"),
    "jpeg_lossless": ("imagecodecs", "imagecodecs"),
    "jpeg_lossless_sv1": ("imagecodecs", "imagecodecs"),
}
JPEG_LS_NEAR_ERROR = 2  # the largest per-pixel error of the near-lossless JPEG-LS files


def missing_encoder(name: str) -> str | None:
    """The pip package an encoder for `name` needs, or None when it can be written here."""
    module, package = _ENCODER_MODULES.get(name, (None, None))
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return package


def breast_pixels(rows: int = 96, cols: int = 64, *, laterality: str = "L", bits_stored: int = 12,
                  seed: int = 0, marker: bool = True) -> np.ndarray:
    """A breast-like uint16 image: high = dense, chest wall on the left edge for "L", right for "R".

    Tissue is a half-ellipse against the chest wall (smooth texture, thinning towards the skin
    line) over a dark noisy background; `marker` adds a small bright label in the top corner away
    from the breast. The "R" image is the exact mirror of the "L" image with the same seed.
    """
    rng = np.random.default_rng(seed)
    top = 2**bits_stored - 1
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    # Normalised radius of the half-ellipse centred on the chest wall (x = 0).
    radius = np.sqrt(((y - rows / 2) / (0.42 * rows)) ** 2 + (x / (0.72 * cols)) ** 2)
    coarse = rng.normal(size=(max(2, rows // 16), max(2, cols // 16)))
    texture = _upsample(coarse, rows, cols)
    tissue = 0.35 + 0.25 * np.sqrt(np.clip(1 - radius, 0, 1)) + 0.08 * texture
    image = np.where(radius < 1, tissue, 0.03) + rng.normal(0, 0.004, size=(rows, cols))
    if marker:
        height, width = max(2, rows // 16), max(3, cols // 8)
        image[2:2 + height, cols - 2 - width:cols - 2] = 0.95
    pixels = np.clip(np.rint(image * top), 0, top).astype(np.uint16)
    if laterality == "R":
        return np.ascontiguousarray(pixels[:, ::-1])
    if laterality != "L":
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}.")
    return pixels


def _upsample(coarse: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear upsampling of a coarse noise field to rows x cols (smooth texture)."""
    ys = np.linspace(0, coarse.shape[0] - 1, rows)
    xs = np.linspace(0, coarse.shape[1] - 1, cols)
    along_x = np.stack([np.interp(xs, np.arange(coarse.shape[1]), line) for line in coarse])
    return np.stack([np.interp(ys, np.arange(coarse.shape[0]), column) for column in along_x.T], axis=1)


def mammogram_dataset(
    pixels: np.ndarray | None = None,
    *,
    laterality: str | None = "L",
    laterality_tags: tuple[str, ...] = ("ImageLaterality",),
    view_position: str | None = "CC",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple[float, float] | list[tuple[float, float]] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: tuple[int, int, np.ndarray] | None = None,
    modality: str = "MG",
    manufacturer: str | None = "HOLOGIC, Inc.",
    pixel_spacing: tuple[float, float] | None = None,
    imager_pixel_spacing: tuple[float, float] | None = (0.07, 0.07),
    patient_id: str = "P0001",
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    seed: int = 0,
) -> Dataset:
    """An uncompressed (explicit VR little endian) MG dataset.

    `pixels` are what a reader should see after calibration, high = dense (default: `breast_pixels`
    of the given laterality). For MONOCHROME1 the stored values are inverted (modality value
    K - v, K = slope * (2**bits_stored - 1) + 2 * intercept) and the VOI mirrored (window centres
    K - c, plus 1 for LINEAR; the VOI LUT reversed), so a correct reader calibrates the MONOCHROME1
    and MONOCHROME2 versions of the same pixels to the same image.

    `window` is one (centre, width) pair or a list of them; `voi_lut` is (first mapped value, bits,
    table); `laterality` is written to each tag in `laterality_tags` ("ImageLaterality",
    "Laterality"), or to none when `laterality_tags` is empty.
    """
    if pixels is None:
        pixels = breast_pixels(laterality=laterality or "L", bits_stored=bits_stored, seed=seed)
    top = 2**bits_stored - 1
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    windows = [window] if isinstance(window, tuple) else list(window or [])
    stored = np.asarray(pixels, dtype=np.uint16)
    if photometric == "MONOCHROME1":
        mirror = slope * top + 2 * intercept
        stored = (top - stored.astype(np.int64)).astype(np.uint16)
        shift = 1 if (voi_function or "LINEAR") == "LINEAR" else 0
        windows = [(mirror - center + shift, width) for center, width in windows]
        if voi_lut is not None:
            first, lut_bits, table = voi_lut
            table = np.asarray(table)
            voi_lut = (int(mirror) - (first + len(table) - 1), lut_bits, (2**lut_bits - 1) - table[::-1])

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION if modality == "MG" else SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.Modality = modality
    ds.PresentationIntentType = "FOR PRESENTATION"
    if manufacturer:
        ds.Manufacturer = manufacturer
    for tag in laterality_tags:
        if laterality:
            setattr(ds, tag, laterality)
    if view_position:
        ds.ViewPosition = view_position
    if pixel_spacing:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_pixel_spacing:
        ds.ImagerPixelSpacing = list(imager_pixel_spacing)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if windows:
        ds.WindowCenter = [float(center) for center, _ in windows] if len(windows) > 1 else float(windows[0][0])
        ds.WindowWidth = [float(width) for _, width in windows] if len(windows) > 1 else float(windows[0][1])
    if voi_function:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        first, lut_bits, table = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(table), first, lut_bits]
        item.LUTData = [int(v) for v in table]
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.tobytes()
    return ds


def encode(ds: Dataset, name: str) -> Dataset:
    """A copy of an uncompressed dataset in the transfer syntax `name` (a key of TRANSFER_SYNTAXES)."""
    syntax = TRANSFER_SYNTAXES[name]
    package = missing_encoder(name)
    if package:
        raise RuntimeError(f"Writing {syntax.name} needs the `{package}` package (pip install {package}).")
    encoded = copy.deepcopy(ds)
    stored = ds.pixel_array
    bits = int(ds.BitsStored)
    if name in ("explicit", "implicit", "deflated"):
        encoded.file_meta.TransferSyntaxUID = syntax
    elif name == "rle":
        encoded.compress(RLELossless, stored)
    elif name == "jpeg2000_lossless":
        encoded.compress(JPEG2000Lossless, stored)
    elif name == "jpeg2000":
        encoded.compress(JPEG2000, stored, j2k_psnr=[60])
    elif name == "jpegls_lossless":
        encoded.compress(JPEGLSLossless, stored)
    elif name == "jpegls_near_lossless":
        encoded.compress(JPEGLSNearLossless, stored, jls_error=JPEG_LS_NEAR_ERROR)
    else:
        import imagecodecs

        # ljpeg_encode uses predictor 6 (Process 14); SV1 means predictor 1.
        frame = (imagecodecs.ljpeg_encode(stored, bitspersample=bits) if name == "jpeg_lossless" else
                 imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=bits))
        encoded.PixelData = encapsulate([bytes(frame)])
        encoded["PixelData"].VR = "OB"
        encoded.file_meta.TransferSyntaxUID = syntax
    return encoded


def write_dataset(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write a dataset as a DICOM file (with preamble) atomically: a temp name, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    ds.save_as(temporary, enforce_file_format=True)
    os.replace(temporary, path)
    return path


def write_mammogram(path: str | os.PathLike, pixels: np.ndarray | None = None, *,
                    transfer_syntax: str = "explicit", **dataset_kwargs) -> Path:
    """`mammogram_dataset(pixels, **dataset_kwargs)` encoded in `transfer_syntax`, written to `path`."""
    return write_dataset(encode(mammogram_dataset(pixels, **dataset_kwargs), transfer_syntax), path)


# A small PACS-export-like folder: two four-view exams (file names without extension) and the files a
# batch job must leave out, each with the reason it should give.
FOLDER_EXAMS = {
    "P1": {"study": "1.2.826.0.1.3680043.10.1", "age": "061Y", "description": "MG Screening Bilateral"},
    "P2": {"study": "1.2.826.0.1.3680043.10.2", "age": "047Y", "description": "MG Diagnostic Left"},
}
FOLDER_REJECTS = {
    "notes.txt": "not a DICOM file",
    "ct.dcm": "not a mammogram (Modality CT)",
    "tomo.dcm": "not 2D (3 frames)",
    "cview.dcm": "synthesized 2D image",
    "corrupt.dcm": "pixel data",
}


def write_dicom_folder(root: str | os.PathLike, *, rows: int = 96, cols: int = 64) -> dict[str, Path]:
    """Write the folder described above under `root`; returns {name: path} of every file written.

    Names: "P1-L-CC" ... "P2-R-MLO" for the mammograms (P2's R-CC has no laterality tag, so its side
    comes from the pixels) and the keys of FOLDER_REJECTS for the others (the corrupt file has a
    valid header and truncated pixel data).
    """
    root = Path(root)
    written = {}
    seed = 0
    for patient, exam in FOLDER_EXAMS.items():
        for laterality in ("L", "R"):
            for view in ("CC", "MLO"):
                seed += 1
                untagged = patient == "P2" and laterality == "R" and view == "CC"
                ds = mammogram_dataset(breast_pixels(rows, cols, laterality=laterality, seed=seed),
                                       laterality=laterality, view_position=view, patient_id=patient,
                                       study_instance_uid=exam["study"],
                                       laterality_tags=() if untagged else ("ImageLaterality",))
                ds.PatientAge, ds.StudyDescription = exam["age"], exam["description"]
                name = f"{patient}-{laterality}-{view}"
                written[name] = write_dataset(ds, root / patient / exam["study"] / f"IM{seed:04d}")
    (root / "notes.txt").write_text("not an image\n")
    written["notes.txt"] = root / "notes.txt"
    written["ct.dcm"] = write_dataset(mammogram_dataset(breast_pixels(rows, cols), modality="CT"), root / "ct.dcm")
    tomo = mammogram_dataset(breast_pixels(rows, cols))
    tomo.NumberOfFrames = 3
    written["tomo.dcm"] = write_dataset(tomo, root / "tomo.dcm")
    cview = mammogram_dataset(breast_pixels(rows, cols))
    cview.ImageType = ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D"]
    written["cview.dcm"] = write_dataset(cview, root / "cview.dcm")
    corrupt = write_dataset(mammogram_dataset(breast_pixels(rows, cols)), root / "corrupt.dcm")
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[:len(data) - rows * cols])  # half of the 16-bit pixel data is missing
    written["corrupt.dcm"] = corrupt
    return written


__all__ = [
    "FOLDER_EXAMS", "FOLDER_REJECTS", "JPEG_LS_NEAR_ERROR", "LOSSY", "TRANSFER_SYNTAXES", "breast_pixels", "encode",
    "mammogram_dataset", "missing_encoder", "write_dataset", "write_dicom_folder", "write_mammogram",
]
