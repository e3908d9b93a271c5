"""torch.distributed training on 2 CPU processes (gloo): the same run as one process.

Oracle: a single process at the same global batch. DDP averages the two processes' gradients
of their half-batch losses, which equals the gradient of the full-batch loss up to float
rounding in the sums; after 12 AdamW steps the weights agree to ATOL.
"""

from __future__ import annotations

import csv

import pytest
import torch

from otcfm.couplings import ExactOT
from otcfm.data import toy
from otcfm.train.checkpoint import load_checkpoint
from otcfm.train.config import RunConfig
from otcfm.train.prefetch import Shard, couple_batch

ATOL = 1e-5  # float32 weights of order 0.1-1; rounding differences after 12 steps ~1e-7


def tiny(tmp_path, name, method="icfm", steps=12, **over):
    source, target = toy.task("moons-8gaussians")
    items = {
        "data.source": f"'{source}'", "data.target": f"'{target}'", "data.n_train": 2000,
        "data.n_val": 200, "data.n_test": 200, "method.name": f"'{method}'",
        "model.width": 32, "model.depth": 2, "optim.steps": steps, "optim.batch_size": 64,
        "eval.val_every": 6, "eval.checkpoint_every": 6, "eval.ode_steps": 10,
        "distributed.timeout": 60.0, **over,
    }
    cfg = RunConfig(name=name, out_dir=str(tmp_path / "runs"))
    return cfg.override([f"{k}={v}" for k, v in items.items()])


def weights(cfg, which="latest"):
    return load_checkpoint(cfg.run_dir / "checkpoints" / f"{which}.pt")["model"]


def assert_same_weights(a, b, atol=ATOL):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


@pytest.mark.parametrize("method", ["icfm", "otcfm"])
def test_two_processes_train_like_one_at_the_same_global_batch(tmp_path, ranks, method):
    one, two = tiny(tmp_path, "one", method), tiny(tmp_path, "two", method)
    ranks(one, tmp_path, world=1)
    ranks(two, tmp_path, world=2)
    a, b = weights(one), weights(two)
    assert_same_weights(a, b)
    assert max((a[k] - weights(one, "best")[k]).abs().max() for k in a) >= 0  # best.pt exists
    # the logged training loss is the mean over both processes
    rows = [list(csv.DictReader((c.run_dir / "log.csv").open())) for c in (one, two)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == ["6", "12"]
    for r1, r2 in zip(*rows, strict=True):
        assert abs(float(r1["loss"]) - float(r2["loss"])) < 1e-5 * max(1, float(r1["loss"]))
    # and the weights moved: the test would not pass on a model that does not train
    init = tiny(tmp_path, "init", method, steps=1)
    ranks(init, tmp_path, world=1)
    assert max(float((weights(init)[k] - a[k]).abs().max()) for k in a) > 1e-3


def test_resume_on_one_or_two_processes_continues_the_same_run(tmp_path, ranks):
    half = tiny(tmp_path, "ddp", "otcfm", steps=6)
    ranks(half, tmp_path, world=2)
    full = tiny(tmp_path, "ddp", "otcfm", steps=12)
    copy = tmp_path / "copy" / "runs"
    copy.mkdir(parents=True)
    import shutil

    shutil.copytree(half.run_dir, copy / "ddp")
    on_two = RunConfig.from_dict({**full.to_dict(), "out_dir": str(copy)})
    ranks(full, tmp_path, world=1, resume=True)
    ranks(on_two, tmp_path, world=2, resume=True)
    straight = tiny(tmp_path, "straight", "otcfm", steps=12)
    ranks(straight, tmp_path, world=1)
    assert load_checkpoint(full.run_dir / "checkpoints" / "latest.pt")["step"] == 12
    assert_same_weights(weights(full), weights(on_two))
    assert_same_weights(weights(full), weights(straight))


def test_global_pairs_cost_no_more_than_local_pairs():
    source, target = toy.task("moons-8gaussians")
    g = torch.Generator().manual_seed(0)
    x0, x1 = toy.sample(source, 4000, generator=g), toy.sample(target, 4000, generator=g)

    def cost(p):
        return float((p.x0.double() - p.x1.double()).pow(2).sum())

    for index in range(3):
        whole = couple_batch(ExactOT(), x0, x1, 256, index, seed=1).pair
        parts = [couple_batch(ExactOT(), x0, x1, 256, index, seed=1,
                              shard=Shard(r, 4, "local")).pair for r in range(4)]
        # the same 256 points on both sides: the local pairs are a feasible global pairing
        torch.testing.assert_close(
            torch.cat([p.x0 for p in parts]).sort(0).values, whole.x0.sort(0).values,
            rtol=0, atol=0)
        local = sum(cost(p) for p in parts)
        assert cost(whole) <= local * (1 + 1e-6)
        assert cost(whole) < 0.99 * local  # and strictly better on these 4 x 64 splits



def test_conditions_travel_with_the_pairs_in_one_and_two_processes(tmp_path, scripts):
    """Labels drawn with the rows stay with their points through the coupling and the
    broadcast of the pairs; the oracle: each label is written from its own point."""
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) + 3
    one = couple_batch(ExactOT(), src, tgt, 64, 1, seed=5,
                       cond0={"id": torch.arange(300)}, cond1=tgt[:, 0].clone()).pair
    torch.testing.assert_close(one.cond1, one.x1[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(src[one.cond0["id"]], one.x0, rtol=0, atol=0)
    scripts("cond_job.py", [str(tmp_path)], world=2)
    for rank in range(2):
        two = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key in ("x0", "x1", "cond1"):
            torch.testing.assert_close(two[key], getattr(one, key), rtol=0, atol=0)
        torch.testing.assert_close(two["cond0"]["id"], one.cond0["id"], rtol=0, atol=0)
