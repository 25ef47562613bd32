"""Column names and code legends of the published tables the look-alikes reproduce."""

from __future__ import annotations

# ----------------------------------------------------------------------------------------------
# Names and constants of the datasets
# ----------------------------------------------------------------------------------------------

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
"""SOP class "Digital Mammography X-Ray Image Storage - For Presentation"."""

DEFAULT_IMAGE_SIZE = (256, 208)
FULL_IMAGE_SIZE = (3328, 2560)
"""A Hologic full-field image (rows, columns)."""

EMBED_DICOM_ROOT = "/mnt/NAS2/mammo/anon_dicom"
EMBED_PNG_ROOT = "/mnt/NAS2/mammo/anon_png"

EMBED_METADATA_COLUMNS = [
    "empi_anon", "acc_anon", "anon_dicom_path", "png_path", "png_filename", "study_date_anon",
    "StudyDescription", "SeriesDescription", "FinalImageType", "ImageLateralityFinal",
    "ViewPosition", "spot_mag", "num_roi", "ROI_coords", "SRC_DST", "match_level",
]
EMBED_METADATA_EXTRA_COLUMNS = ["Manufacturer", "ManufacturerModelName", "Rows", "Columns"]
EMBED_CLINICAL_COLUMNS = [
    "empi_anon", "acc_anon", "study_date_anon", "desc", "tissueden", "asses", "numfind", "side",
    "total_l_find", "total_r_find", "massshape", "massmargin", "massdens", "calcfind",
    "calcdistri", "bside", "procdate_anon", "type", *[f"path{i}" for i in range(1, 11)],
    "path_severity", "RACE_DESC", "ETHNIC_GROUP_DESC", "age_at_study",
]
EMBED_LEGEND_COLUMNS = ["Header in export", "Discription", "Code", "Meaning"]

RSNA_TRAIN_COLUMNS = [
    "site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy",
    "invasive", "BIRADS", "implant", "density", "machine_id", "difficult_negative_case",
]
RSNA_TEST_COLUMNS = [
    "site_id", "patient_id", "image_id", "laterality", "view", "age", "implant", "machine_id",
    "prediction_id",
]

VINDR_BREAST_COLUMNS = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "split",
]
VINDR_FINDING_COLUMNS = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "finding_categories", "finding_birads",
    "xmin", "ymin", "xmax", "ymax", "split",
]

# The legend rows a converter needs (codes and words as in the public EMBED legend).
_LEGEND = {
    ("massshape", "Mass Shape"): [
        ("G", "Generic"), ("R", "Round"), ("O", "Oval"), ("X", "Irregular"),
        ("Q", "Questioned architectural distortion"), ("A", "Architectural distortion"),
        ("T", "Asymmectric tubular structure/solitary dilated duct"),
        ("N", "Intramammary lymph node"), ("B", "Global asymmetry"), ("F", "Focal asymetry"),
        ("S", "Asymmetry"), ("V", "Developing asymmestry"), ("Y", "Lumph Node"),
    ],
    ("massmargin", "Mass Margin"): [
        ("D", "Circumscribed"), ("U", "Obscured"), ("M", "Microlobulated"), ("I", "Indistinct"),
        ("S", "Spiculated"),
    ],
    ("massdens", "Mass Density"): [
        ("+", "High density"), ("=", "Isodense"), ("-", "Low density"), ("0", "Fat containing"),
    ],
    ("calcfind", "Calcification Finding"): [
        ("A", "Amorphous"), ("9", "Benign"), ("H", "Coarse heterogeneous"),
        ("C", "Course Popcorn-like"), ("D", "Dystrophic"), ("E", "Rim"),
        ("F", "Fine-linear (casting)"), ("B", "Fine linear-branching (casting)"), ("G", "Generic"),
        ("I", "Fine pleomorphic"), ("L", "Large Rodlike"), ("M", "Milk of calcium"),
        ("J", "Oil Cyst"), ("K", "Pleomorphic"), ("P", "Punctate"), ("R", "Round"), ("S", "Skin"),
        ("O", "Lucent-centered"), ("U", "Suture"), ("V", "Vascular"), ("Q", "Coarse"),
    ],
    ("calcdistri", "Calcification Distribution"): [
        ("G", "Grouped"), ("S", "Segmental"), ("R", "Regional"), ("D", "Diffuse/scattered"),
        ("L", "Linear"), ("C", "Clustered"),
    ],
    ("asses", "Assessment (Bi-Rads)"): [
        ("N", "Negative"), ("B", "Benign"), ("P", "Probably benign"), ("A", "Additional evaluation"),
        ("S", "Suspicious"), ("M", "Highly suggestive of malignancy"),
        ("K", "Known biopsy-proven malignancy"), ("X", "**No Assessment**"),
    ],
    # The real file pads these meanings with trailing spaces; converters must strip them.
    ("tissueden", "Tissue Density"): [
        ("1", "The breasts are almost entirely fat".ljust(60)),
        ("2", "Scattered fibroglandular densities".ljust(60)),
        ("3", "Heterogeneously dense".ljust(60)),
        ("4", "Extremely dense".ljust(60)),
        ("5", "Normal male".ljust(60)),
    ],
    ("side", "Side"): [("L", "Left"), ("R", "Right"), ("B", "Both")],
    ("bside", "Biopsy Side"): [("L", "Left"), ("R", "Right"), ("B", "Both")],
    ("type", "Biopsy Type"): [("B", "Needle biopsy pathology"), ("S", "Surgical pathology")],
}

# Fibroglandular fraction of the breast and extra brightness of gland over fat, by density 1-4
# (A-D); 5 is EMBED's "normal male".
DENSE_FRACTION = {1: 0.10, 2: 0.30, 3: 0.55, 4: 0.80, 5: 0.04}
GLAND_CONTRAST = {1: 0.24, 2: 0.28, 3: 0.32, 4: 0.36, 5: 0.24}

_CC_LIKE_VIEWS = {"CC", "XCCL", "XCCM", "FB", "CV"}
_MLO_LIKE_VIEWS = {"MLO", "ML", "LM", "LMO", "AT", "SIO", "ISO"}
