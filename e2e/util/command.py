"""
The one way pveoi runs a short host command (git, tar, make's queries, gcc, dropbearkey, dpkg): a
deadline, output captured as text (as bytes for data, :func:`run_bytes`), and on failure one typed
error, :class:`e2e.errors.CommandError`, that carries the command, its exit status and the tail of
what it printed, so ``pveoi`` ends in one line naming what failed (never a ``CalledProcessError``
traceback). A command whose non-zero exit is an answer is run with ``check=False``. Long-lived
children (QEMU, perf, make with progress) go through :mod:`e2e.util.spawn`; probes that must never
raise through :func:`e2e.host.tools.run_command`. No module outside :mod:`e2e.util` calls
:mod:`subprocess` to run a command (``tests/unit/test_command.py`` holds the rule).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar, cast

from ..errors import CommandError

#: What a command printed on stdout: text (:func:`run`) or bytes (:func:`run_bytes`).
Out = TypeVar("Out", str, bytes)

#: Seconds a short command may take unless the caller says otherwise.
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Completed(Generic[Out]):
    """What a command printed: ``stdout`` as text (:func:`run`) or bytes (:func:`run_bytes`), ``stderr``
    as text."""

    argv: tuple[str, ...]
    returncode: int
    stdout: Out
    stderr: str


def run(argv: Sequence[str], *, what: str | None = None, fix: str | None = None, cwd: Path | None = None,
        env: Mapping[str, str] | None = None, timeout: float | None = DEFAULT_TIMEOUT,
        check: bool = True) -> Completed[str]:
    """Run ``argv`` (no shell) and return what it printed.

    :param what: how the error names the command (default: the command line's first words).
    :param fix: the error's fix (default: "check that `<program>` works").
    :param env: variables added to pveoi's environment.
    :param timeout: seconds; None only for a command whose every step has its own deadline
        (``git bisect run``, whose steps are A/Bs).
    :param check: raise on a non-zero exit; False returns it (a deadline or a missing program still raises).
    :raises CommandError: the program is missing, ran past ``timeout`` or (``check``) exited non-zero.
    """
    return cast(Completed[str], _run(argv, what, fix, cwd, env, timeout, check, True, None))


def run_bytes(argv: Sequence[str], *, input: bytes | None = None, what: str | None = None, fix: str | None = None,
              cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float | None = DEFAULT_TIMEOUT,
              check: bool = True) -> Completed[bytes]:
    """:func:`run` for a command that reads and prints data: ``input`` on its stdin (none: /dev/null),
    its stdout returned as bytes.

    :raises CommandError: as :func:`run`.
    """
    return cast(Completed[bytes], _run(argv, what, fix, cwd, env, timeout, check, False, input))


def _run(argv: Sequence[str], what: str | None, fix: str | None, cwd: Path | None, env: Mapping[str, str] | None,
         timeout: float | None, check: bool, text: bool, data: bytes | None,
         ) -> Completed[str] | Completed[bytes]:
    """The command's :class:`Completed` (stdout as text with ``text``, else bytes); ``data`` goes to its
    stdin (None: /dev/null)."""
    argv = tuple(str(a) for a in argv)
    name = what or " ".join(argv[:3])
    fix = fix or f"check that `{argv[0]}` works"
    try:
        proc = subprocess.run(argv, cwd=cwd, env=None if env is None else {**os.environ, **env}, capture_output=True,
                              text=text, errors="replace" if text else None, timeout=timeout, check=False,
                              input=data, stdin=subprocess.DEVNULL if data is None else None)
    except FileNotFoundError as err:
        raise CommandError(f"{name} failed: {argv[0]} not found", fix, argv) from err
    except subprocess.TimeoutExpired as err:
        raise CommandError(f"{name} ran past its {timeout:g} s deadline", fix, argv,
                           tail=_tail(_text(err.stderr))) from err
    except OSError as err:
        raise CommandError(f"{name} failed: {err}", fix, argv) from err
    stdout, stderr = proc.stdout, _text(proc.stderr)
    if check and proc.returncode != 0:
        tail = _tail(stderr) or (_tail(stdout) if isinstance(stdout, str) else ())
        raise CommandError(f"{name} failed (exit {proc.returncode}): {' | '.join(tail) or 'no output'}", fix, argv,
                           proc.returncode, tail)
    return Completed(argv, proc.returncode, stdout, stderr)


def _text(out: bytes | str | None) -> str:
    return out if isinstance(out, str) else (out or b"").decode(errors="replace")


def _tail(text: str, lines: int = 3) -> tuple[str, ...]:
    return tuple(ln for ln in text.strip().splitlines()[-lines:] if ln.strip())
