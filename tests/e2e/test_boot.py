"""Real boots of the tiny guest under TCG: QMP, console, SSH, failure modes, no orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from e2e.build.image import READY_PATTERN
from e2e.errors import GuestInitError, GuestPanic, GuestTimeout
from e2e.measure.guest_counters import STATE_COMMAND, GuestState
from e2e.vm.argv import DEFAULT_APPEND, MachineSpec
from e2e.vm.machine import Machine
from e2e.vm.ssh import GuestSsh
from tests.helpers.cached import fetched_debian_bzimage
from tests.helpers.processes import interruptible, qemu_pids, wait_no_new_qemu

pytestmark = pytest.mark.qemu


def spec(kernel: Path, image, **kw) -> MachineSpec:  # type: ignore[no-untyped-def]
    return MachineSpec(kernel=kernel, initrd=image.initrd, accel="tcg", **kw)


@pytest.mark.parametrize("pv_eoi", [True, False], ids=["on", "off"])
def test_both_arms_boot_and_run_over_ssh(guest_kernel: Path, guest_image, pv_eoi: bool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Machine(spec(guest_kernel, guest_image, pv_eoi=pv_eoi, paused=True, smp=2), READY_PATTERN,
                 artifacts=tmp_path) as m:
        assert m.status() == "prelaunch"
        vcpus = m.vcpus()
        assert len(vcpus) == 2 and all(v.thread_id > 0 for v in vcpus)
        assert m.query_kvm()["enabled"] is False
        # TCG offers no KVM paravirtual CPUID leaves: QEMU filters the flag, and says so.
        assert m.pv_eoi_readback() == [False, False]
        m.resume()
        m.wait_ready(120)
        ssh = m.ssh(guest_image.identity.private_key, guest_image.host_key_line)
        res = ssh.run(["uname", "-r"], timeout=30).check()
        assert res.stdout.strip()
        state = GuestState.parse(ssh.run(STATE_COMMAND, timeout=30).check().stdout)
        # Under TCG there is no KVM signature, so the guest patch's file is absent.
        assert state.pveoi is None
        assert "LOC" in state.interrupts and len(state.interrupts["LOC"]) == 2
        # Exit status and stderr come back.
        res = ssh.run(["sh", "-c", "echo oops >&2; exit 7"], timeout=30)
        assert (res.exit_status, res.stderr.strip()) == (7, "oops")
        # Files both ways.
        src = tmp_path / "up.txt"
        src.write_text("hello guest\n")
        ssh.put(src, "/tmp/up.txt")
        ssh.get("/tmp/up.txt", tmp_path / "down.txt")
        assert (tmp_path / "down.txt").read_text() == "hello guest\n"
    assert m.exitcode is not None
    assert (tmp_path / "pveoi-guest-console.log").read_text().count("pveoi-guest-ready") == 1


def test_panic_at_boot_fails_fast_with_the_panic_quoted(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    # No /init to run and no root device: the kernel panics at once.
    bad = spec(guest_kernel, guest_image, append=f"{DEFAULT_APPEND} rdinit=/nonexistent")
    start = time.monotonic()
    with pytest.raises(GuestPanic) as err, Machine(bad, READY_PATTERN) as m:
        m.wait_ready(120)
    assert time.monotonic() - start < 60
    assert "Kernel panic - not syncing" in str(err.value)
    assert err.value.lines and "panic" in err.value.lines[0].lower()


def test_guest_that_never_gets_ready_fails_at_the_deadline(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    # A shell instead of pveoi's init: the ready line never comes.
    silent = spec(guest_kernel, guest_image, append=f"{DEFAULT_APPEND} rdinit=/bin/sh")
    start = time.monotonic()
    with pytest.raises(GuestTimeout, match="not ready after 8s"), Machine(silent, READY_PATTERN) as m:
        m.wait_ready(8)
    assert 8 <= time.monotonic() - start < 30


def test_a_boot_deadline_keeps_where_the_guest_was(guest_kernel: Path, guest_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A guest that printed nothing before the deadline (the soak's timer #8: empty console, no
    cause) leaves its run state and its vCPUs' RIP/HLT: in the error and in <name>-not-ready.txt.
    Here QEMU is stopped over QMP before the kernel's first line, so the run state says why."""
    with pytest.raises(GuestTimeout) as info, Machine(spec(guest_kernel, guest_image, name="stuck"), READY_PATTERN,
                                                      artifacts=tmp_path) as m:
        m.qmp("stop")
        m.wait_ready(5)
    said = str(info.value)
    assert "not ready after 5s" in said and "run state paused" in said, said
    assert "its vCPUs: CPU0 RIP=" in said and "(same 1 s later)" in said, said
    assert info.value.evidence[0] == "run state paused" and info.value.evidence[1].startswith("CPU0 RIP=")
    kept = (tmp_path / "stuck-not-ready.txt").read_text()
    assert "run state: paused" in kept and "== sample 2, CPU 0" in kept and ("EIP=" in kept or "RIP=" in kept)
    # Kept with the attempt's logs (an attempt record links what exists).
    from e2e.run.evidence import AttemptTrace

    assert "stuck-not-ready.txt" in AttemptTrace(tmp_path, m).logs()


