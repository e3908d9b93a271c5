"""Sphinx extension: write the API reference pages from the package's ``__all__`` lists.

Each public module (a module of ``otcfm`` with an ``__all__``, no underscore in its dotted
name, and not a command-line module) gets a page ``api/<module>.rst``. A name is documented
once, at its canonical module: the public module it was defined in, or else the shortest public
module that exports it (so ``otcfm.couplings.ExactOT``, not its private home). Other modules
that export the same object list it with a link to that entry. The pages are generated at
``builder-inited`` into ``docs/api/`` (not committed), so they always match the code.
"""

from __future__ import annotations

import html as html_lib
import importlib
import inspect
import pkgutil
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "otcfm"


@dataclass(frozen=True)
class Entry:
    """One exported name of one public module."""

    module: str
    name: str
    canonical: str  # dotted path of the documented entry
    is_module: bool = False  # a submodule exported by name (documented on its own page)


def public_modules(package: str = PACKAGE) -> list[str]:
    """Dotted names of the public modules that declare ``__all__``, sorted."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or parts[-1] in ("cli", "__main__"):
            continue
        names.append(info.name)
    return sorted(n for n in names if hasattr(importlib.import_module(n), "__all__"))


def entries(package: str = PACKAGE) -> dict[str, list[Entry]]:
    """Every exported name of every public module, with the entry it is documented under."""
    modules = public_modules(package)
    exporters: dict[int, list[str]] = {}
    for mod in modules:
        module = importlib.import_module(mod)
        for name in module.__all__:
            exporters.setdefault(id(getattr(module, name)), []).append(mod)
    out: dict[str, list[Entry]] = {}
    for mod in modules:
        module = importlib.import_module(mod)
        rows = []
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj):  # a submodule re-exported by name: it has its own page
                rows.append(Entry(mod, name, obj.__name__, is_module=True))
                continue
            owners = exporters[id(obj)]
            home = getattr(obj, "__module__", None) if _is_def(obj) else _assigned_in(name, owners)
            canonical = home if home in owners else min(owners, key=lambda m: (m.count("."), m))
            rows.append(Entry(mod, name, f"{canonical}.{name}"))
        out[mod] = rows
    return out


def _assigned_in(name: str, modules: list[str]) -> str | None:
    """The module among ``modules`` whose source assigns ``name`` at top level.

    That is a constant's home, where its ``#:`` documentation comment is.
    """
    pattern = re.compile(rf"^{re.escape(name)}\s*[:=]", re.M)
    for mod in modules:
        if pattern.search(inspect.getsource(importlib.import_module(mod))):
            return mod
    return None


def _is_def(obj) -> bool:
    return inspect.isclass(obj) or inspect.isfunction(obj)


def _ref(target: str) -> str:
    """A cross-reference to a documented name or to a module's page."""
    role = "mod" if inspect.ismodule(sys.modules.get(target)) else "obj"
    return f":py:{role}:`{target}`"


def _directive(module: str, name: str) -> str:
    obj = getattr(importlib.import_module(module), name)
    target = f"{module}.{name}"
    if inspect.isclass(obj):
        return f".. autoclass:: {target}\n   :members:\n   :show-inheritance:\n"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return f".. autofunction:: {target}\n"
    return f".. autodata:: {target}\n   :annotation:\n"


