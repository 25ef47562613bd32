"""read_dicom: decoding in every transfer syntax, calibration, metadata and error messages.

Real files nobody here wrote (pydicom's test files and pydicom-data) are checked against pydicom's own
`apply_modality_lut` / `apply_voi_lut`; generated MG files (tests/dicom_factory.py) against their
uncompressed twins and against values worked out by hand from the DICOM formulas.
"""

import math
import warnings

import numpy as np
import pydicom
import pytest
from dicom_factory import (
    JPEG_LS_NEAR_ERROR,
    LOSSY,
    TRANSFER_SYNTAXES,
    breast_pixels,
    mammogram_dataset,
    missing_encoder,
    write_dataset,
    write_mammogram,
)
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from modeling_mama.dicom import (
    DECODER_PACKAGES,
    DicomError,
    NotMammogramWarning,
    laterality_from_text,
    read_dicom,
    view_from_text,
)


def read_non_mg(path, **kwargs):
    """read_dicom on one of pydicom's CT / MR / CR test files (they warn that they are not MG)."""
    with pytest.warns(NotMammogramWarning):
        return read_dicom(path, **kwargs)


def real_file(name):
    path = get_testdata_file(name)
    assert path is not None, f"{name} is missing: pydicom-data must be installed (it works offline)"
    return path


def pydicom_reference(ds) -> np.ndarray:
    """Calibrated pixels in [0, 1] computed with pydicom's own LUT functions."""
    stored = ds.pixel_array
    values = apply_modality_lut(stored, ds)
    if ds.get("VOILUTSequence"):
        bits = ds.VOILUTSequence[0].LUTDescriptor[2]
        unit = apply_voi_lut(stored, ds) / (2**bits - 1)
    elif "WindowCenter" in ds:
        # pydicom maps the window onto the stored value range (after rescale); undo that range.
        bits = ds.BitsStored
        low, high = (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            low, high = (low * ds.RescaleSlope + ds.RescaleIntercept, high * ds.RescaleSlope + ds.RescaleIntercept)
        unit = (apply_voi_lut(values, ds) - low) / (high - low)
    else:
        unit = (values - values.min()) / (values.max() - values.min())
    return 1.0 - unit if ds.PhotometricInterpretation == "MONOCHROME1" else unit


# ---------------------------------------------------------------------------------------------
# Real DICOM files


@pytest.mark.parametrize("name", [
    "RG1_UNCR.dcm",   # CR 1955x1841, MONOCHROME1, 15-bit, window
    "MR2_UNCR.dcm",   # rescale slope 3.77, window
    "MR_small.dcm",   # signed 16-bit, window
    "693_UNCR.dcm",   # CT, rescale + window
    "CT_small.dcm",   # no window: min-max
    "mlut_18.dcm",    # Modality LUT Sequence with a negative first mapped value
    "vlut_04.dcm",    # VOI LUT Sequence
])
def test_calibration_matches_pydicom(name):
    path = real_file(name)
    image = read_non_mg(path)
    expected = pydicom_reference(pydicom.dcmread(path))
    assert image.pixels.dtype == np.float32 and image.pixels.shape == expected.shape
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0


@pytest.mark.parametrize("uncompressed, compressed", [
    ("RG1_UNCR.dcm", "RG1_J2KR.dcm"),  # JPEG 2000 lossless, 1955x1841
    ("RG1_UNCI.dcm", "RG1_J2KI.dcm"),  # JPEG 2000 lossy (UNCI is its decompressed twin)
    ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),
    ("MR_small.dcm", "MR_small_bigendian.dcm"),
    ("MR_small.dcm", "MR_small_RLE.dcm"),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
    ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
])
def test_real_compressed_files_equal_their_uncompressed_twin(uncompressed, compressed):
    reference = read_non_mg(real_file(uncompressed))
    image = read_non_mg(real_file(compressed))
    assert image.transfer_syntax_uid != reference.transfer_syntax_uid
    np.testing.assert_array_equal(image.stored_pixels, reference.stored_pixels)
    np.testing.assert_array_equal(image.pixels, reference.pixels)


