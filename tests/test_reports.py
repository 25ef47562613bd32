"""Report templates, table-value parsing, metadata masking, clinical-row choice, zero-shot prompts."""

import csv
import random

import numpy as np
import pandas as pd
import pytest
import torch

from modeling_mama.labels import (
    BIRADS_OF_LETTER,
    DENSITY_OF_LETTER,
    LETTER_OF_BIRADS,
    normalize_laterality,
    parse_age,
    parse_birads,
    parse_density,
    parse_view,
)
from modeling_mama.reports import (
    CLASS_NAMES,
    DATASET_COLUMNS,
    EMBED_COLUMNS,
    MASKABLE_FIELDS,
    RSNA_COLUMNS,
    VINDR_COLUMNS,
    ReportFields,
    build_report,
    load_embed_legend,
    mask_metadata,
    metadata_sentences,
    select_clinical_row,
    zero_shot_prompt_variants,
    zero_shot_prompts,
)

LEGEND = {
    "massshape": {"O": "Oval", "X": "Irregular"},
    "massdens": {"=": "Isodense", "+": "High density"},
    "calcfind": {"9": "Benign", "I": "Fine pleomorphic"},
    "calcdistri": {"G": "Grouped", "S": "Segmental"},
}


def embed_row(**overrides):
    row = {
        "StudyDescription": "MG Screening Bilateral", "RACE_DESC": "Caucasian or White",
        "ETHNIC_GROUP_DESC": "Non-Hispanic or Latino", "age_at_study": "61.0", "FinalImageType": "2D",
        "ImageLateralityFinal": "L", "ViewPosition": "CC", "tissueden": 2.0, "asses": "N",
        "massshape": float("nan"), "massdens": float("nan"), "calcfind": float("nan"), "calcdistri": float("nan"),
    }
    row.update(overrides)
    return row


# ------------------------------------------------------------------------------------ report wording
def test_negative_screening_report_wording():
    assert build_report(ReportFields.from_embed(embed_row(), LEGEND)) == [
        "Procedure reported: MG Screening Bilateral.",
        "Reason for procedure: screening.",
        "Patient info: This patient is Caucasian or White, Non-Hispanic or Latino, and 61 years old.",
        "Image info: This is a 2D full-field digital mammogram of the left breast with CC view.",
        "Breast composition: The breast is scattered fibroglandular densities.",
        "Findings: The mammogram shows that no significant masses, calcification, or other abnormalities are present.",
        "Impressions: BI-RADS Category 1: negative.",
        "Overall Assessment: Negative.",
    ]


def test_mass_and_calcification_sentences_use_the_legend():
    row = embed_row(StudyDescription="MG Diagnostic Mammo Right", ImageLateralityFinal="R", ViewPosition="MLO",
                    tissueden=4, asses="S", massshape="X", massdens="+", calcfind="I", calcdistri="S",
                    age_at_study=74, RACE_DESC="Asian", ETHNIC_GROUP_DESC="Hispanic or Latino")
    assert build_report(ReportFields.from_embed(row, LEGEND)) == [
        "Procedure reported: MG Diagnostic Mammo Right.",
        "Reason for procedure: diagnostic.",
        "Patient info: This patient is Asian, Hispanic or Latino, and 74 years old.",
        "Image info: This is a 2D full-field digital mammogram of the right breast with MLO view.",
        "Breast composition: The breast is extremely dense.",
        "This may lower the sensitivity of mammography.",
        "Findings: The mammogram shows that a suspicious abnormality is present.",
        "The mass is Irregular and High density.",
        "A Segmental Fine pleomorphic calcification is present.",
        "Impressions: BI-RADS Category 4: suspicious abnormality.",
        "Overall Assessment: Suspicious abnormality.",
    ]


def test_mass_sentence_needs_shape_and_density_and_calcification_needs_both_codes():
    only_shape = build_report(ReportFields.from_embed(embed_row(asses="B", massshape="O", calcfind="9"), LEGEND))
    assert only_shape[-3:] == [
        "Findings: The mammogram shows that a benign finding is present.",
        "Impressions: BI-RADS Category 2: benign finding.",
        "Overall Assessment: Benign.",
    ]
    both = build_report(ReportFields.from_embed(embed_row(asses="B", massshape="O", massdens="="), LEGEND))
    assert "The mass is Oval and Isodense." in both


