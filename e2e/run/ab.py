"""
The A/B measurement (each guest's own: :mod:`e2e.run.guest`): boot a fresh guest per arm
and rep (interleaved; or one per group of reps, ``Plan.reps_per_boot``, and a round's guests at once,
``Plan.overlap_boots``), count ``kvm:*`` tracepoints with perf on that QEMU's
vCPU threads for exactly each workload window, read the guest's side, and decide
a verdict.

This module is the "direct" path: it runs on a KVM host. Through the virtual
KVM host the very same code runs inside L1 (see :mod:`e2e.vm.vhost`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import (
    CapabilityError,
    CommandError,
    ConfigError,
    Finding,
    Kind,
    LaunchError,
    PveoiError,
    retryable,
)
from ..host.hostfacts import COUNTED, cpu_vendor, list_kvm_tracepoints
from ..measure.perf_events import Event, check_required
from ..measure.vmexits import breakdown_reasons
from ..model.plan import DEFAULT_ARMS, Arm, Plan, validate_arms
from ..model.result import Attempt, Result, RunRecord, WorkloadResult
from ..model.workloads import Workload, get_workloads
from ..util import command
from .evidence import AttemptTrace
from .guest import Guest, Measured, Setup, run_guest

log = logging.getLogger(__name__)

#: The verdict of a workload whose raw runs are left to the caller to analyze.
UNANALYZED = "unanalyzed"

__all__ = ["COUNTED", "DEFAULT_ARMS", "Arm", "Finding", "Plan", "Result", "Setup",
           "cpu_vendor", "reanalyze", "run_guest", "run_plan"]


# ---------------------------------------------------------------- one run


def perf_events(vendor: str, available: Sequence[str]) -> list[Event]:
    """The counted tracepoints plus kvm_exit broken down by the vendor's exit reasons."""
    check_required(available)
    events = [Event(name) for name in COUNTED]
    for reason, code in breakdown_reasons(vendor).items():
        events.append(Event("kvm:kvm_exit", f"exit_reason == {code}", f"kvm_exit[{reason}]"))
    return events


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

