"""
From runs to conclusions (pure: typed runs in, typed results out; nothing
boots). ``pveoi ab`` calls it after measuring, ``pveoi analyze`` on a saved
result's raw counts, with the same outcome for the same thresholds.

Per workload, every pair of arms that differs is compared on every
per-interrupt figure (:class:`e2e.model.result.Comparison`):

* an arm with PV EOI and its twin without it (same everything else): the
  ``effect``, today's headline (EOI exits saved per injected interrupt) and
  verdict;
* two arms that both use PV EOI (or both do not) and differ in kernel, CPU
  flags, vCPUs, ...: the ``difference``, a ``regression`` when the second arm
  traps more EOIs or exits more per interrupt beyond the threshold, with the
  CI of the difference clear of zero;
* two effects (e.g. two kernels x {on, off}): the ``effect-difference``,
  how much PV EOI's saving moved, a ``regression`` when it dropped beyond the
  threshold with its CI clear of zero.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from ..errors import ConfigError, Finding, MeasurementError
from ..host.hostfacts import COUNTED
from ..measure.trace_figures import source_counts, source_trapped
from ..model.plan import Arm
from ..model.result import OWN, Agreement, Comparison, RunRecord, WorkloadResult, overall_verdict
from ..model.workloads import Workload
from ..util.paths import DATA
from .rates import rate_test
from .stats import MetricSummary, effect_difference, eoi_exits_saved_per_interrupt, summarize

THRESHOLDS = DATA / "thresholds.toml"


def load_thresholds(workload: str, overrides: Mapping[str, float] | None = None,
                    path: Path = THRESHOLDS) -> dict[str, float]:
    """The workload's thresholds: ``[default]``, then ``[workload]``, then overrides.

    :raises ConfigError: on an unknown override key.
    """
    data = tomllib.loads(path.read_text())
    out = {k: float(v) for k, v in data.get("default", {}).items()}
    out.update({k: float(v) for k, v in data.get(workload, {}).items()})
    for key, value in (overrides or {}).items():
        if key not in out:
            raise ConfigError(f"unknown threshold {key!r}", fix=f"use one of {', '.join(sorted(out))}")
        out[key] = float(value)
    return out


def figures(runs: Sequence[RunRecord], workload: Workload) -> list[tuple[str, str, Callable[[RunRecord], float]]]:
    """Every per-interrupt figure the runs can give: (name, unit, per-run value)."""
    ops = workload.ops

    def rate(key: str) -> Callable[[RunRecord], float]:
        return lambda r: r.per_interrupt(key)

    def per_op(r: RunRecord) -> float:
        return r.counts["kvm:kvm_exit"] / ops

    out = [(key.split(":", 1)[1], "per interrupt", rate(key)) for key in COUNTED if key != "kvm:kvm_inj_virq"]
    out.append(("kvm_exit_per_op", f"per operation ({ops} ops)", per_op))
    for reason in sorted({k for r in runs for k in r.exit_reasons}):
        out.append((f"kvm_exit[{reason}]", "per interrupt", rate(f"kvm_exit[{reason}]")))
    # Only where every run was traced and took some of them: a figure some runs lack compares nothing.
    if workload.sources and runs and all(source_counts(r.trace, workload.sources) for r in runs):
        out.append((OWN, f"per interrupt of {', '.join(workload.sources)}",
                    lambda r: cast(float, source_trapped(r.trace, workload.sources))))
    return out


def _record_sources(metrics: dict[str, Any], workload: Workload) -> None:
    """The result says which interrupts were the workload's own (the history reads them back)."""
    if OWN in metrics:
        metrics[OWN]["sources"] = list(workload.sources)


def _events(name: str, workload: Workload) -> Callable[[RunRecord], tuple[float, float]]:
    """A figure's raw (events, exposure) of one run: the counts its per-interrupt (or per-op) value divides."""
    ops = workload.ops

    def count(r: RunRecord) -> tuple[float, float]:
        if name == "kvm_exit_per_op":
            return float(r.counts["kvm:kvm_exit"]), float(ops)
        if name == OWN:
            trapped, injected = source_counts(r.trace, workload.sources) or (0, 0)
            return float(trapped), float(injected)
        if name == "trapped_eoi":
            return float(r.counts["kvm:kvm_eoi"] - r.counts["kvm:kvm_pv_eoi"]), float(r.interrupts)
        if name.startswith("kvm_exit["):
            return float(r.exit_reasons.get(name[len("kvm_exit["):-1], 0)), float(r.interrupts)
        return float(r.counts[f"kvm:{name}"]), float(r.interrupts)

    return count


