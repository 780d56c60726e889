"""
The virtual KVM host: a TCG QEMU (``-cpu max`` exposes SVM) running pveoi's
kernel (the one its guests run) with KVM built in, inside which real ``kvm_amd`` runs
the measured guests.

Design (see docs/virtual-host.md): the whole harness runs inside.
The host's root filesystem is the L1 root (virtio-9p, read-only, ``cache=loose``),
so the caller's Python, virtualenv, checkout, kernels and images are all there
at the same paths; one writable share (the results dir) carries results back.
The caller runs ``pveoi ab --host direct`` inside, i.e. exactly the code path
of a hardware KVM host, and reads its JSON result from the share. Building
kernels and images happens outside, at native speed, before L1 boots.

Output: L1's kernel console is ttyS0 (watched for panics), the command's
stdout+stderr is ttyS1, streamed to the caller as it comes.

Liveness: nested TCG now and then freezes the whole L1 (no console line, no timer,
for as long as one cares to wait), and then no timeout inside it can fire. L1's init
rewrites a heartbeat file on the results share every few seconds; when it has not
changed for ``VhostSpec.stall_timeout`` the caller samples L1's CPUs over QMP (RIP,
HLT, twice), keeps that and the console as evidence, stops L1 and raises
:class:`~e2e.errors.VhostStalled` (infrastructure, so the runner restarts the virtual host).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..build.cache import cache_root
from ..build.vhostkernel import L1Boot, vhost_boot
from ..errors import (
    CapabilityError,
    ConfigError,
    Finding,
    GuestError,
    GuestPanic,
    GuestTimeout,
    Kind,
    PveoiError,
    VhostStalled,
)
from ..util.paths import DATA, REPO_ROOT
from .argv import MachineSpec, base_argv, quote_optarg
from .console import stop_reader
from .ending import HOST_QUIT, HOST_RESET, KILLED, QEMU_ERROR, RUNNING, ExitCause
from .machine import Machine
from .shutdowns import L1_KERNEL
from .trials import Trial

log = logging.getLogger(__name__)

INIT_SCRIPT = DATA / "vhost-init.sh"
READY_PATTERN = r"pveoi-vhost-ready dev=\d svm=\d npt=\S+"
ERROR_PATTERN = r"pveoi-vhost-error: [^\r\n]*\r?\n"
"""What the virtual host's init (data/vhost-init.sh) prints before it gives up."""
CTL = ".pveoi-vhost"
HEARTBEAT = "beat"
"""The file in ``CTL`` L1's init rewrites every few seconds while the command runs."""
STALLED = "virtual host stall"
"""The class of a :class:`~e2e.errors.VhostStalled` (as :attr:`e2e.errors.QemuExited.cause` names an exit's)."""
ENV_PASSED = ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "LANG", "PVEOI_NO_DOWNLOAD")


@dataclass(frozen=True)
class VhostSpec:
    """The virtual host's shape.

    :param kernel: the L1 kernel: pveoi's own (KVM, KVM_AMD, 9p built in), or one with them as
        modules, which ``boot`` loads.
    :param boot: what QEMU loads for ``kernel`` (:func:`e2e.build.vhostkernel.vhost_boot`: a modular kernel's
        initramfs, its vmlinux); None: ``kernel`` itself, no initramfs.
    :param keep: paths under the host's ``/tmp`` that must be visible inside
        (the L1 mounts a private tmpfs on ``/tmp``); the checkout, the Python
        environment and the cache are added automatically.
    """

    kernel: Path
    cpus: int = 2
    memory_mb: int = 2048
    timeout: float = 1800.0
    qemu: str = "qemu-system-x86_64"
    keep: tuple[Path, ...] = field(default=())
    stall_timeout: float = 150.0
    """Seconds without a heartbeat from L1's userspace after which L1 counts as stalled
    (the init script beats every 5 s; a loaded but live L1 was never seen 30 s late)."""
    kernel_under_test: bool = False
    """``kernel`` is a host kernel under test: its panic is a finding, and a crash names it too;
    otherwise a crash is the virtual host's own (nested TCG), infrastructure."""
    silence_timeout: float | None = None
    """Seconds the command may print nothing while L1 still beats, for a command that prints as it
    goes (the inner runner: a line per guest, and no guest attempt lasts this long); None: no limit."""
    cpu: str = "max"
    """L1's ``-cpu`` model (TCG's ``max`` exposes SVM; a trial may name another, e2e.vm.trials)."""
    append: tuple[str, ...] = ()
    """Extra kernel parameters for L1 (a trial's, e.g. ``kvm_amd.npt=0``)."""
    tcg_thread: str = "multi"
    """L1's TCG threading: ``multi`` (a host thread per vCPU) or ``single`` (a trial's, e2e.vm.trials)."""
    host_cpus: tuple[int, ...] = ()
    """The CPUs of this machine every thread of L1's QEMU is confined to (a trial's, e2e.vm.trials); none:
    the scheduler's choice."""
    tb_size_mb: int | None = None
    """L1's TCG translation cache in MiB (a trial's, e2e.vm.trials); None: QEMU's default."""
    boot: L1Boot | None = None


