"""CMMD converter on a look-alike in the TCIA layout: the clinical sheet (xlsx or CSV), the join by
patient and side, views from the DICOM tags, labels and reports, failures, the command line."""

import csv
import re

import pandas as pd
import pydicom
import pytest
from scripts import load_script

from modeling_mama.data.converters.cmmd import convert_cmmd, plan_cmmd
from modeling_mama.data.converters.common import ConverterError
from modeling_mama.data.synthetic import generate_cmmd
from modeling_mama.reports import DATASET_COLUMNS, ReportFields, build_report


def read_failures(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cmmd_root(tmp_path_factory):
    return generate_cmmd(tmp_path_factory.mktemp("cmmd") / "download", num_patients=6, image_size=(96, 80), seed=1,
                         progress=False)


def test_rows_join_the_clinical_sheet_by_patient_and_side(cmmd_root, tmp_path):
    sheet = pd.read_excel(cmmd_root / "CMMD_clinicaldata_revision.xlsx", dtype=str)
    assert list(sheet.columns) == ["ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype"]
    dataset_dict = convert_cmmd(cmmd_root, tmp_path / "out", image_size=64, seed=0, progress=False)
    rows = [row for name in dataset_dict for row in dataset_dict[name].remove_columns("image")]
    files = sorted(cmmd_root.rglob("*.dcm"))
    assert len(rows) == len(files) and not read_failures(tmp_path / "out" / "failures.csv")
    clinical = {(r["ID1"], r["LeftRight"]): r for r in sheet.to_dict("records")}
    headers = {str(path): pydicom.dcmread(path, stop_before_pixels=True) for path in files}
    views = set()
    for row in rows:
        header = headers[row["source_path"]]
        assert (row["patient_id"], row["laterality"]) == (header.PatientID, header.ImageLaterality)
        assert row["exam_id"] == header.StudyInstanceUID and row["image_id"] == header.SOPInstanceUID
        views.add("ViewPosition" in header)
        assert row["view"] in ("CC", "MLO")  # from ViewPosition or, without it, the View Code Sequence
        record = clinical[(row["patient_id"], row["laterality"])]
        assert row["cancer"] == int(record["classification"] == "Malignant")
        assert row["birads"] is None and row["density"] is None and row["report_birads"] is None
        assert row["age"] == int(record["Age"]) and row["lesion_boxes"] == []
        sentences = build_report(ReportFields.from_mapping(row, DATASET_COLUMNS))
        phrase = {"mass": "a mass is present", "calcification": "a calcification is present",
                  "both": "a mass and a calcification are present"}[record["abnormality"]]
        assert f"Findings: The mammogram shows that {phrase}." in sentences
        assert sentences[-1] == f"Pathology: The finding is {record['classification'].lower()}."
        assert not any(s.startswith(("Breast composition", "Impressions")) for s in sentences)
    assert views == {True, False}  # both ways of stating the view occur
    patients = {}
    for name in dataset_dict:
        for patient in dataset_dict[name]["patient_id"]:
            patients.setdefault(patient, set()).add(name)
    assert all(len(splits) == 1 for splits in patients.values())


def test_csv_export_and_unmatched_images_and_rows(tmp_path):
    root = generate_cmmd(tmp_path / "download", num_patients=3, image_size=(64, 52), seed=2, table_format="csv",
                         progress=False)
    sheet = root / "CMMD_clinicaldata_revision.csv"
    text = sheet.read_text().splitlines()
    dropped = text.pop(1)  # a breast whose images are on disk but not in the sheet
    text.append("D1-0099,R,50,2,mass,Benign,")  # a sheet row without images
    sheet.write_text("\n".join(text) + "\n")
    planned, refused = plan_cmmd(root)
    patient, side = dropped.split(",")[:2]
    reasons = [entry["reason"] for entry in refused]
    assert reasons.count(f"no clinical row for {patient} {side} in CMMD_clinicaldata_revision.csv") == 2
    assert "no image of D1-0099 R found below " + str(root) in reasons
    assert all(row["patient_id"] != patient or row["laterality"] != side for row in planned)


def test_missing_sheet_is_named(tmp_path):
    root = generate_cmmd(tmp_path / "download", num_patients=1, image_size=(48, 40), table_format="csv",
                         progress=False)
    (root / "CMMD_clinicaldata_revision.csv").unlink()
    with pytest.raises(ConverterError, match="The CMMD clinical sheet is missing"):
        plan_cmmd(root)


def test_command_line(cmmd_root, tmp_path, capsys):
    sheet = tmp_path / "sheet.xlsx"
    sheet.write_bytes((cmmd_root / "CMMD_clinicaldata_revision.xlsx").read_bytes())
    code = load_script("data_scripts/cmmd.py").main(
        ["--root", str(cmmd_root / "CMMD"), "--clinical", str(sheet), "--out", str(tmp_path / "out"),
         "--image-size", "48", "--no-progress"])
    assert code == 0
    assert re.search(r"train \d+, validation \d+, test \d+ images; 0 failures", capsys.readouterr().out)
