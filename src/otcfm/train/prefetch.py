"""Couplings off the critical path: coupled batches made ahead in background threads.

Coupled batch k (``ot_batch`` source and target points drawn from the training sets, then
paired by the coupling) depends only on the generator ``stream(seed, "couple", rank, k)``, so
the batches are the same whether they are made in the training thread (``workers=0``) or by
any number of workers, and a resumed run remakes exactly the batch it stopped in.

Threads, not processes: the OT solvers (POT's network simplex, scipy's assignment) and torch
kernels release the GIL, so a worker thread overlaps the model step without copying the data
into another process. On 2 cores two threads solving ExactOT at B = 512 in 2-D ran about 2x
faster than one (indicative, shared machine).

One coupled batch of ``ot_batch`` pairs feeds ``ot_batch / batch_size`` consecutive optimizer
steps, one consecutive chunk of ``batch_size`` pairs each (:func:`chunks`). The chunks are
consecutive steps rather than gradient accumulation, so the optimizer sees the same number of
samples per step as without a larger OT batch; every coupled pair is trained on exactly once.

Under torch.distributed (:class:`Shard` with world > 1) the points of coupled batch k are the
same on every process and for every world size: they are drawn from ``stream(seed, "couple",
"0", k)``, as in a single process. With scope "global" one process (rank k mod world) couples
the whole batch and broadcasts the index pairs, so every process holds the global pairs and
trains on its share of each step's chunk; with scope "local" each process couples only its
share of the points (the reference library's behaviour: cheaper, further from the global plan).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from otcfm._utils import index_cond
from otcfm.couplings import Coupling, Pairing
from otcfm.data import _draw_indices, _draw_indices_many, sample_indices
from otcfm.train.datasets import stream

__all__ = ["CoupledBatch", "InOrderBatches", "Prefetcher", "Shard", "chunks", "couple_batch"]

T = TypeVar("T")


@dataclass(frozen=True)
class CoupledBatch:
    """Coupled batch number ``index``: ``pair.x0[k]`` goes with ``pair.x1[k]`` (ot_batch pairs)."""

    index: int
    pair: Pairing


@dataclass(frozen=True)
class Shard:
    """This process's place in a torch.distributed job (rank 0 of 1 without one).

    ``group``: the process group coupled batches are broadcast in (a group of their own, so
    that the coupling thread never interleaves its messages with the model's all-reduce).
    """

    rank: int = 0
    world: int = 1
    scope: str = "global"
    group: Any = None

    def rows(self, n: int) -> slice:
        """This process's rows of n rows split in ``world`` equal consecutive parts."""
        m = n // self.world
        return slice(self.rank * m, (self.rank + 1) * m)


def couple_batch(
    coupling: Coupling,
    source: Tensor,
    target: Tensor,
    size: int,
    index: int,
    *,
    seed: int,
    shard: Shard = Shard(),
    device: torch.device | str | None = None,
    paired: bool = False,
    checked: bool = False,
    cond0: Any = None,
    cond1: Any = None,
    solved: Callable[[int], Pairing] | None = None,
) -> CoupledBatch:
    """Draw ``size`` points of ``source`` and of ``target`` (N, ``*event``) and couple them.

    All randomness (both draws and the coupling's) comes from ``stream(seed, "couple", "0",
    index)``; the coupling runs on ``device`` (default: the data's). With ``paired`` (row i of
    source goes with row i of target, same N) the same rows are drawn on both sides. Under a
    :class:`Shard` of world > 1 the result is the global pairing (scope "global", ``size``
    pairs, identical on every process) or this process's own pairing of its ``size / world``
    points (scope "local").

    ``checked``: the caller has validated the training sets once (finite floating points of
    one event shape, dtype and device, as :func:`otcfm.train.datasets.load_run_data` loads
    them) and ``size`` (1 <= size <= the rows of each set). Then the rows are drawn without
    checking the arguments again, and an in-order coupling (:attr:`Coupling.in_order`, e.g.
    I-CFM's Independent) is not called: the drawn batches are paired in order directly, the
    same x0, x1, i, j as the coupling's pairing (``info`` holds only ``"pairs"``).

    ``cond0``, ``cond1``: per-row conditions of ``source`` and ``target`` (tensors, lists or
    dicts of them, e.g. class labels): they are drawn with the rows, given to the coupling, and
    travel with the pairs (``Pairing.cond0``, ``cond1``), across the broadcast too.

    ``solved(index)``: under scope "global", this process's turn made elsewhere (the single-
    process pairing of batch ``index``, e.g. by :class:`OwnTurns` ahead of time) instead of
    solving it here.
    """
    g = stream(seed, "couple", "0", str(index))
    draw = _draw_indices if checked else sample_indices
    if paired:
        if source.shape[0] != target.shape[0]:
            raise ValueError(
                f"paired source and target need the same number of rows, got "
                f"{source.shape[0]} and {target.shape[0]}"
            )
        rows0 = rows1 = draw(source.shape[0], size, g)
    else:
        rows0 = draw(source.shape[0], size, g)
        rows1 = draw(target.shape[0], size, g)
    local = shard.world > 1 and shard.scope == "local"
    if local:  # only this process's share of the points is gathered
        part = shard.rows(size)
        rows0, rows1 = rows0[part], rows1[part]
    x0, x1 = _rows(source, rows0, device), _rows(target, rows1, device)
    c0, c1 = index_cond(cond0, rows0), index_cond(cond1, rows1)
    if checked and pairs_in_order(coupling):
        return CoupledBatch(index, _in_order(x0, x1, c0, c1))
    if shard.world == 1 or local or coupling.in_order:  # in order: no solve to share
        return CoupledBatch(index, coupling(x0, x1, generator=g, cond0=c0, cond1=c1))
    src = index % shard.world  # the processes take turns solving
    n = torch.zeros(1, dtype=torch.long)
    if shard.rank == src:
        pair = (coupling(x0, x1, generator=g, cond0=c0, cond1=c1) if solved is None
                else solved(index))
        i, j = pair.i.cpu().contiguous(), pair.j.cpu().contiguous()  # broadcast sends storage
        n[0] = i.shape[0]
    dist.broadcast(n, src=src, group=shard.group)
    if shard.rank != src:
        i = torch.empty(int(n), dtype=torch.long)
        j = torch.empty(int(n), dtype=torch.long)
    dist.broadcast(i, src=src, group=shard.group)
    dist.broadcast(j, src=src, group=shard.group)
    i, j = i.to(x0.device), j.to(x1.device)
    info = pair.info if shard.rank == src else {"pairs": int(n)}
    return CoupledBatch(index, Pairing.gather(x0, x1, i, j, cond0=c0, cond1=c1, info=info))


class OwnTurns:
    """This process's turns of the global solve, solved ahead in a thread.

    This process's turns of the global solve (batches k with k % world == rank), solved
    ahead in a thread of its own that makes no collective calls: a process solves its next
    turn while it waits for the pairs of the others' turns, so the turns overlap.

    ``solve(k)`` must return the pairing one process would make of batch k (the single-process
    ``couple_batch(..., index=k).pair``); ``ahead`` turns of each process are kept in flight.
    """

    def __init__(
        self, solve: Callable[[int], Pairing], shard: Shard, *, ahead: int = 2,
        stop: int | None = None,
    ) -> None:
        self._solve, self._shard, self._ahead, self._stop = solve, shard, ahead, stop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="otcfm-turn")
        self._futures: dict[int, Future[Pairing]] = {}
        self._scheduled = -1  # the last own batch submitted

    def __call__(self, index: int) -> Pairing:
        w, r = self._shard.world, self._shard.rank
        end = index + self._ahead * w
        if self._stop is not None:
            end = min(end, self._stop)
        k = max(index, self._scheduled + 1)
        k += (r - k) % w  # the first own batch from there
        while k < end:
            self._futures[k] = self._pool.submit(self._solve, k)
            self._scheduled = k
            k += w
        future = self._futures.pop(index, None)
        for old in [i for i in self._futures if i < index]:  # skipped (a jump): not needed
            self._futures.pop(old).cancel()
        return future.result() if future is not None else self._solve(index)

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


