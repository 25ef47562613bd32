"""Structured reports from tabular data, metadata masking and zero-shot prompts (METHOD.md 3 and 7).

A report is a list of sentences. The sentence boundaries come from the template, never from the
punctuation inside a value (a procedure called "MG Dx. Bilat." stays one sentence), and the
tokenizer puts one separator token after each sentence (`tokenization.batch_tokenize_reports`).

Sections, in order (a section may hold several sentences):

1. ``Procedure reported: {procedure}.``
2. ``Reason for procedure: {screening|diagnostic}.``
3. ``Patient info: This patient is {race}, {ethnicity}, and {age} years old.``
4. ``Image info: This is a {image type} full-field digital mammogram of the {left|right|bilateral} breast
   with {view} view.``
5. ``Breast composition: The breast is {density words}.``
   (+ ``This may lower the sensitivity of mammography.`` for densities 3 and 4)
6. ``Findings: The mammogram shows that {BI-RADS finding phrase}.`` (+ the mass and calcification sentences)
7. ``Impressions: BI-RADS Category {n}: {description}.``
8. ``Overall Assessment: {assessment}.``
9. ``Pathology: The finding is {benign|malignant}.`` (datasets with a pathology: CBIS-DDSM, CMMD)

Choices this module makes where the recipe is silent:

- A missing metadata value (sections 1-4) is written "unknown". So is a value that says it is
  unknown ("Unknown, Unavailable or Unreported"); a missing ethnicity is "unknown", not
  "Non-Hispanic" (METHOD.md **Fix**).
- A missing density drops section 5; a missing BI-RADS drops sections 6-8 (there is nothing true
  to say, and the reference dropped such images altogether).
- An EMBED report is per image and describes ONE clinical row (the one `select_clinical_row`
  picks), so "Findings" has at most one mass sentence and one calcification sentence. Datasets that
  list several abnormalities per image (CBIS-DDSM) put one value per abnormality in each finding
  field, joined by `FINDING_SEPARATOR` ("Irregular; Oval"), and get one sentence per abnormality.
  As in the reference, the mass sentence needs both shape and density (or, where a dataset
  describes margins instead of density, shape and margin: "The mass is Irregular and Spiculated."),
  the calcification sentence both morphology and distribution.
- A dataset without BI-RADS but with findings (CMMD) keeps section 6, its phrase naming the
  abnormalities ("Findings: The mammogram shows that a mass is present."); sections 7-8 need BI-RADS.

>>> fields = ReportFields(procedure="MG Screening Bilateral", race="Asian", ethnicity=None, age="61.0",
...                       image_type="2D", laterality="L", view="L-CC", density="C", birads="N")
>>> for sentence in build_report(fields):
...     print(sentence)
Procedure reported: MG Screening Bilateral.
Reason for procedure: screening.
Patient info: This patient is Asian, unknown, and 61 years old.
Image info: This is a 2D full-field digital mammogram of the left breast with CC view.
Breast composition: The breast is heterogeneously dense.
This may lower the sensitivity of mammography.
Findings: The mammogram shows that no significant masses, calcification, or other abnormalities are present.
Impressions: BI-RADS Category 1: negative.
Overall Assessment: Negative.
"""

from __future__ import annotations

import csv
import dataclasses
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .labels import (
    TASKS,
    clean_text,
    is_missing,
    normalize_ethnicity,
    normalize_laterality,
    normalize_pathology,
    parse_age,
    parse_birads,
    parse_density,
    parse_view,
    reason_from_text,
)

UNKNOWN = "unknown"

# ---------------------------------------------------------------------------------------------
# Label vocabularies (METHOD.md section 3)
# ---------------------------------------------------------------------------------------------

# Indexed by BI-RADS category 0-6.
BIRADS_DESCRIPTIONS = (
    "additional imaging required", "negative", "benign finding", "probably benign finding",
    "suspicious abnormality", "highly suggestive of malignancy", "known biopsy-proven malignancy",
)
BIRADS_FINDING_PHRASES = (
    "an additional imaging is recommended",
    "no significant masses, calcification, or other abnormalities are present",
    "a benign finding is present",
    "a probably benign finding is present",
    "a suspicious abnormality is present",
    "a highly suggestive of malignancy is present, a biopsy is recommended",
    "a known biopsy-proven malignant mass is present",
)
BIRADS_ASSESSMENTS = (
    "Additional imaging is recommended", "Negative", "Benign", "Probably benign", "Suspicious abnormality",
    "Highly suggestive of malignancy", "Known biopsy-proven malignancy",
)

