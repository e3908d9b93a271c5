"""The paper's table values quoted by the benchmark pages, read from ``published.json``.

The file ships with the package (package data) and names, per section, the paper and table
its numbers come from. Only the report modules read it.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

PUBLISHED_FILE = Path(__file__).with_name("published.json")


@cache
def _all() -> dict[str, Any]:
    return json.loads(PUBLISHED_FILE.read_text(encoding="utf-8"))


def section(name: str) -> dict[str, Any]:
    """One benchmark's published numbers (``two_dim``, ``gaussian_sb`` or ``single_cell``)."""
    data = _all()
    if name not in data or name == "about":
        valid = ", ".join(k for k in data if k != "about")
        raise ValueError(f"no published numbers for {name!r}; sections: {valid}")
    return data[name]


def mean_std_table(table: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, tuple]]:
    """{row: {column: [mean, std]}} -> the same with (mean, std) tuples."""
    return {row: {col: (float(v[0]), float(v[1])) for col, v in cols.items()}
            for row, cols in table.items()}