@pytest.mark.parametrize("name, decode, tolerance", [
    ("JPEG-LL.dcm", "ljpeg_decode", 0),                  # JPEG Lossless SV1, 16-bit
    ("JPEGLSNearLossless_16.dcm", "jpegls_decode", 0),   # JPEG-LS near-lossless, 16-bit
    ("JPGExtended.dcm", "jpeg8_decode", 1),              # JPEG Extended 12-bit: IDCTs may round apart
])
def test_real_jpeg_files_match_an_independent_decoder(name, decode, tolerance):
    """pydicom's decoders (pylibjpeg-libjpeg) against imagecodecs (libjpeg-turbo / CharLS)."""
    imagecodecs = pytest.importorskip("imagecodecs")
    path = real_file(name)
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    expected = getattr(imagecodecs, decode)(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotMammogramWarning)
        image = read_dicom(path)
    assert np.abs(image.stored_pixels.astype(np.int64) - expected.astype(np.int64)).max() <= tolerance
    np.testing.assert_allclose(image.pixels, pydicom_reference(ds), atol=1e-6)


def test_real_monochrome1_radiograph_metadata():
    image = read_non_mg(real_file("RG1_UNCR.dcm"))
    assert image.photometric_interpretation == "MONOCHROME1"
    assert image.calibration.invert and image.calibration.voi == "window"
    assert (image.calibration.window_center, image.calibration.window_width) == (15000.0, 30000.0)
    assert image.manufacturer == "Philips Medical Systems"
    assert image.pixel_spacing is None  # the file says 0.000 \ 0.000, which is no spacing
    assert image.modality == "CR" and image.bits_stored == 15
    assert image.path == real_file("RG1_UNCR.dcm")


# ---------------------------------------------------------------------------------------------
# Generated MG files in every transfer syntax


