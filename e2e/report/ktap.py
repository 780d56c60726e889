"""
KTAP version 1 (``Documentation/dev-tools/ktap.rst`` in the Linux tree) from
typed results: what a kernel CI that already reads kselftest and KUnit output
(``kunit.py parse``, LAVA, KernelCI) reads without knowing pveoi.

Pure: :func:`render` takes :class:`e2e.model.result.Result` objects and returns the
text. One top-level test per workload (of each result), with nested subtests,
each block with its own ``KTAP version 1`` and plan, indented two spaces per
level::

    KTAP version 1
    1..1
      KTAP version 1
      1..7
      # kvm_pv_eoi per on run: [2995, 3009, 3001]
      ok 1 pv_eoi_used_in_every_on_run
      ...
      # EOI exits saved per interrupt 0.999 [0.998, 0.999] (threshold 0.90)
      ok 3 eoi_saved_at_least_threshold
      ...
    # timer: PASS
    ok 1 timer

A workload that was not measurable is ``ok N name # SKIP <reason>``; one
whose runs did not complete (verdict ``error``) is ``not ok N name # ERROR
<reason>``. A parent is ``not ok`` exactly when a child is; a skipped child
does not fail its parent. Diagnostic lines (``# ...``) come right before the
result they explain.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..model.result import Comparison, Result, WorkloadResult

VERSION_LINE = "KTAP version 1"
INDENT = "  "


@dataclass
class Case:
    """One KTAP test: its result, the diagnostic lines before it and its subtests.

    :param ok: the result (``ok``/``not ok``) when it has no subtests; with subtests
        the result is ``not ok`` if this is False or any subtest is not ok.
    :param directive: ``SKIP``, ``TODO``, ``XFAIL``, ``TIMEOUT`` or ``ERROR`` (or "").
    """

    name: str
    ok: bool = True
    directive: str = ""
    reason: str = ""
    diagnostics: list[str] = field(default_factory=list)
    subtests: list[Case] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        if self.directive in ("TIMEOUT", "ERROR"):
            return False
        return self.ok and all(c.passed for c in self.subtests)


def _one_line(text: str) -> str:
    """Text fit for a KTAP line: one line, no ``#`` (which would start a directive)."""
    return re.sub(r"\s+", " ", text.replace("#", "No.")).strip()


def test_name(text: str) -> str:
    """A test name: words of ``[A-Za-z0-9_.-]`` joined by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "unnamed"


def _lines(cases: Sequence[Case], depth: int) -> list[str]:
    pad = INDENT * depth
    out = [pad + VERSION_LINE, f"{pad}1..{len(cases)}"]
    for n, case in enumerate(cases, 1):
        if case.subtests:
            out += _lines(case.subtests, depth + 1)
        out += [f"{pad}# {_one_line(d)}" for d in case.diagnostics if _one_line(d)]
        line = f"{pad}{'ok' if case.passed else 'not ok'} {n} {test_name(case.name)}"
        if case.directive:
            line += f" # {case.directive}" + (f" {_one_line(case.reason)}" if _one_line(case.reason) else "")
        out.append(line)
    return out


def format_cases(cases: Sequence[Case]) -> str:
    """The KTAP text of top-level ``cases``."""
    return "\n".join(_lines(cases, 0)) + "\n"


# ---------------------------------------------------------------- from results


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _ci(ci: Any) -> str:
    return f" [{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, list | tuple) and len(ci) == 2 else ""


def _pv_eoi(result: Result, workload: str, arm: str) -> list[int]:
    return [int(r.counts.get("kvm:kvm_pv_eoi", 0)) for r in result.runs_of(workload, arm)]


def _effect_conditions(result: Result, w: WorkloadResult, comp: Comparison) -> list[Case]:
    """The verdict's conditions for one on/off effect, each a subtest with its numbers."""
    on, off = comp.b, comp.a
    if comp.headline is None:  # the counts could not even give the headline (inconsistent counts)
        return [Case("effect_measured", ok=False, diagnostics=list(comp.reasons))]
    pv_on, pv_off = _pv_eoi(result, w.workload, on), _pv_eoi(result, w.workload, off)
    head = comp.headline
    value, ci = head.get("value"), head.get("ci")
    threshold = w.thresholds.get("min_eoi_saved_per_interrupt")
    exit_m: Mapping[str, Any] = comp.metrics.get("kvm_exit") or {}
    cases = [
        Case(f"pv_eoi_used_in_every_{on}_run", ok=bool(pv_on) and all(v > 0 for v in pv_on),
             diagnostics=[f"kvm_pv_eoi per {on} run: {pv_on}"]),
        Case(f"no_pv_eoi_in_{off}_runs", ok=all(v == 0 for v in pv_off),
             diagnostics=[f"kvm_pv_eoi per {off} run: {pv_off}"]),
    ]
    if threshold is not None and isinstance(value, int | float):
        cases.append(Case("eoi_saved_at_least_threshold", ok=value >= threshold,
                          diagnostics=[f"EOI exits saved per interrupt ({on} vs {off}) {_num(value)}{_ci(ci)} "
                                       f"(threshold {threshold:.2f}, limit {_num(head.get('limit'), 1)})"]))
    low = ci[0] if isinstance(ci, list | tuple) and ci else value
    cases.append(Case("eoi_saved_ci_clear_of_zero", ok=isinstance(low, int | float) and low > 0,
                      diagnostics=[f"95 % CI of EOI exits saved per interrupt{_ci(ci) or ' (none)'}"]))
    on_m, off_m = exit_m.get("on_median"), exit_m.get("off_median")
    lower = isinstance(on_m, int | float) and isinstance(off_m, int | float) and on_m < off_m
    cases.append(Case("kvm_exit_lower_with_pv_eoi", ok=lower,
                      diagnostics=[f"kvm_exit per interrupt: {off} {_num(off_m)}, {on} {_num(on_m)}; reduction "
                                   f"{_num(exit_m.get('reduction'))}{_ci(exit_m.get('reduction_ci'))}"]))
    return cases


