"""The fault matrix (issue 8), end to end with real TCG guests and the real
``pveoi`` command: each test injects the fault for real and asserts a one-line
error naming the cause and the fix, the right exit code, no qemu-system left,
no temp dir left and no partial result. (Bad configuration, perf, disk-full,
cache corruption and temp-dir reaping at unit level: tests/unit/test_faults_*.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.analysis.history import load_history
from e2e.build.cache import Cache
from e2e.build.image import READY_PATTERN
from e2e.errors import CapabilityError, GuestTimeout, Kind, PveoiError, SshError
from e2e.model.plan import DEFAULT_ARMS, DEFAULT_RETRIES, Plan
from e2e.model.result import Result
from e2e.model.workloads import Workload
from e2e.run import ab
from e2e.util import hostid
from e2e.vm.argv import MachineSpec
from e2e.vm.machine import Machine
from e2e.vm.ssh import GuestSsh
from tests.helpers.measurable import not_measurable
from tests.helpers.processes import interruptible, qemu_pids, wait_no_new_qemu
from tests.helpers.terminal import clean_stderr_lines

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[2]
TMP = Path(tempfile.gettempdir())


def pveoi(*args: str) -> list[str]:
    return [sys.executable, "-m", "e2e.cli", *args]


def pid_dirs(pid: int) -> list[Path]:
    """The temp dirs pveoi process ``pid`` made."""
    return sorted(p for p in TMP.glob("pveoi-*") if f"-{pid}-" in p.name)


def one_line_error(stderr: str, *needles: str) -> str:
    """The ``pveoi: error: CAUSE; fix: FIX`` line: the last line, with no traceback or library noise above it."""
    line = clean_stderr_lines(stderr)[-1]
    assert line.startswith("pveoi: error: ") and "; fix: " in line, stderr
    for needle in needles:
        assert needle in line, line
    return line


def check_named_log(line: str, before: str, after: str, holds: str) -> None:
    """The console log an error line names (between ``before`` and ``after``) exists and holds ``holds``;
    then it is removed (failed guests keep their logs in the cache)."""
    log = Path(line.split(before, 1)[1].split(after, 1)[0])
    assert log.is_file() and holds in log.read_text(), f"the console log the error names must exist: {log}"
    shutil.rmtree(log.parent)


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry))
    return out


def qemu_child(pid: int) -> int:
    found = [c for c in children(pid) if Path(f"/proc/{c}/comm").read_text().startswith("qemu-system")]
    assert len(found) == 1, f"pveoi {pid} runs {len(found)} QEMUs"
    return found[0]


class Run:
    """A ``pveoi`` subprocess whose stdout lines we can wait for."""

    def __init__(self, *args: str) -> None:
        self.before = qemu_pids()
        self.proc = subprocess.Popen(pveoi(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=REPO, preexec_fn=interruptible)
        self.stderr = ""
        self._err = threading.Thread(target=self._drain, daemon=True)
        self._err.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_line(self, text: str) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == text, f"got {line!r}; stderr so far: {self.stderr}"

    def finish(self, timeout: float = 120) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._err.join(10)
        return rc

    def assert_clean(self) -> None:
        assert not wait_no_new_qemu(self.before), "a qemu-system process outlived pveoi"
        assert pid_dirs(self.proc.pid) == [], "pveoi left its temp dirs behind"


def boot_args(guest_kernel: Path, guest_image, *extra: str) -> list[str]:  # type: ignore[no-untyped-def]
    return ["boot", "--accel", "tcg", "--kernel", str(guest_kernel), "--image", str(guest_image.path), *extra]


# ---------------------------------------------------------------- the guest does not come up


def test_kernel_panic_at_boot_cli(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    run = Run(*boot_args(guest_kernel, guest_image, "--append", "rdinit=/nonexistent", "--", "true"))
    assert run.finish() == 1  # a panic of the kernel under test is a finding (exit 1), never a setup error
    line = one_line_error(run.stderr, "guest kernel panicked", "Kernel panic - not syncing")
    check_named_log(line, "read the console log ", ":", "Kernel panic")
    run.assert_clean()


def test_guest_never_ready_cli(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    run = Run(*boot_args(guest_kernel, guest_image, "--append", "rdinit=/bin/sh", "--boot-timeout", "8",
                         "--", "true"))
    assert run.finish() == 2
    line = one_line_error(run.stderr, "guest not ready after 8s", "raise the boot timeout")
    check_named_log(line, "read the console log ", " or raise", "")
    run.assert_clean()


# ---------------------------------------------------------------- SSH


@pytest.fixture
def booted(guest_kernel: Path, guest_image, tmp_path: Path) -> Iterator[tuple[Machine, GuestSsh]]:  # type: ignore[no-untyped-def]
    spec = MachineSpec(kernel=guest_kernel, initrd=guest_image.initrd, accel="tcg", name="faults")
    with Machine(spec, READY_PATTERN, artifacts=tmp_path) as m:
        m.wait_ready(120)
        yield m, m.ssh(guest_image.identity.private_key, guest_image.host_key_line)


KILL_DROPBEAR_LISTENER = ("for p in $(pidof dropbear); do "
                          "[ \"$(cut -d' ' -f4 /proc/$p/stat)\" = 1 ] && kill -9 $p; done; echo done")


def test_ssh_refused_once_dropbear_is_gone(booted: tuple[Machine, GuestSsh], guest_image) -> None:  # type: ignore[no-untyped-def]
    m, ssh = booted
    assert ssh.run(["sh", "-c", KILL_DROPBEAR_LISTENER], timeout=30).check().stdout.strip() == "done"
    start = time.monotonic()
    with pytest.raises(SshError) as err:
        m.ssh(guest_image.identity.private_key, guest_image.host_key_line, timeout=5)
    assert time.monotonic() - start < 30
    text = str(err.value)
    assert "\n" not in text and f"no SSH to the guest on 127.0.0.1:{m.ssh_port()} within 5s" in text
    assert "; fix: check the guest's console log" in text


def test_ssh_never_answering_guest_frozen(booted: tuple[Machine, GuestSsh], guest_image) -> None:  # type: ignore[no-untyped-def]
    m, ssh = booted
    m.qmp("stop")  # the guest freezes: TCP is accepted by QEMU's slirp, dropbear never speaks
    start = time.monotonic()
    with pytest.raises(SshError, match="did not open an SSH channel for `true` within 3s; fix: the guest is hung"):
        ssh.run(["true"], timeout=3)
    with pytest.raises(SshError) as err:
        m.ssh(guest_image.identity.private_key, guest_image.host_key_line, timeout=4)
    assert time.monotonic() - start < 40
    assert "within 4s" in str(err.value) and "\n" not in str(err.value)


def test_ssh_server_that_never_sends_a_banner(guest_image) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        ssh = GuestSsh(server.getsockname()[1], guest_image.identity.private_key, guest_image.host_key_line)
        start = time.monotonic()
        with pytest.raises(SshError, match=r"within 3s .*; fix: "):
            ssh.connect(timeout=3)
        assert time.monotonic() - start < 25


def test_ssh_dropped_mid_workload_cli(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    run = Run(*boot_args(guest_kernel, guest_image, "--", "sh", "-c",
                         "echo started; sleep 1; kill -9 $(pidof dropbear); sleep 600"))
    run.wait_line("started")
    assert run.finish(timeout=60) == 2
    line = one_line_error(run.stderr, "SSH connection dropped while running", "dropbear died")
    check_named_log(line, "check the guest's console log ", ";", "pveoi-guest-ready")
    run.assert_clean()


# ---------------------------------------------------------------- QEMU and QMP


def test_qmp_socket_closed(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    before = qemu_pids()
    spec = MachineSpec(kernel=guest_kernel, initrd=guest_image.initrd, accel="tcg", paused=True, name="faults")
    with Machine(spec, READY_PATTERN) as m:
        workdir = m.workdir
        assert m.status() == "prelaunch"
        assert m._qmp_sock is not None
        with socket.socket(fileno=os.dup(m._qmp_sock.fileno())) as dup:
            dup.shutdown(socket.SHUT_RDWR)  # the QMP connection closes under the harness
        start = time.monotonic()
        with pytest.raises(PveoiError) as err:
            m.status()
        assert time.monotonic() - start < 30
        text = str(err.value)
        assert "\n" not in text and "the QMP connection to QEMU" in text and "closed during query-status" in text
        assert "; fix: pveoi stops this QEMU" in text
        assert err.value.kind is Kind.INFRASTRUCTURE and err.value.failed == "qmp failure"  # retried, classed
        assert m.is_running(), "QEMU itself is fine; only QMP is gone"
    assert m.exitcode is not None, "shutdown without QMP must still stop QEMU"
    assert not workdir.exists()
    assert not wait_no_new_qemu(before)


def test_a_hung_qemu_fails_qmp_at_its_deadline_and_is_still_stopped(guest_kernel: Path,  # type: ignore[no-untyped-def]
                                                                   guest_image) -> None:
    """A QEMU that stops answering (SIGSTOP here; a QEMU stuck in KVM in the wild) must fail the
    QMP command at the machine's deadline, not hang pveoi, and shutdown must still end it."""
    before = qemu_pids()
    spec = MachineSpec(kernel=guest_kernel, initrd=guest_image.initrd, accel="tcg", paused=True, name="faults")
    with Machine(spec, READY_PATTERN, qmp_timeout=3) as m:
        workdir = m.workdir
        assert m.status() == "prelaunch"
        os.kill(m.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(GuestTimeout) as err:
            m.vcpus()
        assert 2.5 < time.monotonic() - start < 20
        text = str(err.value)
        assert "\n" not in text and "did not answer QMP query-cpus-fast within 3 s: it is hung" in text
        assert "; fix: pveoi stops it" in text
    assert m.exitcode is not None
    assert not workdir.exists()
    assert not wait_no_new_qemu(before)


def test_qemu_sigkilled_mid_workload_cli(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    run = Run(*boot_args(guest_kernel, guest_image, "--", "sh", "-c", "echo started; sleep 600"))
    run.wait_line("started")
    os.kill(qemu_child(run.proc.pid), signal.SIGKILL)
    assert run.finish(timeout=60) == 2
    one_line_error(run.stderr, "SSH connection dropped while running", "QEMU (pid",
                   "exited mid-command: killed by signal 9 (SIGKILL) (exit status -9; no SHUTDOWN event)")
    run.assert_clean()


# ---------------------------------------------------------------- the A/B's run loop under TCG


def tcg_setup(guest_kernel: Path, guest_image, tmp_path: Path) -> ab.Setup:  # type: ignore[no-untyped-def]
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    return ab.Setup(kernel=guest_kernel, initrd=guest_image.initrd, private_key=guest_image.identity.private_key,
                    host_key_line=guest_image.host_key_line, artifacts=tmp_path / "logs", accel="tcg", qemu=qemu)


def run_workloads(setup: ab.Setup, workload: Workload) -> Result:
    """The real A/B loop (interleaved arms, retries, analysis) over a test's own workload, 1 rep."""
    plan = Plan(workloads=(workload.name,), arms=DEFAULT_ARMS, runs=1, kernel=setup.kernel,
                image=setup.initrd.parent, logs=setup.artifacts)
    vendor = ab.cpu_vendor()
    return ab.run_workloads(setup, plan, [workload], ab.perf_events(vendor, ab.list_kvm_tracepoints()), vendor)


def short(command: str) -> Workload:
    return Workload("fault", ("sh", "-c", command), ops=1, description="fault injection", timeout=60)


def kvm_tracepoints_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The A/B loop needs the kvm tracepoints (here: kvm is loaded, its guests are just unusable)."""
    if ab.cpu_vendor() == "unknown":  # no svm/vmx flag: count svm's exit reasons (all zero under TCG anyway)
        monkeypatch.setattr(ab, "cpu_vendor", lambda cpuinfo=None: "svm")
    try:
        ab.perf_events(ab.cpu_vendor(), ab.list_kvm_tracepoints())
    except PveoiError as err:
        not_measurable(f"this host has no kvm tracepoints to count: {err}")


@pytest.mark.parametrize("fault", ["missing", "denied"])
def test_ab_run_with_perf_missing_or_denied_gives_no_verdict(guest_kernel: Path, guest_image, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    kvm_tracepoints_here(monkeypatch)
    setup = tcg_setup(guest_kernel, guest_image, tmp_path)  # QEMU by its full path: PATH loses it below
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if fault == "denied":
        perf = bindir / "perf"  # perf's own message for perf_event_open's EACCES
        perf.write_text("#!/bin/sh\necho 'Error:' >&2\necho 'Access to performance monitoring and observability "
                        "operations is limited.' >&2\necho 'perf_event_paranoid setting is 4:' >&2\nexit 255\n")
        perf.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    before = qemu_pids()
    with pytest.raises(CapabilityError) as err:
        run_workloads(setup, short("true"))
    text = str(err.value)
    assert "\n" not in text
    assert ("perf not found" in text) if fault == "missing" else ("Access to performance monitoring" in text)
    assert not wait_no_new_qemu(before)
    assert pid_dirs(os.getpid()) == []


def test_ab_run_whose_guest_drops_ssh_is_an_error_not_a_verdict(  # type: ignore[no-untyped-def]
        guest_kernel: Path, guest_image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kvm_tracepoints_here(monkeypatch)
    before = qemu_pids()
    res = run_workloads(tcg_setup(guest_kernel, guest_image, tmp_path),
                        short("sleep 1; kill -9 $(pidof dropbear); sleep 60"))
    assert res.verdict == "error" and res.exit_code == 2
    w = res.workloads["fault"]
    assert w.verdict == "error" and w.reasons[0] == "2 of 2 runs did not complete, so no verdict"
    assert all("SSH connection dropped" in r for r in w.reasons[1:])
    # Each run was retried on a fresh guest as often as the default allows (the fault recurred), every retry
    # on record; an SSH failure is not the guest's own doing, so its recurrence is no finding.
    assert len(w.retried) == 2 * DEFAULT_RETRIES and all("SSH connection dropped" in r for r in w.retried)
    assert res.runs_of("fault", "on") == [] and res.runs_of("fault", "off") == []
    assert not wait_no_new_qemu(before)
    assert pid_dirs(os.getpid()) == []


def test_a_guest_that_drops_ssh_in_its_second_window_keeps_its_first_and_retries_the_rest(  # type: ignore[no-untyped-def]
        guest_kernel: Path, guest_image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kvm_tracepoints_here(monkeypatch)
    # Every guest's second window kills its SSH server: each guest keeps one rep, the next boots for the rest.
    fault = short("if [ -e /tmp/ran ]; then kill -9 $(pidof dropbear); sleep 60; fi; touch /tmp/ran")
    setup = tcg_setup(guest_kernel, guest_image, tmp_path)
    plan = Plan(workloads=(fault.name,), arms=DEFAULT_ARMS, runs=3, kernel=setup.kernel, image=setup.initrd.parent,
                logs=setup.artifacts, reps_per_boot=3)
    vendor = ab.cpu_vendor()
    before = qemu_pids()
    res = ab.run_workloads(setup, plan, [fault], ab.perf_events(vendor, ab.list_kvm_tracepoints()), vendor)
    for arm in ("on", "off"):
        runs = res.runs_of("fault", arm)
        assert [(r.rep, r.attempt, r.window) for r in runs] == [(0, 1, 1), (1, 2, 1), (2, 3, 1)]
        failed = [(a.rep, a.attempt, a.outcome) for a in res.workloads["fault"].attempts if a.arm == arm]
        assert failed == [(1, 1, "retried"), (2, 2, "retried")]
    assert not res.workloads["fault"].errors
    assert not wait_no_new_qemu(before)
    assert pid_dirs(os.getpid()) == []


# ---------------------------------------------------------------- corrupt cache entries, end to end


def test_corrupt_kernel_named_on_the_cli_is_refused_before_boot(guest_kernel: Path, guest_image,  # type: ignore[no-untyped-def]
                                                                tmp_path: Path) -> None:
    entry = tmp_path / "kernels" / guest_kernel.parent.name
    shutil.copytree(guest_kernel.parent, entry)
    data = bytearray((entry / "bzImage").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry / "bzImage").write_bytes(bytes(data))
    run = Run("boot", "--accel", "tcg", "--kernel", str(entry / "bzImage"), "--image", str(guest_image.path),
              "--", "true")
    assert run.finish() == 2
    one_line_error(run.stderr, f"cache entry {entry} is damaged", "is corrupt", f"rm -r {entry}",
                   "pveoi kernel build --force")
    assert run.before == qemu_pids(), "nothing may boot a damaged kernel"
    run.assert_clean()


def test_corrupt_image_in_the_cache_is_detected_and_rebuilt(guest_kernel: Path, guest_image,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(guest_kernel.parent, cache / "kernels" / guest_kernel.parent.name)
    shutil.copytree(guest_image.path.parent.parent / "ssh", cache / "ssh")
    entry = cache / "images" / guest_image.path.name
    shutil.copytree(guest_image.path, entry)
    initrd = entry / guest_image.initrd.name
    with open(initrd, "r+b") as f:
        f.seek(initrd.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = subprocess.run(pveoi("image", "build", "--json"), capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PVEOI_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert f"cache entry {entry}: {initrd} is corrupt" in proc.stderr and "rebuilt" in proc.stderr
    assert json.loads(proc.stdout)["path"] == str(entry), "the same inputs must rebuild the same entry"
    assert Cache(cache).lookup("images", entry.name) is not None, "the rebuilt entry is intact"


# ---------------------------------------------------------------- two pveoi runs, and killing pveoi


def test_two_pveoi_runs_at_once_do_not_clash(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    token = "echo {t} > /tmp/token; sleep 4; cat /tmp/token"
    runs = [Run(*boot_args(guest_kernel, guest_image, "--", "sh", "-c", token.format(t=t))) for t in ("one", "two")]
    for r in runs:
        assert r.finish(timeout=240) == 0, r.stderr
    assert [r.proc.stdout.read().strip() for r in runs if r.proc.stdout] == ["one", "two"], \
        "each run must reach its own guest (ports, sockets and temp dirs are per run)"
    for r in runs:
        r.assert_clean()


@pytest.mark.parametrize("sig, rc, said", [
    (signal.SIGINT, 130, "pveoi: interrupted; everything started was stopped"),
    (signal.SIGTERM, 143, "pveoi: terminated (SIGTERM); everything started was stopped"),  # a CI job's timeout
], ids=["SIGINT", "SIGTERM"])
def test_sigint_or_sigterm_mid_run(guest_kernel: Path, guest_image, sig: int, rc: int, said: str) -> None:  # type: ignore[no-untyped-def]
    run = Run(*boot_args(guest_kernel, guest_image, "--", "sh", "-c", "echo started; sleep 600"))
    run.wait_line("started")
    assert pid_dirs(run.proc.pid), "the run has a temp dir while it runs"
    run.proc.send_signal(sig)
    assert run.finish(timeout=60) == rc
    assert clean_stderr_lines(run.stderr)[-1] == said
    run.assert_clean()


def test_a_second_sigterm_does_not_cut_the_cleanup_short(guest_kernel: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    """A supervisor that signals twice (systemd, a CI runner): the second SIGTERM lands while
    pveoi stops QEMU and removes its temp dir, and must not interrupt that."""
    run = Run(*boot_args(guest_kernel, guest_image, "--", "sleep", "60"))
    assert run.proc.stdout is not None
    deadline = time.monotonic() + 120
    while not (pid_dirs(run.proc.pid) and run.before != qemu_pids()):
        assert run.proc.poll() is None and time.monotonic() < deadline, run.stderr
        time.sleep(0.1)
    time.sleep(3)  # well into the boot
    run.proc.send_signal(signal.SIGTERM)
    # The unwinding takes tens of ms (a second SIGTERM 0.2 s later would find pveoi gone): signal
    # again every 5 ms until pveoi has exited, so further SIGTERMs land inside it.
    end = time.monotonic() + 5
    while run.proc.poll() is None and time.monotonic() < end:
        run.proc.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    assert run.finish(timeout=60) == 143, run.stderr
    assert clean_stderr_lines(run.stderr)[-1] == "pveoi: terminated (SIGTERM); everything started was stopped"
    run.assert_clean()


def test_sigkill_mid_run_qemu_dies_and_the_next_start_reaps_its_temp_dir(guest_kernel: Path,  # type: ignore[no-untyped-def]
                                                                          guest_image) -> None:
    run = Run(*boot_args(guest_kernel, guest_image, "--", "sh", "-c", "echo started; sleep 600"))
    run.wait_line("started")
    qemu = qemu_child(run.proc.pid)
    run.proc.kill()
    assert run.finish(timeout=30) == -signal.SIGKILL
    assert not wait_no_new_qemu(run.before), "QEMU outlived a SIGKILLed pveoi"
    # A QEMU being torn down (its parent-death SIGKILL delivered, its memory and KVM state going) has
    # lost its environment, so wait_no_new_qemu no longer sees it, but is not a zombie yet: on a loaded
    # machine that takes a moment, so the end is awaited, not asserted at once.
    deadline = time.monotonic() + 15
    while hostid.pid_alive(qemu) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{qemu}").exists() or hostid.pid_alive(qemu) is False, "QEMU outlived pveoi by 15 s"
    left = pid_dirs(run.proc.pid)
    assert left, "a SIGKILLed pveoi cannot clean up (that is the fault the next start repairs)"
    # The next pveoi start (here one that fails fast on a bad value) removes them.
    nxt = subprocess.run(pveoi("ab", "--runs", "0"), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert nxt.returncode == 2
    assert not any(p.exists() for p in left), f"not reaped: {left}"


# ---------------------------------------------------------------- the A/B through the virtual KVM host


@pytest.mark.kvm
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupting_the_virtual_ab_leaves_no_vm_no_temp_and_no_result(  # type: ignore[no-untyped-def]
        guest_kernel: Path, host_kernel: Path, guest_image, tmp_path: Path, sig: int) -> None:
    history, result = tmp_path / "history", tmp_path / "ab.json"
    run = Run("ab", "--host", "virtual", "--runs", "1", "--kernel", str(guest_kernel), "--image",
              str(guest_image.path), "--json", str(result), "--history", str(history), "--logs", str(tmp_path / "logs"),
              "--timeout", "900")
    assert run.proc.stdout is not None
    seen = []
    for line in run.proc.stdout:  # the A/B inside the virtual host has a guest up and is measuring it
        seen.append(line)
        if "boot + workload" in line:
            break
    else:
        pytest.fail(f"the A/B never got to a guest: {''.join(seen)[-2000:]} {run.stderr[-2000:]}")
    assert pid_dirs(run.proc.pid), "the virtual A/B has its temp dir while it runs"
    time.sleep(5)  # well inside the first guest's boot or workload
    run.proc.send_signal(sig)
    rc = run.finish(timeout=120)
    assert not wait_no_new_qemu(run.before, timeout=30), "the virtual host or its guest outlived pveoi"
    assert not result.exists(), "an interrupted A/B wrote a result"
    assert not history.exists() or os.listdir(history) == [], "an interrupted A/B added to the history"
    if sig == signal.SIGINT:
        assert rc == 130
        assert clean_stderr_lines(run.stderr)[-1] == "pveoi: interrupted; everything started was stopped"
        assert pid_dirs(run.proc.pid) == []
    else:
        assert rc == -signal.SIGKILL
        left = pid_dirs(run.proc.pid)
        assert left, "a SIGKILLed pveoi cannot clean up (that is the fault the next start repairs)"
        subprocess.run(pveoi("ab", "--runs", "0"), capture_output=True, timeout=60, cwd=REPO, check=False)
        assert not any(p.exists() for p in left), f"not reaped: {left}"


@pytest.mark.kvm
@pytest.mark.slow
def test_virtual_host_sigkilled_mid_ab(guest_kernel: Path, host_kernel: Path, guest_image,  # type: ignore[no-untyped-def]
                                       tmp_path: Path) -> None:
    history, result = tmp_path / "history", tmp_path / "ab.json"
    run = Run("ab", "--host", "virtual", "--runs", "1", "--kernel", str(guest_kernel), "--image",
              str(guest_image.path), "--json", str(result), "--history", str(history), "--logs", str(tmp_path / "logs"),
              "--timeout", "900", "--retries", "0")  # no restart: the death itself is the outcome
    assert run.proc.stdout is not None
    for line in run.proc.stdout:
        if "boot + workload" in line:
            break
    else:
        pytest.fail(f"the A/B never got to a guest: {run.stderr[-2000:]}")
    time.sleep(3)
    os.kill(qemu_child(run.proc.pid), signal.SIGKILL)  # the virtual KVM host dies under the measurement
    assert run.finish(timeout=120) == 2
    line = one_line_error(run.stderr, "the virtual host stopped before the command finished: QEMU (pid",
                          "was killed by SIGKILL", "the OOM killer?")
    # Infrastructure, retries spent: the history records verdict error with that very cause, no figures.
    doc = json.loads(result.read_text())
    assert doc["verdict"] == "error" and doc["error"]["kind"] == "infrastructure"
    assert doc["error"]["message"] in line and doc["workloads"] == {}
    assert len(os.listdir(history)) == 1
    run.assert_clean()


# ---------------------------------------------------------------- an A/B that stops on an error


def test_an_ab_that_stops_on_an_error_records_why(guest_kernel: Path, guest_image, host_kernel: Path,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    """A deadline that cannot be met stops the A/B after the host was chosen: the history gets a
    result with verdict ``error`` and the same cause and fix as the one line on stderr, so a nightly's
    ``report --check`` sees a night that measured nothing instead of the last pass."""
    history, out = tmp_path / "history", tmp_path / "ab.json"
    run = Run("ab", "--host", "virtual", "--timeout", "1", "--kernel", str(guest_kernel), "--image",
              str(guest_image.path), "--history", str(history), "--json", str(out), "--logs", str(tmp_path / "logs"))
    assert run.finish() == 2
    line = one_line_error(run.stderr)
    doc = json.loads(out.read_text())
    assert doc["verdict"] == "error" and doc["error"]["type"] == "GuestTimeout"
    assert line == f"pveoi: error: {doc['error']['message']}; fix: {doc['error']['fix']}"
    assert doc["runner"]["id"] and doc["runner"]["doctor"] and doc["host"]["chosen"] == "virtual"
    [recorded] = list(history.glob("*.json"))
    assert json.loads(recorded.read_text()) == doc
    assert load_history(history).runs[0].record("timer").verdict == "error"  # type: ignore[union-attr]
    run.assert_clean()


def test_a_command_line_mistake_records_nothing(tmp_path: Path) -> None:
    history = tmp_path / "history"
    run = Run("ab", "--host", "virtual", "--kernel", str(tmp_path / "nope"), "--history", str(history))
    assert run.finish() == 2
    one_line_error(run.stderr, "not found", "pass a bzImage")
    assert list(history.glob("*")) == []
    run.assert_clean()
