"""Header-only scan of a DICOM folder (modeling_mama.data.dicom_scan)."""

import shutil

import pytest

from dicom_factory import FOLDER_REJECTS, write_dicom_folder
from modeling_mama.data.dicom_scan import group_by_exam, list_files, read_header, scan_dicoms


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs-export")
    return root, write_dicom_folder(root)


def test_scan_keeps_2d_mammograms_and_says_why_the_rest_is_left_out(dicom_folder):
    root, written = dicom_folder
    records, failures = scan_dicoms(root)
    # The corrupt file's header is fine: only decoding can find the missing pixel data.
    assert sorted(record.path for record in records) == sorted(
        str(path) for name, path in written.items() if name.startswith("P") or name == "corrupt.dcm")
    reasons = {failure.path: failure.reason for failure in failures}
    assert set(reasons) == {str(written[name]) for name in FOLDER_REJECTS if name != "corrupt.dcm"}
    for name in ("notes.txt", "ct.dcm", "tomo.dcm", "cview.dcm"):
        assert reasons[str(written[name])].startswith(FOLDER_REJECTS[name])

    records, _ = scan_dicoms(root, include_synthesized_2d=True)
    assert str(written["cview.dcm"]) in {record.path for record in records}


def test_group_by_exam_and_header_fields(dicom_folder):
    root, written = dicom_folder
    records, _ = scan_dicoms(root)
    exams = group_by_exam(records)
    assert list(exams) == [read_header(written["corrupt.dcm"]).exam_id, "1.2.826.0.1.3680043.10.1",
                           "1.2.826.0.1.3680043.10.2"]  # files of the top folder come first
    first = exams["1.2.826.0.1.3680043.10.1"]
    assert {side: sorted(record.view for record in views) for side, views in first.items()} == {
        "L": ["CC", "MLO"], "R": ["CC", "MLO"]}
    second = exams["1.2.826.0.1.3680043.10.2"]
    # No laterality tag: the side is left to the pixels (read_dicom), not guessed from the header.
    untagged = read_header(written["P2-R-CC"])
    assert (untagged.laterality, untagged.laterality_source) == (None, None)
    assert second[None] == [untagged]
    record = read_header(written["P1-L-MLO"])
    assert (record.laterality, record.laterality_source, record.view, record.view_source) == (
        "L", "ImageLaterality", "MLO", "ViewPosition")
    assert (record.patient_id, record.age, record.procedure) == ("P1", 61, "MG Screening Bilateral")
    fields = record.report_fields()
    assert (fields.age, fields.laterality, fields.view, fields.reason) == (61, "L", "MLO", "screening")
    assert untagged.report_fields(laterality="R").laterality == "R"


def test_csv_of_paths_missing_files_duplicates_and_excluded(dicom_folder, tmp_path):
    root, written = dicom_folder
    copy = tmp_path / "copy-of-P1-L-CC.dcm"
    shutil.copy(written["P1-L-CC"], copy)
    table = tmp_path / "list.csv"
    table.write_text("file,note\n"
                     f"{written['P1-L-CC']},absolute\n"
                     f"{copy.name},relative to the CSV\n"
                     "gone.dcm,missing\n"
                     f"{written['P1-R-CC']},excluded\n")
    records, failures = scan_dicoms(table, path_column="file", exclude=[written["P1-R-CC"]])
    assert [record.path for record in records] == [str(written["P1-L-CC"])]
    assert [(failure.path, failure.reason.split(" (")[0]) for failure in failures] == [
        (str(copy), "duplicate image"), (str(tmp_path / "gone.dcm"), "file missing")]
    with pytest.raises(ValueError, match=r"list.csv: no 'path' column \(columns: file, note\).*--path_column"):
        list_files(table)
    with pytest.raises(FileNotFoundError, match="no such folder or CSV file"):
        list_files(tmp_path / "nowhere")