def p_rate(name: str, a: Sequence[RunRecord], b: Sequence[RunRecord], workload: Workload) -> dict[str, Any]:
    """The rate test of :mod:`e2e.analysis.rates` on a figure's raw counts, as fields of its metric summary:
    ``p_rate``, ``rate_model``, ``dispersion`` (1: the reps agree within counting noise), ``dispersion_df``."""
    count = _events(name, workload)
    try:
        return rate_test([count(r) for r in a], [count(r) for r in b]).to_json()
    except (MeasurementError, KeyError) as err:
        return {"p_rate": None, "rate_model": f"none: {err}", "dispersion": None, "dispersion_df": 0}


def _pair(a_vals: Sequence[float], b_vals: Sequence[float], name: str, unit: str) -> dict[str, Any]:
    """One figure of a difference comparison: medians, ``b - a`` with its CI, relative change, p."""
    s: MetricSummary = summarize(name, b_vals, a_vals, unit=unit)  # summarize's "off - on" is a - b here
    rel = (s.on_median / s.off_median - 1.0) if s.off_median else None
    return {"name": name, "unit": unit, "a_median": s.off_median, "a_ci": list(s.off_ci),
            "b_median": s.on_median, "b_ci": list(s.on_ci), "diff": -s.diff,
            "diff_ci": [-s.diff_ci[1], -s.diff_ci[0]], "relative": rel, "p_value": s.p_value,
            "n_a": s.n_off, "n_b": s.n_on}


def _trapped(r: RunRecord) -> float:
    from .stats import trapped_eoi_per_interrupt

    return trapped_eoi_per_interrupt({**r.counts, "interrupts": r.interrupts})


def _effect(workload: Workload, off: Arm, on: Arm, runs: Sequence[RunRecord],
            thresholds: Mapping[str, float]) -> tuple[Comparison, dict[str, Any], dict[str, Any] | None]:
    """PV EOI's effect between twins: (comparison, metrics, headline)."""
    r_on = [r for r in runs if r.arm == on.name]
    r_off = [r for r in runs if r.arm == off.name]
    differs = off.differences(on)
    metrics: dict[str, Any] = {}
    for name, unit, value in figures(r_on + r_off, workload):
        metrics[name] = {**summarize(name, [value(r) for r in r_on], [value(r) for r in r_off], unit=unit).to_json(),
                         **p_rate(name, r_off, r_on, workload)}
    _record_sources(metrics, workload)
    reasons: list[str] = []
    try:
        trapped = eoi_exits_saved_per_interrupt([{**r.counts, "interrupts": r.interrupts} for r in r_on],
                                                [{**r.counts, "interrupts": r.interrupts} for r in r_off])
    except (MeasurementError, Finding) as err:  # inconsistent counts: a broken measurement is never a pass
        return (Comparison("effect", off.name, on.name, differs, metrics, "fail", (str(err),)), metrics, None)
    metrics["trapped_eoi"] = {**trapped.to_json(), **p_rate("trapped_eoi", r_off, r_on, workload)}
    headline = {"value": trapped.diff, "ci": list(trapped.diff_ci) if trapped.diff_ci else None, "limit": 1.0}
    pv_on = [r.counts["kvm:kvm_pv_eoi"] for r in r_on]
    pv_off = [r.counts["kvm:kvm_pv_eoi"] for r in r_off]
    if not all(v > 0 for v in pv_on):
        reasons.append(f"kvm_pv_eoi was 0 in a {on.name} run ({pv_on}): the host never used PV EOI")
    if any(v != 0 for v in pv_off):
        reasons.append(f"kvm_pv_eoi was non-zero in a {off.name} run ({pv_off})")
    lo = trapped.diff_ci[0] if trapped.diff_ci else trapped.diff
    if trapped.diff < thresholds["min_eoi_saved_per_interrupt"]:
        reasons.append(f"EOI exits saved per interrupt {trapped.diff:.3f} ({on.name} vs {off.name}) < threshold "
                       f"{thresholds['min_eoi_saved_per_interrupt']:.2f}")
    elif lo <= 0:
        reasons.append(f"EOI exits saved per interrupt {trapped.diff:.3f} has a CI touching zero ({trapped.diff_ci})")
    exit_m = metrics["kvm_exit"]
    if not exit_m["on_median"] < exit_m["off_median"]:
        reasons.append(f"kvm_exit per interrupt not lower with PV EOI ({on.name} {exit_m['on_median']:.3f} vs "
                       f"{off.name} {exit_m['off_median']:.3f})")
    comp = Comparison("effect", off.name, on.name, differs, metrics, "fail" if reasons else "pass",
                      tuple(reasons), headline)
    return comp, metrics, headline


