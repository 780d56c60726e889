"""
The guest's serial console, watched with pexpect.

A pump thread drains the console socket continuously (a full socket would
stall the guest's UART), writes everything to ``console.log`` and to the
``pveoi.console`` logger, and matches the ready line and panic/oops patterns
as they arrive. Waiters block on a condition variable with a deadline: no
sleep-polling.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from pathlib import Path
from typing import IO

import pexpect
import pexpect.fdpexpect

from .errors import GuestError, GuestPanic, GuestTimeout

log = logging.getLogger("pveoi.console")

PANIC_PATTERN = (
    r"Kernel panic - not syncing[^\r\n]*|Oops: [^\r\n]*|BUG: [^\r\n]*|kernel BUG at [^\r\n]*"
    r"|general protection fault[^\r\n]*|Unable to handle kernel[^\r\n]*"
)
PANIC_GRACE = 1.0  # seconds to keep collecting lines after a panic is seen


class _Tee:
    """pexpect logfile: append to the console log and to a bounded memory buffer."""

    def __init__(self, path: Path) -> None:
        self._file: IO[bytes] = open(path, "ab")
        self.buffer = bytearray()
        self._partial = b""

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        self.buffer += data
        if len(self.buffer) > 4 << 20:
            del self.buffer[: len(self.buffer) - (2 << 20)]
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            log.debug("%s", line.decode(errors="replace").rstrip("\r"))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def stop_reader(thread: threading.Thread, sock: socket.socket, timeout: float = 5.0) -> None:
    """Stop a thread that reads ``sock`` until EOF, then close the socket.

    Normally QEMU's exit gives the reader EOF; if it has not ended within
    ``timeout``, shutting the socket down ends its blocking read.
    """
    thread.join(timeout)
    if thread.is_alive():
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        thread.join(2.0)
    sock.close()


class Console:
    """Watches one guest's serial console.

    :param sock: the harness's end of the console socketpair.
    :param logpath: where the full console transcript is kept.
    :param ready_pattern: regex of the guest's ready line.
    """

    def __init__(self, sock: socket.socket, logpath: Path, ready_pattern: str) -> None:
        self.logpath = logpath
        self._sock = sock
        self._tee = _Tee(logpath)
        self._child = pexpect.fdpexpect.fdspawn(sock.fileno(), timeout=None, maxread=65536)
        self._child.logfile_read = self._tee
        self._patterns = [re.compile(ready_pattern.encode()), re.compile(PANIC_PATTERN.encode())]
        self._cond = threading.Condition()
        self.ready_match: str | None = None
        self.ready_at: float | None = None
        self.panic_line: str | None = None
        self._panic_at: float | None = None
        self.eof = False
        self._thread = threading.Thread(target=self._pump, name="pveoi-console", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while True:
                idx = self._child.expect([*self._patterns, pexpect.EOF, pexpect.TIMEOUT], timeout=0.5)
                with self._cond:
                    if idx == 0 and self.ready_match is None:
                        self.ready_match = self._child.after.decode(errors="replace").strip()
                        self.ready_at = time.monotonic()
                        self._cond.notify_all()
                    elif idx == 1 and self.panic_line is None:
                        self.panic_line = self._child.after.decode(errors="replace").strip()
                        self._panic_at = time.monotonic()
                        log.error("guest console: %s", self.panic_line)
                    elif idx == 2:
                        self.eof = True
                        self._cond.notify_all()
                        return
                    if self._panic_at is not None and time.monotonic() - self._panic_at >= PANIC_GRACE:
                        self._cond.notify_all()
        except (OSError, ValueError):  # the fd was closed under us at shutdown
            with self._cond:
                self.eof = True
                self._cond.notify_all()

    def text(self) -> str:
        """Everything seen so far (bounded), decoded."""
        return bytes(self._tee.buffer).decode(errors="replace")

    def tail(self, lines: int = 10) -> list[str]:
        return [ln.rstrip("\r") for ln in self.text().splitlines()[-lines:]]

    def panic_lines(self, limit: int = 25) -> list[str]:
        """The console lines from the first panic/oops line on."""
        if self.panic_line is None:
            return []
        text = self.text().splitlines()
        first = next((i for i, ln in enumerate(text) if self.panic_line in ln), max(0, len(text) - limit))
        return [ln.rstrip("\r") for ln in text[first:first + limit]]

    def _check_panic(self, now: float) -> None:
        if self._panic_at is not None and (self.eof or now - self._panic_at >= PANIC_GRACE):
            raise GuestPanic(
                "guest kernel panicked/oopsed", self.panic_lines(),
                fix=f"read the console log {self.logpath}",
            )

    def wait_ready(self, timeout: float) -> str:
        """Block until the ready line, a panic, QEMU's exit or the deadline.

        :returns: the matched ready line.
        :raises GuestPanic: a panic or oops was printed (its lines are quoted).
        :raises GuestTimeout: the deadline passed.
        :raises GuestError: the console closed (QEMU exited) before ready.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                self._check_panic(now)
                if self.ready_match is not None:
                    return self.ready_match
                if self.eof:
                    raise GuestError(
                        f"the guest's console closed before it was ready; last line: {self._last_line()!r}",
                        fix=f"read the console log {self.logpath}",
                    )
                if now >= deadline:
                    raise GuestTimeout(
                        f"guest not ready after {timeout:.0f}s; last console line: {self._last_line()!r}",
                        fix=f"read the console log {self.logpath} or raise the boot timeout",
                    )
                self._cond.wait(timeout=min(deadline - now, 0.5))

    def check(self) -> None:
        """Raise :class:`GuestPanic` if a panic has been seen (call between steps)."""
        with self._cond:
            if self.panic_line is not None:
                raise GuestPanic("guest kernel panicked/oopsed", self.panic_lines(),
                                 fix=f"read the console log {self.logpath}")

    def _last_line(self) -> str:
        tail = [ln for ln in self.tail(5) if ln.strip()]
        return tail[-1] if tail else ""

    def close(self, timeout: float = 5.0) -> None:
        """Wait for the pump to see EOF (QEMU gone), then close files."""
        stop_reader(self._thread, self._sock, timeout)
        self._tee.close()
