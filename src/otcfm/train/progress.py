"""A progress bar with live metrics: tqdm when installed (extra ``progress``), else log lines."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("otcfm.train")


class Progress:
    """``update(n, **metrics)`` advances by n steps and shows the latest metrics."""

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        enabled: bool = True,
        desc: str = "",
        every_seconds: float = 10.0,
    ) -> None:
        self.total, self.count, self.enabled, self.desc = total, initial, enabled, desc
        self.metrics: dict[str, float] = {}
        self._bar = None
        self._last_log = time.monotonic()
        self._every = every_seconds
        if not enabled or not sys.stderr.isatty():
            return  # no terminal: fall back to a log line every `every_seconds`
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(
            total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr, leave=True
        )

    def update(self, n: int = 1, **metrics: float) -> None:
        """Advance by ``n`` steps and record ``metrics`` (a bar, or a log line now and then)."""
        self.count += n
        self.metrics.update(metrics)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if self.count % 25 == 0 or n == 0 or self.count == self.total:
                self._bar.set_postfix(
                    {k: f"{v:.4g}" for k, v in self.metrics.items()}, refresh=False
                )
        elif time.monotonic() - self._last_log > self._every or self.count == self.total:
            self._last_log = time.monotonic()
            shown = " ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
            log.info("%s %d/%d %s", self.desc, self.count, self.total, shown)

    def close(self) -> None:
        """Close the progress bar, if any."""
        if self._bar is not None:
            self._bar.close()
