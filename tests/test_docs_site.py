"""The documentation site: every public name is in the built API reference, no link is broken.

The site is built by ``make docs`` (``.ci/run`` builds it before the tests). Here the test reads
``docs/_build/html`` when it is there and newer than every source it is built from, builds it
into a temporary folder when Sphinx is installed, and is skipped otherwise.
"""

from __future__ import annotations

import html
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import otcfm_api  # noqa: E402  (the site's own generator, a plain module)


def _sources() -> list[Path]:
    return [p for p in [*DOCS.rglob("*.md"), *(ROOT / "src").rglob("*.py"),
                        *(ROOT / "examples").glob("*.py"), DOCS / "conf.py"]
            if "_build" not in p.parts and "auto_examples" not in p.parts]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    built = DOCS / "_build" / "html"
    index = built / "index.html"
    if index.exists() and index.stat().st_mtime >= max(p.stat().st_mtime for p in _sources()):
        return built
    pytest.importorskip("sphinx", reason="the docs extra is not installed (make docs)")
    pytest.importorskip("furo")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going",
         str(DOCS), str(out), "-d", str(out / ".doctrees")],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_every_public_name_is_in_the_api_reference(site):
    table = otcfm_api.entries()
    assert len(table) >= 30 and sum(map(len, table.values())) >= 250  # the whole package
    missing = []
    for mod, rows in table.items():
        page = html.unescape((site / "api" / f"{mod}.html").read_text(encoding="utf-8"))
        assert f'id="module-{mod}"' in page, mod
        for e in rows:
            anchor = f'id="module-{e.canonical}"' if e.is_module else f'id="{e.canonical}"'
            home = page if e.canonical == f"{mod}.{e.name}" and not e.is_module else None
            if home is None:  # documented on its canonical page, listed here with a link
                if f"{mod}.{e.name}" not in page:
                    missing.append(f"{mod}.{e.name} (not listed on its module's page)")
                target = e.canonical if e.is_module else e.canonical.rsplit(".", 1)[0]
                home = (site / "api" / f"{target}.html").read_text(encoding="utf-8")
            if anchor not in home:
                missing.append(f"{mod}.{e.name} (no entry {e.canonical})")
    assert not missing, missing


def test_every_public_module_declares_all_of_its_names():
    # the reference is only as complete as __all__: each exported name must exist
    for mod in otcfm_api.public_modules():
        module = importlib.import_module(mod)
        assert len(set(module.__all__)) == len(module.__all__), mod
        for name in module.__all__:
            assert hasattr(module, name), f"{mod}.__all__ names {name!r}, which it lacks"


def test_the_built_site_has_no_broken_internal_link(site):
    assert otcfm_api.broken_links(site) == []


def test_the_link_check_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.html").write_text(
        '<a href="sub/b.html#here">ok</a> <a href="sub/b.html#gone">bad anchor</a> '
        '<a href="nope.html">missing</a> <img src="sub/c.png?v=1"> <a href="https://x.org/y">'
        '<a href="#self">self</a> <p id="self"></p>'
    )
    (tmp_path / "sub" / "b.html").write_text('<h1 id="here">b</h1> <a href="../a.html">up</a>')
    (tmp_path / "sub" / "c.png").write_bytes(b"")
    broken = otcfm_api.broken_links(tmp_path)
    assert sorted(broken) == ["a.html: nope.html (no such file)",
                              "a.html: sub/b.html#gone (no such anchor)"]


def test_the_presets_table_is_read_from_the_presets():
    from otcfm.matchers import MATCHERS

    table = otcfm_api.presets_table()
    rows = [r for r in table.splitlines()[2:] if r]
    assert [re.match(r"\| `(\w+)`", r).group(1) for r in rows] == sorted(MATCHERS.names())
    assert "| `sbcfm` | `BrownianBridgePath` | 1.0 | `EntropicOT(reg=2)` |" in table
