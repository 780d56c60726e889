"""
The guest's serial console, watched with pexpect.

A pump thread drains the console socket continuously (a full socket would
stall the guest's UART), writes everything to ``console.log`` and to the
``pveoi.console`` logger, and matches the ready line, panic/oops patterns and
the guest init's error lines (``pveoi-guest-error: ...``) as they arrive.
Waiters block on a condition variable with a deadline: no sleep-polling. A
panic or an init error fails every wait at once (:meth:`Console.wait_ready`,
:meth:`Console.pause`), and :meth:`Console.on_failure` lets a blocked SSH
connect be cut short.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pexpect
import pexpect.fdpexpect

from ..errors import GuestError, GuestInitError, GuestPanic, GuestTimeout

log = logging.getLogger("pveoi.console")

PANIC_PATTERN = (
    r"Kernel panic - not syncing[^\r\n]*|Oops: [^\r\n]*|BUG: [^\r\n]*|kernel BUG at [^\r\n]*"
    r"|general protection fault[^\r\n]*|Unable to handle kernel[^\r\n]*"
)
GUEST_ERROR_PATTERN = r"pveoi-guest-error: [^\r\n]*\r?\n"
"""What the guest's init (images/guest/init) prints when a boot step failed; fatal at once.
Matched only once the line is complete (the serial console delivers it in pieces)."""
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
    :param error_pattern: regex of a line that means the guest's init failed
        (None: no such line).
    """

    def __init__(self, sock: socket.socket, logpath: Path, ready_pattern: str,
                 error_pattern: str | None = GUEST_ERROR_PATTERN) -> None:
        self.logpath = logpath
        self._sock = sock
        self._tee = _Tee(logpath)
        self._child = pexpect.fdpexpect.fdspawn(sock.fileno(), timeout=None, maxread=65536)
        self._child.logfile_read = self._tee
        # pexpect reports the pattern that matches earliest in the stream, so an error line
        # printed before the ready line is seen first. A pattern that never matches stands in for none.
        self._patterns = [re.compile(ready_pattern.encode()), re.compile(PANIC_PATTERN.encode()),
                          re.compile((error_pattern or r"(?!)").encode())]
        self._cond = threading.Condition()
        self.ready_match: str | None = None
        self.ready_at: float | None = None
        self.panic_line: str | None = None
        self._panic_at: float | None = None
        self.error_line: str | None = None
        self.error_at: float | None = None  # time.monotonic() when the error line was seen
        self._listeners: list[Callable[[], None]] = []
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
                        self._failed()
                    elif idx == 2 and self.error_line is None:
                        self.error_line = self._child.after.decode(errors="replace").strip()
                        self.error_at = time.monotonic()
                        log.error("guest console: %s", self.error_line)
                        self._failed()
                    elif idx == 3:
                        self.eof = True
                        self._cond.notify_all()
                        return
                    if self._panic_at is not None and time.monotonic() - self._panic_at >= PANIC_GRACE:
                        self._cond.notify_all()
        except (OSError, ValueError):  # the fd was closed under us at shutdown
            with self._cond:
                self.eof = True
                self._cond.notify_all()

    def _failed(self) -> None:
        """A panic or init error was seen (lock held): wake waiters, tell the listeners."""
        self._cond.notify_all()
        for callback in self._listeners:
            callback()

    @contextmanager
    def on_failure(self, callback: Callable[[], None]) -> Iterator[None]:
        """Call ``callback`` (from the console's thread) if a panic or init error shows while inside.

        For a blocking call that cannot wait on the console itself (an SSH
        handshake): the callback closes its socket, then :meth:`check` names why.
        Called at once if the failure was already seen.
        """
        with self._cond:
            if self.panic_line is not None or self.error_line is not None:
                callback()
            self._listeners.append(callback)
        try:
            yield
        finally:
            with self._cond:
                self._listeners.remove(callback)

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

    def _init_error(self) -> GuestInitError:
        assert self.error_line is not None
        return GuestInitError("the guest's init failed", self.error_line,
                              fix=f"read the console log {self.logpath}")

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
        :raises GuestInitError: the guest's init printed an error line (quoted), even
            if the ready line followed it.
        :raises GuestTimeout: the deadline passed.
        :raises GuestError: the console closed (QEMU exited) before ready.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                self._check_panic(now)
                if self.error_line is not None:
                    raise self._init_error()
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
        """Raise if a panic or an init error has been seen (call between steps).

        :raises GuestPanic: a panic or oops was printed.
        :raises GuestInitError: the guest's init printed an error line.
        """
        with self._cond:
            if self.panic_line is not None:
                raise GuestPanic("guest kernel panicked/oopsed", self.panic_lines(),
                                 fix=f"read the console log {self.logpath}")
            if self.error_line is not None:
                raise self._init_error()

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` between retries, but fail at once if the guest fails meanwhile.

        :raises GuestPanic: a panic or oops was printed (before or during the pause).
        :raises GuestInitError: the guest's init printed an error line.
        """
        deadline = time.monotonic() + seconds
        with self._cond:
            while True:
                if self.panic_line is not None or self.error_line is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
        self.check()

    def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the console's EOF (QEMU gone, every byte read).

        :returns: whether the console closed.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _last_line(self) -> str:
        tail = [ln for ln in self.tail(5) if ln.strip()]
        return tail[-1] if tail else ""

    def close(self, timeout: float = 5.0) -> None:
        """Wait for the pump to see EOF (QEMU gone), then close files."""
        stop_reader(self._thread, self._sock, timeout)
        self._tee.close()
