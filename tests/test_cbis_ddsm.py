"""CBIS-DDSM converter on a look-alike in the TCIA layout: merged abnormalities, reports, labels, the
official split, lesion boxes from the ROI masks, missing files, the command line."""

import csv
import re
import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image
from scripts import load_script

from modeling_mama.data.converters.cbis_ddsm import (
    TABLES,
    convert_cbis_ddsm,
    finding_words,
    plan_cbis_ddsm,
)
from modeling_mama.data.converters.common import ConverterError
from modeling_mama.data.synthetic import generate_cbis_ddsm
from modeling_mama.image_processing_mama import MamaImageProcessor
from modeling_mama.reports import DATASET_COLUMNS, ReportFields, build_report

IMAGE_SIZE = 96


def read_failures(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cbis_root(tmp_path_factory):
    """Six patients; a fifth of the abnormalities without ROI folders; the last case folder's full image missing."""
    root = tmp_path_factory.mktemp("cbis") / "download"
    return generate_cbis_ddsm(root, num_patients=6, image_size=(176, 136), seed=3, roi_fraction=0.8,
                              drop_full_images=1, progress=False)


@pytest.fixture(scope="module")
def converted(cbis_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("cbis-out") / "dataset"
    return out, convert_cbis_ddsm(cbis_root, out, image_size=IMAGE_SIZE, seed=0, progress=False)


def rows_by_image(dataset_dict):
    return {row["image_id"]: {**row, "split": name} for name in dataset_dict
            for row in dataset_dict[name].remove_columns("image")}


def table_rows(root):
    rows = []
    for (kind, split), name in TABLES.items():
        with open(root / name, newline="") as handle:
            rows += [{**row, "kind": kind, "table_split": split} for row in csv.DictReader(handle)]
    return rows


def test_finding_words():
    assert finding_words("IRREGULAR-ARCHITECTURAL_DISTORTION") == "Irregular and architectural distortion"
    assert finding_words("FINE_LINEAR_BRANCHING") == "Fine linear branching"
    assert finding_words("N/A") is None and finding_words(None) is None


def test_one_row_per_image_with_every_abnormality_merged(cbis_root, converted):
    _, dataset_dict = converted
    rows = rows_by_image(dataset_dict)
    listed = table_rows(cbis_root)
    images = {f"{r['patient_id']}_{r['left or right breast']}_{r['image view']}" for r in listed}
    failures = {row["image_id"] for row in read_failures(converted[0] / "failures.csv")}
    assert set(rows) | failures == images and not set(rows) & failures

    # Patient 1: two masses on each view -> one row, two mass sentences, BI-RADS = the highest assessment.
    first = rows["P_00001_LEFT_CC"]
    masses = [r for r in listed if r["patient_id"] == "P_00001" and r["image view"] == "CC"]
    assert len(masses) == 2
    assert first["birads"] == max(int(r["assessment"]) for r in masses)
    assert first["density"] == int(masses[0]["breast_density"])
    assert first["cancer"] == int(any(r["pathology"] == "MALIGNANT" for r in masses))
    assert (first["laterality"], first["view"], first["exam_id"]) == ("L", "CC", "P_00001")
    sentences = build_report(ReportFields.from_mapping(first, DATASET_COLUMNS))
    mass_sentences = [s for s in sentences if s.startswith("The mass is")]
    expected = [f"The mass is {finding_words(r['mass shape'])} and {finding_words(r['mass margins'])}." for r in masses
                if finding_words(r["mass shape"]) and finding_words(r["mass margins"])]
    assert mass_sentences == expected and len(expected) >= 1
    assert sentences[-1] == "Pathology: The finding is malignant."
    assert "Impressions: BI-RADS Category" in " ".join(sentences)

    # Patient 3: the same image in a Mass and a Calc table -> one row with both kinds of sentences.
    both = rows["P_00003_LEFT_CC"]
    assert both["mass_shape"] and both["calc_find"]
    text = " ".join(build_report(ReportFields.from_mapping(both, DATASET_COLUMNS)))
    assert "The mass is" in text and "calcification is present" in text


def test_official_split_is_kept_and_validation_is_carved_by_patient(cbis_root, converted):
    _, dataset_dict = converted
    rows = rows_by_image(dataset_dict)
    listed = table_rows(cbis_root)
    for image_id, row in rows.items():
        patient, side, view = image_id.rsplit("_", 2)
        splits = {r["table_split"] for r in listed
                  if (r["patient_id"], r["left or right breast"], r["image view"]) == (patient, side, view)}
        assert (row["split"] == "test") == ("test" in splits), image_id  # a test table listing wins
    # Patient 5: its mass in a training table, its calcification in a test table -> test.
    assert rows["P_00005_LEFT_CC"]["split"] == "test"
    training_patients = {row["patient_id"]: set() for row in rows.values() if row["split"] != "test"}
    for row in rows.values():
        if row["split"] != "test":
            training_patients[row["patient_id"]].add(row["split"])
    assert all(len(splits) == 1 for splits in training_patients.values())  # no patient in train and validation


def test_lesion_boxes_follow_the_masks_through_orientation_crop_and_resize(cbis_root, converted):
    _, dataset_dict = converted
    processor = MamaImageProcessor(do_normalize=False)
    with_boxes = 0
    for name in dataset_dict:
        for row in dataset_dict[name]:
            masks = [path for path in cbis_root.rglob("*.dcm")
                     if re.search(rf"[/\\](Mass|Calc)-\w+_{row['image_id']}_\d+[/\\]", str(path))
                     and pydicom.dcmread(path, stop_before_pixels=True).SeriesDescription == "ROI mask images"
                     and pydicom.dcmread(path, stop_before_pixels=True).Rows == pydicom.dcmread(
                         row["source_path"], stop_before_pixels=True).Rows]
            assert len(row["lesion_boxes"]) == len(masks)  # a missing ROI folder: no box, no failure
            if not masks:
                continue
            with_boxes += 1
            # Independently: the processor's own geometry of the source, and the masks' nonzero boxes.
            geometry = processor(row["source_path"], laterality=row["laterality"], return_geometry=True)
            x0, y0, x1, y1 = geometry["crop_boxes"][0].tolist()
            width = pydicom.dcmread(row["source_path"], stop_before_pixels=True).Columns
            if geometry["flipped"][0]:
                x0, x1 = width - x1, width - x0
            stored = np.asarray(row["image"])
            scale_x, scale_y = stored.shape[1] / (x1 - x0), stored.shape[0] / (y1 - y0)
            expected = []
            for path in masks:
                mask = pydicom.dcmread(path).pixel_array > 0
                if geometry["flipped"][0]:
                    mask = mask[:, ::-1]
                ys, xs = np.nonzero(mask)
                expected.append([(xs.min() - x0) * scale_x, (ys.min() - y0) * scale_y,
                                 (xs.max() + 1 - x0) * scale_x, (ys.max() + 1 - y0) * scale_y])
            expected = np.clip(expected, 0, [stored.shape[1], stored.shape[0]] * 2)
            order = np.lexsort(np.asarray(row["lesion_boxes"]).T[::-1]), np.lexsort(expected.T[::-1])
            np.testing.assert_allclose(np.asarray(row["lesion_boxes"])[order[0]], expected[order[1]], atol=0.01)
            # The stored image is oriented: chest wall on the left.
            assert stored[:, : stored.shape[1] // 2].mean() > stored[:, stored.shape[1] // 2:].mean()
    assert with_boxes >= 4


def test_missing_full_image_goes_to_failures(converted):
    out, dataset_dict = converted
    failures = read_failures(out / "failures.csv")
    assert len(failures) == 1
    assert failures[0]["reason"].startswith("file missing: no case folder ")
    assert failures[0]["table"].endswith("_set.csv") and failures[0]["row_index"] != ""
    assert failures[0]["image_id"] not in rows_by_image(dataset_dict)


def test_rerun_resumes_from_the_cache_with_the_same_boxes(cbis_root, converted, tmp_path):
    out, dataset_dict = converted
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, symlinks=True)  # the dataset folder points at its current version
    again = convert_cbis_ddsm(cbis_root, copy, image_size=IMAGE_SIZE, seed=0, progress=False)
    for name in dataset_dict:
        assert again[name].remove_columns("image").to_list() == dataset_dict[name].remove_columns("image").to_list()


def test_tables_are_found_below_root_and_missing_ones_are_named(cbis_root, tmp_path):
    nested = tmp_path / "cbis"
    shutil.copytree(cbis_root, nested / "downloads", ignore=shutil.ignore_patterns("*.csv"))
    (nested / "tables").mkdir()
    for name in TABLES.values():
        shutil.copy(cbis_root / name, nested / "tables" / name)
    planned, _ = plan_cbis_ddsm(nested)
    assert len(planned) == len(plan_cbis_ddsm(cbis_root)[0])
    (nested / "tables" / TABLES[("calc", "test")]).unlink()
    with pytest.raises(ConverterError, match="calc_case_description_test_set.csv is missing"):
        plan_cbis_ddsm(nested)


def test_command_line(cbis_root, tmp_path, capsys):
    out = tmp_path / "cli"
    code = load_script("data_scripts/cbis_ddsm.py").main(
        ["--root", str(cbis_root), "--out", str(out), "--image-size", "64", "--no-progress", "--limit", "3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert re.search(r"train \d+, validation \d+, test \d+ images; \d+ failures", printed)
    with Image.open(next((out / ".cache").glob("*.png"))) as image:
        assert max(image.size) <= 64 and image.mode.startswith("I")
    assert load_script("data_scripts/cbis_ddsm.py").main(["--root", str(tmp_path / "nowhere"), "--out",
                                                          str(tmp_path / "x")]) == 2


def test_shards_merge_into_the_single_run_with_their_boxes(cbis_root, converted, tmp_path):
    """2 shards by patient + merge = the single run: same rows, order, official splits, lesion boxes and
    failures (the missing full image is met by the shard holding its patient)."""
    import datasets

    single_out, single = converted
    script, merge = load_script("data_scripts/cbis_ddsm.py"), load_script("data_scripts/merge.py")
    shards = [tmp_path / f"shard{index}" for index in range(2)]
    for index, out in enumerate(shards):
        assert script.main(["--root", str(cbis_root), "--out", str(out), "--image-size", str(IMAGE_SIZE),
                            "--num-shards", "2", "--shard-index", str(index), "--no-progress"]) == 0
    patients = [{row["patient_id"] for row in rows_by_image(datasets.load_from_disk(str(out))).values()}
                for out in shards]
    assert all(patients) and not patients[0] & patients[1]
    merged_out = tmp_path / "merged"
    assert merge.main(["--shards", *map(str, shards), "--out", str(merged_out), "--no-progress"]) == 0
    merged = datasets.load_from_disk(str(merged_out))
    assert list(merged) == list(single)
    for name in single:
        assert merged[name].remove_columns("image").to_list() == single[name].remove_columns("image").to_list()
    assert any(boxes for name in merged for boxes in merged[name]["lesion_boxes"])
    assert read_failures(merged_out / "failures.csv") == read_failures(single_out / "failures.csv")


def test_the_tables_uid_layout_is_matched_by_case_folder_too(cbis_root, tmp_path):
    """Files laid out as the tables' paths say (<case>/<StudyUID>/<SeriesUID>/000000.dcm) convert the same."""
    copy = tmp_path / "uid-layout"
    copy.mkdir()
    for name in TABLES.values():
        shutil.copy(cbis_root / name, copy / name)
    for path in (cbis_root / "CBIS-DDSM").rglob("*.dcm"):
        case = path.relative_to(cbis_root / "CBIS-DDSM").parts[0]
        header = pydicom.dcmread(path, stop_before_pixels=True)
        target = copy / case / header.StudyInstanceUID / header.SeriesInstanceUID / f"00000{path.stem[-1]}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    planned, refused = plan_cbis_ddsm(copy)
    reference, reference_refused = plan_cbis_ddsm(cbis_root)
    strip = ("source_path", "lesion_masks")
    assert [{k: v for k, v in row.items() if k not in strip} for row in planned] == [
        {k: v for k, v in row.items() if k not in strip} for row in reference]
    assert [len(row["lesion_masks"]) for row in planned] == [len(row["lesion_masks"]) for row in reference]
    assert len(refused) == len(reference_refused)


def test_generation_is_byte_for_byte_reproducible(cbis_root, tmp_path):
    """Every file, ROI masks and crops included (their UIDs come from the seed), is the same bytes again."""
    again = generate_cbis_ddsm(tmp_path / "again", num_patients=6, image_size=(176, 136), seed=3, roi_fraction=0.8,
                               drop_full_images=1, progress=False)
    files = sorted(path.relative_to(cbis_root) for path in cbis_root.rglob("*.dcm"))
    assert files == sorted(path.relative_to(again) for path in again.rglob("*.dcm"))
    assert any("ROI mask" in str(path) for path in files)
    assert [path for path in files if (cbis_root / path).read_bytes() != (again / path).read_bytes()] == []
