"""
One guest of an A/B, measured: :class:`Guest` boots a fresh guest of an arm and measures one workload
window per rep in it (perf stat and perf record on exactly that QEMU's vCPU threads for exactly the
window, the guest's own counters around it), in steps a caller may interleave with other guests'
(:func:`e2e.run.ab._run_round`); :func:`run_guest` runs the steps in a row. :class:`Setup` is what
every guest of an A/B shares. The A/B itself (order, retries, analysis) is :mod:`e2e.run.ab`'s.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import select
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from ..build.image import READY_PATTERN
from ..errors import CommandError, ConfigError, PerfError, PveoiError
from ..measure.guest_counters import (
    STATE_COMMAND,
    STATE_MARK,
    GuestState,
    interrupt_delta,
    interrupt_delta_per_cpu,
    pveoi_delta,
)
from ..measure.markers import mark_command
from ..measure.perf import PerfStat
from ..measure.perf_events import Event
from ..measure.record import PerfRecord
from ..measure.vectors import GUEST_VIEW_SCRIPT, GuestView
from ..model.plan import Arm
from ..model.result import RunRecord
from ..model.workloads import Workload
from ..util import command
from ..util.spawn import popen
from ..util.tmpdirs import tempdir
from ..vm.cpus import VCpu
from ..vm.machine import Machine
from . import traces
from .boot import Launched, ProvenGuest, come_up, launch, machine_spec
from .evidence import AttemptTrace, attempt_name, keep_perf_output, keep_trace_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setup:
    """What every run of an A/B shares."""

    kernel: Path
    initrd: Path
    private_key: Path
    host_key_line: str
    artifacts: Path
    memory_mb: int = 256
    boot_timeout: float = 180.0
    qemu: str = "qemu-system-x86_64"
    accel: str = "kvm"
    #: Record kvm:* per event too (exact accounting with guest markers, per-vector attribution).
    trace: bool = True
    #: Leave each trace to the caller (:func:`e2e.run.traces.finish_traces`): the run keeps its ``perf.data`` and what
    #: the summary needs besides it. For the virtual host's inner runner, whose emulated CPU spends
    #: seconds per guest on ``perf script`` and on the parse that native Python does in 0.3 s.
    defer_trace: bool = False


IO_WORKERS = 4
"""QEMU's I/O worker threads for the block workload (queue depth 1 needs one; a few spare)."""


@functools.cache
def qemu_pins_io_workers(qemu: str = "qemu-system-x86_64") -> bool:
    """Does this QEMU let the I/O thread pool be pinned (``main-loop`` ``thread-pool-min``, 7.1+)?
    Without it the block workload runs as before (workers come and go; perf's attach may race them)."""
    try:
        out = command.run([qemu, "-object", "main-loop,help"], timeout=30, check=False)
    except CommandError:
        return False
    return "thread-pool-min" in out.stdout + out.stderr


@contextlib.contextmanager
def host_server(argv: Sequence[str]) -> Iterator[int | None]:
    """Run a workload's host-side server on a free loopback port; yield the port."""
    if not argv:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [a.replace("{port}", str(port)) for a in argv]
    try:
        proc = popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as err:
        raise ConfigError(f"cannot start {cmd[0]}: {err.strerror}", fix=f"apt-get install {cmd[0]}") from err
    try:
        # Wait for the server's own "listening" line; a probe connection would be
        # served as a test (and a one-off server would then exit).
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 15
        while b"listening" not in seen.lower():
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
            chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                raise PveoiError(f"{cmd[0]} did not start listening: {seen.decode(errors='replace').strip()!r}",
                                 fix=f"run {shlex.join(cmd)} by hand to see why")
            seen += chunk
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


#: Called with each run as soon as it is measured (a later window of the same guest may still fail).
Measured = Callable[[RunRecord], None]