# Density 1-4 = BI-RADS A-D (labels.DENSITY_OF_LETTER); EMBED codes a male breast as 5.
DENSITY_DESCRIPTIONS = {
    1: "almost entirely fat",
    2: "scattered fibroglandular densities",
    3: "heterogeneously dense",
    4: "extremely dense",
    5: "normal male dense",
}
DENSE_BREAST_SENTENCE = "This may lower the sensitivity of mammography."
DENSE_DENSITIES = (3, 4)

LATERALITY_WORDS = {"L": "left", "R": "right", "B": "bilateral"}
# Several abnormalities of one image: each finding field holds one value per abnormality, in the same
# order, joined by this; an empty value keeps its place ("Irregular; ").
FINDING_SEPARATOR = "; "

# The six fields metadata masking may hide (METHOD.md section 3); everything else is never masked.
MASKABLE_FIELDS = ("age", "race", "ethnicity", "image_type", "laterality", "view")
PAPER_MASK_PROB = 0.8

def split_findings(value: str | None) -> list[str | None]:
    """The per-abnormality values of a finding field (`FINDING_SEPARATOR`); [] when missing.

    >>> split_findings("Irregular; ; Oval"), split_findings("Round"), split_findings(None)
    (['Irregular', None, 'Oval'], ['Round'], [])
    """
    if value is None:
        return []
    return [part.strip() or None for part in str(value).split(FINDING_SEPARATOR.strip())]


