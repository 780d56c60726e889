"""
A two-sample test of per-interrupt rates from the raw counts (pure).

With 3 reps per arm, the permutation p-value of :mod:`e2e.analysis.stats` cannot go
below 0.1 (20 labellings, two-sided), however clear the effect. But each rep
is thousands of injected interrupts and a count of events over them (e.g.
trapped EOIs = ``kvm_eoi - kvm_pv_eoi``), so the counts themselves say how
precise each rep's rate is. :func:`rate_test` uses them:

* the arms' rates pooled over reps (events summed over interrupts summed);
* the score test of a Poisson log-linear model with the arm as its only
  factor and the interrupts as exposure: given all events, those of arm a are
  ``Binomial(total, Na / (Na + Nb))`` when the rates are equal, so
  ``z = (Ya - Y·π0) / sqrt(φ·Y·π0·(1-π0))``; this needs no event in an arm
  (a rate of 0 is fine);
* overdispersion: ``φ`` is the Pearson statistic of the reps around their
  arm's pooled rate over its degrees of freedom (``reps - 2``). When the reps
  scatter more than counting noise allows (Pearson's chi-square test at
  ``overdispersion_level``), the test becomes quasi-Poisson: ``z`` is scaled
  by that ``φ`` and read against Student's t with as many degrees of freedom,
  so reps that disagree never yield a tiny p. Otherwise ``φ`` is taken as at
  least 1 (never more confident than counting noise) and ``z`` is normal, so
  p reaches 1e-6 and below when the counts say so.

The choice between the two is a pre-test, so the level is approximate where
the overdispersion is mild (close to the pre-test's power); the unit tests
check the false-positive rate at no, mild and strong overdispersion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import MeasurementError

#: One rep: (events, exposure), e.g. (trapped EOIs, injected interrupts).
Rep = tuple[float, float]


@dataclass(frozen=True)
class RateTest:
    """The outcome of :func:`rate_test`.

    :param p_value: two-sided p that both arms have the same rate (None: no events at all).
    :param model: ``poisson`` (reps agree within counting noise) or ``quasi-poisson`` (they do not).
    :param dispersion: Pearson chi-square over its degrees of freedom (1: counting noise;
        None without a degree of freedom, i.e. one rep per arm).
    :param df: the degrees of freedom of ``dispersion``.
    :param rate_a: arm a's pooled rate; :param rate_b: arm b's.
    """

    p_value: float | None
    model: Literal["poisson", "quasi-poisson", "none"]
    dispersion: float | None
    df: int
    rate_a: float
    rate_b: float

    def to_json(self) -> dict[str, Any]:
        return {"p_rate": self.p_value, "rate_model": self.model, "dispersion": self.dispersion,
                "dispersion_df": self.df}


def _check(reps: Sequence[Rep], arm: str) -> None:
    if not reps:
        raise MeasurementError(f"no reps in arm {arm} for a rate test", fix="complete at least one run per arm")
    for events, exposure in reps:
        if not (math.isfinite(events) and math.isfinite(exposure)) or events < 0 or exposure <= 0:
            raise MeasurementError(f"arm {arm}: a rep counted {events} events over {exposure} interrupts",
                                   fix="a rate needs a positive exposure and a non-negative count")


def rate_test(a: Sequence[Rep], b: Sequence[Rep], overdispersion_level: float = 0.05) -> RateTest:
    """Two-sided test that two arms' reps share one event rate per unit of exposure.

    :param a: arm a's reps as (events, exposure); :param b: arm b's.
    :param overdispersion_level: the level of the chi-square test that switches to quasi-Poisson.
    :returns: the test (p None when neither arm counted any event).
    :raises MeasurementError: an empty arm, a negative count or a non-positive exposure.
    """
    _check(a, "a")
    _check(b, "b")
    from scipy import stats as sps

    ya, na = sum(y for y, _ in a), sum(n for _, n in a)
    yb, nb = sum(y for y, _ in b), sum(n for _, n in b)
    rate_a, rate_b = ya / na, yb / nb
    total = ya + yb
    pearson, df = 0.0, 0
    for reps, rate in ((a, rate_a), (b, rate_b)):
        if rate > 0:  # an arm with no event fits its reps exactly and has no spread to estimate
            pearson += sum((y - n * rate) ** 2 / (n * rate) for y, n in reps)
            df += len(reps) - 1
    dispersion = pearson / df if df else None
    if total == 0:
        return RateTest(None, "none", dispersion, df, rate_a, rate_b)
    over = df > 0 and float(sps.chi2.sf(pearson, df)) < overdispersion_level
    phi = dispersion if over and dispersion is not None else max(1.0, dispersion or 1.0)
    pi0 = na / (na + nb)
    z = (ya - total * pi0) / math.sqrt(phi * total * pi0 * (1 - pi0))
    p = float(2 * (sps.t.sf(abs(z), df) if over else sps.norm.sf(abs(z))))
    return RateTest(min(1.0, p), "quasi-poisson" if over else "poisson", dispersion, df, rate_a, rate_b)
