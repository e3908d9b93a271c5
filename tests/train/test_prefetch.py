"""Couplings made ahead in background workers, and OT batches larger than the micro-batch."""

from __future__ import annotations

import threading

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from otcfm.couplings import ExactOT, Independent, Pairing
from otcfm.matchers import matcher
from otcfm.models import MLP
from otcfm.train.config import RunConfig
from otcfm.train.evaluate import load_run
from otcfm.train.loop import Trainer, train
from otcfm.train.prefetch import (
    InOrderBatches,
    Prefetcher,
    Shard,
    chunks,
    couple_batch,
    pairs_in_order,
)


def tiny(tmp_path, name="run", steps=12, **over) -> RunConfig:
    return RunConfig(name=name, out_dir=str(tmp_path)).override(
        [
            f"optim.steps={steps}",
            "optim.batch_size=32",
            "data.n_train=256",
            "data.n_val=32",
            "data.n_test=32",
            "eval.val_every=6",
            "eval.checkpoint_every=6",
            "eval.ode_steps=3",
            "model.width=16",
            "model.depth=2",
            *[f"{k}={v}" for k, v in over.items()],
        ]
    )


def weights(run_dir):
    return load_run(run_dir, "latest").model.state_dict()


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert list(wa) == list(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


# ----------------------------------------------------------------- Prefetcher
@pytest.mark.parametrize("workers, depth", [(0, 1), (1, 1), (2, 3), (3, 2)])
def test_prefetcher_returns_items_in_order(workers, depth):
    threads = set()

    def make(k):
        threads.add(threading.get_ident())
        return k * k

    with Prefetcher(make, 3, 9, workers=workers, depth=depth) as p:
        got = [p.next() for _ in range(6)]
        assert p.next_index is None
        with pytest.raises(StopIteration):
            p.next()
    assert got == [k * k for k in range(3, 9)]
    main = threading.get_ident()
    assert (threads == {main}) if workers == 0 else (main not in threads)


def test_prefetcher_reraises_worker_errors_and_closes():
    def make(k):
        if k == 2:
            raise ArithmeticError("boom at 2")
        return k

    p = Prefetcher(make, 0, 5, workers=2, depth=2)
    assert [p.next(), p.next()] == [0, 1]
    with pytest.raises(ArithmeticError, match="boom at 2"):
        p.next()
    p.close()
    p.close()  # idempotent
    assert p.next_index is None


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"workers": -1}, "workers must be an int >= 0"),
        ({"depth": 0}, "depth must be an int >= 1"),
        ({"workers": 1.5}, "workers"),
    ],
)
def test_prefetcher_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        Prefetcher(lambda k: k, 0, 3, **kw)


