"""Every results page and README results block, with the generator that renders it from its
committed records (JSON under docs/results). Nothing is measured or trained here.

    python benchmarks/pages.py            # rewrite every page and README block from the records
    python benchmarks/pages.py --check    # name what differs from its records (exit 1)

``tests/test_pages.py`` renders each one in-process and compares it byte for byte with the
committed file; a markdown file under docs/results that is neither a page below nor an input
of one (a remarks template) fails that test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType

from otcfm.experiments import (
    demo,
    gaussian_sb_report,
    images_report,
    single_cell_report,
    translation,
    two_dim_report,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
README = ROOT / "README.md"


@cache
def bench(name: str) -> ModuleType:
    """benchmarks/<name>.py, loaded from its file (the benchmarks are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks"
                                                  / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _json(name: str):
    return json.loads((RESULTS / name).read_text())


def _distributed() -> str:
    mod = bench("distributed")
    gpu = RESULTS / "distributed_gpu.json"
    return mod.render(_json("distributed.json"), _json(gpu.name) if gpu.is_file() else None)


#: the checkpoint-choice studies on one page, in this order (benchmarks/checkpoint_choice.py)
CHECKPOINT_RECORDS = ("checkpoint_choice.json", "checkpoint_choice_exact.json",
                      "checkpoint_choice_sf2m.json")


# page (relative to docs/results) -> (renderer, hand-written inputs besides the JSON records)
PAGES: dict[str, tuple[Callable[[], str], tuple[str, ...]]] = {
    "two_dim.md": (lambda: two_dim_report.render_page(RESULTS), ("two_dim/remarks.md",)),
    "two_dim/w2_noise.md": (lambda: bench("w2_noise").render(_json("two_dim/w2_noise.json")), ()),
    "two_dim_ema/two_dim.md": (lambda: two_dim_report.render_page(RESULTS / "two_dim_ema"), ()),
    "two_dim_tc_exact/two_dim.md": (
        lambda: two_dim_report.render_page(RESULTS / "two_dim_tc_exact"), ()),
    "two_dim_sbcfm/two_dim.md": (
        lambda: two_dim_report.render_page(RESULTS / "two_dim_sbcfm"), ()),
    "two_dim_fixed_data/two_dim.md": (
        lambda: two_dim_report.render_page(RESULTS / "two_dim_fixed_data"), ()),
    "two_dim_tc_replace/two_dim.md": (
        lambda: two_dim_report.render_page(RESULTS / "two_dim_tc_replace"), ()),
    "two_dim_torchcfm/two_dim.md": (
        lambda: two_dim_report.render_page(RESULTS / "two_dim_torchcfm"),
        ("two_dim_torchcfm/remarks.md",)),
    "checkpoint_choice.md": (
        lambda: bench("checkpoint_choice").render([_json(f) for f in CHECKPOINT_RECORDS]), ()),
    "gaussian_sb.md": (lambda: gaussian_sb_report.render_page(RESULTS), ()),
    "gaussian_sb/steps_1000/gaussian_sb.md": (
        lambda: gaussian_sb_report.render_page(RESULTS / "gaussian_sb" / "steps_1000"), ()),
    "gaussian_sb/constant_200/gaussian_sb.md": (
        lambda: gaussian_sb_report.render_page(RESULTS / "gaussian_sb" / "constant_200"), ()),
    "gaussian_sb/constant_2000/gaussian_sb.md": (
        lambda: gaussian_sb_report.render_page(RESULTS / "gaussian_sb" / "constant_2000"), ()),
    "single_cell.md": (lambda: single_cell_report.render_page(RESULTS), ()),
    "performance.md": (lambda: bench("couplings").render(_json("performance.json")), ()),
    "entropic.md": (lambda: bench("couplings").render(_json("entropic.json")), ()),
    "throughput.md": (lambda: bench("throughput").render(_json("throughput.json")), ()),
    "exact_solvers.md": (lambda: bench("exact_solvers").render(_json("exact_solvers.json")), ()),
    "startup.md": (lambda: bench("startup").render(_json("startup.json")), ()),
    "engine_overhead.md": (
        lambda: bench("engine_overhead").render(_json("engine_overhead.json")), ()),
    "distributed.md": (_distributed, ()),
    "images.md": (lambda: images_report.render_page(RESULTS), ()),
    "images_quick/images.md": (lambda: images_report.render_page(RESULTS / "images_quick"), ()),
    "translation.md": (lambda: translation.render(_json("translation.json")), ()),
    "translation_quick/translation.md": (
        lambda: translation.render(_json("translation_quick/translation.json")), ()),
    "translation/ot_batch.md": (
        lambda: bench("translation_ot_batch").render(_json("translation/ot_batch.json")), ()),
}

# README block -> (start marker, end marker, renderer); the block runs from start to end
BLOCKS: dict[str, tuple[str, str, Callable[[], str]]] = {
    "demo": (demo.README_START, demo.README_END,
             lambda: demo.readme_section(_json("demo.json"))),
    "two_dim": (two_dim_report.README_START, two_dim_report.README_END,
                lambda: two_dim_report.readme_section(RESULTS)),
    "gaussian_sb": (gaussian_sb_report.README_START, gaussian_sb_report.README_END,
                    lambda: gaussian_sb_report.readme_section(RESULTS)),
    "single_cell": (single_cell_report.README_START, single_cell_report.README_END,
                    lambda: single_cell_report.readme_section(_json("single_cell.json"))),
    "couplings": (bench("couplings").README_START, bench("couplings").README_END,
                  lambda: bench("couplings").readme_section(_json("performance.json"))),
    "throughput": (bench("throughput").README_START, bench("throughput").README_END,
                   lambda: bench("throughput").readme_section(_json("throughput.json"))),
    "images": (images_report.README_START, images_report.README_END,
               lambda: images_report.readme_section(RESULTS)),
}


def readme_block(text: str, name: str) -> str:
    """The committed text of one README block, markers included."""
    start, end, _ = BLOCKS[name]
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"README.md must hold the {name} block's markers once each: {start!r}")
    i = text.index(start)
    return text[i:text.index(end, i) + len(end)]


def readme_with_blocks(text: str) -> str:
    """README text with every block rendered from its records."""
    for name, (_, _, render) in BLOCKS.items():
        text = text.replace(readme_block(text, name), render())
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 on a difference")
    args = p.parse_args(argv)
    differ = []
    for page, (render, _) in PAGES.items():
        text, path = render(), RESULTS / page
        if not path.is_file() or path.read_text() != text:
            differ.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(text)
    readme = README.read_text()
    new = readme_with_blocks(readme)
    if new != readme:
        differ.append("README.md")
        if not args.check:
            README.write_text(new)
    verb = "differ from their records" if args.check else "rewritten"
    print(f"{len(differ)} file(s) {verb}" + "".join(f"\n  {d}" for d in differ))
    return 1 if args.check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
