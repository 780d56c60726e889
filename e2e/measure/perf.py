"""
One ``perf stat`` process counting ``kvm:*`` tracepoints for exactly a window: :class:`PerfStat`
attaches to a pid or to thread ids with its events disabled (``-D -1``), and is switched on and
off over a control FIFO (``--control fifo:CTL,ACK``), so only the workload window is counted.
Its events, command line and CSV are :mod:`e2e.measure.perf_events`'s; reading its failures
is :mod:`e2e.measure.perf_errors`'s.

The control protocol (Linux 6.1 ``tools/perf/util/evlist.c``): perf reads a
command per line from CTL (``enable``, ``disable``, ``ping``, ...) and writes
``"ack\\n"`` to ACK after each (6.1 writes ``sizeof("ack\\n")`` bytes, so a NUL
follows; it is ignored here). perf only polls CTL once its counters are open,
so the ack of a ``ping`` means "attached". perf stops on SIGINT (or when the
counted process exits) and then writes its CSV to ``-o FILE``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ..errors import CapabilityError, PerfError, PveoiError
from ..util.spawn import popen
from ..util.tmpdirs import mkdtemp
from .perf_errors import INSTALL_FIX, perf_error
from .perf_events import Event, parse_perf_csv, perf_stat_argv

log = logging.getLogger(__name__)


class _Phase(enum.Enum):
    """The phase of one perf process: not started, attached (counting off), counting, or ended."""

    NEW = "new"
    ATTACHED = "attached (counting disabled)"
    ENABLED = "enabled"
    STOPPED = "stopped"


class PerfStat:
    """One ``perf stat`` counting ``events`` on a pid or on thread ids for a window.

    Usage::

        with PerfStat(events, tids=vcpu_tids) as perf:
            perf.start()      # attach, counting disabled
            perf.enable()
            ...workload...
            perf.disable()
            counts = perf.stop()

    ``enable()``/``disable()`` may be repeated; the counts add up. perf runs
    in its own process group with ``LC_ALL=C`` and ``PR_SET_PDEATHSIG(SIGKILL)``
    (it dies with the *thread* that called ``start()``, so call it from a
    thread that outlives the measurement). Leaving the context by any path
    kills and reaps perf and removes the private temp dir (FIFOs, CSV).

    :param events: the counters.
    :param pid: count all threads of this process (those alive at attach)...
    :param tids: ...or exactly these threads.
    :param perf: the perf binary.
    :param attach_timeout: seconds for perf to attach (ack a ``ping``).
    :param command_timeout: seconds for perf to ack ``enable``/``disable``.
    :param stop_timeout: seconds for perf to exit after SIGINT.
    :raises ConfigError: bad events or ids (see :func:`perf_stat_argv`).
    """

    def __init__(
        self,
        events: Sequence[Event],
        *,
        pid: int | None = None,
        tids: Sequence[int] = (),
        perf: str = "perf",
        attach_timeout: float = 30.0,
        command_timeout: float = 10.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.events = list(events)
        self.pid = pid
        self.tids = list(tids)
        self.perf = perf
        self.attach_timeout = attach_timeout
        self.command_timeout = command_timeout
        self.stop_timeout = stop_timeout
        # Validate now, with stand-in paths, so misuse fails before anything runs.
        perf_stat_argv(self.events, pid=pid, tids=self.tids, perf=perf,
                       control_fifo=(Path("ctl"), Path("ack")), output=Path("out"))
        self.argv: list[str] = []
        self.state = _Phase.NEW
        #: perf's CSV and stderr, kept after stop() for reports and debugging.
        self.output_text: str | None = None
        self.stderr_text: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None
        self._ctl: int | None = None
        self._ack: int | None = None
        self._pidfd: int | None = None
        self._ack_buffer = b""

    # -- context manager

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- properties

    @property
    def process_id(self) -> int | None:
        """perf's own pid while it runs (None before start())."""
        return self._proc.pid if self._proc is not None else None

    @property
    def workdir(self) -> Path | None:
        """The private temp dir (FIFOs, CSV, stderr), None before start() and after close()."""
        return self._tmp

    # -- lifecycle

    def start(self) -> None:
        """Spawn perf and wait until it has attached (counting disabled).

        :raises CapabilityError: perf is missing, or may not count (permissions,
            unknown tracepoints).
        :raises MeasurementError: perf exited or did not answer within
            ``attach_timeout`` (e.g. the pid is gone).
        :raises PveoiError: called twice.
        """
        self._require((_Phase.NEW,), "start")
        try:
            self._spawn()
            self._command("ping", self.attach_timeout, "attach")
        except BaseException:
            self.close()
            raise
        self.state = _Phase.ATTACHED
        log.debug("perf %d attached to %s", self._proc.pid if self._proc else -1, self._target())

    def enable(self) -> None:
        """Start counting; returns once perf has acknowledged.

        :raises MeasurementError: perf exited or did not ack in time.
        :raises PveoiError: not attached, or already enabled.
        """
        self._require((_Phase.ATTACHED,), "enable")
        self._command("enable", self.command_timeout, "enable")
        self.state = _Phase.ENABLED

    def disable(self) -> None:
        """Stop counting; returns once perf has acknowledged.

        :raises MeasurementError: perf exited or did not ack in time.
        :raises PveoiError: not enabled.
        """
        self._require((_Phase.ENABLED,), "disable")
        self._command("disable", self.command_timeout, "disable")
        self.state = _Phase.ATTACHED

    def stop(self) -> dict[str, int]:
        """End perf (SIGINT), reap it and parse its counts; then clean up.

        :returns: label -> count, over every enabled window.
        :raises MeasurementError: perf failed or timed out, or its output is
            unusable (``<not counted>``, missing rows, ...).
        :raises CapabilityError: perf failed for lack of permission.
        :raises PveoiError: not started, or already stopped.
        """
        self._require((_Phase.ATTACHED, _Phase.ENABLED), "stop")
        if self.state is _Phase.ENABLED:
            log.debug("stopping perf while enabled: the window ends now")
        proc = self._proc
        assert proc is not None and self._tmp is not None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                returncode = proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired as err:
                raise PerfError(f"perf did not exit within {self.stop_timeout:g}s of SIGINT",
                                fix="see perf's stderr; the host may be overloaded") from err
            self.stderr_text = self._read_stderr()
            # perf re-raises SIGINT at exit; 0: the counted process exited first.
            if returncode not in (0, -signal.SIGINT, 128 + signal.SIGINT):
                raise perf_error(self.stderr_text, returncode, self.argv, "stop")
            counts: dict[str, int] = self._collect(self._tmp)
        finally:
            self.state = _Phase.STOPPED
            self.close()
        log.debug("perf counts: %s", counts)
        return counts

    def close(self) -> None:
        """Kill and reap perf if it runs, close the FIFOs, remove the temp dir. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                log.debug("killing perf %d", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            proc.wait()
            self._proc = proc  # keep it for process_id/returncode; it is reaped
        for name in ("_ctl", "_ack", "_pidfd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.state = _Phase.STOPPED

    # -- internals

    def _target(self) -> str:
        return f"pid {self.pid}" if self.pid is not None else f"tids {self.tids}"

    def _require(self, states: tuple[_Phase, ...], action: str) -> None:
        if self.state in states:
            return
        stop = "call stop() to end it"
        hint = {
            _Phase.NEW: "call start() first",
            _Phase.ATTACHED: "call enable() first" if action == "disable" else stop,
            _Phase.ENABLED: "call disable() first" if action == "enable" else stop,
            _Phase.STOPPED: "perf has stopped; make a new PerfStat",
        }[self.state]
        raise PveoiError(f"cannot {action}: perf is {self.state.value}", fix=hint)

    def _spawn(self) -> None:
        self._tmp = mkdtemp("perf")
        ctl, ack = self._tmp / "ctl", self._tmp / "ack"
        os.mkfifo(ctl, 0o600)
        os.mkfifo(ack, 0o600)
        # O_RDWR on a FIFO never blocks and never sees EOF/EPIPE, whatever perf does.
        self._ctl = os.open(ctl, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._ack = os.open(ack, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.argv = self._argv(ctl, ack, self._tmp)
        log.debug("running %s", shlex.join(self.argv))
        env = dict(os.environ, LC_ALL="C")
        with open(self._tmp / "stderr", "wb") as err_file:
            try:
                self._proc = popen(self.argv, stdin=subprocess.DEVNULL, stdout=err_file, stderr=err_file, env=env,
                                   close_fds=True)
            except FileNotFoundError as err:
                raise CapabilityError(f"perf not found: {self.perf}", fix=INSTALL_FIX) from err
            except PermissionError as err:
                raise CapabilityError(f"cannot run {self.perf}: {err.strerror}",
                                      fix=INSTALL_FIX) from err
        try:
            self._pidfd = os.pidfd_open(self._proc.pid)
        except OSError as err:  # Linux < 5.3: poll perf's liveness in slices instead
            log.debug("pidfd_open failed (%s); polling perf's exit", err)
            self._pidfd = None

    def _argv(self, ctl: Path, ack: Path, workdir: Path) -> list[str]:
        """perf's command line, with its control FIFOs and private dir (a subclass records instead)."""
        return perf_stat_argv(self.events, pid=self.pid, tids=self.tids, control_fifo=(ctl, ack),
                              start_disabled=True, perf=self.perf, output=workdir / "perf.csv")

    def _collect(self, workdir: Path) -> Any:
        """What perf left in ``workdir`` once it exited: the counts."""
        out = workdir / "perf.csv"
        try:
            self.output_text = out.read_text(errors="replace")
        except FileNotFoundError as err:
            tail = (self.stderr_text or "").strip()[-300:]
            raise PerfError("perf wrote no output file", fix=f"see perf's stderr: {tail}") from err
        return parse_perf_csv(self.output_text, self.events)

    def _read_stderr(self) -> str:
        if self._tmp is None:
            return ""
        try:
            return (self._tmp / "stderr").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _command(self, command: str, timeout: float, when: str) -> None:
        """Send ``command`` on the control FIFO and wait for perf's ``ack``."""
        assert self._ctl is not None and self._ack is not None and self._proc is not None
        try:
            os.write(self._ctl, f"{command}\n".encode())
        except OSError as err:
            raise PerfError(
                f"cannot write {command!r} to perf's control FIFO: {err.strerror}",
                fix="see perf's stderr") from err
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._ack, select.POLLIN)
        if self._pidfd is not None:
            poller.register(self._pidfd, select.POLLIN)
        while True:
            if self._take_ack():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                tail = self._read_stderr().strip()[-300:]
                raise PerfError(
                    f"perf did not acknowledge {command!r} within {timeout:g}s",
                    fix=f"is the host overloaded? perf's stderr: {tail!r}",
                )
            slice_s = left if self._pidfd is not None else min(left, 0.1)
            ready = {fd for fd, _ in poller.poll(max(1, int(slice_s * 1000)))}
            if self._ack in ready:
                continue
            if (self._pidfd is not None and self._pidfd in ready) or (
                    self._pidfd is None and self._proc.poll() is not None):
                if self._take_ack():  # an ack written just before it exited
                    return
                returncode = self._proc.wait()
                self.stderr_text = self._read_stderr()
                raise perf_error(self.stderr_text, returncode, self.argv, when)

    def _take_ack(self) -> bool:
        """Read what perf wrote to ACK; consume one ``ack\\n`` if there is one."""
        assert self._ack is not None
        while True:
            try:
                chunk = os.read(self._ack, 4096)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EINTR):
                    break
                raise
            if not chunk:
                break
            self._ack_buffer += chunk.replace(b"\0", b"")
        marker = b"ack\n"
        if marker in self._ack_buffer:
            _, _, self._ack_buffer = self._ack_buffer.partition(marker)
            return True
        return False