def test_period_inside_a_value_stays_in_its_sentence():
    fields = ReportFields(procedure="MG Dx. Mammo Bilat.", view="CC", birads=0)
    report = build_report(fields)
    assert report[0] == "Procedure reported: MG Dx. Mammo Bilat."
    assert report[1] == "Reason for procedure: unknown."  # neither "screen" nor "diag" in the text
    assert report[-3:] == [
        "Findings: The mammogram shows that an additional imaging is recommended.",
        "Impressions: BI-RADS Category 0: additional imaging required.",
        "Overall Assessment: Additional imaging is recommended.",
    ]
    assert len(report) == 7  # 4 metadata sentences + 3 BI-RADS sentences; no density


def test_missing_values_are_unknown_and_missing_labels_drop_their_sections():
    row = {name: value for name, value in embed_row().items()}
    row.update(StudyDescription="", RACE_DESC=None, ETHNIC_GROUP_DESC=float("nan"), age_at_study=float("nan"),
               FinalImageType=None, ImageLateralityFinal="", ViewPosition=float("nan"), tissueden=None, asses=None)
    assert build_report(ReportFields.from_embed(row, LEGEND)) == [
        "Procedure reported: unknown.",
        "Reason for procedure: unknown.",
        "Patient info: This patient is unknown, unknown, and unknown years old.",
        "Image info: This is a unknown full-field digital mammogram of the unknown breast with unknown view.",
    ]


@pytest.mark.parametrize("ethnicity, expected", [
    (None, "unknown"), (float("nan"), "unknown"), ("", "unknown"), ("Unknown, Unavailable or Unreported", "unknown"),
    ("Hispanic or Latino", "Hispanic or Latino"), ("Non-Hispanic or Latino", "Non-Hispanic or Latino"),
    ("Not Hispanic or Latino", "Non-Hispanic or Latino"),
])
def test_ethnicity_fix_missing_is_unknown_not_non_hispanic(ethnicity, expected):
    report = build_report(ReportFields(race="Asian", ethnicity=ethnicity, age=50))
    assert report[2] == f"Patient info: This patient is Asian, {expected}, and 50 years old."


@pytest.mark.parametrize("density, composition", [
    (1, ["Breast composition: The breast is almost entirely fat."]),
    ("B", ["Breast composition: The breast is scattered fibroglandular densities."]),
    ("DENSITY C", ["Breast composition: The breast is heterogeneously dense.",
                   "This may lower the sensitivity of mammography."]),
    (4.0, ["Breast composition: The breast is extremely dense.", "This may lower the sensitivity of mammography."]),
    (5, ["Breast composition: The breast is normal male dense."]),
])
def test_density_sentences_and_the_dense_breast_warning(density, composition):
    report = build_report(ReportFields(density=density))
    assert report[4:] == composition


def test_every_birads_category_has_its_three_sentences():
    phrases = ["an additional imaging is recommended",
               "no significant masses, calcification, or other abnormalities are present",
               "a benign finding is present", "a probably benign finding is present",
               "a suspicious abnormality is present",
               "a highly suggestive of malignancy is present, a biopsy is recommended",
               "a known biopsy-proven malignant mass is present"]
    descriptions = ["additional imaging required", "negative", "benign finding", "probably benign finding",
                    "suspicious abnormality", "highly suggestive of malignancy", "known biopsy-proven malignancy"]
    assessments = ["Additional imaging is recommended", "Negative", "Benign", "Probably benign",
                   "Suspicious abnormality", "Highly suggestive of malignancy", "Known biopsy-proven malignancy"]
    for letter, category in zip("ANBPSMK", range(7)):
        report = build_report(ReportFields(birads=letter))
        assert report[4:] == [f"Findings: The mammogram shows that {phrases[category]}.",
                              f"Impressions: BI-RADS Category {category}: {descriptions[category]}.",
                              f"Overall Assessment: {assessments[category]}."]


