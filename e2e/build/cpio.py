"""
The newc (``cpio -H newc``) archive format, as the Linux initramfs reads it,
and :class:`ImageTree`, the file tree an image is written from.

Written in Python so every member is owned by root (uid/gid 0) and has a
fixed mtime: the same members always give the same bytes.
"""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

ARCHIVE_MTIME = 0
"""The mtime of every member (a fixed value keeps archives reproducible)."""


class Writable(Protocol):
    """Anything with ``write(bytes)``: a file, a :class:`gzip.GzipFile`, a BytesIO."""

    def write(self, data: bytes, /) -> object: ...


_NEWC_MAGIC = b"070701"
_NEWC_HEADER = 110
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class CpioEntry:
    """One archive member.

    :param name: path inside the archive, relative (``bin/busybox``).
    :param mode: full ``st_mode`` (type and permission bits).
    :param data: file contents or symlink target; ignored if ``source`` is set.
    :param source: a host file whose contents are the member's data (read when written).
    :param rdev: (major, minor) of a device node.
    """

    name: str
    mode: int
    data: bytes = b""
    source: Path | None = None
    rdev: tuple[int, int] = (0, 0)

    def payload(self) -> bytes:
        """The member's data as written to the archive."""
        return self.source.read_bytes() if self.source is not None else self.data


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def _newc_header(ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int],
                 namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return _NEWC_MAGIC + b"".join(b"%08X" % v for v in fields)


def write_newc(entries: Iterable[CpioEntry], out: Writable, mtime: int = ARCHIVE_MTIME) -> int:
    """Write a newc (``cpio -H newc``) archive, every member owned by root.

    Members get consecutive inode numbers, one link each and the same
    ``mtime``, so the same entries always give the same bytes. The caller
    orders members so directories come before their contents.

    :param out: a binary stream (e.g. a :class:`gzip.GzipFile`).
    :returns: the archive's size in bytes (uncompressed).
    :raises ValueError: on an absolute or empty member name.
    """
    written = 0

    def emit(chunk: bytes) -> None:
        nonlocal written
        out.write(chunk)
        written += len(chunk)

    for ino, entry in enumerate(entries, 1):
        if not entry.name or entry.name.startswith("/"):
            raise ValueError(f"cpio member name must be relative: {entry.name!r}")
        data = entry.payload() if stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode) else b""
        name = entry.name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        emit(_newc_header(ino, entry.mode, nlink, mtime, len(data), entry.rdev, len(name)))
        emit(name + b"\0" * _pad4(_NEWC_HEADER + len(name)))
        emit(data + b"\0" * _pad4(len(data)))
    trailer = _TRAILER.encode() + b"\0"
    emit(_newc_header(0, 0, 1, 0, 0, (0, 0), len(trailer)))
    emit(trailer + b"\0" * _pad4(_NEWC_HEADER + len(trailer)))
    if written % 512:
        emit(b"\0" * (512 - written % 512))
    return written


def parse_newc(data: bytes) -> list[CpioEntry]:
    """Read the members of a newc archive (up to its trailer).

    :raises ValueError: on a bad magic number or a truncated archive.
    """
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        head = data[pos:pos + _NEWC_HEADER]
        if len(head) < _NEWC_HEADER or head[:6] != _NEWC_MAGIC:
            raise ValueError(f"not a newc header at offset {pos}")
        fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name_start = pos + _NEWC_HEADER
        name = data[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize + _pad4(_NEWC_HEADER + namesize)
        if data_start + size > len(data):
            raise ValueError(f"member {name!r} is truncated")
        if name == _TRAILER:
            return entries
        entries.append(CpioEntry(name, mode, data[data_start:data_start + size], rdev=rdev))
        pos = data_start + size + _pad4(size)


def read_initrd(path: Path) -> list[CpioEntry]:
    """The members of a newc initramfs, plain or gzip-compressed.

    :raises ValueError: if it is not one.
    """
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return parse_newc(data)


class ImageTree:
    """The image's file tree, written out parents first."""

    def __init__(self) -> None:
        self._entries: dict[str, CpioEntry] = {}

    @staticmethod
    def _norm(name: str) -> str:
        norm = os.path.normpath(name.lstrip("/"))
        if norm in (".", "") or norm.startswith(".."):
            raise ValueError(f"bad image path {name!r}")
        return norm

    def _add(self, entry: CpioEntry, replace: bool = True) -> None:
        if not replace and entry.name in self._entries:
            return
        parent = os.path.dirname(entry.name)
        if parent and parent not in self._entries:
            self.dir(parent)
        self._entries[entry.name] = entry

    def __contains__(self, name: str) -> bool:
        return self._norm(name) in self._entries

    def dir(self, name: str, mode: int = 0o755) -> None:
        """Add a directory (and its parents); an existing one gets ``mode``."""
        self._add(CpioEntry(self._norm(name), stat.S_IFDIR | mode))

    def file(self, name: str, data: bytes | None = None, source: Path | None = None,
             mode: int = 0o644) -> None:
        """Add a regular file from ``data`` or from the host file ``source``."""
        if (data is None) == (source is None):
            raise ValueError("give exactly one of data and source")
        self._add(CpioEntry(self._norm(name), stat.S_IFREG | mode, data or b"", source))

    def symlink(self, name: str, target: str, replace: bool = True) -> None:
        """Add a symlink to ``target`` (kept as given)."""
        self._add(CpioEntry(self._norm(name), stat.S_IFLNK | 0o777, target.encode()), replace)

    def node(self, name: str, kind: int, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a device node (``kind`` is ``stat.S_IFCHR`` or ``stat.S_IFBLK``)."""
        self._add(CpioEntry(self._norm(name), kind | mode, rdev=(major, minor)))

    def entries(self) -> list[CpioEntry]:
        """All members, sorted so that every directory precedes its contents."""
        return [self._entries[name] for name in sorted(self._entries)]



def write_initrd(entries: Iterable[CpioEntry], path: Path, level: int | None = 6) -> int:
    """Write ``entries`` as a newc archive (an initramfs) to ``path``, gzip-compressed or plain.

    The gzip header carries no name and a zero mtime, so the file is as
    reproducible as its members.

    :param level: gzip compression level; None writes the archive uncompressed.
    :returns: the archive's uncompressed size in bytes.
    :raises ValueError: on an absolute or empty member name.
    """
    with open(path, "wb") as raw:
        if level is None:
            return write_newc(entries, raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=ARCHIVE_MTIME) as gz:
            return write_newc(entries, gz)