def _difference(workload: Workload, a: Arm, b: Arm, runs: Sequence[RunRecord],
                thresholds: Mapping[str, float]) -> Comparison:
    """Two arms on the same side of PV EOI: every figure as ``b - a``, and regressions."""
    r_a = [r for r in runs if r.arm == a.name]
    r_b = [r for r in runs if r.arm == b.name]
    metrics: dict[str, Any] = {}
    extra: list[tuple[str, str, Callable[[RunRecord], float]]] = [("trapped_eoi", "per interrupt", _trapped)]
    reasons: list[str] = []
    for name, unit, value in extra + figures(r_a + r_b, workload):
        try:
            metrics[name] = {**_pair([value(r) for r in r_a], [value(r) for r in r_b], name, unit),
                             **p_rate(name, r_a, r_b, workload)}
        except (MeasurementError, Finding) as err:
            reasons.append(f"{name}: {err}")
    _record_sources(metrics, workload)
    same_side = a.expects_pv_eoi == b.expects_pv_eoi
    if same_side:
        t, e = metrics.get("trapped_eoi"), metrics.get("kvm_exit")
        if t and t["diff"] > thresholds["max_trapped_eoi_increase"] and t["diff_ci"][0] > 0:
            reasons.append(f"arm {b.name} traps {t['diff']:+.3f} EOIs per interrupt more than {a.name} "
                           f"({t['b_median']:.3f} vs {t['a_median']:.3f}, 95 % CI of the difference "
                           f"[{t['diff_ci'][0]:+.3f}, {t['diff_ci'][1]:+.3f}])")
        if (e and e["relative"] is not None and e["relative"] > thresholds["max_exit_increase"]
                and e["diff_ci"][0] > 0):
            reasons.append(f"arm {b.name} exits {e['relative']:+.1%} more per interrupt than {a.name} "
                           f"({e['b_median']:.3f} vs {e['a_median']:.3f}, 95 % CI of the difference "
                           f"[{e['diff_ci'][0]:+.3f}, {e['diff_ci'][1]:+.3f}])")
    verdict = ("regression" if reasons else "ok") if same_side else "info"
    # Two arms that are one experiment on purpose (replica_of): an A/A, the noise check; the same rules
    # apply, so a difference it flags is a false alarm of this runner at this level.
    kind = "aa" if not a.differences(b) else "difference"
    return Comparison(kind, a.name, b.name, a.differences(b), metrics, verdict, tuple(reasons))


def _effect_difference(ea: Comparison, eb: Comparison, arms: Mapping[str, Arm], runs: Sequence[RunRecord],
                       thresholds: Mapping[str, float]) -> Comparison:
    """How PV EOI's saving moved from pair ``ea`` to pair ``eb``."""
    def vals(arm: str) -> list[float]:
        return [_trapped(r) for r in runs if r.arm == arm]

    label_a, label_b = f"{ea.b}/{ea.a}", f"{eb.b}/{eb.a}"
    try:
        point, ci = effect_difference(vals(ea.b), vals(ea.a), vals(eb.b), vals(eb.a))
    except (MeasurementError, Finding) as err:
        return Comparison("effect-difference", label_a, label_b, (), {}, "info", (str(err),))
    metrics = {"eoi_saved": {"name": "eoi_saved", "unit": "per interrupt",
                             "a": (ea.headline or {}).get("value"), "b": (eb.headline or {}).get("value"),
                             "diff": point, "diff_ci": list(ci)}}
    reasons = []
    if -point > thresholds["max_effect_drop"] and ci[1] < 0:
        reasons.append(f"PV EOI saves {point:+.3f} EOI exits per interrupt less under {label_b} than under "
                       f"{label_a} (95 % CI [{ci[0]:+.3f}, {ci[1]:+.3f}])")
    differs = arms[ea.b].differences(arms[eb.b])  # what the two pairs differ in (their PV EOI arms')
    return Comparison("effect-difference", label_a, label_b, differs, metrics,
                      "regression" if reasons else "ok", tuple(reasons))


