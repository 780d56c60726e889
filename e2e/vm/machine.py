"""
One :class:`Machine` owns one QEMU process for its whole life.

Lifecycle: ``NEW -> RUNNING -> SHUTDOWN``. ``launch()`` starts QEMU with QMP
and the serial console on socketpairs (no socket files), ``shutdown()`` is
idempotent and escalates QMP ``quit`` -> SIGTERM -> SIGKILL, always reaps, and
removes the machine's private temp dir. QEMU gets ``PR_SET_PDEATHSIG(SIGKILL)``
so it dies with the harness even if the harness is SIGKILLed.
"""

from __future__ import annotations

import enum
import logging
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.protocol import StateError
from qemu.qmp.qmp_client import ExecInterruptedError, ExecuteError

from ..errors import (
    GuestError,
    GuestTimeout,
    LaunchError,
    PveoiError,
    QemuExited,
    QmpCommandError,
    QmpLost,
    QmpTimeout,
)
from ..util.spawn import popen
from ..util.tmpdirs import mkdtemp, reap_stale
from .argv import MachineSpec, parse_usernet_port, qemu_argv
from .console import GUEST_ERROR_PATTERN, Console
from .exitcause import RUNNING, ExitCause, classify_exit
from .ssh import GuestSsh

log = logging.getLogger(__name__)

