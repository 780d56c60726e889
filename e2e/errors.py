"""
pveoi's exceptions.

Every error pveoi raises derives from :class:`PveoiError` and renders as one
line that names the cause and, where there is one, the fix::

    PveoiError
     +-- ConfigError            bad configuration, CLI value or path
     |    +-- CommandError      a host command failed (carries argv, exit status, output tail)
     +-- SchemaError            a document is not a pveoi result this version can read
     +-- CapabilityError        the host lacks something (KVM, perf, a tool)
     |    +-- NotMeasurable     the host cannot measure PV EOI (a verdict, not a failure)
     +-- BuildError             kernel or image build failed (carries the log path)
     +-- LaunchError            QEMU did not start (carries argv, exit code, log tail)
     +-- QmpCommandError        QEMU refused a QMP command (carries command, arguments, error class)
     +-- GuestError             the guest (or the virtual host) could not be booted, reached or kept
     |    +-- GuestPanic        kernel panic/oops seen on the console
     |    +-- GuestInitError    the guest's init reported a failed step (pveoi-guest-error:)
     |    +-- GuestTimeout      a deadline passed while waiting for the guest
     |    |    +-- QmpTimeout   QEMU did not answer a QMP command in time
     |    +-- QmpLost           the QMP connection closed, or QMP failed, while QEMU still ran
     |    +-- SshError          SSH to the guest failed
     |    |    +-- CommandTimeout  a guest command ran past its deadline
     |    |    +-- CommandFailed   a guest command exited non-zero
     |    +-- QemuExited        QEMU exited while pveoi still used it (carries its class and evidence)
     |    +-- VhostStalled      the virtual KVM host stopped running (carries its vCPUs as evidence)
     +-- MeasurementError       perf cannot count (or, with kind=infrastructure, lost its threads)
     |    +-- PerfError         perf itself failed to start, attach, stop or write what it counted
     +-- Finding                the kernel under test misbehaves (a verdict: fail, exit 1)

Every exception class of pveoi is defined here, and this tree lists them all
(``tests/unit/test_errors.py`` holds both rules). An error is complete when
raised: how a machine ended (``cause``), what says so (``evidence``) and the
failures retried before it (``retried``) are arguments of its constructor; one
that learns more on its way up is raised again as a new error,
``raise err.with_(...) from err``, and a note for people goes in ``add_note``.

Every error carries a :class:`Kind`, and the kind alone decides what happens
next (:func:`retryable`, :attr:`PveoiError.exit_code`):

* ``config``: bad input; exit 2, found before any boot, never retried;
* ``capability``: not measurable here; exit 2 (a skip in tests);
* ``infrastructure``: a boot deadline, QMP or SSH lost, QEMU or the virtual host
  gone; retried per ``--retries`` on a fresh guest, then the verdict ``error``;
* ``finding``: the kernel under test misbehaves (a measured guest's panic, a
  vCPU whose CPUID offers PV EOI but whose kernel did not enable it,
  inconsistent counts); verdict ``fail`` with the reason, exit 1, never retried.
"""

from __future__ import annotations

import enum
import errno
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self


class Kind(enum.StrEnum):
    """What an error means for the run: it alone decides retry and exit code."""

    CONFIG = "config"
    CAPABILITY = "capability"
    INFRASTRUCTURE = "infrastructure"
    FINDING = "finding"


#: The exit code of each kind (a finding is a failed verdict).
EXIT_CODES = {Kind.CONFIG: 2, Kind.CAPABILITY: 2, Kind.INFRASTRUCTURE: 2, Kind.FINDING: 1}


