"""The SSH client identity (e2e.build.sshkey)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import paramiko
import pytest

from e2e.build.cache import Cache
from e2e.build.sshkey import ssh_identity


def test_ssh_identity_permissions_and_reuse(tmp_path: Path) -> None:
    cache = Cache(root=tmp_path / "cache")
    ident = ssh_identity(cache)
    assert ident.private_key == tmp_path / "cache" / "ssh" / "id_ecdsa"
    assert stat.S_IMODE(ident.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ident.private_key.parent.stat().st_mode) == 0o700
    assert re.fullmatch(r"ecdsa-sha2-nistp256 AAAA[A-Za-z0-9+/=]+ pveoi", ident.public_line)
    key = paramiko.ECDSAKey.from_private_key_file(str(ident.private_key))
    assert ident.public_line.split()[1] == key.get_base64()
    assert ssh_identity(cache) == ident  # generated once per cache

    os.chmod(ident.private_key, 0o644)
    os.chmod(ident.private_key.parent, 0o755)
    assert ssh_identity(cache) == ident
    assert stat.S_IMODE(ident.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ident.private_key.parent.stat().st_mode) == 0o700


def test_ssh_identity_reads_a_good_key_without_locking(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(root=tmp_path)
    ident = ssh_identity(cache)

    def no_lock(*args: object) -> None:
        raise AssertionError("a good key must be read without the lock (read-only caches)")

    monkeypatch.setattr(Cache, "lock", no_lock)
    assert ssh_identity(cache) == ident


def test_ssh_identity_regenerates_an_unreadable_key(tmp_path: Path) -> None:
    cache = Cache(root=tmp_path)
    old = ssh_identity(cache)
    old.private_key.write_text("-----BEGIN NONSENSE-----\ngarbage\n")
    new = ssh_identity(cache)
    assert new.public_line != old.public_line
    paramiko.ECDSAKey.from_private_key_file(str(new.private_key))
    assert stat.S_IMODE(new.private_key.stat().st_mode) == 0o600
