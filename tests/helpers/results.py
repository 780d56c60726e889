"""Synthetic result documents and histories.

A synthetic run is a real schema-2 result document whose per-rep counts are
made so that each rep's "EOI exits saved per interrupt" is a chosen value.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any

#: Interrupts injected in each synthetic rep.
INJ = 1000


def arm_runs(saved: list[float]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The on and off arms' per-rep counts, one rep per value of ``saved`` (EOI exits saved per interrupt)."""
    on, off = [], []
    for rep, s in enumerate(saved):
        pv = round(s * INJ)
        on.append({"rep": rep, "counts": {"kvm:kvm_inj_virq": INJ, "kvm:kvm_eoi": INJ, "kvm:kvm_pv_eoi": pv,
                                          "kvm:kvm_exit": 4 * INJ - pv}})
        off.append({"rep": rep, "counts": {"kvm:kvm_inj_virq": INJ, "kvm:kvm_eoi": INJ, "kvm:kvm_pv_eoi": 0,
                                           "kvm:kvm_exit": 4 * INJ}})
    return on, off


def workload_doc(saved: list[float], verdict: str) -> dict[str, Any]:
    """A workload's analysed section with ``verdict``, its figures taken from ``saved``."""
    if verdict == "not-measurable":
        return {"verdict": verdict, "reasons": ["too few interrupts"], "metrics": {},
                "eoi_exits_saved_per_interrupt": None, "treatment": "on", "baseline": "off"}
    med = statistics.median(saved)
    return {
        "verdict": verdict, "reasons": [] if verdict == "pass" else ["kvm_pv_eoi was 0 in an on run"],
        "treatment": "on", "baseline": "off", "description": "synthetic",
        "eoi_exits_saved_per_interrupt": {"value": med, "ci": [min(saved), max(saved)], "limit": 1.0},
        "metrics": {"kvm_exit": {"off_median": 4.0, "on_median": 4.0 - med, "reduction": med / 4,
                                 "reduction_ci": [min(saved) / 4, max(saved) / 4],
                                 "off_ci": [4.0, 4.0], "on_ci": [4 - max(saved), 4 - min(saved)]},
                    "kvm_exit[MSR]": {"off_median": 3.0, "on_median": 3.0 - med}},
    }


def make_doc(n: int, workloads: dict[str, tuple[list[float], str]], runner: str = "r1",
             host: str = "virtual") -> dict[str, Any]:
    """Run ``n`` of a history (its ``created`` time follows from ``n``) by ``runner``: each workload's
    ``(saved per rep, verdict)``."""
    arms: dict[str, Any] = {"on": {"settings": {"kvm_pv_eoi": True}, "runs": {}},
                            "off": {"settings": {"kvm_pv_eoi": False}, "runs": {}}}
    docs = {}
    for name, (saved, verdict) in workloads.items():
        on, off = arm_runs(saved) if verdict != "not-measurable" else ([], [])
        arms["on"]["runs"][name], arms["off"]["runs"][name] = on, off
        docs[name] = workload_doc(saved, verdict)
    verdicts = [v for _, v in workloads.values()]
    return {
        "schema": 2, "created": f"2026-11-{1 + n // 24:02d}T{n % 24:02d}:00:00Z", "runs_per_arm": 3,
        "verdict": "fail" if "fail" in verdicts else ("pass" if "pass" in verdicts else "not-measurable"),
        "runner": {"id": runner, "hostname": runner, "doctor": [{"name": "kvm", "status": "ok", "detail": "x"}]},
        "host": {"chosen": host, "reason": "test"}, "arms": arms, "workloads": docs,
    }


def write_history(root: Path, docs: list[dict[str, Any]]) -> Path:
    """``docs`` as the result files of a history directory ``root``, in order; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (root / f"run{i:03d}-{doc['runner'].get('id', 'v1')}.json").write_text(json.dumps(doc))
    return root


def noisy(rng: random.Random, mean: float, sd: float = 0.02, n: int = 3) -> list[float]:
    """``n`` reps around ``mean`` (Gaussian, standard deviation ``sd``)."""
    return [rng.gauss(mean, sd) for _ in range(n)]


