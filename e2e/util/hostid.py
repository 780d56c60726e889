"""
Where a pid means a process: this host's identity (host name, boot id, pid
namespace) and the names of temp files and staging dirs that carry it.

A pid is only meaningful in its own pid namespace of its own boot: containers
sharing ``/tmp`` (or a cache) share the boot id but not the pid namespace,
hosts sharing a directory over NFS share neither, and the virtual KVM host
sees the caller's files under pids that mean nothing there. A leftover of a
killed writer is therefore removed only when its name's host tag is this
process's and its pid is not a live process here (see
:func:`leftover_of_dead_writer`).

Both :mod:`e2e.build.cache` (atomic writes, staging dirs) and :mod:`e2e.util.tmpdirs`
(private temp dirs) use this module; it imports nothing of pveoi's.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

#: Seconds a dead writer's leftovers must be old before they are reaped when this
#: process's identity is incomplete (pid namespace or boot id unreadable).
STALE_AGE = 600.0


def boot_id() -> str:
    """This kernel's boot id (differs in the virtual KVM host and after a reboot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def pid_namespace() -> int | None:
    """The inode of this process's pid namespace, None if ``/proc/self/ns/pid`` is unreadable."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


@dataclass(frozen=True)
class HostIdentity:
    """Where a pid means a process: the host name, the boot and the pid namespace."""

    node: str
    boot_id: str
    pid_ns: int | None

    @property
    def complete(self) -> bool:
        """Whether the boot id and the pid namespace are both known (a pid is then unambiguous)."""
        return self.boot_id != "unknown" and self.pid_ns is not None

    @property
    def tag(self) -> str:
        """``<host name>-<8 hex>`` for file names: the host name (only ``[A-Za-z0-9_-]``, at most 40
        characters) and a hash of host name, boot id and pid namespace."""
        node = re.sub(r"[^A-Za-z0-9_-]", "_", self.node)[:40] or "host"
        digest = hashlib.sha256(f"{self.node}\0{self.boot_id}\0{self.pid_ns}".encode()).hexdigest()[:8]
        return f"{node}-{digest}"


def host_identity() -> HostIdentity:
    """This process's :class:`HostIdentity`."""
    return HostIdentity(os.uname().nodename, boot_id(), pid_namespace())


#: What a host tag looks like inside a temp name (see :attr:`HostIdentity.tag`).
TAG_PATTERN = r"[A-Za-z0-9_-]+-[0-9a-f]{8}"


def leftover_of_dead_writer(tag: str, pid: int, path: Path) -> bool:
    """Whether a temp file or dir named with writer ``tag`` and ``pid`` may be removed: written on
    this host, boot and pid namespace (``tag`` is ours), by a process that is gone; and, if this
    process's identity is incomplete, older than :data:`STALE_AGE`."""
    me = host_identity()
    if tag != me.tag or pid <= 0 or pid_alive(pid):
        return False
    if me.complete:
        return True
    try:
        return time.time() - path.lstat().st_mtime >= STALE_AGE
    except OSError:
        return False


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


TEMP_PATTERN = re.compile(rf"^\..+\.({TAG_PATTERN})\.(\d+)\.[^.]+\.tmp$")
"""A temp file or staging dir name: ``.<name>.<host tag>.<pid>.<random>.tmp``."""


def temp_prefix(name: str) -> str:
    """``.<name>.<host tag>.<pid>.``: how this process's temp files and staging dirs for ``name`` start."""
    return f".{name}.{host_identity().tag}.{os.getpid()}."
