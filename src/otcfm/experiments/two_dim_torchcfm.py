"""TorchCFM side by side (`otcfm bench two-dim --torchcfm`): the same cell, TorchCFM's loss.

For I-CFM and OT-CFM, TorchCFM's ``ConditionalFlowMatcher`` /
``ExactOptimalTransportConditionalFlowMatcher`` (the optional ``bench`` extra) computes the
regression targets in a plain training loop. Everything else equals our cell: the training
tensors, the minibatch drawn at each step (the same seeded streams as our loop), the initial
weights (same seed, same MLP), AdamW, steps, validation cadence (loss and W2 of the validation
set, best-validation weights kept) and our evaluation code. TorchCFM draws t, noise and its OT
pairs from the global torch and numpy RNGs; they are seeded from the cell and restored after.
"""

from __future__ import annotations

import copy
import json
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from otcfm.data import sample_batch
from otcfm.experiments.two_dim import Cell, Protocol, cell_config, finish_record
from otcfm.metrics import wasserstein
from otcfm.sampling import integrate
from otcfm.train.checkpoint import save_atomic, write_text_atomic
from otcfm.train.datasets import load_run_data, stream
from otcfm.train.loop import build_model

MATCHER_CLASSES = {
    "icfm": "ConditionalFlowMatcher",
    "otcfm": "ExactOptimalTransportConditionalFlowMatcher",
}


def require_torchcfm() -> Any:
    """The ``torchcfm`` module, or an ImportError naming the extra to install."""
    try:
        import torchcfm
    except ImportError:
        raise ImportError(
            "--torchcfm needs TorchCFM, the reference library: pip install 'otcfm[bench]'"
        ) from None
    return torchcfm


def torchcfm_matcher(method: str, sigma: float) -> Any:
    if method not in MATCHER_CLASSES:
        raise ValueError(
            f"the TorchCFM comparison covers {', '.join(MATCHER_CLASSES)}, got {method!r}"
        )
    return getattr(require_torchcfm(), MATCHER_CLASSES[method])(sigma=sigma)


def run_torchcfm_cell(cell: Cell, p: Protocol, runs) -> dict[str, Any]:
    """Train one cell with TorchCFM's matcher and evaluate it with our metrics."""
    cfg = cell_config(Cell(cell.task, cell.method, cell.seed), p, runs)
    fm = torchcfm_matcher(cell.method, cfg.method.sigma)
    data = load_run_data(cfg.data, cell.seed)
    torch.manual_seed(cell.seed)  # the initial weights of our cell
    model = build_model(cfg.model, data.event_shape)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr,
                            weight_decay=cfg.optim.weight_decay)
    state = _GlobalRng(cell.seed)
    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    history = []
    start = time.perf_counter()
    with state:
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
                row = _validate(model, fm, data, cell.seed, step)
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
        "library": "torchcfm",
        "sigma": cfg.method.sigma,
        "steps": p.steps,
        "best_step": best[1],
        "train_seconds": seconds,
        "val_curve": [[r["step"], r["val_w2"]] for r in history],
    }
    return finish_record(cell, p, runs, model.eval(), record)


def _validate(model: nn.Module, fm: Any, data, seed: int, step: int) -> dict[str, float]:
    """Validation loss (TorchCFM's matcher, fixed seed) and W2, as our loop's validate()."""
    model.eval()
    x0, x1 = data.source.val, data.target.val
    n = min(x0.shape[0], x1.shape[0])
    with torch.no_grad(), _GlobalRng(seed + 1):
        t, xt, ut = fm.sample_location_and_conditional_flow(x0[:n], x1[:n])
        val_loss = float((model(xt, t) - ut).pow(2).mean())
        end = integrate(model, x0, method="euler", steps=100, save="ends", energy=False)
    model.train()
    return {"step": step, "val_loss": val_loss, "val_w2": wasserstein(end.x_final, x1, p=2)}


class _GlobalRng:
    """Seed the global torch and numpy RNGs (TorchCFM draws from them); restore on exit."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> _GlobalRng:
        self._torch = torch.get_rng_state()
        self._numpy = np.random.get_state()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self._torch)
        np.random.set_state(self._numpy)
