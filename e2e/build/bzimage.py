"""
The x86 boot image (bzImage) as QEMU's ``-kernel`` loads it: its real-mode
setup header (Documentation/x86/boot.rst), a strict check that a file is one,
and the compressed kernel inside it (for reading what is built in).

Layout: ``setup_sects`` + 1 sectors of real-mode setup (the boot sector ends
in the signature 0x55AA at offset 510; the setup header starts at 0x1F1 and
carries the magic ``HdrS`` at 0x202 and the boot protocol version at 0x206),
then the protected-mode kernel of ``syssize`` 16-byte paragraphs, which holds
the compressed vmlinux at ``payload_offset`` (protocol 2.08 and later).
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..util import command

SECTOR = 512
BOOT_FLAG = 0xAA55
"""The boot-sector signature at offset 510 (bytes 0x55 0xAA)."""
HEADER_MAGIC = b"HdrS"
MIN_VERSION = 0x0208
"""Boot protocol 2.08 (Linux 2.6.26) and later record where the compressed kernel lies."""
MAX_VERSION = 0x02FF
HEADER_END = 0x268
"""The setup header's fields read here all lie before this offset."""

FIX = "pass a bzImage (arch/x86/boot/bzImage of a build, or /boot/vmlinuz-*), or omit --kernel to build one"


@dataclass(frozen=True)
class SetupHeader:
    """The fields of a bzImage's setup header that pveoi reads.

    :param version: boot protocol version, e.g. 0x020F for 2.15.
    :param setup_sects: real-mode setup sectors after the boot sector.
    :param syssize: the protected-mode kernel's size in 16-byte paragraphs.
    :param payload_offset: where the compressed vmlinux starts, from the protected-mode kernel's start.
    :param payload_length: its length in bytes.
    :param release: the kernel version string's first word (``6.1.0-57-cloud-amd64``), or ``unknown``.
    """

    version: int
    setup_sects: int
    syssize: int
    payload_offset: int
    payload_length: int
    release: str

    @property
    def kernel_start(self) -> int:
        """The file offset of the protected-mode kernel."""
        return (self.setup_sects + 1) * SECTOR

    @property
    def expected_size(self) -> int:
        """The smallest file size that holds the whole kernel the header describes."""
        return self.kernel_start + self.syssize * 16


def parse_setup_header(data: bytes, origin: str = "<image>") -> SetupHeader:
    """The setup header of a bzImage whose first bytes (at least :data:`HEADER_END`, ideally the
    whole setup, for the version string) are ``data``.

    :raises ConfigError: naming what is wrong: too short, an ELF file (vmlinux), no 0x55AA boot
        signature, no ``HdrS`` magic, a boot protocol version outside 2.08-2.255.
    """
    if data[:4] == b"\x7fELF":
        raise ConfigError(f"{origin} is an ELF file (a vmlinux?), not a bzImage: QEMU -kernel boots the "
                          "compressed bzImage", fix="pass arch/x86/boot/bzImage of the same build")
    if len(data) < HEADER_END:
        raise ConfigError(f"{origin} is not an x86 bzImage: only {len(data)} bytes, too short for a boot "
                          "sector and setup header", fix=FIX)
    flag, = struct.unpack_from("<H", data, 0x1FE)
    if flag != BOOT_FLAG:
        raise ConfigError(f"{origin} is not an x86 bzImage: no boot-sector signature 0x55AA at offset 510",
                          fix=FIX)
    if data[0x202:0x206] != HEADER_MAGIC:
        raise ConfigError(f"{origin} is not an x86 bzImage: no HdrS setup header at offset 0x202", fix=FIX)
    version, = struct.unpack_from("<H", data, 0x206)
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise ConfigError(f"{origin} has boot protocol {version >> 8}.{version & 0xFF:02d}, not a version "
                          f"between 2.08 and 2.255 (a damaged or very old bzImage)", fix=FIX)
    setup_sects = data[0x1F1] or 4  # 0 means 4, for the oldest boot loaders
    syssize, = struct.unpack_from("<I", data, 0x1F4)
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    pointer, = struct.unpack_from("<H", data, 0x20E)  # 0: no version string
    release = "unknown"
    start = pointer + 0x200
    end = data.find(b"\0", start) if pointer else -1
    if end > start:
        release = data[start:end].decode(errors="replace").split(" ")[0] or "unknown"
    return SetupHeader(version, setup_sects, syssize, payload_offset, payload_length, release)


