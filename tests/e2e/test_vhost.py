"""The virtual KVM host: real kvm_amd inside a TCG L1, and a guest under real KVM in it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from e2e.vm.vhost import run_in_vhost

pytestmark = pytest.mark.kvm


def _pveoi(*args: str) -> list[str]:
    return [sys.executable, "-m", "e2e.cli", *args]


def test_vhost_has_kvm_amd_with_nested_paging(host_kernel: Path, tmp_path: Path) -> None:
    out = bytearray()
    rc, host = run_in_vhost(
        ["sh", "-c", "test -c /dev/kvm && grep -qw svm /proc/cpuinfo && cat /sys/module/kvm_amd/parameters/npt"
                     " && exit 7"],
        host_kernel, results=tmp_path, sink=out.extend, timeout=300,
    )
    assert rc == 7, out.decode(errors="replace")  # the command's own status comes back
    assert out.decode().strip() == "Y"
    assert host.kvm_facts["dev"] == "1" and host.kvm_facts["svm"] == "1" and host.kvm_facts["npt"] == "Y"


def test_cli_vhost_succeeds_on_the_done_criterion(host_kernel: Path) -> None:
    proc = subprocess.run(_pveoi("vhost", "--", "sh", "-c", "test -c /dev/kvm && grep -qw svm /proc/cpuinfo"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("arm", ["on", "off"])
def test_guest_boots_under_real_kvm_inside_the_vhost(guest_kernel: Path, host_kernel: Path, guest_image,  # type: ignore[no-untyped-def]
                                                     arm: str) -> None:
    proc = subprocess.run(
        _pveoi("boot", "--accel", "kvm", "--host", "virtual", "--pv-eoi", arm, "--kernel", str(guest_kernel),
               "--", "cat", "/sys/kernel/debug/kvm_pv_eoi"),
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # QMP's read-back matches the arm under real KVM, and the guest agrees.
    assert f"kvm-pv-eoi: requested {arm}, QMP reads {arm}" in proc.stdout
    want = "feature=1 enabled=1" if arm == "on" else "feature=0 enabled=0"
    assert f"cpu0 {want}" in proc.stdout


def test_a_frozen_vhost_is_reported_as_a_stall_with_its_cpus(host_kernel: Path, tmp_path: Path) -> None:
    """L1 frozen mid-command (QMP ``stop``: its CPUs no longer run, as in the stalls nested TCG
    shows now and then) ends the run well before its timeout, as a VhostStalled with L1's CPU
    state as evidence, kept beside the console log; QEMU is gone afterwards."""
    import threading
    import time

    from e2e.errors import VhostStalled
    from e2e.vm.vhost import CTL, HEARTBEAT, STALLED, VhostSpec, VirtualKvmHost

    host = VirtualKvmHost(VhostSpec(host_kernel, timeout=600, stall_timeout=20), tmp_path / "share",
                          artifacts=tmp_path / "logs")
    frozen = threading.Event()

    def freeze() -> None:
        beat = tmp_path / "share" / CTL / HEARTBEAT
        deadline = time.monotonic() + 300
        while not beat.is_file() and time.monotonic() < deadline:
            time.sleep(0.5)
        host.qmp("stop")
        frozen.set()

    threading.Thread(target=freeze, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(VhostStalled) as info:
        host.run(["sleep", "500"])
    assert frozen.is_set()
    assert time.monotonic() - started < 200  # the stall, not the 600 s timeout, ended it
    err = info.value
    assert err.cause == STALLED and err.kind.value == "infrastructure"
    assert "no heartbeat from its userspace for" in str(err) and "CPU0 RIP=" in str(err)
    assert "(same 1 s later)" in str(err)  # stopped CPUs do not move
    kept = (tmp_path / "logs" / "pveoi-vhost-stall.txt").read_text()
    assert "== sample 2, CPU 1" in kept and "RIP=" in kept and "== local APIC, CPU 0" in kept
    assert host.exitcode is not None and not Path(f"/proc/{host.pid}").exists()


def test_a_silent_command_in_a_live_vhost_is_a_stall_with_l1s_processes(host_kernel: Path, tmp_path: Path) -> None:
    """A command that prints as it goes and then goes silent while L1 lives on (its heartbeat going): a
    stall once past ``silence_timeout``, well before the timeout; L1's init first reports its processes,
    kept as pveoi-vhost-ps.txt, naming the stuck command and its state."""
    import time

    from e2e.errors import VhostStalled
    from e2e.vm.vhost import STALLED, VhostSpec, VirtualKvmHost

    host = VirtualKvmHost(VhostSpec(host_kernel, timeout=600, silence_timeout=30), tmp_path / "share",
                          artifacts=tmp_path / "logs")
    started = time.monotonic()
    with pytest.raises(VhostStalled) as info:
        host.run(["sh", "-c", "echo started; exec sleep 500"])
    assert time.monotonic() - started < 200  # the silence, not the 600 s timeout, ended it
    assert info.value.cause == STALLED and "the command printed nothing for" in str(info.value)
    ps = (tmp_path / "logs" / "pveoi-vhost-ps.txt").read_text()
    assert "WCHAN" in ps and "sleep 500" in ps, ps
    assert " syscall: " in ps, ps  # what each user process waits in
    assert host.exitcode is not None and not Path(f"/proc/{host.pid}").exists()


def test_a_guest_cpus_shutdown_is_placed_by_kvms_own_record(guest_kernel: Path, host_kernel: Path) -> None:
    """``reboot=t``: sysrq b makes the guest kernel triple-fault on purpose (an empty IDT, then int3) in
    native_machine_emergency_restart(); KVM's shutdown exit says which vCPU and where."""
    proc = subprocess.run(
        _pveoi("boot", "--accel", "kvm", "--host", "virtual", "--kernel", str(guest_kernel), "--append", "reboot=t",
               "--", "sh", "-c", "echo b > /proc/sysrq-trigger; sleep 60"),
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode != 0
    # the error is the inner pveoi's, streamed back through the virtual host's console
    error = next(line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("pveoi: error:"))
    assert "guest reset (SHUTDOWN reason guest-reset; console: 'sysrq: Resetting'; KVM: vCPU " in error, error
    assert " shut down at RIP 0xffffffff8" in error, error
    if (guest_kernel.parent / "System.map").is_file():  # pveoi's builds keep it; a cache entry from before may not
        assert "(native_machine_emergency_restart+0x" in error, error


def test_a_trial_confines_every_thread_of_l1s_qemu_to_the_cpus_it_names(host_kernel: Path, tmp_path: Path) -> None:
    """``PVEOI_VHOST_HOST_CPUS=0``: while L1 runs its command, each thread of its QEMU (the vCPU threads
    among them) may run on CPU 0 alone."""
    import os

    from e2e.vm.vhost import VhostSpec, VirtualKvmHost

    cpu = min(os.sched_getaffinity(0))
    seen: dict[str, set[int]] = {}
    out = bytearray()

    def look(chunk: bytes) -> None:  # the command's output, as it comes (in chunks): L1 is up and running it
        out.extend(chunk)
        if b"confined?" in out and not seen:
            for task in Path(f"/proc/{host.pid}/task").iterdir():
                seen[(task / "comm").read_text().strip() + "-" + task.name] = os.sched_getaffinity(int(task.name))

    host = VirtualKvmHost(VhostSpec(host_kernel, timeout=600, host_cpus=(cpu,)), tmp_path / "share", look)
    assert host.run(["sh", "-c", "echo confined?; sleep 5"]) == 0
    assert seen and all(cpus == {cpu} for cpus in seen.values()), (seen, bytes(out[-500:]))
    assert sum(name.startswith("CPU ") for name in seen) == 2, "both of L1's vCPU threads among them"