def vhost_error(message: str, cls: str, evidence: Sequence[str], fix: str,
                kind: type[GuestError] = GuestError) -> GuestError:
    """An infrastructure error about the virtual host itself, its class prefixed ``virtual host``
    (``virtual host panic``, ``virtual host triple fault``, ``virtual host stall``, ...) so it never
    reads as the guest's."""
    return kind(message, fix, Kind.INFRASTRUCTURE, cause=f"virtual host {cls}" if cls else "", evidence=evidence)


def stall_reason(beat_age: float, kernel_said: float | None, last_output: float, now: float,
                 limit: float, silence_limit: float | None = None) -> str | None:
    """Why L1 counts as stalled, or None (pure; times in one monotonic clock).

    Three signs: its userspace stopped beating for ``limit`` s (the whole machine froze); or its
    kernel reported a stall (RCU stall, lockup) at ``kernel_said``, its latest such report, and
    the command has printed nothing in the ``2 * limit`` s since (L1 was seen to limp on like
    that, its command stuck for good); or the command, one that prints as it goes, printed nothing
    for ``silence_limit`` s while L1 still beat (seen once: L1 idle, the inner runner stuck between
    two steps of a guest for 25 minutes). An L1 whose command prints again after the report is
    left alone; a later report starts the count again.
    """
    if beat_age > limit:
        return f"no heartbeat from its userspace for {beat_age:.0f} s"
    if kernel_said is not None and last_output < kernel_said and now - kernel_said > 2 * limit:
        return f"its kernel reported a stall {now - kernel_said:.0f} s ago and the command printed nothing since"
    if silence_limit is not None and now - last_output > silence_limit:
        return (f"the command printed nothing for {now - last_output:.0f} s (no guest takes more than "
                f"{silence_limit:.0f} s) while the machine still beat")
    return None


_KERNEL_STALL = re.compile(r"detected stalls?|self-detected stall|soft lockup|hard LOCKUP")
"""The RCU stall detector's and the lockup watchdogs' words (not the hung-task warning, which a
slow but live 9p read can raise)."""


