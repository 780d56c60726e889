"""Unit tests for e2e.analysis.stats on synthetic data (pure, fast, deterministic)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from e2e.analysis.stats import (
    MetricSummary,
    bootstrap_ci,
    diff_ci,
    eoi_exits_saved_per_interrupt,
    permutation_pvalue,
    ratio_reduction,
    summarize,
    trapped_eoi_per_interrupt,
)
from e2e.errors import ConfigError, Finding, MeasurementError

# Shaped like the 2026-11-25 virtual-host measurement (platform.md): per injected
# interrupt, trapped EOIs are ~0.005 with PV EOI and ~1.0 without.
RNG = np.random.default_rng(42)


def run(eoi: float, pv: float, interrupts: float) -> dict[str, float]:
    return {"kvm:kvm_eoi": eoi, "kvm:kvm_pv_eoi": pv, "interrupts": interrupts}


def on_runs(k: int = 5) -> list[dict[str, float]]:
    out = []
    for _ in range(k):
        interrupts = float(RNG.integers(4200, 5200))
        pv = interrupts - float(RNG.integers(5, 40))
        out.append(run(pv + float(RNG.integers(10, 40)), pv, interrupts))
    return out


def off_runs(k: int = 5) -> list[dict[str, float]]:
    out = []
    for _ in range(k):
        interrupts = float(RNG.integers(4200, 5200))
        out.append(run(interrupts - float(RNG.integers(0, 5)), 0.0, interrupts))
    return out


# ---------------------------------------------------------------- bootstrap_ci


def test_bootstrap_ci_brackets_the_median_and_is_deterministic() -> None:
    values = [9.0, 10.0, 10.5, 11.0, 12.0, 10.2, 9.8]
    lo, hi = bootstrap_ci(values)
    assert lo <= float(np.median(values)) <= hi
    assert min(values) <= lo and hi <= max(values)
    assert bootstrap_ci(values, seed=0) == (lo, hi)
    # The seed is what makes it repeatable: another seed resamples differently.
    continuous = list(np.random.default_rng(0).normal(0.0, 1.0, 20))
    assert bootstrap_ci(continuous, np.mean, seed=1) != bootstrap_ci(continuous, np.mean, seed=2)


def test_bootstrap_ci_of_the_mean_and_a_narrower_level() -> None:
    values = list(RNG.normal(100.0, 5.0, 30))
    lo95, hi95 = bootstrap_ci(values, stat=np.mean, level=0.95)
    lo50, hi50 = bootstrap_ci(values, stat=np.mean, level=0.50)
    assert lo95 <= lo50 <= float(np.mean(values)) <= hi50 <= hi95


def test_bootstrap_ci_of_one_value_is_the_point() -> None:
    assert bootstrap_ci([3.5]) == (3.5, 3.5)


@pytest.mark.parametrize("values", [[], [1.0, float("nan")], [float("inf")]])
def test_bootstrap_ci_refuses_no_or_non_finite_values(values: list[float]) -> None:
    with pytest.raises(MeasurementError):
        bootstrap_ci(values)


@pytest.mark.parametrize(("level", "n"), [(0.0, 99), (1.0, 99), (0.95, 0)])
def test_bad_level_or_resamples_is_a_config_error(level: float, n: int) -> None:
    with pytest.raises(ConfigError):
        bootstrap_ci([1.0, 2.0], level=level, n=n)


# ---------------------------------------------------------------- diff_ci and ratio_reduction


def test_a_real_reduction_has_a_ci_clear_of_zero() -> None:
    on = [1.6, 1.7, 1.62, 1.58, 1.65]
    off = [2.6, 2.7, 2.62, 2.55, 2.66]
    lo, hi = diff_ci(on, off)
    assert 0.0 < lo <= 1.0 <= hi
    reduction, ci = ratio_reduction(on, off)
    assert reduction == pytest.approx(1 - 1.62 / 2.62)
    assert reduction is not None and ci is not None and 0.0 < ci[0] <= reduction <= ci[1]


def test_no_difference_gives_a_ci_spanning_zero() -> None:
    rng = np.random.default_rng(7)
    same = rng.normal(3.0, 0.2, 12)
    lo, hi = diff_ci(same[:6], same[6:])
    assert lo < 0.0 < hi
    _, ci = ratio_reduction(same[:6], same[6:])
    assert ci is not None and ci[0] < 0.0 < ci[1]


def test_inverted_data_gives_a_negative_effect() -> None:
    on = [2.6, 2.7, 2.62]
    off = [1.6, 1.7, 1.62]
    lo, hi = diff_ci(on, off)
    assert lo <= hi < 0.0
    reduction, _ = ratio_reduction(on, off)
    assert reduction is not None and reduction < 0.0


def test_diff_ci_is_deterministic_with_a_seed() -> None:
    on, off = [1.0, 1.2, 0.9, 1.1], [2.0, 2.3, 1.9, 2.1]
    assert diff_ci(on, off, seed=3) == diff_ci(on, off, seed=3)


def test_diff_ci_of_single_runs_is_the_point() -> None:
    assert diff_ci([1.5], [4.0]) == (2.5, 2.5)


def test_ratio_reduction_with_zero_baseline_is_undefined_not_a_number() -> None:
    assert ratio_reduction([1.0, 2.0], [0.0, 0.0, 0.0]) == (None, None)


def test_ratio_reduction_ci_is_none_when_a_resampled_baseline_is_zero() -> None:
    reduction, ci = ratio_reduction([1.0, 2.0, 3.0], [0.0, 5.0, 6.0])
    assert reduction == pytest.approx(1 - 2.0 / 5.0)
    assert ci is None


# ---------------------------------------------------------------- permutation_pvalue


def test_permutation_exact_for_three_vs_three() -> None:
    # 20 labellings; only the observed one and its mirror are as extreme: 2/20.
    assert permutation_pvalue([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    assert permutation_pvalue([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(0.1)


def test_permutation_identical_arms_give_one() -> None:
    assert permutation_pvalue([2.0, 2.0, 2.0], [2.0, 2.0, 2.0]) == 1.0
    assert permutation_pvalue([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == 1.0


def test_permutation_exact_agrees_with_scipy() -> None:
    on, off = [1.1, 0.7, 1.9, 1.3], [2.0, 1.4, 2.6, 1.2]
    ours = permutation_pvalue(on, off)
    theirs = sps.permutation_test(
        (off, on), lambda x, y: np.mean(x) - np.mean(y), permutation_type="independent",
        alternative="two-sided", n_resamples=np.inf,
    ).pvalue
    assert ours == pytest.approx(theirs)


def test_permutation_monte_carlo_separated_and_null() -> None:
    rng = np.random.default_rng(11)
    on, off = rng.normal(1.0, 0.1, 15), rng.normal(2.0, 0.1, 15)  # C(30,15) >> 9999: random
    p = permutation_pvalue(on, off)
    assert p == pytest.approx(1 / 10000)
    assert permutation_pvalue(on, off, seed=5) == p
    null = rng.normal(1.0, 0.1, 30)
    assert permutation_pvalue(null[:15], null[15:]) > 0.05


def test_permutation_deterministic_with_seed() -> None:
    rng = np.random.default_rng(12)
    a, b = rng.normal(0, 1, 12), rng.normal(0.3, 1, 12)
    assert permutation_pvalue(a, b, seed=9) == permutation_pvalue(a, b, seed=9)


# ---------------------------------------------------------------- summarize


def test_summarize_fields_and_json() -> None:
    on = [1.6, 1.7, 1.62]
    off = [2.6, 2.7, 2.62]
    s = summarize("kvm_msr", on, off)
    assert isinstance(s, MetricSummary)
    assert (s.name, s.unit, s.n_on, s.n_off) == ("kvm_msr", "per interrupt", 3, 3)
    assert s.on_median == pytest.approx(1.62) and s.off_median == pytest.approx(2.62)
    assert s.diff == pytest.approx(1.0)
    assert s.diff_ci[0] > 0.0
    assert s.reduction == pytest.approx(1 - 1.62 / 2.62)
    assert s.p_value == pytest.approx(0.1)
    doc = s.to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["diff_ci"] == list(s.diff_ci)
    assert set(doc) == {"name", "unit", "on_median", "on_ci", "off_median", "off_ci", "reduction",
                        "reduction_ci", "diff", "diff_ci", "p_value", "n_on", "n_off"}


def test_summarize_zero_baseline_has_no_reduction() -> None:
    s = summarize("kvm_pv_eoi", [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert s.reduction is None and s.reduction_ci is None
    assert s.diff == 0.0 and s.diff_ci == (0.0, 0.0)
    assert s.p_value == 1.0
    assert s.to_json()["reduction"] is None


def test_summarize_single_runs_collapse_cis_and_have_no_p_value() -> None:
    s = summarize("kvm_exit", [3.2], [3.9])
    assert s.on_ci == (3.2, 3.2) and s.off_ci == (3.9, 3.9)
    assert s.diff == pytest.approx(0.7) and s.diff_ci == pytest.approx((0.7, 0.7))
    assert s.p_value is None
    assert s.to_json()["p_value"] is None


def test_summarize_empty_arm_is_a_measurement_error() -> None:
    with pytest.raises(MeasurementError, match="no values"):
        summarize("kvm_exit", [], [1.0])


def test_summarize_deterministic() -> None:
    on, off = list(RNG.normal(1, 0.1, 8)), list(RNG.normal(2, 0.1, 8))
    assert summarize("m", on, off, seed=4) == summarize("m", on, off, seed=4)


# ---------------------------------------------------------------- the headline


def test_eoi_saved_detects_a_real_reduction() -> None:
    s = eoi_exits_saved_per_interrupt(on_runs(), off_runs())
    assert s.name == "trapped_eoi"
    assert 0.9 < s.diff <= 1.0
    assert 0.9 < s.diff_ci[0] <= s.diff <= s.diff_ci[1] <= 1.0
    assert s.on_median < 0.02 and s.off_median > 0.99
    assert s.p_value is not None and s.p_value < 0.01


def test_eoi_saved_no_difference_spans_zero() -> None:
    rng = np.random.default_rng(3)
    runs = []
    for _ in range(10):
        interrupts = float(rng.integers(4000, 5000))
        runs.append(run(interrupts * float(rng.uniform(0.95, 1.0)), 0.0, interrupts))
    s = eoi_exits_saved_per_interrupt(runs[:5], runs[5:])
    assert s.diff_ci[0] < 0.0 < s.diff_ci[1]
    assert s.p_value is not None and s.p_value > 0.05


def test_eoi_saved_inverted_is_negative() -> None:
    s = eoi_exits_saved_per_interrupt(off_runs(), on_runs())
    assert s.diff < -0.9 and s.diff_ci[1] < 0.0
    assert s.reduction is not None and s.reduction < 0.0


def test_eoi_saved_deterministic() -> None:
    on, off = on_runs(4), off_runs(4)
    assert eoi_exits_saved_per_interrupt(on, off) == eoi_exits_saved_per_interrupt(on, off)


@pytest.mark.parametrize("interrupts", [0.0, -3.0])
def test_eoi_saved_refuses_zero_interrupts(interrupts: float) -> None:
    runs = [*on_runs(2), run(0.0, 0.0, interrupts)]
    with pytest.raises(MeasurementError, match="not a measurement"):
        eoi_exits_saved_per_interrupt(runs, off_runs(3))
    with pytest.raises(MeasurementError, match="not a measurement"):
        eoi_exits_saved_per_interrupt(on_runs(3), [run(0.0, 0.0, interrupts)])


def test_eoi_saved_refuses_missing_keys_inconsistent_counts_and_empty_arms() -> None:
    with pytest.raises(MeasurementError, match="lack"):
        eoi_exits_saved_per_interrupt([{"kvm:kvm_eoi": 5.0, "interrupts": 5.0}], off_runs(1))
    with pytest.raises(Finding, match="inconsistent"):
        eoi_exits_saved_per_interrupt([run(10.0, 11.0, 10.0)], off_runs(1))
    with pytest.raises(MeasurementError, match="both arms"):
        eoi_exits_saved_per_interrupt([], off_runs(1))


def test_trapped_eoi_per_interrupt_uses_eoi_minus_pv_eoi() -> None:
    # The representative pair of platform.md: on 4260 - 4238 over 4263 injected; off 4471 over 4474.
    assert trapped_eoi_per_interrupt(run(4260, 4238, 4263)) == pytest.approx(22 / 4263)
    assert trapped_eoi_per_interrupt(run(4471, 0, 4474)) == pytest.approx(4471 / 4474)
