"""The ``Examples:`` sections of the library's docstrings run as written (doctest)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# the main entry points: each must carry a runnable example
ENTRY_POINTS = [
    ("otcfm.matchers", "matcher"),
    ("otcfm.couplings._exact", "ExactOT"),
    ("otcfm.paths", "LinearPath"),
    ("otcfm.sampling", "integrate"),
    ("otcfm.metrics", "wasserstein"),
    ("otcfm.likelihood", "log_likelihood"),
    ("otcfm.data.toy", "sample"),
]


def modules_with_examples() -> list[str]:
    """Dotted names of the modules of src/otcfm whose source holds a ``>>>`` example."""
    names = []
    for path in sorted((SRC / "otcfm").rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(SRC).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = modules_with_examples()


def test_entry_points_carry_examples():
    for module_name, attr in ENTRY_POINTS:
        module = importlib.import_module(module_name)
        assert module_name in MODULES, module_name
        tests = doctest.DocTestFinder(recurse=False).find(getattr(module, attr), attr)
        assert sum(len(t.examples) for t in tests) > 0, f"{module_name}.{attr} has no example"


@pytest.mark.parametrize("module_name", MODULES)
def test_module_examples_pass(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False, report=True)
    assert result.attempted > 0, f"{module_name}: no example found although it holds '>>>'"
    assert result.failed == 0, f"{module_name}: {result.failed} failed example(s), see above"