def vhost_argv(spec: VhostSpec, results: Path, qmp_fd: int, console_fd: int, output_fd: int) -> list[str]:
    """argv of the L1 QEMU (pure).

    :param results: the host dir shared writable into L1 at the same path.
    :raises ConfigError: the path would split L1's kernel command line (whitespace,
        quotes), i.e. it could inject kernel parameters.
    """
    if any(c.isspace() or c in "\"\\" for c in str(results)):
        raise ConfigError(f"the results path {str(results)!r} has whitespace or quotes, which would split the "
                          "virtual host's kernel command line", fix="use a results directory without them")
    append = " ".join([
        # pci=nommconf, pty.legacy_count=0: what costs seconds of a TCG boot and serves nothing here (as
        # for the guest, e2e.vm.argv.DEFAULT_APPEND)
        "console=ttyS0", "quiet", "panic=-1", "random.trust_cpu=on", "pci=nommconf", "pty.legacy_count=0",
        *spec.append,
        "root=/dev/root", "rootfstype=9p",
        "rootflags=trans=virtio,version=9p2000.L,msize=262144,cache=loose", "ro",
        "init=/bin/sh", f"PVEOI_RESULTS={results}", "--", str(INIT_SCRIPT),
    ])
    accel = f"tcg,thread={spec.tcg_thread}" + (f",tb-size={spec.tb_size_mb}" if spec.tb_size_mb else "")
    return [
        *base_argv(spec.qemu, "pveoi-vhost", accel, spec.cpu, spec.cpus, spec.memory_mb,
                   qmp_fd, console_fd),
        "-chardev", f"socket,id=out,fd={output_fd}",
        "-serial", "chardev:out",
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=/dev/root",
        "-fsdev", f"local,id=results,path={quote_optarg(str(results))},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=results,mount_tag=pveoi-results",
        "-kernel", str(spec.boot.kernel if spec.boot is not None else spec.kernel),
        *(("-initrd", str(spec.boot.initrd)) if spec.boot is not None and spec.boot.initrd is not None else ()),
        "-append", append,
    ]


