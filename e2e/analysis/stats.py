"""
Statistics for the A/B (pure functions: per-run numbers in, numbers out).

Conventions: ``on`` is the PV EOI arm (treatment), ``off`` the baseline.
Effects are oriented so that a *saving* is positive:

* ``diff`` = median(off) - median(on), e.g. EOI exits saved per interrupt;
* ``reduction`` = 1 - median(on) / median(off), the relative saving.

Confidence intervals are percentile bootstraps that resample each arm
independently (the arms are separate boots; ``scipy.stats.bootstrap``); the
p-value is a two-sided permutation test on the difference of means
(``scipy.stats.permutation_test``), exact (every relabelling) when there are at
most ``n`` relabellings, e.g. 20 for 3 runs vs 3 runs. Every function is
deterministic for a given ``seed``.

With one run in an arm there is nothing to resample: CIs collapse to the
point and no p-value is given. A zero baseline median leaves the relative
reduction undefined (None), never a made-up number.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, Finding, MeasurementError

log = logging.getLogger(__name__)

#: A numpy-style statistic: ``stat(array, axis=k)`` reduces along axis k.
Statistic = Callable[..., Any]
Interval = tuple[float, float]
#: Per-run values: a sequence of numbers or a 1-D numpy array.
Values = Sequence[float] | npt.NDArray[np.float64]



def _array(values: Values, what: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise MeasurementError(f"no values for {what}", fix="complete at least one run per arm")
    if not np.all(np.isfinite(arr)):
        raise MeasurementError(f"non-finite values for {what}: {arr.tolist()}",
                               fix="a run with zero interrupts has no per-interrupt value; "
                                   "drop or repeat it")
    return arr


def _check(level: float, n: int) -> None:
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence level {level} is not in (0, 1)", fix="use e.g. 0.95")
    _check_n(n)


def _check_n(n: int) -> None:
    if n < 1:
        raise ConfigError(f"{n} resamples or permutations", fix="use e.g. 9999")


def _bootstrap(samples: Sequence[npt.NDArray[np.float64]], statistic: Callable[..., Any], level: float, n: int,
               seed: int) -> tuple[npt.NDArray[np.float64], Interval]:
    """``scipy.stats.bootstrap`` (percentile) of ``statistic(*samples, axis=-1)``, each sample
    resampled independently: (the bootstrap distribution, its interval).

    Thin wrapper for the degenerate case scipy refuses (a sample of one value): such a sample
    has nothing to resample and enters every resample as itself; when all samples are single
    values the distribution is the point itself.
    """
    from scipy.stats import bootstrap

    varying = [i for i, arr in enumerate(samples) if arr.size > 1]
    if not varying:
        point = float(statistic(*samples, axis=-1))
        return np.full(n, point), (point, point)

    def stat(*resampled: npt.NDArray[np.float64], axis: int = -1) -> Any:
        full = list(samples)
        for i, arr in zip(varying, resampled, strict=True):
            full[i] = arr
        return statistic(*full, axis=axis)

    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a ratio's resample dividing by zero: the caller decides
        res = bootstrap([samples[i] for i in varying], stat, n_resamples=n, confidence_level=level,
                        method="percentile", vectorized=True, axis=-1, rng=np.random.default_rng(seed))
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    return dist, (float(res.confidence_interval.low), float(res.confidence_interval.high))


def bootstrap_ci(values: Values, stat: Statistic = np.median, level: float = 0.95,
                 n: int = 9999, seed: int = 0) -> Interval:
    """Percentile bootstrap confidence interval of ``stat(values)`` (``scipy.stats.bootstrap``).

    :param values: the sample (at least one finite value).
    :param stat: a numpy-style statistic taking ``axis=`` (median, mean...).
    :param level: confidence level.
    :param n: bootstrap resamples.
    :param seed: RNG seed.
    :returns: ``(lo, hi)``; ``(x, x)`` for a single value.
    :raises MeasurementError: no values, or a non-finite one.
    :raises ConfigError: a bad level or n.
    """
    _check(level, n)
    arr = _array(values, "bootstrap_ci")
    return _bootstrap([arr], stat, level, n, seed)[1]


def diff_ci(on: Values, off: Values, stat: Statistic = np.median,
            level: float = 0.95, n: int = 9999, seed: int = 0) -> Interval:
    """Bootstrap CI of ``stat(off) - stat(on)``, resampling each arm independently.

    :param on: the PV EOI arm's values.
    :param off: the baseline arm's values.
    :param stat: numpy-style statistic (default median).
    :param level: confidence level.
    :param n: bootstrap resamples.
    :param seed: RNG seed.
    :returns: ``(lo, hi)``; the point itself when both arms have one value.
    :raises MeasurementError: an empty arm or a non-finite value.
    :raises ConfigError: a bad level or n.
    """
    _check(level, n)
    a, b = _array(on, "on"), _array(off, "off")

    def difference(x: Any, y: Any, axis: int = -1) -> Any:
        return stat(y, axis=axis) - stat(x, axis=axis)

    return _bootstrap([a, b], difference, level, n, seed)[1]


def ratio_reduction(on: Values, off: Values, level: float = 0.95,
                    n: int = 9999, seed: int = 0) -> tuple[float | None, Interval | None]:
    """Relative reduction ``1 - median(on) / median(off)`` and its bootstrap CI.

    :param on: the PV EOI arm's values.
    :param off: the baseline arm's values.
    :param level: confidence level.
    :param n: bootstrap resamples.
    :param seed: RNG seed.
    :returns: ``(reduction, (lo, hi))``. The reduction is None when
        median(off) is 0 (undefined); the CI is None then, and also when some
        resample of ``off`` has median 0 (the ratio is unbounded there).
    :raises MeasurementError: an empty arm or a non-finite value.
    :raises ConfigError: a bad level or n.
    """
    _check(level, n)
    a, b = _array(on, "on"), _array(off, "off")
    off_median = float(np.median(b))
    if off_median == 0.0:
        return None, None
    point = 1.0 - float(np.median(a)) / off_median

    def reduction(x: Any, y: Any, axis: int = -1) -> Any:
        return 1.0 - np.median(x, axis=axis) / np.median(y, axis=axis)

    dist, ci = _bootstrap([a, b], reduction, level, n, seed)
    if not np.all(np.isfinite(dist)):
        log.debug("some baseline resamples have median 0: no CI for the relative reduction")
        return point, None
    return point, ci


def permutation_pvalue(on: Values, off: Values, n: int = 9999,
                       seed: int = 0) -> float:
    """Two-sided permutation test p-value on the difference of means (``scipy.stats.permutation_test``).

    Exact (every way of labelling the pooled runs) when there are at most
    ``n`` labellings, else ``n`` random ones with the ``(1 + k) / (1 + n)``
    estimate. Ties with the observed difference count as at least as extreme.

    The statistic is ``|mean(off) - mean(on)|`` with ``alternative="greater"``
    (scipy's own two-sided p doubles the smaller tail, which differs for a skewed
    null distribution), counted in units of a tolerance of ``1e-9`` of the data's
    scale: scipy's tie tolerance is relative to the observed statistic, so without
    that, two labellings with equal differences could differ by rounding and a tie
    be missed.

    :param on: the PV EOI arm's values.
    :param off: the baseline arm's values.
    :param n: random permutations (and the exact-enumeration limit).
    :param seed: RNG seed.
    :returns: the p-value, in (0, 1].
    :raises MeasurementError: an empty arm or a non-finite value.
    :raises ConfigError: a bad n.
    """
    from scipy.stats import permutation_test

    _check_n(n)
    a, b = _array(on, "on"), _array(off, "off")
    tolerance = 1e-9 * max(1.0, float(np.abs(np.concatenate([a, b])).max()))

    def distance(x: Any, y: Any, axis: int = -1) -> Any:
        return np.round(np.abs(np.mean(y, axis=axis) - np.mean(x, axis=axis)) / tolerance)

    if min(a.size, b.size) == 1:  # scipy refuses a one-value sample: its labellings are the pooled values, few
        pooled = np.concatenate([a, b])
        one_first = a.size == 1
        stats_ = [distance(*((pooled[i:i + 1], np.delete(pooled, i)) if one_first
                             else (np.delete(pooled, i), pooled[i:i + 1]))) for i in range(pooled.size)]
        observed = distance(a, b)
        return int(np.count_nonzero(np.asarray(stats_) >= observed)) / pooled.size
    res = permutation_test((a, b), distance, permutation_type="independent", vectorized=True, n_resamples=n,
                           alternative="greater", rng=np.random.default_rng(seed))
    return float(res.pvalue)


@dataclass(frozen=True)
class MetricSummary:
    """One metric of the A/B, both arms, and the effect of PV EOI on it.

    :param name: the metric, e.g. ``"kvm_exit"``.
    :param unit: e.g. ``"per interrupt"``.
    :param on_median: median of the PV EOI arm; :param on_ci: its bootstrap CI.
    :param off_median: median of the baseline; :param off_ci: its bootstrap CI.
    :param reduction: ``1 - on_median / off_median`` (None if off_median is 0).
    :param reduction_ci: its CI (None when undefined).
    :param diff: ``off_median - on_median`` (positive: PV EOI saves).
    :param diff_ci: its bootstrap CI.
    :param p_value: permutation p-value on the mean difference (None when an
        arm has a single run).
    :param n_on: runs in the PV EOI arm; :param n_off: runs in the baseline.
    """

    name: str
    unit: str
    on_median: float
    on_ci: Interval
    off_median: float
    off_ci: Interval
    reduction: float | None
    reduction_ci: Interval | None
    diff: float
    diff_ci: Interval
    p_value: float | None
    n_on: int
    n_off: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (CIs as two-element lists, None kept)."""
        def pair(ci: Interval | None) -> list[float] | None:
            return [ci[0], ci[1]] if ci is not None else None

        return {
            "name": self.name, "unit": self.unit,
            "on_median": self.on_median, "on_ci": pair(self.on_ci),
            "off_median": self.off_median, "off_ci": pair(self.off_ci),
            "reduction": self.reduction, "reduction_ci": pair(self.reduction_ci),
            "diff": self.diff, "diff_ci": pair(self.diff_ci),
            "p_value": self.p_value, "n_on": self.n_on, "n_off": self.n_off,
        }


