"""
A history: a directory of result documents, one JSON file per ``pveoi ab``
run (written atomically by :func:`e2e.report.results.emit`, named so runs from many
runners never collide). Merging the histories of several machines is copying
their files into one directory; every document says which runner made it.

This module loads a history (migrating old schemas, naming the files it
cannot read) and turns each document into per-workload records with the
figures a report and the regression check need: the verdict, the headline
figures with their intervals, and the per-rep values behind them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PveoiError, SchemaError
from ..model.result import OWN, READABLE, SCHEMA, Result, migrate

log = logging.getLogger(__name__)

#: The headline figures, by key: (label, unit). All are "bigger is better".
HEADLINES = {
    "eoi_saved": ("EOI exits saved per interrupt", "per injected interrupt"),
    "exit_reduction": ("kvm_exit reduction", "fraction of the off arm's kvm_exit per interrupt"),
    "pv_taken": ("PV EOI taken when armed", "PV EOIs per EOI KVM armed (per-event trace, on arm)"),
    "own_saved": ("EOI exits saved per workload interrupt",
                  "per injected interrupt of the workload's own sources (per-event trace)"),
}


#: The history cannot be used (missing, empty, unreadable files, unknown schema); the same
#: error the one result reader raises for a document it cannot read.
HistoryError = SchemaError

__all__ = ["READABLE", "SCHEMA", "HistoryError", "migrate"]


@dataclass
class Run:
    """One result of a history: the typed result and its document as pveoi writes it today
    (whatever schema the file has, :class:`e2e.model.result.Result` read it)."""

    path: Path
    result: Result
    #: The group this run is compared within (:func:`load_history`): its runner id, or where that
    #: runner measured more than one stack, the id and the stack.
    label: str | None = None

    @property
    def doc(self) -> dict[str, Any]:
        if self._doc is None:
            self._doc = self.result.to_json()
        return self._doc

    _doc: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def created(self) -> str:
        return str(self.doc.get("created", ""))

    @property
    def verdict(self) -> str:
        return str(self.doc.get("verdict", "unknown"))

    @property
    def runner(self) -> str:
        """The group this run is compared within: its runner, and its stack where the runner has several."""
        return self.label or self.runner_id

    @property
    def runner_id(self) -> str:
        """The runner (machine) that made this run."""
        runner = self.doc.get("runner", {})
        return str(runner.get("id") or runner.get("hostname") or "unknown")

    @property
    def stack(self) -> tuple[str | None, str | None, str | None]:
        """What a baseline must share besides the runner and mode: (guest kernel base, host kernel base,
        QEMU version); None where the result does not say (a run that stopped before its kernels)."""
        doc = self.doc
        guest = _base_of(doc.get("kernel") or {})
        vhost = (doc.get("host") or {}).get("virtual_host") or {}
        kernels = [m for m in (vhost.get("kernels") or {}).values() if isinstance(m, Mapping)]
        if kernels:
            host = _base_of(kernels[0])
        elif (doc.get("host") or {}).get("chosen") == "direct":
            host = _base_of({"release": (doc.get("runner") or {}).get("kernel", "")})
        else:
            host = None
        m = _QEMU_VERSION.search(str((doc.get("runner") or {}).get("qemu", "")))
        return guest, host, m.group(1) if m else None

    @property
    def mode(self) -> str:
        """How it was measured, which baselines match: how KVM was reached (``direct``, ``virtual``, or
        ``not-measurable``), and, where reps shared a guest's boot, how many per boot (their spread is
        not a fresh guest per rep's), and whether a round's guests booted at once."""
        chosen = str(self.doc.get("host", {}).get("chosen", "?"))
        plan = self.doc.get("plan") or {}
        per_boot = plan.get("reps_per_boot") or 1
        return (chosen + (f", {per_boot} reps per boot" if per_boot != 1 else "")
                + (", boots overlapped" if plan.get("overlap_boots") else ""))

    def workloads(self) -> list[str]:
        return sorted(self.doc.get("workloads", {}))

    def record(self, workload: str) -> Record | None:
        """This run's record of ``workload``; a run that measured nothing at all (e.g. "not
        measurable" before any guest booted) is that verdict for every workload its plan named (every
        workload, for a result without a plan)."""
        workloads = self.doc.get("workloads", {})
        w = workloads.get(workload)
        planned = (self.doc.get("plan") or {}).get("workloads")
        if w is None and not workloads and self.verdict != "pass" and (not planned or workload in planned):
            w = {"verdict": self.verdict, "reasons": [str(self.doc.get("reason", ""))],
                 "description": "this run measured nothing"}
        return None if w is None else Record.from_doc(self, workload, w)


@dataclass
class History:
    """A loaded history: its runs (oldest first) and the files it could not read."""

    root: Path
    runs: list[Run]
    problems: list[str] = field(default_factory=list)

    def runners(self) -> list[str]:
        return sorted({r.runner for r in self.runs})

    def of_runner(self, runner: str) -> list[Run]:
        return [r for r in self.runs if r.runner == runner]

    def require_clean(self) -> None:
        """:raises HistoryError: if any file could not be read (the first one named)."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise HistoryError(self.problems[0] + more, fix="repair or move the named file(s) out of the history")