def command_script(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> str:
    """The shell script L1's init runs: cd, export, exec (every word quoted)."""
    lines = ["# written by pveoi; run by the virtual host's init", f"cd {shlex.quote(str(cwd))} || exit 125"]
    for key in sorted(env):
        lines.append(f"export {key}={shlex.quote(env[key])}")
    lines.append("exec " + shlex.join(argv))
    return "\n".join(lines) + "\n"


def paths_to_keep(extra: Sequence[Path]) -> list[str]:
    """Paths under /tmp that L1 must bind back in: checkout, Python env, cache, extras.

    Never ``/tmp`` itself: binding the host's (read-only) /tmp over L1's own would leave
    L1 without a writable temp dir (as running pveoi from ``cd /tmp`` once did).
    """
    candidates = [REPO_ROOT, Path(sys.prefix), Path(sys.base_prefix),
                  cache_root(), Path.cwd(), *extra]
    keep: list[str] = []
    for path in candidates:
        p = str(path.resolve())
        if p.startswith("/tmp/") and p not in keep:
            keep.append(p)
    return keep


class _Pump:
    """Copies L1's command output (ttyS1) to a sink and a log file as it arrives."""

    def __init__(self, sock: socket.socket, logpath: Path, sink: Callable[[bytes], None] | None) -> None:
        self._sock = sock
        self._log: IO[bytes] = open(logpath, "wb")
        self._sink = sink
        self.last = time.monotonic()
        """When output last came (monotonic)."""
        self._thread = threading.Thread(target=self._run, name="pveoi-vhost-out", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while data := self._sock.recv(65536):
                self.last = time.monotonic()
                data = data.replace(b"\r\n", b"\n")
                self._log.write(data)
                self._log.flush()
                if self._sink is not None:
                    self._sink(data)
        except OSError:
            pass

    def close(self) -> None:
        stop_reader(self._thread, self._sock)
        self._log.close()


class VirtualKvmHost(Machine):
    """One L1 virtual KVM host running one command.

    :param results: the writable dir shared into L1 (created if missing).
    :param sink: receives the command's output chunks (default: none).
    """

    def __init__(self, spec: VhostSpec, results: Path, sink: Callable[[bytes], None] | None = None,
                 artifacts: Path | None = None) -> None:
        placeholder = MachineSpec(kernel=spec.kernel, name="pveoi-vhost", qemu=spec.qemu)
        super().__init__(placeholder, READY_PATTERN, artifacts=artifacts, error_pattern=ERROR_PATTERN)
        self.vspec = spec
        self.results = results.resolve()
        self._sink = sink
        self._pump: _Pump | None = None
        self.kvm_facts: dict[str, str] = {}
        self.boot_seconds: float | None = None
        #: The part's stages once it ran: ``boot`` (to ready), ``command`` (ready to its end), ``shutdown``.
        self.stage_seconds: dict[str, float] = {}

    def _pre_launch(self) -> None:
        """The command's output channel: L1's third serial port, pumped into ``<name>-output.log``."""
        out_ours, out_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._extra_theirs = [out_theirs]
        self._pump = _Pump(out_ours, self.logdir / f"{self.spec.name}-output.log", self._sink)

    def _post_launch(self) -> None:
        """A trial's confinement of L1 to some of this machine's CPUs, every QEMU thread (its vCPU
        threads exist once QMP answers; threads it makes later inherit the main thread's set)."""
        if not self.vspec.host_cpus:
            return
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), self.vspec.host_cpus)
            except ProcessLookupError:
                continue  # a thread that ended meanwhile
        self.log.debug("L1's QEMU confined to CPUs %s", self.vspec.host_cpus)

    def _post_shutdown(self) -> None:
        if self._pump is not None:
            self._pump.close()
            self._pump = None

    def _build_argv(self, qmp_fd: int, console_fd: int) -> list[str]:
        return vhost_argv(self.vspec, self.results, qmp_fd, console_fd, self._extra_theirs[0].fileno())

    def run(self, argv: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None) -> int:
        """Boot L1, run ``argv`` inside as root, return its exit status.

        :raises CapabilityError: L1 has no usable KVM (no /dev/kvm, no svm, no NPT).
        :raises GuestTimeout: the command outlived ``spec.timeout``.
        :raises GuestError: L1 died before the command finished.
        """
        if not INIT_SCRIPT.is_file():
            raise PveoiError(f"{INIT_SCRIPT} is missing", fix="reinstall pveoi")
        ctl = self.results / CTL
        if ctl.exists():
            shutil.rmtree(ctl)
        ctl.mkdir(parents=True, mode=0o700)
        full_env = {k: os.environ[k] for k in ENV_PASSED if k in os.environ}
        full_env.update({"HOME": "/root", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
                         "PYTHONUNBUFFERED": "1", "PVEOI_CACHE": str(cache_root()), "PVEOI_IN_VHOST": "1",
                         L1_KERNEL: str(self.vspec.kernel),
                         "LC_ALL": "C.UTF-8", "TERM": "dumb"})
        full_env.update(env or {})
        (ctl / "cmd.sh").write_text(command_script(argv, cwd or Path.cwd(), full_env))
        (ctl / "keep").write_text("".join(f"{p}\n" for p in paths_to_keep(self.vspec.keep)))
        started = time.monotonic()
        self.launch()
        try:
            self.wait_ready(timeout=min(300.0, self.vspec.timeout))
            self.kvm_facts = self._read_kvm_facts(ctl / "kvm")
            self.boot_seconds = time.monotonic() - started
            self.log.info("virtual host up in %.1fs: /dev/kvm on kvm_amd, npt=%s, nested=%s",
                          self.boot_seconds, self.kvm_facts.get("npt"), self.kvm_facts.get("nested"))
            ready = time.monotonic()
            self._watch(ctl / HEARTBEAT, started + self.vspec.timeout)
            self.stage_seconds = {"boot": round(self.boot_seconds, 2), "command": round(time.monotonic() - ready, 2)}
        finally:
            before = time.monotonic()
            self.shutdown()
            if self.stage_seconds:
                self.stage_seconds["shutdown"] = round(time.monotonic() - before, 2)
        try:
            self.console.check()
        except GuestPanic as err:
            if self.vspec.kernel_under_test:  # the KVM host kernel under test panicked: a finding
                raise Finding(f"the host kernel under test panicked in the virtual host: {err}",
                              fix="read the virtual host's console log for the backtrace") from err
            # the virtual host's own kernel: infrastructure, not the kernel under test
            raise vhost_error(f"the virtual host's kernel panicked: {err}", "panic", tuple(err.lines[:6]),
                              "the virtual host's own kernel, not the one under test (nested TCG faults now and "
                              "then); the part resumes in a fresh virtual host after the guests already measured; "
                              "if it repeats, read its console log") from err
        rc_file = ctl / "rc"
        if not rc_file.is_file():
            cause = self.exit_cause()
            if cause is not None and cause.cls not in ("", RUNNING):
                how = self.death_note() if cause.cls == KILLED else None  # "QEMU (pid 7) was killed by SIGKILL"
                raise vhost_error(f"the virtual host stopped before the command finished: {how or cause.describe()}",
                                  cause.cls, cause.evidence, self._crash_fix(cause))
            raise vhost_error("the virtual host stopped before the command finished; console tail: "
                              + " | ".join(self.console.tail(3)), "", (),
                              "re-run with -vv and read the console log")
        return int(rc_file.read_text().strip() or "1")

    def _crash_fix(self, cause: ExitCause) -> str:
        """What to do about an L1 that stopped: whose failure it is and what happens next."""
        if cause.cls in (KILLED, HOST_QUIT, HOST_RESET, QEMU_ERROR):  # causes outside L1: as for any QEMU
            return f"{cause.fix} (the virtual host's console and QEMU logs)"
        if self.vspec.kernel_under_test:
            return ("the host kernel under test, or nested TCG under it, stopped the virtual host: read its "
                    "console and QEMU logs; the same run on pveoi's own host kernel (--host-base) tells them apart")
        return ("the virtual host's own failure (its kernel under nested TCG), not the kernel under test: the part "
                "resumes in a fresh virtual host after the guests already measured; if it repeats, read its console "
                "and QEMU logs")

    def _watch(self, beat: Path, deadline: float) -> None:
        """Wait for the command to end, watching L1's heartbeat.

        :raises GuestTimeout: past ``deadline`` (monotonic).
        :raises VhostStalled: L1 stalled (:func:`stall_reason`, ``stall_timeout``).
        """
        assert self._proc is not None
        # Heartbeats and stall reports are judged by when pveoi saw them change (monotonic), never
        # by comparing the file's mtime with this machine's wall clock.
        last_beat, beat_seen = time.monotonic(), b""
        console_from = len(self.console.text())  # reports during boot are not about the command
        reports, kernel_said = 0, None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                kept = self.report_processes(beat.parent)
                what_ran = f"; what ran in the virtual host then: {kept}" if kept else ""
                raise GuestTimeout(f"the command in the virtual host ran past {self.vspec.timeout:.0f}s",
                                   fix=f"raise --timeout{what_ran}")
            try:
                self._proc.wait(timeout=min(5.0, max(0.1, left)))
                return
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            try:
                beat_now = beat.read_bytes()
            except OSError:
                beat_now = beat_seen
            if beat_now != beat_seen:
                last_beat, beat_seen = now, beat_now
            seen = len(_KERNEL_STALL.findall(self.console.text()[console_from:]))
            if seen > reports:
                reports, kernel_said = seen, now
            last_output = self._pump.last if self._pump is not None else now
            why = stall_reason(now - last_beat, kernel_said, last_output, now, self.vspec.stall_timeout,
                               self.vspec.silence_timeout)
            if why is not None:
                if now - last_beat < self.vspec.stall_timeout:  # its userspace still answers: ask it what is stuck
                    self.report_processes(beat.parent)
                raise self._stalled(why)

    def report_processes(self, ctl: Path, wait: float = 15.0) -> Path | None:
        """Ask L1's init for every process's state and kernel wait channel (and the inner runner's Python
        stacks, which it dumps to its stacks file on SIGUSR1), and keep the answer as
        ``<name>-ps.txt`` beside the console log; None if L1 did not answer within ``wait`` s."""
        answer = ctl / "ps"
        try:
            answer.unlink(missing_ok=True)
            (ctl / "ps-request").write_text("")
        except OSError as err:
            self.log.warning("could not ask the virtual host for its processes: %s", err)
            return None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if answer.is_file():
                time.sleep(1.0)  # the stacks the signal asked for, written beside the inner result
                try:
                    text = answer.read_text(errors="replace")
                except OSError as err:
                    self.log.warning("could not read the virtual host's process report: %s", err)
                    return None
                return self.keep_evidence("ps", text.splitlines())
            time.sleep(0.5)
        self.log.warning("the virtual host did not report its processes within %.0f s", wait)
        return None

    def _stalled(self, why: str) -> GuestError:
        """The error for a stalled L1, with its CPUs sampled twice over QMP (kept, with each CPU's
        local APIC, in ``pveoi-vhost-stall.txt`` beside its console log) and the console's last lines."""
        sample = self.sample_cpus(self.vspec.cpus, lapic=True)
        if sample.all_halted:
            # Every CPU idle in HLT the whole time, while its userspace had work to do (the heartbeat):
            # the interrupt that should wake it (its timer) never came.
            why += "; every CPU halted throughout, waiting for an interrupt that never came"
        cpus = "; ".join(sample.described())
        tail = [ln for ln in self.console.tail(5) if ln.strip()]
        # What a stalled kernel says, when it can still say anything (the RCU stall detector, the
        # soft/hard lockup watchdogs); otherwise the console's last line.
        said = next((ln for ln in reversed(self.console.text().splitlines()) if _KERNEL_STALL.search(ln)), None)
        kept = self.keep_evidence("stall", [why, *sample.dump, "== console tail", *tail])
        return vhost_error(
            f"the virtual host stalled: {why}; its CPUs: {cpus}"
            + (f"; console: {said or tail[-1]}" if said or tail else "; console: silent"),
            "stall", [why, *sample.states, *(f"console: {ln}" for ln in tail[-2:])],
            f"a property of nested TCG seen now and then; the run restarts the virtual host; if it "
            f"repeats, read {kept} and the console log beside it", VhostStalled)

    def _read_kvm_facts(self, path: Path) -> dict[str, str]:
        try:
            facts = dict(kv.split("=", 1) for kv in path.read_text().split())
        except (OSError, ValueError) as err:
            raise GuestError("the virtual host did not report its KVM state",
                             fix="check the host kernel has KVM_AMD, built in or as a module") from err
        # Nested paging off is no failure when a trial asked for it (kvm_amd.npt=0 on L1's command line).
        npt_off = any(w.replace("-", "_") in ("kvm_amd.npt=0", "kvm_amd.npt=N") for w in self.vspec.append)
        if facts.get("dev") != "1" or facts.get("svm") != "1" or (facts.get("npt") not in ("Y", "1") and not npt_off):
            raise CapabilityError(
                f"the virtual host has no usable KVM ({' '.join(f'{k}={v}' for k, v in facts.items())})",
                fix="the L1 kernel needs KVM_AMD (built in or as a module) and QEMU's TCG 'max' CPU must expose "
                    "svm and npt",
            )
        return facts


