"""Every example in the package's docstrings runs and prints what it says (they are documentation users copy)."""

import doctest
import importlib
import pkgutil

import pytest

import modeling_mama

MODULES = sorted(info.name for info in pkgutil.walk_packages(modeling_mama.__path__, "modeling_mama."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"
