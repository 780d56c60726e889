"""
Regression detection over a history (``pveoi report --check``).

Per runner and workload, the latest run is compared with a baseline: the
previous ``N`` good (``pass``) runs of the same runner reached the same way
(direct or virtual). A headline figure (:data:`e2e.analysis.history.HEADLINES`)
regressed when the latest run's mean over its reps is below the baseline's
median (over the baseline runs' pooled reps) by more than that figure's
**detection floor** on this runner, *and* a one-sided Mann-Whitney U test of
the latest reps against the baseline reps gives ``p < alpha``: the rule of
:mod:`e2e.analysis.droprule`.

Also flagged: a verdict that turned from pass to fail, from measurable to not
measurable (to ``error``, the infrastructure's: a warning on its first night, a
regression on the second in a row), and a workload that stopped being run; on request, a runner whose
newest result is too old (``max_age_hours``) and a runner that never measured
at all (``require_measurable``).

Everything here is pure: it reads a loaded :class:`~e2e.analysis.history.History`.
"""

from __future__ import annotations

import calendar
import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..host.conditions import unusual
from .droprule import CheckSettings, DropDecision, Floor, decide, detection_floor, median_of
from .history import HEADLINES, TIMING_REASONS, History, Record, Run, records

FlagKind = Literal["drop", "rise", "fail", "not-measurable", "missing", "stale", "never-measured"]
#: What a flag means for the night: a regression exits 1; a warning is shown first and exits 0.
Severity = Literal["regression", "warning"]
#: The figures that measure PV EOI itself (the workload's own interrupts, PV EOI taken when armed): a
#: drop of one of them is a regression on its first night, unless it is the own figure's and the trace
#: explains it by timing alone (``_timing_alone``: a warning that night). The headline and the kvm_exit
#: reduction also move with how busy the runner was (the tick's share, IRR pending): a drop of those
#: alone, on one night, while the own figures held, is a warning; on a second night in a row it is a
#: regression.
OWN_FIGURES = ("own_saved", "pv_taken")
#: EOIs with no vector in service per injected interrupt (a double EOI) above the baseline's highest by
#: more than this is a regression (a clean guest has none; one double EOI in 100 is 0.01).
NO_VECTOR_TOLERANCE = 0.002
#: EOIs trapped for reasons other than timing per injected interrupt above the baseline's highest by more
#: than this keep an own-figure drop a regression on its first night (a clean night's are 0-0.1 %; a guest
#: that skips PV EOI once in 100 adds 1 %).
UNTIMED_TOLERANCE = 0.002


@dataclass(frozen=True)
class Flag:
    """One flag of the check (a regression or a warning): what, where, by how much, since which run."""

    kind: FlagKind
    runner: str
    workload: str
    message: str
    since: str | None = None
    metric: str | None = None
    before: float | None = None
    after: float | None = None
    p_value: float | None = None
    floor: float | None = None  # the detection floor the drop exceeded (absolute, the figure's units)
    severity: Severity = "regression"

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "runner", "workload", "message", "since", "metric",
                                               "before", "after", "p_value", "floor", "severity")}


@dataclass
class GroupStatus:
    """The check's view of one runner and workload (also what the reports show)."""

    runner: str
    workload: str
    latest: Record | None
    baseline: list[Record] = field(default_factory=list)
    band: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # key: (low, median, high)
    floors: dict[str, Floor] = field(default_factory=dict)  # key: the figure's detection floor
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckResult:
    flags: list[Flag]
    groups: list[GroupStatus]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    @property
    def regressions(self) -> list[Flag]:
        return [f for f in self.flags if f.severity == "regression"]

    @property
    def warnings(self) -> list[Flag]:
        return [f for f in self.flags if f.severity == "warning"]


def _values(rec: Record, key: str) -> list[float]:
    """A record's per-rep values of ``key`` (its headline value alone for a document without reps)."""
    if rec.samples.get(key):
        return list(rec.samples[key])
    value = rec.value.get(key)
    return [value] if value is not None else []


def _pooled(recs: Sequence[Record], key: str) -> list[float]:
    return [v for r in recs for v in _values(r, key)]


