"""
Counting ``kvm:*`` tracepoints with ``perf stat`` for exactly a window.

* :func:`check_required` checks what tracefs offers (:func:`e2e.host.hostfacts.list_kvm_tracepoints`)
  against :data:`REQUIRED`.
* :class:`Event` is one counter: a tracepoint, an optional ``--filter`` and a
  label (``kvm_exit[MSR]``); the same tracepoint may appear with several
  filters.
* :func:`perf_stat_argv` and :func:`parse_perf_csv` are pure: argv in, CSV out.
* :class:`PerfStat` owns one ``perf stat`` process. It attaches to a pid or to
  thread ids with its events disabled (``-D -1``), and is switched on and off
  over a control FIFO (``--control fifo:CTL,ACK``), so only the workload
  window is counted.

The control protocol (Linux 6.1 ``tools/perf/util/evlist.c``): perf reads a
command per line from CTL (``enable``, ``disable``, ``ping``, ...) and writes
``"ack\\n"`` to ACK after each (6.1 writes ``sizeof("ack\\n")`` bytes, so a NUL
follows; it is ignored here). perf only polls CTL once its counters are open,
so the ack of a ``ping`` means "attached". perf stops on SIGINT (or when the
counted process exits) and then writes its CSV to ``-o FILE``.

CSV rows (``-x SEP``): ``value SEP unit SEP event SEP run-time SEP percent
SEP metric SEP metric-unit``, one row per requested event in request order.
A ``<not counted>`` value means the counted threads never ran while the
event was enabled; ``<not supported>`` that the kernel refused the event.
Both are errors here, never zero.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import math
import os
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ..errors import CapabilityError, ConfigError, Kind, MeasurementError, PerfError, PveoiError
from ..host.hostfacts import (
    COUNTED,
    probe_tracefs,
)
from ..util.spawn import popen
from ..util.tmpdirs import mkdtemp

log = logging.getLogger(__name__)

#: perf's CSV field separator. It cannot appear in an event name (checked by
#: :class:`Event`) nor in a unit; filters never appear in the CSV.
SEPARATOR = ";"

#: The tracepoints pveoi cannot measure PV EOI without (:data:`e2e.host.hostfacts.COUNTED`).
REQUIRED: tuple[str, ...] = tuple(COUNTED)

BENIGN = ("Couldn't record kernel reference relocation symbol", "Symbol resolution may be skewed",
          "Check /proc/kallsyms permission", "perf_event__synthesize_bpf_events:", "Couldn't synthesize bpf events",
          "[ perf record:")
"""Lines perf record prints on every healthy run here (a kernel without kallsyms access for
relocation, without BPF images): never the reason it failed. "Check /proc/kallsyms permission"
once passed for a permission error and turned a silent exit 255 into a false capability verdict."""
PERMISSION_FIX = "sysctl kernel.perf_event_paranoid=-1 or run as root"
INSTALL_FIX = "apt-get install linux-perf (Debian), or pass the path of a perf binary"
TRACEFS_MOUNT_FIX = ("mount -t tracefs nodev /sys/kernel/tracing as root (root's perf does it on first use), "
                     "then give the user access: host_config/prepare-host.sh")

NOT_COUNTED = "<not counted>"
NOT_SUPPORTED = "<not supported>"


# ---------------------------------------------------------------- tracefs


def check_required(available: Iterable[str]) -> None:
    """Check that every tracepoint in :data:`REQUIRED` is available.

    :param available: tracepoint names, as from :func:`list_kvm_tracepoints`.
    :raises MeasurementError: naming the missing ones.
    """
    have = set(available)
    missing = [name for name in REQUIRED if name not in have]
    if missing:
        raise MeasurementError(
            f"tracepoints missing: {', '.join(missing)}; PV EOI cannot be measured without them",
            fix="use a host kernel whose kvm module has them (kvm_pv_eoi needs Linux >= 3.6) "
                "and check `perf list 'kvm:*'`",
        )


# ---------------------------------------------------------------- events and argv


@dataclass(frozen=True)
class Event:
    """One perf counter.

    :param name: the event, e.g. ``"kvm:kvm_exit"``.
    :param filter: a tracepoint filter (``--filter``), e.g. ``"exit_reason == 124"``.
    :param label: the key of its count; defaults to ``name``. Labels must be
        unique among the events of one perf run.
    :raises ConfigError: an empty name or filter, or a name with whitespace or
        the CSV separator in it.
    """

    name: str
    filter: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.name or SEPARATOR in self.name or any(c.isspace() for c in self.name):
            raise ConfigError(f"bad perf event name {self.name!r}",
                              fix=f"use a name like kvm:kvm_exit (no spaces, no {SEPARATOR!r})")
        if self.filter is not None and (not self.filter.strip() or "\n" in self.filter):
            raise ConfigError(f"bad filter {self.filter!r} for {self.name}",
                              fix="pass None for no filter, or a one-line expression")
        if self.label is None:
            object.__setattr__(self, "label", self.name)

    @property
    def key(self) -> str:
        """The key of this event's count (its label)."""
        return self.label or self.name


