"""
The A/B measurement: boot a fresh guest per arm and rep (interleaved; or one per
group of reps, ``Plan.reps_per_boot``, and a round's guests at once,
``Plan.overlap_boots``), count ``kvm:*`` tracepoints with perf on that QEMU's
vCPU threads for exactly each workload window, read the guest's side, and decide
a verdict.

This module is the "direct" path: it runs on a KVM host. Through the virtual
KVM host the very same code runs inside L1 (see :mod:`e2e.vm.vhost`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import platform
import re
import select
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from ..build.image import READY_PATTERN
from ..errors import (
    CapabilityError,
    CommandError,
    ConfigError,
    Finding,
    Kind,
    LaunchError,
    PerfError,
    PveoiError,
    retryable,
)
from ..host.hostfacts import COUNTED, cpu_vendor, list_kvm_tracepoints
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
from ..measure.perf_events import Event, check_required
from ..measure.record import PerfRecord
from ..measure.vectors import GUEST_VIEW_SCRIPT, GuestView
from ..measure.vmexits import breakdown_reasons
from ..model.plan import DEFAULT_ARMS, Arm, Plan, validate_arms
from ..model.result import Attempt, Result, RunRecord, WorkloadResult
from ..model.workloads import Workload, get_workloads
from ..util import command
from ..util.spawn import popen
from ..util.tmpdirs import tempdir
from ..vm.cpus import VCpu
from ..vm.machine import Machine
from . import traces
from .boot import Launched, ProvenGuest, come_up, launch, machine_spec
from .evidence import AttemptTrace, attempt_name, keep_perf_output, keep_trace_output

log = logging.getLogger(__name__)

#: The verdict of a workload whose raw runs are left to the caller to analyze.
UNANALYZED = "unanalyzed"

__all__ = ["COUNTED", "DEFAULT_ARMS", "Arm", "Finding", "Plan", "Result", "cpu_vendor",
           "reanalyze", "run_guest", "run_plan"]


# ---------------------------------------------------------------- one run


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


def perf_events(vendor: str, available: Sequence[str]) -> list[Event]:
    """The counted tracepoints plus kvm_exit broken down by the vendor's exit reasons."""
    check_required(available)
    events = [Event(name) for name in COUNTED]
    for reason, code in breakdown_reasons(vendor).items():
        events.append(Event("kvm:kvm_exit", f"exit_reason == {code}", f"kvm_exit[{reason}]"))
    return events


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


# ---------------------------------------------------------------- the A/B


@dataclass
class Outcome:
    """What one workload's runs gave, before analysis."""

    runs: list[RunRecord] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    #: Every attempt that gave no run (retried, error or finding): class and logs.
    attempts: list[Attempt] = field(default_factory=list)


def _run_with_retries(setup: Setup, arm: Arm, workload: Workload, events: Sequence[Event], reps: Sequence[int],
                      retries: int, outcome: Outcome, measured: Measured | None = None,
                      first: tuple[AttemptTrace, PveoiError] | None = None) -> None:
    """One guest's reps of ``arm``: a finding is recorded and not retried; infrastructure is retried on a
    fresh guest, for the reps not yet measured, per the one policy (:func:`e2e.errors.retryable`); config
    and capability errors stop the A/B. Every attempt that gave no run is recorded with its class and its
    logs (:class:`e2e.model.result.Attempt`), under the first rep it did not measure.

    :param measured: told of each rep's run as it is added to ``outcome.runs``.
    :param first: the first attempt, already made (one guest of a round booted with others,
        :func:`_run_round`) and failed so: its trace and error; ``reps`` are the reps it left.
    """
    refused: str | None = None  # the last attempt's launch failure
    todo = list(reps)

    def keep(record: RunRecord) -> None:
        outcome.runs.append(record)
        todo.remove(record.rep)
        if measured is not None:
            measured(record)

    for attempt in range(1, retries + 2):
        failure: PveoiError | None
        if attempt == 1 and first is not None:
            trace, failure = first
        else:
            trace = AttemptTrace(setup.artifacts)
            failure = _attempt(setup, arm, workload, events, tuple(todo), attempt, trace, keep)
        if failure is None:
            return
        err = failure
        rep = todo[0]  # the rep whose window failed (those before it in this guest are kept)
        where = f"{arm.name} rep {rep + 1}" + (f" (attempt {attempt})" if attempt > 1 else "")
        # QEMU exited at launch (not a QMP timeout, not a failed fork): its message, digits left out
        exited = isinstance(err, LaunchError) and err.exitcode is not None
        said = re.sub(r"\d+", "N", str(err)) if exited else None
        if said is not None and said == refused:  # refused the same way twice: the setup's, not chance
            outcome.attempts.append(trace.attempt(err, arm.name, rep, attempt, "error"))
            raise CapabilityError(f"QEMU refuses to start the guest, the same way twice: {err}",
                                  fix="check QEMU's installation and firmware (host_config/install-deps.sh; "
                                      "qemu-system-x86_64 -L), or the arm's settings") from err
        refused = said  # only twice in a row counts
        if err.kind is Kind.FINDING:
            outcome.findings.append(f"{where}: {err}")
            outcome.attempts.append(trace.attempt(err, arm.name, rep, attempt, "finding"))
            log.error("finding: %s", err)
            return
        if not retryable(err):
            raise err  # config or capability: the host cannot run the experiment, no verdict at all
        if attempt <= retries:
            outcome.retried.append(f"{where}: {err}")
            outcome.attempts.append(trace.attempt(err, arm.name, rep, attempt, "retried"))
            log.warning("run failed, retrying on a fresh guest: %s", err)
            continue
        outcome.errors.append(f"{where}: {err}")
        outcome.attempts.append(trace.attempt(err, arm.name, rep, attempt, "error"))
        log.error("run failed: %s", err)