def _variant(index):
    """Spread lateralities and views over the parametrised syntaxes."""
    return "LR"[index % 2], ("CC", "MLO")[(index // 2) % 2]


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("index, syntax", list(enumerate(name for name in TRANSFER_SYNTAXES if name != "explicit")))
def test_generated_compressed_mg_equals_uncompressed_twin(tmp_path, index, syntax, photometric):
    package = missing_encoder(syntax)
    if package:
        pytest.skip(f"writing {syntax} needs {package}")
    laterality, view = _variant(index)
    center, width = 2000.0, 3000.0
    options = dict(laterality=laterality, view_position=view, photometric=photometric, window=(center, width),
                   seed=index)
    twin = read_dicom(write_mammogram(tmp_path / "twin.dcm", **options))
    image = read_dicom(write_mammogram(tmp_path / f"{syntax}.dcm", transfer_syntax=syntax, **options))
    assert image.transfer_syntax_uid == TRANSFER_SYNTAXES[syntax]
    assert (image.laterality, image.view_position, image.photometric_interpretation) == (laterality, view, photometric)
    difference = np.abs(image.pixels.astype(np.float64) - twin.pixels)
    if syntax not in LOSSY:
        assert difference.max() == 0.0
    elif syntax == "jpegls_near_lossless":  # at most NEAR stored units, i.e. NEAR / (w - 1) after the window
        assert difference.max() <= JPEG_LS_NEAR_ERROR / (width - 1) + 1e-6
    else:
        assert difference.mean() < 2e-3 and difference.max() < 0.03


@pytest.mark.parametrize("voi", [
    dict(window=(1800.0, 2500.0)),
    dict(window=(1800.0, 2500.0), voi_function="LINEAR_EXACT"),
    dict(window=(1800.0, 2500.0), voi_function="SIGMOID"),
    dict(window=(900.0, 1200.0), rescale=(0.5, 100.0)),
    dict(),  # no VOI: min-max
    dict(voi_lut=(500, 8, np.linspace(0, 255, 3000).round())),
])
def test_monochrome1_is_inverted(voi):
    """The factory stores MONOCHROME1 pixels inverted (and mirrors the VOI): calibration must undo it."""
    pixels = breast_pixels(64, 48, bits_stored=12, seed=3)
    monochrome2 = read_dicom(mammogram_dataset(pixels, photometric="MONOCHROME2", **voi))
    monochrome1 = read_dicom(mammogram_dataset(pixels, photometric="MONOCHROME1", **voi))
    assert not np.array_equal(monochrome1.stored_pixels, monochrome2.stored_pixels)
    np.testing.assert_allclose(monochrome1.pixels, monochrome2.pixels, atol=1e-6)
    # The breast (chest wall side) is brighter than the background corner in both.
    assert monochrome1.pixels[32, 2] > monochrome1.pixels[60, 46]


# ---------------------------------------------------------------------------------------------
# Calibration values worked out by hand from the DICOM formulas (PS3.3 C.11)


def calibrate(stored, **options):
    ds = mammogram_dataset(np.array([stored], dtype=np.uint16), laterality_tags=(), **options)
    return read_dicom(ds).pixels[0].astype(np.float64)


def test_linear_window_by_hand():
    # c = 100, w = 101: 0 at or below 49.5, 1 above 149.5, else (x - 99.5) / 100 + 0.5.
    stored = [0, 49, 50, 99, 100, 149, 150, 4095]
    np.testing.assert_allclose(calibrate(stored, window=(100, 101)),
                               [0, 0, 0.005, 0.495, 0.505, 0.995, 1, 1], atol=1e-6)
    # Width 1 is a threshold: below the centre 0, from the centre on 1 (PS3.3 C.11.2.1.2.1 note 5).
    np.testing.assert_array_equal(calibrate([99, 100, 101], window=(100, 1)), [0, 1, 1])


def test_linear_exact_and_sigmoid_by_hand():
    np.testing.assert_allclose(calibrate([75, 100, 110, 124, 130], window=(100, 50), voi_function="LINEAR_EXACT"),
                               [0, 0.5, 0.7, 0.98, 1], atol=1e-6)
    # SIGMOID: 1 / (1 + exp(-4 (x - c) / w))
    np.testing.assert_allclose(calibrate([75, 100, 125], window=(100, 50), voi_function="SIGMOID"),
                               [1 / (1 + math.exp(2)), 0.5, 1 / (1 + math.exp(-2))], atol=1e-6)


def test_rescale_is_applied_before_the_window():
    # slope 2, intercept -100: stored 50 -> 0, 100 -> 100, 125 -> 150; window (100, 200) LINEAR_EXACT.
    np.testing.assert_allclose(
        calibrate([50, 100, 125], window=(100, 200), voi_function="LINEAR_EXACT", rescale=(2.0, -100.0)),
        [0, 0.5, 0.75], atol=1e-6)


def test_several_windows_take_the_first_by_default():
    windows = [(100.0, 50.0), (1000.0, 500.0)]
    ds = mammogram_dataset(np.array([[100, 1000]], dtype=np.uint16), window=windows, voi_function="LINEAR_EXACT")
    np.testing.assert_allclose(read_dicom(ds).pixels[0], [0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(read_dicom(ds, voi_index=1).pixels[0], [0.0, 0.5], atol=1e-6)
    with pytest.raises(DicomError, match=r"voi_index=2 but the file lists 2 window\(s\)"):
        read_dicom(ds, voi_index=2)


def test_voi_lut_sequence_by_hand():
    # First mapped value 10; values below map to entry 0, above the table to its last entry.
    table = np.array([0, 51, 102, 153, 204, 255])
    np.testing.assert_allclose(calibrate([9, 10, 12, 15, 100], voi_lut=(10, 8, table)),
                               [0, 0, 0.4, 1, 1], atol=1e-6)


def test_no_voi_uses_the_image_range():
    np.testing.assert_allclose(calibrate([100, 300, 500]), [0, 0.5, 1], atol=1e-6)


def test_precision_is_kept():
    """Every one of the 4096 12-bit values stays distinct: no 8-bit round trip."""
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    pixels = read_dicom(mammogram_dataset(ramp, window=(2048, 4097), laterality_tags=())).pixels
    assert pixels.dtype == np.float32
    assert np.unique(pixels).size == 4096
    assert np.all(np.diff(pixels.ravel()) > 0)


def test_calibrate_applies_to_parts_of_the_image():
    image = read_dicom(mammogram_dataset(window=(2000, 3000), voi_function="SIGMOID"))
    np.testing.assert_array_equal(image.calibrate(image.stored_pixels[10:30, 5:20]), image.pixels[10:30, 5:20])
    preview, stride = image.preview()
    np.testing.assert_array_equal(preview, image.pixels[::stride, ::stride])


# ---------------------------------------------------------------------------------------------
# Metadata


def test_metadata(tmp_path):
    path = write_mammogram(
        tmp_path / "mlo.dcm", laterality="R", view_position="MLO", patient_id="P42",
        study_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5", imager_pixel_spacing=(0.065, 0.07),
        manufacturer="GE MEDICAL SYSTEMS", bits_stored=14, window=(8000, 16000))
    image = read_dicom(path)
    assert (image.laterality, image.laterality_source) == ("R", "ImageLaterality")
    assert image.view_position == "MLO"
    assert image.pixel_spacing == (0.065, 0.07)  # only ImagerPixelSpacing in the file
    assert (image.patient_id, image.study_instance_uid, image.sop_instance_uid) == ("P42", "1.2.3.4", "1.2.3.4.5")
    assert (image.manufacturer, image.modality, image.bits_stored) == ("GE MEDICAL SYSTEMS", "MG", 14)
    assert image.photometric_interpretation == "MONOCHROME2" and image.path == str(path)


def test_pixel_spacing_prefers_pixel_spacing():
    ds = mammogram_dataset(pixel_spacing=(0.1, 0.1), imager_pixel_spacing=(0.07, 0.07))
    assert read_dicom(ds).pixel_spacing == (0.1, 0.1)


def test_laterality_falls_back_to_the_laterality_tag_then_the_pixels():
    from_series = read_dicom(mammogram_dataset(laterality="L", laterality_tags=("Laterality",)))
    assert (from_series.laterality, from_series.laterality_source) == ("L", "Laterality")
    for laterality in "LR":
        untagged = read_dicom(mammogram_dataset(laterality=laterality, laterality_tags=()))
        assert (untagged.laterality, untagged.laterality_source) == (laterality, "pixels")
    # "B" (both) is not a side: the pixels decide.
    both = read_dicom(mammogram_dataset(breast_pixels(laterality="R"), laterality="B"))
    assert (both.laterality, both.laterality_source) == ("R", "pixels")


def test_view_from_view_code_sequence():
    ds = mammogram_dataset(view_position=None)
    item = pydicom.Dataset()
    item.CodeMeaning = "medio-lateral oblique"
    ds.ViewCodeSequence = [item]
    assert read_dicom(ds).view_position == "MLO"


# ---------------------------------------------------------------------------------------------
# Bad input: a DicomError naming the file and the cause


def test_not_a_dicom_file(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not an image")
    with pytest.raises(DicomError, match=rf"^{path}: not a DICOM file \("):
        read_dicom(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.dcm: no such DICOM file"):
        read_dicom(tmp_path / "missing.dcm")


def test_no_pixel_data(tmp_path):
    ds = mammogram_dataset()
    del ds.PixelData
    path = write_dataset(ds, tmp_path / "header_only.dcm")
    with pytest.raises(DicomError, match=rf"^{path}: no pixel data \(SOP class Digital Mammography X-Ray Image "
                                         r"Storage - For Presentation\)"):
        read_dicom(path)


def test_truncated_pixel_data(tmp_path):
    path = write_mammogram(tmp_path / "truncated.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    with pytest.raises(DicomError, match=rf"^{path}: could not decode the pixel data \(Explicit VR Little Endian\)"):
        read_dicom(path)


def test_multi_frame_is_refused():
    path = real_file("emri_small.dcm")  # MR, 10 frames
    with pytest.raises(DicomError, match=r"emri_small.dcm: multi-frame data \(10 frames"):
        read_non_mg(path)


@pytest.mark.parametrize("name, photometric", [("SC_rgb.dcm", "RGB"), ("OBXXXX1A.dcm", "PALETTE COLOR")])
def test_colour_is_refused(name, photometric):
    with pytest.raises(DicomError, match=rf"{name}: unsupported pixel data: PhotometricInterpretation {photometric}"):
        read_non_mg(real_file(name))


@pytest.mark.parametrize("syntax, uid, package", [
    ("jpeg2000_lossless", JPEG2000Lossless, "pylibjpeg pylibjpeg-openjpeg"),
    ("jpegls_lossless", JPEGLSLossless, "pylibjpeg pylibjpeg-libjpeg"),
])
def test_missing_decoder_names_the_package(tmp_path, monkeypatch, syntax, uid, package):
    if missing_encoder(syntax):
        pytest.skip(f"writing {syntax} needs {missing_encoder(syntax)}")
    path = write_mammogram(tmp_path / "compressed.dcm", transfer_syntax=syntax)
    # Make every installed plugin for this syntax look absent, as on a machine without them.
    decoder = get_decoder(uid)
    monkeypatch.setattr(decoder, "_available", {})
    assert DECODER_PACKAGES[str(uid)] == package
    with pytest.raises(DicomError) as raised:
        read_dicom(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: pixel data is compressed with {uid.name} ({uid})")
    assert message.endswith(f"install one with `pip install {package}`.")


def test_non_mammogram_warns_or_is_refused():
    path = real_file("RG1_UNCR.dcm")
    with pytest.warns(NotMammogramWarning, match=r"RG1_UNCR.dcm: Modality is CR, not MG"):
        read_dicom(path)
    with pytest.raises(DicomError, match=r"RG1_UNCR.dcm: Modality is CR, not MG"):
        read_dicom(path, refuse_non_mg=True)


def test_mammogram_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_dicom(mammogram_dataset(), refuse_non_mg=True)
    assert image.path is None  # an in-memory dataset has no file


@pytest.mark.parametrize("options, message", [
    (dict(window=(100, 50), voi_function="FANCY"), r"VOILUTFunction 'FANCY' is not one of"),
    (dict(window=(100, 0.5)), r"WindowWidth 0.5 is invalid for the LINEAR VOI function"),
    (dict(window=(100, 0), voi_function="SIGMOID"), r"WindowWidth 0.0 is invalid for the SIGMOID VOI function"),
])
def test_invalid_voi_is_refused(options, message):
    with pytest.raises(DicomError, match=message):
        read_dicom(mammogram_dataset(**options))


def test_dataset_without_a_file_is_named_by_its_uid():
    ds = mammogram_dataset(sop_instance_uid="1.2.826.0.1.99", window=(100, 50), voi_function="FANCY")
    with pytest.raises(DicomError, match=r"^<pydicom Dataset SOPInstanceUID=1.2.826.0.1.99>: VOILUTFunction"):
        read_dicom(ds)


@pytest.mark.parametrize("rescale", [(0.0, 100.0), (float("nan"), 0.0), (1.0, float("inf"))])
def test_broken_rescale_is_refused_naming_the_file(tmp_path, rescale):
    path = write_mammogram(tmp_path / "zero_slope.dcm", rescale=rescale)
    with pytest.raises(DicomError, match=rf"^{path}: RescaleSlope .* would turn every pixel into the same value"):
        read_dicom(path)


def test_a_folder_is_not_a_dicom_file(tmp_path):
    write_mammogram(tmp_path / "L-CC.dcm")
    with pytest.raises(DicomError, match=rf"^{tmp_path} is a folder, not a DICOM file \(it holds L-CC.dcm\): "
                                         "pass one of its files"):
        read_dicom(tmp_path)


# ----------------------------------------------------------------------------------------------
# Reduced-resolution JPEG 2000 decoding
# ----------------------------------------------------------------------------------------------


def low_pass_53(stored: np.ndarray, levels: int) -> np.ndarray:
    """The LL band of `levels` levels of JPEG 2000's reversible 5/3 wavelet (ISO/IEC 15444-1 F.4.8.2:
    integer lifting, symmetric extension, vertical then horizontal), computed here from the full image."""

    def low(values: np.ndarray, axis: int) -> np.ndarray:
        values = np.moveaxis(values, axis, 0)
        length = values.shape[0]
        padded = np.pad(values, [(2, 2)] + [(0, 0)] * (values.ndim - 1), mode="reflect")
        odd = np.arange(-1, length + 1, 2)
        high = padded[odd + 2] - ((padded[odd + 1] + padded[odd + 3]) >> 1)
        index = np.arange(0, length, 2) // 2
        return np.moveaxis(padded[2 * index + 2] + ((high[index] + high[index + 1] + 2) >> 2), 0, axis)

    values = stored.astype(np.int64)
    for _ in range(levels):
        values = low(low(values, 0), 1)
    return values


def signed_jpeg2000(tmp_path, pixels: np.ndarray, bits: int = 12):
    """A JPEG 2000 MG file with PixelRepresentation 1 (stored = value - 2**(bits - 1))."""
    ds = mammogram_dataset(pixels, bits_stored=bits, window=(0.0, 3000.0))
    offset = 2 ** (bits - 1)
    ds.PixelRepresentation = 1
    signed = (pixels.astype(np.int32) - offset).astype(np.int16)
    ds.PixelData = signed.tobytes()
    ds.compress(JPEG2000Lossless, signed)
    return write_dataset(ds, tmp_path / "signed.dcm")


@pytest.mark.parametrize("bits, photometric, rows, cols", [
    (12, "MONOCHROME2", 203, 139),  # odd sizes: JPEG 2000 rounds the reduced size up
    (14, "MONOCHROME1", 160, 128),
    (16, "MONOCHROME2", 150, 131),
])
def test_reduced_jpeg2000_is_the_codestream_low_pass_of_the_full_decode(tmp_path, bits, photometric, rows, cols):
    """Reduced decodes equal the wavelet low pass of pydicom's full decode exactly: same value scale
    (Pillow's rescaling of 12 / 14-bit samples to 16 bits is undone) and same calibration."""
    pixels = breast_pixels(rows, cols, bits_stored=bits, seed=bits)
    path = write_mammogram(tmp_path / "j2k.dcm", pixels, transfer_syntax="jpeg2000_lossless", bits_stored=bits,
                           photometric=photometric, window=(0.5 * 2**bits, 0.7 * 2**bits), rescale=(1.0, -10.0))
    full = read_dicom(path)
    reference = pydicom.dcmread(path).pixel_array
    assert full.reduction == 0 and full.native_shape == (rows, cols)
    for reduce in (1, 2):
        image = read_dicom(path, reduce=reduce)
        assert image.reduction == reduce
        assert image.shape == (-(-rows // 2**reduce), -(-cols // 2**reduce))
        assert image.stored_pixels.dtype == reference.dtype
        expected = np.clip(low_pass_53(reference, reduce), 0, 2**bits - 1)
        assert np.array_equal(image.stored_pixels, expected)
        probe = np.arange(0, 2**bits, 7, dtype=np.uint16)
        assert np.array_equal(image.calibrate(probe), full.calibrate(probe))
        assert (image.laterality, image.view_position, image.native_shape) == ("L", "CC", (rows, cols))


def test_reduced_jpeg2000_signed_pixels_match_pydicom(tmp_path):
    pixels = breast_pixels(120, 96, seed=3)
    path = signed_jpeg2000(tmp_path, pixels)
    reference = pydicom.dcmread(path).pixel_array
    assert reference.dtype == np.int16 and reference.min() < 0
    image = read_dicom(path, reduce=1)
    assert image.reduction == 1 and image.stored_pixels.dtype == np.int16
    assert np.array_equal(image.stored_pixels, np.clip(low_pass_53(reference, 1), -2048, 2047))


def test_reduced_lossy_jpeg2000_is_close_to_block_means(tmp_path):
    pixels = breast_pixels(256, 192, seed=5)
    path = write_mammogram(tmp_path / "lossy.dcm", pixels, transfer_syntax="jpeg2000", window=(2000.0, 3000.0))
    full, image = read_dicom(path), read_dicom(path, reduce=1)
    assert image.reduction == 1 and image.shape == (128, 96)
    means = full.pixels.reshape(128, 2, 96, 2).mean(axis=(1, 3))
    difference = np.abs(image.pixels - means)
    # The wavelet's low pass is centred on the even samples, half a pixel from the block means: they
    # differ on sharp edges (skin line, marker) only.
    assert difference.mean() < 0.01 and np.median(difference) < 0.002 and np.percentile(difference, 99) < 0.1


def test_reduce_is_capped_by_the_codestream_and_ignored_where_it_cannot_apply(tmp_path):
    pixels = breast_pixels(96, 64, seed=1)
    j2k = write_mammogram(tmp_path / "j2k.dcm", pixels, transfer_syntax="jpeg2000_lossless", window=(2000.0, 3000.0))
    image = read_dicom(j2k, reduce=30)
    assert 1 <= image.reduction < 30
    assert image.shape == (-(-96 // 2**image.reduction), -(-64 // 2**image.reduction))
    # RLE has no resolution levels; without a window the calibration needs the full image's range.
    rle = write_mammogram(tmp_path / "rle.dcm", pixels, transfer_syntax="rle", window=(2000.0, 3000.0))
    no_voi = write_mammogram(tmp_path / "minmax.dcm", pixels, transfer_syntax="jpeg2000_lossless")
    for path in (rle, no_voi):
        image = read_dicom(path, reduce=2)
        assert image.reduction == 0 and np.array_equal(image.pixels, read_dicom(path).pixels)
    # 137 / 4 = 34.25: Pillow would allocate 34 columns for the 35 OpenJPEG decodes, so one level less.
    odd = write_mammogram(tmp_path / "odd.dcm", breast_pixels(201, 137), transfer_syntax="jpeg2000_lossless",
                          window=(2000.0, 3000.0))
    assert read_dicom(odd, reduce=2).reduction == 1
    with pytest.raises(ValueError, match="reduce=-1"):
        read_dicom(j2k, reduce=-1)


def test_threaded_full_decode_equals_pydicom(tmp_path):
    pytest.importorskip("imagecodecs")
    pixels = breast_pixels(120, 96, seed=2)
    path = write_mammogram(tmp_path / "j2k.dcm", pixels, transfer_syntax="jpeg2000_lossless", window=(2000.0, 3000.0))
    assert np.array_equal(read_dicom(path, decode_threads=2).stored_pixels, pydicom.dcmread(path).pixel_array)
    signed = signed_jpeg2000(tmp_path, pixels)
    assert np.array_equal(read_dicom(signed, decode_threads=2).stored_pixels, pydicom.dcmread(signed).pixel_array)


# ---------------------------------------------------------------------------------------------
# View and laterality from what real files carry


def untagged(**tags):
    """An MG dataset with no ViewPosition and no laterality tag, plus `tags`."""
    ds = mammogram_dataset(view_position=None, laterality_tags=())
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def sources(image):
    return image.view_position, image.view_source, image.laterality, image.laterality_source


def test_view_and_laterality_sources_in_order_of_trust():
    assert sources(read_dicom(mammogram_dataset(laterality="R", view_position="MLO"))) == (
        "MLO", "ViewPosition", "R", "ImageLaterality")
    # A scanned film (CBIS-DDSM): the side in (0020,0060) Laterality, the view only in PatientOrientation.
    film = untagged(PatientOrientation="CC", Laterality="L")
    assert sources(read_dicom(film)) == ("CC", "PatientOrientation", "L", "Laterality")
    # Directions in PatientOrientation are not a view; the series description then speaks.
    described = untagged(PatientOrientation=["A", "R"], SeriesDescription="R MLO", ProtocolName="L CC")
    assert sources(read_dicom(described)) == ("MLO", "SeriesDescription", "R", "SeriesDescription")
    assert sources(read_dicom(untagged(ProtocolName="LCC Tomo-free"))) == ("CC", "ProtocolName", "L", "ProtocolName")
    # Last the dataset's own naming (e.g. the case folder), then the pixel mass for the side.
    hinted = read_dicom(untagged(SeriesDescription="full mammogram images"), name_hint="Calc-Test_P_00038_RIGHT_MLO")
    assert sources(hinted) == ("MLO", "hint", "R", "hint")
    nothing = read_dicom(untagged(SeriesDescription="CC and MLO", ProtocolName="L and R"))
    assert sources(nothing) == (None, None, "L", "pixels")  # both texts are ambiguous: nothing read from them
    # The tag wins over a hint that says otherwise.
    tagged = read_dicom(mammogram_dataset(laterality="L", view_position="CC"), name_hint="P_1_RIGHT_MLO")
    assert sources(tagged) == ("CC", "ViewPosition", "L", "ImageLaterality")


@pytest.mark.parametrize("text, view, laterality", [
    ("Mass-Training_P_00001_LEFT_CC", "CC", "L"),
    ("Calc-Test_P_00038_RIGHT_MLO_1", "MLO", "R"),
    ("L MLO", "MLO", "L"),
    ("RCC", "CC", "R"),
    ("XCCL", "XCCL", None),               # a view code, not "XCC" + left
    ("LM", "LM", None),                   # latero-medial, not "left M"
    ("left cranio-caudal", "CC", "L"),
    ("medio-lateral oblique", "MLO", None),
    ("full mammogram images", None, None),
    ("ROI mask images", None, None),
    ("view at 90 degrees", None, None),   # "AT" is a word here, not the axillary tail view
    ("R CC, R MLO", None, "R"),           # two views: no view
])
def test_view_and_laterality_from_text(text, view, laterality):
    assert (view_from_text(text), laterality_from_text(text)) == (view, laterality)