def pairs_in_order(coupling: Coupling) -> bool:
    """Whether ``coupling`` pairs its batches in order through the base class's call.

    Whether ``coupling`` pairs its batches in order (:attr:`Coupling.in_order`, e.g.
    Independent) through the base class's call, so that the pairing of checked batches can be
    made without calling it (same values).
    """
    return bool(coupling.in_order) and type(coupling).__call__ is Coupling.__call__


class InOrderBatches:
    """The coupled-batch maker of an in-order coupling, as a callable.

    ``couple_batch(coupling, source, target, size, index, seed=seed, shard=shard,
    device=device, paired=paired, checked=True)`` for an in-order coupling
    (:func:`pairs_in_order`), as a callable ``make(index)`` for a :class:`Prefetcher` in the
    training thread: the same batches, with the rows of ``ahead`` consecutive batches (up to
    ``stop``) drawn at once.

    Drawing one batch's distinct rows is a dozen small array operations whose per-call
    overhead exceeds their work; drawn for many batches together (each from its own
    ``stream(seed, "couple", "0", index)``) they cost a fraction of that per batch. Only the
    row indices are kept ahead (``ahead`` x 2 x ``size`` int64), the points are gathered per
    batch. The sets and ``size`` must be checked as for ``couple_batch(..., checked=True)``.
    """

    def __init__(
        self,
        source: Tensor,
        target: Tensor,
        size: int,
        *,
        seed: int,
        shard: Shard = Shard(),
        device: torch.device | str | None = None,
        paired: bool = False,
        ahead: int = 16,
        stop: int | None = None,
    ) -> None:
        if paired and source.shape[0] != target.shape[0]:
            raise ValueError(
                f"paired source and target need the same number of rows, got "
                f"{source.shape[0]} and {target.shape[0]}"
            )
        if isinstance(ahead, bool) or not isinstance(ahead, int) or ahead < 1:
            raise ValueError(f"ahead must be an int >= 1, got {ahead!r}")
        self.source, self.target, self.size = source, target, size
        self.seed, self.shard, self.device, self.paired = seed, shard, device, paired
        self.ahead, self.stop = ahead, stop
        self._sizes = (source.shape[0],) if paired else (source.shape[0], target.shape[0])
        self._part = shard.rows(size) if shard.world > 1 and shard.scope == "local" else None
        self._rows: dict[int, tuple[Tensor, ...]] = {}
        # the gathered points move only where the device differs from the data's
        to = None if device is None else torch.device(device)
        self._to0 = None if to is None or to == source.device else to
        self._to1 = None if to is None or to == target.device else to
        self._index: Tensor | None = None  # i = j = arange(points per batch), shared
        self._on_cpu = source.device.type == "cpu" and target.device.type == "cpu"

    def _generator(self, index: int) -> torch.Generator:
        return stream(self.seed, "couple", "0", str(index))

    def __call__(self, index: int) -> CoupledBatch:
        """The coupled batch ``index``, its rows drawn ahead in blocks."""
        rows = self._rows.pop(index, None)
        if rows is None:  # the next block (or a jump: a resume, a restart)
            end = index + self.ahead
            if self.stop is not None:
                end = max(index + 1, min(end, self.stop))
            self._rows = _draw_indices_many(
                self._sizes, self.size, self._generator, range(index, end)
            )
            rows = self._rows.pop(index)
        rows0, rows1 = rows[0], rows[-1]  # paired: one draw for both sides
        if self._part is not None:  # scope "local": only this process's share is gathered
            rows0, rows1 = rows0[self._part], rows1[self._part]
        if self._on_cpu:
            x0 = self.source.index_select(0, rows0)
            x1 = self.target.index_select(0, rows1)
        else:  # the rows are drawn on the CPU
            x0 = _rows(self.source, rows0, None)
            x1 = _rows(self.target, rows1, None)
        if self._to0 is not None:
            x0 = x0.to(self._to0)
        if self._to1 is not None:
            x1 = x1.to(self._to1)
        i = self._index
        if i is None or i.shape[0] != x0.shape[0] or i.device != x0.device:
            i = self._index = torch.arange(x0.shape[0], device=x0.device)
        # in order (see _in_order); i and j are one arange, shared by every batch: read only
        return CoupledBatch(index, Pairing(x0=x0, x1=x1, i=i, j=i, info={"pairs": i.shape[0]}))