def summarize(name: str, on: Values, off: Values, unit: str = "per interrupt",
              level: float = 0.95, n: int = 9999, seed: int = 0) -> MetricSummary:
    """Summarize one metric over both arms.

    :param name: the metric's name.
    :param on: per-run values of the PV EOI arm.
    :param off: per-run values of the baseline arm.
    :param unit: the values' unit.
    :param level: confidence level of every CI.
    :param n: bootstrap resamples / permutations.
    :param seed: RNG seed.
    :returns: the summary.
    :raises MeasurementError: an empty arm or a non-finite value.
    :raises ConfigError: a bad level or n.
    """
    _check(level, n)
    a, b = _array(on, f"{name} (on)"), _array(off, f"{name} (off)")
    on_median, off_median = float(np.median(a)), float(np.median(b))
    reduction, reduction_ci = ratio_reduction(a, b, level, n, seed)
    p_value = permutation_pvalue(a, b, n, seed) if min(a.size, b.size) >= 2 else None
    return MetricSummary(
        name=name, unit=unit,
        on_median=on_median, on_ci=bootstrap_ci(a, np.median, level, n, seed),
        off_median=off_median, off_ci=bootstrap_ci(b, np.median, level, n, seed),
        reduction=reduction, reduction_ci=reduction_ci,
        diff=off_median - on_median, diff_ci=diff_ci(a, b, np.median, level, n, seed),
        p_value=p_value, n_on=int(a.size), n_off=int(b.size),
    )


