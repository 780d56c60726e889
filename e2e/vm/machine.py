"""
One :class:`Machine` owns one QEMU process for its whole life.

Lifecycle: ``NEW -> RUNNING -> SHUTDOWN``. ``launch()`` starts QEMU with QMP
and the serial console on socketpairs (no socket files), ``shutdown()`` is
idempotent and escalates QMP ``quit`` -> SIGTERM -> SIGKILL, always reaps, and
removes the machine's private temp dir. QEMU gets ``PR_SET_PDEATHSIG(SIGKILL)``
so it dies with the harness even if the harness is SIGKILLed. A KVM guest's
machine keeps KVM's record of its CPUs' shutdowns (:mod:`.shutdowns`) for
the evidence of a triple fault.
"""

from __future__ import annotations

import enum
import logging
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
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
from ..util.tmpdirs import mkdtemp, reap_stale
from .argv import MachineSpec, parse_usernet_port, qemu_argv
from .console import GUEST_ERROR_PATTERN, Console
from .cpus import CpuSample, VCpu, sample
from .ending import RUNNING, ExitCause, classify_exit
from .process import death_note, keep_failed_logs, start_qemu, stop_qemu
from .shutdowns import ShutdownRecorder
from .ssh import GuestSsh

log = logging.getLogger(__name__)


class Runstate(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    SHUTDOWN = "shutdown"


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
        #: More sockets QEMU inherits: a subclass opens them in :meth:`_pre_launch`; the launch passes
        #: their fds to QEMU and closes pveoi's copies once QEMU has them.
        self._extra_theirs: list[socket.socket] = []
        #: Every QMP event QEMU sent (drained when its end is classified and at shutdown).
        self.events: list[dict[str, Any]] = []
        #: How QEMU ended, once known (:meth:`exit_cause`); for a machine left on an error while
        #: QEMU still ran, class ``qemu running``.
        self.ended: ExitCause | None = None
        #: KVM's record of this guest's shutdown exits (a KVM guest on a host whose tracefs we may use).
        self._shutdowns: ShutdownRecorder | None = None

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
                if self.artifacts is None and self._tmp is not None:
                    keep_failed_logs(self._tmp, exc, self.log)
        finally:
            self.shutdown()

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
        try:
            self._pre_launch()
            self.argv = self._build_argv(qmp_theirs.fileno(), con_theirs.fileno())
        except BaseException:
            for sock in (qmp_ours, qmp_theirs, con_ours, con_theirs, *self._extra_theirs):
                sock.close()
            raise
        extra_fds = tuple(s.fileno() for s in self._extra_theirs)
        if self.spec.accel == "kvm":
            self._shutdowns = ShutdownRecorder.start()
        self.log.debug("launching: %s", " ".join(self.argv))
        try:
            self._proc = start_qemu(self.argv, self.logdir / f"{self.spec.name}-qemu.log",
                                    (qmp_theirs.fileno(), con_theirs.fileno(), *extra_fds))
        except BaseException:
            qmp_ours.close()
            con_ours.close()
            raise
        finally:
            for sock in (qmp_theirs, con_theirs, *self._extra_theirs):
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
        self._post_launch()

    # Lifecycle hooks, in the manner of QEMU's python/qemu QEMUMachine: a subclass adds its own
    # resources here and never overrides launch() or shutdown().

    def _pre_launch(self) -> None:
        """Before QEMU starts (its work dir exists): open what QEMU will inherit (:attr:`_extra_theirs`)."""

    def _post_launch(self) -> None:
        """QEMU runs and QMP is negotiated."""

    def _post_shutdown(self) -> None:
        """QEMU is stopped (or never started), QMP and console closed: release the subclass's own
        resources. Runs exactly once per launch, on every path out, before the work dir goes."""

    def _build_argv(self, qmp_fd: int, console_fd: int) -> list[str]:
        """QEMU's argv (pure: resources belong in :meth:`_pre_launch`); subclasses build their own."""
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
        """How QEMU ended, classified (:func:`e2e.vm.ending.classify_exit`); None while it runs.

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
        kvm = self._shutdowns.evidence(self._proc.pid, self.spec.kernel) if self._shutdowns is not None else []
        self.ended = classify_exit(self.events, console[-65536:], self.qemu_log()[-65536:], code, kvm)
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
        return death_note(self._proc, grace) if self._proc is not None else None

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
        return sample(lambda command, cpu: str(self.qmp("human-monitor-command",
                                                        **{"command-line": command, "cpu-index": cpu})), cpus, lapic)

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
                raise self._not_ready(err) from err
            raise

    def _not_ready(self, err: GuestTimeout) -> GuestTimeout:
        """``err`` with where a guest that missed its boot deadline was (QEMU's run state, its vCPUs)
        in its message and evidence; the full answers are kept in ``<name>-not-ready.txt``."""
        try:
            status = str(self.qmp("query-status").get("status"))
        except PveoiError as qerr:  # a QEMU that does not answer is not asked again
            status, sample = f"(no answer: {qerr})", CpuSample([], [], [])
        else:
            sample = self.sample_cpus(self.spec.smp)
        self.keep_evidence("not-ready", [str(err), f"run state: {status}", *sample.dump])
        return err.with_(message=err.message + f"; run state {status}"
                         + (f"; its vCPUs: {'; '.join(sample.described())}" if sample.states else ""),
                         evidence=(f"run state {status}", *sample.described()))

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
            if self._shutdowns is not None:
                self._shutdowns.stop()
            try:
                self._post_shutdown()
            finally:
                if self._tmp is not None:
                    shutil.rmtree(self._tmp, ignore_errors=True)
        return self.exitcode

    def _stop_process(self, timeout: float) -> int:
        assert self._proc is not None
        return stop_qemu(self._proc, self._qmp, timeout, self.log)
