"""Compile the numba kernels into numba's on-disk cache: ``python -m otcfm._ot``.

Each kernel is compiled on its first call and cached beside its module (``cache=True``), so
the first exact or approximate coupling of a fresh install would otherwise pay the
compilation (about 10 s on 2 cores). ``make setup`` runs this once after installing: it
solves small random problems through every compiled path (``otcfm._ot.warm``): the certified
exact auction (with candidate lists and its multiscale warm start), the float32 auction of
ApproxOT, and the near-permutation entropic solve.
"""

from __future__ import annotations

import sys

from otcfm._ot import auction_kernels
from otcfm._ot.warm import WARM_N, load_kernels


def compile_kernels(n: int = WARM_N) -> float:
    """Run every compiled path once on random points; returns the seconds it took."""
    return load_kernels(n=n, force=True)


def main() -> int:
    if not auction_kernels.available():
        print("numba is not installed (extra 'fast'): nothing to compile")
        return 0
    seconds = compile_kernels()
    print(f"numba kernels compiled and cached in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