def _agreement(w: WorkloadResult) -> Case:
    if not w.agreement:
        return Case("host_guest_agreement", directive="SKIP",
                    reason="the guest kernel has no skipped-EOI counter (guest_patches/0001)")
    runs = [Case(f"{a.arm}_rep{a.rep}" + (f"_cpu{a.vcpu}" if a.vcpu is not None else ""), ok=a.ok,
                 diagnostics=[f"host kvm_pv_eoi {a.host_pv_eoi}, guest skipped EOIs {a.guest_skipped}"])
            for a in w.agreement]
    slack, rel = w.thresholds.get("agreement_slack"), w.thresholds.get("max_agreement_error")
    limit = f"within {rel:.0%} + {slack:.0f}" if slack is not None and rel is not None else "agree"
    if all(a.vcpu is not None for a in w.agreement):
        limit = "are equal per vCPU between the guest's window markers (exact)"
    return Case("host_guest_agreement", subtests=runs,
                diagnostics=[f"host kvm_pv_eoi and the guest's skipped EOIs {limit}"])


def _comparison(comp: Comparison) -> Case:
    diags = [f"{comp.kind} {comp.b} vs {comp.a}, differ in {', '.join(comp.differs_in) or '-'}: "
             f"{comp.verdict}"]
    if comp.headline:
        diags.append(f"EOI exits saved per interrupt {_num(comp.headline.get('value'))}"
                     f"{_ci(comp.headline.get('ci'))}")
    for key in ("trapped_eoi", "kvm_exit", "eoi_saved"):
        m = comp.metrics.get(key)
        if not isinstance(m, Mapping) or comp.kind == "effect":
            continue
        if "a_median" in m:
            diags.append(f"{key}: a {_num(m.get('a_median'))}, b {_num(m.get('b_median'))}, diff "
                         f"{_num(m.get('diff'))}{_ci(m.get('diff_ci'))}, p {_num(m.get('p_value'))}")
        else:
            diags.append(f"{key}: a {_num(m.get('a'))}, b {_num(m.get('b'))}, diff {_num(m.get('diff'))}"
                         f"{_ci(m.get('diff_ci'))}")
    diags += list(comp.reasons)
    return Case(f"{comp.kind}_{comp.b}_vs_{comp.a}", ok=comp.verdict not in ("fail", "regression"),
                diagnostics=diags)