def validate(run: Run) -> None:
    """Check the parts of a result a report reads have the right shape (and can be read).

    :raises HistoryError: naming the file and what is wrong.
    """
    doc = run.doc
    for key in ("runner", "host", "workloads", "arms"):
        if not isinstance(doc.get(key, {}), dict):
            raise HistoryError(f"{run.path}: {key!r} is not an object", fix="move the file out of the history")
    for name, w in doc.get("workloads", {}).items():
        if not isinstance(w, dict):
            raise HistoryError(f"{run.path}: workload {name!r} is not an object",
                               fix="move the file out of the history")
        try:
            run.record(name)
        except (TypeError, ValueError, AttributeError, KeyError) as err:
            raise HistoryError(f"{run.path}: workload {name!r} is malformed ({type(err).__name__}: {err})",
                               fix="move the file out of the history") from err


def result_files(root: Path) -> list[Path]:
    """The result files of a history: ``*.json`` below ``root``, no hidden (in-progress) files."""
    return sorted(p for p in root.rglob("*.json")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


_QEMU_VERSION = re.compile(r"version (\d+\.\d+(?:\.\d+)?)")
_RELEASE = re.compile(r"^(\d+)\.(\d+)")


def _base_of(manifest: Mapping[str, Any]) -> str | None:
    """A kernel's base as its manifest records it, else ``major.minor`` of its release."""
    if manifest.get("base"):
        return str(manifest["base"])
    m = _RELEASE.match(str(manifest.get("release") or ""))
    return f"{m.group(1)}.{m.group(2)}" if m else None


def stack_label(stack: tuple[str | None, str | None, str | None]) -> str:
    guest, host, qemu = stack
    return f"guest {guest or '?'}, host {host or '?'}, QEMU {qemu or '?'}"


def label_groups(runs: list[Run]) -> None:
    """Give each run (oldest first) its group: a runner's runs on one stack are compared with each
    other only (guest base, host base, QEMU version: like with like). A run that does not say part
    of its stack (it stopped early) takes that part from its runner's run before it. Where a runner
    measured one stack only, the group is the runner id, as it always was."""
    last: dict[str, tuple[str | None, str | None, str | None]] = {}
    stacks: dict[int, tuple[str | None, str | None, str | None]] = {}
    for i, run in enumerate(runs):
        got, before = run.stack, last.get(run.runner_id, (None, None, None))
        stack = (got[0] or before[0], got[1] or before[1], got[2] or before[2])
        stacks[i] = last[run.runner_id] = stack
    per_runner: dict[str, set[tuple[str | None, str | None, str | None]]] = {}
    for i, run in enumerate(runs):
        per_runner.setdefault(run.runner_id, set()).add(stacks[i])
    for i, run in enumerate(runs):
        run.label = (f"{run.runner_id} ({stack_label(stacks[i])})" if len(per_runner[run.runner_id]) > 1
                     else run.runner_id)


def load_history(root: Path) -> History:
    """Load every result below ``root``, oldest first.

    A file that is not JSON, not a result or of an unknown schema is skipped
    and named in :attr:`History.problems`.

    :raises HistoryError: ``root`` is missing or holds no readable result.
    """
    root = root.expanduser()
    if not root.is_dir():
        raise HistoryError(f"history {root} does not exist or is not a directory",
                           fix="pass the directory given to `pveoi ab --history`")
    runs: list[Run] = []
    problems: list[str] = []
    for path in result_files(root):
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.append(f"{path}: not a readable JSON result ({err})")
            continue
        if not isinstance(raw, dict) or "verdict" not in raw:
            problems.append(f"{path}: not a pveoi result (no verdict)")
            continue
        try:
            run = Run(path, Result.from_json(raw, str(path)))
            validate(run)
        except HistoryError as err:
            problems.append(f"{err.message}; fix: {err.fix}")
            continue
        runs.append(run)
    if not runs:
        detail = f": {problems[0]}" if problems else ""
        raise HistoryError(f"history {root} holds no readable pveoi result{detail}",
                           fix="run `pveoi ab --history DIR` first, or point --history at the right directory")
    for p in problems:
        log.warning("history: %s", p)
    runs.sort(key=lambda r: (r.created, r.name))
    label_groups(runs)
    return History(root, runs, problems)


# ---------------------------------------------------------------- per-workload records


def _per_rep(value: Callable[[Mapping[str, Any], Mapping[str, Any]], float],
             pairs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[float]:
    """``value(on_rep, off_rep)`` for each pair, leaving out reps whose counts cannot give one
    (the A/B's own analysis already reported those)."""
    out = []
    for on, off in pairs:
        try:
            v = value(on, off)
        except (PveoiError, ZeroDivisionError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def _saved(on: Mapping[str, Any], off: Mapping[str, Any]) -> float:
    """EOI exits saved per interrupt by one pair of reps: the headline's own formula (:mod:`e2e.analysis.stats`)."""
    from .stats import headline_counts, trapped_eoi_per_interrupt  # not at import: every `pveoi` loads this module

    return trapped_eoi_per_interrupt(headline_counts(off)) - trapped_eoi_per_interrupt(headline_counts(on))


def _exit_reduction(on: Mapping[str, Any], off: Mapping[str, Any]) -> float:
    from .stats import per_interrupt

    return 1.0 - per_interrupt(on, "kvm:kvm_exit") / per_interrupt(off, "kvm:kvm_exit")


TIMING_REASONS = ("IRR pending", "VM exit before the EOI")
"""Why KVM legitimately did not arm PV EOI for an interrupt, decided by when things happened
(another interrupt pending, an exit while the vector was in service): how often depends on how
fast the runner ran, not on PV EOI."""


def _trapped(runs: Iterable[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """Over the traced runs, in the marker windows, per injected interrupt: EOIs trapped for a timing
    reason (:data:`TIMING_REASONS`), and those trapped for any other (an armed EOI written natively, an
    EOI with no vector in service, one the trace cannot explain: 0 on a clean guest and host, whatever
    the load); (None, None) without a trace."""
    timing = other = injected = 0
    for r in runs:
        trace = r.get("trace")
        for v in (trace.get("vectors") or []) if isinstance(trace, Mapping) else []:
            injected += int(v.get("injected", 0))
            for reason, n in (v.get("reasons") or {}).items():
                if reason in TIMING_REASONS:
                    timing += int(n)
                else:
                    other += int(n)
    return (timing / injected, other / injected) if injected else (None, None)


def _no_vector(runs: Iterable[Mapping[str, Any]]) -> list[float] | None:
    """Per traced rep: EOIs the host saw with no vector in service, per injected interrupt, in the
    marker windows (a guest that writes the EOI register after a PV EOI too); None if none was traced."""
    out = []
    for r in runs:
        trace = r.get("trace")
        vectors = (trace.get("vectors") or []) if isinstance(trace, Mapping) else None
        if vectors is None:
            continue
        injected = sum(int(v.get("injected", 0)) for v in vectors)
        stray = sum(int(v.get("reasons", {}).get("no vector in service", 0)) for v in vectors)
        if injected:
            out.append(stray / injected)
    return out or None


def _taken(runs: Iterable[Mapping[str, Any]]) -> list[float]:
    """Per on rep, PV EOIs per armed EOI (:func:`e2e.measure.trace_figures.armed_taken`), where the run was traced."""
    from ..measure.trace_figures import armed_taken

    out = []
    for r in runs:
        trace = r.get("trace")
        value = armed_taken(trace) if isinstance(trace, Mapping) else None
        if value is not None:
            out.append(value)
    return out


def _sources(workload: str, w: Mapping[str, Any]) -> tuple[str, ...]:
    """The workload's own interrupts as its result recorded them (:data:`e2e.model.result.OWN`), else
    as pveoi declares them today (results before 2026-12-04 did not record them)."""
    from ..model.workloads import WORKLOADS

    recorded = ((w.get("metrics") or {}).get(OWN) or {}).get("sources")
    if isinstance(recorded, list) and recorded:
        return tuple(str(p) for p in recorded)
    known = WORKLOADS.get(workload)
    return known.sources if known else ()


def _own_trapped(run: Mapping[str, Any], sources: tuple[str, ...]) -> float | None:
    from ..measure.trace_figures import source_trapped

    trace = run.get("trace")
    return source_trapped(trace, sources) if isinstance(trace, Mapping) and sources else None


def _own_saved(on: Mapping[str, Any], off: Mapping[str, Any], sources: tuple[str, ...]) -> float:
    """EOI exits saved per workload interrupt by one pair of reps (NaN where either was not traced)."""
    a, b = _own_trapped(off, sources), _own_trapped(on, sources)
    return a - b if a is not None and b is not None else math.nan


def _number(value: Any) -> float | None:
    """A headline number from a document: a float, or None; anything else is malformed."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _interval(value: Any) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"expected an interval [low, high], got {value!r}")
    low, high = _number(value[0]), _number(value[1])
    return None if low is None or high is None else [low, high]


@dataclass
class Record:
    """One workload of one run: verdict, headline figures and per-rep values.

    ``samples[key]`` are per-rep values of headline ``key`` (reps paired by
    index across the arms): ``eoi_saved`` is the off rep's trapped EOIs per
    interrupt minus the on rep's; ``exit_reduction`` is
    ``1 - exits_on / exits_off`` per interrupt; ``pv_taken`` is the on rep's PV
    EOIs per armed EOI; ``own_saved`` is ``eoi_saved`` over the workload's own
    interrupts (:attr:`e2e.model.workloads.Workload.sources`), traced runs only.
    """

    run: Run
    workload: str
    verdict: str
    value: dict[str, float | None]
    ci: dict[str, list[float] | None]
    samples: dict[str, list[float]]
    reasons: list[str]
    timing: float | None = None
    """The PV arm's EOIs trapped for timing reasons per injected interrupt (:func:`_trapped`)."""
    no_vector: list[float] | None = None
    """Per traced on rep: EOIs with no vector in service per injected interrupt (:func:`_no_vector`;
    0 on a clean guest: an EOI written after a PV EOI, a double EOI); None without a trace."""
    untimed: float | None = None
    """The PV arm's EOIs trapped for any reason but timing per injected interrupt (:func:`_trapped`)."""

    @property
    def measurable(self) -> bool:
        return self.verdict in ("pass", "fail") and self.value.get("eoi_saved") is not None

    @classmethod
    def from_doc(cls, run: Run, workload: str, w: Mapping[str, Any]) -> Record:
        """:raises TypeError, ValueError, AttributeError, KeyError: on a malformed document."""
        head = w.get("eoi_exits_saved_per_interrupt") or {}
        exit_m = (w.get("metrics") or {}).get("kvm_exit") or {}
        value = {"eoi_saved": _number(head.get("value")), "exit_reduction": _number(exit_m.get("reduction"))}
        ci = {"eoi_saved": _interval(head.get("ci")), "exit_reduction": _interval(exit_m.get("reduction_ci"))}
        arms = run.doc.get("arms", {})
        on = {r["rep"]: r for r in arms.get(w.get("treatment", "on"), {}).get("runs", {}).get(workload, [])}
        off = {r["rep"]: r for r in arms.get(w.get("baseline", "off"), {}).get("runs", {}).get(workload, [])}
        pairs = [(on[rep], off[rep]) for rep in sorted(on.keys() & off.keys())]  # reps paired by number
        samples = {"eoi_saved": _per_rep(_saved, pairs), "exit_reduction": _per_rep(_exit_reduction, pairs),
                   "pv_taken": _taken(on[rep] for rep in sorted(on))}
        value["pv_taken"] = statistics.median(samples["pv_taken"]) if samples["pv_taken"] else None
        ci["pv_taken"] = ([min(samples["pv_taken"]), max(samples["pv_taken"])]
                          if len(samples["pv_taken"]) > 1 else None)
        sources = _sources(workload, w)
        samples["own_saved"] = _per_rep(lambda a, b: _own_saved(a, b, sources), pairs)
        own_m = (w.get("metrics") or {}).get(OWN) or {}
        if own_m:
            value["own_saved"], ci["own_saved"] = _number(own_m.get("diff")), _interval(own_m.get("diff_ci"))
        else:  # a result from before the figure: the headline's own formula over its traced runs
            fr_on = [x for x in (_own_trapped(r, sources) for r in on.values()) if x is not None]
            fr_off = [x for x in (_own_trapped(r, sources) for r in off.values()) if x is not None]
            ok = fr_on and fr_off and len(fr_on) == len(on) and len(fr_off) == len(off)
            value["own_saved"] = statistics.median(fr_off) - statistics.median(fr_on) if ok else None
            ci["own_saved"] = None
        if value["own_saved"] is None:  # as the analysis: a figure some runs lack judges nothing
            samples["own_saved"] = []
        timing, untimed = _trapped(on.values())
        return cls(run, workload, str(w.get("verdict", "unknown")), value, ci, samples,
                   list(w.get("reasons", [])), timing, _no_vector(on[rep] for rep in sorted(on)), untimed)


def records(history: History, runner: str, workload: str) -> list[Record]:
    """A runner's records of one workload, oldest first."""
    out = []
    for run in history.of_runner(runner):
        rec = run.record(workload)
        if rec is not None:
            out.append(rec)
    return out


def runner_id() -> str:
    """This machine's runner id: ``$PVEOI_RUNNER_ID`` (for CI fleets whose host names change), else the host name."""
    return os.environ.get("PVEOI_RUNNER_ID") or os.uname().nodename
