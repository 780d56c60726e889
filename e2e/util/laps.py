"""Where one process's time goes: named stages, each the seconds since the previous one (a result's
``timings``; ``tests/bench_ab.py --breakdown`` prints them)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def seconds_since_process_start() -> float | None:
    """How long ago this process started (``/proc/self/stat``'s start time against CLOCK_BOOTTIME), so
    the interpreter's own start-up and imports count too; None where that cannot be read."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5), 3rd after the name
    except (OSError, ValueError, IndexError):
        return None
    return round(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 2)


class Laps:
    """Stages timed back to back: :meth:`lap` closes the stage that ran since the last lap (or since
    the object was made) under ``name``; a name lapped twice adds up."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> float:
        """Close the current stage as ``name``; its seconds."""
        now = time.monotonic()
        took = now - self._last
        self._last = now
        self.seconds[name] = round(self.seconds.get(name, 0.0) + took, 2)
        return took
