"""Running benchmark cells: cache first, then the rest in worker processes, one torch thread each.

A cell is any hashable description of one training-and-evaluation run; a recipe supplies
``run(cell) -> record`` (picklable, e.g. a ``functools.partial`` of a module-level function,
when ``jobs > 1``) and ``cached(cell) -> record | None``. One failed cell never stops the
others (its :class:`CellResult` carries the error instead of a record) unless the recipe asks
for ``fail_fast``: then the first error cancels the cells not started and is raised.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import multiprocessing
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import otcfm

Record = dict[str, Any]


@dataclass(frozen=True)
class CellResult:
    cell: Any
    record: Record | None
    cached: bool = False
    error: str = ""


# --------------------------------------------------------------------------- code fingerprints
_PACKAGE = Path(otcfm.__file__).parent


def _source(module: str) -> Path | None:
    """The file of ``otcfm.a.b`` (``a/b.py`` or ``a/b/__init__.py``), None outside otcfm."""
    parts = module.split(".")
    if parts[0] != "otcfm":
        return None
    base = _PACKAGE.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(module: str, path: Path) -> set[str]:
    """The otcfm modules ``path`` imports anywhere, with the packages on the way.

    The otcfm modules ``path`` imports anywhere (top level or inside functions), with the
    packages on the way (their ``__init__`` runs too).
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, level - 1 packages up
                package = module.split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return {m for m in found if m != module and _source(m) is not None}


@functools.cache
def code_fingerprint(module: str) -> dict[str, Any]:
    """Fingerprint of the code a cell run by ``module`` depends on.

    The package version and a SHA-256 over the source of ``module`` and of every otcfm
    module it imports, transitively (``_imports``): the code a cell run by ``module``
    depends on. A recipe puts it in its cache key, so that a changed line of any of these
    files makes the cached cells stale; report and command-line modules stay outside.
    """
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _source(name)
        if path is None:
            raise ValueError(f"{name!r} is not a module of the otcfm package")
        seen.add(name)
        todo.extend(_imports(name, path) - seen)
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(name.encode() + b"\0" + _source(name).read_bytes() + b"\0")  # type: ignore[union-attr]
    return {"version": otcfm.__version__, "code": digest.hexdigest()[:16],
            "modules": len(seen)}


def _one_thread() -> None:
    torch.set_num_threads(1)  # small models on a few cores: a second thread only spins


def run_one_thread(run: Callable[[Any], Any], cell: Any) -> Any:
    """``run(cell)`` with one torch thread, the caller's count restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(cell)
    finally:
        torch.set_num_threads(threads)


def run_cells(
    cells: Sequence[Hashable],
    run: Callable[[Any], Record],
    cached: Callable[[Any], Record | None],
    *,
    jobs: int = 1,
    cost: Callable[[Any], float] = lambda cell: 1.0,
    depends_on: Callable[[Any], Hashable | None] = lambda cell: None,
    on_done: Callable[[CellResult], None] | None = None,
    fail_fast: bool = False,
) -> list[CellResult]:
    """Results of ``cells`` in their order: cached ones first, the others run costliest first.

    A cell whose ``depends_on`` cell is still pending or running waits for it; if that cell
    failed (or is neither planned nor cached) it fails too without running. With
    ``fail_fast`` the first exception of a cell is raised instead (cells not yet started are
    cancelled, running ones finish).
    """
    results: dict[Hashable, CellResult] = {}

    def done(result: CellResult) -> None:
        results[result.cell] = result
        if on_done is not None:
            on_done(result)

    pending = []
    for cell in cells:
        record = cached(cell)
        if record is not None:
            done(CellResult(cell, record, cached=True))
        else:
            pending.append(cell)
    pending.sort(key=cost, reverse=True)  # stable: equal costs keep the given order
    running: dict[Future[Record], Hashable] = {}

    def ready(cell: Hashable) -> bool | None:
        """True when runnable, False while its dependency is to come, None if that failed."""
        dep = depends_on(cell)
        if dep is None:
            return True
        if dep in results:
            return results[dep].record is not None or None
        if dep in pending or dep in running.values():
            return False
        return cached(dep) is not None or None

    pool = None
    if jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_one_thread)
    try:
        while pending or running:
            for cell in list(pending):
                state = ready(cell)
                if state is None:
                    pending.remove(cell)
                    dep = depends_on(cell)
                    name = getattr(dep, "label", dep)
                    done(CellResult(cell, None, error=f"needs {name}, which did not finish"))
                elif state and (pool is None or len(running) < jobs):
                    pending.remove(cell)
                    if pool is None:
                        done(_run_here(run, cell, fail_fast))
                    else:
                        running[pool.submit(run, cell)] = cell
            if running:
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    cell = running.pop(fut)
                    err = fut.exception()
                    if err is not None and fail_fast:
                        raise err
                    done(CellResult(cell, None if err else fut.result(), error=_msg(err)))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return [results[c] for c in cells if c in results]


def _run_here(run: Callable[[Any], Record], cell: Hashable, fail_fast: bool) -> CellResult:
    if fail_fast:
        return CellResult(cell, run_one_thread(run, cell))
    try:
        return CellResult(cell, run_one_thread(run, cell))
    except Exception as err:  # one failed cell must not stop the others (as in the pool)
        return CellResult(cell, None, error=_msg(err))


def _msg(err: BaseException | None) -> str:
    return "" if err is None else f"{type(err).__name__}: {err}"


class CellProgress:
    """Progress callback for :func:`run_cells`: one line per finished cell.

    ``on_done`` for :func:`run_cells`: one line per finished cell with done/total counts
    and minutes so far (a tqdm bar below the lines when stderr is a terminal).
    """

    def __init__(self, total: int, describe: Callable[[CellResult], str],
                 write: Callable[[str], None] | None = None) -> None:
        self.total, self.count, self.describe = total, 0, describe
        self._write = write or (lambda line: print(line, flush=True))
        self._start = time.perf_counter()
        self._bar = None
        if write is None and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc="cells", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, result: CellResult) -> None:
        self.count += 1
        minutes = (time.perf_counter() - self._start) / 60
        label = getattr(result.cell, "label", result.cell)
        line = f"[{self.count}/{self.total}, {minutes:.0f} min] {label}: {self.describe(result)}"
        if self._bar is not None:
            self._bar.write(line)
            self._bar.update(1)
        else:
            self._write(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def int_list(text: str, flag: str, *, low: int = 1) -> tuple[int, ...]:
    """Parse the comma-separated integers of a flag (``--seeds 0,1,2``).

    The comma-separated integers of a flag (``--seeds 0,1,2``), each >= ``low``, in order
    with repeats dropped; ValueError naming ``flag`` otherwise.
    """
    try:
        values = tuple(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < low:
        raise ValueError(f"{flag} needs integers >= {low}, got {text!r}")
    return values
