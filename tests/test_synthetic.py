"""Synthetic EMBED / RSNA / VinDr look-alikes: layout, DICOM validity, labels in the pixels, determinism."""

import ast
import filecmp
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from scipy import ndimage
from scripts import load_script

from modeling_mama.data.synthetic import (
    DicomEncoding,
    Lesion,
    generate_embed,
    generate_rsna,
    generate_vindr,
    mammogram_dataset,
    parse_image_size,
    render_mammogram,
)
from modeling_mama.data.synthetic import rendering as synthetic_rendering

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"

# Column lists copied from DATASETS.md (independently of the module's constants).
EMBED_METADATA = ("empi_anon, acc_anon, anon_dicom_path, png_path, png_filename, study_date_anon, "
                  "StudyDescription, SeriesDescription, FinalImageType, ImageLateralityFinal, ViewPosition, "
                  "spot_mag, num_roi, ROI_coords, SRC_DST, match_level").split(", ")
EMBED_CLINICAL = ("empi_anon, acc_anon, study_date_anon, desc, tissueden, asses, numfind, side, total_l_find, "
                  "total_r_find, massshape, massmargin, massdens, calcfind, calcdistri, bside, procdate_anon, "
                  "type, path1, path2, path3, path4, path5, path6, path7, path8, path9, path10, path_severity, "
                  "RACE_DESC, ETHNIC_GROUP_DESC, age_at_study").split(", ")
RSNA_TRAIN = ("site_id, patient_id, image_id, laterality, view, age, cancer, biopsy, invasive, BIRADS, implant, "
              "density, machine_id, difficult_negative_case").split(", ")
VINDR_BREAST = ("study_id, series_id, image_id, laterality, view_position, height, width, breast_birads, "
                "breast_density, split").split(", ")
VINDR_FINDING_EXTRA = ["finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax"]

SIZE = (96, 80)


def display(ds):
    """What a viewer shows, in [0, 1] with dense = bright: modality LUT, first window, MONOCHROME1 inverted."""
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0).astype(np.float64)
    slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    low, high = intercept, slope * (2**ds.BitsStored - 1) + intercept
    shown = (values - low) / (high - low)
    return 1.0 - shown if ds.PhotometricInterpretation == "MONOCHROME1" else shown


def lesion_pixels(with_findings: Path, without_findings: Path):
    """Stored-pixel increase due to the findings (MONOCHROME1 stores dark = dense, hence the sign)."""
    shown, plain = pydicom.dcmread(with_findings), pydicom.dcmread(without_findings)
    difference = (shown.pixel_array.astype(np.int64) - plain.pixel_array.astype(np.int64)) / (2**shown.BitsStored - 1)
    return -difference if shown.PhotometricInterpretation == "MONOCHROME1" else difference


