"""pveoi's pytest plugin booting real guests (TCG) through pytester, as another project's suite would:
an e2e test, so it uses this session's cached guest kernel (tests/unit builds and boots nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def real_cache(monkeypatch: pytest.MonkeyPatch, guest_kernel: Path) -> Path:
    """pveoi's cache as this session sees it (its guest kernel built or a hit), kept for the inner
    session (pytester points HOME at its temp dir, which would make the inner session build a kernel
    into an empty cache)."""
    from e2e.build.cache import cache_root

    root = cache_root()
    monkeypatch.setenv("PVEOI_CACHE", str(root))
    return root


@pytest.mark.qemu
def test_a_failing_test_keeps_its_guests_logs(real_cache: Path, pytester: pytest.Pytester, tmp_path: Path) -> None:
    """A real TCG boot through the fixtures: QMP, SSH, console, /proc/interrupts; counting KVM exits
    under TCG is refused; the failed test's console and QEMU logs land in --pveoi-results."""
    pytester.makepyfile('''
import pytest
from e2e.errors import CapabilityError

@pytest.mark.qemu
@pytest.mark.pveoi_guest(smp=2, pv_eoi=False, append="pveoi.example=1")
def test_boots_then_fails(pveoi_guest):
    assert pveoi_guest.accel == "tcg" and len(pveoi_guest.vcpu_tids) == 2
    assert pveoi_guest.qmp("query-status")["status"] == "running"
    assert "pveoi.example=1" in pveoi_guest.run(["cat", "/proc/cmdline"]).stdout
    assert len(pveoi_guest.interrupts()["LOC"]) == 2
    assert pveoi_guest.console.logpath.exists()
    with pytest.raises(CapabilityError, match="under tcg"):
        pveoi_guest.count_kvm()
    assert False, "on purpose"

@pytest.mark.qemu
def test_two_guests_and_a_pass(pveoi_boot):
    a, b = pveoi_boot(smp=1), pveoi_boot(smp=1, name="second")
    assert a.run(["true"]).exit_status == 0 and b.machine.spec.name == "second"
''')
    results = tmp_path / "results"
    result = pytester.runpytest_subprocess("--pveoi-accel", "tcg", "--pveoi-results", str(results),
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*guest logs saved in*pveoi-logs*"])
    (saved,) = list(results.iterdir())
    assert "test_boots_then_fails" in saved.name
    logs = sorted(p.name for p in (saved / "pveoi-logs").iterdir())
    assert any(n.endswith("console.log") for n in logs) and any(n.endswith("qemu.log") for n in logs)
    console = next((saved / "pveoi-logs").glob("*console.log")).read_text()
    assert "pveoi-guest-ready" in console
    assert len(list(results.iterdir())) == 1, "a passing test keeps nothing"