def workload_case(result: Result, w: WorkloadResult, name: str | None = None) -> Case:
    """One workload of one result as a KTAP test with its subtests."""
    name = name or w.workload
    summary = f"{w.workload}: {w.verdict.upper()}" + (f" ({w.description})" if w.description else "")
    if w.verdict == "not-measurable":
        return Case(name, directive="SKIP", reason="; ".join(w.reasons) or "not measurable",
                    diagnostics=[summary])
    if w.verdict not in ("pass", "fail"):
        return Case(name, ok=False, directive="ERROR", reason="; ".join(w.reasons) or w.verdict,
                    diagnostics=[summary, *w.errors])
    subtests: list[Case] = []
    primary = next((c for c in w.comparisons if c.kind == "effect" and (c.a, c.b) == (w.baseline, w.treatment)),
                   None)
    if primary is None and not w.comparisons and w.baseline and w.treatment and w.metrics:
        # a schema 1/2 result: the on/off figures are the workload's own
        primary = Comparison("effect", w.baseline, w.treatment, ("pv_eoi",), w.metrics, w.verdict, w.reasons,
                             w.eoi_exits_saved_per_interrupt)
    if primary is not None:
        subtests += _effect_conditions(result, w, primary)
    if w.findings:
        subtests.append(Case("kernel_under_test_behaved", ok=False, diagnostics=list(w.findings)))
    if primary is not None or w.agreement:
        subtests.append(_agreement(w))
    others = [c for c in w.comparisons if c is not primary]
    if others:
        subtests.append(Case("comparisons", subtests=[_comparison(c) for c in others]))
    diagnostics = [summary]
    if w.eoi_exits_saved_per_interrupt:
        head = w.eoi_exits_saved_per_interrupt
        diagnostics.append(f"EOI exits saved per injected interrupt {_num(head.get('value'))}{_ci(head.get('ci'))} "
                           f"({w.treatment} vs {w.baseline})")
    own = w.own_saved
    if own:
        diagnostics.append(f"EOI exits saved per workload interrupt {_num(own.get('diff'))}{_ci(own.get('diff_ci'))} "
                           f"({', '.join(own.get('sources') or [])})")
    exit_m = w.metrics.get("kvm_exit")
    if isinstance(exit_m, Mapping):
        diagnostics.append(f"kvm_exit reduction {_num(exit_m.get('reduction'))}{_ci(exit_m.get('reduction_ci'))}")
    for arm in result.arms:
        pv = _pv_eoi(result, w.workload, arm)
        if pv:
            diagnostics.append(f"arm {arm}: kvm_pv_eoi={pv}")
    case = Case(name, subtests=subtests, diagnostics=diagnostics)
    if w.verdict == "fail" and case.passed:  # a reason no condition above shows (e.g. a new check)
        subtests.append(Case("verdict", ok=False, diagnostics=list(w.reasons)))
    if not subtests:
        case.ok = w.verdict == "pass"
    return case


def result_cases(result: Result, prefix: str = "") -> list[Case]:
    """The top-level tests of one result: one per workload, or one for an A/B that measured nothing."""
    if not result.workloads:
        name = prefix + "pveoi" if prefix else "pveoi"
        if result.verdict == "not-measurable":
            return [Case(name, directive="SKIP", reason=result.reason or "not measurable")]
        if result.verdict == "pass":
            return [Case(name)]
        fix = (result.error or {}).get("fix")
        return [Case(name, ok=False, directive="ERROR", reason=result.reason or result.verdict,
                     diagnostics=[f"fix: {fix}"] if fix else [])]
    return [workload_case(result, w, prefix + name) for name, w in result.workloads.items()]


def render(results: Sequence[Result]) -> str:
    """KTAP version 1 for ``results``: one top-level test per workload of each result.

    With several results (a history), each test is named ``<runner>.<workload>``
    and the first lines say which run each came from.
    """
    cases: list[Case] = []
    for result in results:
        runner = str(result.runner.get("id") or result.runner.get("hostname") or "")
        prefix = f"{runner}." if len(results) > 1 and runner else ""
        got = result_cases(result, prefix)
        head = (f"pveoi {result.pveoi_version}, run {result.created}, runner {runner or '?'}, "
                f"host {result.host.get('chosen', '?')}")
        got[0].diagnostics.insert(0, head)
        cases += got
    return format_cases(cases)