def perf_stat_argv(
    events: Sequence[Event],
    *,
    pid: int | None = None,
    tids: Sequence[int] = (),
    control_fifo: tuple[Path, Path] | None = None,
    start_disabled: bool = True,
    perf: str = "perf",
    output: Path | None = None,
) -> list[str]:
    """The ``perf stat`` command line (pure).

    ``perf stat -x SEP --no-big-num -e EV [--filter F] ... (-p PID | -t T1,T2)
    [-D -1] [--control fifo:CTL,ACK] [-o OUT]``.

    :param events: the counters, in the order perf will print them.
    :param pid: count every thread of this process (threads that exist when
        perf attaches).
    :param tids: or count exactly these threads (e.g. vCPU threads).
    :param control_fifo: ``(ctl, ack)`` FIFOs for ``--control``.
    :param start_disabled: with a control FIFO, start with the events
        disabled (``-D -1``) until ``enable`` is sent; ignored without one
        (nothing could enable them).
    :param perf: the perf binary.
    :param output: write the CSV to this file instead of stderr.
    :returns: argv.
    :raises ConfigError: no events, duplicate labels, not exactly one of
        pid/tids, a bad id, or a FIFO path with a comma.
    """
    if not events:
        raise ConfigError("no perf events given", fix="pass at least one Event")
    labels = [e.key for e in events]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ConfigError(f"duplicate perf event labels {dupes}",
                          fix="give each filtered event its own label, e.g. kvm_exit[MSR]")
    if (pid is None) == (not tids):
        raise ConfigError("perf needs exactly one of pid or tids",
                          fix="pass pid=QEMU_PID or tids=vCPU thread ids")
    ids = [pid] if pid is not None else list(tids)
    if any(isinstance(i, bool) or not isinstance(i, int) or i <= 0 for i in ids):
        raise ConfigError(f"bad pid/tid in {ids}", fix="pass positive integers")
    argv = [perf, "stat", "-x", SEPARATOR, "--no-big-num"]
    for event in events:
        argv += ["-e", event.name]
        if event.filter is not None:
            argv += ["--filter", event.filter]
    if pid is not None:
        argv += ["-p", str(pid)]
    else:
        argv += ["-t", ",".join(str(t) for t in tids)]
    if control_fifo is not None:
        ctl, ack = control_fifo
        if "," in str(ctl) or "," in str(ack):
            raise ConfigError(f"control FIFO paths may not contain ',' ({ctl}, {ack})",
                              fix="use a directory without commas")
        if start_disabled:
            argv += ["-D", "-1"]
        argv += ["--control", f"fifo:{ctl},{ack}"]
    if output is not None:
        argv += ["-o", str(output)]
    return argv


# ---------------------------------------------------------------- CSV