def _attempt(setup: Setup, arm: Arm, workload: Workload, events: Sequence[Event], reps: tuple[int, ...],
             attempt: int, trace: AttemptTrace, measured: Measured) -> PveoiError | None:
    """One attempt of :func:`run_guest`: None if it measured every rep, else what stopped it."""
    try:
        run_guest(setup, arm, workload, events, reps, attempt, trace, measured)
    except PveoiError as err:
        return err
    return None


def _run_round(setup: Setup, guests: Sequence[tuple[Arm, tuple[int, ...]]], workload: Workload,
               events: Sequence[Event], retries: int, outcome: Outcome) -> None:
    """Guests of different arms booted at once (``Plan.overlap_boots``): every guest launched, then each
    awaited, then each measured in turn while the others sit booted and idle (so every arm's windows have
    the same neighbours), then all shut down. A guest that fails leaves the round at once; after the round,
    its reps not measured go through :func:`_run_with_retries` from its second attempt, alone."""
    failed: list[tuple[Arm, list[int], AttemptTrace, PveoiError]] = []
    with contextlib.ExitStack() as round_stack:
        live: list[tuple[Guest, list[int]]] = []
        for arm, reps in guests:
            todo = list(reps)

            def keep(record: RunRecord, todo: list[int] = todo) -> None:
                outcome.runs.append(record)
                todo.remove(record.rep)

            guest = Guest(setup, arm, workload, events, reps, 1, AttemptTrace(setup.artifacts), keep)
            round_stack.callback(guest.close)  # on anything but a PveoiError (a bug, Ctrl-C): every QEMU goes
            live.append((guest, todo))
        for step in ("launch", "come_up", "measure", "close"):  # a shutdown may fail too, like a step
            for guest, todo in list(live):
                try:
                    getattr(guest, step)()
                except PveoiError as err:
                    live.remove((guest, todo))
                    failed.append((guest.arm, todo, guest.trace, err))
                    try:
                        guest.close(err)
                    except PveoiError as also:  # its shutdown failed too: the first failure is the attempt's
                        log.warning("shutting down a failed guest failed too: %s", also)
    for arm, todo, trace, failure in failed:
        _run_with_retries(setup, arm, workload, events, todo, retries, outcome, first=(trace, failure))


#: Called after each guest of a workload with the guests done so far (positions of the plan's
#: order, counting those of an earlier part) and that workload's raw result so far.
Checkpoint = Callable[[int, Result], None]


def check_plan(plan: Plan) -> None:
    """:raises ConfigError: a plan no host can run (its arms, reps or reps per boot)."""
    validate_arms(plan.arms)
    if plan.runs < 1:
        raise ConfigError("--runs must be at least 1", fix="pass --runs 3")
    if plan.reps_per_boot < 1:
        raise ConfigError("--reps-per-boot must be at least 1", fix="pass --reps-per-boot 3, or leave it out")


def run_plan(plan: Plan, progress: Callable[[str], None] | None = None, analyzed: bool = True,
             checkpoint: Checkpoint | None = None) -> Result:
    """Run every workload of ``plan`` on this (KVM) host: the typed result.

    Runs that fail on infrastructure are retried, then make that workload's verdict
    ``error``; a finding makes it ``fail``; a host that cannot count (perf missing or
    denied, tracepoints missing) raises: there is no verdict at all.

    :raises ConfigError: a bad plan.
    :raises CapabilityError: the host cannot measure.
    """
    from ..build.image import load_image

    check_plan(plan)
    workloads = get_workloads(list(plan.workloads))
    vendor = cpu_vendor()
    events = perf_events(vendor, list_kvm_tracepoints())
    img = load_image(plan.image)
    setup = Setup(kernel=plan.kernel, initrd=img.initrd, private_key=img.identity.private_key,
                  host_key_line=img.host_key_line, artifacts=plan.logs, memory_mb=plan.memory_mb,
                  boot_timeout=plan.boot_timeout, defer_trace=not analyzed)
    return run_workloads(setup, plan, workloads, events, vendor, progress, analyzed, checkpoint)


