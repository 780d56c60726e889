"""
What reports and the analysis read out of summarized traces (:func:`e2e.measure.trace.summarize`'s
documents): the per-vector table summed over runs, the marker windows' totals, PV EOI taken when
armed, and the trapped share of a workload's own interrupts.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .trace import REASONS


def vector_rows(traces: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per vector (by name, then number), summed over the given runs' traces and vCPUs:
    ``{name, vector, injected, pv, trapped, reasons}``, the busiest first."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for t in traces:
        for v in t.get("vectors", []):
            key = (str(v.get("name", "?")), int(v["vector"]))
            row = rows.setdefault(key, {"name": key[0], "vector": key[1], "injected": 0, "pv": 0, "trapped": 0,
                                        "reasons": Counter()})
            for k in ("injected", "pv", "trapped"):
                row[k] += int(v.get(k, 0))
            row["reasons"].update(v.get("reasons", {}))
    out = sorted(rows.values(), key=lambda r: (-(r["pv"] + r["trapped"]), r["vector"]))
    for r in out:
        r["reasons"] = {k: r["reasons"][k] for k in REASONS if r["reasons"][k]}
    return out


def window_totals(traces: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``host_eoi``, ``host_pv_eoi``, ``guest_skipped`` and ``guest_written`` in the marker windows."""
    out: Counter[str] = Counter()
    for t in traces:
        for v in t.get("vcpus", []):
            for k in ("host_eoi", "host_pv_eoi", "guest_skipped", "guest_written", "injected"):
                out[k] += int(v.get(k, 0) or 0)
    return dict(out)


def vector_label(row: Mapping[str, Any]) -> str:
    """``LOC (0xec)``; a bare name for vector -1 (an EOI with nothing in service)."""
    return f"{row['name']} (0x{row['vector']:x})" if row["vector"] >= 0 else str(row["name"])


def format_vector_rows(rows: Sequence[Mapping[str, Any]], limit: int = 8) -> list[str]:
    """The per-vector table's text lines."""
    lines = [f"{'vector':<22} {'injected':>8} {'PV EOI':>8} {'trapped':>8}  why trapped"]
    for r in rows[:limit]:
        why = ", ".join(f"{k} {n}" for k, n in r["reasons"].items())
        lines.append(f"{vector_label(r):<22} {r['injected']:>8} {r['pv']:>8} {r['trapped']:>8}  {why}")
    if len(rows) > limit:
        rest = rows[limit:]
        lines.append(f"{f'({len(rest)} more)':<22} {sum(r['injected'] for r in rest):>8} "
                     f"{sum(r['pv'] for r in rest):>8} {sum(r['trapped'] for r in rest):>8}")
    return lines


def armed_taken(trace: Mapping[str, Any]) -> float | None:
    """PV EOIs per EOI that KVM armed, in one run's marker windows: ``pv / (pv + trapped with no
    reason in the trace)``. A trapped EOI with no disarm in the trace (no IRR pending, nesting,
    level trigger or exit before the EOI) is one the guest wrote although PV EOI was armed: a
    clean guest gives 1.0 on every workload, whatever the timing of its interrupts; a guest
    that writes 1 EOI in 100 natively gives 0.99. None without a traced window."""
    vcpus = [v for v in trace.get("vcpus", []) if v.get("window")]
    if not vcpus:
        return None
    pv = sum(int(v.get("host_pv_eoi", 0)) for v in vcpus)
    missed = sum(int(x.get("reasons", {}).get("not explained by the trace", 0)) for x in trace.get("vectors", []))
    return pv / (pv + missed) if pv + missed else None


def source_counts(trace: Mapping[str, Any], sources: Sequence[str]) -> tuple[int, int] | None:
    """``(trapped, injected)`` over one run's vectors whose guest name matches one of ``sources``
    (shell patterns, e.g. ``virtio*-input.*``: a workload's own interrupts, see
    :attr:`e2e.model.workloads.Workload.sources`), in the marker windows; None when the run injected
    none of them (or was not traced)."""
    trapped = injected = 0
    for v in trace.get("vectors", []):
        if any(fnmatch.fnmatchcase(str(v.get("name", "")), p) for p in sources):
            trapped += int(v.get("trapped", 0))
            injected += int(v.get("injected", 0))
    return (trapped, injected) if injected else None


def source_trapped(trace: Mapping[str, Any], sources: Sequence[str]) -> float | None:
    """Trapped EOIs per injected interrupt of the workload's own ``sources`` (:func:`source_counts`)."""
    counts = source_counts(trace, sources)
    return counts[0] / counts[1] if counts else None
