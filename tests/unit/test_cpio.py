"""The newc archive writer and reader, and the image's file tree (e2e.build.cpio)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from e2e.build.cpio import CpioEntry, ImageTree, parse_newc, read_initrd, write_initrd, write_newc

HAVE_CPIO = shutil.which("cpio") is not None


def sample_entries() -> list[CpioEntry]:
    return [
        CpioEntry("bin", stat.S_IFDIR | 0o755),
        CpioEntry("bin/hello", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
        CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        CpioEntry("dev", stat.S_IFDIR | 0o755),
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("empty", stat.S_IFREG | 0o644, b""),
        CpioEntry("odd", stat.S_IFREG | 0o600, b"abc"),  # 3 bytes: exercises padding
    ]


def test_newc_round_trip_and_alignment() -> None:
    buf = io.BytesIO()
    size = write_newc(sample_entries(), buf)
    data = buf.getvalue()
    assert size == len(data)
    assert size % 512 == 0
    assert parse_newc(data) == sample_entries()


def test_newc_is_deterministic() -> None:
    a, b = io.BytesIO(), io.BytesIO()
    write_newc(sample_entries(), a)
    write_newc(sample_entries(), b)
    assert a.getvalue() == b.getvalue()


def test_newc_source_file_is_read(tmp_path: Path) -> None:
    src = tmp_path / "blob"
    src.write_bytes(b"x" * 1001)
    buf = io.BytesIO()
    write_newc([CpioEntry("blob", stat.S_IFREG | 0o644, source=src)], buf)
    (entry,) = parse_newc(buf.getvalue())
    assert entry.data == b"x" * 1001


def test_newc_rejects_absolute_names() -> None:
    with pytest.raises(ValueError, match="relative"):
        write_newc([CpioEntry("/etc/passwd", stat.S_IFREG | 0o644, b"")], io.BytesIO())


def test_parse_newc_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="newc header"):
        parse_newc(b"not an archive" * 20)


@pytest.mark.skipif(not HAVE_CPIO, reason="cpio not installed (apt-get install cpio)")
def test_gnu_cpio_lists_our_archive() -> None:
    buf = io.BytesIO()
    write_newc(sample_entries(), buf)
    listing = subprocess.run(["cpio", "-itv", "--numeric-uid-gid", "--quiet"], input=buf.getvalue(),
                             capture_output=True, check=True).stdout.decode()
    lines = listing.splitlines()
    assert [ln.split()[-1] if "->" not in ln else ln.split()[-3] for ln in lines] == [
        e.name for e in sample_entries()
    ]
    for line in lines:
        owner, group = line.split()[2:4]
        assert (owner, group) == ("0", "0")
    assert any(ln.startswith("lrwxrwxrwx") and ln.endswith("bin/sh -> busybox") for ln in lines)
    assert any(ln.startswith("crw-------") and "dev/console" in ln for ln in lines)


def test_image_tree_adds_parents_first() -> None:
    tree = ImageTree()
    tree.file("usr/lib/x86_64-linux-gnu/libc.so.6", data=b"elf")
    tree.symlink("bin/sh", "busybox")
    tree.dir("root", 0o700)
    names = [e.name for e in tree.entries()]
    assert names == ["bin", "bin/sh", "root", "usr", "usr/lib", "usr/lib/x86_64-linux-gnu",
                     "usr/lib/x86_64-linux-gnu/libc.so.6"]
    for i, name in enumerate(names):
        parent = os.path.dirname(name)
        assert not parent or parent in names[:i]
    root = next(e for e in tree.entries() if e.name == "root")
    assert stat.S_IMODE(root.mode) == 0o700


def test_image_tree_keeps_existing_unless_replacing() -> None:
    tree = ImageTree()
    tree.file("bin/ls", data=b"real")
    tree.symlink("bin/ls", "busybox", replace=False)
    (ls,) = [e for e in tree.entries() if e.name == "bin/ls"]
    assert stat.S_ISREG(ls.mode)
    with pytest.raises(ValueError):
        tree.file("../escape", data=b"")


def test_write_initrd_is_gzip_newc_and_reproducible(tmp_path: Path) -> None:
    a, b = tmp_path / "a.cpio.gz", tmp_path / "b.cpio.gz"
    size = write_initrd(sample_entries(), a)
    write_initrd(sample_entries(), b)
    assert a.read_bytes() == b.read_bytes()  # no name, no mtime in the gzip header
    assert len(gzip.decompress(a.read_bytes())) == size
    assert read_initrd(a) == sample_entries()


def test_write_initrd_uncompressed_reads_back(tmp_path: Path) -> None:
    plain = tmp_path / "a.cpio"
    size = write_initrd(sample_entries(), plain, level=None)
    assert plain.stat().st_size == size and plain.read_bytes()[:6] == b"070701"
    assert read_initrd(plain) == sample_entries()
