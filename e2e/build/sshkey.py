"""
The SSH client identity the harness logs in with: one ECDSA key per cache
(``<cache root>/ssh/id_ecdsa``), whose public line goes into every image's
``/root/.ssh/authorized_keys``.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import paramiko

from .cache import Cache, atomic_write

log = logging.getLogger(__name__)

SSH_KIND = "ssh"
SSH_KEY_NAME = "id_ecdsa"
SSH_COMMENT = "pveoi"


@dataclass(frozen=True)
class SshIdentity:
    """The client key the harness logs in with; its public line goes into every image."""

    private_key: Path
    public_line: str


def _load_ecdsa(path: Path, warn: bool) -> paramiko.ECDSAKey | None:
    try:
        return paramiko.ECDSAKey.from_private_key_file(str(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, paramiko.SSHException) as err:
        if warn:
            log.warning("ssh key %s is unreadable (%s); generating a new one", path, err)
        return None


def _public_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()} {SSH_COMMENT}"


def ssh_identity(cache: Cache | None = None) -> SshIdentity:
    """The cache's SSH client key (``<cache root>/ssh/id_ecdsa``), made on first use.

    The directory is 0700 and the key 0600 (both repaired if looser); a key
    that cannot be loaded is replaced by a new one (images built for the old
    one then miss the cache and are rebuilt). A good key is only read, so a
    read-only cache (e.g. inside the virtual KVM host) works.

    :raises ConfigError: if the cache directory cannot be created.
    """
    cache = cache or Cache()
    directory = cache.root / SSH_KIND
    key_path = directory / SSH_KEY_NAME
    try:
        good_modes = (stat.S_IMODE(directory.stat().st_mode) == 0o700
                      and stat.S_IMODE(key_path.stat().st_mode) == 0o600)
    except OSError:
        good_modes = False
    if good_modes and (key := _load_ecdsa(key_path, warn=False)) is not None:
        return SshIdentity(key_path, _public_line(key))

    with cache.lock(SSH_KIND, SSH_KEY_NAME):  # creates the directory
        os.chmod(directory, 0o700)
        key = _load_ecdsa(key_path, warn=True)
        if key is None:
            key = paramiko.ECDSAKey.generate()
            buf = io.StringIO()
            key.write_private_key(buf)
            atomic_write(key_path, buf.getvalue(), mode=0o600)
            log.info("generated the SSH client key %s", key_path)
        elif stat.S_IMODE(key_path.stat().st_mode) != 0o600:
            os.chmod(key_path, 0o600)
        line = _public_line(key)
        pub = key_path.with_name(SSH_KEY_NAME + ".pub")
        if not pub.is_file() or pub.read_text() != line + "\n":
            atomic_write(pub, line + "\n", mode=0o644)
    return SshIdentity(key_path, line)
