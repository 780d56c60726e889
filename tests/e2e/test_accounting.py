"""Exact host/guest accounting through the virtual KVM host (guest_patches/0003's window markers).

* On every workload, every agreement entry (one per vCPU and run) has host kvm_pv_eoi ==
  guest skipped EOIs, and the per-vector counts add up to the window's kvm_eoi/kvm_pv_eoi.
* A host kernel whose kvm_pv_eoi tracepoint misses 1 PV EOI in 256
  (tests/fixtures/host-pv-eoi-untraced) fails with a finding naming the vCPU and the
  direction, while the stock host kernel passes in the same run; the old 10 % + 50
  tolerance would have passed it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
UNTRACED = REPO / "tests" / "fixtures" / "host-pv-eoi-untraced"


def pveoi(*args: str, timeout: float = 5400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "e2e.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)


def check_vectors_add_up(run: dict[str, Any]) -> None:
    trace = run["trace"]
    assert trace["marks"] and trace["lost"] == 0, trace
    for v in trace["vcpus"]:
        mine = [x for x in trace["vectors"] if x["vcpu"] == v["vcpu"]]
        assert sum(x["pv"] for x in mine) == v["host_pv_eoi"]
        assert sum(x["pv"] + x["trapped"] for x in mine) == v["host_eoi"]
        assert sum(sum(x["reasons"].values()) for x in mine) == v["host_trapped"]
    # The window lies inside perf stat's: never more than the run's counts.
    assert sum(v["host_eoi"] for v in trace["vcpus"]) <= run["counts"]["kvm:kvm_eoi"]
    assert sum(v["host_pv_eoi"] for v in trace["vcpus"]) <= run["counts"]["kvm:kvm_pv_eoi"]


@pytest.mark.kvm
@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("workload", ["timer", "ipi", "block", "net"])
def test_every_vcpu_accounts_exactly(workload: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = pveoi("ab", "--host", "virtual", "--workload", workload, "--runs", "2", "--json", str(out))
    assert out.is_file(), proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    w = doc["workloads"][workload]
    assert proc.returncode == 0, w["reasons"]
    entries = w["agreement"]
    assert len(entries) == 2 * 2 * 2  # arms x reps x vCPUs
    assert all(a["vcpu"] in (0, 1) and a["host_pv_eoi"] == a["guest_skipped"] and a["ok"] for a in entries), entries
    assert sum(a["guest_skipped"] for a in entries if a["arm"] == "on") > 0
    for arm in ("on", "off"):
        for run in doc["arms"][arm]["runs"][workload]:
            check_vectors_add_up(run)
    off = [x for r in doc["arms"]["off"]["runs"][workload] for x in r["trace"]["vectors"]]
    assert all(x["pv"] == 0 and set(x["reasons"]) <= {"PV EOI off"} for x in off)


@pytest.mark.kvm
@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_a_host_that_leaves_pv_eois_untraced_is_a_finding(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = pveoi("ab", "--host", "virtual", "--host-patches", str(UNTRACED), "--workload", "timer", "--runs", "2",
                 "--json", str(out))
    assert out.is_file(), proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    w = doc["workloads"]["timer"]
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for a in w["agreement"]:
        by_arm.setdefault(a["arm"], []).append(a)
    assert all(a["ok"] for arm in ("on", "off") for a in by_arm[arm])
    bad = [a for a in by_arm["on-test-host"] if not a["ok"]]
    assert bad and all(a["guest_skipped"] > a["host_pv_eoi"] for a in bad)
    # A handful per thousand: the old tolerance (10 % + 50) would have passed every one.
    assert all(a["guest_skipped"] - a["host_pv_eoi"] <= 50 + 0.1 * a["guest_skipped"] for a in bad)
    reasons = [r for r in w["reasons"] if "EOIs the guest skipped were completed with no kvm_pv_eoi on the host" in r]
    assert reasons and all(r.startswith("vCPU ") and "arm on-test-host" in r for r in reasons), w["reasons"]
    assert not any("arm on," in r or "arm off," in r for r in w["reasons"])