def run_guest(setup: Setup, arm: Arm, workload: Workload, events: Sequence[Event], reps: Sequence[int],
              attempt: int = 1, trace: AttemptTrace | None = None, measured: Measured | None = None) -> None:
    """Boot one fresh guest for ``arm`` and measure ``workload`` in it once per rep of ``reps``, window
    after window (one rep: one window, the guest's only). See :class:`Guest`.

    :param trace: filled in as the attempt goes (its machine and logs), for the record of a failure.
    :param measured: given each rep's record as soon as its window is done, so a guest that fails in a
        later window keeps the reps it measured (the caller retries only the rest).
    :raises Finding: the guest's side of the arm is not what the host offered (a kernel bug),
        or the guest panicked.
    :raises MeasurementError: QEMU does not honour the arm (capability), or perf lost its threads.
    :raises QemuExited: QEMU exited mid-command (a guest reset, poweroff, OOM, a signal: infrastructure;
        a panic: a finding), classified.
    :raises GuestError: boot, SSH or the workload failed (infrastructure).
    """
    with Guest(setup, arm, workload, events, reps, attempt, trace, measured) as guest:
        guest.launch()
        guest.come_up()
        guest.measure()


#: The mark that ends a guest's wait in a round (:func:`_run_round`) while the other guests are measured: a
#: stage ``X->idle`` is idle time, not this guest's (``tests/bench_ab.py --breakdown`` counts it apart).
IDLE = "idle"


