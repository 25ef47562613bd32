"""The package's shape: three rooms, imports pointing inwards only, no import cycle, no duplicate facts.

The top level (`modeling_mama/*.py`) is what a saved model folder needs; `modeling_mama.training` and
`modeling_mama.data` may import it, never the reverse (docs/DESIGN.md "Package layout").
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "modeling_mama"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute names of the package modules an `ImportFrom` node imports."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("modeling_mama"):
        return []
    # `from .pkg import submodule` imports the submodule too.
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> package modules it imports (at any depth of the file, `if TYPE_CHECKING` excluded)."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path): path for path in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skipped = {id(child) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for child in ast.walk(node)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom):
                targets.update(_resolve(name, path.name == "__init__.py", node))
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.startswith("modeling_mama"))
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ("training", "data")) else "model"


def test_top_level_never_imports_training_or_data():
    offenders = {module: sorted(target for target in targets if room(target) != "model")
                 for module, targets in import_graph().items() if room(module) == "model"}
    offenders = {module: targets for module, targets in offenders.items() if targets}
    assert not offenders, f"top-level modules import training/data code: {offenders}"


def test_data_and_training_do_not_import_each_other_at_module_level():
    graph = import_graph()
    crossing = {module: sorted(target for target in targets if room(target) not in ("model", room(module)))
                for module, targets in graph.items() if room(module) in ("training", "data")}
    assert not {module: targets for module, targets in crossing.items() if targets}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            # A package imports its own submodules: that is not a cycle back into the package.
            if target.startswith(node + "."):
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = import_graph()
    # Parent packages are imported before their submodules; edges into a package's own __init__ from
    # its submodules are the normal "from . import x" and are not counted.
    pruned = {module: {target for target in targets if not module.startswith(target + ".")}
              for module, targets in graph.items()}
    assert _cycle(pruned) is None, f"import cycle: {' -> '.join(_cycle(pruned))}"


def test_cycle_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_importing_the_package_loads_no_training_or_data_module():
    code = ("import sys, modeling_mama; "
            "print(sorted(m for m in sys.modules if m.startswith(('modeling_mama.training', 'modeling_mama.data'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("old, new", [
    ("modeling_mama.trainer_mama", "modeling_mama.training.trainer"),
    ("modeling_mama.converters.embed", "modeling_mama.data.converters.embed"),
    ("modeling_mama.metrics", "modeling_mama.training.metrics"),
])
def test_old_module_paths_still_import_with_a_deprecation_warning(old, new):
    import importlib

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_the_model_card_template_has_one_source():
    """The repository's model_card.md is the template; the package ships it (a link, followed by pip)."""
    shipped = PACKAGE / "model_card.md"
    assert shipped.read_text() == (PACKAGE.parent / "model_card.md").read_text()
    assert shipped.is_symlink()
