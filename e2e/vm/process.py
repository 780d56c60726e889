"""
QEMU's process: starting it (its output to a log file, the sockets it inherits,
dying with pveoi), keeping its logs past a failure (its work dir goes at shutdown),
stopping it in order (QMP ``quit``, then SIGTERM, then
SIGKILL, always reaped unless stuck in the kernel) and saying how it ended
(exit code or signal) for errors about a connection that dropped.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.qmp_client import ExecInterruptedError

from ..errors import LaunchError, PveoiError
from ..util.spawn import popen


def start_qemu(argv: Sequence[str], log_path: Path, pass_fds: Sequence[int]) -> subprocess.Popen[bytes]:
    """Start QEMU with its stdout and stderr in ``log_path`` and ``pass_fds`` inherited (pveoi's
    :func:`~e2e.util.spawn.popen`: it dies with pveoi).

    :raises LaunchError: the binary could not be run.
    """
    with open(log_path, "wb") as qemu_log:
        try:
            return popen(list(argv), stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT,
                         pass_fds=tuple(pass_fds))
        except OSError as err:
            raise LaunchError(f"cannot run {argv[0]}: {err.strerror}", list(argv),
                              fix="apt-get install qemu-system-x86 (or run host_config/install-deps.sh)") from err


def stop_qemu(proc: subprocess.Popen[bytes], qmp: QEMUMonitorProtocol | None, timeout: float,
              log: logging.Logger) -> int:
    """Stop ``proc`` (QMP ``quit`` if ``qmp`` is connected, then signals) and return its exit code;
    ``-SIGKILL`` without waiting for one stuck in the kernel (D state)."""
    if proc.poll() is None and qmp is not None:
        wait = timeout
        try:
            qmp.settimeout(timeout)
            qmp.cmd("quit")
        except ExecInterruptedError as err:  # QEMU hung up: usually it is exiting
            log.debug("QMP quit: %s", err)
        except (QMPError, OSError, EOFError, TimeoutError) as err:  # QMP was gone before: no quit sent
            log.debug("QMP quit not sent: %s", err)
            wait = min(timeout, 1.0)
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            log.log(logging.WARNING if wait == timeout else logging.DEBUG,
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
            log.warning("QEMU survived %s", sig.name)
    if proc.poll() is None:  # stuck in the kernel (D state): waiting longer would hang pveoi too
        log.error("QEMU (pid %d) survived SIGKILL (stuck in the kernel); not waiting for it", proc.pid)
        return -signal.SIGKILL
    return proc.wait()


def death_note(proc: subprocess.Popen[bytes], grace: float = 0.0) -> str | None:
    """``QEMU (pid 7) exited with code 1`` / ``... was killed by SIGKILL``, waiting up to ``grace``
    seconds for it; None if it still runs."""
    try:
        code = proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        return None
    if code >= 0:
        how = f"exited with code {code}"
    else:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    return f"QEMU (pid {proc.pid}) {how}"


def keep_failed_logs(workdir: Path, err: PveoiError, log: logging.Logger) -> None:
    """Keep the console and QEMU logs ``err`` points at when they live in ``workdir`` (a machine's temp
    dir, removed at shutdown): they move to the cache's ``logs/failed/`` and the error's text names
    their new place."""
    if str(workdir) not in str(err):
        return
    from ..build.cache import cache_root

    kept = cache_root() / "logs" / "failed" / f"{time.strftime('%Y%m%d-%H%M%S')}-{workdir.name}"
    try:
        kept.mkdir(parents=True, exist_ok=True)
        for log_file in workdir.glob("*.log"):
            shutil.copy2(log_file, kept / log_file.name)
    except OSError as copy_err:
        log.warning("could not keep the logs of %s in %s: %s", workdir.name, kept, copy_err)
        return
    err.message = err.message.replace(str(workdir), str(kept))
    if err.fix:
        err.fix = err.fix.replace(str(workdir), str(kept))
