"""
The one way pveoi runs a short host command (git, tar, make's queries, gcc, dropbearkey, dpkg): a
deadline, output captured as text, and on failure one typed error, :class:`e2e.errors.CommandError`,
that carries the command, its exit status and the tail of what it printed, so ``pveoi`` ends in one
line naming what failed (never a ``CalledProcessError`` traceback). Long-lived children (QEMU, perf,
make with progress) go through :mod:`e2e.util.spawn`; probes that must never raise through
:func:`e2e.host.capability.run_command`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CommandError

#: Seconds a short command may take unless the caller says otherwise.
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run(argv: Sequence[str], *, what: str | None = None, fix: str | None = None, cwd: Path | None = None,
        env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT, check: bool = True) -> Completed:
    """Run ``argv`` (no shell) and return what it printed.

    :param what: how the error names the command (default: the command line's first words).
    :param fix: the error's fix (default: "check that `<program>` works").
    :param check: raise on a non-zero exit; False returns it (a deadline or a missing program still raises).
    :raises CommandError: the program is missing, ran past ``timeout`` or (``check``) exited non-zero.
    """
    argv = tuple(str(a) for a in argv)
    name = what or " ".join(argv[:3])
    fix = fix or f"check that `{argv[0]}` works"
    try:
        proc = subprocess.run(argv, cwd=cwd, env=None if env is None else {**os.environ, **env}, capture_output=True,
                              text=True, errors="replace", timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError as err:
        raise CommandError(f"{name} failed: {argv[0]} not found", fix, argv) from err
    except subprocess.TimeoutExpired as err:
        out = err.stderr if isinstance(err.stderr, str) else (err.stderr or b"").decode(errors="replace")
        raise CommandError(f"{name} ran past its {timeout:g} s deadline", fix, argv, tail=_tail(out)) from err
    except OSError as err:
        raise CommandError(f"{name} failed: {err}", fix, argv) from err
    done = Completed(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        tail = _tail(proc.stderr) or _tail(proc.stdout)
        raise CommandError(f"{name} failed (exit {proc.returncode}): {' | '.join(tail) or 'no output'}", fix, argv,
                           proc.returncode, tail)
    return done


def _tail(text: str, lines: int = 3) -> tuple[str, ...]:
    return tuple(ln for ln in text.strip().splitlines()[-lines:] if ln.strip())
