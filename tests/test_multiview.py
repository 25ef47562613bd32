"""Exam index and extra-view sampling (METHOD.md section 4)."""

from collections import Counter

import numpy as np
import pytest

from modeling_mama.training.multiview import ExamIndex, sample_extra_view

#              0     1     2     3     4     5     6
EXAMS = ["a", "a", "a", "a", "b", "b", "c"]
SIDES = ["L", "L", "R", "R", "L", "L", "R"]


def draws(index, row, policy, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    return Counter(index.sample(row, policy, rng) for _ in range(n))


def test_same_exam_is_uniform_over_other_images():
    counts = draws(ExamIndex(EXAMS, SIDES), 0, "same_exam")
    assert set(counts) == {1, 2, 3}
    for row in (1, 2, 3):
        assert abs(counts[row] / 4000 - 1 / 3) < 0.03


def test_ipsilateral_and_contralateral():
    index = ExamIndex(EXAMS, SIDES)
    assert set(draws(index, 0, "ipsilateral")) == {1}
    assert set(draws(index, 3, "ipsilateral")) == {2}
    counts = draws(index, 0, "contralateral")
    assert set(counts) == {2, 3} and abs(counts[2] / 4000 - 0.5) < 0.03
    # Exam b has no right breast; exam c has a single image.
    assert set(draws(index, 4, "contralateral")) == {None}
    assert set(draws(index, 6, "same_exam")) == {None}


def test_extra_view_probability_and_fallback():
    index = ExamIndex(EXAMS, SIDES)
    rng = np.random.default_rng(1)
    picks = [sample_extra_view(index, 0, policy="same_exam", probability=0.5, rng=rng) for _ in range(4000)]
    assert abs(sum(p is not None for p in picks) / 4000 - 0.5) < 0.03
    assert all(p in (None, 1, 2, 3) for p in picks)
    # A single-image exam always falls back to a second augmentation of the same image.
    assert all(sample_extra_view(index, 6, probability=1.0, rng=rng) is None for _ in range(50))
    assert all(sample_extra_view(index, 0, probability=0.0, rng=rng) is None for _ in range(50))


def test_seeded_and_validated():
    index = ExamIndex(EXAMS, SIDES)
    assert draws(index, 1, "same_exam", seed=7) == draws(index, 1, "same_exam", seed=7)
    with pytest.raises(ValueError, match="policy"):
        index.sample(0, "bilateral", np.random.default_rng(0))
    with pytest.raises(ValueError, match="length"):
        ExamIndex(["a"], ["L", "R"])


def test_lookup_cost_does_not_grow_with_exam_count():
    # O(1): the index stores each row's place in its groups; sampling never scans a list.
    big = ExamIndex([f"e{i // 4}" for i in range(40_000)], ["L", "L", "R", "R"] * 10_000)
    rng = np.random.default_rng(0)
    assert big.sample(39_999, "same_exam", rng) in {39_996, 39_997, 39_998}
    assert big.sample(0, "ipsilateral", rng) == 1