def test_a_qemu_that_exits_during_boot_is_classified_not_left_running(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    """The console closes a moment before QEMU can be reaped: the error waits for the exit and names
    its class (here a reset the guest asked for before its first console line: QEMU runs
    -no-reboot), never "qemu running"."""
    from e2e.errors import QemuExited

    # The kernel's reboot=t,f and an immediate triple fault are hard to provoke; a reset over QMP
    # before the console says anything ends QEMU the same way (-no-reboot) and closes the console.
    with pytest.raises(QemuExited) as info, Machine(spec(guest_kernel, guest_image), READY_PATTERN) as m:
        m.qmp("system_reset")
        m.wait_ready(60)
    assert info.value.cause in ("guest reset", "host reset", "triple fault"), info.value
    assert "console closed before it was ready" in str(info.value) and "exited during boot" in str(info.value)


def _pveoi(*args: str) -> list[str]:
    return [sys.executable, "-m", "e2e.cli", *args]


def test_cli_boot_runs_command_and_reports_pv_eoi(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    for arm in ("on", "off"):
        proc = subprocess.run(_pveoi("boot", "--accel", "tcg", "--pv-eoi", arm, "--", "sh", "-c", "uname -r; exit 3"),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout.strip(), proc.stderr
        assert f"kvm-pv-eoi: requested {arm}, QMP reads off" in proc.stderr
        assert "guest view: no /sys/kernel/debug/kvm_pv_eoi (not a KVM guest" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killing_the_harness_mid_command_leaves_no_qemu(guest_kernel: Path, guest_image, sig: int) -> None:  # type: ignore[no-untyped-def]
    before = qemu_pids()
    proc = subprocess.Popen(_pveoi("boot", "--accel", "tcg", "--", "sh", "-c", "echo started; sleep 600"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=interruptible)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the command is running in the guest
        assert line.strip() == "started"
        assert qemu_pids() - before, "no QEMU was running mid-command"
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not wait_no_new_qemu(before), "QEMU outlived the harness"
    if sig == signal.SIGINT:
        assert proc.returncode == 130


def test_fetched_debian_kernel_boots_with_its_modules(tmp_path: Path) -> None:
    """`pveoi kernel fetch --debian`'s kernel: image_for_kernel adds its virtio modules; SSH works."""
    from e2e.build.image import image_for_kernel

    kernel = fetched_debian_bzimage()
    if kernel is None:
        pytest.skip("no fetched Debian kernel in the cache (pveoi kernel fetch --debian)")
    image = image_for_kernel(kernel)
    release = image.manifest["kernel_modules"]["release"]
    with Machine(spec(kernel, image), READY_PATTERN, artifacts=tmp_path) as m:
        m.wait_ready(120)
        ssh = m.ssh(image.identity.private_key, image.host_key_line)
        assert ssh.run(["uname", "-r"], timeout=60).check().stdout.strip() == release
        loaded = ssh.run(["cut", "-d", " ", "-f1", "/proc/modules"], timeout=60).check().stdout.split()
        assert {"virtio_pci", "virtio_net", "virtio_blk"} <= set(loaded)
    console = next(tmp_path.glob("*console.log")).read_text()
    assert "pveoi-guest-error" not in console, console


def test_guest_init_error_fails_the_boot_at_once_with_the_line_quoted(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    # No virtio-net device: the guest's init prints "pveoi-guest-error: no eth0 (...)", then starts
    # dropbear and prints its ready line anyway. The error must win, at once.
    no_net = spec(guest_kernel, guest_image, ssh_forward=False)
    start = time.monotonic()
    with pytest.raises(GuestInitError) as err, Machine(no_net, READY_PATTERN) as m:
        m.wait_ready(120)
    took = time.monotonic() - start
    text = str(err.value)
    assert err.value.line.startswith("pveoi-guest-error: no eth0"), text
    assert "the guest's init failed: pveoi-guest-error: no eth0 (is a virtio-net device attached?)" in text
    assert "; fix: read the console log " in text and "\n" not in text
    assert took < 30, f"the init error took {took:.1f}s to fail the boot"
    print(f"init error failed the boot after {took:.1f}s")


def test_ssh_wait_stops_at_once_when_the_console_shows_an_init_error(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    """An SSH connect already blocked in its handshake (a server that never sends a banner) ends
    as soon as the guest's console shows the init error, not at its 60 s deadline."""
    no_net = spec(guest_kernel, guest_image, ssh_forward=False, paused=True)
    errors: list[BaseException] = []
    with socket.socket() as server, Machine(no_net, READY_PATTERN) as m:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(30)
        ssh = GuestSsh(server.getsockname()[1], guest_image.identity.private_key, guest_image.host_key_line,
                       watch=m.console)

        ended: list[float] = []

        def connect() -> None:
            try:
                ssh.connect(timeout=60)
            except BaseException as exc:  # handed to the test's thread
                errors.append(exc)
            ended.append(time.monotonic())

        waiter = threading.Thread(target=connect)
        waiter.start()
        conn, _ = server.accept()  # the handshake now waits for a banner that never comes
        with conn:
            resumed = time.monotonic()
            m.resume()
            waiter.join(60)
            took = time.monotonic() - resumed
    assert not waiter.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], GuestInitError), errors
    assert "pveoi-guest-error: no eth0" in str(errors[0])
    # The handshake's own banner timeout is 15 s: ending within a moment of the line proves it was cut short.
    assert m.console.error_at is not None
    noticed = ended[0] - m.console.error_at
    assert noticed < 2.0, f"the SSH wait ended {noticed:.1f}s after the console showed the init error"
    print(f"SSH wait ended {took:.1f}s after the guest was resumed, {noticed:.2f}s after the error line")
