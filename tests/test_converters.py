"""Dataset converters: tables as published, joins, labels, splits, failures, resumability, errors."""

import csv
import errno
import json
import multiprocessing
import os
import re
import signal
import textwrap
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from scripts import load_script

from modeling_mama.data.converters import common
from modeling_mama.data.converters.common import ConverterError
from modeling_mama.data.converters.embed import convert_embed, plan_embed
from modeling_mama.data.converters.rsna import convert_rsna, plan_rsna
from modeling_mama.data.converters.vindr import (
    convert_vindr,
    parse_categories,
    plan_vindr,
)
from modeling_mama.data.synthetic import generate_embed, generate_rsna, generate_vindr

IMAGE_SIZE = (128, 104)


def write_csv(path: Path, text: str) -> Path:
    """A table written exactly as given (so quirks like "61.0" or "False" reach the reader verbatim)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def read_failures(out: Path) -> list[dict]:
    with open(out / "failures.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def by_image(dataset_dict, split=None) -> dict[str, dict]:
    """{image_id: row without the image} over all splits (or one)."""
    names = [split] if split else [name for name in dataset_dict if name != "test_balanced"]
    rows = {}
    for name in names:
        for row in dataset_dict[name].remove_columns("image"):
            rows[row["image_id"]] = {**row, "split": name}
    return rows


def image_bytes(split) -> list[bytes]:
    return [image["bytes"] for image in split.cast_column("image", datasets.Image(decode=False))["image"]]


def assert_same_dataset(first, second):
    assert list(first) == list(second)
    for name in first:
        assert first[name].remove_columns("image").to_list() == second[name].remove_columns("image").to_list()
        assert image_bytes(first[name]) == image_bytes(second[name])


# ----------------------------------------------------------------------------------------------
# Tables and parsing
# ----------------------------------------------------------------------------------------------


def test_read_table_keeps_cells_as_published(tmp_path):
    path = write_csv(tmp_path / "t.csv", """
        id,age,flag,list
        007, 61.0 ,False,"['Mass', 'Suspicious Calcification']"
        8,,True,nan
        """)
    rows = common.read_table(path, ["id", "age"])
    assert rows == [
        {"id": "007", "age": "61.0", "flag": "False", "list": "['Mass', 'Suspicious Calcification']"},
        {"id": "8", "age": None, "flag": "True", "list": None},
    ]
    assert [common.parse_int(r["age"]) for r in rows] == [61, None]
    assert common.normalize_id("1003.0") == common.normalize_id("1003") == "1003"
    assert common.parse_age("61.73") == 61
    with pytest.raises(ValueError, match=re.escape("bad value in column age: '2.5x' is not a number")):
        common.parse_int("2.5x", "age")
    with pytest.raises(ValueError, match="not a whole number"):
        common.parse_int("2.5", "BIRADS")


def test_read_table_errors_name_file_and_column(tmp_path):
    path = write_csv(tmp_path / "t.csv", "a,b\n1,2\n")
    with pytest.raises(ConverterError, match=re.escape(f"Table {path} lacks the column(s) 'c', 'd' (it has a, b)")):
        common.read_table(path, ["a", "c", "d"])
    with pytest.raises(ConverterError, match=re.escape(f"Table {tmp_path / 'no.csv'} does not exist.")):
        common.read_table(tmp_path / "no.csv", ["a"])


def test_stringified_lists_are_parsed_never_evaluated(tmp_path):
    assert parse_categories("['Mass', 'Suspicious Calcification']") == ["Mass", "Suspicious Calcification"]
    marker = tmp_path / "executed"
    with pytest.raises(common.RowError, match="finding_categories"):
        parse_categories(f"__import__('pathlib').Path({str(marker)!r}).touch()")
    assert not marker.exists()


def test_duplicate_rows_exact_and_conflicting():
    records = [{"id": "a", "v": "1"}, {"id": "b", "v": "1"}, {"id": "a", "v": "1"}, {"id": "a", "v": "2"}]
    assert common.duplicate_rows(records, [r["id"] for r in records]) == {
        2: "duplicate row", 3: "duplicate image_id: row 0 has the same image_id with other values"}


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def test_patient_split_is_seeded_sized_and_by_patient():
    patients = [f"p{i}" for i in range(20) for _ in range(3)]  # 20 patients, 3 images each
    splits = common.split_patients(patients, seed=7)
    assert splits == common.split_patients(patients, seed=7)
    assert splits != common.split_patients(patients, seed=8)
    split_of = {}
    for patient, split in zip(patients, splits):
        assert split_of.setdefault(patient, split) == split  # a patient never spans two splits
    assert Counter(split_of.values()) == {"train": 14, "validation": 2, "test": 4}
    # The assignment depends on the set of patients, not on the table order.
    assignment = common.assign_patients(patients, seed=7)
    assert assignment == common.assign_patients(list(reversed(patients)), seed=7)
    # Small datasets still get every split; rounding is by largest remainder.
    assert Counter(common.assign_patients(["a", "b", "c"], seed=0).values()) == {"train": 1, "validation": 1, "test": 1}
    assert Counter(common.assign_patients([f"p{i}" for i in range(37)], seed=0).values()) == {
        "train": 26, "validation": 4, "test": 7}


def test_split_rows_within_an_official_split_leaves_the_others():
    rows = [{"patient_id": f"p{i}", "split": "train" if i < 16 else "test"} for i in range(20)]
    common.split_rows(rows, seed=3, fractions=common.VALIDATION_FRACTIONS, within="train")
    assert Counter(row["split"] for row in rows) == {"train": 14, "validation": 2, "test": 4}
    assert all(row["split"] == "test" for row in rows[16:])  # the official test split is untouched
    everything = [{"patient_id": p} for p in ["a", "a", "b", "c"]]
    assert [row["split"] for row in common.split_rows(everything, seed=0)] == common.split_patients(
        ["a", "a", "b", "c"], seed=0)


def test_converter_options_are_declared_and_unknown_ones_named():
    converter = common.CONVERTERS["rsna"]("/data")
    assert converter.options == {"split_source": "train.csv"}  # the declared default, recorded in conversion.json
    with pytest.raises(TypeError, match="dicom_rot.*accepted: split_source"):
        common.CONVERTERS["rsna"]("/data", dicom_rot="/x")
    with pytest.raises(TypeError, match="accepted: none"):
        common.CONVERTERS["vindr"]("/data", clinical="x.xlsx")


def test_balanced_subset_takes_the_smallest_class_size_per_class():
    labels = [0] * 5 + [1] * 2 + [4] * 9 + [None] * 3 + [6] * 4
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    labels = [labels[i] for i in order]
    subset = common.balanced_subset(labels, seed=3)
    counts = Counter(labels[i] for i in subset)
    assert counts == {0: 2, 1: 2, 4: 2, 6: 2}
    assert subset == sorted(subset) and len(set(subset)) == len(subset)
    assert subset == common.balanced_subset(labels, seed=3)
    assert any(common.balanced_subset(labels, seed=s) != subset for s in range(4, 10))


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def test_16bit_png_survives_the_datasets_image_round_trip(tmp_path):
    values = (np.arange(37 * 23, dtype=np.int64) * 2851 % 65536).astype(np.uint16).reshape(37, 23)
    path = tmp_path / "x.png"
    common.write_png(path, values, laterality="R")
    split = datasets.Dataset.from_dict({"image": [{"path": str(path), "bytes": None}]},
                                       features=datasets.Features({"image": datasets.Image()}))
    datasets.DatasetDict({"test": split}).save_to_disk(str(tmp_path / "ds"))
    path.unlink()  # the bytes must be inside the saved dataset
    loaded = datasets.load_from_disk(str(tmp_path / "ds"))["test"][0]["image"]
    assert loaded.mode == "I;16"
    assert np.asarray(loaded).dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(loaded), values)


def test_resize_long_side_and_uint16():
    pixels = np.full((300, 120), 0.25, dtype=np.float32)
    small = common.resize_long_side(pixels, 100)
    assert small.shape == (100, 40)
    np.testing.assert_allclose(small, 0.25, atol=1e-5)
    assert common.resize_long_side(pixels, 400) is pixels  # never enlarged
    assert common.to_uint16(np.array([-0.1, 0.0, 0.5, 1.0, 1.2])).tolist() == [0, 0, 32768, 65535, 65535]


def test_largest_reduction():
    sizes = (0, 2000, 1664, 1663, 1024, 832, 512)
    assert [common.largest_reduction(3328, size) for size in sizes] == [0, 0, 1, 1, 1, 2, 2]
    assert common.largest_reduction(1955, 245) == 3  # ceil(1955 / 8) = 245


def test_reduced_decode_stores_the_image_a_full_decode_stores(tmp_path):
    """JPEG 2000 files are decoded at the largest reduction whose breast crop is still at least
    `image_size` long; the stored image then has the full decode's size and, within a stated
    tolerance, its values (the two paths low-pass the image differently: wavelet + Lanczos vs Lanczos)."""
    from dicom_factory import breast_pixels, write_mammogram

    pixels = breast_pixels(512, 416, laterality="R", seed=4)
    path = write_mammogram(tmp_path / "j2k.dcm", pixels, transfer_syntax="jpeg2000_lossless", laterality="R",
                           window=(2000.0, 3000.0))
    native, laterality, reduction = common.preprocess_image(path, laterality=None, image_size=0)
    assert (laterality, reduction) == ("R", 0) and native.shape[0] < 512  # cropped, never resized
    crop_side = max(native.shape)
    # (fraction of the crop's side stored, expected reduction, tolerated mean difference; the reference
    # is quantised twice, hence 1e-4 at full resolution): at 2**-2 of a
    # 430-pixel crop (86 pixels) the two crops can differ by a pixel, which dominates the difference.
    for fraction, expected, tolerance in ((0.8, 0, 1e-4), (0.4, 1, 0.006), (0.2, 2, 0.03)):
        image_size = int(fraction * crop_side)
        stored, _, reduction = common.preprocess_image(path, laterality="R", image_size=image_size)
        full = common.to_uint16(common.resize_long_side(native.astype(np.float32) / 65535, image_size))
        assert reduction == expected
        assert max(stored.shape) == image_size and abs(stored.shape[1] - full.shape[1]) <= 1
        width = min(stored.shape[1], full.shape[1])
        difference = np.abs(stored[:, :width].astype(np.float64) - full[:, :width]) / 65535
        assert difference.mean() <= tolerance and np.median(difference) <= tolerance / 2


# ----------------------------------------------------------------------------------------------
# EMBED from hand-built tables (joins, labels, quirks), no images needed
# ----------------------------------------------------------------------------------------------

LEGEND = """
    Header in export,Code,Meaning
    massshape,O,Oval
    massdens,=,Isodense
    tissueden,1,The breasts are almost entirely fat   \n"""


def embed_tables(root: Path, metadata_rows: list[str], clinical_rows: list[str]) -> Path:
    write_csv(root / "tables" / "EMBED_OpenData_metadata.csv",
              "empi_anon,acc_anon,anon_dicom_path,StudyDescription,FinalImageType,ImageLateralityFinal,ViewPosition\n"
              + "\n".join(metadata_rows) + "\n")
    write_csv(root / "tables" / "EMBED_OpenData_clinical.csv",
              "empi_anon,acc_anon,side,asses,tissueden,path_severity,massshape,massdens,RACE_DESC,"
              "ETHNIC_GROUP_DESC,age_at_study\n" + "\n".join(clinical_rows) + "\n")
    write_csv(root / "tables" / "AWS_Open_Data_Clinical_Legend.csv", LEGEND)
    return root


NAS = "/mnt/NAS2/mammo/anon_dicom/cohort_1"
EMBED_METADATA = [
    f"1,1001,{NAS}/1/s/a.dcm,MG Screening Bilateral,2D,L,CC",          # 0: side L row -> B
    f"1,1001,{NAS}/1/s/b.dcm,MG Screening Bilateral,2D,R,CC",          # 1: side R row -> S
    f"1,1001,{NAS}/1/s/c.dcm,MG Screening Bilateral,C-view,R,CC",      # 2: not 2D
    f"2,1002,{NAS}/2/s/d.dcm,MG Screening Bilateral,2D,L,MLO",         # 3: only a side B row
    f"3,1003,{NAS}/3/s/e.dcm,MG Diagnostic Left,2D,L,CC",              # 4: L rows A + B -> 0
    f"3,1003,{NAS}/3/s/f.dcm,MG Diagnostic Left,2D,R,CC",              # 5: no R/B rows -> all -> 0
    f"4,1004,{NAS}/4/s/g.dcm,MG Diagnostic Right,2D,R,MLO",            # 6: R rows N + S -> highest 4
    f"4,1004,{NAS}/4/s/g.dcm,MG Diagnostic Right,2D,R,MLO",            # 7: an exact copy of row 6
    f"4,1004,{NAS}/4/s/g.dcm,MG Diagnostic Right,2D,L,MLO",            # 8: same file, other values
    f"5,1005,{NAS}/5/s/h.dcm,MG Screening Bilateral,2D,L,CC",          # 9: no clinical row
    "6,1006,/somewhere/else/i.dcm,MG Screening Bilateral,2D,L,CC",     # 10: cannot be re-rooted
]
EMBED_CLINICAL = [
    "1.0,1001.0,L,B,2.0,,O,=,Asian,Non-Hispanic or Latino,61.0",
    "1,1001,R,S,2.0,4.0,,,Asian,Non-Hispanic or Latino,61.0",
    "2,1002,B,N,5.0,,,,,,70.5",
    "3,1003.0,L,A,3,,,,,,",
    "3,1003,L,B,3,,,,,,",
    "4,1004,R,N,4,,,,,,",
    "4,1004,R,S,4,1.0,,,,,",
]


def test_embed_join_labels_and_failures_from_hand_built_tables(tmp_path):
    root = embed_tables(tmp_path / "embed", EMBED_METADATA, EMBED_CLINICAL)
    rows, refused = plan_embed(root, seed=0)
    got = {row["image_id"]: row for row in rows}
    assert sorted(got) == ["a", "b", "d", "e", "f", "g", "h"]
    labels = {image_id: (row["birads"], row["density"], row["cancer"]) for image_id, row in got.items()}
    assert labels == {
        "a": (2, 2, None),   # its own side (L): B
        "b": (4, 2, 0),      # its own side (R): S, path_severity 4 (benign) -> 0
        "d": (1, None, None),  # side B row applies; tissueden 5 (male) -> density None
        "e": (0, 3, None),   # L rows A and B: all <= 2 and one is 0 -> the BI-RADS 0 row
        "f": (0, 3, None),   # no R or B row: all rows of the exam, same rule
        "g": (4, 4, 1),      # R rows N and S: the highest; path_severity 1 (in situ) -> 1
        "h": (None, None, None),  # no clinical row: kept, labels unknown
    }
    assert got["d"]["report_density"] == 5 and got["d"]["age"] == 70
    assert (got["a"]["mass_shape"], got["a"]["mass_density"], got["a"]["age"], got["a"]["race"]) == (
        "Oval", "Isodense", 61, "Asian")
    assert got["a"]["report_birads"] == 2 and got["a"]["reason"] == "screening" and got["a"]["image_type"] == "2D"
    assert got["h"]["procedure"] == "MG Screening Bilateral" and got["h"]["race"] is None
    assert got["a"]["source_path"] == str(root / "cohort_1" / "1" / "s" / "a.dcm")
    assert (got["e"]["patient_id"], got["e"]["exam_id"], got["e"]["laterality"], got["e"]["view"]) == (
        "3", "1003", "L", "CC")
    reasons = {entry["row_index"]: entry["reason"] for entry in refused}
    assert reasons == {
        2: "not 2D (FinalImageType C-view)",
        7: "duplicate row",
        8: "duplicate image_id: row 6 has the same image_id with other values",
        10: "cannot re-root anon_dicom_path '/somewhere/else/i.dcm': it has no cohort_N/ folder",
    }
    assert len(rows) + len(refused) == len(EMBED_METADATA)  # nothing dropped silently

    other = tmp_path / "disk"
    other.mkdir()
    rerooted, _ = plan_embed(root, dicom_root=other, seed=0)
    assert rerooted[0]["source_path"] == str(other / "cohort_1" / "1" / "s" / "a.dcm")
    limited, limited_refused = plan_embed(root, limit=3, seed=0)
    assert [row["image_id"] for row in limited] == ["a", "b"] and len(limited_refused) == 1


def test_embed_bad_cell_sends_the_image_to_failures(tmp_path):
    root = embed_tables(tmp_path / "embed", EMBED_METADATA[:2], ["1,1001,L,B,2.0,,,,,,61.0", "1,1001,R,S,2.0,9,,,,,"])
    rows, refused = plan_embed(root)
    assert [row["image_id"] for row in rows] == ["a"]
    assert refused[0]["image_id"] == "b"
    assert refused[0]["reason"] == "bad value in column path_severity: '9' is not 0-6"


# ----------------------------------------------------------------------------------------------
# RSNA and VinDr from hand-built tables
# ----------------------------------------------------------------------------------------------

RSNA_HEADER = ("site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,"
               "machine_id,difficult_negative_case\n")


def test_rsna_labels_and_quirks_from_hand_built_tables(tmp_path):
    root = tmp_path / "rsna"
    write_csv(root / "train.csv", RSNA_HEADER + textwrap.dedent("""\
        1,10,100,L,CC,61.0,0,0,0,1.0,0,B,49,False
        1,10,101,L,MLO,61.0,0,0,0,,0,,49,False
        1,11,102,R,CC,,1,1,1,0,0,D,49,True
        1,11,102,R,CC,,1,1,1,0,0,D,49,True
        1,12,103,R,MLO,50,0,0,0,3,0,A,49,False
        1,12,104,R,CC,50,2,0,0,1,0,A,49,False
        1,12,105,R,MLO,50,0,0,0,2.0,0,E,49,False
        """))
    write_csv(root / "test.csv", "site_id,patient_id,image_id,laterality,view,age,implant,machine_id,prediction_id\n"
                                 "2,20,200,L,CC,70,0,170,20_L\n")
    rows, refused = plan_rsna(root, seed=0)
    got = {row["image_id"]: (row["birads"], row["density"], row["cancer"], row["age"]) for row in rows}
    assert got == {"100": (1, 2, 0, 61), "101": (None, None, 0, 61), "102": (0, 4, 1, None)}
    assert rows[0]["source_path"] == str(root / "train_images" / "10" / "100.dcm")
    assert rows[0]["exam_id"] == rows[0]["patient_id"] == "10"
    assert (rows[0]["report_birads"], rows[0]["report_density"], rows[0]["view"]) == (1, 2, "CC")
    assert {entry["image_id"]: entry["reason"] for entry in refused} == {
        "102": "duplicate row",
        "103": "bad value in column BIRADS: '3' is not 0, 1 or 2",
        "104": "bad value in column cancer: '2' is not 0 or 1",
        "105": "bad value in column density: 'E' is not A, B, C or D",
    }
    test_rows, _ = plan_rsna(root, split_source="test.csv")
    assert [(r["image_id"], r["split"], r["birads"], r["density"], r["cancer"], r["age"]) for r in test_rows] == [
        ("200", "test", None, None, None, 70)]
    assert test_rows[0]["source_path"] == str(root / "test_images" / "20" / "200.dcm")


def test_vindr_labels_splits_and_findings_from_hand_built_tables(tmp_path):
    root = tmp_path / "vindr"
    header = "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density"
    write_csv(root / "breast-level_annotations.csv", header + ",split\n" + textwrap.dedent("""\
        s1,x,i1,L,CC,128,104,BI-RADS 4,DENSITY C,training
        s1,x,i2,R,CC,128,104,BI-RADS 1,DENSITY C,training
        s2,x,i3,L,MLO,128,104,,DENSITY A,test
        s3,x,i4,L,CC,128,104,BI-RADS 2,DENSITY B,validation
        s4,x,i5,R,CC,128,104,BI-RADS 5,DENSITY D,training
        """))
    findings_header = header + ",finding_categories,finding_birads,split\n"
    write_csv(root / "finding_annotations.csv", findings_header + textwrap.dedent("""\
        s1,x,i1,L,CC,128,104,BI-RADS 4,DENSITY C,['Focal Asymmetry'],BI-RADS 3,training
        s1,x,i1,L,CC,128,104,BI-RADS 4,DENSITY C,"['Mass', 'Suspicious Calcification']",BI-RADS 4,training
        s1,x,i2,R,CC,128,104,BI-RADS 1,DENSITY C,['No Finding'],,training
        s2,x,i3,L,MLO,128,104,,DENSITY A,['No Finding'],,test
        s4,x,i5,R,CC,128,104,BI-RADS 5,DENSITY D,"[Mass]",BI-RADS 5,training
        """))
    rows, refused = plan_vindr(root, seed=0)
    got = {row["image_id"]: row for row in rows}
    assert {k: (r["birads"], r["density"], r["cancer"], r["mass_shape"], r["calc_find"]) for k, r in got.items()} == {
        "i1": (4, 3, None, "Generic", "Suspicious"),  # the BI-RADS 4 finding wins over the BI-RADS 3 one
        "i2": (1, 3, None, None, None),
        "i3": (None, 1, None, None, None),
    }
    assert got["i3"]["split"] == "test"
    assert got["i1"]["split"] == got["i2"]["split"] in ("train", "validation")  # one study, one split
    assert got["i1"]["source_path"] == str(root / "images" / "s1" / "i1.dicom")
    assert (got["i1"]["patient_id"], got["i1"]["exam_id"], got["i1"]["report_birads"]) == ("s1", "s1", 4)
    assert {entry["image_id"]: entry["reason"] for entry in refused} == {
        "i4": "bad value in column split: 'validation' is not training or test",
        "i5": "bad value in column finding_categories: '[Mass]' is not a list",
    }


def test_vindr_validation_is_carved_from_training_studies(tmp_path):
    root = tmp_path / "vindr"
    header = "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density"
    lines = [f"s{i},x,i{i}{v},L,{v},9,9,BI-RADS 1,DENSITY B,{'test' if i % 5 == 0 else 'training'}"
             for i in range(40) for v in ("CC", "MLO")]
    write_csv(root / "breast-level_annotations.csv", header + ",split\n" + "\n".join(lines) + "\n")
    write_csv(root / "finding_annotations.csv", header + ",finding_categories,finding_birads,split\n")
    rows, _ = plan_vindr(root, seed=1)
    split_of = {}
    for row in rows:
        assert split_of.setdefault(row["patient_id"], row["split"]) == row["split"]
        assert (row["split"] == "test") == (int(row["patient_id"][1:]) % 5 == 0)
    assert Counter(split_of.values()) == {"train": 28, "validation": 4, "test": 8}  # 32 training studies: 7/8, 1/8


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_clear_errors_for_missing_paths_tables_and_columns(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConverterError, match=re.escape(f"--root {missing} does not exist")):
        plan_embed(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConverterError, match=re.escape(
            f"The EMBED metadata table is missing: looked for {empty / 'tables/EMBED_OpenData_metadata.csv'}")):
        plan_embed(empty)
    with pytest.raises(ConverterError, match=re.escape(
            f"The RSNA train.csv table is missing: looked for {empty / 'train.csv'}")):
        plan_rsna(empty)
    with pytest.raises(ConverterError, match=re.escape(
            f"The VinDr breast-level annotations table is missing: "
            f"looked for {empty / 'breast-level_annotations.csv'}")):
        plan_vindr(empty)

    root = embed_tables(tmp_path / "embed", EMBED_METADATA, EMBED_CLINICAL)
    with pytest.raises(ConverterError, match=re.escape(f"--dicom-root {missing} does not exist")):
        plan_embed(root, dicom_root=missing)
    clinical = root / "tables" / "EMBED_OpenData_clinical.csv"
    clinical.write_text(clinical.read_text().replace("path_severity", "pathology"))
    with pytest.raises(ConverterError, match=re.escape(f"Table {clinical} lacks the column(s) 'path_severity'")):
        plan_embed(root)
    (root / "tables" / "AWS_Open_Data_Clinical_Legend.csv").unlink()
    with pytest.raises(ConverterError, match="The EMBED legend table is missing"):
        plan_embed(root)


def test_output_folder_errors(tmp_path, rsna_root):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConverterError, match=re.escape(
            f"--out {foreign} already holds files that this converter did not write")):
        convert_rsna(rsna_root, foreign, image_size=64, progress=False, limit=2)
    assert (foreign / "notes.txt").read_text() == "mine"
    out = tmp_path / "out"
    convert_rsna(rsna_root, out, image_size=64, progress=False, limit=2)
    with pytest.raises(ConverterError, match="re-run with the same options to resume"):
        convert_rsna(rsna_root, out, image_size=80, progress=False, limit=2)
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    with pytest.raises(ConverterError, match=re.escape(f"--out {a_file} is a file")):
        convert_rsna(rsna_root, a_file, image_size=64, progress=False, limit=2)
    with pytest.raises(ConverterError, match=re.escape("--image-size 8 is too small")):
        convert_rsna(rsna_root, tmp_path / "o2", image_size=8)
    with pytest.raises(ConverterError, match=re.escape("--workers 0 must be at least 1.")):
        convert_rsna(rsna_root, tmp_path / "o2", workers=0)


def test_command_line_reports_errors_and_converts(tmp_path, capsys, vindr_root):
    main = load_script("data_scripts/vindr.py").main
    assert main(["--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert f"error: --root {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    out = tmp_path / "cli"
    assert main(["--root", str(vindr_root), "--out", str(out), "--image-size", "64", "--limit", "4",
                 "--no-progress", "--seed", "3"]) == 0
    assert f"{out}: train" in capsys.readouterr().out
    loaded = datasets.load_from_disk(str(out))
    assert sum(len(split) for split in loaded.values()) + len(read_failures(out)) == 4
    assert json.loads((out / "conversion.json").read_text())["seed"] == 3


# ----------------------------------------------------------------------------------------------
# End to end on the synthetic look-alikes (real DICOM files)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_root(tmp_path_factory):
    return generate_embed(tmp_path_factory.mktemp("embed"), num_exams=10, image_size=IMAGE_SIZE, progress=False)


@pytest.fixture(scope="module")
def rsna_root(tmp_path_factory):
    return generate_rsna(tmp_path_factory.mktemp("rsna"), num_patients=5, image_size=IMAGE_SIZE, progress=False)


@pytest.fixture(scope="module")
def vindr_root(tmp_path_factory):
    return generate_vindr(tmp_path_factory.mktemp("vindr"), num_studies=4, image_size=IMAGE_SIZE, progress=False)


@pytest.fixture(scope="module")
def embed_converted(embed_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("embed_out") / "converted"
    return out, convert_embed(embed_root, out, image_size=64, seed=5, progress=False)


def expected_embed_birads(clinical_rows, laterality):
    """METHOD.md section 3, written out plainly (independent of reports.select_clinical_row)."""
    letters = {"A": 0, "N": 1, "B": 2, "P": 3, "S": 4, "M": 5, "K": 6}
    own = [r for r in clinical_rows if r["side"] == laterality]
    both = [r for r in clinical_rows if r["side"] in ("B", "")]
    candidates = own or both or clinical_rows
    grades = [letters[r["asses"]] for r in candidates if r["asses"] in letters]
    if not grades:
        return None
    if max(grades) <= 2 and 0 in grades:
        return 0
    return max(grades)


def test_embed_end_to_end(embed_root, embed_converted):
    out, converted = embed_converted
    splits = {"train", "validation", "test", "test_balanced"}
    assert datasets.load_from_disk(str(out)).keys() == converted.keys() == splits
    with open(embed_root / "tables" / "EMBED_OpenData_metadata.csv", newline="") as handle:
        metadata = list(csv.DictReader(handle))
    with open(embed_root / "tables" / "EMBED_OpenData_clinical.csv", newline="") as handle:
        clinical = list(csv.DictReader(handle))
    rows = by_image(converted)
    failures = read_failures(out)
    # Every listed image is in the output or in the failures file, never both.
    listed = [Path(m["anon_dicom_path"]).stem for m in metadata]
    assert sorted(listed) == sorted([*rows, *(f["image_id"] for f in failures)])
    expected_failures = {Path(m["anon_dicom_path"]).stem: f"not 2D (FinalImageType {m['FinalImageType']})"
                         for m in metadata if m["FinalImageType"] != "2D"}
    assert {f["image_id"]: f["reason"] for f in failures} == expected_failures
    for m in metadata:
        image_id = Path(m["anon_dicom_path"]).stem
        if image_id not in rows:
            continue
        row = rows[image_id]
        exam_rows = [c for c in clinical if c["acc_anon"] == m["acc_anon"]]
        assert row["birads"] == expected_embed_birads(exam_rows, m["ImageLateralityFinal"])
        assert (row["patient_id"], row["exam_id"], row["laterality"], row["view"]) == (
            m["empi_anon"], m["acc_anon"], m["ImageLateralityFinal"], m["ViewPosition"])
        assert row["source_path"] == str(embed_root / m["anon_dicom_path"].split("anon_dicom/")[1])
    # Patient-level splits; the balanced test subset.
    split_of = {}
    for row in rows.values():
        assert split_of.setdefault(row["patient_id"], row["split"]) == row["split"]
    balanced = Counter(converted["test_balanced"]["birads"])
    test_counts = Counter(b for b in converted["test"]["birads"] if b is not None)
    assert set(balanced) == set(test_counts) and len(set(balanced.values())) == 1
    assert next(iter(balanced.values())) == min(test_counts.values())
    assert set(converted["test_balanced"]["image_id"]) <= set(converted["test"]["image_id"])
    # Images: 16-bit, long side 64, chest wall on the left.
    for split in ("train", "test"):
        for row in converted[split].select(range(min(6, len(converted[split])))):
            image = row["image"]
            pixels = np.asarray(image).astype(np.float64)
            assert image.mode == "I;16" and max(pixels.shape) == 64
            half = pixels.shape[1] // 2
            assert pixels[:, :half].sum() > pixels[:, -half:].sum()


def test_embed_cli_round_trip(embed_root, tmp_path, capsys):
    out = tmp_path / "cli"
    assert load_script("data_scripts/embed.py").main(["--root", str(embed_root), "--out", str(out), "--image-size",
                                                     "64", "--no-progress", "--seed", "5", "--limit", "12"]) == 0
    loaded = datasets.load_from_disk(str(out))
    assert sum(len(loaded[s]) for s in ("train", "validation", "test")) + len(read_failures(out)) == 12


@pytest.mark.filterwarnings("ignore::modeling_mama.dicom.NotMammogramWarning")  # the truncated file
def test_rsna_end_to_end_with_missing_and_broken_files(rsna_root, tmp_path):
    with open(rsna_root / "train.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    missing = rsna_root / "train_images" / table[0]["patient_id"] / f"{table[0]['image_id']}.dcm"
    broken = rsna_root / "train_images" / table[1]["patient_id"] / f"{table[1]['image_id']}.dcm"
    saved = {path: path.read_bytes() for path in (missing, broken)}
    try:
        missing.unlink()
        broken.write_bytes(saved[broken][:400])  # a truncated file
        out = tmp_path / "out"
        converted = convert_rsna(rsna_root, out, image_size=64, progress=False)
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
    failures = {f["image_id"]: f for f in read_failures(out)}
    assert failures[table[0]["image_id"]]["reason"] == "file missing"
    assert failures[table[0]["image_id"]]["source_path"] == str(missing)
    assert failures[table[1]["image_id"]]["reason"].startswith("decode error: ")
    assert len(failures) == 2
    rows = by_image(converted)
    assert len(rows) == len(table) - 2
    letters = {"A": 1, "B": 2, "C": 3, "D": 4, "": None}
    for record in table[2:]:
        row = rows[record["image_id"]]
        assert row["cancer"] == int(record["cancer"])
        assert row["birads"] == (None if record["BIRADS"] == "" else int(float(record["BIRADS"])))
        assert row["density"] == letters[record["density"]]
        assert row["age"] == (None if record["age"] == "" else int(float(record["age"])))
    split_of = {}
    for row in rows.values():
        assert split_of.setdefault(row["patient_id"], row["split"]) == row["split"]

    test_out = convert_rsna(rsna_root, tmp_path / "test_out", split_source="test.csv", image_size=64, progress=False)
    assert list(test_out) == ["test"] and len(test_out["test"]) > 0
    assert set(test_out["test"]["cancer"]) == set(test_out["test"]["birads"]) == {None}


def test_vindr_end_to_end(vindr_root, tmp_path):
    converted = convert_vindr(vindr_root, tmp_path / "out", image_size=64, progress=False)
    with open(vindr_root / "breast-level_annotations.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    rows = by_image(converted)
    assert len(rows) == len(table) and read_failures(tmp_path / "out") == []
    for record in table:
        row = rows[record["image_id"]]
        assert row["birads"] == int(record["breast_birads"].split()[-1])
        assert row["density"] == "ABCD".index(record["breast_density"].split()[-1]) + 1
        assert (row["split"] == "test") == (record["split"] == "test")


def test_reconverting_replaces_the_dataset(rsna_root, tmp_path):
    out = tmp_path / "out"
    first = convert_rsna(rsna_root, out, image_size=64, seed=0, progress=False)
    (out / common.PARTIAL_DIR).mkdir()  # as left by a run killed while saving
    second = convert_rsna(rsna_root, out, image_size=64, seed=1, progress=False)
    assert sorted(by_image(first)) == sorted(by_image(second))
    assert {r["split"] for r in by_image(first).values()} == {"train", "validation", "test"}
    assert not (out / common.PARTIAL_DIR).exists()
    reloaded = datasets.load_from_disk(str(out))
    assert [row["image_id"] for row in reloaded["train"]] == second["train"]["image_id"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "conversion.json", "dataset_dict.json", "failures.csv", "test", "train", "validation"]
    third = convert_rsna(rsna_root, out, image_size=64, seed=1, progress=False, keep_cache=False)
    assert not (out / common.CACHE_DIR).exists()
    assert_same_dataset(third, second)
    assert_same_dataset(convert_rsna(rsna_root, out, image_size=64, seed=1, progress=False), second)


def test_image_size_zero_keeps_the_native_size_and_the_summary_says_how_images_were_decoded(rsna_root, tmp_path):
    rsna = load_script("data_scripts/rsna.py")
    out = tmp_path / "native"
    assert rsna.main(["--root", str(rsna_root), "--out", str(out), "--image-size", "0", "--no-progress"]) == 0
    summary = json.loads((out / "conversion.json").read_text())
    assert (summary["image_size"], summary["stored_size"]) == (0, "native")
    converted = datasets.load_from_disk(str(out))
    assert summary["decode_reductions"] == {"0": sum(len(split) for split in converted.values())}
    sides = [max(image.size) for split in converted.values() for image in split["image"]]
    assert max(sides) > 64 and max(sides) <= max(IMAGE_SIZE)
    # At 32 pixels the JPEG 2000 files of the look-alike (128 x 104) are decoded at reduced size.
    small = convert_rsna(rsna_root, tmp_path / "small", image_size=32, progress=False)
    reductions = json.loads((tmp_path / "small" / "conversion.json").read_text())["decode_reductions"]
    assert reductions.get("0", 0) < sum(reductions.values()) == sum(len(split) for split in small.values())


def test_two_workers_give_the_same_dataset(rsna_root, tmp_path):
    one = convert_rsna(rsna_root, tmp_path / "one", image_size=64, workers=1, progress=False)
    two = convert_rsna(rsna_root, tmp_path / "two", image_size=64, workers=2, progress=False)
    assert_same_dataset(one, two)


def slow_conversion(root, out):
    """A conversion that pauses after each image, so the test can kill it between two images."""
    run_job = common.run_job

    def slow_job(job):
        result = run_job(job)
        time.sleep(0.3)
        return result

    common.run_job = slow_job
    convert_embed(root, out, image_size=64, seed=5, progress=False)


def test_killed_run_resumes_to_an_identical_dataset(embed_root, embed_converted, tmp_path, monkeypatch):
    reference_out, reference = embed_converted
    out = tmp_path / "killed"
    # A forked child process (the package is already imported), killed with SIGKILL mid-run.
    process = multiprocessing.get_context("fork").Process(target=slow_conversion, args=(embed_root, out))
    process.start()
    cache = out / common.CACHE_DIR
    deadline = time.time() + 60
    while time.time() < deadline and process.is_alive() and len(list(cache.glob("*.png"))) < 3:
        time.sleep(0.02)
    assert process.is_alive(), f"the conversion ended early (exit code {process.exitcode})"
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert process.exitcode == -signal.SIGKILL
    cached = len(list(cache.glob("*.png")))
    total = sum(len(reference[s]) for s in ("train", "validation", "test"))
    assert 3 <= cached < total
    assert not (out / "dataset_dict.json").exists()

    calls = []
    run_job = common.run_job
    monkeypatch.setattr(common, "run_job", lambda job: calls.append(job.image_id) or run_job(job))
    resumed = convert_embed(embed_root, out, image_size=64, seed=5, progress=False)
    assert len(calls) == total - cached  # cached images are not decoded again
    assert_same_dataset(resumed, reference)
    assert read_failures(out) == read_failures(reference_out)


# ----------------------------------------------------------------------------------------------
# Shards across machines
# ----------------------------------------------------------------------------------------------


def test_shards_hold_each_patient_once_and_merge_into_the_single_run(embed_root, embed_converted, tmp_path):
    """3 shards + merge = one run: same rows in the same order, same splits (test_balanced
    included), same image bytes, same failures file."""
    embed, merge = load_script("data_scripts/embed.py"), load_script("data_scripts/merge.py")
    single_out, single = embed_converted
    shards = []
    for index in range(3):
        out = tmp_path / f"shard{index}"
        assert embed.main(["--root", str(embed_root), "--out", str(out), "--image-size", "64", "--seed", "5",
                           "--num-shards", "3", "--shard-index", str(index), "--no-progress"]) == 0
        shards.append(out)
    patients = [{row["patient_id"] for split in datasets.load_from_disk(str(out)).values() for row in
                 split.remove_columns("image")} for out in shards]
    assert sum(len(group) for group in patients) == len(set().union(*patients)) and all(patients)
    assert "test_balanced" not in datasets.load_from_disk(str(shards[0]))

    merged_out = tmp_path / "merged"
    assert merge.main(["--shards", *map(str, reversed(shards)), "--out", str(merged_out), "--no-progress"]) == 0
    merged = datasets.load_from_disk(str(merged_out))
    assert_same_dataset(merged, single)
    assert read_failures(merged_out) == read_failures(single_out)
    summary, single_summary = (json.loads((out / "conversion.json").read_text()) for out in (merged_out, single_out))
    assert summary["rows"] == single_summary["rows"] and summary["failures"] == single_summary["failures"]
    assert summary["failure_reasons"] == single_summary["failure_reasons"]
    assert not (merged_out / common.SHARD_FILE).exists()


def test_merge_refuses_incomplete_or_mixed_shards(rsna_root, tmp_path, capsys):
    from modeling_mama.data.converters import merge

    merge_script = load_script("data_scripts/merge.py")

    def shard(index, seed=0, count=2):
        out = tmp_path / f"s{index}-{seed}-{count}"
        convert_rsna(rsna_root, out, image_size=32, seed=seed, progress=False, shard=common.Shard(count, index))
        return out

    first, second = shard(0), shard(1)
    with pytest.raises(ConverterError, match="the 2 shards 0..1 of one conversion"):
        merge.merge_shards([first], tmp_path / "merged")
    with pytest.raises(ConverterError, match="seed = 1"):
        merge.merge_shards([first, shard(1, seed=1)], tmp_path / "merged")
    single = tmp_path / "single"
    convert_rsna(rsna_root, single, image_size=32, progress=False)
    with pytest.raises(ConverterError, match="shard.json is missing"):
        merge.merge_shards([first, single], tmp_path / "merged")
    with pytest.raises(ConverterError, match="--shard-index 2 must be between 0 and --num-shards - 1 = 1"):
        common.Shard(2, 2)
    assert merge_script.main(["--shards", str(first), str(second), "--out", str(first)]) == 2
    assert "is one of the shards" in capsys.readouterr().err
    assert_same_dataset(merge.merge_shards([first, second], tmp_path / "merged", progress=False),
                        datasets.load_from_disk(str(single)))


def test_every_converter_writes_the_shared_schema_with_lesion_boxes(tmp_path):
    from modeling_mama.data.converters import CONVERTERS

    assert {"embed", "rsna", "vindr", "cbis_ddsm", "cmmd", "dicom_folder"} <= set(CONVERTERS)
    root = generate_vindr(tmp_path / "raw", num_studies=1, image_size=(48, 40), seed=0, progress=False)
    dataset_dict = convert_vindr(root, tmp_path / "out", image_size=32, seed=0, progress=False)
    for split in dataset_dict.values():
        assert list(split.features) == common.COLUMNS
        assert {"mass_margin", "pathology", "lesion_boxes"} <= set(split.features)
        assert split["lesion_boxes"] == [[] for _ in range(len(split))]  # unknown: an empty list
# ----------------------------------------------------------------------------------------------
# Faults: a full or read-only disk, paths outside the folders, a kill during the final switch
# ----------------------------------------------------------------------------------------------


def full_disk_after(images: int, slots: Path):
    """A PNG writer that fails with ENOSPC once `images` PNGs were written (in any process).

    Each write first claims one of `images` slot files in `slots` with O_EXCL, so two worker
    processes can never both take the last one (counting the cache's PNGs instead would race).
    """
    write_png = common.write_png
    slots.mkdir(parents=True, exist_ok=True)

    def write(path, pixels, **options):  # laterality, lesion_boxes
        for slot in range(images):
            try:
                os.close(os.open(slots / str(slot), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            return write_png(path, pixels, **options)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    return write


@pytest.mark.parametrize("workers", [1, 2])
def test_disk_full_stops_the_run_and_a_rerun_resumes(rsna_root, tmp_path, monkeypatch, capsys, workers):
    main = load_script("data_scripts/rsna.py").main
    out = tmp_path / "out"
    arguments = ["--root", str(rsna_root), "--out", str(out), "--image-size", "64", "--no-progress",
                 "--workers", str(workers)]
    # Worker processes are forked, so they inherit the faulty writer.
    monkeypatch.setattr(common, "write_png", full_disk_after(3, tmp_path / "slots"))
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert f"error: Cannot write the converted dataset to {out}: No space left on device" in error
    assert "Free some space" in error and "run the same command again" in error
    # Nothing was committed, no image was blamed for the disk, no temporary file holds space.
    assert not (out / "dataset_dict.json").exists() and not (out / "failures.csv").exists()
    assert len(list((out / common.CACHE_DIR).glob("*.png"))) == 3
    assert not list((out / common.CACHE_DIR).glob(".*partial*"))
    # What a SIGKILLed run leaves (no clean-up possible): temporaries the next run removes.
    killed = [out / common.CACHE_DIR / ".x.png.123.abcdef.partial", out / ".failures.csv.123.abcdef.partial"]
    for path in killed:
        path.write_bytes(b"half")

    monkeypatch.undo()
    decoded = []
    run_job = common.run_job
    monkeypatch.setattr(common, "run_job", lambda job: decoded.append(job.image_id) or run_job(job))
    assert main([*arguments[:-2], "--workers", "1"]) == 0
    resumed = len(decoded)
    reference = convert_rsna(rsna_root, tmp_path / "reference", image_size=64, progress=False)
    assert_same_dataset(datasets.load_from_disk(str(out)), reference)
    assert resumed == len(reference["train"]) + len(reference["validation"]) + len(reference["test"]) - 3
    assert not any(path.exists() for path in killed)


def test_output_errors_are_sentences_and_keep_the_old_dataset(rsna_root, tmp_path, monkeypatch, capsys):
    main = load_script("data_scripts/rsna.py").main
    out = tmp_path / "out"
    arguments = ["--root", str(rsna_root), "--out", str(out), "--image-size", "64", "--no-progress", "--limit", "6"]
    assert main(arguments) == 0
    old = datasets.load_from_disk(str(out))
    old_failures = (out / "failures.csv").read_text()
    capsys.readouterr()

    # Disk full while failures.csv is written (the last files of the new version).
    write_text_atomic = common.write_text_atomic

    def full_on_failures(path, text):
        if path.name == "failures.csv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write_text_atomic(path, text)

    monkeypatch.setattr(common, "write_text_atomic", full_on_failures)
    assert main([*arguments[:-1], "5"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert_same_dataset(datasets.load_from_disk(str(out)), old)
    assert (out / "failures.csv").read_text() == old_failures
    assert len(list((out / common.VERSIONS_DIR).iterdir())) == 1  # the half-written version is gone
    monkeypatch.undo()

    # A read-only file system, and a folder the user may not write to.
    for code, expected in ((errno.EROFS, "The file system is read-only: pass --out a folder on a writable disk"),
                           (errno.EACCES, "You may not write there: pass --out a folder you can write to")):
        def refuse(path, pixels, *, code=code, **options):
            raise OSError(code, os.strerror(code), str(path))

        monkeypatch.setattr(common, "write_png", refuse)
        assert main(["--root", str(rsna_root), "--out", str(tmp_path / f"new{code}"), "--no-progress",
                     "--image-size", "64", "--limit", "2"]) == 1
        assert expected in capsys.readouterr().err
    monkeypatch.undo()

    # An unreadable input file is that image's failure; the run goes on.
    preprocess = common.preprocess_image_geometry  # what run_job decodes with

    def unreadable(source, **kwargs):
        if source.endswith(f"{reference_id}.dcm"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), source)
        return preprocess(source, **kwargs)

    reference_id = old["train"][0]["image_id"]
    monkeypatch.setattr(common, "preprocess_image_geometry", unreadable)
    fresh = tmp_path / "fresh"
    assert main(["--root", str(rsna_root), "--out", str(fresh), "--image-size", "64", "--no-progress",
                 "--limit", "6"]) == 0
    reasons = {entry["image_id"]: entry["reason"] for entry in read_failures(fresh)}
    assert reasons[reference_id].startswith("decode error: [Errno 13] Permission denied")


def test_read_only_output_folder_is_a_sentence(rsna_root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(common.StorageError, match=re.escape(
            f"Cannot write the converted dataset to {out}: Read-only file system ({out / common.CACHE_DIR})")):
        convert_rsna(rsna_root, out, image_size=64, progress=False, limit=2)


def test_table_ids_cannot_reach_outside_the_dataset_folder(rsna_root, tmp_path):
    with open(rsna_root / "train.csv", newline="") as handle:
        record = next(csv.DictReader(handle))
    source = rsna_root / "train_images" / record["patient_id"] / f"{record['image_id']}.dcm"
    root = tmp_path / "rsna"
    (root / "train_images" / "7").mkdir(parents=True)
    (root / "train_images" / "7" / "70.dcm").write_bytes(source.read_bytes())
    outside = tmp_path / "secret"
    outside.mkdir()
    for name in ("71.dcm", "72.dcm", "73.dcm"):
        (outside / name).write_bytes(source.read_bytes())  # real DICOMs the table must not reach
    write_csv(root / "train.csv", RSNA_HEADER + textwrap.dedent(f"""\
        1,7,70,L,CC,61,0,0,0,1,0,B,49,False
        1,../../secret,71,L,MLO,61,0,0,0,1,0,B,49,False
        1,7,../../../secret/72,R,CC,61,0,0,0,1,0,B,49,False
        1,{outside},73,R,MLO,61,0,0,0,1,0,B,49,False
        """))
    converted = convert_rsna(root, tmp_path / "out", image_size=64, progress=False)
    assert [row["image_id"] for split in converted.values() for row in split] == ["70"]
    reasons = [entry["reason"] for entry in read_failures(tmp_path / "out")]
    assert len(reasons) == 3 and all(reason.startswith("source path outside the dataset folder") for reason in reasons)

    vindr = tmp_path / "vindr"
    write_csv(vindr / "breast-level_annotations.csv",
              "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split\n"
              f"{outside},s,71,L,CC,1,1,BI-RADS 1,DENSITY A,training\n")
    write_csv(vindr / "finding_annotations.csv", "image_id,finding_categories,finding_birads\n")
    (outside / "71.dicom").write_bytes(source.read_bytes())
    converted = convert_vindr(vindr, tmp_path / "vindr_out", image_size=64, progress=False)
    assert sum(len(split) for split in converted.values()) == 0
    assert read_failures(tmp_path / "vindr_out")[0]["reason"].startswith("source path outside the dataset folder")


def test_nothing_outside_out_is_removed(rsna_root, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    # A dataset folder as written before the versioned layout, whose split list was tampered with.
    (out / "conversion.json").write_text("{}")
    (out / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "../victim"]}))
    with pytest.raises(ConverterError, match=re.escape("lists a split '../victim', which is not a plain folder name")):
        convert_rsna(rsna_root, out, image_size=64, progress=False, limit=2)
    assert (victim / "precious.txt").read_text() == "keep me"
    for target in (victim, out / ".." / "victim", out / "link"):
        with pytest.raises(ConverterError, match="not inside the output folder"):
            if target.name == "link":
                target.symlink_to(victim)
                target = target / "precious.txt"  # resolves outside through the link
            common.remove_inside(out, target)
    assert (victim / "precious.txt").read_text() == "keep me"
    common.remove_inside(out, out / "link")  # the link itself is inside: removing it leaves its target alone
    assert (victim / "precious.txt").read_text() == "keep me" and not (out / "link").is_symlink()


def _small_dataset_dict(values: dict[str, list[int]]):
    return datasets.DatasetDict({name: datasets.Dataset.from_dict({"value": list(column)})
                                 for name, column in values.items()})


OLD_VALUES = {"train": [1, 2, 3], "test": [4]}
NEW_VALUES = {"train": [10, 20], "test": [30], "test_balanced": [30]}
SETTINGS = {"converter": "test", "image_size": 1}


def _commit_and_die(out: Path, step: str) -> None:
    """In a forked child: commit NEW_VALUES and SIGKILL ourselves at `step`."""
    datasets.disable_progress_bars()
    common.prepare_output(out, SETTINGS)

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if step == "while saving":
        save = datasets.Dataset.save_to_disk
        saved = []

        def save_then_die(self, *args, **kwargs):
            if saved:
                die()
            saved.append(1)
            return save(self, *args, **kwargs)

        datasets.Dataset.save_to_disk = save_then_die
    elif step == "before the switch":
        link = common._link
        common._link = lambda out, name, target: die() if name == common.CURRENT_LINK else link(out, name, target)
    elif step == "after the switch":
        common._remove_stale_versions = die
    elif step == "removing old links":
        common._unlink_names = die
    common.commit_dataset(out, _small_dataset_dict(NEW_VALUES), files={"conversion.json": "{\"new\": true}"})
    os._exit(0)


def _values(out: Path) -> dict[str, list[int]]:
    return {name: list(split["value"]) for name, split in datasets.load_from_disk(str(out)).items()}


@pytest.mark.parametrize(("step", "expected"), [
    ("while saving", OLD_VALUES), ("before the switch", OLD_VALUES),
    ("after the switch", NEW_VALUES), ("removing old links", NEW_VALUES),
])
def test_kill_during_the_commit_leaves_the_old_or_the_new_dataset(tmp_path, step, expected):
    out = tmp_path / "out"
    datasets.disable_progress_bars()
    common.prepare_output(out, SETTINGS)
    common.commit_dataset(out, _small_dataset_dict(OLD_VALUES), files={"conversion.json": "{\"new\": false}"})
    process = multiprocessing.get_context("fork").Process(target=_commit_and_die, args=(out, step))
    process.start()
    process.join(60)
    assert process.exitcode == -signal.SIGKILL
    assert _values(out) == expected
    assert json.loads((out / "conversion.json").read_text())["new"] == (expected is NEW_VALUES)
    # The next run cleans up what the killed one left and commits normally.
    common.prepare_output(out, SETTINGS)
    common.commit_dataset(out, _small_dataset_dict(NEW_VALUES), files={"conversion.json": "{\"new\": true}"})
    assert _values(out) == NEW_VALUES
    assert len(list((out / common.VERSIONS_DIR).iterdir())) == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "conversion.json", "dataset_dict.json", "test", "test_balanced", "train"]
    common.commit_dataset(out, _small_dataset_dict(OLD_VALUES))
    assert _values(out) == OLD_VALUES and not (out / "test_balanced").is_symlink()  # a split no longer written


def test_a_dataset_from_before_versioning_is_replaced(tmp_path):
    out = tmp_path / "out"
    datasets.disable_progress_bars()
    common.prepare_output(out, SETTINGS)
    _small_dataset_dict(OLD_VALUES).save_to_disk(str(out))  # real split folders, as older versions wrote
    (out / "failures.csv").write_text("old")
    common.prepare_output(out, SETTINGS)
    common.commit_dataset(out, _small_dataset_dict(NEW_VALUES), files={"failures.csv": "new"})
    assert _values(out) == NEW_VALUES and (out / "failures.csv").read_text() == "new"
    assert all((out / name).is_symlink() for name in ("train", "test", "dataset_dict.json", "failures.csv"))
