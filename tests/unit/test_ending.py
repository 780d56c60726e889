"""The exit classifier on recorded evidence: QMP events, console tails and QEMU logs as real TCG
guests under pveoi's argv (``-no-reboot``) left them (2026-11-30, QEMU 7.2, the 6.1 guest kernel),
plus textbook lines for what a test cannot provoke on demand (OOM, triple fault, a QEMU error)."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.errors import Kind
from e2e.vm import ending
from e2e.vm.ending import ExitCause, classify_exit


def shutdown(reason: str, guest: bool = True) -> list[dict[str, Any]]:
    return [{"timestamp": {"seconds": 1796005076, "microseconds": 224923}, "event": "NIC_RX_FILTER_CHANGED",
             "data": {"path": "/machine/peripheral-anon/device[0]/virtio-backend"}},
            {"timestamp": {"seconds": 1796005076, "microseconds": 793032}, "event": "SHUTDOWN",
             "data": {"guest": guest, "reason": reason}}]


READY = "pveoi-guest-pveoi: unavailable\r\npveoi-guest-ready uptime=3.32\r\n"
PANIC_TAIL = (READY + "sysrq: Trigger a crash\r\nKernel panic - not syncing: sysrq triggered crash\r\n"
              "CPU: 0 PID: 56 Comm: sh Not tainted 6.1.192 #1 \r\nCall Trace:\r\n <TASK>\r\n"
              " ? 0xffffffff81392c0d\r\n </TASK>\r\nKernel Offset: disabled\r\n")
OOM_TAIL = (READY + "pveoi-load invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0\r\n"
            "Out of memory: Killed process 57 (pveoi-load) total-vm:262144kB, anon-rss:250000kB\r\n"
            "Kernel panic - not syncing: System is deadlocked on memory\r\n")
SIGTERM_LOG = "qemu-system-x86_64: terminating on signal 15 from pid 2430 (/work/venv-evidence/bin/python)\n"

CASES = [
    # (id, events, console, qemu log, exit status, class, the one-line description)
    ("sysrq-b", shutdown("guest-reset"), READY + "sysrq: Resetting\r\n", "", 0, ending.GUEST_RESET,
     "guest reset (SHUTDOWN reason guest-reset; console: 'sysrq: Resetting')"),
    ("reboot -f", shutdown("guest-reset"), READY + "reboot: Restarting system\r\n", "", 0, ending.GUEST_RESET,
     "guest reset (SHUTDOWN reason guest-reset; console: 'reboot: Restarting system')"),
    ("poweroff -f", shutdown("guest-shutdown"), READY + "reboot: Power down\r\n", "", 0, ending.POWEROFF,
     "guest poweroff (SHUTDOWN reason guest-shutdown; console: 'reboot: Power down')"),
    ("sysrq-c panic", shutdown("guest-reset"), PANIC_TAIL, "", 0, ending.PANIC,
     "panic (SHUTDOWN reason guest-reset; console: 'Kernel panic - not syncing: sysrq triggered crash')"),
    ("oom panic", shutdown("guest-reset"), OOM_TAIL, "", 0, ending.OOM,
     "OOM (SHUTDOWN reason guest-reset; console: 'Out of memory: Killed process 57 (pveoi-load) "
     "total-vm:262144kB, anon-rss:250000kB'; console: 'Kernel panic - not syncing: System is deadlocked on memory')"),
    ("triple fault, unannounced", shutdown("guest-reset"), READY, "", 0, ending.TRIPLE_FAULT,
     "triple fault (SHUTDOWN reason guest-reset; console: no reset, panic or shutdown announced by the guest kernel)"),
    ("triple fault, TCG -d cpu_reset", shutdown("guest-reset"), READY, "CPU Reset (CPU 0)\nTriple fault\n", 0,
     ending.TRIPLE_FAULT, "triple fault (SHUTDOWN reason guest-reset; QEMU log: 'Triple fault')"),
    ("SIGTERM", shutdown("host-signal", guest=False), READY, SIGTERM_LOG, 0, ending.KILLED,
     "killed by signal 15 (SIGTERM) from pid 2430 (/work/venv-evidence/bin/python) (SHUTDOWN reason host-signal, "
     "not the guest; QEMU log: 'terminating on signal 15 from pid 2430 (/work/venv-evidence/bin/python)')"),
    ("SIGKILL", shutdown("guest-reset")[:1], READY, "", -9, ending.KILLED,
     "killed by signal 9 (SIGKILL) (exit status -9; no SHUTDOWN event)"),
    ("QMP quit", shutdown("host-qmp-quit", guest=False), READY, "", 0, ending.HOST_QUIT,
     "host quit (QMP quit) (SHUTDOWN reason host-qmp-quit, not the guest)"),
    ("QMP system_reset", shutdown("host-qmp-system-reset", guest=False), READY, "", 0, ending.HOST_RESET,
     "host reset (QMP system_reset) (SHUTDOWN reason host-qmp-system-reset, not the guest)"),
    ("pvpanic", [{"event": "GUEST_PANICKED", "data": {"action": "pause"}}, *shutdown("guest-panic")], READY, "", 0,
     ending.PANIC, "panic (SHUTDOWN reason guest-panic; GUEST_PANICKED action pause)"),
    ("KVM error", [], READY, "qemu-system-x86_64: kvm run failed Bad address\n", 1, ending.QEMU_ERROR,
     "qemu error (exit code 1; QEMU log: 'qemu-system-x86_64: kvm run failed Bad address')"),
    ("nothing to go by", [], READY, "", 0, ending.UNKNOWN,
     "unknown (exit code 0; no SHUTDOWN event; console's last line: 'pveoi-guest-ready uptime=3.32')"),
]


@pytest.mark.parametrize(("events", "console", "qemu_log", "code", "cls", "said"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_each_way_a_qemu_ends_is_named_from_its_evidence(events: list[dict[str, Any]], console: str, qemu_log: str,
                                                         code: int, cls: str, said: str) -> None:
    cause = classify_exit(events, console, qemu_log, code)
    assert cause.cls == cls and cause.describe() == said and cause.exitcode == code
    assert cause.cls in ending.CLASSES
    assert cause.kind is (Kind.FINDING if cls == ending.PANIC else Kind.INFRASTRUCTURE)
    assert cause.fix and "\n" not in said


def test_a_running_qemu_has_no_exit_to_classify() -> None:
    assert classify_exit([], READY, "", None).cls == ending.RUNNING


def test_an_oom_kill_long_before_an_unrelated_panic_is_not_the_cause() -> None:
    console = READY + "Out of memory: Killed process 60 (dd)\r\n" + PANIC_TAIL
    assert classify_exit(shutdown("guest-reset"), console, "", 0).cls == ending.OOM  # first seen: OOM
    later = PANIC_TAIL + "Out of memory: Killed process 60 (dd)\r\n"
    assert classify_exit(shutdown("guest-reset"), later, "", 0).cls == ending.PANIC


def test_a_printk_timestamp_is_not_quoted() -> None:
    cause = classify_exit(shutdown("guest-reset"), "[   12.345678] sysrq: Resetting\r\n", "", 0)
    assert cause.evidence == ("SHUTDOWN reason guest-reset", "console: 'sysrq: Resetting'")


def test_without_a_shutdown_event_the_console_still_tells_reset_from_poweroff() -> None:
    """A SHUTDOWN lost with the QMP connection: the kernel's own words decide."""
    assert classify_exit([], READY + "sysrq: Resetting\r\n", "", 0).cls == ending.GUEST_RESET
    assert classify_exit([], READY + "reboot: Power down\r\n", "", 0).cls == ending.POWEROFF


def test_the_cause_round_trips_as_json() -> None:
    cause = ExitCause(ending.GUEST_RESET, ("SHUTDOWN reason guest-reset",), "", 0)
    assert cause.to_json() == {"class": "guest reset", "evidence": ["SHUTDOWN reason guest-reset"], "detail": "",
                               "exitcode": 0}