def _streak_start(recs: Sequence[Record], key: str, line: float) -> int:
    """Index of the first run of the contiguous tail whose mean of ``key`` is below ``line``."""
    i = len(recs) - 1
    while i > 0:
        prev = _values(recs[i - 1], key)
        if not prev or not statistics.fmean(prev) < line:
            break
        i -= 1
    return i


def _good(recs: Sequence[Record], key: str, mode: str) -> list[Record]:
    """The runs a baseline may use: passes with the figure, reached the same way (direct/virtual)."""
    return [r for r in recs if r.verdict == "pass" and r.value.get(key) is not None and r.run.mode == mode]


def _decide(recs: Sequence[Record], mine: Sequence[float], key: str, mode: str,
            settings: CheckSettings) -> DropDecision | None:
    """:func:`decide` for ``mine`` against the good runs among ``recs`` (None without any)."""
    good = _good(recs, key, mode)
    base, spread = good[-settings.baseline:], good[-max(settings.spread_runs, settings.baseline):]
    if not base:
        return None
    return decide(mine, _pooled(base, key), _pooled(spread, key), settings, len(spread))


def _drop(group: GroupStatus, recs: list[Record], key: str, settings: CheckSettings) -> Flag | None:
    latest = recs[-1]
    if latest.verdict not in ("pass", "fail"):  # "error"/"not-measurable" figures are not a measurement
        return None
    mine = _values(latest, key)
    first = _decide(recs[:-1], mine, key, latest.run.mode, settings) if mine else None
    if first is None:
        return None
    group.floors[key] = first.floor
    if not first.drop > first.floor.threshold:
        return None
    # A sustained drop: date it from its first run, and keep those runs out of the baseline.
    start = _streak_start(recs, key, first.before - first.floor.threshold)
    decision = _decide(recs[:start], mine, key, latest.run.mode, settings)
    if decision is None:
        return None
    group.floors[key] = decision.floor
    label = HEADLINES[key][0]
    if not decision.flagged:
        if decision.drop > decision.floor.threshold:
            group.notes.append(f"{label} {decision.before:.3f} -> {decision.after:.3f}: {decision.how}")
        return None
    since = recs[start].run.name
    before, after = decision.before, decision.after
    rel = (after - before) / abs(before) if before else math.nan
    n_base = len(_good(recs[:start], key, latest.run.mode)[-settings.baseline:])
    return Flag(
        "drop", group.runner, group.workload,
        f"{label} dropped {before:.3f} -> {after:.3f} ({rel:+.1%}; detection floor {decision.floor.threshold:.4f} "
        f"({decision.floor.relative:.2%}); {decision.how} from {n_base} good run(s)) since run {since}",
        since=since, metric=label, before=before, after=after, p_value=decision.p_value,
        floor=decision.floor.threshold)


def _verdict_change(group: GroupStatus, recs: list[Record], settings: CheckSettings) -> Flag | None:
    latest = recs[-1]
    if latest.verdict == "pass":
        return None
    bad = "fail" if latest.verdict == "fail" else "not-measurable"
    i = len(recs) - 1
    while i > 0 and recs[i - 1].verdict == latest.verdict:
        i -= 1
    since = recs[i].run.name
    why = "; ".join(latest.reasons[:2])
    if bad == "fail":
        was = "turned from pass to fail" if i > 0 and recs[i - 1].verdict == "pass" else "fails"
        return Flag("fail", group.runner, group.workload, f"verdict {was} since run {since}: {why}", since=since)
    if any(r.measurable for r in recs[:i]):
        nights = len(recs) - i
        flag = Flag("not-measurable", group.runner, group.workload,
                    f"verdict turned from measurable to {latest.verdict} since run {since}"
                    f"{f' ({nights} nights in a row)' if nights > 1 else ''}: {why}", since=since)
        if latest.verdict == "error" and nights == 1 and recs[i - 1].measurable and not settings.strict:
            # An error is the infrastructure's (a nested-TCG crash past its retries, a lost virtual
            # host): it says nothing of the kernel, and the next night measures again.
            return replace(flag, severity="warning", message=flag.message + (
                "; a warning: the A/B ended in error (infrastructure, no verdict: nothing was measured wrong); "
                "a second night in error is a regression"))
        return flag
    group.notes.append(f"never measurable on this runner ({latest.verdict}): {why}")
    return None


