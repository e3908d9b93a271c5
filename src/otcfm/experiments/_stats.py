"""Small statistics shared by the results pages."""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping


def paired_difference(
    ours: Mapping[Hashable, float], theirs: Mapping[Hashable, float]
) -> tuple[float, float | None, int] | None:
    """Paired difference of ``ours`` and ``theirs`` over their common keys.

    Mean of ``ours[k] - theirs[k]`` over the common keys (e.g. seeds), its standard error
    (sample std / sqrt(n); None for one key) and n; None when no key is common.
    """
    diffs = [ours[k] - theirs[k] for k in ours if k in theirs]
    if not diffs:
        return None
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return mean, se, len(diffs)
