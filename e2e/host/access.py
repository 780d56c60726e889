"""
Who may use what pveoi needs on this host: the user's and groups' names, who owns ``/dev/kvm``
and whether the user is in that group (in the user database and in this session), and whether
the user may write the pveoi cache and read its SSH client key. Nothing raises; nothing changes.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path


def user_name(uid: int) -> str:
    """The name of *uid* in the user database, or ``uid N``."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    """The name of *gid* in the group database, or its number."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@dataclass(frozen=True)
class KvmDevOwner:
    """Who may open ``/dev/kvm``, and whether we are among them.

    :param group: the owning group's name.
    :param mode: the permission bits, e.g. ``0660``.
    :param member: the user is in that group in the user database.
    :param active: this process has that group now.
    """

    group: str | None
    mode: str | None
    member: bool | None
    active: bool | None


def probe_kvm_dev_owner(root: Path, uid: int) -> KvmDevOwner:
    """The group and mode of ``/dev/kvm`` under *root*, and our membership.

    :param root: the probed root.
    :param uid: the user whose membership is checked.
    :returns: the facts (all None when ``/dev/kvm`` is absent).
    """
    try:
        st = (root / "dev/kvm").stat()
    except OSError:
        return KvmDevOwner(None, None, None, None)
    name = group_name(st.st_gid)
    try:
        pw = pwd.getpwuid(uid)
        members = grp.getgrgid(st.st_gid).gr_mem
        member = pw.pw_gid == st.st_gid or pw.pw_name in members
    except KeyError:
        member = None
    active = st.st_gid == os.getegid() or st.st_gid in os.getgroups()
    return KvmDevOwner(name, f"{stat.S_IMODE(st.st_mode):04o}", member, active)


@dataclass(frozen=True)
class CacheFacts:
    """Can we use the pveoi cache?

    :param path: the cache directory.
    :param writable: it (or, if missing, its nearest existing parent) is writable and searchable.
    :param key_readable: its SSH client key is readable (None: there is none yet).
    """

    path: str
    writable: bool
    key_readable: bool | None


def probe_cache(path: Path, key: str = "ssh/id_ecdsa") -> CacheFacts:
    """Whether we may write the cache at *path* and read its SSH client key.

    :param path: the cache root (``$PVEOI_CACHE``, default ``~/.cache/pveoi``).
    :param key: the client key's path inside it.
    :returns: the facts.
    """
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    writable = probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)
    key_path = path / key
    try:
        present = key_path.exists() or key_path.is_symlink()
    except OSError:
        present = False
    if not present:
        # An unsearchable ssh/ directory hides the key; that is unreadable too.
        ssh_dir = key_path.parent
        unsearchable = ssh_dir.is_dir() and not os.access(ssh_dir, os.X_OK)
        return CacheFacts(str(path), writable, False if unsearchable else None)
    return CacheFacts(str(path), writable, os.access(key_path, os.R_OK))