def _stale(runner: str, latest: Run, settings: CheckSettings) -> Flag | None:
    if settings.max_age_hours is None:
        return None
    try:
        created = calendar.timegm(time.strptime(latest.created, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return Flag("stale", runner, "(all)", f"newest result {latest.name} has no readable time "
                       f"({latest.created!r})", since=latest.name)
    age = ((settings.now if settings.now is not None else time.time()) - created) / 3600
    if age <= settings.max_age_hours:
        return None
    return Flag("stale", runner, "(all)",
                   f"newest result is {age:.1f} h old (run {latest.name}), more than --max-age "
                   f"{settings.max_age_hours:g} h: the last A/B on this runner recorded nothing", since=latest.name)


def _never_measured(history: History, runner: str, runs: Sequence[Run], settings: CheckSettings) -> Flag | None:
    """With ``require_measurable``: a flag if no result of ``runner`` ever measured PV EOI."""
    if not settings.require_measurable:
        return None
    workloads = sorted({w for run in runs for w in run.workloads()})
    if any(rec.measurable for w in workloads for rec in records(history, runner, w)):
        return None
    tally = ", ".join(f"{n} {verdict}" for verdict, n in sorted(Counter(r.verdict for r in runs).items()))
    latest = runs[-1]
    why = str(latest.doc.get("reason") or "") or "; ".join(
        reason for w in workloads for rec in records(history, runner, w)[-1:] for reason in rec.reasons[:1])
    return Flag("never-measured", runner, "(all)",
                   f"none of its {len(runs)} result(s) measured PV EOI ({tally}); latest {latest.name}: "
                   f"{latest.verdict}{': ' + why if why else ''}", since=runs[0].name)


def _group_floor(recs: Sequence[Record], key: str, settings: CheckSettings) -> Floor | None:
    """The floor the check applies to the next value of ``key`` after ``recs[:-1]`` (for the reports:
    also for a latest run that measured nothing, with as many reps as the baseline's runs had)."""
    good = _good(recs[:-1], key, recs[-1].run.mode)
    base, spread = good[-settings.baseline:], good[-max(settings.spread_runs, settings.baseline):]
    if not base:
        return None
    n_latest = len(_values(recs[-1], key)) or round(statistics.median(len(_values(r, key)) for r in base))
    return detection_floor(_pooled(base, key), _pooled(spread, key), n_latest, settings, len(spread))


def check(history: History, settings: CheckSettings | None = None) -> CheckResult:
    """Compare every runner's latest runs with their baselines (pure)."""
    settings = settings or CheckSettings()
    flags: list[Flag] = []
    groups: list[GroupStatus] = []
    newest = {r.runner_id: r for r in history.runs}  # each machine's newest run, whatever its stack
    for runner in history.runners():
        runs = history.of_runner(runner)
        latest_run = runs[-1]
        if latest_run is newest[latest_run.runner_id]:  # a stack the runner left behind is not stale
            stale = _stale(runner, latest_run, settings)
            if stale:
                flags.append(stale)
            never = _never_measured(history, runner, runs, settings)
            if never:
                flags.append(never)
        seen = sorted({w for r in runs for w in r.workloads()})
        if not seen:
            groups.append(GroupStatus(runner, "(none)", None,
                                      notes=[f"no workload measured yet; latest: {latest_run.verdict}: "
                                             f"{latest_run.doc.get('reason', '')}"]))
        for workload in seen:
            recs = records(history, runner, workload)
            group = GroupStatus(runner, workload, recs[-1] if recs else None)
            groups.append(group)
            if recs[-1].run is not latest_run:
                flags.append(Flag(
                    "missing", runner, workload,
                    f"workload missing from the latest run {latest_run.name} (last run in {recs[-1].run.name})",
                    since=latest_run.name))
                continue
            group.baseline = [r for r in recs[:-1] if r.verdict == "pass" and r.run.mode == recs[-1].run.mode
                              ][-settings.baseline:]
            loaded = unusual(recs[-1].run.doc.get("runner", {}).get("conditions"),
                             [r.run.doc.get("runner", {}).get("conditions") or {} for r in recs[:-1]])
            if loaded:
                group.notes.append(f"the latest night ran far from this runner's usual conditions: {'; '.join(loaded)}")
            for key in HEADLINES:
                pooled = [v for r in group.baseline for v in r.samples[key]]
                if pooled:
                    group.band[key] = (min(pooled), median_of(pooled), max(pooled))
                floor = _group_floor(recs, key, settings)
                if floor is not None:
                    group.floors[key] = floor  # _drop refines it when the latest run dropped
            if len(recs) == 1:
                group.notes.append("first run of this workload on this runner: nothing to compare with")
            verdict = _verdict_change(group, recs, settings)
            if verdict:
                flags.append(verdict)
            drops = [d for d in (_drop(group, recs, key, settings) for key in HEADLINES) if d is not None]
            drops = [_with_timing(d, recs, group, drops) for d in drops]
            flags.extend(drops if settings.strict else _grade(drops, recs, group))
            rise = _no_vector_rise(group, recs)
            if rise is not None:
                flags.append(rise)
    flags.sort(key=lambda f: f.severity != "warning")  # warnings first: what the reader sees first
    return CheckResult(flags, groups)


def _grade(drops: list[Flag], recs: Sequence[Record], group: GroupStatus) -> list[Flag]:
    """Drops of the headline figures alone, on the latest night alone, while the figures that measure PV
    EOI itself were measured and held: warnings (a loaded night moves the headline). A drop of the
    workload's own figure on one night is a warning too when the trace explains it by timing alone
    (:func:`_timing_alone`). Everything else stays a regression."""
    own = {HEADLINES[k][0] for k in OWN_FIGURES}
    latest = recs[-1]
    if not drops:
        return drops
    if any(d.metric in own for d in drops):
        return _timing_alone(drops, recs, group)
    if any(latest.value.get(k) is None for k in OWN_FIGURES):  # no trace: nothing says PV EOI held
        return drops
    if any(d.since != latest.run.name for d in drops):  # down on an earlier night too: it stays down
        return drops
    note = (f"; a warning: only the headline moved, on one night, while {HEADLINES['own_saved'][0]} and "
            f"{HEADLINES['pv_taken'][0]} held; a second night like it is a regression")
    return [replace(d, severity="warning", message=d.message + note) for d in drops]


def _timing_alone(drops: list[Flag], recs: Sequence[Record], group: GroupStatus) -> list[Flag]:
    """Drops that include the workload's own figure, graded: warnings when they are the latest night's
    alone, PV EOI taken when armed was measured and did not drop, and EOIs trapped for any reason but
    timing did not rise above the baseline's highest by more than :data:`UNTIMED_TOLERANCE`. Then every
    extra trapped EOI is one KVM was right not to arm PV EOI for (another interrupt pending, an exit
    while the vector was in service), and how often that happens depends on how fast the runner ran
    (ipi's own figure follows its workload's speed). A guest that skips PV EOI, a host that stops arming
    it, a double EOI all trap for other reasons. A second night like it is a regression."""
    latest = recs[-1]
    pv_label = HEADLINES["pv_taken"][0]
    if (any(d.metric == pv_label for d in drops) or latest.value.get("pv_taken") is None
            or any(d.since != latest.run.name for d in drops)):
        return drops
    base_untimed = [r.untimed for r in group.baseline if r.untimed is not None]
    if latest.untimed is None or not base_untimed or latest.untimed > max(base_untimed) + UNTIMED_TOLERANCE:
        return drops
    base_timing = [r.timing for r in group.baseline if r.timing is not None]
    timing = (f"EOIs trapped for timing reasons ({', '.join(TIMING_REASONS)}) were {latest.timing:.2%} of injected "
              f"interrupts (baseline median {median_of(base_timing):.2%}), "
              if latest.timing is not None and base_timing else "")
    note = (f"; a warning: on one night, and the trace explains it by timing alone: {timing}all others stayed at "
            f"{latest.untimed:.2%} (baseline at most {max(base_untimed):.2%}) and {pv_label} held at "
            f"{latest.value['pv_taken']:.4f}; a second night like it is a regression")
    return [replace(d, severity="warning", message=d.message + note) for d in drops]


def _no_vector_rise(group: GroupStatus, recs: Sequence[Record]) -> Flag | None:
    """EOIs with no vector in service per injected interrupt above the baseline's highest (or above 0
    without one) by more than :data:`NO_VECTOR_TOLERANCE`: the guest wrote EOIs it had no interrupt for."""
    latest = recs[-1]
    if latest.no_vector is None or latest.verdict not in ("pass", "fail"):
        return None
    now = statistics.fmean(latest.no_vector)
    base = [v for r in group.baseline if r.no_vector for v in r.no_vector]
    ceiling = max(base, default=0.0)
    if now <= ceiling + NO_VECTOR_TOLERANCE:
        return None
    label = "EOIs with no vector in service per interrupt"
    return Flag("rise", group.runner, group.workload,
                   f"{label} rose {ceiling:.4f} -> {now:.4f} (more than {NO_VECTOR_TOLERANCE} above the baseline's "
                   f"highest): the guest wrote EOIs with no interrupt in service (a second EOI after a PV EOI?) "
                   f"since run {latest.run.name}", since=latest.run.name, metric=label, before=ceiling, after=now)


def _with_timing(drop: Flag, recs: Sequence[Record], group: GroupStatus, drops: Sequence[Flag]) -> Flag:
    """A headline drop, with what the per-event trace says of it: when PV EOI taken when armed did
    not drop while more EOIs trapped for timing reasons (:data:`e2e.analysis.history.TIMING_REASONS`) than in
    the baseline, the message says so, and whether the workload's own interrupts (EOI exits saved
    per workload interrupt) held. It stays a regression (a KVM change that adds exits while a
    vector is in service looks the same); the maintainer reads which it is."""
    pv_label, own_label = HEADLINES["pv_taken"][0], HEADLINES["own_saved"][0]
    latest = recs[-1]
    if (drop.metric in (pv_label, own_label) or any(d.metric == pv_label for d in drops)
            or latest.value.get("pv_taken") is None):
        return drop
    base = [r.timing for r in group.baseline if r.timing is not None]
    if latest.timing is None or not base or latest.timing <= median_of(base):
        return drop
    note = (f"; the trace: PV EOI taken when armed held at {latest.value['pv_taken']:.4f}, while EOIs trapped "
            f"for timing reasons ({', '.join(TIMING_REASONS)}) rose from {median_of(base):.2%} to "
            f"{latest.timing:.2%} of injected interrupts")
    # The own figure as the drop rule sees it: baseline median of pooled reps, the latest reps' mean,
    # and "held" only within its floor (not merely "not flagged").
    own_base, own_now = _pooled(group.baseline, "own_saved"), _values(latest, "own_saved")
    floor = group.floors.get("own_saved")
    if own_base and own_now and floor is not None and not any(d.metric == own_label for d in drops):
        before, after = median_of(own_base), statistics.fmean(own_now)
        if before - after <= floor.threshold:
            note += (f", and the workload's own interrupts held ({own_label} {before:.3f} -> {after:.3f}, "
                     f"within its floor {floor.threshold:.4f})")
    note += ": PV EOI works as armed; a slower or busier runner explains this unless it persists"
    return replace(drop, message=drop.message + note)


def format_flags(result: CheckResult) -> str:
    """What ``--check`` prints: each warning, then each regression, on one line; then a summary line."""
    lines = [f"{'WARNING' if f.severity == 'warning' else 'REGRESSION'} [{f.runner}] {f.workload}: {f.message}"
             for f in result.flags]
    for g in result.groups:
        lines.extend(f"note [{g.runner}] {g.workload}: {n}" for n in g.notes)
    lines.extend(format_floors(result))
    n_groups = len(result.groups)
    n_reg, n_warn = len(result.regressions), len(result.warnings)
    warned = f", {n_warn} warning(s) (exit 0)" if n_warn else ""
    lines.append(f"check: {n_reg} regression(s){warned} in {n_groups} runner/workload group(s)" if n_reg
                 else f"check: clean{warned} ({n_groups} runner/workload group(s))")
    return "\n".join(lines)


def format_floors(result: CheckResult) -> list[str]:
    """One line per runner, workload and headline figure: its detection floor (what ``--check``
    prints and the Markdown report lists)."""
    return [f"floor [{g.runner}] {g.workload}: {HEADLINES[key][0]} {floor.describe()}"
            for g in result.groups for key, floor in g.floors.items()]
