"""
pveoi's private temp dirs, and reaping those a killed pveoi left behind.

Every temp dir pveoi makes is ``$TMPDIR/pveoi-<kind>-<pid>-<random>`` and
holds an owner file (``.pveoi-owner``: pid, uid, boot id, host name, pid
namespace and the test session tag, if any). Normal exits remove the dir in a
``finally``; a SIGKILLed pveoi cannot, so :func:`reap_stale` (run when pveoi
starts) removes every such dir whose owner process is gone *and* that was made
where that pid means the same process as here. A pid is only meaningful in its
own pid namespace of its own boot: containers sharing ``/tmp`` (or a history
directory) share the boot id but not the pid namespace, hosts sharing a
directory over NFS share neither, and the virtual KVM host sees the caller's
dirs under pids that mean nothing there. So a dir is reaped only when

* its owner's uid, boot id, host name (``os.uname().nodename``) and pid
  namespace (the inode of ``/proc/self/ns/pid``) all equal this process's, and
* its owner pid is not a live process here.

If this process cannot read its pid namespace (no ``/proc``), the boot id and
host name must match, the owner file must record no namespace either, and the
dir must be older than :data:`STALE_AGE` seconds. A dir with no owner file
(not made by this code, or still being made), or one written before the host
name and namespace were recorded, is never touched.

The identity comes from :mod:`e2e.util.hostid`, which :mod:`e2e.build.cache` shares
(its temp files and staging dirs carry it, as :attr:`e2e.util.hostid.HostIdentity.tag`,
in their names).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import write_error
from .hostid import STALE_AGE, host_identity, pid_alive

log = logging.getLogger(__name__)

OWNER_FILE = ".pveoi-owner"
PREFIX = "pveoi-"
#: The environment variable the test suite tags its processes with.
SESSION_ENV = "PVEOI_TEST_SESSION"


def mkdtemp(kind: str, root: Path | None = None) -> Path:
    """Make ``pveoi-<kind>-<pid>-XXXX`` (mode 0700) with its owner file; the caller removes it.

    :param kind: what the dir is for (``vm``, ``perf``, ``ab``, ...).
    :param root: where (default: the system temp dir).
    :raises PveoiError: the dir or its owner file cannot be written (a full disk, say),
        naming the filesystem; nothing is left behind.
    """
    where = Path(root) if root is not None else Path(tempfile.gettempdir())
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-", dir=where))
    except OSError as err:
        raise write_error(where / f"{PREFIX}{kind}-{os.getpid()}-XXXX", err) from err
    me = host_identity()
    owner = {"pid": os.getpid(), "boot_id": me.boot_id, "uid": os.getuid(), "host": me.node,
             "pid_ns": me.pid_ns, "session": os.environ.get(SESSION_ENV, "")}
    try:
        (path / OWNER_FILE).write_text(json.dumps(owner) + "\n")
    except BaseException as err:
        shutil.rmtree(path, ignore_errors=True)
        if isinstance(err, OSError):
            raise write_error(path / OWNER_FILE, err) from err
        raise
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


def is_stale(path: Path) -> bool:
    """Whether ``path`` is a pveoi temp dir of this user, boot, host and pid namespace whose owner
    process is gone (see the module's docstring for the rule)."""
    owner = read_owner(path)
    if owner is None:
        return False
    me = host_identity()
    pid, uid = owner.get("pid"), owner.get("uid")
    if (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or uid != os.getuid()
            or owner.get("boot_id") != me.boot_id or owner.get("host") != me.node
            or "pid_ns" not in owner or owner.get("pid_ns") != me.pid_ns):
        return False
    if pid_alive(pid):
        return False
    if me.complete:
        return True
    try:
        return time.time() - (path / OWNER_FILE).stat().st_mtime >= STALE_AGE
    except OSError:
        return False


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
