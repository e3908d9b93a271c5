"""Engine overhead: one I-CFM training step of ``otcfm.train.Trainer`` against a plain loop.

Both train the paper's MLP (3 x 64 SELU, ``otcfm.models.MLP(dim=2)``) with AdamW (lr 1e-3,
weight decay 1e-5) at batch 512 on moons -> 8gaussians (training sets of 10,000 points), with
``torch.set_num_threads(1)``, in ONE process. The plain loop is the minimal I-CFM loop a user
would write: random rows of each training set (torch.randint), t ~ U(0, 1),
xt = (1 - t) x0 + t x1 + sigma eps, ut = x1 - x0, MSE, AdamW step, loss.item(). The engine is
``Trainer(cfg).train_step()`` with method icfm, once with the default number of coupling
workers and once with ``couplings.workers=0``.

After a warm-up, each round times ``--steps`` steps of every loop, taken in alternating blocks
of ``--chunk`` steps (the order rotates from block to block), so that the drifting load of a
shared machine falls on all loops alike; a round's ratio is engine / plain of that round's
per-step medians, and the summary gives the median and spread of the ratios over rounds.

Usage:
    python benchmarks/engine_overhead.py                  # 10 rounds x 200 steps, writes
        docs/results/engine_overhead.json and docs/results/engine_overhead.md
    python benchmarks/engine_overhead.py --report-only    # re-render the page from the JSON
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from otcfm.data import toy
from otcfm.models import MLP
from otcfm.train.config import RunConfig
from otcfm.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
JSON_OUT = ROOT / "docs" / "results" / "engine_overhead.json"
MD_OUT = ROOT / "docs" / "results" / "engine_overhead.md"
TASK = "moons-8gaussians"
N_TRAIN = 10_000
SIGMA = 0.1  # the icfm preset's default
LR, WEIGHT_DECAY = 1e-3, 1e-5
TARGET = 1.05  # acceptance: engine within 5% of the plain loop


# --------------------------------------------------------------------------- the two loops
def plain_loop(batch: int, seed: int) -> Callable[[], float]:
    """The minimal I-CFM training step a user would write around the same model."""
    source, target = toy.task(TASK)
    g = torch.Generator().manual_seed(seed)
    x0_all = toy.sample(source, N_TRAIN, generator=g)
    x1_all = toy.sample(target, N_TRAIN, generator=g)
    torch.manual_seed(seed)  # parameter init, as the engine does
    model = MLP(dim=2)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def step() -> float:
        x0 = x0_all[torch.randint(N_TRAIN, (batch,), generator=g)]
        x1 = x1_all[torch.randint(N_TRAIN, (batch,), generator=g)]
        t = torch.rand(batch, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        tc = t[:, None]
        xt = (1 - tc) * x0 + tc * x1 + SIGMA * eps
        ut = x1 - x0
        loss = (model(xt, t) - ut).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def engine_config(
    batch: int, steps: int, seed: int, out_dir: str, workers: int | None
) -> RunConfig:
    source, target = toy.task(TASK)
    overrides = [
        f"data.source='{source}'",
        f"data.target='{target}'",
        f"data.n_train={N_TRAIN}",
        "method.name='icfm'",
        f"method.sigma={SIGMA}",
        f"optim.batch_size={batch}",
        f"optim.steps={steps}",
        f"optim.lr={LR}",
        f"optim.weight_decay={WEIGHT_DECAY}",
        f"eval.val_every={steps}",  # train_step alone never validates; kept out of the way
        f"eval.checkpoint_every={steps}",
    ]
    if workers is not None:
        overrides.append(f"couplings.workers={workers}")
    name = f"engine-w{'default' if workers is None else workers}"
    return RunConfig(name=name, out_dir=out_dir, seed=seed).override(overrides)


# --------------------------------------------------------------------------- timing
def time_block(step: Callable[[], float], steps: int) -> list[float]:
    """Seconds of each of ``steps`` consecutive calls."""
    out = []
    clock = time.perf_counter
    for _ in range(steps):
        start = clock()
        step()
        out.append(clock() - start)
    return out


def block_stats(seconds: list[float]) -> dict[str, float]:
    us = sorted(s * 1e6 for s in seconds)
    return {
        "median_us": statistics.median(us),
        "mean_us": statistics.fmean(us),
        "p10_us": us[len(us) // 10],
        "p90_us": us[(9 * len(us)) // 10],
    }


def _load() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run(args: argparse.Namespace, command: str) -> dict:
    torch.set_num_threads(args.threads)
    load_before = _load()
    total = args.warmup + args.rounds * args.steps + 10
    default_workers = RunConfig().couplings.workers
    with tempfile.TemporaryDirectory(prefix="engine_overhead_") as tmp:
        loops: dict[str, Callable[[], float]] = {"plain": plain_loop(args.batch, args.seed)}
        trainers = {
            f"engine_workers{default_workers}": Trainer(
                engine_config(args.batch, total, args.seed, tmp, None), progress=False
            ),
            "engine_workers0": Trainer(
                engine_config(args.batch, total, args.seed, tmp, 0), progress=False
            ),
        }
        loops.update({name: tr.train_step for name, tr in trainers.items()})
        try:
            for step in loops.values():  # warm-up (and the first coupled batches made ahead)
                time_block(step, args.warmup)
            names = list(loops)
            rounds = []
            for k in range(args.rounds):
                times: dict[str, list[float]] = {name: [] for name in names}
                done = 0
                while done < args.steps:  # short alternating blocks: load drifts hit all loops
                    n = min(args.chunk, args.steps - done)
                    shift = (k + done // args.chunk) % len(names)
                    for name in names[shift:] + names[:shift]:
                        times[name] += time_block(loops[name], n)
                    done += n
                record: dict = {"round": k}
                for name in names:
                    record[name] = block_stats(times[name])
                plain = record["plain"]["median_us"]
                for name in names[1:]:
                    record[f"ratio_{name}"] = record[name]["median_us"] / plain
                rounds.append(record)
                print(
                    f"round {k}: "
                    + ", ".join(f"{n} {record[n]['median_us']:.0f} us" for n in names)
                    + ", ratios "
                    + ", ".join(f"{record[f'ratio_{n}']:.3f}" for n in names[1:]),
                    flush=True,
                )
        finally:
            for tr in trainers.values():
                tr.close()
    summary = {}
    for name in names:
        meds = [r[name]["median_us"] for r in rounds]
        summary[name] = {
            "median_us": statistics.median(meds),
            "min_us": min(meds),
            "max_us": max(meds),
        }
    for name in names[1:]:
        ratios = sorted(r[f"ratio_{name}"] for r in rounds)
        summary[f"ratio_{name}"] = {
            "median": statistics.median(ratios),
            "min": ratios[0],
            "max": ratios[-1],
            "within_target_rounds": sum(r <= TARGET for r in ratios),
        }
    return {
        "benchmark": "engine_overhead",
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": _load(),
        },
        "settings": {
            "task": TASK,
            "n_train": N_TRAIN,
            "batch": args.batch,
            "model": "MLP(dim=2) 3x64 SELU",
            "optimizer": f"AdamW lr={LR} weight_decay={WEIGHT_DECAY}",
            "sigma": SIGMA,
            "torch_threads": args.threads,
            "rounds": args.rounds,
            "steps_per_block": args.steps,
            "chunk_steps": args.chunk,
            "warmup_steps": args.warmup,
            "seed": args.seed,
            "default_coupling_workers": default_workers,
            "target_ratio": TARGET,
        },
        "loops": names,
        "rounds": rounds,
        "summary": summary,
    }


# --------------------------------------------------------------------------- page
def render(result: dict) -> str:
    s, names = result["settings"], result["loops"]
    engines = names[1:]
    lines = [
        "# Engine overhead: I-CFM training step, engine vs a plain PyTorch loop",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpu_count']} CPUs "
        f"({result['machine']['processor']}), Python {result['machine']['python']}, "
        f"torch {result['machine']['torch']}; load average (1/5/15 min) "
        f"{result['machine'].get('load_average_before')} before, "
        f"{result['machine'].get('load_average_after')} after",
        "",
        f"Both loops train {s['model']} with {s['optimizer']} at batch {s['batch']} on "
        f"{s['task']} (training sets of {s['n_train']:,} points, sigma = {s['sigma']}), with "
        f"`torch.set_num_threads({s['torch_threads']})`, in one process. The plain loop draws "
        "random rows with torch.randint, t ~ U(0, 1), xt = (1 - t) x0 + t x1 + sigma eps, "
        "ut = x1 - x0, MSE, AdamW step, loss.item(). The engine is "
        "`otcfm.train.Trainer(cfg).train_step()` with method icfm, with the default "
        f"couplings.workers = {s['default_coupling_workers']} and with couplings.workers = 0. "
        f"{s['rounds']} rounds of {s['steps_per_block']} timed steps per loop, taken in "
        f"alternating blocks of {s.get('chunk_steps', s['steps_per_block'])} steps (order "
        f"rotated from block to block), after {s['warmup_steps']} warm-up steps per loop; a "
        "round's ratio is engine / plain of that round's per-step medians. "
        f"Target: ratio <= {s['target_ratio']}.",
        "",
        "## Summary",
        "",
        "| loop | per-step median (us), median over rounds | range over rounds (us) "
        "| ratio to plain: median | ratio range | rounds <= target |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        m = result["summary"][name]
        if name == "plain":
            ratio = "1 | | "
        else:
            r = result["summary"][f"ratio_{name}"]
            ratio = (
                f"{r['median']:.3f} | {r['min']:.3f} - {r['max']:.3f} | "
                f"{r['within_target_rounds']}/{len(result['rounds'])}"
            )
        lines.append(
            f"| {name} | {m['median_us']:.0f} | {m['min_us']:.0f} - {m['max_us']:.0f} | {ratio} |"
        )
    lines += [
        "",
        "## Rounds",
        "",
        "| round | "
        + " | ".join(f"{n} median (us)" for n in names)
        + " | "
        + " | ".join(f"ratio {n}" for n in engines)
        + " |",
        "|---" * (1 + len(names) + len(engines)) + "|",
    ]
    for r in result["rounds"]:
        lines.append(
            f"| {r['round']} | "
            + " | ".join(f"{r[n]['median_us']:.0f}" for n in names)
            + " | "
            + " | ".join(f"{r[f'ratio_{n}']:.3f}" for n in engines)
            + " |"
        )
    def mean_ratio(name: str) -> float:
        ratios = sorted(r[name]["mean_us"] / r["plain"]["mean_us"] for r in result["rounds"])
        k = len(ratios)
        return (ratios[(k - 1) // 2] + ratios[k // 2]) / 2

    lines += [
        "",
        "Ratio of per-step means (median over rounds), which counts every step, including the "
        "steps where the engine draws the rows of its next 16 I-CFM batches at once: "
        + ", ".join(f"{n} {mean_ratio(n):.3f}" for n in engines)
        + f" (target {s['target_ratio']}).",
    ]
    lines += [
        "",
        "Per-step times on a shared machine are noisy: compare the ratios of one round (the "
        "loops ran back to back), not absolute times across runs. Raw numbers (p10/p90 per "
        "block as well): `docs/results/engine_overhead.json`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per block")
    parser.add_argument(
        "--chunk", type=int, default=10, help="steps per loop before switching to the next"
    )
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps per loop first")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both loops)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=JSON_OUT, help="JSON record")
    parser.add_argument("--md", type=Path, default=MD_OUT, help="markdown page")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render the page from the JSON record, measure nothing",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        result = json.loads(args.out.read_text())
    else:
        for name in ("rounds", "steps", "chunk", "warmup", "batch", "threads"):
            if getattr(args, name) < 1:
                parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
        given = sys.argv[1:] if argv is None else argv
        result = run(args, " ".join(["python benchmarks/engine_overhead.py", *given]))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(render(result))
    for name in result["loops"][1:]:
        r = result["summary"][f"ratio_{name}"]
        print(
            f"{name}: ratio to plain median {r['median']:.3f} "
            f"(range {r['min']:.3f} - {r['max']:.3f})"
        )


if __name__ == "__main__":
    main()