def _in_order(x0: Tensor, x1: Tensor, cond0: Any = None, cond1: Any = None) -> Pairing:
    """The pairing an in-order coupling makes of checked batches of one size.

    The batches themselves, i = j = arange(B) (no validation, no timing: per-step use).
    """
    n = x0.shape[0]
    i = torch.arange(n, device=x0.device)
    return Pairing(x0=x0, x1=x1, i=i, j=i.clone(), cond0=cond0, cond1=cond1, info={"pairs": n})


def _rows(x: Tensor, rows: Tensor, device: torch.device | str | None) -> Tensor:
    """``x[rows]`` on ``device`` (default x's), with no copies or moves that change nothing."""
    if rows.device != x.device:
        rows = rows.to(x.device)
    out = x.index_select(0, rows)
    if device is not None and out.device != torch.device(device):
        out = out.to(device)
    return out


def chunks(pair: Pairing, size: int) -> list[Pairing]:
    """Split a pairing of N pairs into N / size consecutive pairings of ``size`` pairs.

    Raises ValueError unless ``size`` divides N.
    """
    n = pair.x0.shape[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or n % size:
        raise ValueError(f"chunk size must be a positive divisor of the {n} pairs, got {size!r}")
    if size == n:
        return [pair]
    out = []
    for a in range(0, n, size):
        k = None
        if pair.cond0 is not None or pair.cond1 is not None:
            k = torch.arange(a, a + size, device=pair.i.device)
        out.append(
            Pairing(
                x0=pair.x0[a : a + size],
                x1=pair.x1[a : a + size],
                i=pair.i[a : a + size],
                j=pair.j[a : a + size],
                cond0=None if k is None else index_cond(pair.cond0, k),
                cond1=None if k is None else index_cond(pair.cond1, k),
                info=pair.info,
            )
        )
    return out


class Prefetcher(Generic[T]):
    """``make(start)``, ``make(start + 1)``, ... ``make(stop - 1)`` in order, made ahead.

    With ``workers=0`` each item is made when asked for, in the calling thread. Otherwise
    ``workers`` threads keep up to ``depth`` items in flight or ready. An exception raised by
    ``make`` is raised again by :meth:`next` for that item. Use as a context manager or call
    :meth:`close`; items still pending are cancelled or awaited, never leaked.
    """

    def __init__(
        self,
        make: Callable[[int], T],
        start: int,
        stop: int,
        *,
        workers: int = 1,
        depth: int = 2,
    ) -> None:
        for name, value, low in (("workers", workers, 0), ("depth", depth, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if stop < start:
            raise ValueError(f"stop ({stop}) must be >= start ({start})")
        self._make = make
        self._next = start  # the next index next() returns
        self._queued = start  # the next index to submit
        self._stop = stop
        self._depth = depth
        self._pending: deque[Future[T]] = deque()
        self._pool = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otcfm-couple")
            if workers > 0
            else None
        )
        self._fill()

    def _fill(self) -> None:
        if self._pool is None:
            return
        while len(self._pending) < self._depth and self._queued < self._stop:
            self._pending.append(self._pool.submit(self._make, self._queued))
            self._queued += 1

    @property
    def next_index(self) -> int | None:
        """The index the next call to :meth:`next` returns; None when exhausted or closed."""
        return self._next if self._next < self._stop else None

    def next(self) -> T:
        """The next item; StopIteration after ``stop - 1``."""
        if self._next >= self._stop:
            raise StopIteration
        index = self._next
        self._next += 1
        if self._pool is None:
            return self._make(index)
        item = self._pending.popleft().result()
        self._fill()
        return item

    def close(self) -> None:
        """Cancel queued items and wait for the ones already running."""
        if self._pool is not None:
            for fut in self._pending:
                fut.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._stop = self._next

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
