"""TorchCFM side by side on the 2-D benchmark: the same cells, TorchCFM's loss.

Usage: python benchmarks/two_dim_torchcfm.py [the options of `otcfm bench two-dim`]
e.g.   python benchmarks/two_dim_torchcfm.py --methods icfm,otcfm --coupling otcfm=approx

Runs the cells of `otcfm bench two-dim` (same options, same run cache, same records and page)
and, for I-CFM and OT-CFM, the same cells trained with TorchCFM (the optional ``bench`` extra:
``pip install 'otcfm[bench]'``): its ``ConditionalFlowMatcher`` /
``ExactOptimalTransportConditionalFlowMatcher`` computes the regression targets in a plain
training loop. Everything else equals our cell: the training tensors, the minibatch drawn at
each step (the same seeded streams as our loop), the initial weights (same seed, same MLP),
AdamW, steps, validation cadence (loss and W2 of the validation set, best-validation weights
kept) and our evaluation code. Writes OUT/two_dim.json, OUT/two_dim_torchcfm.json,
OUT/two_dim.md (with a "Side by side with TorchCFM" table) and the figures.

TorchCFM draws t, noise and its OT pairs from the global torch and numpy RNGs, so this script
(outside the installed package) seeds them from the cell and restores them afterwards.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from otcfm.data import sample_batch
from otcfm.experiments import two_dim, two_dim_cli
from otcfm.experiments.two_dim import Cell, Protocol, cell_config, finish_record
from otcfm.metrics import wasserstein
from otcfm.sampling import integrate
from otcfm.train.checkpoint import save_atomic, write_text_atomic
from otcfm.train.datasets import load_run_data, stream
from otcfm.train.loop import build_model

LIBRARY = "torchcfm"
MATCHER_CLASSES = {
    "icfm": "ConditionalFlowMatcher",
    "otcfm": "ExactOptimalTransportConditionalFlowMatcher",
}
PROG = "python benchmarks/two_dim_torchcfm.py"


def require_torchcfm() -> Any:
    """The ``torchcfm`` module, or an ImportError naming the extra to install."""
    try:
        import torchcfm
    except ImportError:
        raise ImportError(
            f"{PROG} needs TorchCFM, the reference library: pip install 'otcfm[bench]'"
        ) from None
    return torchcfm


def torchcfm_matcher(method: str, sigma: float) -> Any:
    if method not in MATCHER_CLASSES:
        raise ValueError(
            f"the TorchCFM comparison covers {', '.join(MATCHER_CLASSES)}, got {method!r}"
        )
    return getattr(require_torchcfm(), MATCHER_CLASSES[method])(sigma=sigma)


def torchcfm_cells(
    tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int]
) -> list[Cell]:
    """TorchCFM's twin of every planned I-CFM / OT-CFM cell."""
    return [Cell(t, m, s, LIBRARY) for t in tasks for m in MATCHER_CLASSES if m in methods
            for s in seeds]


def run_any_cell(cell: Cell, p: Protocol, runs: str | Path) -> dict[str, Any]:
    """The cell runner given to ``two_dim.run_cells``: TorchCFM's cells here, ours there."""
    if cell.library == LIBRARY:
        return run_torchcfm_cell(cell, p, Path(runs))
    return two_dim.run_cell(cell, p, runs)


def run_torchcfm_cell(cell: Cell, p: Protocol, runs: Path) -> dict[str, Any]:
    """Train one cell with TorchCFM's matcher and evaluate it with our metrics."""
    cfg = cell_config(Cell(cell.task, cell.method, cell.seed), p, runs)
    fm = torchcfm_matcher(cell.method, cfg.method.sigma)
    data = load_run_data(cfg.data, cell.seed)
    with GlobalRng(cell.seed):  # the initial weights of our cell come from this seed
        model = build_model(cfg.model, data.event_shape)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr,
                            weight_decay=cfg.optim.weight_decay)
    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    history = []
    start = time.perf_counter()
    with GlobalRng(cell.seed):
        for step in range(1, p.steps + 1):
            g = stream(cell.seed, "couple", "0", str(step - 1))  # our loop's minibatch stream
            x0 = sample_batch(data.source.train, p.batch_size, g)
            x1 = sample_batch(data.target.train, p.batch_size, g)
            t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
            loss = (model(xt, t) - ut).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % p.val_every == 0 or step == p.steps:
                row = validate(model, fm, data, cell.seed, step)
                history.append(row)
                if row["val_loss"] < best[0]:
                    best = (row["val_loss"], step, copy.deepcopy(model.state_dict()))
    seconds = time.perf_counter() - start
    model.load_state_dict(best[2])
    out = cell.run_dir(runs)
    save_atomic({"model": best[2], "step": best[1], "history": history}, out / "best.pt")
    write_text_atomic(json.dumps(history) + "\n", out / "log.json")
    record = {
        "task": cell.task,
        "method": cell.method,
        "seed": cell.seed,
        "library": LIBRARY,
        "sigma": cfg.method.sigma,
        "steps": p.steps,
        "best_step": best[1],
        "train_seconds": seconds,
        "val_curve": [[r["step"], r["val_w2"]] for r in history],
    }
    return finish_record(cell, p, runs, model.eval(), record)


def validate(model: nn.Module, fm: Any, data, seed: int, step: int) -> dict[str, float]:
    """Validation loss (TorchCFM's matcher, fixed seed) and W2, as our loop's validation."""
    model.eval()
    x0, x1 = data.source.val, data.target.val
    n = min(x0.shape[0], x1.shape[0])
    with torch.no_grad(), GlobalRng(seed + 1):
        t, xt, ut = fm.sample_location_and_conditional_flow(x0[:n], x1[:n])
        val_loss = float((model(xt, t) - ut).pow(2).mean())
        end = integrate(model, x0, method="euler", steps=100, save="ends", energy=False)
    model.train()
    return {"step": step, "val_loss": val_loss, "val_w2": wasserstein(end.x_final, x1, p=2)}


class GlobalRng:
    """Seed the global torch and numpy RNGs (TorchCFM draws from them); restore on exit."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> GlobalRng:
        self._torch = torch.get_rng_state()
        self._numpy = np.random.get_state()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self._torch)
        np.random.set_state(self._numpy)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = two_dim_cli.build_parser(
        prog=PROG,
        description="The 2-D benchmark of `otcfm bench two-dim` (same options) plus the "
        "I-CFM / OT-CFM cells trained with TorchCFM's matchers, side by side.",
    )
    args = parser.parse_args(argv)
    if args.ema or args.checkpoint not in (None, "best"):
        raise ValueError("--ema and --checkpoint apply to otcfm's cells only; the TorchCFM side "
                         "by side tests both libraries' raw best-validation weights (the "
                         f"paper's), got --ema {args.ema}, --checkpoint {args.checkpoint}")
    args.ema, args.checkpoint = 0.0, "best"  # the paper's choice for both libraries' cells
    require_torchcfm()
    return two_dim_cli.execute(args, argv, command=PROG, extra_cells=torchcfm_cells,
                               runner=run_any_cell)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, TypeError, ImportError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        sys.exit(2)
