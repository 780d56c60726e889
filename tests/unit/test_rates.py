"""The rate test on raw counts (e2e.analysis.rates) and its place in every metric summary (e2e.analysis.compare)."""

from __future__ import annotations

import numpy as np
import pytest

from e2e.analysis.compare import analyze, load_thresholds
from e2e.analysis.rates import rate_test
from e2e.errors import MeasurementError
from e2e.model.plan import DEFAULT_ARMS
from e2e.model.result import RunRecord
from e2e.model.workloads import get_workloads

COUNTING = 1 / np.sqrt(3000)  # relative counting noise of ~3000 events


def arm(rng: np.random.Generator, rate: float, reps: int = 3, spread: float = 0.0) -> list[tuple[float, float]]:
    """Reps of ~3000 interrupts; the events Poisson around ``rate`` per interrupt, whose per-rep value
    scatters by ``spread`` (relative) on top of counting noise."""
    inj = rng.integers(2900, 3101, size=reps)
    rates = rate * (1 + rng.normal(0, spread, size=reps)) if spread else np.full(reps, rate)
    return [(float(rng.poisson(max(r, 0.0) * n)), float(n)) for r, n in zip(rates, inj, strict=True)]


def test_a_clear_25_percent_reduction_over_3x3_reps_gives_a_tiny_p() -> None:
    rng = np.random.default_rng(1)  # (seed 0 is one of the 5 % the overdispersion pre-test flags: see below)
    res = rate_test(arm(rng, 1.0), arm(rng, 0.75))
    assert res.model == "poisson" and res.p_value is not None and res.p_value < 1e-6
    assert res.rate_b / res.rate_a == pytest.approx(0.75, abs=0.02)
    # (The permutation test on the same reps cannot go below 0.1; this one is not limited by the reps.)
    assert 0.1 < (res.dispersion or 0) < 3  # the reps agree within counting noise


def test_a_25_percent_reduction_reaches_1e6_in_most_seeds() -> None:
    ps = [rate_test(arm(rng, 1.0), arm(rng, 0.75)).p_value for rng in map(np.random.default_rng, range(100))]
    assert sum(p is not None and p < 1e-6 for p in ps) >= 90  # the rest: overdispersion by chance (t, 4 df)
    assert all(p is not None and p < 1e-3 for p in ps)


@pytest.mark.parametrize("rate", [0.01, 1.0, 4.0])
def test_identical_arms_give_uniform_ish_p(rate: float) -> None:
    ps = np.array([rate_test(arm(rng, rate), arm(rng, rate)).p_value
                   for rng in map(np.random.default_rng, range(200))], dtype=float)
    assert 0.015 <= float(np.mean(ps < 0.05)) <= 0.09
    assert 0.3 <= float(np.mean(ps < 0.5)) <= 0.7
    assert float(ps.min()) > 1e-4


def test_overdispersed_reps_never_give_a_tiny_p_for_a_small_difference() -> None:
    """Reps spread 10x counting noise; the arms differ by 5 % (less than that spread)."""
    res = [rate_test(arm(rng, 1.0, spread=10 * COUNTING), arm(rng, 0.95, spread=10 * COUNTING))
           for rng in map(np.random.default_rng, range(200))]
    assert sum(r.model == "quasi-poisson" for r in res) >= 190
    ps = np.array([r.p_value for r in res], dtype=float)
    assert float(np.mean(ps < 1e-6)) <= 0.01
    assert float(np.median(ps)) > 0.1
    # Under the null with that spread, the level still holds.
    null = np.array([rate_test(arm(rng, 1.0, spread=10 * COUNTING), arm(rng, 1.0, spread=10 * COUNTING)).p_value
                     for rng in map(np.random.default_rng, range(200, 400))], dtype=float)
    assert float(np.mean(null < 0.05)) <= 0.09
    # The same 5 % difference with counting noise only is clear.
    clean = [rate_test(arm(rng, 1.0), arm(rng, 0.95)).p_value for rng in map(np.random.default_rng, range(20))]
    assert np.median(np.array(clean, dtype=float)) < 0.01


def test_zero_events_and_bad_counts() -> None:
    none = rate_test([(0, 3000)] * 3, [(0, 3000)] * 3)
    assert none.p_value is None and none.model == "none"
    one_side = rate_test([(0, 3000)] * 3, [(2990, 3000), (3001, 3010), (2950, 2960)])
    assert one_side.p_value is not None and one_side.p_value < 1e-100
    with pytest.raises(MeasurementError):
        rate_test([], [(1, 10)])
    with pytest.raises(MeasurementError):
        rate_test([(1, 0)], [(1, 10)])


def run(rep: int, arm_name: str, inj: int, pv: int, exits: int) -> RunRecord:
    return RunRecord(rep=rep, arm=arm_name, counts={
        "kvm:kvm_exit": exits, "kvm:kvm_entry": exits, "kvm:kvm_msr": exits // 2, "kvm:kvm_apic": inj,
        "kvm:kvm_eoi": inj, "kvm:kvm_pv_eoi": pv, "kvm:kvm_inj_virq": inj, "kvm:kvm_apic_accept_irq": inj},
        exit_reasons={"MSR": exits // 2, "HLT": exits - exits // 2})


def test_every_metric_summary_carries_p_rate_next_to_the_permutation_p() -> None:
    timer = get_workloads(["timer"])[0]
    rng = np.random.default_rng(1)
    runs = []
    for rep in range(3):
        for name in ("on", "off"):
            inj = int(rng.integers(3000, 3200))
            pv = inj - int(rng.poisson(0.01 * inj)) if name == "on" else 0
            runs.append(run(rep, name, inj, pv, int(rng.poisson((3.0 if name == "on" else 4.0) * inj))))
    w = analyze(timer, DEFAULT_ARMS, runs, load_thresholds("timer"))
    assert w.verdict == "pass"
    assert w.metrics["kvm_exit_per_op"]["p_rate"] is not None  # per op: the interrupts per rep vary too
    for key in ("kvm_exit", "trapped_eoi", "kvm_pv_eoi", "kvm_exit[MSR]"):
        m = w.metrics[key]
        assert m["p_value"] == pytest.approx(0.1), key  # the permutation floor with 3 reps per arm
        assert m["p_rate"] is not None and m["p_rate"] < 1e-6, key
        assert m["rate_model"] in ("poisson", "quasi-poisson") and "dispersion" in m
    assert w.metrics["kvm_eoi"]["p_rate"] > 1e-3  # the same rate (1 per interrupt) in both arms
