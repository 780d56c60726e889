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
     +-- GuestError          the guest misbehaved
     |    +-- GuestPanic     kernel panic/oops seen on the console
     |    +-- GuestTimeout   a deadline passed while waiting for the guest
     |    +-- SshError       SSH to the guest failed
     +-- MeasurementError    perf or the counts are unusable
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path


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


class GuestTimeout(GuestError):
    """A deadline passed while waiting for the guest."""


class SshError(GuestError):
    """SSH to the guest failed."""


class MeasurementError(PveoiError):
    """perf or the counts it produced are unusable."""


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
