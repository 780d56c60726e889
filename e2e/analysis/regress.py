"""
Regression detection over a history (``pveoi report --check``).

Per runner and workload, the latest run is compared with a baseline: the
previous ``N`` good (``pass``) runs of the same runner reached the same way
(direct or virtual). A headline figure (:data:`e2e.analysis.history.HEADLINES`)
regressed when the latest run's mean over its reps is below the baseline's
median (over the baseline runs' pooled reps) by more than that figure's
**detection floor** on this runner, *and* a one-sided Mann-Whitney U test of
the latest reps against the baseline reps gives ``p < alpha``.

The detection floor comes from the figure's own run-to-run spread on this
runner (:func:`detection_floor`): ``k`` robust standard errors of the
difference, the robust SD of one rep being ``1.4826 * MAD`` of the pooled
per-rep values of the runner's last ``spread_runs`` good runs, and never less
than ``floor_rel`` of the baseline median nor ``floor_abs``. Until the runner
has ``min_spread_reps`` such values (3 runs of 3 reps), its spread is not
known, and the floor is the conservative relative ``rel`` (5 %). A fixed
percentage alone would flag noise on a noisy runner and miss a real drop on a
quiet one; the test alone would flag tiny, irrelevant shifts once the
baseline is large. docs/nightly.md ("Reports, history and nightly regression
checks") gives the rule's false-alarm and detection rates on synthetic nights
drawn from real per-rep spreads.

Also flagged: a verdict that turned from pass to fail, from measurable to not
measurable, and a workload that stopped being run; on request, a runner whose
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
from .history import HEADLINES, TIMING_REASONS, History, Record, Run, records

Kind = Literal["drop", "rise", "fail", "not-measurable", "missing", "stale", "never-measured"]
#: What a finding means for the night: a regression exits 1; a warning is shown first and exits 0.
Severity = Literal["regression", "warning"]
#: The figures that measure PV EOI itself (the workload's own interrupts, PV EOI taken when armed): a
#: drop of one of them is a regression on its first night. The headline and the kvm_exit reduction also
#: move with how busy the runner was (the tick's share, IRR pending): a drop of those alone, on one night,
#: while the own figures held, is a warning; on a second night in a row it is a regression.
OWN_FIGURES = ("own_saved", "pv_taken")
#: EOIs with no vector in service per injected interrupt (a double EOI) above the baseline's highest by
#: more than this is a regression (a clean guest has none; one double EOI in 100 is 0.01).
NO_VECTOR_TOLERANCE = 0.002


@dataclass(frozen=True)
class CheckSettings:
    """:param baseline: good runs in the baseline (its median and the test's pool);
    :param rel: the relative drop threshold while a runner's spread is not known yet (fewer than
        ``min_spread_reps`` per-rep values);
    :param alpha: level of the one-sided test;
    :param k: robust standard errors a drop must exceed once the spread is known;
    :param spread_runs: good runs whose pooled per-rep values give the spread (the baseline's and older);
    :param min_spread_reps: per-rep values needed before the spread is trusted;
    :param floor_rel: the smallest drop ever flagged, relative to the baseline median;
    :param floor_abs: the same in the figure's own units (for a figure near zero);
    :param max_age_hours: flag a runner whose newest result is older (an A/B that wrote nothing);
    :param require_measurable: flag a runner none of whose results measured PV EOI (all not measurable or
        error), which is otherwise only a note (a CI runner that can never measure must not pass silently)."""

    baseline: int = 5
    rel: float = 0.05
    alpha: float = 0.05
    k: float = 3.0
    spread_runs: int = 10
    min_spread_reps: int = 9
    floor_rel: float = 0.005
    floor_abs: float = 0.002
    max_age_hours: float | None = None
    require_measurable: bool = False
    now: float | None = None  # epoch seconds (default: the clock)
    strict: bool = False  # every finding a regression (the rule before warnings existed)


@dataclass(frozen=True)
class Finding:
    """One regression: what, where, by how much, since which run."""

    kind: Kind
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


@dataclass(frozen=True)
class Floor:
    """The detection floor of one headline figure on one runner: the smallest drop of the latest
    run's mean (below the baseline median) that ``--check`` flags, given the runner's spread.

    :param center: the baseline median.
    :param threshold: the floor, in the figure's units.
    :param spread: robust SD of one rep (``1.4826 * MAD``); None while the spread is not known.
    :param basis: ``spread`` (k standard errors), ``minimum`` (``floor_rel``/``floor_abs`` bind) or
        ``relative`` (too few values for a spread: ``rel``).
    :param n_latest: reps of the latest run it applies to; :param n_baseline: baseline reps;
    :param n_spread: per-rep values behind ``spread``, from ``spread_runs`` runs.
    """

    center: float
    threshold: float
    spread: float | None
    basis: Literal["spread", "minimum", "relative"]
    n_latest: int
    n_baseline: int
    n_spread: int
    spread_runs: int

    @property
    def relative(self) -> float:
        return self.threshold / abs(self.center) if self.center else math.inf

    def describe(self) -> str:
        head = f"flags a drop > {self.threshold:.4f} ({self.relative:.2%}) below {self.center:.4f}"
        if self.basis == "relative":
            return (f"{head}: the relative --threshold, as the runner's spread is not known yet "
                    f"({self.n_spread} per-rep value(s))")
        why = (f"k SE of the difference, spread {self.spread:.4f} per rep (robust SD of {self.n_spread} reps "
               f"of {self.spread_runs} run(s)), {self.n_latest} rep(s) vs {self.n_baseline}")
        return f"{head}: {why}" if self.basis == "spread" else f"{head}: the minimum floor ({why} gives less)"

    def to_json(self) -> dict[str, Any]:
        return {"center": self.center, "threshold": self.threshold, "relative": self.relative,
                "spread": self.spread, "basis": self.basis, "n_latest": self.n_latest,
                "n_baseline": self.n_baseline, "n_spread": self.n_spread, "spread_runs": self.spread_runs}


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
    findings: list[Finding]
    groups: list[GroupStatus]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "regression"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def one_sided_p(latest: Sequence[float], baseline: Sequence[float]) -> float:
    """p-value that ``latest`` is stochastically smaller than ``baseline`` (Mann-Whitney U).

    Exact when there are no ties; 1.0 when either side is empty.
    """
    if not latest or not baseline:
        return 1.0
    from scipy import stats as sps

    tied = len(set(latest) | set(baseline)) < len(latest) + len(baseline)
    res = sps.mannwhitneyu(list(latest), list(baseline), alternative="less",
                           method="asymptotic" if tied else "exact")
    return float(res.pvalue)


def min_p(n_latest: int, n_baseline: int) -> float:
    """The smallest p-value the exact one-sided test can give for these sample sizes."""
    if not n_latest or not n_baseline:
        return 1.0
    return 1.0 / math.comb(n_latest + n_baseline, n_latest)


def robust_sd(values: Sequence[float]) -> float:
    """A robust standard deviation of one rep: the plain SD of the values within 3.5 ``1.4826 * MAD``
    of their median (a wild rep is left out, as the MAD would; the rest are used as efficiently as
    an SD, where the MAD alone would need about 2.7 times as many reps for the same precision)."""
    med = _median(values)
    mad = 1.4826 * _median([abs(v - med) for v in values])
    kept = [v for v in values if abs(v - med) <= 3.5 * mad] if mad > 0 else list(values)
    return statistics.stdev(kept) if len(kept) >= 2 else mad


def detection_floor(baseline: Sequence[float], spread: Sequence[float], n_latest: int,
                    settings: CheckSettings, spread_runs: int = 0) -> Floor:
    """The smallest drop of a latest run's mean below ``median(baseline)`` that the check flags.

    With the robust SD ``s`` of one rep (:func:`robust_sd` of ``spread``), the difference between
    the mean of ``n`` latest reps and the median of ``m`` baseline reps has a standard error of
    about ``s * sqrt(1/n + pi/(2m))`` (the median's variance is pi/2 times the mean's); the floor
    is ``k`` of those, ``k`` widened as a Student t quantile with ``len(spread) - 1`` degrees of
    freedom (an SD from 9 reps may well be low, from 30 less so), and at least
    ``floor_rel * |median|`` and ``floor_abs``. With fewer than ``min_spread_reps`` values in
    ``spread`` it is ``rel * |median|``.

    :param baseline: the baseline's pooled per-rep values (non-empty).
    :param spread: the pooled per-rep values the spread is measured on (the baseline's and older).
    :param n_latest: reps in the latest run.
    :param spread_runs: how many runs ``spread`` came from (for the record).
    """
    center = _median(baseline)
    n_latest = max(1, n_latest)
    if len(spread) < max(2, settings.min_spread_reps):
        return Floor(center, settings.rel * abs(center), None, "relative", n_latest, len(baseline), len(spread),
                     spread_runs)
    from scipy import stats as sps

    sd = robust_sd(spread)
    k = float(sps.t.ppf(sps.norm.cdf(settings.k), len(spread) - 1))
    noise = k * sd * math.sqrt(1 / n_latest + math.pi / (2 * len(baseline)))
    minimum = max(settings.floor_rel * abs(center), settings.floor_abs)
    return Floor(center, max(noise, minimum), sd, "spread" if noise >= minimum else "minimum", n_latest,
                 len(baseline), len(spread), spread_runs)


@dataclass(frozen=True)
class Decision:
    """Whether a latest run's reps dropped below a baseline: the evidence either way.

    :param flagged: a regression; :param drop: ``median(baseline) - mean(latest)``;
    :param p_value: the one-sided Mann-Whitney p; :param how: the evidence (flagged) or why not.
    """

    flagged: bool
    before: float
    after: float
    p_value: float
    floor: Floor
    how: str

    @property
    def drop(self) -> float:
        return self.before - self.after


def decide(latest: Sequence[float], baseline: Sequence[float], spread: Sequence[float],
           settings: CheckSettings, spread_runs: int = 0) -> Decision:
    """The rule of :mod:`e2e.analysis.regress` on bare per-rep values (pure; what :func:`check` applies to
    every headline figure, and what the rate simulations of the unit tests call directly).

    :param latest: the latest run's per-rep values (non-empty).
    :param baseline: the baseline runs' pooled per-rep values (non-empty).
    :param spread: the per-rep values the spread is measured on.
    """
    floor = detection_floor(baseline, spread, len(latest), settings, spread_runs)
    after = statistics.fmean(latest)
    before = floor.center
    p = one_sided_p(latest, baseline)
    if not before - after > floor.threshold:
        return Decision(False, before, after, p, floor, "within the detection floor")
    if min_p(len(latest), len(baseline)) >= settings.alpha:
        # Too few values for the test to ever reach alpha (e.g. --runs 1): require instead that
        # every rep lies below every baseline rep, i.e. beyond the baseline's whole spread.
        if max(latest) < min(baseline):
            return Decision(True, before, after, p, floor, f"too few reps for a test; all {len(latest)} below "
                            f"all {len(baseline)} baseline reps")
        return Decision(False, before, after, p, floor, f"too few reps ({len(latest)} vs {len(baseline)}) for a "
                        "test, and not below the whole baseline; not flagged")
    if p >= settings.alpha:
        return Decision(False, before, after, p, floor, f"beyond the detection floor {floor.threshold:.4f} but "
                        f"within the runs' spread (p={p:.3f} >= {settings.alpha}); not flagged")
    return Decision(True, before, after, p, floor,
                    f"one-sided Mann-Whitney p={p:.4f}, {len(latest)} reps vs {len(baseline)}")


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
            settings: CheckSettings) -> Decision | None:
    """:func:`decide` for ``mine`` against the good runs among ``recs`` (None without any)."""
    good = _good(recs, key, mode)
    base, spread = good[-settings.baseline:], good[-max(settings.spread_runs, settings.baseline):]
    if not base:
        return None
    return decide(mine, _pooled(base, key), _pooled(spread, key), settings, len(spread))


def _drop(group: GroupStatus, recs: list[Record], key: str, settings: CheckSettings) -> Finding | None:
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
    return Finding(
        "drop", group.runner, group.workload,
        f"{label} dropped {before:.3f} -> {after:.3f} ({rel:+.1%}; detection floor {decision.floor.threshold:.4f} "
        f"({decision.floor.relative:.2%}); {decision.how} from {n_base} good run(s)) since run {since}",
        since=since, metric=label, before=before, after=after, p_value=decision.p_value,
        floor=decision.floor.threshold)


def _verdict_change(group: GroupStatus, recs: list[Record]) -> Finding | None:
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
        return Finding("fail", group.runner, group.workload, f"verdict {was} since run {since}: {why}", since=since)
    if any(r.measurable for r in recs[:i]):
        return Finding("not-measurable", group.runner, group.workload,
                       f"verdict turned from measurable to {latest.verdict} since run {since}: {why}", since=since)
    group.notes.append(f"never measurable on this runner ({latest.verdict}): {why}")
    return None


def _stale(runner: str, latest: Run, settings: CheckSettings) -> Finding | None:
    if settings.max_age_hours is None:
        return None
    try:
        created = calendar.timegm(time.strptime(latest.created, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return Finding("stale", runner, "(all)", f"newest result {latest.name} has no readable time "
                       f"({latest.created!r})", since=latest.name)
    age = ((settings.now if settings.now is not None else time.time()) - created) / 3600
    if age <= settings.max_age_hours:
        return None
    return Finding("stale", runner, "(all)",
                   f"newest result is {age:.1f} h old (run {latest.name}), more than --max-age "
                   f"{settings.max_age_hours:g} h: the last A/B on this runner recorded nothing", since=latest.name)


def _never_measured(history: History, runner: str, runs: Sequence[Run], settings: CheckSettings) -> Finding | None:
    """With ``require_measurable``: a finding if no result of ``runner`` ever measured PV EOI."""
    if not settings.require_measurable:
        return None
    workloads = sorted({w for run in runs for w in run.workloads()})
    if any(rec.measurable for w in workloads for rec in records(history, runner, w)):
        return None
    tally = ", ".join(f"{n} {verdict}" for verdict, n in sorted(Counter(r.verdict for r in runs).items()))
    latest = runs[-1]
    why = str(latest.doc.get("reason") or "") or "; ".join(
        reason for w in workloads for rec in records(history, runner, w)[-1:] for reason in rec.reasons[:1])
    return Finding("never-measured", runner, "(all)",
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
    findings: list[Finding] = []
    groups: list[GroupStatus] = []
    newest = {r.runner_id: r for r in history.runs}  # each machine's newest run, whatever its stack
    for runner in history.runners():
        runs = history.of_runner(runner)
        latest_run = runs[-1]
        if latest_run is newest[latest_run.runner_id]:  # a stack the runner left behind is not stale
            stale = _stale(runner, latest_run, settings)
            if stale:
                findings.append(stale)
            never = _never_measured(history, runner, runs, settings)
            if never:
                findings.append(never)
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
                findings.append(Finding(
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
                    group.band[key] = (min(pooled), _median(pooled), max(pooled))
                floor = _group_floor(recs, key, settings)
                if floor is not None:
                    group.floors[key] = floor  # _drop refines it when the latest run dropped
            if len(recs) == 1:
                group.notes.append("first run of this workload on this runner: nothing to compare with")
            verdict = _verdict_change(group, recs)
            if verdict:
                findings.append(verdict)
            drops = [d for d in (_drop(group, recs, key, settings) for key in HEADLINES) if d is not None]
            drops = [_with_timing(d, recs, group, drops) for d in drops]
            findings.extend(drops if settings.strict else _grade(drops, recs))
            rise = _no_vector_rise(group, recs)
            if rise is not None:
                findings.append(rise)
    findings.sort(key=lambda f: f.severity != "warning")  # warnings first: what the reader sees first
    return CheckResult(findings, groups)


def _grade(drops: list[Finding], recs: Sequence[Record]) -> list[Finding]:
    """Drops of the headline figures alone, on the latest night alone, while the figures that measure PV
    EOI itself were measured and held: warnings (a loaded night moves the headline); everything else
    stays a regression."""
    own = {HEADLINES[k][0] for k in OWN_FIGURES}
    latest = recs[-1]
    if not drops or any(d.metric in own for d in drops):
        return drops
    if any(latest.value.get(k) is None for k in OWN_FIGURES):  # no trace: nothing says PV EOI held
        return drops
    if any(d.since != latest.run.name for d in drops):  # down on an earlier night too: it stays down
        return drops
    note = (f"; a warning: only the headline moved, on one night, while {HEADLINES['own_saved'][0]} and "
            f"{HEADLINES['pv_taken'][0]} held; a second night like it is a regression")
    return [replace(d, severity="warning", message=d.message + note) for d in drops]


def _no_vector_rise(group: GroupStatus, recs: Sequence[Record]) -> Finding | None:
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
    return Finding("rise", group.runner, group.workload,
                   f"{label} rose {ceiling:.4f} -> {now:.4f} (more than {NO_VECTOR_TOLERANCE} above the baseline's "
                   f"highest): the guest wrote EOIs with no interrupt in service (a second EOI after a PV EOI?) "
                   f"since run {latest.run.name}", since=latest.run.name, metric=label, before=ceiling, after=now)


def _with_timing(drop: Finding, recs: Sequence[Record], group: GroupStatus, drops: Sequence[Finding]) -> Finding:
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
    if latest.timing is None or not base or latest.timing <= _median(base):
        return drop
    note = (f"; the trace: PV EOI taken when armed held at {latest.value['pv_taken']:.4f}, while EOIs trapped "
            f"for timing reasons ({', '.join(TIMING_REASONS)}) rose from {_median(base):.2%} to "
            f"{latest.timing:.2%} of injected interrupts")
    # The own figure as the drop rule sees it: baseline median of pooled reps, the latest reps' mean,
    # and "held" only within its floor (not merely "not flagged").
    own_base, own_now = _pooled(group.baseline, "own_saved"), _values(latest, "own_saved")
    floor = group.floors.get("own_saved")
    if own_base and own_now and floor is not None and not any(d.metric == own_label for d in drops):
        before, after = _median(own_base), statistics.fmean(own_now)
        if before - after <= floor.threshold:
            note += (f", and the workload's own interrupts held ({own_label} {before:.3f} -> {after:.3f}, "
                     f"within its floor {floor.threshold:.4f})")
    note += ": PV EOI works as armed; a slower or busier runner explains this unless it persists"
    return replace(drop, message=drop.message + note)


def format_findings(result: CheckResult) -> str:
    """What ``--check`` prints: each warning, then each regression, on one line; then a summary line."""
    lines = [f"{'WARNING' if f.severity == 'warning' else 'REGRESSION'} [{f.runner}] {f.workload}: {f.message}"
             for f in result.findings]
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
