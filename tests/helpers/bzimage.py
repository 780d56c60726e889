"""A fake x86 bzImage, well-formed enough for QEMU's and pveoi's readers; it boots nothing."""

from __future__ import annotations

import gzip
import struct


def bzimage_bytes(payload: bytes | None = None, version: bytes | None = b"6.1.192 (pveoi@pveoi) #1 SMP pveoi",
                  protocol: int = 0x020F, setup_sects: int = 4) -> bytes:
    """A well-formed x86 bzImage as QEMU and pveoi read it: boot signature, ``HdrS`` header, boot
    protocol ``protocol``, version string, and ``payload`` (default: a gzip-compressed ELF stub)
    where the header says. It boots nothing."""
    if payload is None:
        payload = gzip.compress(b"\x7fELF" + b"\0" * 60, mtime=0)
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    if version is not None:
        struct.pack_into("<H", setup, 0x20E, 0x400 - 0x200)
        setup[0x400:0x400 + len(version) + 1] = version + b"\0"
    kernel = bytearray(0x100) + payload
    kernel += b"\0" * (-len(kernel) % 16)
    struct.pack_into("<I", setup, 0x1F4, len(kernel) // 16)
    struct.pack_into("<II", setup, 0x248, 0x100, len(payload))
    return bytes(setup + kernel)
