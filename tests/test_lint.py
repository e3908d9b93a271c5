"""Lint is part of the suite: ruff's rules of pyproject.toml, docstring style included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_passes_on_the_repository():
    pytest.importorskip("ruff", reason="ruff comes with the dev extra")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
         "src", "tests", "benchmarks", "examples", "docs"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_docstring_rules_are_on_for_the_package():
    # the Google convention of pydocstyle is selected, and the package is not exempt from it
    text = (ROOT / "pyproject.toml").read_text()
    assert '"D"' in text and 'convention = "google"' in text
    assert '"src/**" = ["D"]' not in text