class PveoiError(Exception):
    """Root of pveoi's errors.

    :param message: what went wrong, one line.
    :param fix: what the user should do about it, if known.
    :param kind: what it means for the run (default: the class's :attr:`default_kind`).
    :param cause: how the machine ended, where the error knows (:attr:`cause`).
    :param evidence: what named the cause (:attr:`evidence`).
    :param retried: the failures retried before this one gave up (:attr:`retried`).
    """

    #: The kind of every instance of this class, unless one is passed.
    default_kind = Kind.CONFIG
    #: How the machine ended, where the error knows (an exit class of :mod:`e2e.vm.ending`, a
    #: virtual host stall); "" when it does not. Kept in results as ``class``.
    cause: str = ""
    #: What named the cause (QMP events, console lines, CPU samples).
    evidence: tuple[str, ...] = ()
    #: The failures retried before this one gave up (virtual hosts restarted: part, attempt, class,
    #: message, logs), so a result that ends in this error still shows them.
    retried: tuple[dict[str, object], ...] = ()
    #: What failed, for an attempt that failed while its QEMU still ran (the attempt's class then,
    #: :func:`e2e.run.evidence.while_running`): "" says nothing more than that QEMU ran.
    failed: str = ""

    def __init__(self, message: str, fix: str | None = None, kind: Kind | None = None, *, cause: str = "",
                 evidence: Sequence[str] = (), retried: Sequence[dict[str, object]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.kind = kind or self.default_kind
        self.cause = cause
        self.evidence = tuple(evidence)
        self.retried = tuple(retried)

    def with_(self, *, message: str | None = None, evidence: Sequence[str] | None = None,
              retried: Sequence[dict[str, object]] | None = None) -> Self:
        """This error with more (a message that says more, its evidence, the failures retried before it):
        a new error of its type, everything else the same, to raise as ``raise err.with_(...) from err``.
        An error is complete when raised and never changed after; a note for people goes in ``add_note``."""
        changes = {"message": message, "evidence": None if evidence is None else tuple(evidence),
                   "retried": None if retried is None else tuple(retried)}
        state = {**self.__dict__, **{k: v for k, v in changes.items() if v is not None}}
        if "__notes__" in state:  # its own list: a note added to one is not the other's
            state["__notes__"] = list(state["__notes__"])
        new = type(self).__new__(type(self), state["message"])
        new.__dict__.update(state)
        return new

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message}; fix: {self.fix}"
        return self.message


class ConfigError(PveoiError):
    """A configuration file, CLI value or path is wrong."""


class SchemaError(PveoiError):
    """A document is not a pveoi result this version can read."""


class CapabilityError(PveoiError):
    """The host lacks a capability pveoi needs."""

    default_kind = Kind.CAPABILITY


class NotMeasurable(CapabilityError):
    """PV EOI cannot be measured on this host (a verdict, not a failure)."""


class BuildError(PveoiError):
    """A kernel or image build failed.

    :param log: path of the full build log, if one was kept.
    """

    def __init__(self, message: str, fix: str | None = None, log: str | None = None) -> None:
        super().__init__(message, fix, Kind.CONFIG)
        self.log = log

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (full log: {self.log})" if self.log else text


class CommandError(ConfigError):
    """A host command (git, tar, make's queries, gcc, dpkg) failed or ran past its deadline
    (:func:`e2e.util.command.run`): a config error, exit 2, never retried.

    :param argv: the command; :param returncode: its exit status (None: it did not exit);
    :param tail: the last lines it printed (stderr, else stdout).
    """

    def __init__(self, message: str, fix: str | None, argv: Sequence[str], returncode: int | None = None,
                 tail: Sequence[str] = ()) -> None:
        super().__init__(message, fix)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.tail = tuple(tail)


class LaunchError(PveoiError):
    """QEMU failed to start or exited early (infrastructure, unless the cause is the input).

    :param argv: the command line that was run.
    :param exitcode: QEMU's exit status, if it exited.
    :param output: the tail of QEMU's own log.
    """

    default_kind = Kind.INFRASTRUCTURE

    def __init__(
        self,
        message: str,
        argv: Sequence[str] = (),
        exitcode: int | None = None,
        output: str = "",
        fix: str | None = None,
        kind: Kind | None = None,
    ) -> None:
        super().__init__(message, fix, kind)
        self.argv = list(argv)
        self.exitcode = exitcode
        self.output = output

    def __str__(self) -> str:
        text = super().__str__()
        tail = self.output.strip().splitlines()[-1:] if self.output else []
        if self.exitcode is not None:
            text += f" (exit code {self.exitcode})"
        if tail:
            text += f": {tail[0]}"
        return text


class QmpCommandError(PveoiError):
    """QEMU answered a QMP command with an error (as qemu.qmp's ``ExecuteError``).

    :param command: the QMP command that failed.
    :param arguments: its arguments as sent.
    :param error_class: QEMU's error class, e.g. ``GenericError``, ``DeviceNotFound``.
    :param desc: QEMU's description of the error.
    """

    default_kind = Kind.INFRASTRUCTURE

    def __init__(self, command: str, arguments: Mapping[str, Any], error_class: str, desc: str,
                 fix: str | None = None) -> None:
        self.command = command
        self.arguments = dict(arguments)
        self.error_class = error_class
        self.desc = desc
        shown = json.dumps(self.arguments, sort_keys=True, default=str)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        super().__init__(f"QMP {command} {shown} failed: {error_class}: {desc}", fix)

    failed = "qmp failure"


class GuestError(PveoiError):
    """The guest (or the virtual host) could not be booted, reached or kept: infrastructure."""

    default_kind = Kind.INFRASTRUCTURE


class GuestPanic(GuestError):
    """The guest kernel panicked or oopsed: a finding about the kernel under test
    (the virtual host's own panic is re-raised as infrastructure).

    :param lines: the console lines around the panic.
    """

    default_kind = Kind.FINDING

    def __init__(self, message: str, lines: Sequence[str] = (), fix: str | None = None,
                 kind: Kind | None = None) -> None:
        super().__init__(message, fix, kind)
        self.lines = list(lines)

    def __str__(self) -> str:
        quoted = " | ".join(line.strip() for line in self.lines[:3] if line.strip())
        text = super().__str__()
        return f"{text}: {quoted}" if quoted else text


class GuestInitError(GuestError):
    """The guest's init printed a ``pveoi-guest-error:`` line: a boot step failed.

    Fatal at once, like a panic: the guest would come up without what the
    step provides (its network, a mount, dropbear).

    A deterministic setup problem (the kernel lacks a driver the image needs, the
    image lacks a tool): ``config``, never retried.

    :param line: the console line, quoted in the message.
    """

    default_kind = Kind.CONFIG

    def __init__(self, message: str, line: str, fix: str | None = None) -> None:
        super().__init__(message, fix)
        self.line = line

    def __str__(self) -> str:
        text = f"{self.message}: {self.line.strip()}"
        return f"{text}; fix: {self.fix}" if self.fix else text


class GuestTimeout(GuestError):
    """A deadline passed while waiting for the guest."""

    failed = "guest deadline"


class QmpTimeout(GuestTimeout):
    """QEMU did not answer a QMP command in time: it is hung."""

    failed = "qmp failure"


class QmpLost(GuestError):
    """The QMP connection closed, or QMP failed, while QEMU still ran."""

    failed = "qmp failure"


class SshError(GuestError):
    """SSH to the guest failed."""

    failed = "ssh failure"


class CommandTimeout(SshError):
    """A guest command ran past its deadline."""

    failed = "guest deadline"


class CommandFailed(SshError):
    """A guest command exited non-zero."""

    failed = "command failed"


class QemuExited(GuestError):
    """QEMU exited while pveoi still used it (mid-command, mid-boot, mid-QMP), classified.

    The class (:mod:`e2e.vm.ending`: ``guest reset``, ``triple fault``, ``guest poweroff``,
    ``panic``, ``OOM``, ``killed by signal``, ...) is named in the message with its evidence, e.g.
    ``QEMU (pid 7) exited mid-command: guest reset (SHUTDOWN reason guest-reset; console:
    'sysrq: Resetting')``. A panic is a finding about the guest kernel, every other class
    infrastructure.

    :param cause: the class.
    :param evidence: what says so (QMP events, console and QEMU log lines, the exit status).
    :param exitcode: QEMU's exit status.
    """

    def __init__(self, message: str, cause: str, evidence: Sequence[str] = (), exitcode: int | None = None,
                 fix: str | None = None, kind: Kind | None = None) -> None:
        super().__init__(message, fix, kind, cause=cause, evidence=evidence)
        self.exitcode = exitcode


class VhostStalled(GuestError):
    """The virtual KVM host stopped running (:func:`e2e.vm.vhost.stall_reason`): infrastructure, so the
    runner restarts it. Its class is :data:`e2e.vm.vhost.STALLED`, its evidence L1's CPUs as sampled over
    QMP and the console's last lines (:func:`e2e.vm.vhost.vhost_error`)."""


class MeasurementError(PveoiError):
    """perf cannot count here (capability), or lost what it counted (``kind=infrastructure``)."""

    default_kind = Kind.CAPABILITY
    failed = "measurement failure"


class PerfError(MeasurementError):
    """perf itself failed: to start, attach, stop, or to write what it counted."""

    failed = "perf failure"


class Finding(PveoiError):
    """The kernel under test misbehaves: the A/B fails with this reason (exit 1), never retried.

    :param vcpu: the vCPU it concerns, when one does.
    """

    default_kind = Kind.FINDING

    def __init__(self, message: str, fix: str | None = None, vcpu: int | None = None) -> None:
        super().__init__(message, fix, Kind.FINDING)
        self.vcpu = vcpu


def retryable(err: PveoiError) -> bool:
    """The one retry policy, for a run and for the virtual host alike: only infrastructure."""
    return err.kind is Kind.INFRASTRUCTURE


# ---------------------------------------------------------------- writes


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding ``path`` (or its nearest existing parent)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def write_error(path: Path, err: OSError) -> PveoiError:
    """A one-line error for a failed write of ``path``, naming the filesystem and the fix."""
    where = mount_point(path)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            st = os.statvfs(where)
            free = f", {st.f_bavail * st.f_frsize} bytes free"
        except OSError:
            free = ""
        return PveoiError(f"cannot write {path}: the filesystem at {where} is full ({err.strerror}{free})",
                          fix=f"free space on {where} or write the file somewhere else")
    return PveoiError(f"cannot write {path} (filesystem {where}): {err.strerror or err}",
                      fix=f"make {path.parent} writable or write the file somewhere else")
