"""Start-up time of the command line: wall time of fresh interpreters, median of repeats.

    python benchmarks/startup.py [--repeats 9] [--before REV]   # measure, write JSON and page
    python benchmarks/startup.py --report-only                  # re-render the page

``--before REV`` also times the otcfm cases on the source tree of git revision REV (exported
to a temporary folder and put first on PYTHONPATH), in the same rounds: a before/after.

Each case runs as a new subprocess (``sys.executable``), so every run pays the full import
cost; one unrecorded run of each case first fills the file cache and compiles bytecode. The
cases take turns within a round, so load changes on a shared machine hit all of them alike.
``otcfm`` is run as ``python -m otcfm`` (the console script calls the same ``otcfm.cli.main``).
Two reference cases give the floor: the bare interpreter and ``import torch``.

Writes docs/results/startup.json (machine, date, command, every run) and renders
docs/results/startup.md from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JSON_PATH = ROOT / "docs" / "results" / "startup.json"
PAGE_PATH = ROOT / "docs" / "results" / "startup.md"

# name -> arguments after the interpreter
CASES: dict[str, list[str]] = {
    "otcfm --help": ["-m", "otcfm", "--help"],
    "otcfm list": ["-m", "otcfm", "list"],
    "otcfm train --help": ["-m", "otcfm", "train", "--help"],
    'python -c "import otcfm.couplings"': ["-c", "import otcfm.couplings"],
    'python -c "import torch" (reference)': ["-c", "import torch"],
    'python -c "pass" (reference)': ["-c", "pass"],
}
# the start-up targets, seconds (median wall time)
BOUNDS = {"otcfm --help": 0.5, "otcfm list": 2.5}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("torch", "numpy", "scipy", "POT", "scikit-learn", "numba"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu, "cpu_cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "versions": versions,
    }


def time_once(args: list[str], cwd: str, env: dict[str, str] | None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def export_source(rev: str, into: Path) -> Path:
    """The src/ folder of git revision ``rev``, extracted under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def measure(repeats: int, command: str, before: str | None) -> dict[str, Any]:
    load_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as cwd:  # no project files on the path but the install
        # (label, case name, argv, env)
        jobs: list[tuple[str, str, list[str], dict[str, str] | None]] = [
            ("now", name, args, None) for name, args in CASES.items()
        ]
        if before:
            src = export_source(before, Path(cwd))
            env = {**os.environ, "PYTHONPATH": str(src)}
            jobs += [(before, name, args, env) for name, args in CASES.items()
                     if "otcfm" in name]
        runs: dict[tuple[str, str], list[float]] = {(job[0], job[1]): [] for job in jobs}
        for _, _, args, env in jobs:
            time_once(args, cwd, env)  # warm-up, not recorded
        for _ in range(repeats):
            for label, name, args, env in jobs:
                runs[label, name].append(time_once(args, cwd, env))

    def summary(label: str) -> list[dict[str, Any]]:
        out = []
        for (lab, name), r in runs.items():
            if lab == label:
                out.append({
                    "name": name, "argv": ["python", *CASES[name]], "runs_s": r,
                    "median_s": statistics.median(r), "min_s": min(r), "max_s": max(r),
                    "bound_s": BOUNDS.get(name) if label == "now" else None,
                })
        return out

    return {
        "benchmark": "startup",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "repeats": repeats,
        "revision": _revision("HEAD"),
        "machine": {**machine(), "load_average_at_start": load_start,
                    "load_average_at_end": list(os.getloadavg())},
        "cases": summary("now"),
        "before": {"revision": _revision(before), "cases": summary(before)} if before else None,
    }


def _revision(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
                          capture_output=True, text=True).stdout.strip()


def render(data: dict[str, Any]) -> str:
    """The Markdown page of one startup record."""
    m = data["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    lines = [
        "# Command-line start-up time",
        "",
        "Rendered by `python benchmarks/startup.py --report-only` from "
        "[startup.json](startup.json); do not edit by hand.",
        "",
        f"- Command: `{data['command']}`",
        f"- Date: {data['date']}",
        f"- Machine: {m['cpu']}, {m['cpu_cores']} CPU cores, {m['platform']}, "
        f"Python {m['python']}; {versions}",
        f"- Load average (1, 5, 15 min) at start {_load(m['load_average_at_start'])}, at end "
        f"{_load(m['load_average_at_end'])}: a shared machine, so timings are indicative.",
        f"- Wall time of a fresh interpreter per run, {data['repeats']} runs per case taken in "
        "turns after one unrecorded warm-up run each; `otcfm` is run as `python -m otcfm`.",
        "",
        "| case | median (s) | min (s) | max (s) | target (s) | met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for c in data["cases"]:
        bound = c["bound_s"]
        met = "-" if bound is None else ("yes" if c["median_s"] < bound else "**no**")
        target = "-" if bound is None else f"< {bound:g}"
        lines.append(f"| `{c['name']}` | {c['median_s']:.2f} | {c['min_s']:.2f} | "
                     f"{c['max_s']:.2f} | {target} | {met} |")
    if data.get("before"):
        then = {c["name"]: c for c in data["before"]["cases"]}
        lines += [
            "",
            f"Before and after: the same cases on the source of commit "
            f"{data['before']['revision']} (put first on PYTHONPATH), timed in the same rounds "
            f"as the current tree ({data['revision']}, uncommitted changes included).",
            "",
            "| case | median before (s) | median now (s) | ratio |",
            "|---|---:|---:|---:|",
        ]
        for c in data["cases"]:
            if c["name"] in then:
                old = then[c["name"]]["median_s"]
                lines.append(f"| `{c['name']}` | {old:.2f} | {c['median_s']:.2f} | "
                             f"{c['median_s'] / old:.2f} |")
    floor = {c["name"]: c["median_s"] for c in data["cases"]}
    torch_name = 'python -c "import torch" (reference)'
    if "otcfm list" in floor and torch_name in floor:
        lines += [
            "",
            f"`otcfm list` needs the registries, hence torch: its median is "
            f"{floor['otcfm list'] - floor[torch_name]:+.2f} s from the `import torch` "
            "reference on the same runs. `otcfm --help` and `otcfm train --help` import "
            "neither torch nor numpy (checked by tests/test_cli.py).",
        ]
    return "\n".join(lines) + "\n"


def _load(values: Sequence[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="recorded runs per case (>= 7)")
    parser.add_argument("--before", metavar="REV",
                        help="also time the otcfm cases on the source of this git revision")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render the page from the JSON, measure nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        data = json.loads(JSON_PATH.read_text())
    else:
        if args.repeats < 7:
            parser.error(f"--repeats must be >= 7, got {args.repeats}")
        command = f"python benchmarks/startup.py --repeats {args.repeats}"
        if args.before:
            command += f" --before {args.before}"
        data = measure(args.repeats, command, args.before)
        JSON_PATH.write_text(json.dumps(data, indent=2) + "\n")
    PAGE_PATH.write_text(render(data))
    for c in data["cases"]:
        print(f"{c['name']:<40} median {c['median_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
