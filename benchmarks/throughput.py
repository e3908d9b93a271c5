"""Training throughput (optimizer steps per second) of I-CFM and OT-CFM with coupling workers.

Runs the real training loop (`otcfm.train.Trainer`) on moons -> 8gaussians at batch 512 with
the paper's MLP, for each coupling and number of background coupling workers, and prints a
table with the ratio to I-CFM. Usage: python benchmarks/throughput.py [--steps 300] [--out F]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the model step")
    parser.add_argument("--out", help="write JSON records here")
    args = parser.parse_args()
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
    print("| workers | method | coupling | steps/s | ratio to I-CFM |\n|---|---|---|---|---|")
    for r in records:
        ratio = r["steps_per_second"] / base[r["workers"]]
        r["ratio_to_icfm"] = ratio
        print(f"| {r['workers']} | {r['method']} | {r['solver']} | {r['steps_per_second']:.1f} "
              f"| {ratio:.3f} |")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(records, handle, indent=2)


if __name__ == "__main__":
    main()
