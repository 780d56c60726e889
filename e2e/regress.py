"""
Regression detection over a history (``pveoi report --check``).

Per runner and workload, the latest run is compared with a baseline: the
previous ``N`` good (``pass``) runs of the same runner. A headline figure
(:data:`e2e.history.HEADLINES`) regressed when its drop is both

* larger than a relative threshold (default 5 % of the baseline median), and
* beyond the runs' own spread: a one-sided Mann-Whitney U test of the latest
  run's per-rep values against the baseline runs' pooled per-rep values
  gives ``p < alpha`` (default 0.05).

A fixed percentage alone would flag noise on a noisy runner and miss a real
drop on a quiet one; the test alone would flag tiny, irrelevant shifts once
the baseline is large. Also flagged: a verdict that turned from pass to fail,
from measurable to not measurable, and a workload that stopped being run;
on request, a runner whose newest result is too old (``max_age_hours``) and a
runner that never measured at all (``require_measurable``).

Everything here is pure: it reads a loaded :class:`~e2e.history.History`.
"""

from __future__ import annotations

import calendar
import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .history import HEADLINES, History, Record, Run, records

Kind = Literal["drop", "fail", "not-measurable", "missing", "stale", "never-measured"]


@dataclass(frozen=True)
class CheckSettings:
    """:param baseline: good runs in the baseline; :param rel: relative drop threshold; :param alpha: test
    level; :param max_age_hours: flag a runner whose newest result is older (an A/B that wrote nothing);
    :param require_measurable: flag a runner none of whose results measured PV EOI (all not measurable or
    error), which is otherwise only a note (a CI runner that can never measure must not pass silently)."""

    baseline: int = 5
    rel: float = 0.05
    alpha: float = 0.05
    max_age_hours: float | None = None
    require_measurable: bool = False
    now: float | None = None  # epoch seconds (default: the clock)


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

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "runner", "workload", "message", "since", "metric",
                                               "before", "after", "p_value")}


@dataclass
class GroupStatus:
    """The check's view of one runner and workload (also what the reports show)."""

    runner: str
    workload: str
    latest: Record | None
    baseline: list[Record] = field(default_factory=list)
    band: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # key: (low, median, high)
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckResult:
    findings: list[Finding]
    groups: list[GroupStatus]

    @property
    def exit_code(self) -> int:
        return 1 if self.findings else 0


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


def _streak_start(recs: Sequence[Record], key: str, line: float) -> int:
    """Index of the first run of the contiguous tail whose ``key`` is below ``line``."""
    i = len(recs) - 1
    while i > 0:
        prev = recs[i - 1].value.get(key)
        if prev is None or not prev < line:
            break
        i -= 1
    return i


def _good(recs: Sequence[Record], key: str, mode: str) -> list[Record]:
    """The runs a baseline may use: passes with the figure, reached the same way (direct/virtual)."""
    return [r for r in recs if r.verdict == "pass" and r.value.get(key) is not None and r.run.mode == mode]


def _drop(group: GroupStatus, recs: list[Record], key: str, settings: CheckSettings) -> Finding | None:
    latest = recs[-1]
    if latest.verdict not in ("pass", "fail"):  # "error"/"not-measurable" figures are not a measurement
        return None
    after = latest.value.get(key)
    good = _good(recs[:-1], key, latest.run.mode)
    base = good[-settings.baseline:]
    if after is None or not base:
        return None
    base_median = _median([v for r in base for v in r.samples[key]] or [r.value[key] for r in base])  # type: ignore[misc]
    line = base_median - settings.rel * abs(base_median)
    if not after < line:
        return None
    # A sustained drop: date it from its first run, and keep those runs out of the baseline.
    start = _streak_start(recs, key, line)
    base = _good(recs[:start], key, latest.run.mode)[-settings.baseline:]
    if not base:
        return None
    pooled = [v for r in base for v in r.samples[key]]
    before = _median(pooled) if pooled else _median([r.value[key] for r in base])  # type: ignore[misc]
    if not after < before - settings.rel * abs(before):
        return None
    label = HEADLINES[key][0]
    mine = latest.samples[key]
    p = one_sided_p(mine, pooled)
    if min_p(len(mine), len(pooled)) >= settings.alpha:
        # Too few values for the test to ever reach alpha (e.g. --runs 1): require instead that
        # every rep lies below every baseline rep, i.e. beyond the baseline's whole spread.
        if not (mine and pooled and max(mine) < min(pooled)):
            group.notes.append(f"{label} {before:.3f} -> {after:.3f}: too few reps ({len(mine)} vs {len(pooled)}) "
                               "for a test, and not below the whole baseline; not flagged")
            return None
        how = f"too few reps for a test; all {len(mine)} below all {len(pooled)} baseline reps"
    elif p >= settings.alpha:
        group.notes.append(f"{label} {before:.3f} -> {after:.3f} is beyond the {settings.rel:.0%} threshold "
                           f"but within the runs' spread (p={p:.3f} >= {settings.alpha}); not flagged")
        return None
    else:
        how = f"one-sided Mann-Whitney p={p:.4f}, {len(mine)} reps vs {len(pooled)}"
    since = recs[start].run.name
    rel = (after - before) / abs(before) if before else math.nan
    return Finding(
        "drop", group.runner, group.workload,
        f"{label} dropped {before:.3f} -> {after:.3f} ({rel:+.1%}; {how} from {len(base)} good run(s)) "
        f"since run {since}",
        since=since, metric=label, before=before, after=after, p_value=p)


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


def check(history: History, settings: CheckSettings | None = None) -> CheckResult:
    """Compare every runner's latest runs with their baselines (pure)."""
    settings = settings or CheckSettings()
    findings: list[Finding] = []
    groups: list[GroupStatus] = []
    for runner in history.runners():
        runs = history.of_runner(runner)
        latest_run = runs[-1]
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
            for key in HEADLINES:
                pooled = [v for r in group.baseline for v in r.samples[key]]
                if pooled:
                    group.band[key] = (min(pooled), _median(pooled), max(pooled))
            if len(recs) == 1:
                group.notes.append("first run of this workload on this runner: nothing to compare with")
            verdict = _verdict_change(group, recs)
            if verdict:
                findings.append(verdict)
            for key in HEADLINES:
                drop = _drop(group, recs, key, settings)
                if drop:
                    findings.append(drop)
    return CheckResult(findings, groups)


def format_findings(result: CheckResult) -> str:
    """What ``--check`` prints: each regression on one line, then a summary line."""
    lines = [f"REGRESSION [{f.runner}] {f.workload}: {f.message}" for f in result.findings]
    for g in result.groups:
        lines.extend(f"note [{g.runner}] {g.workload}: {n}" for n in g.notes)
    n_groups = len(result.groups)
    lines.append(f"check: {len(result.findings)} regression(s) in {n_groups} runner/workload group(s)"
                 if result.findings else f"check: clean ({n_groups} runner/workload group(s))")
    return "\n".join(lines)