# ---------------------------------------------------------------------------------------------
# The fields of one report
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReportFields:
    """What one image's report says, in canonical form (DESIGN.md "Reports"). All fields are optional.

    Values are normalised on construction, so raw table values are fine: ages like "61.0", NaN,
    empty strings, BI-RADS letters or "BI-RADS 4", densities "C" / "DENSITY C", views "L-CC". A
    missing `reason` is derived from the procedure text; a view written with its side ("L-CC")
    fills a missing `laterality`. The mass / calcification fields hold words (legend already applied),
    one per abnormality joined by `FINDING_SEPARATOR` when there are several; `mass_margin` is used
    where a dataset describes margins instead of density (CBIS-DDSM); `pathology` is "benign" or
    "malignant".

    >>> fields = ReportFields(procedure="MG Diagnostic Left", age=61.0, birads="S", density="DENSITY B", view="RMLO")
    >>> fields.reason, fields.age, fields.birads, fields.density, fields.laterality, fields.view
    ('diagnostic', 61, 4, 2, 'R', 'MLO')
    """

    procedure: str | None = None
    reason: str | None = None
    race: str | None = None
    ethnicity: str | None = None
    age: int | None = None
    image_type: str | None = None
    laterality: str | None = None
    view: str | None = None
    density: int | None = None
    birads: int | None = None
    mass_shape: str | None = None
    mass_density: str | None = None
    calc_find: str | None = None
    calc_distribution: str | None = None
    mass_margin: str | None = None
    pathology: str | None = None

    def __post_init__(self):
        self.procedure = clean_text(self.procedure)
        self.reason = reason_from_text(self.reason) or reason_from_text(self.procedure)
        self.race = clean_text(self.race)
        self.ethnicity = normalize_ethnicity(self.ethnicity)
        self.age = parse_age(self.age)
        self.image_type = clean_text(self.image_type)
        self.laterality = normalize_laterality(self.laterality)
        view_laterality, self.view = parse_view(self.view, strict=False)
        if self.laterality is None:
            self.laterality = view_laterality
        self.density = parse_density(self.density)
        self.birads = parse_birads(self.birads)
        for name in ("mass_shape", "mass_density", "calc_find", "calc_distribution", "mass_margin"):
            setattr(self, name, clean_text(getattr(self, name)))
        self.pathology = normalize_pathology(self.pathology)

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any], mapping: Mapping[str, Any] | None = None,
                     legend: Mapping[str, Mapping[str, str]] | None = None) -> "ReportFields":
        """Fields from one table row, reading the columns `mapping` names (default `EMBED_COLUMNS`).

        `mapping` maps a field name to a column, a tuple of columns (the first one with a value in
        the row is used) or None. Ready-made mappings: `EMBED_COLUMNS`,
        `DATASET_COLUMNS` (this package's converted datasets), `RSNA_COLUMNS`, `VINDR_COLUMNS`.
        `legend` ({column: {code: meaning}}, see `load_embed_legend`) turns the mass and
        calcification codes into words; a code missing from the legend is dropped with a warning.
        Without a legend those values are used as they are.

        >>> row = {"age": 58.0, "laterality": "R", "view": "MLO", "density": "B", "BIRADS": 0.0, "cancer": 0}
        >>> fields = ReportFields.from_mapping(row, RSNA_COLUMNS)
        >>> fields.age, fields.laterality, fields.view, fields.density, fields.birads, fields.procedure
        (58, 'R', 'MLO', 2, 0, None)
        """
        mapping = EMBED_COLUMNS if mapping is None else mapping
        unknown = set(mapping) - set(FIELD_NAMES)
        if unknown:
            raise ValueError(f"mapping has keys {sorted(unknown)} that are not ReportFields fields {FIELD_NAMES}.")
        values: dict[str, Any] = {}
        found_any = False
        for name, columns in mapping.items():
            for column in _as_columns(columns):
                if column not in row:
                    continue
                found_any = True
                if not is_missing(row[column]):
                    values[name] = _lookup(row[column], column, legend) if name in LEGEND_FIELDS else row[column]
                    break
        if not found_any:
            wanted = sorted({column for columns in mapping.values() for column in _as_columns(columns)})
            raise ValueError(
                f"The row has none of the columns {wanted}; its columns are {sorted(map(str, row))}. Pass the "
                f"mapping for this source (EMBED_COLUMNS, DATASET_COLUMNS, RSNA_COLUMNS, VINDR_COLUMNS or your own)."
            )
        return cls(**values)

    @classmethod
    def from_embed(cls, row: Mapping[str, Any],
                   legend: Mapping[str, Mapping[str, str]] | None = None) -> "ReportFields":
        """Fields from a joined EMBED row (metadata columns + the chosen clinical row's columns).

        >>> legend = {"massshape": {"O": "Oval"}, "massdens": {"=": "Isodense"}}
        >>> row = {"StudyDescription": "MG Screen Bilat", "ImageLateralityFinal": "L", "ViewPosition": "CC",
        ...        "FinalImageType": "2D", "tissueden": 2.0, "asses": "B", "massshape": "O", "massdens": "="}
        >>> fields = ReportFields.from_embed(row, legend)
        >>> fields.reason, fields.birads, fields.mass_shape, fields.mass_density
        ('screening', 2, 'Oval', 'Isodense')
        """
        return cls.from_mapping(row, EMBED_COLUMNS, legend)


FIELD_NAMES = tuple(field.name for field in dataclasses.fields(ReportFields))
LEGEND_FIELDS = ("mass_shape", "mass_density", "calc_find", "calc_distribution", "mass_margin")

# Field -> column(s) of each source. A tuple is tried in order (see `ReportFields.from_mapping`).
EMBED_COLUMNS = {
    "procedure": ("StudyDescription", "desc"),
    "race": "RACE_DESC",
    "ethnicity": "ETHNIC_GROUP_DESC",
    "age": "age_at_study",
    "image_type": "FinalImageType",
    "laterality": ("ImageLateralityFinal", "side"),
    "view": "ViewPosition",
    "density": "tissueden",
    "birads": "asses",
    "mass_shape": "massshape",
    "mass_density": "massdens",
    "calc_find": "calcfind",
    "calc_distribution": "calcdistri",
}
# The converted datasets (DESIGN.md schema): `report_birads` / `report_density` are what the report
# says (e.g. a male breast's density 5), `birads` / `density` the evaluation labels.
DATASET_COLUMNS = {
    **{name: name for name in FIELD_NAMES},
    "birads": ("report_birads", "birads"),
    "density": ("report_density", "density"),
}
RSNA_COLUMNS = {"age": "age", "laterality": "laterality", "view": "view", "density": "density", "birads": "BIRADS"}
VINDR_COLUMNS = {"laterality": "laterality", "view": "view_position", "density": "breast_density",
                 "birads": "breast_birads"}

