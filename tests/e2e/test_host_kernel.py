"""The host (KVM) kernel under test, through the virtual KVM host: a planted lapic.c breakage
(tests/fixtures/host-pv-eoi-never-armed) fails the A/B while the stock host kernel passes in
the same run; a direct host refuses a host kernel under test in one line before any boot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "host-pv-eoi-never-armed"


def pveoi(*args: str, timeout: float = 5400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "e2e.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.kvm
@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_a_planted_host_regression_fails_and_the_stock_host_passes(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = pveoi("ab", "--host", "virtual", "--host-patches", str(FIXTURE), "--workload", "timer", "--runs", "3",
                 "--json", str(out))
    assert out.is_file(), proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    comps = {(c["kind"], c["a"], c["b"]): c for c in doc["workloads"]["timer"]["comparisons"]}
    stock = comps[("effect", "off", "on")]
    tested = comps[("effect", "off-test-host", "on-test-host")]
    assert stock["verdict"] == "pass" and stock["headline"]["value"] > 0.9
    assert tested["verdict"] == "fail"
    assert all(r["counts"]["kvm:kvm_pv_eoi"] == 0 for r in doc["arms"]["on-test-host"]["runs"]["timer"])
    assert comps[("difference", "on", "on-test-host")]["verdict"] == "regression"
    kernels = doc["host"]["virtual_host"]["kernels"]
    assert len(kernels) == 2 and any(k.get("patches") for k in kernels.values()), kernels
    assert doc["arms"]["on-test-host"]["settings"]["origin"]["host_patches"] == str(FIXTURE)


def test_a_direct_host_refuses_a_host_kernel_under_test_before_any_boot(tmp_path: Path) -> None:
    proc = pveoi("ab", "--host", "direct", "--host-patches", str(FIXTURE), "--json", str(tmp_path / "r.json"),
                 timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "pveoi: error: a host kernel under test can only be booted by the virtual KVM host; fix: add --host "
        "virtual (a hardware host cannot swap its kernel without a reboot)")
    assert not (tmp_path / "r.json").exists()
