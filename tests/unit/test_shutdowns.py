"""KVM's record of a guest CPU's shutdown: the trace lines read, the symbol named, the evidence given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2e.vm import ending
from e2e.vm.ending import classify_exit
from e2e.vm.shutdowns import Shutdown, ShutdownRecorder, SymbolMap, describe, parse_trace, symbols_beside

#: An instance's ``trace`` with ``record-tgid`` (the layout of Linux 6.1's trace_print_context()): QEMU
#: 68's vCPU 0 shut down, another QEMU's vCPU 1 too, and a line whose thread's tgid was not saved.
TRACE = """\
# tracer: nop
#
# entries-in-buffer/entries-written: 3/3   #P:2
#
#           TASK-PID     TGID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |        |   |||||     |         |
       CPU 0/KVM-75      (     68) [001] d..1.    52.123456: kvm_exit: vcpu 0 reason shutdown rip \
0xffffffff81027ac1 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000
       CPU 1/KVM-91      (     88) [000] d..1.    60.000001: kvm_exit: vcpu 1 reason shutdown rip \
0xffffffff81000010 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000
           <...>-99      (-------) [000] d..1.    61.000001: kvm_exit: vcpu 0 reason shutdown rip \
0x1000 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000
"""

SYSTEM_MAP = """\
0000000000000000 D __per_cpu_start
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81027955 T native_machine_emergency_restart
ffffffff81027b00 t native_machine_shutdown
ffffffff81028000 D some_data
ffffffff8139b524 T __lock_text_end
ffffffff8139b528 T __kprobes_text_end
ffffffff8139b528 T __kprobes_text_start
ffffffff813a1000 T __hrtick_start
ffffffff813a2000 T __traceiter_mm_compaction_end
ffffffff81400000 T __entry_text_start
ffffffff81400000 T x86_verw_sel
ffffffff81400040 T entry_SYSCALL_64
ffffffff8140122b T __entry_text_end
ffffffff81600000 T __softirqentry_text_start
ffffffff81600000 T __do_softirq
ffffffff81c18000 B _end
"""


def test_only_this_qemus_threads_shutdowns_are_read() -> None:
    assert parse_trace(TRACE, 68) == [Shutdown(0, "shutdown", 0xFFFFFFFF81027AC1)]
    assert parse_trace(TRACE, 88) == [Shutdown(1, "shutdown", 0xFFFFFFFF81000010)]
    assert parse_trace(TRACE, 99) == [], "a line without its tgid is nobody's"
    assert parse_trace("# tracer: nop\n", 68) == []


def test_the_rip_is_named_by_the_text_symbol_at_or_below_it() -> None:
    symbols = SymbolMap(SYSTEM_MAP)
    assert symbols.name(0xFFFFFFFF81027AC1) == "native_machine_emergency_restart+0x16c"
    assert symbols.name(0xFFFFFFFF81027B00) == "native_machine_shutdown+0x0"
    assert symbols.name(0xFFFFFFFF81028010) == "native_machine_shutdown+0x510", "data symbols are not text"
    assert symbols.name(0x1000) is None, "below the kernel's text: no name (firmware, real mode)"
    assert SymbolMap("").name(0xFFFFFFFF81000000) is None
    assert symbols.name(0xFFFFFFFF81600003) == "__do_softirq+0x3", "a function, not the marker at its address"
    assert symbols.name(0xFFFFFFFF81400000) == "x86_verw_sel+0x0"
    assert symbols.name(0xFFFFFFFF813A1004) == "__hrtick_start+0x4", "a function whose name ends in _start"
    assert symbols.name(0xFFFFFFFF813A2004) == "__traceiter_mm_compaction_end+0x4", "... or in _end"
    assert symbols.name(0xFFFFFFFFC0001000) is None, "above the image: a module's code, which the map lacks"


def test_an_address_where_no_function_is_says_so() -> None:
    symbols = SymbolMap(SYSTEM_MAP)
    # a real L2 triple fault under nested TCG: its RIP in the padding after the entry text
    assert symbols.name(0xFFFFFFFF81471F5C) == "no function: 0x70d31 past __entry_text_end"
    assert symbols.name(0xFFFFFFFF8140122B) == "no function: 0x0 past __entry_text_end"
    # an empty section (start and end at one address): what follows is past its end
    assert symbols.name(0xFFFFFFFF8139B600) == "no function: 0xd8 past __kprobes_text_end"
    assert symbols.name(0xFFFFFFFF81027B00 + 0x10000) == "no function: 0x10000 past native_machine_shutdown"
    assert symbols.name(0xFFFFFFFF81027B00 + 0xFFFF) == "native_machine_shutdown+0xffff"


def test_the_evidence_names_vcpu_rip_and_symbol_when_the_map_is_there(tmp_path: Path) -> None:
    shutdowns = [Shutdown(0, "shutdown", 0xFFFFFFFF81027AC1)]
    assert describe(shutdowns, None) == ["KVM: vCPU 0 shut down at RIP 0xffffffff81027ac1"]
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"")
    assert symbols_beside(kernel) is None, "no System.map beside the image"
    (tmp_path / "System.map").write_text(SYSTEM_MAP)
    assert describe(shutdowns, symbols_beside(kernel)) == [
        "KVM: vCPU 0 shut down at RIP 0xffffffff81027ac1 (native_machine_emergency_restart+0x16c)"]


GUEST_RESET = [{"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-reset"}}]
KVM = ["KVM: vCPU 1 shut down at RIP 0xffffffff81000010 (startup_64+0x10)"]


def test_a_silent_reset_with_kvms_record_is_a_triple_fault_and_says_where() -> None:
    cause = classify_exit(GUEST_RESET, "pveoi-guest-ready uptime=5.0\n", "", 0, KVM)
    assert cause.cls == ending.TRIPLE_FAULT
    assert cause.evidence == ("SHUTDOWN reason guest-reset", *KVM,
                              "console: no reset, panic or shutdown announced by the guest kernel")


def test_an_announced_reset_keeps_its_class_and_gains_kvms_record() -> None:
    """``reboot=t``: the kernel announces the reset and then triple-faults on purpose."""
    cause = classify_exit(GUEST_RESET, "[   9.1] sysrq: Resetting\n", "", 0, KVM)
    assert cause.cls == ending.GUEST_RESET
    assert cause.evidence == ("SHUTDOWN reason guest-reset", "console: 'sysrq: Resetting'", *KVM)


def test_without_kvms_record_the_evidence_is_as_before() -> None:
    cause = classify_exit(GUEST_RESET, "", "", 0)
    assert cause.evidence == ("SHUTDOWN reason guest-reset",
                              "console: no reset, panic or shutdown announced by the guest kernel")


def test_no_recorder_where_tracefs_has_no_instances_we_may_make(tmp_path: Path) -> None:
    assert ShutdownRecorder.start(tmp_path) is None, "no instances directory"
    (tmp_path / "instances").mkdir()
    assert ShutdownRecorder.start(tmp_path) is None, "an instance without kvm's events (KVM not loaded)"
    assert list((tmp_path / "instances").iterdir()) == [], "the half-made instance is removed"


def test_instances_of_gone_pveoi_processes_are_reaped_and_others_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from e2e.vm.shutdowns import PREFIX, reap_stale

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    instances = tmp_path / "instances"
    for name in (f"{PREFIX}{gone.stdout.strip()}-0", f"{PREFIX}{os.getpid()}-3", "someone-elses", f"{PREFIX}x-1"):
        (instances / name).mkdir(parents=True)
    reap_stale(instances)
    assert sorted(p.name for p in instances.iterdir()) == sorted(
        [f"{PREFIX}{os.getpid()}-3", "someone-elses", f"{PREFIX}x-1"])


def test_a_rip_in_kvms_world_switch_is_named_the_virtual_hosts() -> None:
    """With one kernel as guest and virtual host, the recurring L2 triple fault's RIP is L1's instruction
    after VMRUN (here pveoi's 6.1 kernel of 2026-12-08: vmrun at +0x99, pop %rax at +0x9c). A guest
    shown no SVM/VMX never runs that code, so the evidence says whose RIP it is; other RIPs read as before."""
    symbols = SymbolMap("ffffffff81000000 T _text\nffffffff813b9e60 T __svm_vcpu_run\n"
                        "ffffffff813ba040 T __svm_sev_es_vcpu_run\nffffffff813ba0ca t __rdgsbase_inactive\n"
                        "ffffffff813ba200 T __vmx_vcpu_run\nffffffff813ba300 T vmx_vmexit\n"
                        "ffffffff813ba340 T vmx_update_host_rsp\nffffffff82000000 T _etext\n")
    for rip, name in ((0xFFFFFFFF813B9EFC, "__svm_vcpu_run+0x9c"), (0xFFFFFFFF813BA050, "__svm_sev_es_vcpu_run+0x10"),
                      (0xFFFFFFFF813BA210, "__vmx_vcpu_run+0x10"), (0xFFFFFFFF813BA301, "vmx_vmexit+0x1")):
        assert describe([Shutdown(1, "shutdown", rip)], symbols) == [
            f"KVM: vCPU 1 shut down at RIP {rip:#x} ({name}: KVM's world switch, which this guest does not run; "
            "the virtual host's own RIP)"]
    assert describe([Shutdown(0, "shutdown", 0xFFFFFFFF813BA0D0)], symbols) == [
        "KVM: vCPU 0 shut down at RIP 0xffffffff813ba0d0 (__rdgsbase_inactive+0x6)"]
    assert describe([Shutdown(0, "shutdown", 0xFFFFFFFF813BA341)], symbols) == [
        "KVM: vCPU 0 shut down at RIP 0xffffffff813ba341 (vmx_update_host_rsp+0x1)"]


def test_a_rip_in_the_virtual_hosts_world_switch_is_named_from_l1s_map(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Guest 6.1 under a 6.12 virtual host (the nightly matrix): L1's return from VMRUN names nothing in
    the guest's map (2026-12-08: RIP 0xffffffff814386e0, 6.12's __svm_vcpu_run+0xa0), so L1's own map,
    kept beside the image the virtual host passes in PVEOI_L1_KERNEL, says whose it is."""
    from e2e.vm.shutdowns import L1_KERNEL

    guest = SymbolMap("ffffffff81000000 T _text\nffffffff81401220 T __entry_text_end\n"
                      "ffffffff82000000 T _etext\n")
    host_map = ("ffffffff81000000 T _text\nffffffff81438640 T __svm_vcpu_run\n"
                "ffffffff8143882d t __rdgsbase_inactive\nffffffff82000000 T _etext\n")
    rip = 0xFFFFFFFF814386E0
    assert describe([Shutdown(1, "shutdown", rip)], guest, SymbolMap(host_map)) == [
        f"KVM: vCPU 1 shut down at RIP {rip:#x} (no function: 0x374c0 past __entry_text_end; in the virtual "
        "host's kernel __svm_vcpu_run+0xa0: KVM's world switch, the virtual host's own RIP)"]
    assert describe([Shutdown(1, "shutdown", rip)], None, SymbolMap(host_map)) == [
        f"KVM: vCPU 1 shut down at RIP {rip:#x} (not in the guest kernel; in the virtual host's kernel "
        "__svm_vcpu_run+0xa0: KVM's world switch, the virtual host's own RIP)"]
    # a RIP that is the guest's own keeps its guest name alone
    assert describe([Shutdown(0, "shutdown", 0xFFFFFFFF81000010)], guest, SymbolMap(host_map)) == [
        "KVM: vCPU 0 shut down at RIP 0xffffffff81000010 (_text+0x10)"]

    # the recorder reads L1's map from the variable the virtual host sets
    l1 = tmp_path / "l1"
    l1.mkdir()
    (l1 / "bzImage").write_bytes(b"")
    (l1 / "System.map").write_text(host_map)
    monkeypatch.setenv(L1_KERNEL, str(l1 / "bzImage"))
    recorder = ShutdownRecorder(tmp_path / "instance")
    monkeypatch.setattr(recorder, "shutdowns", lambda tgid: [Shutdown(1, "shutdown", rip)])
    assert recorder.evidence(42, None) == [
        f"KVM: vCPU 1 shut down at RIP {rip:#x} (not in the guest kernel; in the virtual host's kernel "
        "__svm_vcpu_run+0xa0: KVM's world switch, the virtual host's own RIP)"]