def without_drawing_findings(generate, out_dir, **options):
    """The same dataset with the findings left out of the pixels (tables and everything else equal)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic_rendering, "_draw_lesion", lambda *args, **kwargs: None)
        return generate(out_dir, **options)


def box_mask(shape, boxes, margin=1):
    mask = np.zeros(shape, bool)
    for y0, x0, y1, x1 in boxes:
        rows = slice(max(0, int(y0) - margin), int(np.ceil(y1)) + margin)
        mask[rows, max(0, int(x0) - margin):int(np.ceil(x1)) + margin] = True
    return mask


@pytest.fixture(scope="module")
def embed_root(tmp_path_factory):
    return generate_embed(tmp_path_factory.mktemp("embed"), num_exams=14, image_size=SIZE, seed=3, progress=False)


@pytest.fixture(scope="module")
def embed_plain_root(tmp_path_factory):
    return without_drawing_findings(generate_embed, tmp_path_factory.mktemp("embed_plain"), num_exams=14,
                                    image_size=SIZE, seed=3, progress=False)


@pytest.fixture(scope="module")
def embed_tables(embed_root):
    tables = embed_root / "tables"
    return (pd.read_csv(tables / "EMBED_OpenData_metadata.csv"), pd.read_csv(tables / "EMBED_OpenData_clinical.csv"),
            pd.read_csv(tables / "AWS_Open_Data_Clinical_Legend.csv", dtype=str))


def local_path(root, anon_dicom_path):
    return root / anon_dicom_path.split("/anon_dicom/", 1)[1]


# ---------------------------------------------------------------------------------------------- pixels


def test_render_is_deterministic_and_depends_on_the_seed():
    kwargs = dict(height=64, width=52, laterality="L", view="MLO", density=2, findings=[Lesion(kind="mass")])
    first = render_mammogram(np.random.default_rng(5), **kwargs)
    again = render_mammogram(np.random.default_rng(5), **kwargs)
    other = render_mammogram(np.random.default_rng(6), **kwargs)
    assert first.dtype == np.uint16 and first.shape == (64, 52)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_render_fits_the_stored_bits_and_rejects_bad_arguments():
    pixels = render_mammogram(np.random.default_rng(0), height=64, width=52, laterality="R", view="CC",
                              density=4, findings=[Lesion(kind="calcifications")], bits_stored=12)
    assert pixels.max() < 2**12 and pixels.max() > 2**11  # dense breast + calcifications use the range
    with pytest.raises(ValueError, match="bits_stored=20"):
        render_mammogram(np.random.default_rng(0), height=64, width=52, laterality="R", view="CC",
                         density=1, findings=[], bits_stored=20)
    with pytest.raises(ValueError, match="Unknown view 'AXIAL'"):
        render_mammogram(np.random.default_rng(0), height=64, width=52, laterality="R", view="AXIAL",
                         density=1, findings=[])
    with pytest.raises(ValueError, match="laterality='B'"):
        render_mammogram(np.random.default_rng(0), height=64, width=52, laterality="B", view="CC",
                         density=1, findings=[])
    with pytest.raises(ValueError, match="density=0"):
        render_mammogram(np.random.default_rng(0), height=64, width=52, laterality="L", view="CC",
                         density=0, findings=[])
    with pytest.raises(ValueError, match="Lesion.kind='tumour'"):
        Lesion(kind="tumour")


def test_dense_fraction_and_brightness_follow_density():
    fractions, brightness = {}, {}
    for density in (1, 2, 3, 4):
        per_image_fraction, per_image_mean = [], []
        for seed in range(6):
            signal = render_mammogram(np.random.default_rng(1000 + seed), height=128, width=104, laterality="L",
                                      view="CC", density=density, findings=[], bits_stored=12) / 4095.0
            breast = signal > 0.12
            per_image_fraction.append(np.mean(signal[breast] > 0.42))
            per_image_mean.append(signal[breast].mean())
        fractions[density], brightness[density] = np.mean(per_image_fraction), np.mean(per_image_mean)
    assert fractions[1] < fractions[2] < fractions[3] < fractions[4]
    assert brightness[1] < brightness[2] < brightness[3] < brightness[4]
    for density, target in {1: 0.10, 2: 0.30, 3: 0.55, 4: 0.80}.items():
        assert abs(fractions[density] - target) < 0.08, (density, fractions[density])


def test_chest_wall_side_and_pectoral_muscle():
    for laterality in ("L", "R"):
        pixels = render_mammogram(np.random.default_rng(3), height=96, width=80, laterality=laterality, view="MLO",
                                  density=1, findings=[]).astype(float)
        chest_wall = slice(0, 12) if laterality == "L" else slice(68, 80)
        far_side = slice(68, 80) if laterality == "L" else slice(0, 12)
        assert pixels[:, chest_wall].mean() > 2 * pixels[:, far_side].mean()
        # The muscle triangle in the upper chest-wall corner is brighter than the fatty breast.
        breast = pixels[pixels > 0.12 * 65535]
        assert pixels[:8, chest_wall].mean() > np.median(breast) * 1.3


@pytest.mark.parametrize("lesion", [
    Lesion(kind="mass", shape="irregular", margin="spiculated", density="high", size=0.07),
    Lesion(kind="calcifications", morphology="pleomorphic", distribution="clustered", size=0.03),
    Lesion(kind="mass", shape="round", density="low", size=0.03, position=(0.5, 0.3)),
])
def test_a_finding_changes_only_its_own_box(lesion):
    kwargs = dict(height=128, width=104, laterality="R", view="CC", density=3, bits_stored=12)
    plain = render_mammogram(np.random.default_rng(9), findings=[], **kwargs).astype(float)
    with_finding, boxes = render_mammogram(np.random.default_rng(9), findings=[lesion], return_boxes=True, **kwargs)
    difference = with_finding.astype(float) - plain
    (y0, x0, y1, x1), = boxes
    inside = np.zeros(difference.shape, bool)
    inside[max(0, int(y0) - 3):int(y1) + 4, max(0, int(x0) - 3):int(x1) + 4] = True
    brighter = np.clip(difference, 0, None)
    assert brighter[inside].sum() > 0.8 * brighter.sum()  # spicule tips may leave the box
    assert brighter[inside].max() > 0.1 * 4095
    assert np.abs(difference[~inside]).max() < 0.06 * 4095 or lesion.margin == "spiculated"


def test_dicom_encodings_show_the_same_picture():
    pixels = render_mammogram(np.random.default_rng(4), height=64, width=52, laterality="R", view="CC",
                              density=2, findings=[Lesion(kind="mass")], bits_stored=14)
    reference = None
    for encoding in [
        DicomEncoding(bits_stored=14),
        DicomEncoding(bits_stored=14, photometric="MONOCHROME1", rescale=(1.0, -512.0)),
        DicomEncoding(bits_stored=14, photometric="MONOCHROME1", rescale=(0.5, 0.0), transfer_syntax=JPEG2000_LOSSLESS),
        DicomEncoding(bits_stored=14, rescale=(0.5, 0.0), transfer_syntax=RLE_LOSSLESS, second_window=True),
    ]:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, mammogram_dataset(pixels, encoding, laterality="R", view_position="CC"),
                         enforce_file_format=True)
        ds = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
        assert ds.file_meta.TransferSyntaxUID == encoding.transfer_syntax
        stored = ds.pixel_array.astype(int)
        expected = 2**14 - 1 - pixels.astype(int) if encoding.photometric == "MONOCHROME1" else pixels.astype(int)
        assert np.array_equal(stored, expected)  # lossless
        shown = display(ds)
        reference = shown if reference is None else reference
        assert np.abs(shown - reference).max() < 0.01
    # The window spans the breast: the breast is neither crushed to black nor burnt to white.
    breast = reference[pixels > 0.12 * (2**14 - 1)]
    assert 0.2 < np.median(breast) < 0.8 and np.mean(breast >= 0.999) < 0.05


def test_dicom_dataset_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit in 12 stored bits"):
        mammogram_dataset(np.full((20, 20), 5000, np.uint16), DicomEncoding(bits_stored=12),
                          laterality="L", view_position="CC")
    with pytest.raises(ValueError, match="1.2.840.10008.1.2.4.50 is not written here"):
        mammogram_dataset(np.zeros((20, 20), np.uint16), DicomEncoding(transfer_syntax="1.2.840.10008.1.2.4.50"),
                          laterality="L", view_position="CC")


# ---------------------------------------------------------------------------------------------- EMBED


def test_embed_tables_have_the_published_columns(embed_tables):
    metadata, clinical, legend = embed_tables
    assert list(metadata.columns[:len(EMBED_METADATA)]) == EMBED_METADATA
    assert list(clinical.columns) == EMBED_CLINICAL
    assert {"Header in export", "Code", "Meaning"} <= set(legend.columns)
    for header in ("massshape", "massmargin", "massdens", "calcfind", "calcdistri"):
        codes = set(legend.loc[legend["Header in export"] == header, "Code"])
        used = set(clinical[header].dropna().astype(str))
        assert used <= codes, header


def test_embed_layout_and_absolute_paths(embed_root, embed_tables):
    metadata, _, _ = embed_tables
    provider_path = r"^/mnt/NAS2/mammo/anon_dicom/cohort_[12]/\d{8}/[\d.]+/[\d.]+\.dcm$"
    assert metadata.anon_dicom_path.str.match(provider_path).all()
    with_files = metadata[metadata.FinalImageType.isin(["2D", "C-view"])]
    assert all(local_path(embed_root, p).is_file() for p in with_files.anon_dicom_path)
    # Screen saves are listed but not released, as in the public data.
    screensaves = metadata[metadata.FinalImageType == "ROI_SSC"]
    assert len(screensaves) >= 1 and not any(local_path(embed_root, p).exists() for p in screensaves.anon_dicom_path)
    assert {"2D", "C-view", "ROI_SSC"} == set(metadata.FinalImageType)
    assert {"cohort_1", "cohort_2"} == {p.name for p in embed_root.iterdir() if p.name.startswith("cohort")}
    on_disk = {str(p.relative_to(embed_root)) for p in embed_root.rglob("*.dcm")}
    listed = {p.split("/anon_dicom/", 1)[1] for p in with_files.anon_dicom_path}
    assert on_disk == listed
    assert not list(embed_root.rglob("*.partial"))
    # Patient and study folders match the table's ids.
    for path, empi in zip(with_files.anon_dicom_path, with_files.empi_anon):
        assert path.split("/")[-3] == str(empi)


def test_embed_dicom_files_are_readable_mammograms(embed_root, embed_tables):
    metadata, _, _ = embed_tables
    syntaxes, photometrics, functions, laterality_tags, rescaled = set(), set(), set(), [], 0
    for row in metadata[metadata.FinalImageType != "ROI_SSC"].itertuples():
        ds = pydicom.dcmread(local_path(embed_root, row.anon_dicom_path))
        pixels = ds.pixel_array
        assert pixels.shape == SIZE and ds.Rows == SIZE[0]
        assert int(pixels.max()) < 2**ds.BitsStored and 12 <= ds.BitsStored <= 16
        assert ds.SOPClassUID == MG_FOR_PRESENTATION and ds.file_meta.MediaStorageSOPClassUID == MG_FOR_PRESENTATION
        assert ds.Modality == "MG" and ds.ViewPosition == row.ViewPosition
        assert ds.PatientID == str(row.empi_anon) and ds.AccessionNumber == str(row.acc_anon)
        assert ds.SOPInstanceUID == Path(row.anon_dicom_path).stem
        assert len(ds.PatientOrientation) == 2
        tag = ds.get("ImageLaterality", ds.get("Laterality"))
        laterality_tags.append(tag)
        if tag is not None:
            assert tag == row.ImageLateralityFinal
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        photometrics.add(ds.PhotometricInterpretation)
        functions.add(ds.get("VOILUTFunction", "absent"))
        rescaled += "RescaleSlope" in ds
    assert syntaxes == {EXPLICIT_LE, JPEG2000_LOSSLESS, RLE_LOSSLESS}
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert "SIGMOID" in functions and rescaled > 0
    assert None in laterality_tags  # a few files have no laterality tag at all


def test_embed_pixels_put_the_chest_wall_where_the_laterality_says(embed_root, embed_tables):
    metadata, _, _ = embed_tables
    whole_views = metadata[metadata.FinalImageType.isin(["2D", "C-view"]) & (metadata.spot_mag == 0)]
    for row in whole_views.itertuples():
        shown = display(pydicom.dcmread(local_path(embed_root, row.anon_dicom_path)))
        left, right = shown[:, :12].mean(), shown[:, -12:].mean()
        assert (left > right) == (row.ImageLateralityFinal == "L"), row.anon_dicom_path


def test_embed_findings_follow_birads(embed_root, embed_plain_root, embed_tables):
    metadata, clinical, _ = embed_tables
    assert filecmp.cmp(embed_root / "tables/EMBED_OpenData_metadata.csv",
                       embed_plain_root / "tables/EMBED_OpenData_metadata.csv", shallow=False)
    negative, positive, marked = 0, 0, 0
    for row in metadata[metadata.FinalImageType.isin(["2D", "C-view"])].itertuples():
        rows = clinical[clinical.acc_anon == row.acc_anon]
        same_side = set(rows.asses[(rows.side == row.ImageLateralityFinal) | (rows.side == "B")])
        relative = row.anon_dicom_path.split("/anon_dicom/", 1)[1]
        lesion = lesion_pixels(embed_root / relative, embed_plain_root / relative)
        assert lesion.min() > -0.02  # findings add density (the noise level differs a little)
        if same_side <= {"N"}:
            assert not lesion.any() and row.num_roi == 0 and row.ROI_coords == "()"
            negative += 1
            continue
        assert lesion.max() > 0.05, relative
        positive += 1
        if row.num_roi:
            assert same_side & {"A", "P", "S", "M", "K"}
            assert row.match_level == repr((1 if row.FinalImageType == "2D" else 2,) * row.num_roi)
            for box in ast.literal_eval(row.ROI_coords):
                inside = box_mask(lesion.shape, [box])
                assert lesion[inside].max() > 0.5 * lesion.max(), (relative, box)
            marked += 1
    assert negative >= 4 and positive >= 4 and marked >= 2


def test_embed_clinical_rows_are_plausible(embed_tables):
    metadata, clinical, _ = embed_tables
    assert set(clinical.asses) <= set("ANBPSMK") and {"N", "A", "S"} <= set(clinical.asses)
    assert set(clinical.side.dropna()) <= {"L", "R", "B"} and clinical.side.isna().any()
    assert set(clinical.tissueden.dropna()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    for acc, rows in clinical.groupby("acc_anon"):
        assert list(rows.numfind) == list(range(1, len(rows) + 1))
        assert rows.total_l_find.iloc[0] == ((rows.side.isin(["L", "B"])) & (rows.asses != "N")).sum()
        assert (rows.path_severity.notna() == rows.path1.notna()).all()
    # A BI-RADS 0 row with another row in the same exam, and a later work-up of that breast.
    recalls = clinical[clinical.asses == "A"]
    assert any((clinical.acc_anon == acc).sum() > 1 for acc in recalls.acc_anon)
    dates = pd.to_datetime(clinical.study_date_anon)
    followed_up = [
        ((clinical.empi_anon == r.empi_anon) & (dates > pd.Timestamp(r.study_date_anon))
         & (clinical.side == r.side) & clinical.desc.str.contains("Diagnostic")).any()
        for r in recalls.itertuples()
    ]
    assert any(followed_up)
    # Density is a property of the patient: every exam of a patient reports the same value.
    assert (clinical.dropna(subset=["tissueden"]).groupby("empi_anon").tissueden.nunique() == 1).all()
    assert set(metadata.acc_anon) == set(clinical.acc_anon)


def test_embed_dense_fraction_in_files_follows_tissueden(embed_root, embed_tables):
    metadata, clinical, _ = embed_tables
    density_of_exam = clinical.dropna(subset=["tissueden"]).groupby("acc_anon").tissueden.first()
    fractions = {}
    views = metadata[(metadata.FinalImageType == "2D") & (metadata.ViewPosition == "CC") & (metadata.spot_mag == 0)]
    for row in views.itertuples():
        if row.acc_anon not in density_of_exam:
            continue
        shown = display(pydicom.dcmread(local_path(embed_root, row.anon_dicom_path)))
        breast = shown[shown > 0.1]
        fractions.setdefault(density_of_exam[row.acc_anon], []).append(np.mean(breast > 0.5))
    means = [np.mean(fractions[d]) for d in sorted(fractions)]
    assert len(means) >= 2 and all(a < b for a, b in zip(means, means[1:])), fractions


def test_generation_is_deterministic_whatever_the_worker_count(tmp_path):
    options = dict(num_exams=5, image_size=(64, 52), seed=11, progress=False)
    one = generate_embed(tmp_path / "one", workers=1, **options)
    two = generate_embed(tmp_path / "two", workers=2, **options)
    other = generate_embed(tmp_path / "other", workers=1, **{**options, "seed": 12})
    files = sorted(str(p.relative_to(one)) for p in one.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(two)) for p in two.rglob("*") if p.is_file())
    assert any(f.endswith(".dcm") for f in files)
    _, mismatch, errors = filecmp.cmpfiles(one, two, files, shallow=False)
    assert mismatch == [] and errors == []
    for name in files[:3]:
        if name.endswith(".dcm"):
            assert np.array_equal(pydicom.dcmread(one / name).pixel_array, pydicom.dcmread(two / name).pixel_array)
    table = "tables/EMBED_OpenData_metadata.csv"
    assert (one / table).read_bytes() != (other / table).read_bytes()


def test_an_interrupted_run_leaves_no_partial_file_and_resumes(tmp_path, monkeypatch):
    options = dict(num_exams=3, image_size=(64, 52), seed=5, progress=False)
    reference = generate_embed(tmp_path / "reference", **options)

    real_write, calls = pydicom.dcmwrite, []

    def dies_on_the_third_file(filename, dataset, **kwargs):
        calls.append(filename)
        if len(calls) == 3:
            Path(filename).write_bytes(b"half a DICOM file")
            raise KeyboardInterrupt("killed")
        return real_write(filename, dataset, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", dies_on_the_third_file)
    target = tmp_path / "target"
    with pytest.raises(KeyboardInterrupt):
        generate_embed(target, **options)
    assert len(list(target.rglob("*.dcm"))) == 2  # the killed file never appears under its real name
    assert not list(target.rglob(".*.partial"))  # the interrupted write removed its temporary file
    assert not (target / "tables").exists()
    monkeypatch.setattr(pydicom, "dcmwrite", real_write)

    first_done = sorted(target.rglob("*.dcm"))[0]
    first_mtime = first_done.stat().st_mtime_ns
    generate_embed(target, **options)
    assert first_done.stat().st_mtime_ns == first_mtime  # complete files are not rewritten
    assert not list(target.rglob("*.partial"))
    files = sorted(str(p.relative_to(reference)) for p in reference.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(reference, target, files, shallow=False)
    assert mismatch == [] and errors == []


def test_a_folder_of_other_settings_is_refused(tmp_path):
    generate_vindr(tmp_path, num_studies=1, image_size=(48, 40), seed=0, progress=False)
    with pytest.raises(ValueError, match=r"\.synthetic\.json says this folder holds"):
        generate_vindr(tmp_path, num_studies=1, image_size=(48, 40), seed=1, progress=False)


# ---------------------------------------------------------------------------------------------- RSNA


def test_rsna_look_alike(tmp_path):
    options = dict(num_patients=6, image_size=(64, 52), seed=2, progress=False)
    root = generate_rsna(tmp_path / "rsna", **options)
    plain = without_drawing_findings(generate_rsna, tmp_path / "plain", **options)
    train = pd.read_csv(root / "train.csv")
    raw = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    assert list(train.columns) == RSNA_TRAIN
    assert raw.age.map(lambda a: a == "" or re.fullmatch(r"\d+\.0", a) is not None).all()
    assert (raw.BIRADS == "").any() and set(raw.BIRADS) - {""} <= {"0.0", "1.0", "2.0"}
    assert (raw.density == "").any() and set(raw.density) - {""} <= set("ABCD")
    breast_labels = train.groupby(["patient_id", "laterality"])[["cancer", "biopsy", "invasive", "BIRADS"]]
    assert (breast_labels.nunique(dropna=False) == 1).all().all()  # labels belong to the breast, not the view
    assert train.cancer.sum() > 0 and (train.cancer == 0).any() and (train.invasive <= train.cancer).all()
    assert (train.difficult_negative_case == ((train.biopsy == 1) & (train.cancer == 0))).all()
    syntaxes = []
    for row in train.itertuples():
        relative = Path("train_images") / str(row.patient_id) / f"{row.image_id}.dcm"
        ds = pydicom.dcmread(root / relative)
        assert ds.PatientID == str(row.patient_id) and ds.pixel_array.shape == (64, 52)
        assert ds.get("ImageLaterality", ds.get("Laterality", row.laterality)) == row.laterality
        syntaxes.append(ds.file_meta.TransferSyntaxUID)
        lesion = lesion_pixels(root / relative, plain / relative)
        if row.cancer:
            assert lesion.max() > 0.05  # every view of a cancer breast shows it
        elif row.BIRADS == 1.0:
            assert not lesion.any()
    assert syntaxes.count(JPEG2000_LOSSLESS) > len(syntaxes) / 2 and EXPLICIT_LE in syntaxes
    test = pd.read_csv(root / "test.csv")
    assert "cancer" not in test.columns and len(test) > 0
    assert all((root / "test_images" / str(r.patient_id) / f"{r.image_id}.dcm").is_file() for r in test.itertuples())


# ---------------------------------------------------------------------------------------------- VinDr


def test_vindr_look_alike(tmp_path):
    options = dict(num_studies=5, image_size=(96, 80), seed=4, progress=False)
    root = generate_vindr(tmp_path / "vindr", **options)
    plain = without_drawing_findings(generate_vindr, tmp_path / "plain", **options)
    breasts = pd.read_csv(root / "breast-level_annotations.csv")
    findings = pd.read_csv(root / "finding_annotations.csv")
    assert list(breasts.columns) == VINDR_BREAST
    assert set(findings.columns) == set(VINDR_BREAST + VINDR_FINDING_EXTRA)
    for ids in (breasts.study_id, breasts.series_id, breasts.image_id):
        assert ids.str.fullmatch(r"[0-9a-f]{32}").all()
    assert set(breasts.breast_birads) <= {f"BI-RADS {n}" for n in range(1, 6)}
    assert set(breasts.breast_density) <= {f"DENSITY {c}" for c in "ABCD"}
    assert set(breasts.split) <= {"training", "test"}
    assert (breasts.groupby("study_id").size() == 4).all()
    assert (breasts.groupby(["study_id", "laterality"]).breast_birads.nunique() == 1).all()
    boxed = 0
    for row in findings.itertuples():
        relative = Path("images") / row.study_id / f"{row.image_id}.dicom"
        ds = pydicom.dcmread(root / relative)
        assert (ds.Rows, ds.Columns) == (row.height, row.width)
        lesion = lesion_pixels(root / relative, plain / relative)
        categories = ast.literal_eval(row.finding_categories)
        if categories == ["No Finding"]:
            assert np.isnan(row.xmin) and pd.isna(row.finding_birads)
            assert lesion.any() == (row.breast_birads != "BI-RADS 1")  # benign BI-RADS 2 findings are not boxed
            continue
        assert 0 <= row.xmin < row.xmax <= row.width and 0 <= row.ymin < row.ymax <= row.height
        inside = box_mask(lesion.shape, [(row.ymin, row.xmin, row.ymax, row.xmax)])
        assert lesion[inside].max() == lesion.max() > 0 and row.finding_birads == row.breast_birads
        boxed += 1
    assert boxed >= 2


# ---------------------------------------------------------------------------------------------- CLI


def test_image_size_parsing():
    assert parse_image_size("256x208") == (256, 208)
    assert parse_image_size(" FULL ") == (3328, 2560)
    with pytest.raises(ValueError, match="must look like '256x208'"):
        parse_image_size("256 by 208")
    with pytest.raises(ValueError, match="too small"):
        parse_image_size((8, 8))


def test_command_line(tmp_path, capsys):
    main = load_script("data_scripts/synthetic.py").main
    assert main(["--out", str(tmp_path / "v"), "--format", "vindr", "--num-exams", "1",
                 "--image-size", "48x40", "--seed", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "v")
    assert len(list((tmp_path / "v" / "images").glob("*/*.dicom"))) == 4
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "w"), "--image-size", "tiny"])
    assert "must look like" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- film


def test_film_look_alike_truth():
    from modeling_mama.data.synthetic.film import FilmLook, film_mammogram, text_bitmap

    look = FilmLook(bright_bands={"left": 0.1, "top": 0.05}, dark_band=("bottom", 0.04), label="RCC", scratches=0,
                    dust=0.0)
    film = film_mammogram(np.random.default_rng(0), height=200, width=160, laterality="R", view="CC", density=2,
                          look=look)
    unit = film.pixels / 65535.0
    assert film.bands == {"left": 16, "top": 10, "bottom": 8}
    assert unit[50:150, :14].mean() > 0.85 and unit[:8, 40:120].mean() > 0.85   # bright film edges
    assert unit[-6:, 40:120].mean() < 0.05                                       # the scanner bed beyond the film
    x0, y0, x1, y1 = film.label_box
    assert (y1 - y0, x1 - x0) == text_bitmap("RCC", (y1 - y0) // 7).shape
    assert unit[y0:y1, x0:x1][text_bitmap("RCC", (y1 - y0) // 7)].min() > 0.85  # burned-in strokes
    assert not film.breast[y0:y1, x0:x1].any()
    # A right breast is hung with its chest wall on the right; the film background is not black.
    assert film.breast[:, 80:].sum() > 2 * film.breast[:, :80].sum()
    background = ~film.breast & (unit < 0.5)
    assert 0.05 < np.median(unit[background][unit[background] > 0.02]) < 0.2
    with pytest.raises(ValueError, match="no glyph for"):
        text_bitmap("Q")


# ---------------------------------------------------------------------------------------------- CBIS-DDSM


CBIS_MASS = ("patient_id, breast_density, left or right breast, image view, abnormality id, abnormality type, "
             "mass shape, mass margins, assessment, pathology, subtlety, image file path, cropped image file path, "
             "ROI mask file path").split(", ")
CBIS_CALC = [{"breast_density": "breast density", "mass shape": "calc type", "mass margins": "calc distribution"}.get(
    column, column) for column in CBIS_MASS]


def test_cbis_ddsm_look_alike(tmp_path):
    from modeling_mama.data.synthetic import generate_cbis_ddsm

    root = generate_cbis_ddsm(tmp_path / "cbis", num_patients=6, image_size=(128, 96), seed=1, progress=False)
    tables = {name: pd.read_csv(root / f"{name}.csv", dtype=str, keep_default_na=False)
              for name in ("mass_case_description_train_set", "mass_case_description_test_set",
                           "calc_case_description_train_set", "calc_case_description_test_set")}
    for name, table in tables.items():
        assert list(table.columns) == (CBIS_MASS if name.startswith("mass") else CBIS_CALC)
    everything = pd.concat(tables.values())
    assert everything["ROI mask file path"].str.endswith("\n").all()  # the release's trailing newlines
    assert everything["image file path"].str.match(r"(Mass|Calc)-(Training|Test)_P_\d{5}_(LEFT|RIGHT)_(CC|MLO)/"
                                                   r"1\.3\.6\.1\.4\.1\.9590\.100\.1\.2\.\d+/[\d.]+/000000\.dcm").all()
    assert (everything["abnormality id"].astype(int) > 1).any()  # several abnormalities on one image
    case = r"(Mass|Calc)-(Training|Test)_P_\d{5}_(LEFT|RIGHT)_(CC|MLO)"
    full = re.compile(rf"CBIS-DDSM/{case}/\d\d-\d\d-2016-DDSM-\d+/1\.000000-full mammogram images-\d+/1-1\.dcm")
    roi = re.compile(rf"CBIS-DDSM/{case}_\d+/\d\d-\d\d-2016-DDSM-\d+/1\.000000-(ROI mask|cropped) images-\d+/1-[12]\.dcm")
    files = [str(path.relative_to(root)) for path in root.rglob("*.dcm")]
    assert files and all(full.fullmatch(path) or roi.fullmatch(path) for path in files)
    for path in root.rglob("1-1.dcm"):
        ds = pydicom.dcmread(path)
        if "full mammogram" in str(path):
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.Modality == "MG" and ds.BitsStored == 16
            assert ds.Laterality in ("L", "R") and "ViewPosition" not in ds and "PixelSpacing" not in ds
            assert ds.PatientID == path.relative_to(root).parts[1]
            break
    # Masks have the full image's size (0 / 255); crops are smaller.
    masks = [pydicom.dcmread(p) for p in root.rglob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True)
             .SeriesDescription == "ROI mask images"]
    assert masks and all(mask.pixel_array.shape == (128, 96) and set(np.unique(mask.pixel_array)) == {0, 255}
                         for mask in masks)


def test_cmmd_look_alike(tmp_path):
    from modeling_mama.data.synthetic import generate_cmmd

    root = generate_cmmd(tmp_path / "cmmd", num_patients=6, image_size=(64, 52), seed=3, table_format="csv",
                         progress=False)
    sheet = pd.read_csv(root / "CMMD_clinicaldata_revision.csv", dtype=str, keep_default_na=False)
    assert list(sheet.columns) == ["ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype"]
    assert set(sheet["classification"]) == {"Benign", "Malignant"}
    assert (sheet.loc[sheet["ID1"].str.startswith("D2"), "subtype"] != "").all()
    assert (sheet.loc[sheet["ID1"].str.startswith("D1"), "subtype"] == "").all()
    files = sorted(root.rglob("*.dcm"))
    layout = re.compile(r"CMMD/D[12]-\d{4}/\d\d-\d\d-\d{4}-NA-NA-\d+/1\.000000-NA-\d+/1-\d\.dcm")
    assert all(layout.fullmatch(str(path.relative_to(root))) for path in files)
    assert len(files) == 2 * len(sheet)
    headers = [pydicom.dcmread(path) for path in files]
    assert sum(ds.BitsAllocated == 8 for ds in headers) > len(headers) / 2  # mostly 8-bit
    assert {("ViewPosition" in ds, "ViewCodeSequence" in ds) for ds in headers} == {(True, False), (False, True)}
    assert all(ds.ImageLaterality in ("L", "R") and ds.PatientID == path.parts[-4] for ds, path in zip(headers, files))
# ------------------------------------------------------------------------------- micro-calcifications


def blobness(pixels, sigma=1.0):
    """A dot detector: minus the larger Hessian eigenvalue (positive where the image curves down in
    every direction, as on a bright dot and not on an edge), scale-normalised."""
    h_xx = ndimage.gaussian_filter(pixels, sigma, order=(0, 2))
    h_yy = ndimage.gaussian_filter(pixels, sigma, order=(2, 0))
    h_xy = ndimage.gaussian_filter(pixels, sigma, order=(1, 1))
    return np.maximum(-((h_xx + h_yy) / 2 + np.sqrt(((h_xx - h_yy) / 2) ** 2 + h_xy**2)), 0.0) * sigma**2


def test_microcalcifications_are_clear_at_full_resolution_and_lost_at_518():
    import torch

    # A full-field image: the breast is about 1700 px tall, 3.3x the 518 view.
    kwargs = dict(height=2048, width=1600, laterality="L", view="CC", density=3, bits_stored=12)
    lesion = Lesion(kind="microcalcifications", morphology="pleomorphic", distribution="clustered", size=0.03,
                    position=(0.5, 0.1))
    plain = render_mammogram(np.random.default_rng(7), findings=[], **kwargs) / 4095.0
    shown, boxes = render_mammogram(np.random.default_rng(7), findings=[lesion], return_boxes=True, **kwargs)
    shown = shown / 4095.0
    plan = synthetic_rendering._plan_image(np.random.default_rng(7), height=2048, width=1600, view="CC", density=3,
                                           findings=[lesion])
    dots = np.array([(y, x) for y, x, _, _ in plan.lesions[0].dots])
    assert 8 <= len(dots) <= 18
    # Drawn where the box says, nowhere else; 2-3 px dots (full width at half maximum) of contrast 0.07-0.10.
    difference = shown - plain
    (y0, x0, y1, x1), = boxes
    inside = box_mask(difference.shape, [(y0, x0, y1, x1)], margin=1)
    assert np.abs(difference[~inside]).max() < 0.02  # the quantum noise differs a little
    assert 0.05 < difference.max() < 0.11
    assert y1 - y0 < 0.1 * 2048 and x1 - x0 < 0.1 * 1600
    for y, x in dots:
        row = difference[int(y), int(x) - 6:int(x) + 7]
        assert 1 <= np.count_nonzero(row > 0.5 * row.max()) <= 5

    # Full resolution: the typical dot stands far above anything the tissue texture makes at that scale.
    breast = ndimage.binary_erosion(plain > 0.2, iterations=30)  # away from the skin line
    at_dots = ndimage.maximum_filter(blobness(shown), size=3)[dots[:, 0].astype(int), dots[:, 1].astype(int)]
    texture = np.quantile(blobness(plain)[breast], 0.999)
    assert np.median(at_dots) > 1.5 * texture

    # The 518 view (breast crop, antialiased resize as MamaImageProcessor does): lost in the texture.
    def view(pixels):
        crop = torch.from_numpy(np.ascontiguousarray(pixels[200:1850, :1300], dtype=np.float32))
        resized = torch.nn.functional.interpolate(crop[None, None], size=(518, 518), mode="bilinear",
                                                  antialias=True, align_corners=False)
        return resized[0, 0].numpy()

    small_dots = ((dots - [200, 0]) * [518 / 1650, 518 / 1300]).astype(int)
    small_shown, small_plain = view(shown), view(plain)
    at_small_dots = ndimage.maximum_filter(blobness(small_shown, 0.7), size=3)[small_dots[:, 0], small_dots[:, 1]]
    small_breast = ndimage.binary_erosion(small_plain > 0.2, iterations=8)
    small_texture = np.quantile(blobness(small_plain, 0.7)[small_breast], 0.999)
    assert np.median(at_small_dots) < small_texture


def test_embed_microcalcification_benchmark(tmp_path):
    options = dict(num_exams=6, image_size=SIZE, seed=2, progress=False, microcalcifications=0.5)
    root = generate_embed(tmp_path / "micro", **options)
    plain = without_drawing_findings(generate_embed, tmp_path / "plain", **options)
    metadata = pd.read_csv(root / "tables/EMBED_OpenData_metadata.csv")
    clinical = pd.read_csv(root / "tables/EMBED_OpenData_clinical.csv")
    assert '"microcalcifications": 0.5' in (root / ".synthetic.json").read_text()
    # Exactly half of the 12 breasts, each with its own BI-RADS 4 row; every other breast is negative.
    affected = clinical[clinical.asses == "S"]
    assert len(affected) == 6 and set(clinical.asses) == {"S", "N"}
    assert set(affected.calcfind) <= {"I", "A", "P"} and set(affected.calcdistri) <= {"C", "G"}
    assert affected.massshape.isna().all() and (affected.path_severity == 1.0).all()
    assert set(metadata.FinalImageType) <= {"2D", "ROI_SSC"}
    for row in metadata[metadata.FinalImageType == "2D"].itertuples():
        rows = clinical[clinical.acc_anon == row.acc_anon]
        has_calcs = bool(((rows.side == row.ImageLateralityFinal) & (rows.asses == "S")).any())
        relative = row.anon_dicom_path.split("/anon_dicom/", 1)[1]
        lesion = lesion_pixels(root / relative, plain / relative)
        assert bool(row.num_roi) == has_calcs  # an ROI on every image that shows the cluster
        if not has_calcs:
            assert not lesion.any()
            continue
        # Faint dots of a few pixels, inside the ROI (the quantum noise differs a little elsewhere).
        assert 0.04 < lesion.max() < 0.12
        inside = box_mask(lesion.shape, ast.literal_eval(row.ROI_coords))
        assert lesion[inside].max() == lesion.max() and np.abs(lesion[~inside]).max() < 0.02
        assert np.count_nonzero(lesion > 0.05) < 0.01 * lesion.size

    with pytest.raises(ValueError, match="microcalcifications=1.5"):
        generate_embed(tmp_path / "bad", num_exams=2, image_size=SIZE, progress=False, microcalcifications=1.5)
    main = load_script("data_scripts/synthetic.py").main
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "rsna"), "--format", "rsna", "--microcalcifications", "0.5"])


def test_embed_default_mix_has_no_microcalcifications(embed_root):
    assert "microcalcifications" not in (embed_root / ".synthetic.json").read_text()
