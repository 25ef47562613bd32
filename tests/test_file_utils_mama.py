"""Files written all or nothing (`file_utils_mama`): the target is either the old file or the new one."""

import doctest
import json

import pytest

from modeling_mama import file_utils_mama
from modeling_mama.file_utils_mama import atomic_path, write_json_atomic, write_text_atomic


def test_docstring_examples():
    assert doctest.testmod(file_utils_mama, optionflags=doctest.ELLIPSIS).failed == 0


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"auc": 0.5})
    with pytest.raises(ValueError, match="Out of range float"):
        write_json_atomic(target, {"auc": float("nan")}, allow_nan=False)
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temporary:
        temporary.write_text('{"auc": 0.')  # interrupted half-way
        raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"auc": 0.5}
    assert [path.name for path in tmp_path.iterdir()] == ["results.json"]


def test_parents_are_created_and_a_writer_that_wrote_nothing_is_an_error(tmp_path):
    assert write_text_atomic(tmp_path / "a" / "b" / "card.md", "# card").read_text() == "# card"
    with pytest.raises(FileNotFoundError, match="Nothing was written"), atomic_path(tmp_path / "empty.csv"):
        pass
    assert not (tmp_path / "empty.csv").exists()
