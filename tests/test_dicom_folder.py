"""Any folder of DICOM files: header scan, what is kept and what goes to failures.csv, identity from
the UIDs, views / lateralities from tags or the path, the optional labels table, the command line."""

import csv
import re
import shutil
from pathlib import Path

import pytest
from dicom_factory import (
    breast_pixels,
    mammogram_dataset,
    write_dataset,
    write_mammogram,
)
from pydicom.data import get_testdata_file
from scripts import load_script

from modeling_mama.data.converters.common import ConverterError
from modeling_mama.data.converters.dicom_folder import (
    convert_dicom_folder,
    named_by_path,
    plan_dicom_folder,
)
from modeling_mama.data.dicom_scan import scan_dicoms
from modeling_mama.reports import DATASET_COLUMNS, ReportFields, build_report


def read_failures(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture()
def export(tmp_path):
    """A hospital export: three mammograms of two patients, and files that are not 2D mammograms."""
    root = tmp_path / "export"
    write_mammogram(root / "A" / "1.dcm", laterality="L", view_position="CC", patient_id="A", study_instance_uid="9.1",
                    sop_instance_uid="9.1.1")
    # No view or laterality tag: the folder / file name says "R MLO".
    write_mammogram(root / "A" / "R_MLO.dcm", breast_pixels(laterality="R"), laterality=None, laterality_tags=(),
                    view_position=None, patient_id="A", study_instance_uid="9.1", sop_instance_uid="9.1.2")
    # Nothing names the side: the pixels will.
    write_mammogram(root / "B" / "image", breast_pixels(laterality="R", seed=4), laterality=None, laterality_tags=(),
                    view_position="MLO", patient_id="B", study_instance_uid="9.2", sop_instance_uid="9.2.1")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "B" / "ct.dcm")
    (root / "B" / "notes.txt").write_text("not an image")
    volume = mammogram_dataset(patient_id="B", sop_instance_uid="9.2.2")
    volume.NumberOfFrames = 60
    write_dataset(volume, root / "B" / "tomo.dcm")
    raw = mammogram_dataset(patient_id="B", sop_instance_uid="9.2.3")
    raw.PresentationIntentType = "FOR PROCESSING"
    write_dataset(raw, root / "B" / "raw.dcm")
    shutil.copy(root / "A" / "1.dcm", root / "B" / "copy.dcm")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.dcm").write_text("skipped")
    return root


def test_scan_keeps_2d_mammograms_and_the_path_names_what_the_header_does_not(export):
    records, failures = scan_dicoms(export)
    records = [named_by_path(record, export) for record in records]
    assert [Path(record.path).relative_to(export).as_posix() for record in records] == [
        "A/1.dcm", "A/R_MLO.dcm", "B/image"]
    reasons = {Path(failure.path).name: failure.reason for failure in failures}
    assert reasons["ct.dcm"] == "not a mammogram (Modality CT)"
    assert reasons["notes.txt"] == "not a DICOM file"
    assert reasons["tomo.dcm"] == "not 2D (60 frames)"
    assert reasons["raw.dcm"].startswith("For Processing image")
    assert reasons["copy.dcm"] == f"duplicate image (same SOPInstanceUID as {export / 'A' / '1.dcm'})"
    first, hinted, untagged = records
    assert (first.view, first.view_source, first.laterality, first.laterality_source) == (
        "CC", "ViewPosition", "L", "ImageLaterality")
    assert (hinted.view, hinted.view_source, hinted.laterality, hinted.laterality_source) == ("MLO", "hint", "R", "hint")
    assert (untagged.view, untagged.laterality) == ("MLO", None)


def test_conversion_with_a_labels_table(export, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "sop_instance_uid,path,birads,density,cancer,race,mass_shape,mass_density,pathology\n"
        "9.1.1,,BI-RADS 4,C,1,Asian,Irregular,High density,malignant\n"
        ",B/image,1,,0,,,,\n"
        "9.9.9,,2,,0,,,,\n")
    dataset_dict = convert_dicom_folder(export, tmp_path / "out", labels=labels, image_size=48, seed=0, progress=False)
    rows = {row["image_id"]: row for name in dataset_dict for row in dataset_dict[name].remove_columns("image")}
    assert set(rows) == {"9.1.1", "9.1.2", "9.2.1"}
    first = rows["9.1.1"]
    assert (first["patient_id"], first["exam_id"], first["laterality"], first["view"]) == ("A", "9.1", "L", "CC")
    assert (first["birads"], first["density"], first["cancer"]) == (4, 3, 1)
    report = build_report(ReportFields.from_mapping(first, DATASET_COLUMNS))
    assert "Patient info: This patient is Asian, unknown, and unknown years old." in report
    assert "The mass is Irregular and High density." in report
    assert report[-1] == "Pathology: The finding is malignant."
    assert (rows["9.1.2"]["laterality"], rows["9.1.2"]["view"], rows["9.1.2"]["cancer"]) == ("R", "MLO", None)
    untagged = rows["9.2.1"]
    assert untagged["laterality"] == "R" and (untagged["birads"], untagged["cancer"]) == (1, 0)  # side from the pixels
    splits = {name: set(dataset_dict[name]["patient_id"]) for name in dataset_dict}
    assert sum(("A" in patients) for patients in splits.values()) == 1  # one patient, one split
    failures = read_failures(tmp_path / "out" / "failures.csv")
    reasons = sorted(failure["reason"] for failure in failures)
    assert "listed in the labels table but not found among the scanned mammograms" in reasons
    assert len(failures) == 6  # ct, notes, tomo, raw, copy, and the unknown label row


def test_labels_table_needs_a_key_column(export, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("image,cancer\nx,1\n")
    with pytest.raises(ConverterError, match="needs a sop_instance_uid or a path column"):
        plan_dicom_folder(export, labels=labels)


def test_command_line(export, tmp_path, capsys):
    code = load_script("data_scripts/dicom_folder.py").main(
        ["--root", str(export), "--out", str(tmp_path / "out"), "--image-size", "32", "--no-progress"])
    assert code == 0
    assert re.search(r"train \d+, validation \d+, test \d+ images; 5 failures", capsys.readouterr().out)
