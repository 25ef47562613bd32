"""Load the command-line scripts of `examples/` and `data_scripts/` as modules, so tests can call their
`main(argv)` in-process (argument parsing lives in those scripts, not in the library)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_script(relative_path: str):
    """The module of `REPO/relative_path` (e.g. "data_scripts/embed.py"), imported once per name.

    The script's folder is put on `sys.path` first, as `python <script>` does, so scripts can import
    their sibling helpers.
    """
    path = REPO / relative_path
    name = "_script_" + relative_path.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
