"""
Asking host tools about themselves, never raising: :func:`run_command` runs one probe command
(through :func:`e2e.util.command.run`, in the C locale, with a deadline) and reports a missing
binary, a timeout or a non-zero exit as a :class:`CommandOutput`; :func:`probe_tools` asks perf
and QEMU for their versions and whether QEMU has TCG and knows the ``kvm-pv-eoi`` CPU property.
Inject a fake :data:`RunCommand` in tests.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import CommandError
from ..util import command

log = logging.getLogger(__name__)


DEFAULT_TIMEOUT = 30.0
QEMU_BINARY = "qemu-system-x86_64"
PERF_BINARY = "perf"


@dataclass(frozen=True)
class CommandOutput:
    """What one probe command produced.

    :param ok: the command ran and exited 0.
    :param output: its stdout and stderr, concatenated.
    :param error: why it did not succeed (missing binary, timeout, exit code), or None.
    """

    ok: bool
    output: str
    error: str | None = None


#: Runs one command (an argument list) and reports what happened; never raises
#: for a missing binary, a timeout or a non-zero exit.
RunCommand = Callable[[Sequence[str]], CommandOutput]


def run_command(argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> CommandOutput:
    """Run a probe command without a shell, in the C locale, with a deadline.

    :param argv: the command and its arguments.
    :param timeout: seconds before the command is killed.
    :returns: the outcome; a missing binary, a timeout or a non-zero exit
        status becomes ``ok=False`` with an ``error`` sentence.
    """
    try:
        proc = command.run(argv, env={"LC_ALL": "C", "LANG": "C"}, timeout=timeout, check=False)
    except CommandError as err:  # it did not run to an exit: say why, from the runner's cause
        cause = err.__cause__
        if isinstance(cause, FileNotFoundError):
            return CommandOutput(False, "", f"{argv[0]} not found")
        if isinstance(cause, PermissionError):
            return CommandOutput(False, "", f"{argv[0]} is not executable: {cause}")
        if isinstance(cause, subprocess.TimeoutExpired):
            return CommandOutput(False, "", f"{argv[0]} did not finish within {timeout:.0f}s")
        return CommandOutput(False, "", f"{argv[0]} could not run: {cause or err}")
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = output.strip().splitlines()[-1:] or [""]
        return CommandOutput(False, output, f"{argv[0]} exited with {proc.returncode}: {tail[0]}")
    return CommandOutput(True, output)


_VERSION = re.compile(r"version\s+(\S+)")


def parse_version(output: str) -> str | None:
    """The first ``version X`` token of a ``--version`` output.

    :param output: the command's output.
    :returns: ``X``, or None.
    """
    match = _VERSION.search(output)
    return match.group(1) if match else None


def qemu_knows_property(cpu_help: str, prop: str = "kvm-pv-eoi") -> bool:
    """Whether ``-cpu help`` lists *prop* among its recognized CPUID flags.

    :param cpu_help: the output of ``qemu-system-x86_64 -cpu help``.
    :param prop: the property to look for.
    :returns: True when listed.
    """
    _, sep, flags = cpu_help.partition("Recognized CPUID flags:")
    return prop in (flags if sep else cpu_help).split()


def qemu_has_accel(accel_help: str, accel: str = "tcg") -> bool:
    """Whether ``-accel help`` lists *accel*.

    :param accel_help: the output of ``qemu-system-x86_64 -accel help``.
    :param accel: the accelerator to look for.
    :returns: True when listed.
    """
    return accel in accel_help.split()


@dataclass(frozen=True)
class ToolFacts:
    """What perf and QEMU said about themselves.

    :param perf_version: perf's version, or None.
    :param perf_error: why perf's version could not be read.
    :param qemu_version: QEMU's version, or None.
    :param qemu_error: why QEMU's version could not be read.
    :param qemu_has_tcg: ``-accel help`` lists tcg (None: could not ask).
    :param qemu_knows_pv_eoi: ``-cpu help`` lists kvm-pv-eoi (None: could not ask).
    """

    perf_version: str | None
    perf_error: str | None
    qemu_version: str | None
    qemu_error: str | None
    qemu_has_tcg: bool | None
    qemu_knows_pv_eoi: bool | None


def _version(run: RunCommand, binary: str) -> tuple[str | None, str | None]:
    out = run([binary, "--version"])
    if not out.ok:
        return None, out.error or f"{binary} --version failed"
    version = parse_version(out.output)
    if version is None:
        return None, f"cannot parse {binary} --version: {out.output.strip()[:80]!r}"
    return version, None


def probe_tools(run: RunCommand = run_command, *, perf: str = PERF_BINARY,
                qemu: str = QEMU_BINARY) -> ToolFacts:
    """Ask perf and QEMU for their versions and what QEMU supports.

    :param run: how to run a command (inject a fake in tests).
    :param perf: the perf binary.
    :param qemu: the QEMU system emulator binary.
    :returns: the tool facts; missing tools are None with an error sentence.
    """
    perf_version, perf_error = _version(run, perf)
    qemu_version, qemu_error = _version(run, qemu)
    has_tcg: bool | None = None
    knows: bool | None = None
    if qemu_version is not None:
        accel = run([qemu, "-accel", "help"])
        has_tcg = qemu_has_accel(accel.output) if accel.ok else None
        cpus = run([qemu, "-cpu", "help"])
        knows = qemu_knows_property(cpus.output) if cpus.ok else None
        if not cpus.ok:
            log.warning("%s -cpu help failed: %s", qemu, cpus.error)
    return ToolFacts(perf_version, perf_error, qemu_version, qemu_error, has_tcg, knows)