def write_pages(outdir: Path, package: str = PACKAGE) -> list[str]:
    """Write one page per public module and an index; return the module names."""
    table = entries(package)
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("*.rst"):
        old.unlink()
    for mod, rows in table.items():
        title = f"``{mod}``"
        lines = [title, "=" * len(title), "", f".. automodule:: {mod}", "   :no-members:", ""]
        own = [e for e in rows if e.canonical == f"{mod}.{e.name}" and not e.is_module]
        others = [e for e in rows if e not in own]
        for e in own:
            lines += [_directive(mod, e.name)]
        if others:
            lines += [
                "Also exported here",
                "------------------",
                "",
                "These names are documented where they are defined:",
                "",
            ]
            lines += [f"- ``{mod}.{e.name}``: {_ref(e.canonical)}" for e in others]
            lines.append("")
        (outdir / f"{mod}.rst").write_text("\n".join(lines))
    index = [
        "API reference",
        "=============",
        "",
        "Every public name of the package: the ``__all__`` of each public module, generated",
        "from the docstrings. Layers, from the bottom: paths, couplings and time samplers;",
        "matchers; models; sampling, metrics and likelihoods; data; training; the",
        "applications (trajectory inference, latent translation) and the recipes.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ]
    index += [f"   {mod}" for mod in table]
    (outdir / "index.rst").write_text("\n".join(index) + "\n")
    return list(table)


def presets_table() -> str:
    """A markdown table of every matcher preset, read from the built objects themselves."""
    from otcfm.matchers import MATCHERS, matcher, preset_defaults

    rows = [
        "| preset | path | sigma | coupling | time sampler |",
        "|---|---|---|---|---|",
    ]
    for name in MATCHERS.names():
        fm = matcher(name)
        sigma = preset_defaults(name).get("sigma")
        rows.append(
            f"| `{name}` | `{type(fm.path).__name__}` | {sigma} | "
            f"`{_describe(fm.coupling)}` | `{type(fm.time_sampler).__name__}` |"
        )
    return "\n".join(rows) + "\n"


def _describe(coupling) -> str:
    reg = getattr(coupling, "reg", None)
    name = type(coupling).__name__
    return f"{name}(reg={reg:g})" if isinstance(reg, float) else name


def _on_builder_inited(app) -> None:
    write_pages(Path(app.srcdir) / "api")
    generated = Path(app.srcdir) / "_generated"
    generated.mkdir(exist_ok=True)
    (generated / "presets.md").write_text(presets_table())


_HREF = re.compile(r'(?:href|src)="([^"]*)"')
_ID = re.compile(r'\sid="([^"]*)"')


def broken_links(outdir: Path) -> list[str]:
    """Every relative link or image of the built HTML whose file or anchor does not exist."""
    pages = {p: p.read_text(encoding="utf-8") for p in outdir.rglob("*.html")}
    ids: dict[Path, set[str]] = {}
    broken = []
    for page, html in pages.items():
        for href in _HREF.findall(html):
            if not href or href.startswith(("http:", "https:", "mailto:", "data:", "javascript:")):
                continue
            path, _, anchor = html_lib.unescape(href).partition("#")
            path = path.split("?", 1)[0]
            target = (page.parent / path).resolve() if path else page.resolve()
            if not target.exists():
                broken.append(f"{page.relative_to(outdir)}: {href} (no such file)")
            elif anchor and target.suffix == ".html":
                if target not in ids:
                    ids[target] = set(_ID.findall(pages.get(target) or target.read_text()))
                if anchor not in ids[target]:
                    broken.append(f"{page.relative_to(outdir)}: {href} (no such anchor)")
    return broken


def _on_build_finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    from sphinx.util import logging

    log = logging.getLogger(__name__)
    for line in broken_links(Path(app.outdir)):
        log.warning("broken internal link: %s", line)


def _on_source_read(app, docname: str, source: list[str]) -> None:
    # A results page in a subfolder (a variant run, a finer grid) is reached from its main
    # page's links, not from the navigation: mark it an orphan instead of listing it.
    parts = docname.split("/")
    if parts[0] == "results" and len(parts) > 2 and not source[0].startswith("---"):
        source[0] = "---\norphan: true\n---\n" + source[0]


def setup(app):
    """Register the page writer, the orphan marks and the link check with Sphinx."""
    app.connect("builder-inited", _on_builder_inited)
    app.connect("source-read", _on_source_read)
    app.connect("build-finished", _on_build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
