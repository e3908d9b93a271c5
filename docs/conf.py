"""Sphinx configuration of the otcfm documentation site (``make docs``).

The site is built from the repository as it is: the guides and concepts under ``docs/``, the
results pages that ``benchmarks/pages.py`` generates from the committed records, the API
reference generated from the package's ``__all__`` lists (``docs/_ext/otcfm_api.py``), and
the scripts of ``examples/`` executed by sphinx-gallery on a small budget. Warnings are
errors (``make docs`` passes ``-W``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import otcfm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "otcfm"
author = "the otcfm developers"
copyright = "2026, the otcfm developers"  # noqa: A001 (Sphinx's name)
version = release = otcfm.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "otcfm_api",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# results/*/remarks.md are inputs of the 2-D pages' generator, shown inside those pages.
exclude_patterns = ["_build", "_ext", "_generated", "results/*/remarks.md"]

# Markdown: the results pages and guides use headings as link targets and $...$ maths.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# API reference: Google-style docstrings; signatures keep their annotations as written.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True

# Examples gallery: every script of examples/ runs at build time on a small budget.
os.environ.setdefault("OTCFM_EXAMPLE_STEPS", "300")
os.environ.setdefault("MPLBACKEND", "Agg")
sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r".*\.py$",
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "show_memory": False,
}

html_theme = "furo"
html_title = f"otcfm {release}"
html_static_path: list[str] = []