class Runstate(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class VCpu:
    index: int
    thread_id: int
    qom_path: str


_RIP = re.compile(r"\b[RE]IP=([0-9a-fA-F]+)")  # EIP= while the vCPU is not yet in long mode (firmware, boot)
_HLT = re.compile(r"\bHLT=(\d)")


def cpu_state(registers: str) -> str:
    """``RIP=... HLT=.`` from HMP ``info registers`` text (pure; a 32-bit vCPU's EIP is given as its
    RIP); ``?`` for what is missing."""
    rip, hlt = _RIP.search(registers), _HLT.search(registers)
    return f"RIP={rip.group(1).lower() if rip else '?'} HLT={hlt.group(1) if hlt else '?'}"


@dataclass(frozen=True)
class CpuSample:
    """:meth:`Machine.sample_cpus`: each vCPU's ``CPUn RIP=... HLT=.`` at the second sample, those
    the same 1 s apart, and the full HMP answers."""

    states: list[str]
    still: list[str]
    dump: list[str]

    @property
    def all_halted(self) -> bool:
        """Every vCPU in HLT throughout the second."""
        return bool(self.states) and all("HLT=1" in st and st in self.still for st in self.states)

    def described(self) -> list[str]:
        return [f"{st}{' (same 1 s later)' if st in self.still else ''}" for st in self.states]


class Machine:
    """One guest.

    :param spec: what to run.
    :param ready_pattern: the console regex that means the guest is ready.
    :param artifacts: a directory where ``<name>-console.log`` and
        ``<name>-qemu.log`` are written and kept; None keeps them only while
        the machine runs.
    :param qmp_timeout: seconds any QMP command may take.
    :param error_pattern: the console regex of a failed init step, fatal at
        once (:class:`~e2e.errors.GuestInitError`); None: none.
    """

    def __init__(self, spec: MachineSpec, ready_pattern: str, artifacts: Path | None = None,
                 qmp_timeout: float = 30.0, error_pattern: str | None = GUEST_ERROR_PATTERN) -> None:
        self.spec = spec
        self.ready_pattern = ready_pattern
        self.error_pattern = error_pattern
        self.artifacts = artifacts
        self.qmp_timeout = qmp_timeout
        self.state = Runstate.NEW
        self.log = log.getChild(spec.name)
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._qmp_sock: socket.socket | None = None
        self._console: Console | None = None
        self._ssh: list[GuestSsh] = []
        self.argv: list[str] = []
        self.exitcode: int | None = None
        self.launched_at: float | None = None
        self._extra_theirs: list[socket.socket] = []  # more fds QEMU inherits (subclasses)
        #: Every QMP event QEMU sent (drained when its end is classified and at shutdown).
        self.events: list[dict[str, Any]] = []
        #: How QEMU ended, once known (:meth:`exit_cause`); for a machine left on an error while
        #: QEMU still ran, class ``qemu running``.
        self.ended: ExitCause | None = None

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Machine:
        self.launch()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if isinstance(exc, PveoiError):
                if self.ended is None and self.state is Runstate.RUNNING:
                    self.ended = self.exit_cause() or ExitCause(RUNNING, ("QEMU still ran",))
                self._keep_logs_for(exc)
        finally:
            self.shutdown()

    def _keep_logs_for(self, err: PveoiError) -> None:
        """Keep the console and QEMU logs an error points at when they live in the temp dir.

        The temp dir goes at shutdown, so the logs move to the cache's
        ``logs/failed/`` and the error's text names their new place.
        """
        if self.artifacts is not None or self._tmp is None or str(self._tmp) not in str(err):
            return
        from ..build.cache import cache_root

        kept = cache_root() / "logs" / "failed" / f"{time.strftime('%Y%m%d-%H%M%S')}-{self._tmp.name}"
        try:
            kept.mkdir(parents=True, exist_ok=True)
            for log_file in self._tmp.glob("*.log"):
                shutil.copy2(log_file, kept / log_file.name)
        except OSError as copy_err:
            self.log.warning("could not keep the logs of %s in %s: %s", self.spec.name, kept, copy_err)
            return
        err.message = err.message.replace(str(self._tmp), str(kept))
        if err.fix:
            err.fix = err.fix.replace(str(self._tmp), str(kept))

    def _require(self, state: Runstate, action: str) -> None:
        if self.state is not state:
            hint = {Runstate.NEW: "call launch() first", Runstate.SHUTDOWN: "the machine was shut down; make a new one",
                    Runstate.RUNNING: "call shutdown() first"}[self.state]
            raise PveoiError(f"cannot {action}: machine is {self.state.value}", fix=hint)

    @property
    def workdir(self) -> Path:
        if self._tmp is None:
            raise PveoiError("machine has no work dir", fix="call launch() first")
        return self._tmp

    @property
    def logdir(self) -> Path:
        """Where console and QEMU logs go: ``artifacts`` if given (kept), else the temp dir."""
        if self.artifacts is not None:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            return self.artifacts
        return self.workdir

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise PveoiError("machine is not running", fix="call launch() first")
        return self._proc.pid

    def launch(self) -> None:
        """Start QEMU and connect QMP and the console.

        :raises LaunchError: QEMU exited or QMP did not answer (argv and log tail attached).
        """
        self._require(Runstate.NEW, "launch")
        for path in (self.spec.kernel, self.spec.initrd):
            if path is not None and not Path(path).is_file():
                raise LaunchError(f"{path} does not exist", fix="build or fetch the kernel/image first")
        reap_stale()
        self._tmp = mkdtemp("vm")
        self.state = Runstate.RUNNING
        try:
            self._launch()
        except BaseException:
            self.shutdown()
            raise

    def _launch(self) -> None:
        qmp_ours, qmp_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        con_ours, con_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.argv = self._build_argv(qmp_theirs.fileno(), con_theirs.fileno())
        extra_fds = tuple(s.fileno() for s in self._extra_theirs)
        self.log.debug("launching: %s", " ".join(self.argv))
        qemu_log = open(self.logdir / f"{self.spec.name}-qemu.log", "wb")
        try:
            self._proc = popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT,
                pass_fds=(qmp_theirs.fileno(), con_theirs.fileno(), *extra_fds),
            )
        except OSError as err:
            qmp_ours.close()
            con_ours.close()
            raise LaunchError(f"cannot run {self.argv[0]}: {err.strerror}", self.argv,
                              fix="apt-get install qemu-system-x86 (or run host_config/install-deps.sh)") from err
        finally:
            qemu_log.close()
            qmp_theirs.close()
            con_theirs.close()
            for sock in self._extra_theirs:
                sock.close()
        self.launched_at = time.monotonic()
        self._console = Console(con_ours, self.logdir / f"{self.spec.name}-console.log", self.ready_pattern,
                                self.error_pattern)
        self._qmp_sock = qmp_ours
        self._qmp = QEMUMonitorProtocol(qmp_ours, nickname=self.spec.name)
        # qemu.qmp's connect() has no deadline: wait for QEMU's greeting ourselves.
        if not select.select([qmp_ours], [], [], self.qmp_timeout)[0]:
            raise self._launch_error(f"QEMU sent no QMP greeting within {self.qmp_timeout:.0f} s")
        try:
            self._qmp.connect(negotiate=True)
        except (QMPError, OSError) as err:
            raise self._launch_error("QEMU did not answer on QMP") from err
        self._qmp.settimeout(self.qmp_timeout)  # a hung QEMU must fail a command, not hang pveoi
        self.log.debug("QEMU pid %d up, QMP negotiated", self._proc.pid)

    def _build_argv(self, qmp_fd: int, console_fd: int) -> list[str]:
        """QEMU's argv; subclasses (the virtual host) build their own."""
        return qemu_argv(self.spec, qmp_fd, console_fd)

    def _launch_error(self, message: str) -> LaunchError:
        code = None
        if self._proc is not None:
            try:
                code = self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
        output = self.qemu_log()
        fix = None
        if "Could not access KVM kernel module" in output or "failed to initialize kvm" in output:
            fix = "this host cannot run KVM guests; use --accel tcg or --host virtual"
        elif "can't apply global" in output or "Property" in output:
            fix = "this QEMU does not know a requested -cpu property"
        return LaunchError(message, self.argv, code, output, fix=fix or "read the QEMU log above")

    def qemu_log(self) -> str:
        try:
            return (self.logdir / f"{self.spec.name}-qemu.log").read_text(errors="replace")
        except (OSError, PveoiError):
            return ""

    def log_paths(self) -> list[Path]:
        """The logs this machine writes (console, QEMU), where they are kept (``artifacts``)."""
        if self.artifacts is None:
            return []
        return [*(self.artifacts / f"{self.spec.name}-{what}.log" for what in ("console", "qemu")),
                self.artifacts / f"{self.spec.name}-not-ready.txt"]  # when the boot deadline passed

    def _drain_events(self, wait: float = 0.0) -> None:
        """Move the QMP events QEMU sent into :attr:`events`; wait up to ``wait`` seconds for a SHUTDOWN.

        After QEMU's exit its last events sit in the QMP socket until qemu.qmp's reader runs:
        pulling runs it.
        """
        if self._qmp is None:
            return
        deadline = time.monotonic() + wait
        while True:
            try:
                event = self._qmp.pull_event(wait=max(0.0, min(0.1, deadline - time.monotonic())) or False)
            except (TimeoutError, QMPError, OSError, RuntimeError, EOFError) as err:
                self.log.debug("QMP events: %s", err)
                event = None
            if event is not None:
                self.log.debug("QMP event: %s", event)
                self.events.append(event)
                continue
            if time.monotonic() >= deadline or any(e.get("event") == "SHUTDOWN" for e in self.events):
                return

    def exit_cause(self, grace: float = 0.0) -> ExitCause | None:
        """How QEMU ended, classified (:func:`e2e.vm.exitcause.classify_exit`); None while it runs.

        Waits up to ``grace`` seconds for QEMU to exit, then for its last QMP events and the
        console's last bytes (QEMU's exit closes both a moment after the guest's last word).
        """
        if self.ended is not None and self.ended.cls != RUNNING:
            return self.ended
        if self._proc is None:
            return None
        try:
            code = self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            return None
        self._drain_events(wait=1.0 if code >= 0 else 0.0)
        console = ""
        if self._console is not None:
            self._console.wait_closed(2.0)
            console = self._console.text()
        self.ended = classify_exit(self.events, console[-65536:], self.qemu_log()[-65536:], code)
        self.log.debug("QEMU (pid %d) ended: %s", self._proc.pid, self.ended.describe())
        return self.ended

    def exit_error(self, what: str, grace: float = 0.0, when: str = "mid-command") -> QemuExited | None:
        """The error for ``what`` failed because QEMU exited (waiting up to ``grace`` s); None if it runs.

        ``SSH connection dropped while running `...`: QEMU (pid 7) exited mid-command: guest reset
        (SHUTDOWN reason guest-reset; console: 'sysrq: Resetting')``.

        :param when: when it exited, as the message says it (``mid-command``, ``during boot``).
        """
        cause = self.exit_cause(grace)
        if cause is None:
            return None
        pid = self._proc.pid if self._proc is not None else "?"
        logs = " and ".join(str(self.logdir / f"{self.spec.name}-{what}.log") for what in ("console", "qemu"))
        return QemuExited(
            f"{what}: QEMU (pid {pid}) exited {when}: {cause.describe()}", cause.cls, cause.evidence,
            cause.exitcode, kind=cause.kind, fix=f"{cause.fix} ({logs})")

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def death_note(self, grace: float = 0.0) -> str | None:
        """How QEMU ended, waiting up to ``grace`` seconds for it; None if it still runs.

        For errors about a connection that dropped: QEMU's exit closes its
        sockets a moment before it can be reaped.
        """
        if self._proc is None:
            return None
        try:
            code = self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            return None
        if code >= 0:
            how = f"exited with code {code}"
        else:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        return f"QEMU (pid {self._proc.pid}) {how}"

    # ------------------------------------------------------------ QMP

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command; return its ``return`` value.

        :raises LaunchError: if QEMU is gone.
        :raises QmpCommandError: if QEMU answers with an error (command, arguments and
            QEMU's error class and description attached).
        :raises PveoiError: if the QMP connection closed under a running QEMU.
        :raises GuestTimeout: if QEMU did not answer within the QMP deadline.
        """
        self._require(Runstate.RUNNING, f"run QMP {command}")
        assert self._qmp is not None
        try:
            return self._qmp.cmd(command, **arguments)
        except ExecuteError as err:  # QEMU answered: the command itself failed
            raise QmpCommandError(
                command, arguments, err.error_class, str(err),
                fix=f"check {command} and its arguments against QEMU's schema (query-qmp-schema); "
                    f"QEMU's log: {self.logdir / self.spec.name}-qemu.log") from err
        except QMPError as err:
            if not self.is_running():
                raise (self.exit_error(f"QMP {command} failed", grace=2.0, when=f"during {command}")
                       or self._launch_error(f"QEMU exited during QMP {command}")) from err
            if isinstance(err, (ExecInterruptedError, StateError)):
                raise QmpLost(
                    f"the QMP connection to QEMU (pid {self.pid}) closed during {command} while QEMU still runs",
                    fix=f"pveoi stops this QEMU; run again, and if it recurs read {self.logdir / self.spec.name}"
                        "-qemu.log") from err
            raise QmpLost(f"QMP {command} failed: {err}", fix="see the QEMU log") from err
        except TimeoutError as err:  # (an OSError: caught first)
            raise QmpTimeout(
                f"QEMU (pid {self.pid}) did not answer QMP {command} within {self.qmp_timeout:.0f} s: it is hung",
                fix=f"pveoi stops it; if it recurs, read {self.logdir / self.spec.name}-qemu.log and the host's "
                    "kernel log (a QEMU stuck in KVM)") from err
        except OSError as err:
            raise (self.exit_error("QMP connection lost", grace=2.0, when=f"during {command}")
                   or self._launch_error(f"QMP connection lost during {command}")) from err

    def vcpus(self) -> list[VCpu]:
        """vCPU index, host thread id and QOM path, from ``query-cpus-fast``."""
        return [VCpu(int(c["cpu-index"]), int(c["thread-id"]), str(c["qom-path"]))
                for c in self.qmp("query-cpus-fast")]

    def pv_eoi_readback(self) -> list[bool]:
        """Each vCPU's effective ``kvm-pv-eoi`` as QEMU reports it (``qom-get``)."""
        return [bool(self.qmp("qom-get", path=cpu.qom_path, property="kvm-pv-eoi")) for cpu in self.vcpus()]

    def query_kvm(self) -> dict[str, bool]:
        res = self.qmp("query-kvm")
        return {"enabled": bool(res["enabled"]), "present": bool(res["present"])}

    def status(self) -> str:
        return str(self.qmp("query-status")["status"])

    def resume(self) -> None:
        """``cont`` a machine started paused."""
        self.qmp("cont")

    def ssh_port(self) -> int:
        return parse_usernet_port(str(self.qmp("human-monitor-command", **{"command-line": "info usernet"})))

    # ------------------------------------------------------------ guest

    @property
    def console(self) -> Console:
        if self._console is None:
            raise PveoiError("machine has no console", fix="call launch() first")
        return self._console

    def sample_cpus(self, cpus: int, lapic: bool = False) -> CpuSample:
        """Where each of ``cpus`` vCPUs is, asked twice 1 s apart over QMP (HMP ``info registers``,
        and each local APIC once with ``lapic``): evidence for a machine that stopped making
        progress. A QEMU that does not answer costs :attr:`qmp_timeout` once, not per question."""
        dump: list[str] = []
        answering = True

        def hmp(command: str, cpu: int) -> str:
            nonlocal answering
            if not answering:
                return "(not asked: QEMU did not answer before)"
            try:
                return str(self.qmp("human-monitor-command", **{"command-line": command, "cpu-index": cpu}))
            except PveoiError as err:
                answering = False
                return f"(no answer: {err})"

        samples: list[list[str]] = []
        for n in (1, 2):
            if n == 2:
                time.sleep(1.0)
            states = []
            for cpu in range(cpus):
                text = hmp("info registers", cpu)
                states.append(f"CPU{cpu} {cpu_state(text)}")
                dump += [f"== sample {n}, CPU {cpu}", text]
            samples.append(states)
        for cpu in range(cpus if lapic else 0):  # the local APIC (its timer: armed? pending?), for the dump only
            dump += [f"== local APIC, CPU {cpu}", hmp("info lapic", cpu)]
        still = [a for a, b in zip(samples[0], samples[1], strict=True) if a == b and "?" not in a]
        return CpuSample(samples[1], still, dump)

    def wait_ready(self, timeout: float = 120.0) -> str:
        """Wait for the guest's ready line on the console (see :meth:`Console.wait_ready`).

        At the deadline, with QEMU still running, its vCPUs are sampled (:meth:`sample_cpus`) into
        the error's evidence and ``<name>-not-ready.txt`` beside the console log: a guest that
        printed nothing at all leaves where it was."""
        self._require(Runstate.RUNNING, "wait for the guest")
        try:
            return self.console.wait_ready(timeout)
        except GuestError as err:
            if type(err) is GuestError:  # the console closed: QEMU is exiting; wait for it and say how it ended
                # (QEMU closes its chardevs a moment before it can be reaped: without the grace the
                # attempt's class read "qemu running", as 3 of 27 soak A/Bs showed)
                gone = self.exit_error("the guest's console closed before it was ready", grace=10.0,
                                       when="during boot")
                if gone is not None:
                    self.exitcode = self._proc.poll() if self._proc else None
                    raise gone from err
            elif not self.is_running():
                self.exitcode = self._proc.poll() if self._proc else None
            elif isinstance(err, GuestTimeout):
                self._note_not_ready(err)
            raise

    def _note_not_ready(self, err: GuestTimeout) -> None:
        """Add where a guest that missed its boot deadline was (QEMU's run state, its vCPUs) to
        ``err``'s message and evidence, and keep the full answers in ``<name>-not-ready.txt``."""
        try:
            status = str(self.qmp("query-status").get("status"))
        except PveoiError as qerr:  # a QEMU that does not answer is not asked again
            status, sample = f"(no answer: {qerr})", CpuSample([], [], [])
        else:
            sample = self.sample_cpus(self.spec.smp)
        self.keep_evidence("not-ready", [str(err), f"run state: {status}", *sample.dump])
        err.evidence = (f"run state {status}", *sample.described())
        err.message += f"; run state {status}" + (f"; its vCPUs: {'; '.join(sample.described())}"
                                                  if sample.states else "")

    def keep_evidence(self, what: str, lines: Sequence[str]) -> Path:
        """Write ``lines`` to ``<name>-<what>.txt`` beside the console log (a failure to write is
        logged, never raised over the error being explained)."""
        kept = self.logdir / f"{self.spec.name}-{what}.txt"
        try:
            kept.write_text("\n".join(lines) + "\n")
        except OSError as err:
            log.warning("could not keep %s in %s: %s", what, kept, err)
        return kept

    def ssh(self, private_key: Path, host_key_line: str, timeout: float = 60.0) -> GuestSsh:
        """Connect over SSH (call after :meth:`wait_ready`); closed at shutdown.

        The wait for SSH ends at once when the console shows a panic or an init error.

        :raises SshError: no SSH within ``timeout``.
        :raises GuestPanic: the guest panicked meanwhile.
        :raises GuestInitError: the guest's init reported a failed step.
        """
        self._require(Runstate.RUNNING, "connect SSH")
        conn = GuestSsh(self.ssh_port(), private_key, host_key_line, explain_drop=self.exit_error,
                        console_log=self.console.logpath, watch=self.console)
        self._ssh.append(conn)
        return conn.connect(timeout)

    # ------------------------------------------------------------ shutdown

    def shutdown(self, timeout: float = 10.0) -> int | None:
        """Stop QEMU in order (QMP quit, SIGTERM, SIGKILL) and clean up; idempotent.

        :returns: QEMU's exit code (None if it never started).
        """
        if self.state is Runstate.SHUTDOWN:
            return self.exitcode
        self.state = Runstate.SHUTDOWN
        try:
            for conn in self._ssh:
                conn.close()
            if self._proc is not None:
                self.exitcode = self._stop_process(timeout)
        finally:
            if self._qmp is not None:
                self._drain_events()
                try:
                    self._qmp.close()
                except (QMPError, OSError, RuntimeError, EOFError) as err:
                    self.log.debug("closing QMP: %s", err)
            if self._console is not None:
                self._console.close()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
        return self.exitcode

    def _stop_process(self, timeout: float) -> int:
        proc = self._proc
        assert proc is not None
        if proc.poll() is None and self._qmp is not None:
            wait = timeout
            try:
                self._qmp.settimeout(timeout)
                self._qmp.cmd("quit")
            except ExecInterruptedError as err:  # QEMU hung up: usually it is exiting
                self.log.debug("QMP quit: %s", err)
            except (QMPError, OSError, EOFError, TimeoutError) as err:  # QMP was gone before: no quit sent
                self.log.debug("QMP quit not sent: %s", err)
                wait = min(timeout, 1.0)
            try:
                return proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.log.log(logging.WARNING if wait == timeout else logging.DEBUG,
                             "QEMU did not exit after QMP quit; sending SIGTERM")
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 30.0)):
            if proc.poll() is not None:
                break
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                return proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.log.warning("QEMU survived %s", sig.name)
        if proc.poll() is None:  # stuck in the kernel (D state): waiting longer would hang pveoi too
            self.log.error("QEMU (pid %d) survived SIGKILL (stuck in the kernel); not waiting for it", proc.pid)
            return -signal.SIGKILL
        return proc.wait()
