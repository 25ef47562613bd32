"""Label values and vocabularies, in one place: what a BI-RADS category, a density, an age, a
laterality, a view position is, how the published tables spell them, and the classification tasks.

Converters, reports, zero-shot prompts, probe / fine-tune, metrics and the pipeline all read these
definitions; nothing else in the package re-defines a vocabulary.

>>> parse_birads("S"), parse_density("DENSITY C"), parse_age("061Y"), normalize_laterality("left")
(4, 3, 61, 'L')
>>> parse_view("L-CC")
('L', 'CC')
>>> TASKS["density"].class_names
('A', 'B', 'C', 'D')
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np


# EMBED's `asses` letters -> BI-RADS category.
BIRADS_OF_LETTER = {"A": 0, "N": 1, "B": 2, "P": 3, "S": 4, "M": 5, "K": 6}
LETTER_OF_BIRADS = {category: letter for letter, category in BIRADS_OF_LETTER.items()}

# Density 1-4 = BI-RADS A-D; EMBED codes a male breast as 5.
DENSITY_OF_LETTER = {"A": 1, "B": 2, "C": 3, "D": 4}
LETTER_OF_DENSITY = {density: letter for letter, density in DENSITY_OF_LETTER.items()}
MALE_DENSITY = 5
# The oldest recorded human age is under 123 years: anything above this is a data error.
MAX_AGE = 130

LATERALITIES = ("L", "R")
_LATERALITY_SPELLINGS = {
    "L": "L", "LEFT": "L", "R": "R", "RIGHT": "R", "B": "B", "BOTH": "B", "BILATERAL": "B",
}

# Mammography view positions (DICOM CID 4014 codes and the extra ones EMBED uses).
VIEW_POSITIONS = (
    "CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "XCC", "FB", "SIO", "ISO", "AT", "CV", "RL", "RM", "TAN",
)
_VIEW_SYNONYMS = {
    "CRANIOCAUDAL": "CC", "MEDIOLATERALOBLIQUE": "MLO", "MEDIOLATERAL": "ML", "LATEROMEDIAL": "LM",
    "LATEROMEDIALOBLIQUE": "LMO", "AXILLARYTAIL": "AT", "CLEAVAGE": "CV",
}

REASONS = ("screening", "diagnostic")

# Values that mean "we do not know" in the real tables.
_UNKNOWN_SPELLINGS = {
    "", "nan", "none", "null", "na", "n/a", "unknown", "unknown, unavailable or unreported", "not reported",
    "unavailable", "unreported",
}


# ---------------------------------------------------------------------------------------------
# Parsing one value
# ---------------------------------------------------------------------------------------------


def is_missing(value: Any) -> bool:
    """True for None, NaN, pandas NA / NaT and strings that say the value is unknown.

    >>> [is_missing(v) for v in (None, float("nan"), "", "  ", "Unknown, Unavailable or Unreported", "2D", 0)]
    [True, True, True, True, True, False, False]
    """
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    if isinstance(value, str):
        return " ".join(value.split()).lower() in _UNKNOWN_SPELLINGS
    return False


def clean_text(value: Any) -> str | None:
    """A table value as text: whitespace runs collapsed, trailing periods dropped (the template adds
    its own), None when missing.

    >>> clean_text("  African American  or Black "), clean_text("MG Dx. Bilat."), clean_text(float("nan"))
    ('African American or Black', 'MG Dx. Bilat', None)
    """
    if is_missing(value):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)  # a numeric code read as 61.0 by pandas
    text = " ".join(str(value).split()).rstrip(". ")
    return text or None


def _integral(value: Any, what: str) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{what} {value!r} is not a whole number.")
    return int(number)


def parse_birads(value: Any) -> int | None:
    """BI-RADS category 0-6 from an EMBED letter, a number or a "BI-RADS n" string (VinDr).

    Subcategories 4A/4B/4C count as 4. EMBED's "X" (no assessment) and missing values give None.

    >>> [parse_birads(v) for v in ("N", "K", 4, 3.0, "5", "BI-RADS 4", "bi-rads category 0", "4B", "X", None)]
    [1, 6, 4, 3, 5, 4, 0, 4, None, None]
    """
    if is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"BI-RADS value {value!r} is a boolean, not a category.")
    if isinstance(value, (int, np.integer, float, np.floating)):
        category = _integral(value, "BI-RADS")
    else:
        text = " ".join(str(value).split()).upper()
        if text == "X":
            return None
        if text in BIRADS_OF_LETTER:
            return BIRADS_OF_LETTER[text]
        match = re.fullmatch(r"(?:BI-?\s?RADS\s*(?:CATEGORY\s*)?)?(\d+(?:\.0+)?)\s*[ABC]?", text)
        if match is None:
            raise ValueError(
                f"Unrecognised BI-RADS value {value!r}: expected 0-6, an EMBED `asses` letter "
                f"({' '.join(BIRADS_OF_LETTER)}) or 'BI-RADS n'."
            )
        category = int(float(match.group(1)))
    if not 0 <= category <= 6:
        raise ValueError(f"BI-RADS value {value!r} is outside 0-6.")
    return category


def parse_density(value: Any) -> int | None:
    """Breast density 1-4 (= A-D) or 5 (EMBED's male breast) from a number, a letter or "DENSITY C".

    >>> [parse_density(v) for v in (1, "4", 3.0, "C", "DENSITY A", "density d", "BI-RADS B", 5, "  ", None)]
    [1, 4, 3, 3, 1, 4, 2, 5, None, None]
    """
    if is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Density value {value!r} is a boolean, not a density.")
    if isinstance(value, (int, np.integer, float, np.floating)):
        density = _integral(value, "Density")
    else:
        text = " ".join(str(value).split()).upper()
        match = re.fullmatch(r"(?:(?:BREAST\s+)?DENSITY|BI-?\s?RADS|ACR)?\s*([A-D]|\d+(?:\.0+)?)", text)
        if match is None:
            raise ValueError(f"Unrecognised density value {value!r}: expected 1-4 (5 = male), A-D or 'DENSITY A'.")
        code = match.group(1)
        density = DENSITY_OF_LETTER[code] if code in DENSITY_OF_LETTER else int(float(code))
    if not 1 <= density <= MALE_DENSITY:
        raise ValueError(f"Density value {value!r} is outside 1-4 (5 = male).")
    return density


def parse_age(value: Any, column: str = "age") -> int | None:
    """Age in completed years from 61, 61.7, "61.0", "61.73" (EMBED's fractional ages are floored) or a
    DICOM age string such as "061Y" / "018M"; None when missing.

    >>> [parse_age(v) for v in (61, 61.7, "61.0", "061Y", "018M", None, "nan")]
    [61, 61, 61, 61, 1, None, None]
    """
    if is_missing(value):
        return None
    if isinstance(value, (int, np.integer, float, np.floating)) and not isinstance(value, (bool, np.bool_)):
        years = float(value)
    else:
        match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([YMWD]?)", str(value).strip().upper())
        if match is None:
            raise ValueError(f"bad value in column {column}: {value!r} is not an age in years (61, '61.0') "
                             f"or a DICOM age ('061Y').")
        per_year = {"": 1, "Y": 1, "M": 12, "W": 52, "D": 365}[match.group(2)]
        years = float(match.group(1)) / per_year
    if not 0 <= years <= MAX_AGE:
        raise ValueError(f"bad value in column {column}: {value!r} is outside 0-{MAX_AGE} years.")
    return int(math.floor(years))


def normalize_laterality(value: Any, *, allow_bilateral: bool = True, strict: bool = True) -> str | None:
    """"L", "R" or "B" from L/R/B, Left/Right/Both/Bilateral (any case); None when missing.

    An image has one side: `allow_bilateral=False` refuses "B" (a report or an exam may be bilateral).
    `strict=False` returns None for an unrecognised value instead of raising (e.g. a table cell a
    converter then leaves to the DICOM tags or the pixels).

    >>> [normalize_laterality(v) for v in ("L", "right", "Bilateral", None)]
    ['L', 'R', 'B', None]
    >>> normalize_laterality("B", allow_bilateral=False, strict=False), normalize_laterality("??", strict=False)
    (None, None)
    """
    text = clean_text(value)
    if text is None:
        return None
    code = _LATERALITY_SPELLINGS.get(text.upper())
    if code == "B" and not allow_bilateral:
        code = None
    if code is None and strict:
        expected = "L, R or B (or Left / Right / Both)" if allow_bilateral else "L or R (or Left / Right)"
        raise ValueError(f"Unrecognised laterality {value!r}: expected {expected}.")
    return code


def parse_view(value: Any, *, strict: bool = True) -> tuple[str | None, str | None]:
    """(laterality, view position) from a view text such as "CC", "L-CC", "LCC", "R MLO" or "MLO_R".

    A text that is a view position by itself wins over a laterality reading ("LM" is latero-medial,
    "RL" is rolled lateral). With `strict=False` an unfamiliar view is returned as it was written
    instead of raising (and no laterality is read from it).

    >>> [parse_view(v) for v in ("CC", "L-CC", "LCC", "R MLO", "MLO_R", "LM", "left craniocaudal")]
    [(None, 'CC'), ('L', 'CC'), ('L', 'CC'), ('R', 'MLO'), ('R', 'MLO'), (None, 'LM'), ('L', 'CC')]
    """
    text = clean_text(value)
    if text is None:
        return None, None
    words = [word for word in re.split(r"[\s_\-/.,]+", text.upper()) if word]
    laterality = None
    rest = []
    for word in words:
        if word in ("L", "R", "LEFT", "RIGHT"):
            laterality = word[0]
        else:
            rest.append(word)
    code = "".join(rest)
    code = _VIEW_SYNONYMS.get(code, code)
    if code in VIEW_POSITIONS:
        return laterality, code
    if laterality is None and len(code) > 2:
        head, tail = code[0], code[1:]
        if head in "LR" and _VIEW_SYNONYMS.get(tail, tail) in VIEW_POSITIONS:
            return head, _VIEW_SYNONYMS.get(tail, tail)
        head, tail = code[:-1], code[-1]
        if tail in "LR" and _VIEW_SYNONYMS.get(head, head) in VIEW_POSITIONS:
            return tail, _VIEW_SYNONYMS.get(head, head)
    if strict:
        raise ValueError(
            f"Unknown view {value!r}: expected one of {', '.join(VIEW_POSITIONS)}, optionally with a laterality "
            f"such as 'L-CC', 'LCC' or 'R MLO'."
        )
    return None, text  # an unfamiliar view says nothing reliable about the side


def reason_from_text(text: Any) -> str | None:
    """"screening" if the text contains "screen", "diagnostic" if it contains "diag" (any case), else None.

    >>> reason_from_text("MG Screening Bilateral"), reason_from_text("MG Diag Left"), reason_from_text("US Breast")
    ('screening', 'diagnostic', None)
    """
    text = clean_text(text)
    if text is None:
        return None
    lowered = text.lower()
    if "screen" in lowered:
        return "screening"
    if "diag" in lowered:
        return "diagnostic"
    return None


def normalize_ethnicity(value: Any) -> str | None:
    """EMBED's two ethnicity values, whatever the spelling; other text is kept; unknown -> None.

    >>> [normalize_ethnicity(v) for v in ("Hispanic or Latino", "Not Hispanic or Latino", "non-hispanic", None)]
    ['Hispanic or Latino', 'Non-Hispanic or Latino', 'Non-Hispanic or Latino', None]
    """
    text = clean_text(value)
    if text is None:
        return None
    lowered = text.lower()
    if "hispanic" in lowered or "latino" in lowered:
        negated = re.search(r"\b(non|not)\b", lowered) is not None
        return "Non-Hispanic or Latino" if negated else "Hispanic or Latino"
    return text


# ---------------------------------------------------------------------------------------------
# Raw table cells (the converters read every table as text)
# ---------------------------------------------------------------------------------------------

# Cells that mean "empty" in published CSV files (a converter keeps "unknown" as a value: for an
# identifier or a path it is text like any other).
MISSING_CELLS = frozenset({"", "nan", "NaN", "NAN", "None", "none", "NULL", "null", "N/A", "n/a", "<NA>", "NaT"})


def cell_text(value: Any) -> str | None:
    """A raw table cell as text, stripped; None for an empty or NaN-like cell. Unlike `clean_text`
    (report values) it keeps periods and inner spacing: ids and paths pass through unchanged.

    >>> cell_text(" 1.2.840.5.dcm "), cell_text("N/A"), cell_text(float("nan"))
    ('1.2.840.5.dcm', None, None)
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return None if text in MISSING_CELLS else text


def normalize_id(value: Any) -> str | None:
    """An identifier as text; "123.0" (an integer id written as a float) becomes "123".

    >>> normalize_id("10234.0"), normalize_id(" 00A7 "), normalize_id("")
    ('10234', '00A7', None)
    """
    text = cell_text(value)
    if text is not None and re.fullmatch(r"-?\d+\.0+", text):
        text = text.split(".")[0]
    return text


def parse_number(value: Any, column: str = "value") -> float | None:
    """A float from a cell ("61.0", "61"), None when empty; ValueError naming the column otherwise."""
    text = cell_text(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"bad value in column {column}: {text!r} is not a number") from None
    if math.isnan(number):
        return None
    return number


def parse_int(value: Any, column: str = "value") -> int | None:
    """An integer from a cell written "2", "2.0" or " 2 ", None when empty; ValueError for "2.5" or text.

    >>> parse_int("61.0"), parse_int("")
    (61, None)
    """
    number = parse_number(value, column)
    if number is None:
        return None
    if not number.is_integer():
        raise ValueError(f"bad value in column {column}: {cell_text(value)!r} is not a whole number")
    return int(number)


# ---------------------------------------------------------------------------------------------
# Classification tasks (METHOD.md section 7): one registry for converters, prompts, zero-shot,
# probe / fine-tune, metrics and the pipeline
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """A classification task: which dataset column holds its label, its classes, how labels map to them.

    `finding_present` tasks ask whether something is anywhere in the image (cancer): scores of
    several views or tiles of one image / breast are aggregated with max; the others with mean.
    """

    name: str
    label_column: str
    class_names: tuple[str, ...]
    labels: tuple[int, ...]
    description: str
    finding_present: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def label_to_class(self, label: Any) -> int | None:
        """Dataset label -> class index (None for a missing or out-of-task label, e.g. density 5 = male)."""
        if is_missing(label):
            return None
        label = int(label)
        return self.labels.index(label) if label in self.labels else None


TASKS: dict[str, Task] = {
    "birads": Task("birads", "birads", tuple(f"BI-RADS {category}" for category in range(7)), tuple(range(7)),
                   "BI-RADS assessment category 0-6 (EMBED, VinDr)"),
    "density": Task("density", "density", tuple(LETTER_OF_DENSITY[density] for density in range(1, 5)),
                    (1, 2, 3, 4), "breast density A-D (1-4; male breasts excluded)"),
    "cancer": Task("cancer", "cancer", ("negative", "positive"), (0, 1), "cancer (RSNA, CBIS-DDSM, CMMD)",
                   finding_present=True),
}


def get_task(name: str) -> Task:
    """`TASKS[name]`, with an error that lists the tasks.

    >>> get_task("density").label_to_class(3), get_task("birads").num_classes
    (2, 7)
    """
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown task {name!r}; expected one of {list(TASKS)}.") from None


__all__ = [
    "BIRADS_OF_LETTER", "DENSITY_OF_LETTER", "LATERALITIES", "LETTER_OF_BIRADS", "LETTER_OF_DENSITY", "MALE_DENSITY",
    "MAX_AGE", "MISSING_CELLS", "REASONS", "TASKS", "Task", "VIEW_POSITIONS", "cell_text", "clean_text", "get_task",
    "is_missing", "normalize_ethnicity", "normalize_id", "normalize_laterality", "parse_age", "parse_birads",
    "parse_density", "parse_int", "parse_number", "parse_view", "reason_from_text",
]
