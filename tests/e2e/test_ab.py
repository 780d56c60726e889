"""The real A/B: kvm-pv-eoi=on vs off under real KVM (directly or through the virtual host)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm


def run_ab(workload: str, tmp_path: Path, runs: int = 3) -> dict:  # type: ignore[type-arg]
    out = tmp_path / "result.json"
    history = tmp_path / "history"
    history.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "e2e.cli", "ab", "--workload", workload, "--runs", str(runs), "--json", str(out),
         "--history", str(history)],
        capture_output=True, text=True, timeout=3000,
    )
    assert out.is_file(), f"no result (exit {proc.returncode}): {proc.stderr[-3000:]}"
    doc = json.loads(out.read_text())
    assert len(list(history.glob("*.json"))) == 1
    assert proc.returncode == {"pass": 0, "fail": 1, "not-measurable": 2}[doc["verdict"]], proc.stderr[-2000:]
    if doc["verdict"] == "not-measurable":
        pytest.skip(f"PV EOI is not measurable here: {doc['reason']}")
    return dict(doc, _stdout=proc.stdout, _stderr=proc.stderr)


def check_pv_eoi_claim(doc: dict, workload: str, min_saved: float) -> None:  # type: ignore[type-arg]
    w = doc["workloads"][workload]
    assert w["verdict"] == "pass", (w["reasons"], doc["_stdout"][-3000:])
    on_runs = doc["arms"]["on"]["runs"][workload]
    off_runs = doc["arms"]["off"]["runs"][workload]
    assert len(on_runs) == len(off_runs) == doc["runs_per_arm"]
    assert all(r["counts"]["kvm:kvm_pv_eoi"] > 0 for r in on_runs)
    assert all(r["counts"]["kvm:kvm_pv_eoi"] == 0 for r in off_runs)
    assert all(r["qmp"]["kvm_pv_eoi"] == [True] * len(r["qmp"]["kvm_pv_eoi"]) for r in on_runs)
    assert all(not any(r["qmp"]["kvm_pv_eoi"]) for r in off_runs)
    assert w["eoi_exits_saved_per_interrupt"]["value"] >= min_saved
    assert w["eoi_exits_saved_per_interrupt"]["ci"][0] > 0
    for a in w["agreement"]:
        assert a["ok"], a
    # Counted on the window only: far fewer exits than a boot's worth.
    assert all(r["counts"]["kvm:kvm_inj_virq"] >= 200 for r in on_runs + off_runs)


def test_timer_ab(tmp_path: Path) -> None:
    doc = run_ab("timer", tmp_path)
    check_pv_eoi_claim(doc, "timer", 0.9)
    assert doc["host"]["chosen"] in ("direct", "virtual")


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["ipi", "block", "net"])
def test_other_workloads_give_honest_verdicts(workload: str, tmp_path: Path) -> None:
    doc = run_ab(workload, tmp_path)
    w = doc["workloads"][workload]
    if w["verdict"] == "pass":
        check_pv_eoi_claim(doc, workload, w["thresholds"]["min_eoi_saved_per_interrupt"])
    else:
        pytest.fail(f"{workload}: {w['verdict']}: {w['reasons']}")
