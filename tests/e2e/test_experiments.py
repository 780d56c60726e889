"""Experiments beyond on/off, end to end through real KVM (directly or the virtual host):
kernel vs kernel, 2 kernels x {on, off}, xAPIC vs x2APIC, and a guest kernel that
sets PV EOI up on CPU 0 only, which the default timer A/B must fail.

Each planted kernel comes from ``tests/fixtures/<name>/`` on top of guest_patches/
and is cached by content hash (about 4 minutes to build the first time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.kernels import fixture_kernel

pytestmark = [pytest.mark.kvm, pytest.mark.slow, pytest.mark.timeout(7200)]

REPO = Path(__file__).resolve().parents[2]


def ab(tmp: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    out = tmp / "result.json"
    proc = subprocess.run([sys.executable, "-m", "e2e.cli", "ab", "--json", str(out), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=3600)
    assert out.is_file(), f"no result (exit {proc.returncode}): {proc.stderr[-3000:]}"
    doc = json.loads(out.read_text())
    if doc["verdict"] == "not-measurable":
        if os.environ.get("PVEOI_REQUIRE_MEASURABLE") == "1":
            pytest.fail(f"PV EOI is not measurable here and PVEOI_REQUIRE_MEASURABLE=1: {doc['reason']}")
        pytest.skip(f"PV EOI is not measurable here: {doc['reason']}")
    return proc.returncode, doc, proc.stdout + proc.stderr


def arms_file(tmp: Path, *arms: str) -> Path:
    path = tmp / "arms.toml"  # under /tmp: the virtual host must see what it names
    path.write_text("\n".join(f"[[arm]]\n{a}\n" for a in arms))
    return path


@pytest.fixture(scope="module")
def broken_kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture_kernel("broken-pv-eoi", tmp_path_factory.mktemp("broken"))


def comparison(doc: dict[str, Any], workload: str, kind: str, a: str, b: str) -> dict[str, Any]:
    found = [c for c in doc["workloads"][workload]["comparisons"] if (c["kind"], c["a"], c["b"]) == (kind, a, b)]
    assert len(found) == 1, doc["workloads"][workload]["comparisons"]
    return found[0]


def test_kernel_vs_kernel_names_the_broken_arm(guest_kernel: Path, broken_kernel: Path, tmp_path: Path) -> None:
    arms = arms_file(tmp_path, f'name = "stock"\nkernel = "{guest_kernel}"',
                     f'name = "broken"\nkernel = "{broken_kernel}"')
    rc, doc, out = ab(tmp_path, "--arms", str(arms), "--workload", "timer", "--runs", "3")
    assert rc == 1, out[-3000:]
    c = comparison(doc, "timer", "difference", "stock", "broken")
    assert c["verdict"] == "regression" and c["differs_in"] == ["kernel"]
    t = c["metrics"]["trapped_eoi"]
    assert t["a_median"] < 0.05 and 0.4 < t["b_median"] < 0.6, t
    assert t["diff_ci"][0] > 0, t
    assert any("broken" in r and "trapped_eoi" not in r for r in doc["workloads"]["timer"]["reasons"])
    assert "broken traps" in out


def test_two_identical_kernels_pass_with_a_difference_spanning_zero(guest_kernel: Path, tmp_path: Path) -> None:
    arms = arms_file(tmp_path, f'name = "a"\nkernel = "{guest_kernel}"',
                     f'name = "b"\nkernel = "{guest_kernel}"\nappend = "quiet"')
    rc, doc, out = ab(tmp_path, "--arms", str(arms), "--workload", "timer", "--runs", "3")
    assert rc == 0, out[-3000:]
    c = comparison(doc, "timer", "difference", "a", "b")
    assert c["verdict"] == "ok"
    lo, hi = c["metrics"]["trapped_eoi"]["diff_ci"]
    assert lo <= 0 <= hi or abs(c["metrics"]["trapped_eoi"]["diff"]) < 0.01, c["metrics"]["trapped_eoi"]


def test_two_kernels_by_on_and_off_report_both_effects_and_their_difference(
        guest_kernel: Path, broken_kernel: Path, tmp_path: Path) -> None:
    arms = arms_file(tmp_path, f'name = "stock-on"\nkernel = "{guest_kernel}"',
                     f'name = "stock-off"\nkernel = "{guest_kernel}"\npv_eoi = false',
                     f'name = "broken-on"\nkernel = "{broken_kernel}"',
                     f'name = "broken-off"\nkernel = "{broken_kernel}"\npv_eoi = false')
    rc, doc, out = ab(tmp_path, "--arms", str(arms), "--workload", "timer", "--runs", "3")
    assert rc == 1, out[-3000:]
    stock = comparison(doc, "timer", "effect", "stock-off", "stock-on")
    broken = comparison(doc, "timer", "effect", "broken-off", "broken-on")
    assert stock["verdict"] == "pass" and stock["headline"]["value"] > 0.9
    assert broken["verdict"] == "fail" and 0.3 < broken["headline"]["value"] < 0.7
    moved = comparison(doc, "timer", "effect-difference", "stock-on/stock-off", "broken-on/broken-off")
    assert moved["verdict"] == "regression" and moved["metrics"]["eoi_saved"]["diff_ci"][1] < 0
    assert doc["workloads"]["timer"]["eoi_exits_saved_per_interrupt"]["value"] > 0.9  # the first pair's headline


def test_xapic_against_x2apic_both_with_pv_eoi(tmp_path: Path) -> None:
    arms = arms_file(tmp_path, 'name = "x2apic"', 'name = "xapic"\ncpu_flags = ["-x2apic"]',
                     'name = "xapic-off"\ncpu_flags = ["-x2apic"]\npv_eoi = false')
    rc, doc, out = ab(tmp_path, "--arms", str(arms), "--workload", "timer", "--runs", "3")
    assert rc == 0, out[-3000:]
    c = comparison(doc, "timer", "difference", "x2apic", "xapic")
    assert c["differs_in"] == ["cpu_flags"] and c["verdict"] == "ok"
    # In xAPIC mode a trapped EOI is an MMIO write (an NPF exit on SVM), not an MSR write.
    effect = comparison(doc, "timer", "effect", "xapic-off", "xapic")
    assert effect["verdict"] == "pass" and effect["headline"]["value"] > 0.9
    npf = effect["metrics"].get("kvm_exit[NPF]")
    if npf is not None:  # the SVM exit reasons (the virtual host is SVM)
        assert npf["off_median"] > 0.9 and npf["on_median"] < 0.1, npf


def test_pv_eoi_on_cpu0_only_fails_the_default_timer_ab(tmp_path: Path) -> None:
    kernel = fixture_kernel("pv-eoi-cpu0-only", tmp_path)
    rc, doc, out = ab(tmp_path, "--kernel", str(kernel), "--workload", "timer", "--runs", "3")
    assert rc == 1, out[-3000:]
    w = doc["workloads"]["timer"]
    assert w["verdict"] == "fail" and w["findings"], w
    assert all("cpu1" in f and "did not enable PV EOI" in f for f in w["findings"]), w["findings"]
    assert "cpu1 did not enable PV EOI" in out
