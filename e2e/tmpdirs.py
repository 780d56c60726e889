"""
pveoi's private temp dirs, and reaping those a killed pveoi left behind.

Every temp dir pveoi makes is ``$TMPDIR/pveoi-<kind>-<pid>-<random>`` and
holds an owner file (``.pveoi-owner``: pid, boot id, uid and the test session
tag, if any). Normal exits remove the dir in a ``finally``; a SIGKILLed pveoi
cannot, so :func:`reap_stale` (run when pveoi starts) removes every such dir
whose owner process is gone. It never touches a dir whose owner is alive, that
belongs to another user or another boot (the virtual KVM host's pid namespace
sees the caller's dirs under pids that mean nothing there), or that has no
owner file (not made by this code, or still being made).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

OWNER_FILE = ".pveoi-owner"
PREFIX = "pveoi-"
#: The environment variable the test suite tags its processes with.
SESSION_ENV = "PVEOI_TEST_SESSION"


def boot_id() -> str:
    """This kernel's boot id (differs in the virtual KVM host and after a reboot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def mkdtemp(kind: str, root: Path | None = None) -> Path:
    """Make ``pveoi-<kind>-<pid>-XXXX`` (mode 0700) with its owner file; the caller removes it.

    :param kind: what the dir is for (``vm``, ``perf``, ``ab``, ...).
    :param root: where (default: the system temp dir).
    """
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-", dir=root))
    owner = {"pid": os.getpid(), "boot_id": boot_id(), "uid": os.getuid(),
             "session": os.environ.get(SESSION_ENV, "")}
    (path / OWNER_FILE).write_text(json.dumps(owner) + "\n")
    return path


@contextlib.contextmanager
def tempdir(kind: str, root: Path | None = None) -> Iterator[Path]:
    """:func:`mkdtemp`, removed on the way out by any path."""
    path = mkdtemp(kind, root)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def read_owner(path: Path) -> dict[str, object] | None:
    """The owner record of a pveoi temp dir, None if it has none (or an unreadable one)."""
    try:
        data = json.loads((path / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a live (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def is_stale(path: Path) -> bool:
    """Whether ``path`` is a pveoi temp dir of this user and boot whose owner process is gone."""
    owner = read_owner(path)
    if owner is None:
        return False
    pid, uid = owner.get("pid"), owner.get("uid")
    if not isinstance(pid, int) or pid <= 0 or uid != os.getuid() or owner.get("boot_id") != boot_id():
        return False
    return not pid_alive(pid)


def reap_stale(root: Path | None = None) -> list[Path]:
    """Remove the temp dirs of dead pveoi processes; return what was removed.

    Inside the virtual KVM host (``PVEOI_IN_VHOST``) nothing is reaped: the
    caller's dirs bound in there belong to live processes outside.
    """
    if os.environ.get("PVEOI_IN_VHOST"):
        return []
    base = root if root is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        candidates = sorted(base.glob(f"{PREFIX}*"))
    except OSError:
        return []
    for path in candidates:
        if path.is_dir() and not path.is_symlink() and is_stale(path):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                log.info("removed %s, left behind by a killed pveoi", path)
                removed.append(path)
    return removed


def session_dirs(tag: str, root: Path | None = None) -> list[Path]:
    """pveoi temp dirs whose owner file carries test session ``tag``."""
    base = root if root is not None else Path(tempfile.gettempdir())
    out = []
    for path in sorted(base.glob(f"{PREFIX}*")):
        owner = read_owner(path) if path.is_dir() else None
        if owner is not None and owner.get("session") == tag:
            out.append(path)
    return out