#: Keys :func:`eoi_exits_saved_per_interrupt` reads from each run.
EOI_KEY = "kvm:kvm_eoi"
PV_EOI_KEY = "kvm:kvm_pv_eoi"
INTERRUPTS_KEY = "interrupts"


def per_interrupt(run: Mapping[str, Any], key: str) -> float:
    """One A/B run record's ``counts[key]`` per injected interrupt (NaN if none was injected)."""
    inj = run["counts"]["kvm:kvm_inj_virq"]
    return float(run["counts"][key]) / inj if inj else float("nan")


def headline_counts(run: Mapping[str, Any]) -> dict[str, float]:
    """A run record's counts as :func:`eoi_exits_saved_per_interrupt` takes them (interrupts = injected)."""
    return {**run["counts"], INTERRUPTS_KEY: run["counts"]["kvm:kvm_inj_virq"]}


def trapped_eoi_per_interrupt(run: Mapping[str, float]) -> float:
    """Trapped EOIs per interrupt of one run: ``(kvm_eoi - kvm_pv_eoi) / interrupts``.

    ``kvm_eoi`` fires for every EOI KVM processes, trapped or PV
    (``apic_set_eoi()`` in ``arch/x86/kvm/lapic.c``); ``kvm_pv_eoi`` only for
    the PV ones, so the difference is the EOIs that cost an exit.

    :param run: counts with ``kvm:kvm_eoi``, ``kvm:kvm_pv_eoi`` and ``interrupts``.
    :returns: the ratio.
    :raises MeasurementError: a key is missing or interrupts <= 0.
    :raises Finding: kvm_pv_eoi > kvm_eoi (inconsistent counts: the host's accounting is broken).
    """
    missing = [k for k in (EOI_KEY, PV_EOI_KEY, INTERRUPTS_KEY) if k not in run]
    if missing:
        raise MeasurementError(f"run counts lack {missing}",
                               fix="count kvm:kvm_eoi and kvm:kvm_pv_eoi and record interrupts")
    interrupts, eoi, pv = float(run[INTERRUPTS_KEY]), float(run[EOI_KEY]), float(run[PV_EOI_KEY])
    if not interrupts > 0:
        raise MeasurementError(
            f"a run counted {run[INTERRUPTS_KEY]} interrupts: a reduction asserted on zero counts "
            "is not a measurement",
            fix="check perf counted the vCPU threads and the workload interrupts the guest")
    if pv > eoi:
        raise Finding(
            f"kvm_pv_eoi ({run[PV_EOI_KEY]}) > kvm_eoi ({run[EOI_KEY]}): inconsistent counts "
            "(kvm_eoi fires for every EOI, PV ones included)",
            fix="count both tracepoints in the same perf run over the same window")
    return (eoi - pv) / interrupts


