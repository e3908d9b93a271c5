"""Training throughput (optimizer steps per second) of I-CFM and OT-CFM with coupling workers.

Runs the real training loop (`otcfm.train.Trainer`) on moons -> 8gaussians at batch 512 with
the paper's MLP, for each coupling and number of background coupling workers, and prints a
table with the ratio to I-CFM. Usage: python benchmarks/throughput.py [--steps 300] [--out F]
[--md PAGE]; ``--report-only --out F --md PAGE`` re-renders the page from the JSON report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from otcfm.data import toy
from otcfm.train.config import RunConfig
from otcfm.train.loop import Trainer

CASES = (("icfm", ""), ("otcfm", "exact"), ("otcfm", "approx"))


def steps_per_second(method: str, coupling: str, workers: int, steps: int, out: str) -> float:
    source, target = toy.task("moons-8gaussians")
    cfg = RunConfig(name=f"{method}-{coupling}-{workers}", out_dir=out).override([
        f"data.source='{source}'", f"data.target='{target}'", f"method.name='{method}'",
        f"method.coupling='{coupling}'", f"couplings.workers={workers}", "optim.batch_size=512",
        f"optim.steps={steps}",
    ])
    trainer = Trainer(cfg, progress=False)
    try:
        for _ in range(10):  # warm up (and fill the prefetch queue)
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return steps / (time.perf_counter() - start)
    finally:
        trainer.close()


def machine(threads: int) -> str:
    return (f"{platform.machine()}, {os.cpu_count()} logical CPUs, Python "
            f"{platform.python_version()}, torch {torch.__version__}; model step on {threads} "
            "torch thread(s)")


def _rows(records: list[dict[str, Any]]) -> list[str]:
    return [f"| {r['workers']} | {r['method']} | {r['solver']} | {r['steps_per_second']:.1f} | "
            f"{r['ratio_to_icfm']:.3f} |" for r in records]


def _span(values: list[float], fmt: str) -> str:
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def render(report: dict[str, Any]) -> str:
    """The markdown page, a function of the JSON report alone."""
    recs = report["records"]
    approx = [r for r in recs if r["solver"] == "approx"]
    exact = [r for r in recs if r["solver"] == "exact"]
    most = max(r["workers"] for r in recs)
    top = {r["method"] + r["solver"]: r for r in recs if r["workers"] == most}
    reading = ""
    if approx and exact and "icfmindependent" in top and "otcfmapprox" in top:
        reading = (
            "\nReading: with `ApproxOT(tol=0.01)` OT-CFM trains at "
            + " / ".join(f"{r['ratio_to_icfm']:.2f}" for r in approx)
            + " of I-CFM's rate with " + " / ".join(str(r["workers"]) for r in approx)
            + f" coupling workers ({top['otcfmapprox']['steps_per_second']:.0f} against "
            f"{top['icfmindependent']['steps_per_second']:.0f} steps/s with {most}); with the "
            f"exact plan at {_span([r['ratio_to_icfm'] for r in exact], '{:.0%}')} whatever "
            "the workers. One run, so indicative.\n"
        )
    return (
        "# Training throughput with background coupling workers\n\n"
        f"- Command: `{report['command']}`\n"
        "- Setup: the real training loop (`Trainer.train_step`), moons -> 8gaussians, batch "
        f"{recs[0]['B']}, MLP 3x64 SELU, AdamW; coupling workers are threads; "
        f"{report['steps']} timed steps after 10 warm-up steps.\n"
        f"- Machine: {report['machine']}; {report['date']}. {report.get('conditions', '')}\n"
        "- Rendered from the JSON record by `python benchmarks/throughput.py --report-only "
        "--out JSON --md PAGE` (runs nothing).\n\n"
        "| workers | method | coupling | steps/s | ratio to I-CFM |\n|---|---|---|---|---|\n"
        + "\n".join(_rows(recs)) + "\n" + reading
    )


README_START = "<!-- throughput numbers: generated from docs/results/throughput.json -->"
README_END = "<!-- end of throughput numbers -->"


def readme_section(report: dict[str, Any]) -> str:
    recs = report["records"]
    approx = [r for r in recs if r["solver"] == "approx"]
    exact = [r for r in recs if r["solver"] == "exact"]
    most = max(r["workers"] for r in recs)
    top = {r["method"] + r["solver"]: r for r in recs if r["workers"] == most}
    return "\n".join([
        README_START,
        f"At batch {recs[0]['B']} in 2-D, OT-CFM with `--coupling approx` trained at "
        + " / ".join(f"{r['ratio_to_icfm']:.2f}" for r in approx) + " of I-CFM's rate with "
        + " / ".join(str(r["workers"]) for r in approx) + " coupling workers ("
        f"{top['otcfmapprox']['steps_per_second']:.0f} against "
        f"{top['icfmindependent']['steps_per_second']:.0f} steps/s with {most}), and at "
        f"{_span([r['ratio_to_icfm'] for r in exact], '{:.0%}')} with the exact plan (one run, "
        f"{report['date']}, record `docs/results/throughput.json`).",
        README_END,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the model step")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--md", type=Path, help="write the markdown page here")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render --md from the JSON report --out; run nothing")
    args = parser.parse_args()
    if args.report_only:
        if args.out is None or args.md is None:
            raise SystemExit("--report-only needs --out (the JSON report) and --md (the page)")
        args.md.write_text(render(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(args.threads)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in [int(w) for w in args.workers.split(",")]:
            for method, coupling in CASES:
                rate = steps_per_second(method, coupling, workers, args.steps, tmp)
                records.append({"kind": "throughput", "library": "otcfm", "method": method,
                                "solver": coupling or "independent", "workers": workers,
                                "B": 512, "d": 2, "steps_per_second": rate})
    base = {r["workers"]: r["steps_per_second"] for r in records if r["method"] == "icfm"}
    for r in records:
        r["ratio_to_icfm"] = r["steps_per_second"] / base[r["workers"]]
    report = {
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
        "machine": machine(args.threads),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "steps": args.steps,
        "records": records,
    }
    print("| workers | method | coupling | steps/s | ratio to I-CFM |\n|---|---|---|---|---|")
    print("\n".join(_rows(records)))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.md:
        args.md.write_text(render(report))


if __name__ == "__main__":
    main()
