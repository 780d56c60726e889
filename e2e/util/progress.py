"""Progress reporting for long steps: one logger, stage lines and throttled updates."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("pveoi.progress")


class Progress:
    """Report a long step's progress at most every ``interval`` seconds.

    :param stage: the step's name, e.g. ``"kernel build"``.
    """

    def __init__(self, stage: str, interval: float = 5.0) -> None:
        self.stage = stage
        self.interval = interval
        self.start = time.monotonic()
        self._last = 0.0
        log.info("[%s] started", stage)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def update(self, message: str, force: bool = False) -> None:
        """Log ``message`` if ``interval`` passed since the last update (or ``force``)."""
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            log.info("[%s %5.0fs] %s", self.stage, now - self.start, message)

    def done(self, message: str = "done") -> None:
        log.info("[%s] %s in %.1fs", self.stage, message, self.elapsed())