def eoi_exits_saved_per_interrupt(runs_on: Sequence[Mapping[str, float]],
                                  runs_off: Sequence[Mapping[str, float]], level: float = 0.95,
                                  n: int = 9999, seed: int = 0) -> MetricSummary:
    """pveoi's headline: trapped EOI exits saved per interrupt by PV EOI.

    Per run, trapped EOIs per interrupt (:func:`trapped_eoi_per_interrupt`);
    the headline is the returned summary's ``diff`` = median(off) -
    median(on), with ``diff_ci`` its bootstrap CI. Its physical limit is 1.0
    (every EOI trapped without PV EOI, none with it).

    :param runs_on: the PV EOI arm's runs (count dicts).
    :param runs_off: the baseline arm's runs.
    :param level: confidence level.
    :param n: bootstrap resamples / permutations.
    :param seed: RNG seed.
    :returns: the summary of metric ``trapped_eoi``, unit ``per interrupt``.
    :raises MeasurementError: no runs in an arm, or a run with interrupts
        <= 0, missing keys or inconsistent counts.
    """
    if not runs_on or not runs_off:
        raise MeasurementError(
            f"{len(runs_on)} PV EOI run(s) and {len(runs_off)} baseline run(s): need both arms",
            fix="complete at least one run per arm")
    on = [trapped_eoi_per_interrupt(r) for r in runs_on]
    off = [trapped_eoi_per_interrupt(r) for r in runs_off]
    return summarize("trapped_eoi", on, off, unit="per interrupt", level=level, n=n, seed=seed)


def effect_difference(on_a: Values, off_a: Values, on_b: Values, off_b: Values, level: float = 0.95,
                      n: int = 9999, seed: int = 0) -> tuple[float, Interval]:
    """How much PV EOI's saving differs between two arm pairs: ``(off_b - on_b) - (off_a - on_a)``
    in medians, with a bootstrap CI that resamples each of the four arms independently.

    :param on_a: pair a's PV EOI arm; :param off_a: its twin without PV EOI.
    :param on_b: pair b's PV EOI arm; :param off_b: its twin.
    :returns: ``(difference, (lo, hi))``; negative: pair b saves less.
    :raises MeasurementError: an empty arm or a non-finite value.
    :raises ConfigError: a bad level or n.
    """
    _check(level, n)
    arrays = [_array(v, what) for v, what in ((on_a, "on a"), (off_a, "off a"), (on_b, "on b"), (off_b, "off b"))]
    point = ((float(np.median(arrays[3])) - float(np.median(arrays[2])))
             - (float(np.median(arrays[1])) - float(np.median(arrays[0]))))

    def moved(on_a: Any, off_a: Any, on_b: Any, off_b: Any, axis: int = -1) -> Any:
        return ((np.median(off_b, axis=axis) - np.median(on_b, axis=axis))
                - (np.median(off_a, axis=axis) - np.median(on_a, axis=axis)))

    return point, _bootstrap(arrays, moved, level, n, seed)[1]