def run_workloads(setup: Setup, plan: Plan, workloads: Sequence[Workload], events: Sequence[Event], vendor: str,
                  progress: Callable[[str], None] | None = None, analyzed: bool = True,
                  checkpoint: Checkpoint | None = None) -> Result:
    """The A/B loop of :func:`run_plan` over given workload objects on a given setup (a test's own
    workload or accelerator): interleaved runs, retries by the one policy, analysis.

    :param analyzed: draw conclusions here; False leaves each workload's verdict ``unanalyzed``
        with only its runs, findings, errors and retries, for a caller that analyzes the raw runs
        itself (the virtual host's inner runner: its Python is about 15x slower, and the outer
        pveoi analyzes all parts together anyway).
    :param checkpoint: told after each guest what is measured so far (the inner runner keeps it, so a
        virtual host that dies costs the guest it was running, not the part).
    """
    say = progress or (lambda msg: log.info("%s", msg))
    if analyzed:
        # Imported here, not at the top: the analysis needs numpy and scipy, whose import costs the
        # virtual host's emulated CPU 4-8 s, and the inner runner there never analyzes.
        from ..analysis.compare import analyze, conclude, load_thresholds
        from ..analysis.recurring import recurring_failures

        thresholds = {w.name: load_thresholds(w.name, plan.thresholds) for w in workloads}
    setup.artifacts.mkdir(parents=True, exist_ok=True)
    runs: dict[str, tuple[RunRecord, ...]] = {}
    results: dict[str, WorkloadResult] = {}
    runner = runner_info(vendor)
    for workload in workloads:
        order = plan.order()
        n_guests = len(plan.boots())
        say(f"workload {workload.name}: {workload.description}; "
            + (f"{len(order)} guests" if n_guests == len(order) else f"{len(order)} reps in {n_guests} guests"))
        outcome = Outcome()
        if plan.start:
            say(f"workload {workload.name}: resuming after the {plan.start} guests measured before")
        done = 0  # reps of the plan's order up to the end of the last guest
        told = functools.partial(_checkpoint, checkpoint, plan, runner, events, workload, outcome)
        for round_ in plan.rounds():
            guests: list[tuple[Arm, tuple[int, ...], int, tuple[int, ...]]] = []
            for arm, reps in round_:
                first, done = done + 1, done + len(reps)
                todo = tuple(rep for i, rep in enumerate(reps, first) if i > plan.start)
                if todo:
                    guests.append((arm, reps, first, todo))
            if plan.overlap_boots and len(guests) > 1:
                say(f"[{workload.name} {guests[0][2]}/{len(order)}] arms "
                    f"{', '.join(arm.name for arm, *_ in guests)} booted at once: boot + workload")
                # Checkpointed after the round only: its guests' reps are measured out of the plan's order.
                _run_round(setup, [(arm, todo) for arm, _, _, todo in guests], workload, events, plan.retries,
                           outcome)
                told(done)
                continue
            for arm, reps, first, todo in guests:
                where = (f"rep {todo[0] + 1}" if len(todo) == 1
                         else f"reps {todo[0] + 1}-{todo[-1] + 1} in one guest")
                say(f"[{workload.name} {first + len(reps) - len(todo)}/{len(order)}] arm {arm.name}, {where}: "
                    "boot + workload")
                # Told after each window but the guest's last, then after the guest (an error counts its reps
                # done).
                _run_with_retries(setup, arm, workload, events, todo, plan.retries, outcome,
                                  functools.partial(_window_done, told, reps, first))
                told(first + len(reps) - 1)
        runs[workload.name] = tuple(outcome.runs)
        if analyzed:
            ran = {r.arm for r in outcome.runs}
            result = replace(analyze(workload, plan.arms, outcome.runs, thresholds[workload.name],
                                     [*outcome.findings, *recurring_failures(outcome.attempts, ran)],
                                     outcome.errors, outcome.retried),
                             attempts=tuple(outcome.attempts))
        else:
            result = _unanalyzed(workload, outcome)
        results[workload.name] = result
    if not analyzed:
        return _raw_result(plan, runner, events, results, runs)
    verdict, reason = conclude(results)
    return Result(verdict=verdict, reason=reason, runs_per_arm=plan.runs, plan=plan,
                  arms={a.name: a for a in plan.arms}, runs=runs, workloads=results, runner=runner,
                  events=tuple({"name": e.name, "filter": e.filter, "label": e.label} for e in events))


