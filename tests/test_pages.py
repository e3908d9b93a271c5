"""Every results page and README results block is its generator's output for the committed
records: rendered in-process (report-only paths: nothing trained or measured) and compared
byte for byte; no page under docs/results is left without a generator."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _load_pages():
    spec = importlib.util.spec_from_file_location("bench_pages", ROOT / "benchmarks" / "pages.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


PAGES = _load_pages()


@pytest.mark.parametrize("page", sorted(PAGES.PAGES))
def test_page_is_its_generators_output_for_the_committed_records(page):
    render, _ = PAGES.PAGES[page]
    assert render() == (RESULTS / page).read_text(), (
        f"docs/results/{page} differs from what its records give: python benchmarks/pages.py")


@pytest.mark.parametrize("block", sorted(PAGES.BLOCKS))
def test_readme_block_is_its_generators_output_for_the_committed_records(block):
    readme = (ROOT / "README.md").read_text()
    _, _, render = PAGES.BLOCKS[block]
    assert PAGES.readme_block(readme, block) == render()


def test_every_markdown_file_under_results_has_a_generator_or_is_its_input():
    listed = set(PAGES.PAGES) | {i for _, inputs in PAGES.PAGES.values() for i in inputs}
    found = {p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*.md")}
    assert found - listed == set(), "pages without a generator in benchmarks/pages.py"
    assert listed - found == set(), "generators of pages that are not committed"


def test_no_page_quotes_a_date_it_was_not_given():
    """Pages are functions of their records: rendering twice gives the same text, and the
    dates a page prints are dates its records hold."""
    import re

    for page, (render, _) in PAGES.PAGES.items():
        text = render()
        assert render() == text, page
        records = " ".join(p.read_text() for p in (RESULTS / page).parent.glob("*.json"))
        records += " ".join(p.read_text() for p in RESULTS.glob("*.json"))
        for date in set(re.findall(r"20\d\d-\d\d-\d\d", text)):
            assert date in records, f"{page} prints {date}, which no record holds"


def test_check_mode_finds_a_changed_number(tmp_path, monkeypatch):
    """The checker is not vacuous: a record whose number changes makes its page differ."""
    copy = tmp_path / "results"
    copy.mkdir()
    record = json.loads((RESULTS / "throughput.json").read_text())
    record["records"][0]["steps_per_second"] += 1.0
    (copy / "throughput.json").write_text(json.dumps(record))
    monkeypatch.setattr(PAGES, "RESULTS", copy)
    render, _ = PAGES.PAGES["throughput.md"]
    assert render() != (RESULTS / "throughput.md").read_text()


def test_remarks_placeholders_are_all_filled_and_unknown_ones_refused(tmp_path):
    from otcfm.experiments.two_dim_facts import fill_remarks

    for page, (_, inputs) in PAGES.PAGES.items():
        for name in inputs:
            text = fill_remarks((RESULTS / name).read_text(), (RESULTS / page).parent)
            assert "{{" not in text and "}}" not in text and "<!-- numbers" not in text
    with pytest.raises(ValueError, match="no_such_fact"):
        fill_remarks("<!-- numbers: two_dim -->\n{{no_such_fact}}\n", RESULTS)
    with pytest.raises(ValueError, match="need a first line"):
        fill_remarks("W2 {{otcfm_moons_npe}}\n", RESULTS)
    assert fill_remarks("plain prose, 3 numbers typed\n", tmp_path) == (
        "plain prose, 3 numbers typed\n")


def test_wall_time_is_stated_only_for_a_run_with_nothing_from_the_cache():
    """The protocol's wall time counts as measured end to end only when no cell came from the
    cache; then it is held against the 3-hour target and the 2-hour aim, both ways."""
    from otcfm.experiments.two_dim_facts import wall_facts

    run = {"wall_seconds": 2.5 * 3600, "jobs": 2, "machine": "AMD EPYC, 2 logical CPUs"}
    cached = wall_facts({**run, "cached": 46}, 135)["wall_statement"]
    assert cached.startswith("not measured end to end: 46 of 135 cells") and "met" not in cached
    met = wall_facts({**run, "cached": 0}, 135)
    assert met["wall_hours"] == "2.50" and "150 min" in met["wall_statement"]
    assert "target on 2 cores is met, the 2-hour aim not met" in met["wall_statement"]
    assert "2 job(s) on AMD EPYC" in met["wall_statement"]
    over = wall_facts({**run, "cached": 0, "wall_seconds": 3.01 * 3600}, 135)
    assert "is NOT met" in over["wall_statement"]
    fast = wall_facts({**run, "wall_seconds": 1.9 * 3600}, 135)  # no "cached": none cached
    assert "is met, the 2-hour aim met" in fast["wall_statement"]
    with pytest.raises(ValueError, match="machine"):
        wall_facts({**run, "machine": ""}, 135)