def parse_perf_csv(text: str, events: Sequence[Event], sep: str = SEPARATOR) -> dict[str, int]:
    """Counts from ``perf stat -x SEP`` output (pure).

    Rows are matched to ``events`` by order (perf prints them in request
    order, and one tracepoint may appear several times with different
    filters), and each row's event name must match. Comments (``#``), blank
    lines, metric continuation rows and perf's prose (``Some events weren't
    counted...``) are skipped.

    :param text: perf's output.
    :param events: the events perf was asked for, in order.
    :param sep: the ``-x`` separator.
    :returns: label -> count. Fractional values (software clocks) are rounded.
    :raises MeasurementError: rows missing or extra, an event name
        mismatch, ``<not counted>``/``<not supported>``, or a bad value.
    """
    rows: list[list[str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = [f.strip() for f in stripped.split(sep)]
        if len(fields) < 3 or not fields[0] or not fields[2] or not _is_value(fields[0]):
            log.debug("perf output: skipping %r", line)
            continue
        rows.append(fields)
    if len(rows) != len(events):
        raise PerfError(
            f"perf printed {len(rows)} counter rows for {len(events)} events "
            f"({', '.join(e.key for e in events)})",
            fix="see perf's stderr; run the perf command by hand",
        )
    counts: dict[str, int] = {}
    for index, (fields, event) in enumerate(zip(rows, events, strict=True)):
        value, printed = fields[0], fields[2]
        if printed != event.name:
            raise PerfError(
                f"perf row {index + 1} is {printed!r}, expected {event.name!r} ({event.key})",
                fix="perf reordered or renamed events; count them in separate runs",
            )
        if value == NOT_COUNTED:
            raise PerfError(
                f"perf did not count {event.key} ({NOT_COUNTED}): the counted threads never ran "
                "while it was enabled",
                fix="check the pid/tids are the vCPU threads and that the window contains work",
            )
        if value == NOT_SUPPORTED:
            raise PerfError(
                f"{event.key} is {NOT_SUPPORTED} by this kernel",
                fix=f"check `perf list '{event.name}'` and the filter {event.filter!r}",
            )
        counts[event.key] = _to_count(value, event)
        if len(fields) > 4 and fields[4]:
            with contextlib.suppress(ValueError):
                if float(fields[4]) < 100.0:
                    log.warning("%s was counted %.2f%% of the window (multiplexed, scaled)",
                                event.key, float(fields[4]))
    return counts


def _is_value(text: str) -> bool:
    if text in (NOT_COUNTED, NOT_SUPPORTED):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _to_count(value: str, event: Event) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise PerfError(f"perf printed {value!r} for {event.key}", fix="run perf by hand")
    return round(number)


# ---------------------------------------------------------------- perf's errors


def perf_error(stderr: str, returncode: int | None, argv: Sequence[str], when: str, *,
               root: Path = Path("/")) -> PveoiError:
    """The error for a perf that exited when it should not have.

    Pure but for one look at tracefs under ``root`` when perf names an unknown tracepoint.

    :param stderr: perf's stderr.
    :param returncode: its exit status (negative: killed by that signal).
    :param argv: its command line.
    :param when: what we were doing, e.g. ``"attach"``.
    :param root: where tracefs is looked for (a fixture tree in tests).
    :returns: a CapabilityError (permissions, missing events) or a
        MeasurementError (anything else), naming perf's own line and a fix.
    """
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if ln not in ("Events disabled", "Events enabled")
             and not any(ln.startswith(w) for w in BENIGN)]
    lower = "\n".join(lines).lower()

    def first(*needles: str) -> str:
        for ln in lines:
            if any(n in ln.lower() for n in needles):
                return ln
        return lines[0] if lines else "(no output)"

    status = f"exit code {returncode}" if returncode is None or returncode >= 0 else (
        f"killed by signal {-returncode}")
    tool = f"perf {argv[1]}" if len(argv) > 1 and argv[1] in ("stat", "record", "script") else "perf stat"
    head = f"{tool} failed during {when} ({status})"
    hint = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("hint:")),
                None)
    if any(n in lower for n in ("permission", "eacces", "perf_event_paranoid",
                                "access to performance monitoring", "not permitted")):
        line = first("permission", "eacces", "paranoid", "access to", "not permitted")
        fix = f"{PERMISSION_FIX} (perf's hint: {hint})" if hint else PERMISSION_FIX
        return CapabilityError(f"{head}: {line}", fix=fix)
    if "problems finding threads" in lower or "no such process" in lower:
        line = first("problems finding threads", "no such process")
        return PerfError(f"{head}: {line}",
                         fix="the pid/tids to count do not exist (any more); pass live ones",
                         kind=Kind.INFRASTRUCTURE)
    if "unknown tracepoint" in lower or "event syntax error" in lower:
        line = first("event syntax error", "unknown tracepoint")
        why = next((ln.lstrip("\\_ ") for ln in lines if ln.startswith("\\___")), None)
        line = f"{line} ({why})" if why and why not in line else line
        if not probe_tracefs(root).mounted:
            # On a fresh machine tracefs is mounted only once root's perf first runs, so a perf
            # that may not mount it sees no tracepoint at all: that is the cause, not a missing kvm.
            return CapabilityError(f"{head}: {line}; tracefs is not mounted", fix=TRACEFS_MOUNT_FIX)
        return CapabilityError(
            f"{head}: {line}",
            fix="load kvm (modprobe kvm_intel or kvm_amd); check `perf list 'kvm:*'`")
    if "failed to set filter" in lower:
        return PerfError(
            f"{head}: {first('failed to set filter')}",
            fix="check the filter against events/<system>/<name>/format in tracefs")
    if returncode == 0:
        return PerfError(
            f"{head}: perf ended by itself: the counted process or threads exited",
            fix="keep the counted process alive until stop()", kind=Kind.INFRASTRUCTURE)
    if not lines and stderr.strip():
        # perf record has been seen to exit 255 during attach with nothing but its usual warnings
        # (twice in some 250 traced runs, both block, before its QEMU's I/O workers were pinned):
        # nothing to fix here, so a fresh attempt, not a capability verdict.
        return PerfError(f"{head}: perf printed no error (only its usual warnings)",
                         fix="nothing to change here: the run is retried; if it repeats, run it by hand: "
                             + shlex.join(argv), kind=Kind.INFRASTRUCTURE)
    return PerfError(f"{head}: {first('error', 'fail')}",
                     fix=f"run it by hand to see why: {shlex.join(argv)}")


