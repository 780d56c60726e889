"""
Starting the long-lived children pveoi owns (QEMU, perf, workload servers) so that they
die with it, with no Python code run between fork and exec.

Every such child sits in its own process group (a terminal's Ctrl-C reaches pveoi, which
stops them in order) and gets ``PR_SET_PDEATHSIG(SIGKILL)`` (if pveoi dies, they die). The
process group is Popen's own ``process_group=0`` (done in C). The death signal is set by
util-linux's ``setpriv --pdeathsig KILL``, which then execs the command in place (same pid).
(One gap it shares with any exec-time setting: a parent that dies between fork and setpriv's
prctl leaves the child running.)

Why not ``preexec_fn``: it runs Python in the forked child of a multi-threaded process (paramiko's
transport, the console readers, qemu.qmp), which Python's documentation calls unsafe: a lock
another thread held at fork time is never released in the child, which then never execs, and
Popen waits for it for ever. The inner runner in the virtual host hung exactly there, idle,
with no timeout able to fire, in 3 of some 25 A/Bs (each time at the next child after the
first guest). Without setpriv (not util-linux), the preexec_fn path remains.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1


def resolve(program: str) -> str:
    """``program``'s path, as exec would find it.

    :raises FileNotFoundError: not found (as Popen would raise it).
    :raises PermissionError: found but not executable.
    """
    if "/" in program:
        if not os.path.exists(program):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if not os.access(program, os.X_OK) or os.path.isdir(program):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
        return program
    found = shutil.which(program)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return found


@functools.cache
def pdeathsig_setpriv() -> str | None:
    """setpriv's path if it has ``--pdeathsig`` (util-linux 2.33 and later; busybox's has not),
    probed once; None otherwise."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    try:
        ok = subprocess.run([setpriv, "--pdeathsig", "KILL", "--", "true"], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return setpriv if ok else None


def _pdeathsig_preexec(parent: int) -> Callable[[], None]:
    """The fallback without setpriv: preexec_fn setting the death signal (see the module's note)."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, in the parent: no dlopen in the child

    def preexec() -> None:
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before prctl: die now
            os._exit(126)

    return preexec


def popen(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **kwargs)`` for a child that must die with pveoi: its own process
    group, SIGKILL when the thread that started it dies; its pid is the command's own.

    :raises FileNotFoundError, PermissionError: ``argv[0]`` cannot be run (as Popen raises them).
    """
    exe = resolve(argv[0])
    setpriv = pdeathsig_setpriv()
    if setpriv is None:
        return subprocess.Popen([exe, *argv[1:]], process_group=0, preexec_fn=_pdeathsig_preexec(os.getpid()),
                                **kwargs)
    return subprocess.Popen([setpriv, "--pdeathsig", "KILL", "--", exe, *argv[1:]], process_group=0, **kwargs)


def run(argv: Sequence[str], grace: float = 60.0, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(argv, **kwargs)`` (output captured) for a child that must never outlive its
    caller: started with :func:`popen` (dies if the caller dies), and ended in order, SIGTERM then,
    after ``grace`` seconds, SIGKILL, when the caller is interrupted (KeyboardInterrupt, or the
    SystemExit :func:`exit_on_sigterm` raises). pveoi stops everything it started on SIGTERM,
    so a soak or benchmark stopped mid-A/B leaves no QEMU behind.
    """
    proc = popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    try:
        out, err = proc.communicate()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit(143) in the main thread, so ``finally`` blocks and :func:`run`
    end the caller's children in order (Python's default SIGTERM ends the process at once)."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


__all__ = ["exit_on_sigterm", "popen", "resolve", "run"]