def read_setup_header(path: Path) -> SetupHeader:
    """The setup header of the bzImage at ``path``, checked strictly, the file's size included.

    Reads at most 64 KiB, so it answers at once.

    :raises ConfigError: ``path`` is missing, a directory, unreadable, not a bzImage (see
        :func:`parse_setup_header`) or shorter than its header says (truncated).
    """
    if path.is_dir():
        inside = path / "bzImage"
        raise ConfigError(f"{path} is a directory, not a kernel file",
                          fix=f"pass {inside}" if inside.is_file() else FIX)
    try:
        with open(path, "rb") as f:
            data = f.read(0x10000)
            size = f.seek(0, 2)
    except FileNotFoundError as err:
        raise ConfigError(f"kernel {path} not found", fix=FIX) from err
    except OSError as err:
        raise ConfigError(f"cannot read kernel {path}: {err.strerror or err}", fix=FIX) from err
    header = parse_setup_header(data, str(path))
    if size < header.expected_size:
        raise ConfigError(f"{path} is truncated: its setup header describes {header.expected_size} bytes, "
                          f"the file has {size}", fix="copy or download it again")
    if header.kernel_start + header.payload_offset + header.payload_length > size:
        raise ConfigError(f"{path} is truncated: its compressed kernel ends past the end of the file",
                          fix="copy or download it again")
    return header


# ---------------------------------------------------------------- the compressed kernel


@dataclass(frozen=True)
class Decompressor:
    """A compression format of the kernel payload and the tool that expands it."""

    name: str
    magic: bytes
    argv: tuple[str, ...]
    package: str


DECOMPRESSORS = (  # the formats of Kconfig's "Kernel compression mode"
    Decompressor("gzip", b"\x1f\x8b", ("gzip", "-dc"), "gzip"),
    Decompressor("xz", b"\xfd7zXZ\x00", ("xz", "-dc"), "xz-utils"),
    Decompressor("lzma", b"\x5d\x00\x00", ("xz", "--format=lzma", "-dc"), "xz-utils"),
    Decompressor("bzip2", b"BZh", ("bzip2", "-dc"), "bzip2"),
    Decompressor("lz4", b"\x02\x21\x4c\x18", ("lz4", "-dc"), "lz4"),
    Decompressor("zstd", b"\x28\xb5\x2f\xfd", ("zstd", "-dc"), "zstd"),
    Decompressor("lzo", b"\x89LZO", ("lzop", "-dc"), "lzop"),
)


def vmlinux(path: Path) -> bytes:
    """The uncompressed kernel (an ELF vmlinux) inside the bzImage at ``path``.

    The payload is expanded by the tool of its format. The last 4 bytes of
    the payload hold the uncompressed size, which some tools (lz4) report as
    trailing garbage: like the kernel's ``scripts/extract-vmlinux``, the
    output counts if it is an ELF file, whatever the tool's exit status.

    :raises ConfigError: not a bzImage, an unknown format, or its tool is missing.
    """
    header = read_setup_header(path)
    with open(path, "rb") as f:
        f.seek(header.kernel_start + header.payload_offset)
        payload = f.read(header.payload_length)
    fmt = next((d for d in DECOMPRESSORS if payload.startswith(d.magic)), None)
    if fmt is None:
        raise ConfigError(f"{path}: unknown compression of the kernel (starts {payload[:6].hex()})", fix=FIX)
    tool = shutil.which(fmt.argv[0])
    if tool is None:
        raise ConfigError(f"{fmt.argv[0]} not found (the kernel {path} is {fmt.name}-compressed)",
                          fix=f"apt-get install {fmt.package}")
    proc = command.run_bytes([tool, *fmt.argv[1:]], input=payload, check=False)
    if not proc.stdout.startswith(b"\x7fELF"):
        detail = proc.stderr.strip()[-200:] or f"exit {proc.returncode}"
        raise ConfigError(f"cannot expand the {fmt.name}-compressed kernel in {path}: {detail}",
                          fix="copy or download it again")
    return proc.stdout


def embedded_config(image: bytes) -> dict[str, str] | None:
    """The kernel's own .config if it was built with ``CONFIG_IKCONFIG`` (as ``scripts/extract-ikconfig``
    finds it: gzip data after the marker ``IKCFG_ST``), else None."""
    start = image.find(b"IKCFG_ST")
    if start < 0:
        return None
    try:
        text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(image[start + 8:]).decode(errors="replace")
    except zlib.error:
        return None
    options = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("CONFIG_"):
            options[name] = value
    return options


def config_values(path: Path) -> Mapping[str, str]:
    """``CONFIG_*`` assignments of a kernel ``.config`` file."""
    options = {}
    for line in path.read_text(errors="replace").splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("CONFIG_"):
            options[name] = value
    return options
