"""This test session's tag, and the processes a test starts: QEMUs it must not leave behind, and
children it will SIGINT."""

from __future__ import annotations

import os
import select
import signal
import time
import uuid
from pathlib import Path

#: The environment variable pveoi's temp dirs and QEMUs carry the session's tag in (``e2e.util.tmpdirs``).
SESSION_ENV = "PVEOI_TEST_SESSION"
#: This test session's tag. ``tests/conftest.py`` puts it in the environment before any test runs, so
#: every process the session starts inherits it and the orphan guard sees only the session's own
#: QEMUs, never those of another pveoi run on the same machine.
SESSION = uuid.uuid4().hex
SESSION_TAG = f"{SESSION_ENV}={SESSION}"


def interruptible() -> None:
    """``preexec_fn`` for a child a test will SIGINT: the default disposition.

    Started from a background job of a non-interactive shell (``nohup tox &``,
    CI wrappers), this process ignores SIGINT and its children inherit SIG_IGN,
    so a Ctrl-C sent by the test would never reach them.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ended_within(pidfd: int, pid: int, timeout: float = 10.0) -> bool:
    """Did process ``pid`` (held by ``pidfd``, which this closes) end within ``timeout``? If it did
    not, it is SIGKILLed here, so no test leaves it behind."""
    try:
        ended = bool(select.select([pidfd], [], [], timeout)[0])
        if not ended:
            os.kill(pid, signal.SIGKILL)
        return ended
    finally:
        os.close(pidfd)


def qemu_pids() -> set[int]:
    """PIDs of the qemu-system-* processes started by this test session."""
    pids = set()
    tag = SESSION_TAG.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            if comm.startswith("qemu-system") and tag in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                pids.add(int(entry))
        except OSError:
            continue
    return pids


def wait_no_new_qemu(before: set[int], timeout: float = 15.0) -> set[int]:
    """Wait until no qemu-system process outside ``before`` exists; return survivors."""
    deadline = time.monotonic() + timeout
    while True:
        left = qemu_pids() - before
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