class Guest:
    """One fresh guest of ``arm`` measuring ``reps``, in three steps a caller may interleave with other
    guests' (:func:`_run_round` boots several at once): :meth:`launch` (QEMU started paused, the arm
    proven over QMP, the guest let run, perf attaching while it boots), :meth:`come_up` (its ready line,
    SSH, the guest's own proof of the arm) and :meth:`measure` (window after window). Leaving its
    context shuts it down, by any path.

    Every window is measured as a guest of its own would be: perf stat (and perf record) attached to the
    vCPU threads for that window alone (the first attaches while the guest boots), the guest's state
    read before and after it, its own window markers, its own logs under the rep's attempt name
    (:func:`e2e.run.evidence.attempt_name`; the machine's under the first rep's). The arm is proven
    once, at the boot (QMP and the guest's own view); each window's figures prove it again. Each rep's
    record goes to ``measured`` as soon as its window is done; the last one's after the shutdown, whose
    time it carries.
    """

    def __init__(self, setup: Setup, arm: Arm, workload: Workload, events: Sequence[Event], reps: Sequence[int],
                 attempt: int = 1, trace: AttemptTrace | None = None, measured: Measured | None = None) -> None:
        if not reps:
            raise ValueError("a guest needs at least one rep")
        self.setup, self.arm, self.workload, self.events = setup, arm, workload, events
        self.reps, self.attempt = tuple(reps), attempt
        self.name = attempt_name(workload.name, arm.name, reps[0], attempt)
        self.trace = trace or AttemptTrace(setup.artifacts)
        self.measured = measured or (lambda _record: None)
        self.vcpus = arm.smp or workload.smp
        self.marks: dict[str, float] = {}
        self._stack = contextlib.ExitStack()
        self._attached: list[_Perf] = []
        self._launched: Launched | None = None
        self._guest: ProvenGuest | None = None
        self._last: RunRecord | None = None

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(exc)

    def close(self, exc: BaseException | None = None) -> None:
        """Shut the guest down (its machine told of ``exc``, the failure that ends it, if any); then the
        last window's record goes out, with the shutdown's time."""
        closing = time.monotonic()
        self._stack.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
        last, self._last = self._last, None
        if last is None or exc is not None:
            return
        # The last window carries its guest's shutdown, and in a round the wait before it (IDLE).
        timings, since, mark = dict(last.timings), self.marks["state_read_after"], "state_read_after"
        if closing - since > 0.5:
            timings[f"{mark}->{IDLE}"] = round(closing - since, 3)
            since, mark = closing, IDLE
        timings[f"{mark}->shut_down"] = round(time.monotonic() - since, 3)
        self.measured(replace(last, timings=timings))

    def _attach(self, machine: Machine, threads: Sequence[VCpu], window: str) -> None:
        try:
            self._attached.append(_attach_perf(self._stack, self.setup, self.events, machine, threads, window,
                                               self.trace))
        except PerfError as err:
            # perf finds no threads to attach to when QEMU is gone (a guest that triple-faulted early in its
            # boot, under a slow attach): then how QEMU ended is the attempt's failure, not perf's
            gone = machine.exit_error("perf could not attach to the guest's vCPU threads", grace=5.0,
                                      when="during boot" if window == self.name else "between windows")
            if gone is not None:
                raise gone from err
            raise
        self.marks["perf_attached"] = time.monotonic()

    def launch(self) -> None:
        """Start QEMU, prove it holds the arm, let the guest run; returns while it boots."""
        setup, workload = self.setup, self.workload
        scratch = None
        if workload.scratch_mb:
            scratch = self._stack.enter_context(tempdir("disk")) / "scratch.img"
            with open(scratch, "wb") as f:
                f.truncate(workload.scratch_mb << 20)
        spec = machine_spec(
            self.arm, kernel=setup.kernel, initrd=setup.initrd, accel=setup.accel, smp=self.vcpus,
            memory_mb=setup.memory_mb, scratch_disk=scratch,
            io_workers=IO_WORKERS if scratch is not None and qemu_pins_io_workers(setup.qemu) else None,
            qemu=setup.qemu, name=self.name,
        )
        self.marks = {"start": time.monotonic()}  # where a run's time goes (tests/bench_ab.py --breakdown)
        self.trace.machine = Machine(spec, READY_PATTERN, artifacts=setup.artifacts)
        # perf stat (and perf record) attach to the vCPU threads while the guest boots, counting nothing
        # until enabled: their start-up (seconds in the virtual host) overlaps the boot.
        self._launched = launch(self._stack, self.trace.machine, self.arm, marks=self.marks,
                                while_booting=lambda machine, threads: self._attach(machine, threads, self.name))

    def come_up(self) -> None:
        """Wait for the guest: ready, SSH up, its own view of the arm proven (and, when tracing, its
        markers and vector names read in the same round trip)."""
        assert self._launched is not None, "launch() first"
        setup = self.setup
        self._guest = come_up(self._launched, private_key=setup.private_key, host_key_line=setup.host_key_line,
                              boot_timeout=setup.boot_timeout, extra=GUEST_VIEW_SCRIPT if setup.trace else "")

    def measure(self) -> None:
        """Every rep's window, one after another."""
        guest = self._guest
        assert guest is not None, "come_up() first"
        marks = self.marks
        boot_s = marks["guest_ready"] - marks["start"]
        if time.monotonic() - marks["state_read"] > 0.5:  # in a round: the other guests' turns came first
            marks[IDLE] = time.monotonic()
        view = None
        if self.setup.trace:
            _, view = GuestView.split(guest.state_output, guest.state_output.partition(STATE_MARK)[0])
        before = guest.state
        last = None
        for window, rep in enumerate(self.reps, 1):
            if window > 1:
                marks = self.marks = {"window_start": time.monotonic()}
                self._attach(guest.machine, guest.threads,
                             attempt_name(self.workload.name, self.arm.name, rep, self.attempt))
            perf = self._attached[-1]
            after, record = _measure_window(self.setup, guest, self.workload, self.vcpus, perf, view, before, marks)
            record = replace(record, rep=rep, attempt=self.attempt, window=window,
                             boot_seconds=round(boot_s, 2) if window == 1 else None)
            before = after
            if window < len(self.reps):
                self.measured(record)  # kept at once: a later window's failure does not cost it
            else:
                last = record
            log.info("  %-6s rep %d%s: kvm_exit=%d kvm_pv_eoi=%d kvm_eoi=%d inj_virq=%d (%.1fs workload)",
                     self.arm.name, rep, f" (window {window} of its guest)" if len(self.reps) > 1 else "",
                     record.counts.get("kvm:kvm_exit", 0), record.counts.get("kvm:kvm_pv_eoi", 0),
                     record.counts.get("kvm:kvm_eoi", 0), record.counts.get("kvm:kvm_inj_virq", 0),
                     record.workload_seconds or 0.0)
        guest.machine.console.check()
        marks["state_read_after"] = time.monotonic()
        self._last = last  # out after the shutdown (close)


