"""pveoi's stderr as a test reads it: one line, with no traceback and no library noise."""

from __future__ import annotations

import re
from pathlib import Path

#: What must never reach pveoi's terminal at default verbosity (it goes to the run's log file, and
#: shows with -vv): tracebacks and the noise of the libraries below pveoi.
TERMINAL_NOISE = (
    "Traceback", "Error reading SSH protocol banner", "Negotiation failed", "Failed to establish session",
    "--- Logging error ---", "Exception in thread", "Task exception was never retrieved", "Exception ignored in",
)
_LOG_NOTE = re.compile(r" \(log: (/\S+\.log)\)$")


def clean_stderr_lines(stderr: str) -> list[str]:
    """pveoi's stderr as lines, checked: no traceback and no library noise anywhere in it.

    The one-line error may end with `` (log: FILE)``, the run's log file: it
    must exist; it is removed, and the note stripped from the returned line.
    Every fault-matrix test reads pveoi's stderr through this.
    """
    for noise in TERMINAL_NOISE:
        assert noise not in stderr, f"{noise!r} reached the terminal:\n{stderr}"
    lines = stderr.strip().splitlines()
    note = _LOG_NOTE.search(lines[-1]) if lines else None
    if note is not None:
        run_log = Path(note.group(1))
        assert run_log.is_file(), f"the error names a run log that does not exist: {run_log}"
        run_log.unlink()
        lines[-1] = lines[-1][:note.start()]
    return lines