_warned_codes: set[tuple[str, str]] = set()


def _as_columns(columns) -> tuple[str, ...]:
    if columns is None:
        return ()
    return (columns,) if isinstance(columns, str) else tuple(columns)


def _lookup(value: Any, column: str, legend: Mapping[str, Mapping[str, str]] | None) -> str | None:
    code = clean_text(value)
    if code is None or legend is None:
        return code
    meanings = legend.get(column)
    if meanings is None:
        return code
    meaning = meanings.get(code)
    if meaning is None and (column, code) not in _warned_codes:
        _warned_codes.add((column, code))
        warnings.warn(f"Code {code!r} of column {column!r} is not in the legend; the report leaves it out.",
                      stacklevel=3)
    return clean_text(meaning)


def load_embed_legend(csv_path: str | Path) -> dict[str, dict[str, str]]:
    """Read EMBED's `AWS_Open_Data_Clinical_Legend.csv` into {header: {code: meaning}}.

    Only the columns `Header in export`, `Code` and `Meaning` are used; whitespace around every
    value is stripped (the real file pads some meanings).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"EMBED legend {path} not found; it is tables/AWS_Open_Data_Clinical_Legend.csv "
                                f"of the EMBED release.")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        needed = ("Header in export", "Code", "Meaning")
        missing = [column for column in needed if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {missing}; its columns are {reader.fieldnames}.")
        legend: dict[str, dict[str, str]] = {}
        for line in reader:
            header, code, meaning = (" ".join((line[c] or "").split()) for c in needed)
            if header and code:
                legend.setdefault(header, {})[code] = meaning
    return legend


# ---------------------------------------------------------------------------------------------
# Which clinical row describes an image
# ---------------------------------------------------------------------------------------------


def select_clinical_row(rows, laterality: str | None, *, side_column: str = "side", birads_column: str = "asses"):
    """The clinical row of an exam that describes an image of breast `laterality` (METHOD.md 3).

    Candidates: the rows whose side is the image's; else the rows with side B, or with no side
    (DATASETS.md: an empty side applies to the whole exam); else all rows. Among the candidates:
    if all BI-RADS are <= 2 and one is 0, the first BI-RADS 0 row; otherwise the first row with the
    highest BI-RADS. Rows without a BI-RADS only win when no candidate has one.

    `rows` is a sequence of mappings or a pandas DataFrame (then a row Series is returned); None
    for no rows.

    >>> rows = [{"side": "L", "asses": "B"}, {"side": "L", "asses": "A"}, {"side": "R", "asses": "S"}]
    >>> select_clinical_row(rows, "L")["asses"], select_clinical_row(rows, "R")["asses"]
    ('A', 'S')
    """
    records = [rows.iloc[i] for i in range(len(rows))] if hasattr(rows, "iloc") else list(rows)
    if not records:
        return None
    image_side = normalize_laterality(laterality)
    sides = [normalize_laterality(record.get(side_column)) or "B" for record in records]
    candidates = [i for i, side in enumerate(sides) if image_side is not None and side == image_side]
    if not candidates:
        candidates = [i for i, side in enumerate(sides) if side == "B"]
    if not candidates:
        candidates = list(range(len(records)))
    graded = [(i, parse_birads(records[i].get(birads_column))) for i in candidates]
    graded = [(i, birads) for i, birads in graded if birads is not None]
    if not graded:
        return records[candidates[0]]
    categories = [birads for _, birads in graded]
    if max(categories) <= 2 and 0 in categories:
        return records[graded[categories.index(0)][0]]
    return records[graded[categories.index(max(categories))][0]]


# ---------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------


def _word(value: Any) -> str:
    return UNKNOWN if value is None else str(value)


def metadata_sentences(fields: ReportFields) -> list[str]:
    """Sections 1-4 (procedure, reason, patient info, image info), with "unknown" for missing values."""
    side = LATERALITY_WORDS.get(fields.laterality, UNKNOWN) if fields.laterality else UNKNOWN
    race, ethnicity, age = _word(fields.race), _word(fields.ethnicity), _word(fields.age)
    return [
        f"Procedure reported: {_word(fields.procedure)}.",
        f"Reason for procedure: {_word(fields.reason)}.",
        f"Patient info: This patient is {race}, {ethnicity}, and {age} years old.",
        f"Image info: This is a {_word(fields.image_type)} full-field digital mammogram of the {side} breast "
        f"with {_word(fields.view)} view.",
    ]


def density_sentences(density: int) -> list[str]:
    """Section 5 for density 1-5.

    >>> density_sentences(4)
    ['Breast composition: The breast is extremely dense.', 'This may lower the sensitivity of mammography.']
    """
    density = parse_density(density)
    if density is None:
        raise ValueError("density_sentences needs a density (1-4, 5 = male).")
    sentences = [f"Breast composition: The breast is {DENSITY_DESCRIPTIONS[density]}."]
    if density in DENSE_DENSITIES:
        sentences.append(DENSE_BREAST_SENTENCE)
    return sentences


def findings_sentences(birads: int | None, *, mass_shape: str | None = None, mass_density: str | None = None,
                       calc_find: str | None = None, calc_distribution: str | None = None,
                       mass_margin: str | None = None) -> list[str]:
    """Section 6: the BI-RADS finding phrase, then one sentence per coded mass and calcification.

    A field may hold several abnormalities (`FINDING_SEPARATOR`). A mass sentence needs the shape and
    the density, or the shape and the margin when no density is given; a calcification sentence the
    morphology and the distribution. Without BI-RADS (None) the phrase names the abnormalities.

    >>> findings_sentences(2, calc_find="Punctate", calc_distribution="Grouped")
    ['Findings: The mammogram shows that a benign finding is present.', 'A Grouped Punctate calcification is present.']
    >>> findings_sentences(4, mass_shape="Irregular; Oval", mass_margin="Spiculated; Circumscribed")[1:]
    ['The mass is Irregular and Spiculated.', 'The mass is Oval and Circumscribed.']
    >>> findings_sentences(None, mass_shape="Generic", calc_find="Generic")
    ['Findings: The mammogram shows that a mass and a calcification are present.']
    """
    shapes, calcs = split_findings(mass_shape), split_findings(calc_find)
    if birads is not None:
        phrase = BIRADS_FINDING_PHRASES[birads]
    else:
        named = [f"a {kind}" if count == 1 else f"{count} {plural}"
                 for kind, plural, count in (("mass", "masses", len(shapes)), ("calcification", "calcifications",
                                                                              len(calcs))) if count]
        if not named:
            raise ValueError("findings_sentences needs a BI-RADS category or a coded mass / calcification.")
        phrase = f"{' and '.join(named)} {'is' if len(shapes) + len(calcs) == 1 else 'are'} present"
    sentences = [f"Findings: The mammogram shows that {phrase}."]
    densities, margins = split_findings(mass_density), split_findings(mass_margin)
    for index, shape in enumerate(shapes):
        second = _nth(densities, index) if densities else _nth(margins, index)
        if shape and second:
            sentences.append(f"The mass is {shape} and {second}.")
    distributions = split_findings(calc_distribution)
    for index, morphology in enumerate(calcs):
        distribution = _nth(distributions, index)
        if morphology and distribution:
            sentences.append(f"A {distribution} {morphology} calcification is present.")
    return sentences


def _nth(values: list, index: int):
    return values[index] if index < len(values) else None


def pathology_sentences(pathology: str) -> list[str]:
    """Section 9, the pathology of the image's finding(s).

    >>> pathology_sentences("MALIGNANT")
    ['Pathology: The finding is malignant.']
    """
    return [f"Pathology: The finding is {normalize_pathology(pathology)}."]


def impression_sentences(birads: int) -> list[str]:
    """Sections 7 and 8.

    >>> for sentence in impression_sentences(0):
    ...     print(sentence)
    Impressions: BI-RADS Category 0: additional imaging required.
    Overall Assessment: Additional imaging is recommended.
    """
    return [
        f"Impressions: BI-RADS Category {birads}: {BIRADS_DESCRIPTIONS[birads]}.",
        f"Overall Assessment: {BIRADS_ASSESSMENTS[birads]}.",
    ]


def _uniforms(generator, count: int) -> list[float]:
    """`count` uniform draws in [0, 1) from numpy / random / torch generators or an int seed."""
    if generator is None:
        generator = np.random.default_rng()
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        generator = np.random.default_rng(int(generator))
    if isinstance(generator, np.random.Generator):
        return generator.random(count).tolist()
    if isinstance(generator, np.random.RandomState):
        return generator.random_sample(count).tolist()
    if isinstance(generator, random.Random):
        return [generator.random() for _ in range(count)]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(generator, torch.Generator):
        return torch.rand(count, generator=generator, dtype=torch.float64).tolist()
    raise TypeError(
        f"generator must be a numpy Generator, random.Random, torch.Generator or an int seed, "
        f"got {type(generator).__name__}."
    )


def mask_metadata(fields: ReportFields, mask_prob: float = PAPER_MASK_PROB, generator=None) -> ReportFields:
    """A copy of `fields` where each of the six `MASKABLE_FIELDS` is independently set to None
    ("unknown" in the report) with probability `mask_prob`. Six draws are taken every call, in
    `MASKABLE_FIELDS` order, whatever the values, so a seeded generator gives the same masks.

    >>> masked = mask_metadata(ReportFields(age=61, view="CC", birads=1), 1.0, generator=0)
    >>> masked.age, masked.view, masked.birads
    (None, None, 1)
    """
    if not 0.0 <= float(mask_prob) <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}.")
    draws = _uniforms(generator, len(MASKABLE_FIELDS))
    hidden = {name: None for name, draw in zip(MASKABLE_FIELDS, draws) if draw < mask_prob}
    return dataclasses.replace(fields, **hidden)


def build_report(fields: ReportFields, *, mask_prob: float = 0.0, generator=None) -> list[str]:
    """The report's sentences, in section order (see the module docstring).

    Args:
        fields: the image's `ReportFields`.
        mask_prob: metadata masking probability (training: `PAPER_MASK_PROB` = 0.8; evaluation: 0).
        generator: the randomness of the masking: a numpy Generator, `random.Random`,
            `torch.Generator` or an int seed; None draws fresh entropy. Unused when `mask_prob` is 0.
    """
    if not isinstance(fields, ReportFields):
        raise TypeError(
            f"build_report takes ReportFields, got {type(fields).__name__}; build them with "
            f"ReportFields.from_embed(row, legend) or ReportFields.from_mapping(row, mapping)."
        )
    if mask_prob:
        fields = mask_metadata(fields, mask_prob, generator)
    sentences = metadata_sentences(fields)
    if fields.density is not None:
        sentences += density_sentences(fields.density)
    findings = {"mass_shape": fields.mass_shape, "mass_density": fields.mass_density, "mass_margin": fields.mass_margin,
                "calc_find": fields.calc_find, "calc_distribution": fields.calc_distribution}
    if fields.birads is not None:
        sentences += findings_sentences(fields.birads, **findings)
        sentences += impression_sentences(fields.birads)
    elif fields.mass_shape or fields.calc_find:
        sentences += findings_sentences(None, **findings)
    if fields.pathology is not None:
        sentences += pathology_sentences(fields.pathology)
    return sentences


# ---------------------------------------------------------------------------------------------
# Zero-shot prompts (METHOD.md section 7)
# ---------------------------------------------------------------------------------------------

# The tasks and their classes are defined once, in `labels.TASKS`; these two names are views of it.
ZERO_SHOT_TASKS = tuple(TASKS)
CLASS_NAMES = {name: list(task.class_names) for name, task in TASKS.items()}

# The RSNA cancer prompts of the reference: (finding, BI-RADS code, BI-RADS description) per class.
RSNA_CANCER_PROMPTS = (
    ("Cancer negative: overall healthy or just benign finding", "N or B", "Negative or Benign"),
    ("Cancer positive: screening image with known biopsy-proven malignancy or suspicious abnormality found", "A",
     "Additional imaging required with biopsy-proven malignancy or suspicious abnormality found"),
)


def _class_sentences(task: str) -> list[list[str]]:
    if task == "birads":
        return [findings_sentences(category) + impression_sentences(category) for category in range(7)]
    if task == "density":
        return [density_sentences(density) for density in range(1, 5)]
    if task == "cancer":
        return [
            [f"Findings: The mammogram shows that {finding}.", f"Impressions: BI-RADS Category {code}: {description}.",
             f"Overall Assessment: {description}."]
            for finding, code, description in RSNA_CANCER_PROMPTS
        ]
    raise ValueError(f"Unknown zero-shot task {task!r}; expected one of {ZERO_SHOT_TASKS}.")


def _prefix(fields: ReportFields | None) -> list[str]:
    if fields is None:
        return []
    if not isinstance(fields, ReportFields):
        raise TypeError(f"fields must be ReportFields or None, got {type(fields).__name__}.")
    return metadata_sentences(fields)


def zero_shot_prompts(task: str, fields: ReportFields | None = None) -> list[list[str]]:
    """One prompt per class (a list of sentences), in class order (`CLASS_NAMES[task]`).

    - "birads" (7 classes, BI-RADS 0-6): the findings, impressions and assessment sentences.
    - "density" (4 classes, A-D): the breast-composition sentence(s).
    - "cancer" (2 classes, RSNA): the reference's cancer-negative / cancer-positive prompts.

    With `fields`, every prompt starts with the image's own UNMASKED metadata sections (procedure,
    reason, patient info, image info): the paper's protocol.

    >>> [len(prompt) for prompt in zero_shot_prompts("density")]
    [1, 1, 2, 2]
    >>> for sentence in zero_shot_prompts("cancer")[0]:
    ...     print(sentence)
    Findings: The mammogram shows that Cancer negative: overall healthy or just benign finding.
    Impressions: BI-RADS Category N or B: Negative or Benign.
    Overall Assessment: Negative or Benign.
    """
    prefix = _prefix(fields)
    return [prefix + sentences for sentences in _class_sentences(task)]


def _variant_sentences(task: str) -> list[list[list[str]]]:
    # Alternative phrasings are parts of the class text the model saw in training.
    base = _class_sentences(task)
    if task == "density":
        return [[sentences[:1] for sentences in base]]
    return [
        [sentences[1:] for sentences in base],  # impressions + assessment
        [sentences[:2] for sentences in base],  # findings + impressions
        [sentences[1:2] for sentences in base],  # impressions alone
    ]


def zero_shot_prompt_variants(task: str, fields: ReportFields | None = None, count: int = 1) -> list[list[list[str]]]:
    """`count` alternative prompt sets for prompt ensembling, each like `zero_shot_prompts(task, fields)`.

    The alternatives are subsets of the class sentences (e.g. impressions + assessment only), so they
    stay in the training distribution; the standard prompts are NOT included. BI-RADS and cancer
    have 3 alternatives, density 1.

    >>> zero_shot_prompt_variants("birads", count=1)[0][4]
    ['Impressions: BI-RADS Category 4: suspicious abnormality.', 'Overall Assessment: Suspicious abnormality.']
    """
    variants = _variant_sentences(task)
    if not 0 <= count <= len(variants):
        raise ValueError(f"The {task} task has {len(variants)} prompt variant(s); got count={count}.")
    prefix = _prefix(fields)
    return [[prefix + sentences for sentences in variant] for variant in variants[:count]]


__all__ = [
    "BIRADS_ASSESSMENTS", "BIRADS_DESCRIPTIONS", "BIRADS_FINDING_PHRASES", "CLASS_NAMES", "DATASET_COLUMNS",
    "DENSE_BREAST_SENTENCE", "DENSITY_DESCRIPTIONS", "EMBED_COLUMNS", "FIELD_NAMES", "FINDING_SEPARATOR",
    "LATERALITY_WORDS", "MASKABLE_FIELDS", "PAPER_MASK_PROB", "RSNA_CANCER_PROMPTS", "RSNA_COLUMNS", "ReportFields",
    "UNKNOWN", "VINDR_COLUMNS", "ZERO_SHOT_TASKS", "build_report", "density_sentences", "findings_sentences",
    "impression_sentences", "load_embed_legend", "mask_metadata", "metadata_sentences", "pathology_sentences",
    "select_clinical_row", "split_findings", "zero_shot_prompt_variants", "zero_shot_prompts",
]