def test_unknown_legend_code_is_left_out_with_a_warning():
    with pytest.warns(UserWarning, match=r"Code 'Z' of column 'massshape' is not in the legend"):
        fields = ReportFields.from_embed(embed_row(asses="B", massshape="Z", massdens="="), LEGEND)
    assert fields.mass_shape is None and fields.mass_density == "Isodense"
    assert not any(sentence.startswith("The mass") for sentence in build_report(fields))


def test_from_embed_handles_real_table_quirks():
    row = embed_row(age_at_study="61.0", tissueden="3", asses="K", ImageLateralityFinal=None, side="R",
                    ViewPosition="MLO", RACE_DESC="African American  or Black", calcfind=9.0, calcdistri="G")
    fields = ReportFields.from_embed(row, LEGEND)
    assert (fields.age, fields.density, fields.birads, fields.laterality, fields.view) == (61, 3, 6, "R", "MLO")
    # the side can also come from the view text
    assert ReportFields.from_embed(embed_row(ImageLateralityFinal="", ViewPosition="RMLO")).laterality == "R"
    assert fields.race == "African American or Black"
    assert (fields.calc_find, fields.calc_distribution) == ("Benign", "Grouped")  # 9.0 read back as code "9"


def test_from_mapping_for_other_sources_and_its_errors():
    vindr = {"laterality": "L", "view_position": "CC", "breast_birads": "BI-RADS 4", "breast_density": "DENSITY D"}
    fields = ReportFields.from_mapping(vindr, VINDR_COLUMNS)
    assert (fields.laterality, fields.view, fields.birads, fields.density) == ("L", "CC", 4, 4)
    rsna = {"age": 58.0, "laterality": "R", "view": "MLO", "density": float("nan"), "BIRADS": 1.0}
    fields = ReportFields.from_mapping(rsna, RSNA_COLUMNS)
    assert (fields.age, fields.density, fields.birads, fields.procedure) == (58, None, 1, None)
    # the converted datasets: the report's BI-RADS / density win over the labels
    converted = {"laterality": "L", "view": "CC", "birads": None, "report_birads": 2, "density": None,
                 "report_density": 5}
    fields = ReportFields.from_mapping(converted, DATASET_COLUMNS)
    assert (fields.birads, fields.density) == (2, 5)
    assert ReportFields.from_mapping(embed_row()) == ReportFields.from_embed(embed_row())  # EMBED is the default
    assert EMBED_COLUMNS["laterality"] == ("ImageLateralityFinal", "side")
    with pytest.raises(ValueError, match=r"The row has none of the columns .*Pass the mapping for this source"):
        ReportFields.from_mapping({"foo": 1}, RSNA_COLUMNS)
    with pytest.raises(ValueError, match=r"mapping has keys \['colour'\]"):
        ReportFields.from_mapping({"foo": 1}, {"colour": "foo"})