#: Why two arms on the same side of PV EOI are not judged when reps shared guest boots.
SHARED_BOOTS = ("reps shared guest boots (--reps-per-boot): the intervals are over windows of one boot, so "
                "differences between arms on the same side of PV EOI are shown, not judged (an A/A of one boot "
                "per arm had intervals clear of zero in most runs, docs/measurements.md); PV EOI's own effect is "
                "judged as ever")


def _not_judged(comp: Comparison) -> Comparison:
    """``comp`` made informational if it compares arms on the same side of PV EOI (what it would have
    flagged kept in its reasons); PV EOI's effect (on vs its twin off) is left as it is."""
    if comp.kind == "effect" or comp.verdict == "info":
        return comp
    return replace(comp, verdict="info",
                   reasons=("not judged: reps shared guest boots",
                            *(f"would have flagged: {r}" for r in comp.reasons)))


def agreement(arms: Sequence[Arm], runs: Sequence[RunRecord],
              thresholds: Mapping[str, float]) -> tuple[list[Agreement], list[str]]:
    """Host ``kvm_pv_eoi`` against the guest's skipped-EOI counter: (entries, reasons for the failing ones).

    Where the guest took window markers (guest_patches/0003) the check is exact, per vCPU and
    run, on every arm: any difference is a finding, named by vCPU and direction. Otherwise the
    guest's counter is read outside perf's window, and the run's totals must agree within
    ``agreement_slack`` + ``max_agreement_error`` (arms that use PV EOI only).
    """
    uses = {a.name for a in arms if a.expects_pv_eoi}
    out, reasons = [], []
    for r in runs:
        if r.trace.get("marks"):
            entries, why = exact_agreement(r)
            out += entries
            reasons += why
            continue
        g = r.guest_pv_eoi
        if r.arm not in uses or g is None:
            continue
        host_n, guest_n = r.counts["kvm:kvm_pv_eoi"], int(g["skipped"])
        gap = abs(host_n - guest_n)
        ok = gap <= thresholds["agreement_slack"] + thresholds["max_agreement_error"] * max(host_n, guest_n)
        out.append(Agreement(r.rep, r.arm, host_n, guest_n, ok))
        if not ok:
            reasons.append(f"host kvm_pv_eoi {host_n} and guest skipped EOIs {guest_n} disagree "
                           f"(arm {r.arm}, rep {r.rep})")
    return out, reasons


def exact_agreement(r: RunRecord) -> tuple[list[Agreement], list[str]]:
    """One run's per-vCPU exact check between its markers (see :mod:`e2e.measure.trace`)."""
    out, reasons = [], []
    where = f"(arm {r.arm}, rep {r.rep})"
    enabled = (r.guest_pv_eoi or {}).get("enabled")
    hooked = isinstance(enabled, list) and bool(enabled) and all(enabled)
    for v in r.trace.get("vcpus", []):
        n = v["vcpu"]
        if not v.get("window"):
            reasons.append(f"vCPU {n}: the host traced {v.get('markers', 0)} of the guest's 2 window-marker "
                           f"hypercalls, so its PV EOIs cannot be accounted {where}")
            continue
        host_n, guest_n = int(v["host_pv_eoi"]), int(v["guest_skipped"])
        out.append(Agreement(r.rep, r.arm, host_n, guest_n, host_n == guest_n, vcpu=n))
        # The other half of the same window: trapped EOIs the host completed against the EOIs the guest
        # wrote; only where the guest's PV EOI hook, which counts the writes, is installed (PV EOI enabled).
        trapped, written = v.get("host_trapped"), v.get("guest_written")
        excess = trapped - written if hooked and isinstance(trapped, int) and isinstance(written, int) else 0
        folded = excess > 0 and excess == guest_n - host_n  # untraced kvm_pv_eoi: their kvm_eoi stand alone
        if guest_n > host_n:
            reasons.append(f"vCPU {n}: {guest_n - host_n} EOIs the guest skipped were completed with no "
                           f"kvm_pv_eoi on the host (guest skipped {guest_n}, host kvm_pv_eoi {host_n}"
                           + ("; the host traced them as kvm_eoi alone, like trapped EOIs the guest never wrote"
                              if folded else "") + f") {where}")
        elif host_n > guest_n:
            reasons.append(f"vCPU {n}: the host completed {host_n - guest_n} PV EOIs the guest never skipped "
                           f"(host kvm_pv_eoi {host_n}, guest skipped {guest_n}) {where}")
        if excess and not folded:
            what = (f"the host completed {excess} trapped EOIs the guest never wrote" if excess > 0 else
                    f"{-excess} EOIs the guest wrote were never completed by the host")
            reasons.append(f"vCPU {n}: {what} (host trapped {trapped}, guest written {written}) {where}")
    return out, reasons