# ----------------------------------------------------------------- coupled batches
def points(n, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_couple_batch_depends_only_on_seed_and_index():
    src, tgt = points(200, seed=1), points(200, seed=2) + 3
    a = couple_batch(ExactOT(), src, tgt, 64, 5, seed=7)
    box = {}
    t = threading.Thread(
        target=lambda: box.update(b=couple_batch(ExactOT(), src, tgt, 64, 5, seed=7))
    )
    t.start()
    t.join()
    b = box["b"]
    c = couple_batch(ExactOT(), src, tgt, 64, 6, seed=7)
    assert a.index == 5 and torch.equal(a.pair.x0, b.pair.x0) and torch.equal(a.pair.x1, b.pair.x1)
    assert not torch.equal(a.pair.x0, c.pair.x0)


def test_local_scope_couples_this_processes_share_of_the_same_points():
    src, tgt = points(200, seed=1), points(200, seed=2) + 3
    whole = couple_batch(Independent(), src, tgt, 64, 5, seed=7).pair  # identity pairing
    for rank in range(2):
        part = couple_batch(
            ExactOT(), src, tgt, 64, 5, seed=7, shard=Shard(rank, 2, "local")
        ).pair
        rows = slice(32 * rank, 32 * (rank + 1))
        assert part.x0.shape == (32, 2)
        torch.testing.assert_close(part.x0, whole.x0[rows][part.i], rtol=0, atol=0)
        torch.testing.assert_close(part.x1, whole.x1[rows][part.j], rtol=0, atol=0)
        # optimal on its own 32 points (scipy's assignment as the oracle)
        cost = torch.cdist(whole.x0[rows].double(), whole.x1[rows].double()).pow(2).numpy()
        r, c = linear_sum_assignment(cost)
        own = (part.x0.double() - part.x1.double()).pow(2).sum()
        assert abs(float(own) - cost[r, c].sum()) < 1e-4


def test_chunks_cover_each_coupled_pair_exactly_once_and_keep_the_big_batch_optimal():
    src, tgt = points(300, seed=3), points(300, seed=4) * 2 + 1
    big = couple_batch(ExactOT(), src, tgt, 96, 0, seed=1).pair
    parts = chunks(big, 32)
    assert len(parts) == 3 and all(p.x0.shape == (32, 2) for p in parts)
    i = torch.cat([p.i for p in parts])
    j = torch.cat([p.j for p in parts])
    torch.testing.assert_close(i, big.i, rtol=0, atol=0)
    # one-to-one on the 96 coupled points: every source and target point exactly once
    assert sorted(i.tolist()) == list(range(96)) and sorted(j.tolist()) == list(range(96))
    # the chunks together carry the optimal assignment of the whole OT batch (scipy oracle)
    x0 = torch.cat([p.x0 for p in parts]).double()
    x1 = torch.cat([p.x1 for p in parts]).double()
    got = float(((x0 - x1) ** 2).sum())
    cost = torch.cdist(x0, x1).pow(2).numpy()  # rows: the paired order; the optimum ignores it
    r, c = linear_sum_assignment(cost)
    assert got == pytest.approx(float(cost[r, c].sum()), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("size", [0, 5, 200, True, 2.0])
def test_chunks_reject_sizes_that_do_not_divide(size):
    src = points(64)
    pair = Independent()(src, src + 1)
    with pytest.raises(ValueError, match="positive divisor of the 64 pairs"):
        chunks(pair, size)


def test_loss_of_a_pairing_equals_loss_with_the_same_generator():
    x0, x1 = points(48, seed=5), points(48, seed=6) + 2
    fm = matcher("otcfm", sigma=0.1)
    torch.manual_seed(0)
    net = MLP(dim=2, width=8, depth=1)
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    expect = fm.loss(net, x0, x1, generator=g1)
    pair = fm.coupling(x0, x1, generator=g2)
    got = fm.loss(net, pair, generator=g2)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)
    with pytest.raises(TypeError, match="Pairing"):
        fm.sample(pair, x1)
    with pytest.raises(TypeError, match="x1 is missing"):
        fm.sample(x0)


# ----------------------------------------------------------------- the training loop
def test_same_weights_for_any_number_of_workers(tmp_path):
    over = {"couplings.ot_batch": 64}
    runs = [
        train(tiny(tmp_path, f"w{w}", **over, **{"couplings.workers": w}), progress=False)
        for w in (0, 2)
    ]
    assert_same_weights(runs[0].run_dir, runs[1].run_dir)


def test_steps_of_one_ot_batch_use_disjoint_chunks(tmp_path):
    cfg = tiny(tmp_path, **{"couplings.ot_batch": 96, "couplings.workers": 1})
    trainer = Trainer(cfg, progress=False)
    try:
        seen = []
        for step in range(6):  # two coupled batches of 3 chunks
            trainer.step = step
            seen.append(trainer.next_pairs())
    finally:
        trainer.close()
    for first in (0, 3):
        i = torch.cat([p.i for p in seen[first : first + 3]])
        assert sorted(i.tolist()) == list(range(96))
        x0 = torch.cat([p.x0 for p in seen[first : first + 3]])
        assert torch.unique(x0, dim=0).shape[0] == 96  # no point trained on twice
    assert not torch.equal(seen[0].x0, seen[3].x0)


def test_resume_mid_ot_batch_with_prefetch_equals_uninterrupted(tmp_path):
    # 3 chunks per coupled batch: stopping at step 7 resumes inside coupled batch 2
    over = {"couplings.ot_batch": 96, "couplings.workers": 2, "eval.checkpoint_every": 7}
    straight = train(tiny(tmp_path, "straight", steps=14, **over), progress=False)
    train(tiny(tmp_path, "resumed", steps=7, **over), progress=False)
    # workers and prefetch do not change results, so a resume may change them
    again = tiny(tmp_path, "resumed", steps=14, **{**over, "couplings.workers": 0})
    resumed = train(again, resume=True, progress=False)
    assert resumed.steps == 14
    assert_same_weights(straight.run_dir, resumed.run_dir)


def test_resume_refuses_a_different_ot_batch(tmp_path):
    train(tiny(tmp_path, steps=6, **{"couplings.ot_batch": 64}), progress=False)
    with pytest.raises(ValueError, match="config differs"):
        train(tiny(tmp_path, steps=12, **{"couplings.ot_batch": 96}), resume=True, progress=False)


@pytest.mark.parametrize(
    "override, match",
    [
        (
            "couplings.ot_batch=48",
            r"couplings.ot_batch must be 0 .* multiple of optim.batch_size 32",
        ),
        ("couplings.ot_batch=-32", "couplings.ot_batch"),
        ("couplings.workers=-1", "couplings.workers must be an integer >= 0"),
        ("couplings.prefetch=0", "couplings.prefetch must be a positive integer"),
    ],
)
def test_bad_coupling_config(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        tiny(tmp_path).override([override]).validate()


def test_ot_batch_larger_than_the_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="couplings.ot_batch 512 exceeds"):
        Trainer(tiny(tmp_path, **{"couplings.ot_batch": 512}), progress=False)


# ----------------------------------------------------------------- in-order batches
@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize("shard", [Shard(), Shard(1, 2, "local"), Shard(0, 2, "global")], ids=str)
def test_in_order_batches_equal_couple_batch(paired, shard):
    src, tgt = points(300, seed=1), points(300, seed=2) + 3
    make = InOrderBatches(src, tgt, 64, seed=7, shard=shard, paired=paired, ahead=4, stop=11)
    for index in [0, 1, 2, 5, 6, 3, 9, 10, 10]:  # in order, a jump, back again, the end
        got = make(index)
        want = couple_batch(Independent(), src, tgt, 64, index, seed=7, shard=shard, paired=paired)
        assert got.index == index
        for field in ("x0", "x1", "i", "j"):
            assert torch.equal(getattr(got.pair, field), getattr(want.pair, field)), field


@pytest.mark.parametrize("coupling", [Independent(), ExactOT()], ids=repr)
def test_couple_batch_of_checked_sets_equals_the_checked_call(coupling):
    src, tgt = points(300, seed=1), points(300, seed=2) + 3
    for index in range(3):
        a = couple_batch(coupling, src, tgt, 64, index, seed=7).pair
        b = couple_batch(coupling, src, tgt, 64, index, seed=7, checked=True).pair
        for field in ("x0", "x1", "i", "j"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_an_in_order_coupling_with_its_own_call_is_called():
    class Flipped(Independent):
        def __call__(self, x0, x1, **kw):
            pair = super().__call__(x0, x1, **kw)
            return Pairing(x0=pair.x0, x1=-pair.x1, i=pair.i, j=pair.j)

    assert pairs_in_order(Independent()) and not pairs_in_order(Flipped())
    assert not pairs_in_order(ExactOT())
    src, tgt = points(300, seed=1), points(300, seed=2) + 3
    a = couple_batch(Flipped(), src, tgt, 64, 0, seed=7, checked=True).pair
    b = couple_batch(Independent(), src, tgt, 64, 0, seed=7, checked=True).pair
    assert torch.equal(a.x1, -b.x1)


def test_in_order_batches_check_their_settings():
    src = points(300)
    with pytest.raises(ValueError, match="same number of rows"):
        InOrderBatches(src, src[:200], 64, seed=0, paired=True)
    with pytest.raises(ValueError, match="ahead"):
        InOrderBatches(src, src, 64, seed=0, ahead=0)


def test_own_turns_are_solved_ahead_and_equal_the_solve():
    from otcfm.train.prefetch import OwnTurns

    src, tgt = points(300, seed=1), points(300, seed=2) + 3
    calls = []

    def solve(k):
        calls.append(k)
        return couple_batch(ExactOT(), src, tgt, 32, k, seed=3).pair

    turns = OwnTurns(solve, Shard(1, 2, "global"), ahead=2, stop=9)
    try:
        for k in (1, 3, 7):  # this process's turns; 5 skipped (a jump)
            got, want = turns(k), couple_batch(ExactOT(), src, tgt, 32, k, seed=3).pair
            torch.testing.assert_close(got.x1, want.x1, rtol=0, atol=0)
    finally:
        turns.close()
    assert calls[:2] == [1, 3] and set(calls) <= {1, 3, 5, 7}  # only own turns, in order
    assert all(k % 2 == 1 for k in calls)