def run_in_vhost(argv: Sequence[str], kernel: Path, results: Path, *, cpus: int = 2, memory_mb: int = 2048,
                 timeout: float = 1800.0, sink: Callable[[bytes], None] | None = None,
                 artifacts: Path | None = None, env: Mapping[str, str] | None = None,
                 keep: Sequence[Path] = (), under_test: bool = False,
                 silence_timeout: float | None = None) -> tuple[int, VirtualKvmHost]:
    """Boot a virtual host, run ``argv`` in it, tear it down.

    :param results: the writable dir shared into L1 (the caller owns and removes it).
    :param keep: files or dirs under the host's /tmp the command needs (bound into L1's own /tmp;
        a file's directory is bound).
    :returns: the command's exit status and the (shut down) host object.
    """
    keep = [p if p.is_dir() else p.parent for p in keep]
    trial = Trial.from_environ(os.environ)
    host = VirtualKvmHost(VhostSpec(kernel, cpus, memory_mb, timeout, keep=tuple(keep), kernel_under_test=under_test,
                                    silence_timeout=silence_timeout, cpu=trial.cpu, append=trial.append,
                                    tcg_thread=trial.tcg_thread, host_cpus=trial.host_cpus, tb_size_mb=trial.tb_size_mb,
                                    boot=vhost_boot(kernel)),
                          results, sink, artifacts)
    return host.run(argv, env=env), host
