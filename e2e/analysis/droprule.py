"""
The drop rule of ``pveoi report --check``, on bare per-rep values (pure): whether a latest run's
reps dropped below a baseline's (:func:`decide`), by more than the figure's detection floor
(:func:`detection_floor`) *and* by a one-sided Mann-Whitney U test (:func:`one_sided_p`); and the
check's settings (:class:`CheckSettings`).

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
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal


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
    strict: bool = False  # every flag a regression (the rule before warnings existed)


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


def median_of(values: Sequence[float]) -> float:
    """The median of ``values``; NaN for none."""
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
    med = median_of(values)
    mad = 1.4826 * median_of([abs(v - med) for v in values])
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
    center = median_of(baseline)
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
class DropDecision:
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
           settings: CheckSettings, spread_runs: int = 0) -> DropDecision:
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
        return DropDecision(False, before, after, p, floor, "within the detection floor")
    if min_p(len(latest), len(baseline)) >= settings.alpha:
        # Too few values for the test to ever reach alpha (e.g. --runs 1): require instead that
        # every rep lies below every baseline rep, i.e. beyond the baseline's whole spread.
        if max(latest) < min(baseline):
            return DropDecision(True, before, after, p, floor, f"too few reps for a test; all {len(latest)} below "
                            f"all {len(baseline)} baseline reps")
        return DropDecision(False, before, after, p, floor, f"too few reps ({len(latest)} vs {len(baseline)}) for a "
                        "test, and not below the whole baseline; not flagged")
    if p >= settings.alpha:
        return DropDecision(False, before, after, p, floor, f"beyond the detection floor {floor.threshold:.4f} but "
                        f"within the runs' spread (p={p:.3f} >= {settings.alpha}); not flagged")
    return DropDecision(True, before, after, p, floor,
                    f"one-sided Mann-Whitney p={p:.4f}, {len(latest)} reps vs {len(baseline)}")
