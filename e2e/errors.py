"""
pveoi's exceptions.

Every error pveoi raises derives from :class:`PveoiError` and renders as one
line that names the cause and, where there is one, the fix::

    PveoiError
     +-- ConfigError         bad configuration, CLI value or path
     +-- CapabilityError     the host lacks something (KVM, perf, a tool)
     |    +-- NotMeasurable  the host cannot measure PV EOI (a verdict, not a failure)
     +-- BuildError          kernel or image build failed (carries the log path)
     +-- LaunchError         QEMU did not start (carries argv, exit code, log tail)
     +-- QmpCommandError     QEMU refused a QMP command (carries command, arguments, error class)
     +-- GuestError          the guest misbehaved
     |    +-- GuestPanic     kernel panic/oops seen on the console
     |    +-- GuestInitError the guest's init reported a failed step (pveoi-guest-error:)
     |    +-- GuestTimeout   a deadline passed while waiting for the guest
     |    +-- SshError       SSH to the guest failed
     +-- MeasurementError    perf or the counts are unusable
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


class PveoiError(Exception):
    """Root of pveoi's errors.

    :param message: what went wrong, one line.
    :param fix: what the user should do about it, if known.
    """

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message}; fix: {self.fix}"
        return self.message


class ConfigError(PveoiError):
    """A configuration file, CLI value or path is wrong."""


class CapabilityError(PveoiError):
    """The host lacks a capability pveoi needs."""


class NotMeasurable(CapabilityError):
    """PV EOI cannot be measured on this host (a verdict, not a failure)."""


class BuildError(PveoiError):
    """A kernel or image build failed.

    :param log: path of the full build log, if one was kept.
    """

    def __init__(self, message: str, fix: str | None = None, log: str | None = None) -> None:
        super().__init__(message, fix)
        self.log = log

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (full log: {self.log})" if self.log else text


class LaunchError(PveoiError):
    """QEMU failed to start or exited early.

    :param argv: the command line that was run.
    :param exitcode: QEMU's exit status, if it exited.
    :param output: the tail of QEMU's own log.
    """

    def __init__(
        self,
        message: str,
        argv: Sequence[str] = (),
        exitcode: int | None = None,
        output: str = "",
        fix: str | None = None,
    ) -> None:
        super().__init__(message, fix)
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


class GuestError(PveoiError):
    """The guest misbehaved."""


class GuestPanic(GuestError):
    """The guest kernel panicked or oopsed.

    :param lines: the console lines around the panic.
    """

    def __init__(self, message: str, lines: Sequence[str] = (), fix: str | None = None) -> None:
        super().__init__(message, fix)
        self.lines = list(lines)

    def __str__(self) -> str:
        quoted = " | ".join(line.strip() for line in self.lines[:3] if line.strip())
        text = super().__str__()
        return f"{text}: {quoted}" if quoted else text


class GuestInitError(GuestError):
    """The guest's init printed a ``pveoi-guest-error:`` line: a boot step failed.

    Fatal at once, like a panic: the guest would come up without what the
    step provides (its network, a mount, dropbear).

    :param line: the console line, quoted in the message.
    """

    def __init__(self, message: str, line: str, fix: str | None = None) -> None:
        super().__init__(message, fix)
        self.line = line

    def __str__(self) -> str:
        text = f"{self.message}: {self.line.strip()}"
        return f"{text}; fix: {self.fix}" if self.fix else text


class GuestTimeout(GuestError):
    """A deadline passed while waiting for the guest."""


class SshError(GuestError):
    """SSH to the guest failed."""


class MeasurementError(PveoiError):
    """perf or the counts it produced are unusable."""