@dataclass
class _Perf:
    """One window's perf processes, closed by their own stack when the window ends."""

    stack: contextlib.ExitStack
    stat: PerfStat
    record: PerfRecord | None
    name: str


def _attach_perf(outer: contextlib.ExitStack, setup: Setup, events: Sequence[Event], machine: Machine,
                 threads: Sequence[VCpu], name: str, trace: AttemptTrace) -> _Perf:
    """perf stat (and, when tracing, perf record) attached to ``threads``, counting nothing until enabled;
    closed with ``outer`` on any failure, or earlier by the window that uses them."""
    perfs = outer.enter_context(contextlib.ExitStack())
    perf = perfs.enter_context(PerfStat(events, tids=[v.thread_id for v in threads]))
    perfs.enter_context(keep_perf_output(perf, setup.artifacts, name, trace))
    rec: PerfRecord | None = None
    if setup.trace:
        keep = setup.artifacts / f"{name}-perf.data" if setup.defer_trace else None
        rec = perfs.enter_context(PerfRecord(machine.pid, keep_data=keep))
        perfs.enter_context(keep_trace_output(rec, setup.artifacts, name, trace))
        rec.start()
    perf.start()
    return _Perf(perfs, perf, rec, name)


def _measure_window(setup: Setup, guest: ProvenGuest, workload: Workload, vcpus: int, perf: _Perf,
                    view: GuestView | None, before: GuestState,
                    marks: dict[str, float]) -> tuple[GuestState, RunRecord]:
    """One workload window in a booted guest of ``vcpus`` vCPUs, counted by ``perf``: the guest's state
    after it and the run's record (rep, attempt, window and boot time left to the caller)."""
    script = None
    with host_server(workload.host_server) as port:
        argv = workload.argv(port, vcpus)
        if view is not None and view.marks:
            argv = mark_command(argv)
        with perf.stack:  # closed here, before the guest's state is read again (the perf output is kept)
            if perf.record is not None:
                perf.record.enable()
            perf.stat.enable()
            result = guest.ssh.run(argv, timeout=workload.timeout)
            perf.stat.disable()
            if perf.record is not None:
                perf.record.disable()
            counts = perf.stat.stop()
            marks["workload_done"] = time.monotonic()
            if perf.record is not None:
                script = perf.record.finish()
                marks["trace_read"] = time.monotonic()
    after = GuestState.parse(guest.ssh.run(STATE_COMMAND, timeout=30).check().stdout)
    result.check()
    guest.machine.console.check()
    marks["state_read_after"] = time.monotonic()
    timings = {f"{a}->{b}": round(marks[b] - marks[a], 3) for a, b in itertools.pairwise(list(marks))}
    summary: dict[str, Any] = {}
    if script is not None and view is not None:
        tids = [v.thread_id for v in guest.threads]
        expects = guest.arm.expects_pv_eoi
        if setup.defer_trace:  # perf.data kept: traces.finish_traces makes the summary, natively
            summary = traces.deferred(perf.name, tids, pv_eoi=expects, names=view.names, marks=view.marks)
        else:
            summary = traces.summary_of(script, tids, pv_eoi=expects, names=view.names, marks=view.marks)
    events = perf.stat.events
    raw = {e.key: int(counts[e.key]) for e in events if e.filter is None}
    breakdown = {e.key[len("kvm_exit["):-1]: int(counts[e.key]) for e in events if e.filter is not None}
    record = RunRecord(
        rep=0, arm=guest.arm.name, vcpus=vcpus, counts=raw, exit_reasons=breakdown,
        workload_seconds=round(result.seconds, 3), ready_line=guest.ready,
        qmp={"kvm": guest.kvm, "kvm_pv_eoi": list(guest.readback), "vcpu_threads": guest.thread_ids},
        guest={"interrupts": interrupt_delta(before, after),
               "interrupts_per_cpu": interrupt_delta_per_cpu(before, after),
               "pv_eoi": pveoi_delta(before, after)},
        workload_output=result.stdout.strip()[-500:], timings=timings, trace=summary,
    )
    return after, record
