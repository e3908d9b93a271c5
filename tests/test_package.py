"""Release hygiene: one version, a licence file the metadata names, type information."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

import otcfm
from otcfm.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_in_one_place(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"otcfm {otcfm.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("otcfm") == otcfm.__version__
    assert f"## {otcfm.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_licence_and_type_information():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "MIT"
    assert data["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "src" / "otcfm" / "py.typed").is_file()
    assert "py.typed" in data["tool"]["setuptools"]["package-data"]["otcfm"]
