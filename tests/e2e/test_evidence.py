"""Evidence of failed attempts, end to end with real TCG guests: a guest reset mid-command is
named as one (from QEMU's SHUTDOWN event and the guest's console), and an A/B retry keeps the
logs of both attempts side by side, linked from the structured attempt record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from e2e.build.image import READY_PATTERN
from e2e.errors import Kind, QemuExited
from e2e.model.plan import DEFAULT_ARMS
from e2e.model.workloads import Workload
from e2e.run import ab
from e2e.vm.argv import MachineSpec
from e2e.vm.ending import GUEST_RESET, RUNNING
from e2e.vm.machine import Machine
from tests.helpers.measurable import not_measurable
from tests.helpers.processes import qemu_pids, wait_no_new_qemu

pytestmark = pytest.mark.qemu

#: A real reset from inside the guest: the kernel's emergency restart (CONFIG_MAGIC_SYSRQ is in
#: images/kernel/guest.config; /proc/sysrq-trigger works whatever kernel.sysrq says).
RESET = ("sh", "-c", "echo b > /proc/sysrq-trigger; sleep 60")


def test_a_guest_reset_mid_command_is_reported_as_a_guest_reset(guest_kernel: Path, guest_image,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    before = qemu_pids()
    spec = MachineSpec(kernel=guest_kernel, initrd=guest_image.initrd, accel="tcg", name="reset")
    with Machine(spec, READY_PATTERN, artifacts=tmp_path) as m:
        m.wait_ready(180)
        ssh = m.ssh(guest_image.identity.private_key, guest_image.host_key_line)
        start = time.monotonic()
        with pytest.raises(QemuExited) as err:
            ssh.run(RESET, timeout=60)
        took = time.monotonic() - start
    text = str(err.value)
    assert "\n" not in text and text.startswith("SSH connection dropped while running `sh -c")
    assert "exited mid-command: guest reset (SHUTDOWN reason guest-reset; console: 'sysrq: Resetting')" in text
    assert err.value.cause == GUEST_RESET and err.value.kind is Kind.INFRASTRUCTURE
    assert err.value.exitcode == 0, "-no-reboot: QEMU exits on the guest's reset, with code 0"
    assert m.ended is not None and m.ended.cls == GUEST_RESET
    assert [e["data"] for e in m.events if e["event"] == "SHUTDOWN"] == [{"guest": True, "reason": "guest-reset"}]
    assert took < 30, f"the reset took {took:.1f}s to be reported"
    assert f"({tmp_path}/reset-console.log and {tmp_path}/reset-qemu.log)" in text
    assert not wait_no_new_qemu(before)


@dataclass(frozen=True)
class ResetOnce(Workload):
    """A workload whose first attempt resets its guest mid-command; later attempts just run.
    The state is the test's (a fresh guest cannot know it is a retry): no hook in pveoi."""

    calls: list[int] = field(default_factory=list)

    def argv(self, port: int | None = None, vcpus: int | None = None) -> list[str]:
        self.calls.append(1)
        return list(RESET) if len(self.calls) == 1 else ["sh", "-c", "echo measured"]


def test_an_ab_retry_keeps_both_attempts_logs_side_by_side(guest_kernel: Path, guest_image,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if ab.cpu_vendor() == "unknown":  # no svm/vmx flag: count svm's exit reasons (all zero under TCG anyway)
        monkeypatch.setattr(ab, "cpu_vendor", lambda cpuinfo=None: "svm")
    try:
        events = ab.perf_events(ab.cpu_vendor(), ab.list_kvm_tracepoints())
    except ab.PveoiError as err:
        not_measurable(f"this host has no kvm tracepoints to count: {err}")
    logs = tmp_path / "logs"
    setup = ab.Setup(kernel=guest_kernel, initrd=guest_image.initrd, private_key=guest_image.identity.private_key,
                     host_key_line=guest_image.host_key_line, artifacts=logs, accel="tcg")
    workload = ResetOnce("evidence", ("true",), ops=1, description="reset once", timeout=60, smp=1)
    outcome = ab.Outcome()
    before = qemu_pids()
    ab._run_with_retries(setup, DEFAULT_ARMS[0], workload, events, (0,), 1, outcome)
    assert not wait_no_new_qemu(before)
    # Attempt 1 was reset and retried; attempt 2 measured.
    assert len(outcome.runs) == 1 and outcome.runs[0].attempt == 2 and outcome.runs[0].workload_output == "measured"
    assert not outcome.errors and len(outcome.retried) == 1 and "guest reset" in outcome.retried[0]
    [first] = outcome.attempts
    assert (first.arm, first.rep, first.attempt, first.outcome) == ("on", 0, 1, "retried")
    assert (first.kind, first.cls) == ("infrastructure", GUEST_RESET)
    assert first.evidence == ("SHUTDOWN reason guest-reset", "console: 'sysrq: Resetting'")
    assert set(first.logs) >= {"evidence-on-0-console.log", "evidence-on-0-qemu.log",
                               "evidence-on-0-perf-stderr.log"}
    # Both attempts' logs, side by side, under their own names: nothing of attempt 1 overwritten.
    names = {p.name for p in logs.iterdir()}
    assert {"evidence-on-0-console.log", "evidence-on-0-qemu.log", "evidence-on-0-perf-stderr.log",
            "evidence-on-0-attempt2-console.log", "evidence-on-0-attempt2-qemu.log",
            "evidence-on-0-attempt2-perf.csv"} <= names, names
    assert "sysrq: Resetting" in (logs / "evidence-on-0-console.log").read_text()
    assert "sysrq: Resetting" not in (logs / "evidence-on-0-attempt2-console.log").read_text()
    assert "kvm:kvm_exit" in (logs / "evidence-on-0-attempt2-perf.csv").read_text()
    assert RUNNING not in first.cls


def test_an_ssh_connect_ends_at_once_when_qemu_is_gone(guest_kernel: Path, guest_image,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path) -> None:
    """QEMU gone before SSH answers: the connect names how it ended at once, not after its deadline.
    (QMP system_reset here, which -no-reboot turns into QEMU's exit: a host reset, not the guest's.)"""
    from e2e.vm.ending import HOST_RESET
    from e2e.vm.ssh import GuestSsh

    spec = MachineSpec(kernel=guest_kernel, initrd=guest_image.initrd, accel="tcg", name="gone")
    with Machine(spec, READY_PATTERN, artifacts=tmp_path) as m:
        m.wait_ready(180)
        port = m.ssh_port()
        m.qmp("system_reset")
        ssh = GuestSsh(port, guest_image.identity.private_key, guest_image.host_key_line, explain_drop=m.exit_error)
        start = time.monotonic()
        with pytest.raises(QemuExited) as err:
            ssh.connect(timeout=60)
        assert time.monotonic() - start < 15
    assert err.value.cause == HOST_RESET
    assert "exited before SSH answered: host reset (QMP system_reset) (SHUTDOWN reason host-qmp-system-reset, " \
           "not the guest)" in str(err.value)
