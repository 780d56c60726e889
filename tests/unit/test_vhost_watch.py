"""The virtual host's liveness watch: heartbeat age, the CPU state a stall reports, and how a
restarted virtual host is recorded."""

from __future__ import annotations

import time
from pathlib import Path

from e2e.errors import GuestTimeout, Kind, QemuExited, VhostStalled
from e2e.run.runner import restart_record
from e2e.vm.cpus import cpu_state
from e2e.vm.vhost import STALLED, stall_reason, vhost_error

REGISTERS = """RAX=0000000000000000 RBX=ffffffff82613940 RCX=0000000000000001 RDX=0000000000000000
RSI=0000000000000087 RDI=000000000012d0ac RBP=ffffffff82603e78 RSP=ffffffff82603e58
RIP=FFFFFFFF81C8B6BE RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
"""


def test_a_stall_is_a_silent_userspace_or_a_kernel_stall_report_with_no_output_after_it() -> None:
    assert stall_reason(151.0, None, last_output=0.0, now=1000.0, limit=150.0) == (
        "no heartbeat from its userspace for 151 s")
    assert stall_reason(10.0, None, last_output=0.0, now=1000.0, limit=150.0) is None
    # The kernel said "rcu_sched detected stalls" at 800: stalled once 300 s pass with no output ...
    assert stall_reason(10.0, 800.0, last_output=700.0, now=1101.0, limit=150.0) == (
        "its kernel reported a stall 301 s ago and the command printed nothing since")
    assert stall_reason(10.0, 800.0, last_output=700.0, now=1090.0, limit=150.0) is None
    # ... but an L1 whose command went on printing after the report recovered.
    assert stall_reason(10.0, 800.0, last_output=820.0, now=2000.0, limit=150.0) is None
    # A command that prints as it goes (the inner runner) and went silent past its limit, L1 still beating.
    assert stall_reason(10.0, None, last_output=0.0, now=1261.0, limit=150.0, silence_limit=1260.0) == (
        "the command printed nothing for 1261 s (no guest takes more than 1260 s) while the machine still beat")
    assert stall_reason(10.0, None, last_output=0.0, now=1259.0, limit=150.0, silence_limit=1260.0) is None
    assert stall_reason(10.0, None, last_output=0.0, now=9999.0, limit=150.0) is None  # `pveoi vhost -- CMD`


def test_the_inner_runners_silence_limit_covers_its_slowest_guest_attempt(tmp_path: Path) -> None:
    from e2e.model.plan import Plan
    from e2e.model.workloads import WORKLOADS
    from e2e.run.runner import silence_limit

    plan = Plan(workloads=("timer", "net"), arms=(), runs=1, kernel=tmp_path / "k", image=tmp_path / "i",
                logs=tmp_path / "logs", boot_timeout=180.0)
    slowest = max(WORKLOADS[w].timeout for w in plan.workloads)
    assert silence_limit(plan) > plan.boot_timeout + slowest + 60 + 2 * 30  # boot, workload, SSH, state reads


def test_a_stuck_virtual_host_reports_its_processes_before_it_goes(tmp_path: Path) -> None:
    """What L1's init does on a ps-request (data/vhost-init.sh's heartbeat loop), played by a thread."""
    import threading

    from e2e.vm.vhost import VhostSpec, VirtualKvmHost

    ctl = tmp_path / ".pveoi-vhost"
    ctl.mkdir()
    host = VirtualKvmHost(VhostSpec(tmp_path / "bzImage"), tmp_path, None, tmp_path / "logs")
    (tmp_path / "logs").mkdir()

    def init_loop() -> None:
        for _ in range(40):
            if (ctl / "ps-request").exists():
                (ctl / "ps-request").unlink()
                (ctl / "ps").write_text("  PID  PPID STAT WCHAN  ELAPSED TIME COMMAND\n"
                                        "   58     1 Tl   do_signal_stop 12:00 00:05 python -m e2e.run.inner\n")
                return
            time.sleep(0.05)

    threading.Thread(target=init_loop, daemon=True).start()
    kept = host.report_processes(ctl, wait=5.0)
    assert kept is not None and "do_signal_stop" in kept.read_text() and kept.name.endswith("-ps.txt")
    assert host.report_processes(ctl, wait=0.3) is None  # nobody answers now: said, not raised


def test_cpu_state_reads_rip_and_hlt_from_info_registers() -> None:
    assert cpu_state(REGISTERS) == "RIP=ffffffff81c8b6be HLT=1"
    assert cpu_state("(no answer: QMP timed out)") == "RIP=? HLT=?"
    # A vCPU not yet in long mode (firmware, early boot) shows EIP: a guest stuck there says where.
    early = "EAX=00000000 EBX=00000000 ECX=00000000 EDX=00060fb1\nESI=00000000 EDI=00000000 EBP=00000000 " \
            "ESP=00000000\nEIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n"
    assert cpu_state(early) == "RIP=0000fff0 HLT=0"