# ---------------------------------------------------------------- PerfStat


class _State(enum.Enum):
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
        self.state = _State.NEW
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
        self._require((_State.NEW,), "start")
        try:
            self._spawn()
            self._command("ping", self.attach_timeout, "attach")
        except BaseException:
            self.close()
            raise
        self.state = _State.ATTACHED
        log.debug("perf %d attached to %s", self._proc.pid if self._proc else -1, self._target())

    def enable(self) -> None:
        """Start counting; returns once perf has acknowledged.

        :raises MeasurementError: perf exited or did not ack in time.
        :raises PveoiError: not attached, or already enabled.
        """
        self._require((_State.ATTACHED,), "enable")
        self._command("enable", self.command_timeout, "enable")
        self.state = _State.ENABLED

    def disable(self) -> None:
        """Stop counting; returns once perf has acknowledged.

        :raises MeasurementError: perf exited or did not ack in time.
        :raises PveoiError: not enabled.
        """
        self._require((_State.ENABLED,), "disable")
        self._command("disable", self.command_timeout, "disable")
        self.state = _State.ATTACHED

    def stop(self) -> dict[str, int]:
        """End perf (SIGINT), reap it and parse its counts; then clean up.

        :returns: label -> count, over every enabled window.
        :raises MeasurementError: perf failed or timed out, or its output is
            unusable (``<not counted>``, missing rows, ...).
        :raises CapabilityError: perf failed for lack of permission.
        :raises PveoiError: not started, or already stopped.
        """
        self._require((_State.ATTACHED, _State.ENABLED), "stop")
        if self.state is _State.ENABLED:
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
            self.state = _State.STOPPED
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
        self.state = _State.STOPPED

    # -- internals

    def _target(self) -> str:
        return f"pid {self.pid}" if self.pid is not None else f"tids {self.tids}"

    def _require(self, states: tuple[_State, ...], action: str) -> None:
        if self.state in states:
            return
        stop = "call stop() to end it"
        hint = {
            _State.NEW: "call start() first",
            _State.ATTACHED: "call enable() first" if action == "disable" else stop,
            _State.ENABLED: "call disable() first" if action == "enable" else stop,
            _State.STOPPED: "perf has stopped; make a new PerfStat",
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