def _checkpoint(checkpoint: Checkpoint | None, plan: Plan, runner: Mapping[str, Any], events: Sequence[Event],
                workload: Workload, outcome: Outcome, position: int) -> None:
    """Tell ``checkpoint`` (if any) that the plan's order is measured up to ``position``."""
    if checkpoint is not None:
        checkpoint(position, _raw_result(plan, runner, events, {workload.name: _unanalyzed(workload, outcome)},
                                         {workload.name: tuple(outcome.runs)}))


def _window_done(told: Callable[[int], None], reps: tuple[int, ...], first: int, record: RunRecord) -> None:
    """A guest of ``reps`` (the first at order position ``first``) measured ``record``'s rep: a checkpoint
    unless it was the guest's last (its checkpoint comes after the guest)."""
    if record.rep != reps[-1]:
        told(first + reps.index(record.rep))


def _unanalyzed(workload: Workload, outcome: Outcome) -> WorkloadResult:
    """A workload's runs as measured, its verdict left to the caller."""
    return WorkloadResult(workload.name, UNANALYZED, workload.description, findings=tuple(outcome.findings),
                          errors=tuple(outcome.errors), retried=tuple(outcome.retried),
                          attempts=tuple(outcome.attempts))


def _raw_result(plan: Plan, runner: Mapping[str, Any], events: Sequence[Event],
                results: Mapping[str, WorkloadResult], runs: Mapping[str, tuple[RunRecord, ...]]) -> Result:
    """The result of raw runs, for a caller that analyzes them itself."""
    return Result(verdict=UNANALYZED, reason="raw runs, to be analyzed by the caller", runs_per_arm=plan.runs,
                  plan=plan, arms={a.name: a for a in plan.arms}, runs=dict(runs), workloads=dict(results),
                  runner=dict(runner),
                  events=tuple({"name": e.name, "filter": e.filter, "label": e.label} for e in events))


def reanalyze(result: Result, plan: Plan, extra: Sequence[Result] = (), recurring: bool | None = None) -> Result:
    """The conclusions of ``result`` (and of ``extra`` results of the same plan, e.g. one per virtual
    host) drawn anew from their raw runs under ``plan``'s thresholds (pure; nothing boots).

    Findings, incomplete runs and retries the runs recorded are kept.

    :param recurring: judge a failure that repeats on every attempt as a finding
        (:mod:`e2e.analysis.recurring`); None: unless the result ran in a virtual host under trial settings
        (``host.virtual_host.trial``), whose own environment may be what fails every boot.
    """
    from ..analysis.compare import analyze, conclude, load_thresholds
    from ..analysis.recurring import recurring_failures

    if recurring is None:
        recurring = not ((result.host or {}).get("virtual_host") or {}).get("trial")
    parts = (result, *extra)
    results: dict[str, WorkloadResult] = {}
    runs: dict[str, tuple[RunRecord, ...]] = {}
    for name in plan.workloads:
        got = [p.workloads[name] for p in parts if name in p.workloads]
        if not got:
            continue
        wruns = tuple(r for p in parts for r in p.runs.get(name, ()))
        runs[name] = wruns
        results[name] = replace(
            analyze(get_workloads([name])[0], plan.arms, wruns, load_thresholds(name, plan.thresholds),
                    list(dict.fromkeys([*(f for g in got for f in g.findings),
                                        *(recurring_failures([a for g in got for a in g.attempts],
                                                             {r.arm for r in wruns}) if recurring else [])])),
                    [e for g in got for e in g.errors],
                    [r for g in got for r in g.retried]),
            attempts=tuple(a for g in got for a in g.attempts))
    verdict, reason = conclude(results)
    return result.with_(verdict=verdict, reason=reason, plan=plan, arms={a.name: a for a in plan.arms},
                        runs=runs, workloads=results, runs_per_arm=plan.runs)


def runner_info(vendor: str) -> dict[str, Any]:
    def qemu_version() -> str:
        try:
            out = command.run(["qemu-system-x86_64", "--version"], timeout=30, check=False).stdout
        except CommandError:
            return "unknown"
        return out.splitlines()[0] if out else "unknown"

    def cpu_model() -> str:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown"
        return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                    "unknown")

    return {"hostname": platform.node(), "kernel": platform.release(), "cpu_vendor": vendor, "cpu_model": cpu_model(),
            "cpus": os.cpu_count(), "qemu": qemu_version(), "python": platform.python_version()}