def test_a_restart_is_recorded_with_its_class_evidence_and_logs(tmp_path: Path) -> None:
    stalled = vhost_error("the virtual host stalled: no heartbeat for 151 s", "stall",
                          ["CPU0 RIP=ffffffff81c8b6be HLT=0"], "x", VhostStalled)
    assert isinstance(stalled, VhostStalled) and stalled.kind is Kind.INFRASTRUCTURE
    rec = restart_record("net", 1, stalled, tmp_path / "vhost-net-1", tmp_path)
    assert rec == {"part": "net", "attempt": 1, "kind": "infrastructure", "class": STALLED,
                   "message": "the virtual host stalled: no heartbeat for 151 s; fix: x",
                   "evidence": ["CPU0 RIP=ffffffff81c8b6be HLT=0"], "logs": "vhost-net-1"}
    exited = QemuExited("QEMU exited mid-command: killed by signal (SIGKILL)", "killed by signal", ["exit -9"])
    assert restart_record("ipi", 2, exited, Path("/elsewhere"), tmp_path)["class"] == "killed by signal"
    assert restart_record("ipi", 2, GuestTimeout("late"), Path("/elsewhere"), tmp_path)["logs"] == "/elsewhere"


def test_an_inner_runs_exit_class_survives_the_way_out_of_the_virtual_host() -> None:
    """A guest the inner runner lost for good (retries spent) ends the inner run; its class
    rides in the inner result's error and comes back on the error raised outside."""
    import pytest

    from e2e.report.results import error_result
    from e2e.run.inner import raise_inner_error

    lost = QemuExited("QEMU (pid 134) exited mid-command: triple fault", "triple fault",
                      ["SHUTDOWN reason guest-reset"])
    res = error_result(lost, "direct", "inside", 3)
    assert res.error is not None and res.error["class"] == "triple fault"
    with pytest.raises(Exception) as info:
        raise_inner_error(res)
    assert getattr(info.value, "cause", None) == "triple fault" and "in the virtual KVM host" in str(info.value)
    assert "class" not in error_result(GuestTimeout("late"), "direct", "x", 3).error  # type: ignore[operator]


def _inner_run_failing_with(tmp_path: Path, monkeypatch, plan_run) -> str:  # type: ignore[no-untyped-def]
    """Run the inner runner on a one-workload plan whose ``run_plan`` is ``plan_run`` (it must raise
    GuestTimeout); the stacks file it left."""
    import json

    from e2e.model.plan import Plan
    from e2e.run import ab, inner

    monkeypatch.setattr(ab, "run_plan", plan_run)
    plan = Plan(workloads=("timer",), arms=(), runs=1, kernel=tmp_path / "bzImage", image=tmp_path / "img",
                logs=tmp_path / "logs")
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_json()))
    assert inner.run(tmp_path / "plan.json", tmp_path / "result.json") == 2
    return (tmp_path / inner.STACKS).read_text()


def test_a_long_inner_run_leaves_every_threads_stack(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Should the inner run hang where no timeout fires, its threads' stacks are on the share."""
    from e2e.run import inner

    monkeypatch.setattr(inner, "STACKS_EVERY", 0.2)

    def slow(plan: object, analyzed: bool = True, checkpoint: object = None) -> None:
        time.sleep(0.7)
        raise GuestTimeout("stuck")

    stacks = _inner_run_failing_with(tmp_path, monkeypatch, slow)
    assert "Thread 0x" in stacks and "in slow" in stacks


def test_the_inner_run_dumps_its_stacks_on_sigusr1(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What the virtual host's init sends when the outer pveoi asks what is stuck."""
    import faulthandler
    import os
    import signal

    def waits(plan: object, analyzed: bool = True, checkpoint: object = None) -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.3)
        raise GuestTimeout("stuck")

    assert "in waits" in _inner_run_failing_with(tmp_path, monkeypatch, waits)
    assert faulthandler.unregister(signal.SIGUSR1)  # still registered (to stderr) after the run: never death


def test_the_virtual_hosts_own_end_is_named_as_its_own_and_earlier_restarts_stay_with_the_error(
        tmp_path: Path) -> None:
    from e2e.report.results import error_result

    crashed = vhost_error("the virtual host stopped before the command finished: triple fault", "triple fault",
                          ["SHUTDOWN reason guest-reset"], "x")
    assert crashed.cause == "virtual host triple fault" and crashed.kind is Kind.INFRASTRUCTURE
    assert vhost_error("no words", "", (), "x").cause == ""
    panic = vhost_error("the virtual host's kernel panicked: BUG: TASK stack guard page was hit", "panic",
                        ["BUG: TASK stack guard page was hit"], "x")
    panic = panic.with_(retried=(restart_record("block", 1, crashed, tmp_path / "vhost-block-1", tmp_path),))
    doc = error_result(panic, "virtual", "x", 3).error
    assert doc is not None and doc["class"] == "virtual host panic"
    assert doc["evidence"] == ["BUG: TASK stack guard page was hit"]
    assert [(r["class"], r["logs"]) for r in doc["retried"]] == [("virtual host triple fault", "vhost-block-1")]


def test_a_qemu_that_does_not_answer_is_asked_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from e2e.errors import QmpTimeout
    from e2e.vm import cpus

    monkeypatch.setattr(cpus.time, "sleep", lambda s: None)  # the 1 s between the two samples
    asked: list[tuple[str, int]] = []

    def hmp(command: str, cpu: int) -> str:
        asked.append((command, cpu))
        raise QmpTimeout("QMP timed out", fix="-")

    got = cpus.sample(hmp, 2, lapic=True)
    assert asked == [("info registers", 0)], "after the first unanswered question, none is asked"
    assert got.states == ["CPU0 RIP=? HLT=?", "CPU1 RIP=? HLT=?"] and got.still == []
    assert "(no answer: QMP timed out" in "\n".join(got.dump)
    assert "(not asked: QEMU did not answer before)" in got.dump