def test_load_embed_legend(tmp_path):
    path = tmp_path / "AWS_Open_Data_Clinical_Legend.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Header in export", "Discription", "Code", "Meaning"])
        writer.writerow(["massshape", "Mass Shape", "O", "Oval"])
        writer.writerow(["massdens", "Mass Density", "+", "High density"])
        writer.writerow(["tissueden", "Tissue Density", "3", "Heterogeneously dense".ljust(40)])
    assert load_embed_legend(path) == {"massshape": {"O": "Oval"}, "massdens": {"+": "High density"},
                                       "tissueden": {"3": "Heterogeneously dense"}}
    bad = tmp_path / "bad.csv"
    bad.write_text("Header,Code\nmassshape,O\n")
    with pytest.raises(ValueError, match=r"bad.csv lacks the column\(s\) \['Header in export', 'Meaning'\]"):
        load_embed_legend(bad)
    with pytest.raises(FileNotFoundError, match="AWS_Open_Data_Clinical_Legend.csv"):
        load_embed_legend(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------------ label vocabularies
def test_label_vocabularies_are_consistent():
    assert BIRADS_OF_LETTER == {"A": 0, "N": 1, "B": 2, "P": 3, "S": 4, "M": 5, "K": 6}
    assert all(BIRADS_OF_LETTER[LETTER_OF_BIRADS[c]] == c for c in range(7))
    assert DENSITY_OF_LETTER == {"A": 1, "B": 2, "C": 3, "D": 4}
    assert [len(CLASS_NAMES[task]) for task in ("birads", "density", "cancer")] == [7, 4, 2]


@pytest.mark.parametrize("value, expected", [
    ("A", 0), ("N", 1), ("B", 2), ("P", 3), ("S", 4), ("M", 5), ("K", 6), (0, 0), (6.0, 6), ("3", 3), ("2.0", 2),
    ("BI-RADS 5", 5), ("BIRADS 1", 1), ("BI-RADS Category 0", 0), ("4C", 4), ("X", None), (np.int64(3), 3),
    (None, None), (float("nan"), None), ("", None),
])
def test_parse_birads(value, expected):
    assert parse_birads(value) == expected


@pytest.mark.parametrize("value, expected", [
    (1, 1), (4.0, 4), ("2", 2), ("A", 1), ("d", 4), ("DENSITY B", 2), ("  C ", 3), (5, 5), ("   ", None), (None, None),
])
def test_parse_density(value, expected):
    assert parse_density(value) == expected


def test_parsers_reject_nonsense_with_clear_messages():
    with pytest.raises(ValueError, match=r"BI-RADS value 'BI-RADS 9' is outside 0-6"):
        parse_birads("BI-RADS 9")
    with pytest.raises(ValueError, match=r"Unrecognised BI-RADS value 'Q'"):
        parse_birads("Q")
    with pytest.raises(ValueError, match=r"Unrecognised density value 'E'"):
        parse_density("E")
    with pytest.raises(ValueError, match=r"Density value 0 is outside 1-4"):
        parse_density(0)
    with pytest.raises(ValueError, match=r"bad value in column age: 'sixty' is not an age"):
        parse_age("sixty")
    with pytest.raises(ValueError, match=r"outside 0-130 years"):
        parse_age(131)
    with pytest.raises(ValueError, match=r"Unrecognised laterality 'up'"):
        normalize_laterality("up")
    with pytest.raises(ValueError, match=r"Unknown view 'SIDEWAYS'"):
        parse_view("SIDEWAYS")


@pytest.mark.parametrize("value, expected", [
    ("CC", (None, "CC")), ("L-CC", ("L", "CC")), ("LCC", ("L", "CC")), ("R MLO", ("R", "MLO")),
    ("RMLO", ("R", "MLO")), ("mlo_l", ("L", "MLO")), ("LM", (None, "LM")), ("RL", (None, "RL")),
    ("L LM", ("L", "LM")), ("XCCL", (None, "XCCL")), ("Right mediolateral oblique", ("R", "MLO")), (None, (None, None)),
])
def test_parse_view(value, expected):
    assert parse_view(value) == expected


def test_unfamiliar_view_is_kept_in_lenient_mode():
    assert parse_view("SPOT L", strict=False) == (None, "SPOT L")
    assert ReportFields(view="spot mag").view == "spot mag"


def test_age_forms():
    assert [parse_age(v) for v in (61, "61.0", 61.9, "061Y", "024M", np.float32(45.0), None)] == [61, 61, 61, 61, 2, 45,
                                                                                                    None]


# ------------------------------------------------------------------------------------ masking
FULL = ReportFields(procedure="MG Screening Bilateral", race="Asian", ethnicity="Hispanic or Latino", age=61,
                    image_type="2D", laterality="L", view="CC", density=3, birads=4, mass_shape="Oval",
                    mass_density="Isodense", calc_find="Punctate", calc_distribution="Grouped")


def _masked_fields_in(report):
    """Which of the six fields a report shows as unknown, read from its text."""
    patient, image = report[2], report[3]
    return {
        "age": "and unknown years old" in patient,
        "race": patient.startswith("Patient info: This patient is unknown,"),
        "ethnicity": ", unknown, and" in patient,
        "image_type": image.startswith("Image info: This is a unknown full-field"),
        "laterality": "of the unknown breast" in image,
        "view": "with unknown view" in image,
    }


def test_masking_rate_independence_and_protected_fields():
    rng = np.random.default_rng(123)
    draws = 3000
    unmasked = build_report(FULL)
    counts = dict.fromkeys(MASKABLE_FIELDS, 0)
    both_age_and_view = 0
    for _ in range(draws):
        report = build_report(FULL, mask_prob=0.8, generator=rng)
        assert report[:2] == unmasked[:2] and report[4:] == unmasked[4:]  # never masked
        masked = _masked_fields_in(report)
        for name in MASKABLE_FIELDS:
            counts[name] += masked[name]
        both_age_and_view += masked["age"] and masked["view"]
    for name in MASKABLE_FIELDS:  # binomial sd = sqrt(0.16 / 3000) = 0.0073
        assert abs(counts[name] / draws - 0.8) < 0.03, (name, counts[name] / draws)
    assert abs(both_age_and_view / draws - 0.64) < 0.035  # independent draws


def test_masking_extremes_and_seeded_reproducibility():
    assert build_report(FULL, mask_prob=0.0) == build_report(FULL)
    assert all(_masked_fields_in(build_report(FULL, mask_prob=1.0)).values())
    first = [build_report(FULL, mask_prob=0.5, generator=np.random.default_rng(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    series_a = [build_report(FULL, mask_prob=0.5, generator=rng) for rng in [np.random.default_rng(1)] for _ in range(20)]
    rng = np.random.default_rng(1)
    series_b = [build_report(FULL, mask_prob=0.5, generator=rng) for _ in range(20)]
    assert series_a == series_b
    assert len({tuple(report) for report in series_b}) > 5  # it does vary from draw to draw
    with pytest.raises(ValueError, match=r"mask_prob must be in \[0, 1\]"):
        build_report(FULL, mask_prob=1.5, generator=0)


def test_masking_accepts_numpy_random_and_torch_generators():
    for make in (lambda: np.random.default_rng(3), lambda: random.Random(3), lambda: torch.Generator().manual_seed(3),
                 lambda: 3):
        assert mask_metadata(FULL, 0.5, make()) == mask_metadata(FULL, 0.5, make())
    # the six draws map to the six fields in order: check against the same uniforms drawn directly
    draws = np.random.default_rng(11).random(6)
    masked = mask_metadata(FULL, 0.5, np.random.default_rng(11))
    for name, draw in zip(MASKABLE_FIELDS, draws):
        assert (getattr(masked, name) is None) == (draw < 0.5)
    with pytest.raises(TypeError, match="generator must be"):
        mask_metadata(FULL, 0.5, "seed")


def test_build_report_takes_report_fields():
    with pytest.raises(TypeError, match=r"build_report takes ReportFields, got dict; build them with"):
        build_report({"birads": 1})


# ------------------------------------------------------------------------------------ clinical rows
def _rows(*pairs):
    return [{"side": side, "asses": asses, "id": index} for index, (side, asses) in enumerate(pairs)]


@pytest.mark.parametrize("rows, laterality, expected_id", [
    (_rows(("L", "N"), ("R", "S")), "L", 0),             # same side
    (_rows(("L", "N"), ("R", "S")), "R", 1),
    (_rows(("R", "S"), ("B", "B")), "L", 1),             # no left row -> side B
    (_rows(("R", "S"), (None, "P")), "L", 1),            # an empty side counts as B
    (_rows(("R", "S"), ("", "P")), "L", 1),
    (_rows(("R", "B"), ("R", "S")), "L", 1),             # neither -> all rows, highest
    (_rows(("L", "N"), ("L", "A"), ("L", "B")), "L", 1),  # all <= 2 with a 0 -> the 0
    (_rows(("L", "A"), ("L", "S")), "L", 1),             # a 0 and a 4 -> the highest
    (_rows(("L", "M"), ("L", "K"), ("L", "K")), "L", 1),  # ties: the first
    (_rows(("L", None), ("L", "B")), "L", 1),            # rows without BI-RADS lose
    (_rows(("L", None), ("L", float("nan"))), "L", 0),   # ...unless no row has one
    (_rows(("B", "N"), ("L", "S")), None, 0),            # unknown image side -> B rows
])
def test_select_clinical_row(rows, laterality, expected_id):
    assert select_clinical_row(rows, laterality)["id"] == expected_id


def test_select_clinical_row_on_a_dataframe_and_empty():
    frame = pd.DataFrame({"side": ["R", "L", "L"], "asses": ["S", "N", "A"], "numfind": [1, 1, 2]})
    chosen = select_clinical_row(frame, "L")
    assert isinstance(chosen, pd.Series) and chosen["numfind"] == 2
    assert select_clinical_row([], "L") is None
    assert select_clinical_row(frame.iloc[:0], "L") is None
    custom = [{"breast": "L", "score": 2}, {"breast": "L", "score": 5}]
    assert select_clinical_row(custom, "L", side_column="breast", birads_column="score")["score"] == 5


# ------------------------------------------------------------------------------------ zero-shot prompts
def test_zero_shot_prompt_counts_and_wording():
    birads = zero_shot_prompts("birads")
    assert len(birads) == 7 and all(len(prompt) == 3 for prompt in birads)
    assert birads[5] == [
        "Findings: The mammogram shows that a highly suggestive of malignancy is present, a biopsy is recommended.",
        "Impressions: BI-RADS Category 5: highly suggestive of malignancy.",
        "Overall Assessment: Highly suggestive of malignancy.",
    ]
    density = zero_shot_prompts("density")
    assert density == [
        ["Breast composition: The breast is almost entirely fat."],
        ["Breast composition: The breast is scattered fibroglandular densities."],
        ["Breast composition: The breast is heterogeneously dense.", "This may lower the sensitivity of mammography."],
        ["Breast composition: The breast is extremely dense.", "This may lower the sensitivity of mammography."],
    ]
    assert zero_shot_prompts("cancer") == [
        ["Findings: The mammogram shows that Cancer negative: overall healthy or just benign finding.",
         "Impressions: BI-RADS Category N or B: Negative or Benign.",
         "Overall Assessment: Negative or Benign."],
        ["Findings: The mammogram shows that Cancer positive: screening image with known biopsy-proven malignancy "
         "or suspicious abnormality found.",
         "Impressions: BI-RADS Category A: Additional imaging required with biopsy-proven malignancy or suspicious "
         "abnormality found.",
         "Overall Assessment: Additional imaging required with biopsy-proven malignancy or suspicious abnormality "
         "found."],
    ]
    with pytest.raises(ValueError, match=r"Unknown zero-shot task 'mass'"):
        zero_shot_prompts("mass")


def test_zero_shot_metadata_prefix_is_the_images_own_unmasked_metadata():
    prefix = [
        "Procedure reported: MG Screening Bilateral.",
        "Reason for procedure: screening.",
        "Patient info: This patient is Asian, Hispanic or Latino, and 61 years old.",
        "Image info: This is a 2D full-field digital mammogram of the left breast with CC view.",
    ]
    assert metadata_sentences(FULL) == prefix
    for task in ("birads", "density", "cancer"):
        with_metadata, without = zero_shot_prompts(task, FULL), zero_shot_prompts(task)
        assert with_metadata == [prefix + prompt for prompt in without]
    # the class text never leaks the image's own labels
    assert all("BI-RADS Category 4" not in " ".join(p) for p in zero_shot_prompts("density", FULL))


def test_zero_shot_prompt_variants():
    variants = zero_shot_prompt_variants("birads", FULL, count=3)
    assert len(variants) == 3 and all(len(variant) == 7 for variant in variants)
    assert variants[0][1] == metadata_sentences(FULL) + ["Impressions: BI-RADS Category 1: negative.",
                                                         "Overall Assessment: Negative."]
    assert zero_shot_prompt_variants("density", count=1) == [[
        ["Breast composition: The breast is almost entirely fat."],
        ["Breast composition: The breast is scattered fibroglandular densities."],
        ["Breast composition: The breast is heterogeneously dense."],
        ["Breast composition: The breast is extremely dense."],
    ]]
    with pytest.raises(ValueError, match=r"The density task has 1 prompt variant\(s\); got count=2"):
        zero_shot_prompt_variants("density", count=2)