def analyze(workload: Workload, arms: Sequence[Arm], runs: Sequence[RunRecord], thresholds: Mapping[str, float],
            findings: Sequence[str] = (), errors: Sequence[str] = (), retried: Sequence[str] = ()) -> WorkloadResult:
    """One workload's conclusion from its completed runs.

    :param findings: what the kernel under test did wrong during the runs (each fails the workload).
    :param errors: runs that did not complete (infrastructure, retries spent): verdict ``error``.
    :param retried: runs that failed on infrastructure and were retried.
    """
    base = WorkloadResult(workload=workload.name, verdict="pass", description=workload.description,
                          thresholds=dict(thresholds), findings=tuple(findings), errors=tuple(errors),
                          retried=tuple(retried))
    notes = ([f"{len(retried)} run(s) failed and were retried on a fresh guest: " + "; ".join(retried)]
             if retried else [])
    if findings:
        return replace(base, verdict="fail", reasons=tuple(findings), notes=tuple(notes))
    if errors:
        total = len(runs) + len(errors)
        return replace(base, verdict="error", reasons=(f"{len(errors)} of {total} runs did not complete, "
                                                        "so no verdict", *errors), notes=tuple(notes))
    missing = [a.name for a in arms if not any(r.arm == a.name for r in runs)]
    if missing:
        return replace(base, verdict="not-measurable", reasons=(f"arm(s) {missing} have no completed runs",),
                              notes=tuple(notes))
    few = [r for r in runs if r.interrupts < thresholds["min_interrupts"]]
    if few:
        return replace(base,
            verdict="not-measurable", notes=tuple(notes),
            reasons=(f"{len(few)} run(s) injected fewer than {thresholds['min_interrupts']:.0f} interrupts: "
                     "this workload does not interrupt the guest enough to measure PV EOI here",))
    comparisons: list[Comparison] = []
    effects: list[Comparison] = []
    primary: tuple[dict[str, Any], dict[str, Any] | None, Comparison] | None = None
    for a, b in itertools.combinations(arms, 2):
        if a.is_twin(b):
            off, on = (a, b) if b.expects_pv_eoi else (b, a)
            comp, metrics, headline = _effect(workload, off, on, runs, thresholds)
            effects.append(comp)
            if primary is None:
                primary = (metrics, headline, comp)
        else:
            comp = _difference(workload, a, b, runs, thresholds)
        comparisons.append(comp)
    for ea, eb in itertools.combinations(effects, 2):
        comparisons.append(_effect_difference(ea, eb, {a.name: a for a in arms}, runs, thresholds))
    if any(r.window > 1 for r in runs):
        comparisons = [_not_judged(c) for c in comparisons]
        notes.append(SHARED_BOOTS)
    entries, disagree = agreement(arms, runs, thresholds)
    reasons = [f"{c.label}: {r}" if len(comparisons) > 1 else r
               for c in comparisons if c.verdict in ("fail", "regression") for r in c.reasons]
    reasons += disagree
    if not entries and any(a.expects_pv_eoi for a in arms):
        notes.append("the guest kernel has no skipped-EOI counter (guest_patches/0001); host/guest agreement "
                     "not checked")
    metrics, headline, first = primary if primary else ({}, None, None)
    return replace(base,
        verdict="fail" if reasons else "pass", reasons=tuple(reasons), notes=tuple(notes),
        treatment=first.b if first else None, baseline=first.a if first else None, metrics=metrics,
        eoi_exits_saved_per_interrupt=headline, agreement=tuple(entries), comparisons=tuple(comparisons))


def summary_reason(workloads: Mapping[str, WorkloadResult]) -> str:
    """The one-line reason of a whole A/B, from its workloads."""
    return "; ".join(f"{name}: {'; '.join(w.reasons) or w.verdict}" for name, w in workloads.items())


def conclude(workloads: Mapping[str, WorkloadResult]) -> tuple[str, str]:
    """(verdict, reason) of a whole A/B."""
    return overall_verdict(w.verdict for w in workloads.values()), summary_reason(workloads)

