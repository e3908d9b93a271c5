"""The package's import graph: layers point down, no cycles, no modules loaded by name.

Every ``import`` of an otcfm module in src/otcfm counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# lower number = lower layer; a module may import its own layer (without cycles) or lower ones
LAYERS = {
    "otcfm": 0, "_utils": 0, "_ot": 0,
    "paths": 1, "couplings": 1, "time_samplers": 1, "sampling": 1, "models": 1, "metrics": 1,
    "data": 1,
    "matchers": 2, "likelihood": 2,
    "plots": 3,
    "train": 4, "trajectory": 4, "translate": 4,
    "experiments": 5,
    "cli": 6, "_cli_config": 6, "__main__": 6,
}
# core modules never import each other, only the shared helpers
CORE = {"paths", "couplings", "time_samplers", "sampling", "models", "metrics", "data"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the otcfm modules it imports (resolved to modules that exist)."""
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                subs = [f"{base}.{a.name}" for a in node.names]
                # `from package import submodule` needs the submodule, not the package's names
                targets = subs if all(t in files for t in subs) else [*subs, base]
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t.startswith("otcfm") and t != name:
                    found.add(t)
        graph[name] = found
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "otcfm"


def test_every_package_has_a_layer():
    assert {layer(m) for m in imports()} <= set(LAYERS)


def test_imports_point_down_the_layers():
    bad = [
        f"{a} -> {b}"
        for a, targets in imports().items()
        for b in targets
        if LAYERS[layer(b)] > LAYERS[layer(a)]
        or (layer(a) in CORE and layer(b) in CORE and layer(a) != layer(b))
    ]
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first search, as the cycle it closes."""
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles():
    cycles = find_cycles(imports())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_of_ours_is_loaded_by_a_name_in_a_string():
    """importlib may load an optional third-party package by name, never one of ours."""
    bad = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        calls = [
            node for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in
            ("import_module", "__import__")
        ]
        strings = [
            node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.startswith("otcfm.")
        ]
        if calls and strings:
            bad.append(f"{path.relative_to(SRC)}: {strings}")
    assert not bad, bad
