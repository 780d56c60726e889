"""
The guest image: a gzip-compressed newc initramfs for an x86-64 guest, built
from this Debian machine's own binaries.

Contents: busybox (static) with its applet links in ``/bin``; dropbear with a
host key made at build time (its public line is in the manifest, for
pinning); ``/root/.ssh/authorized_keys`` holding the cache's client key; fio,
iperf3 and cyclictest with every shared library they load and the dynamic
loader; ``pveoi-load`` compiled here with ``gcc -O2 -static`` from
``images/guest/pveoi-load.c``; ``/init`` from ``images/guest/init``; and, for
a fetched Debian kernel (a kernel entry with ``modules.tar``), its virtio
modules with their load order precomputed from ``modules.dep``.

The archive is written in Python (newc), so every entry is owned by root
(uid/gid 0), has a fixed mtime, and the output is the same for the same
inputs apart from the freshly generated host key. The image is cached by a
content hash of everything that goes into it (see :class:`ImageInputs`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paramiko

from .cache import (
    MANIFEST,
    Cache,
    CacheEntry,
    atomic_write,
    content_hash,
    corrupt_entry_error,
    entry_problem,
    sha256_file,
)
from .errors import BuildError, ConfigError
from .progress import Progress
from .tmpdirs import tempdir

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
GUEST_DIR = REPO_ROOT / "images" / "guest"
INIT_SCRIPT = GUEST_DIR / "init"
LOAD_SOURCE = GUEST_DIR / "pveoi-load.c"

IMAGE_KIND = "images"
SCHEMA = 1
INITRD_NAME = "initramfs.cpio.gz"
LOAD_NAME = "pveoi-load"

READY_PATTERN = r"pveoi-guest-ready uptime=(\S+)\r?\n"
"""The one line the guest prints when dropbear listens (group 1: uptime in s)."""
ERROR_PATTERN = r"pveoi-guest-error: [^\r\n]*"
"""A line the guest's init prints when a step failed (use as a fail-on pattern)."""
PVEOI_PATTERN = r"pveoi-guest-pveoi: ([^\r\n]*)"
"""The guest's PV EOI report: a ``kvm_pv_eoi`` debugfs line or ``unavailable``."""

SSH_KIND = "ssh"
SSH_KEY_NAME = "id_ecdsa"
SSH_COMMENT = "pveoi"
HOST_KEY_PATH = "etc/dropbear/dropbear_ecdsa_host_key"
LOAD_PATH = "usr/bin/pveoi-load"
MODULE_ORDER_NAME = "pveoi-modules.order"
WANTED_MODULES = ("virtio_pci", "virtio_net", "virtio_blk")
"""Modules a fetched Debian kernel needs; their dependencies come from modules.dep."""

ARCHIVE_MTIME = 0
GZIP_LEVEL = 6


@dataclass(frozen=True)
class Tool:
    """A host binary the image needs.

    :param dest: its path in the image, or None for a build-time-only tool.
    """

    name: str
    path: str
    package: str
    dest: str | None


TOOLS: tuple[Tool, ...] = (
    Tool("busybox", "/bin/busybox", "busybox-static", "bin/busybox"),
    Tool("dropbear", "/usr/sbin/dropbear", "dropbear-bin", "usr/sbin/dropbear"),
    Tool("dropbearkey", "/usr/bin/dropbearkey", "dropbear-bin", None),
    Tool("fio", "/usr/bin/fio", "fio", "usr/bin/fio"),
    Tool("iperf3", "/usr/bin/iperf3", "iperf3", "usr/bin/iperf3"),
    Tool("cyclictest", "/usr/bin/cyclictest", "rt-tests", "usr/bin/cyclictest"),
)
COMPILER = Tool("gcc", "/usr/bin/gcc", "gcc libc6-dev", None)
LDD = Tool("ldd", "/usr/bin/ldd", "libc-bin", None)


# ---------------------------------------------------------------- newc


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
    """The members of a gzip-compressed newc initramfs.

    :raises ValueError: if it is not one.
    """
    with gzip.open(path, "rb") as f:
        return parse_newc(f.read())


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


# ---------------------------------------------------------------- host files


def elf_interpreter(path: Path) -> str | None:
    """The ELF ``PT_INTERP`` (dynamic loader) of an x86-64 binary; None if static.

    :raises BuildError: if ``path`` is not a 64-bit little-endian ELF file.
    """
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise BuildError(f"{path} is not a 64-bit little-endian ELF binary",
                             fix="install the x86-64 Debian package")
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(phnum):
            p_type, = struct.unpack_from("<I", table, i * phentsize)
            if p_type == 3:  # PT_INTERP
                offset, = struct.unpack_from("<Q", table, i * phentsize + 8)
                size, = struct.unpack_from("<Q", table, i * phentsize + 32)
                f.seek(offset)
                return f.read(size).rstrip(b"\0").decode()
    return None


_LDD_ARROW = re.compile(r"^\s*(\S+)\s+=>\s+(.*?)\s*(?:\(0x[0-9a-fA-F]+\))?\s*$")
_LDD_BARE = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-fA-F]+\)\s*$")


def parse_ldd(output: str, binary: str = "<binary>") -> list[str]:
    """The absolute paths of the libraries (and loader) in ``ldd`` output, in order.

    The vDSO has no file and is skipped.

    :raises BuildError: if a library is ``not found``.
    """
    paths: list[str] = []
    for line in output.splitlines():
        if m := _LDD_ARROW.match(line):
            name, where = m.group(1), m.group(2)
            if where == "not found":
                raise BuildError(f"{binary} needs {name}, which is not installed",
                                 fix=f"apt-get install --reinstall the package of {binary}")
            if where.startswith("/"):
                paths.append(where)
        elif m := _LDD_BARE.match(line):
            paths.append(m.group(1))
    return list(dict.fromkeys(paths))


def shared_libraries(binary: Path) -> list[str]:
    """Every shared object ``binary`` loads, the dynamic loader included; [] if static.

    :raises BuildError: if ``ldd`` fails or a library is missing.
    """
    interp = elf_interpreter(binary)
    if interp is None:
        return []
    ldd = shutil.which("ldd") or LDD.path
    proc = subprocess.run([ldd, str(binary)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"ldd {binary} failed: {(proc.stderr or proc.stdout).strip()[-200:]}",
                         fix=f"check that {binary} runs on this machine")
    libs = parse_ldd(proc.stdout, str(binary))
    if interp not in libs:
        libs.append(interp)
    return libs


@dataclass(frozen=True)
class HostFile:
    """A host file copied into the image.

    :param dest: its path in the image (relative).
    :param source: the real file on the host (symlinks resolved).
    """

    dest: str
    source: Path
    sha256: str
    mode: int


def find_tool(tool: Tool) -> Path:
    """The host path of ``tool``.

    :raises ConfigError: naming the Debian package to install if it is missing.
    """
    path = Path(tool.path)
    if path.is_file() and os.access(path, os.X_OK):
        return path
    found = shutil.which(tool.name)
    if found:
        return Path(found)
    raise ConfigError(f"{tool.name} not found", fix=f"apt-get install {tool.package}")


def collect_host_files(tools: Sequence[Tool] = TOOLS) -> list[HostFile]:
    """The binaries ``tools`` puts in the image and all their libraries, sorted by ``dest``.

    :raises ConfigError: if a tool is missing (naming its package).
    :raises BuildError: if a library cannot be resolved.
    """
    files: dict[str, HostFile] = {}

    def add(dest: str, host: Path) -> None:
        dest = dest.lstrip("/")
        if dest in files:
            return
        real = host.resolve()
        files[dest] = HostFile(dest, real, sha256_file(real), stat.S_IMODE(real.stat().st_mode))

    for tool in tools:
        path = find_tool(tool)
        if tool.dest is None:
            continue
        add(tool.dest, path)
        for lib in shared_libraries(path):
            add(lib, Path(lib))
    return [files[d] for d in sorted(files)]


# ---------------------------------------------------------------- kernel modules


@dataclass(frozen=True)
class KernelModules:
    """A fetched kernel's ``modules.tar`` (top directory: the release)."""

    release: str
    tar: Path
    sha256: str


def kernel_modules(kernel: CacheEntry | None) -> KernelModules | None:
    """The modules of a kernel entry, or None (a built kernel has none).

    The sha256 comes from the entry's verified manifest when it is there.
    """
    if kernel is None:
        return None
    tar = kernel.path / "modules.tar"
    if not tar.is_file():
        return None
    files = kernel.manifest.get("files") or {}
    digest = files.get("modules.tar") if isinstance(files, Mapping) else None
    release = str(kernel.manifest.get("release") or "")
    if not release:
        with tarfile.open(tar) as tf:
            first = next(iter(tf), None)
            release = first.name.split("/", 1)[0] if first is not None else ""
    return KernelModules(release, tar, str(digest) if digest else sha256_file(tar))


_MODULE_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")


def module_name(relpath: str) -> str:
    """``kernel/drivers/net/virtio_net.ko.xz`` -> ``virtio_net`` (dashes as underscores)."""
    base = os.path.basename(relpath)
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, ...]]:
    """``modules.dep`` as ``{module path: dependency paths}``."""
    deps: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        mod, _, rest = line.partition(":")
        deps[mod.strip()] = tuple(rest.split())
    return deps


def module_load_order(deps: Mapping[str, Sequence[str]], wanted: Iterable[str]) -> list[str]:
    """Module paths to insmod, dependencies first, for the ``wanted`` module names.

    A wanted module not in ``deps`` is built in (or absent) and is skipped.
    """
    by_name = {module_name(path): path for path in deps}
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        for dep in sorted(deps.get(path, ())):
            visit(dep)
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is not None:
            visit(path)
    return order


def _decompressed_name(relpath: str) -> str:
    for suffix in (".xz", ".gz", ".zst"):
        if relpath.endswith(".ko" + suffix):
            return relpath[: -len(suffix)]
    return relpath


def _decompress_module(relpath: str, raw: bytes) -> tuple[str, bytes]:
    """``(name without the compression suffix, contents)``; other files pass through.

    :raises ConfigError: if a zstd module needs the missing ``zstd`` tool.
    """
    if relpath.endswith(".ko.xz"):
        return relpath[:-3], lzma.decompress(raw)
    if relpath.endswith(".ko.gz"):
        return relpath[:-3], gzip.decompress(raw)
    if relpath.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise ConfigError("zstd not found (the kernel's modules are zstd-compressed)",
                              fix="apt-get install zstd")
        proc = subprocess.run([zstd, "-dc"], input=raw, capture_output=True, check=False)
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip()[-200:]
            raise BuildError(f"zstd -d {relpath} failed: {detail}")
        return relpath[:-4], proc.stdout
    return relpath, raw


def elf_modinfo(data: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section of a (decompressed) 64-bit kernel module: key -> values.

    :raises ValueError: if ``data`` is not a 64-bit little-endian ELF file.
    """
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF object")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, = struct.unpack_from("<I", data, shoff + i * shentsize)
        offset, size = struct.unpack_from("<QQ", data, shoff + i * shentsize + 24)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name_off, offset, size = section(i)
        end = data.index(b"\0", str_off + name_off)
        if data[str_off + name_off:end] != b".modinfo":
            continue
        for item in data[offset:offset + size].split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
    return info


def modinfo_dependencies(read: Callable[[str], bytes], module_paths: Iterable[str],
                         wanted: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """A ``modules.dep``-like map built from the modules' own ``depends=`` fields.

    Debian's kernel packages ship no ``modules.dep`` (depmod makes it on
    install), so the wanted modules and, recursively, what they depend on are
    read instead.

    :param read: returns a module's decompressed contents by path.
    :returns: ``{module path: direct dependency paths}`` for the modules reached.
    """
    by_name = {module_name(p): p for p in module_paths}
    deps: dict[str, tuple[str, ...]] = {}
    todo = [by_name[n] for n in (w.replace("-", "_") for w in wanted) if n in by_name]
    while todo:
        path = todo.pop()
        if path in deps:
            continue
        names = [n.replace("-", "_") for v in elf_modinfo(read(path)).get("depends", [])
                 for n in v.split(",") if n]
        found = tuple(by_name[n] for n in names if n in by_name)
        for n in names:
            if n not in by_name:
                log.warning("module %s depends on %s, which is not a module file", path, n)
        deps[path] = found
        todo.extend(found)
    return deps


def add_kernel_modules(tree: ImageTree, modules: KernelModules,
                       wanted: Sequence[str] = WANTED_MODULES) -> list[str]:
    """Copy the wanted modules (decompressed) and their load order into ``tree``.

    The order comes from ``modules.dep`` if the archive has one, else from
    each module's ``.modinfo`` (see :func:`modinfo_dependencies`); a wanted
    module with no file is built in and skipped.

    :returns: the module paths in load order (relative to ``/lib/modules/<release>``).
    :raises BuildError: if a module cannot be read.
    """
    prefix = f"{modules.release}/"
    with tarfile.open(modules.tar) as tf:
        members = {m.name.removeprefix("./").removeprefix(prefix): m for m in tf.getmembers()
                   if m.isfile() and m.name.removeprefix("./").startswith(prefix)}
        if not members:
            raise BuildError(f"{modules.tar} has nothing under {prefix}",
                             fix="re-fetch the kernel (pveoi kernel fetch --debian)")
        blobs: dict[str, bytes] = {}

        def read(name: str) -> bytes:
            if name not in blobs:
                member = members.get(name)
                f = tf.extractfile(member) if member is not None else None
                if f is None:
                    raise BuildError(f"{modules.tar} has no {prefix}{name}",
                                     fix="re-fetch the kernel (pveoi kernel fetch --debian)")
                blobs[name] = _decompress_module(name, f.read())[1]
            return blobs[name]

        if "modules.dep" in members:
            deps = parse_modules_dep(read("modules.dep").decode())
        else:
            ko = [m for m in members if m.endswith(_MODULE_SUFFIXES)]
            deps = modinfo_dependencies(read, ko, wanted)
        order = module_load_order(deps, wanted)
        loaded = []
        for relpath in order:
            name = _decompressed_name(relpath)
            tree.file(f"lib/modules/{modules.release}/{name}", data=read(relpath))
            loaded.append(name)
    missing = sorted({w.replace("-", "_") for w in wanted} - {module_name(p) for p in order})
    if missing:
        log.info("kernel %s: no module file for %s (built in?)", modules.release,
                 ", ".join(missing))
    tree.file(f"lib/modules/{modules.release}/{MODULE_ORDER_NAME}",
              data="".join(f"{name}\n" for name in loaded).encode())
    return loaded


# ---------------------------------------------------------------- ssh identity


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


# ---------------------------------------------------------------- inputs and key


@dataclass(frozen=True)
class ImageInputs:
    """Everything an image is made of; :meth:`key` is its cache key."""

    init: bytes
    load_source: bytes
    files: tuple[HostFile, ...]
    client_public_line: str
    modules: KernelModules | None = None
    wanted_modules: tuple[str, ...] = WANTED_MODULES
    tools: tuple[Tool, ...] = TOOLS

    def key(self) -> str:
        """Content hash of the inputs (24 hex digits)."""
        parts: list[str | bytes] = [f"schema={SCHEMA}", self.init, self.load_source,
                                    self.client_public_line]
        for f in sorted(self.files, key=lambda f: f.dest):
            parts += [f.dest, f.sha256, f"{f.mode:o}"]
        if self.modules is not None:
            parts += [f"modules={self.modules.release}", self.modules.sha256, *self.wanted_modules]
        return content_hash(parts)[:24]


def image_inputs(identity: SshIdentity, kernel: CacheEntry | None = None,
                 guest_dir: Path = GUEST_DIR, tools: Sequence[Tool] = TOOLS) -> ImageInputs:
    """Gather (and hash) what the image for ``kernel`` is built from.

    :raises ConfigError: if the recipe files or a tool is missing.
    """
    recipe = []
    for path in (guest_dir / "init", guest_dir / "pveoi-load.c"):
        if not path.is_file():
            raise ConfigError(f"{path} not found", fix="run pveoi from a complete checkout")
        recipe.append(path.read_bytes())
    return ImageInputs(recipe[0], recipe[1], tuple(collect_host_files(tools)), identity.public_line,
                       kernel_modules(kernel), tools=tuple(tools))


# ---------------------------------------------------------------- build


@dataclass(frozen=True)
class GuestImage:
    """A built guest initramfs and what the harness needs to use it.

    :param initrd: the ``cpio.gz`` in the cache entry.
    :param host_key_line: dropbear's public host key (``ecdsa-sha2-nistp256 AAAA...``).
    :param path: the cache entry directory.
    """

    initrd: Path
    host_key_line: str
    identity: SshIdentity
    manifest: Mapping[str, Any]
    path: Path
    load_helper: Path | None = field(default=None)
    """The static ``pveoi-load`` (also in the image), runnable natively."""


def _run(argv: Sequence[str], what: str, fix: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:] or ["no output"]
        raise BuildError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}", fix=fix)
    return proc.stdout


def compile_load_helper(source: Path, out: Path) -> str:
    """Build ``pveoi-load`` with ``gcc -O2 -static``.

    :returns: the compiler's version.
    :raises ConfigError: if gcc is missing.
    :raises BuildError: with gcc's messages if the build fails.
    """
    gcc = str(find_tool(COMPILER))
    _run([gcc, "-O2", "-static", "-pthread", "-Wall", "-Wextra", "-o", str(out), str(source)],
         f"gcc -static {source.name}", fix="apt-get install gcc libc6-dev (static glibc)")
    return _run([gcc, "-dumpfullversion"], "gcc -dumpfullversion", fix="check gcc").strip()


def make_host_key(workdir: Path) -> tuple[Path, str]:
    """A fresh dropbear ECDSA P-256 host key.

    :returns: the key file and its public line (``type base64``, no comment).
    :raises BuildError: if dropbearkey fails or prints no public key.
    """
    keygen = str(find_tool(next(t for t in TOOLS if t.name == "dropbearkey")))
    key = workdir / "dropbear_ecdsa_host_key"
    fix = "apt-get install --reinstall dropbear-bin"
    _run([keygen, "-t", "ecdsa", "-s", "256", "-f", str(key)], "dropbearkey -t ecdsa", fix)
    out = _run([keygen, "-y", "-f", str(key)], "dropbearkey -y", fix)
    for line in out.splitlines():
        if line.startswith("ecdsa-sha2-nistp256 "):
            return key, " ".join(line.split()[:2])
    raise BuildError("dropbearkey -y printed no ecdsa-sha2-nistp256 line", fix=fix)


def busybox_applets(busybox: Path) -> list[str]:
    """The applet names of ``busybox --list``.

    :raises BuildError: if busybox cannot list them.
    """
    out = _run([str(busybox), "--list"], "busybox --list",
               fix="apt-get install --reinstall busybox-static")
    return sorted({name for name in out.split() if name and "/" not in name})


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """``dpkg-query`` versions of installed packages (missing ones are left out)."""
    names = sorted(set(packages))
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Version}\n", *names],
                          capture_output=True, text=True, check=False)
    versions = {}
    for line in proc.stdout.splitlines():
        pkg, _, version = line.partition("\t")
        if pkg and version:
            versions[pkg.split(":", 1)[0]] = version
    return versions


_ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\ntty:x:5:\n",
    "etc/shells": "/bin/sh\n/bin/ash\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    "etc/hosts": "127.0.0.1 localhost\n10.0.2.15 pveoi-guest\n",
    "etc/hostname": "pveoi-guest\n",
}


def populate_tree(tree: ImageTree, inputs: ImageInputs, host_key: Path, load_helper: Path,
                  applets: Sequence[str], key: str) -> None:
    """Fill ``tree`` with the guest's userland, keys and configuration (kernel modules apart).

    :param host_key: dropbear's private host key file.
    :param load_helper: the compiled ``pveoi-load``.
    :param applets: busybox applet names, linked in ``/bin`` unless a real file is there.
    :param key: the image's cache key, recorded in ``/etc/pveoi-image``.
    """
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "etc", "proc", "sys", "dev",
              "run", "tmp", "mnt", "var", "var/log"):
        tree.dir(d)
    tree.dir("tmp", 0o1777)
    tree.dir("root", 0o700)
    tree.dir("root/.ssh", 0o700)
    tree.dir("etc/dropbear", 0o700)
    tree.symlink("var/run", "../run")
    tree.node("dev/console", stat.S_IFCHR, 5, 1)
    tree.node("dev/null", stat.S_IFCHR, 1, 3, 0o666)
    tree.file("init", data=inputs.init, mode=0o755)
    for f in inputs.files:
        tree.file(f.dest, source=f.source, mode=f.mode)
    for name in applets:
        if name != "busybox":
            tree.symlink(f"bin/{name}", "busybox", replace=False)
    tree.file(LOAD_PATH, source=load_helper, mode=0o755)
    tree.file(HOST_KEY_PATH, source=host_key, mode=0o600)
    tree.file("root/.ssh/authorized_keys", data=(inputs.client_public_line + "\n").encode(),
              mode=0o600)
    for name, text in _ETC_FILES.items():
        tree.file(name, data=text.encode())
    tree.file("etc/pveoi-image", data=f"key={key}\n".encode())


def build_image(kernel: CacheEntry | None = None, cache: Cache | None = None,
                force: bool = False, *, tools: Sequence[Tool] = TOOLS) -> GuestImage:
    """Build (or find in the cache) the guest initramfs.

    :param kernel: the kernel it will boot; only a fetched Debian kernel
        (an entry with ``modules.tar``) changes the image (its virtio
        modules are added).
    :param force: rebuild even on a cache hit.
    :param tools: the host binaries to include (default :data:`TOOLS`; busybox
        and dropbear are required). fio alone brings about 80 MB of shared
        libraries (ceph, gluster, ICU), which costs about 1.5 s per TCG boot.
    :raises ConfigError: if a tool is missing (naming the package to install).
    :raises BuildError: if compiling ``pveoi-load``, key generation or
        library resolution fails.
    """
    cache = cache or Cache()
    identity = ssh_identity(cache)
    names = {t.name for t in tools}
    if not {"busybox", "dropbear", "dropbearkey"} <= names:
        raise ConfigError("the image needs busybox, dropbear and dropbearkey",
                          fix="keep them in tools")
    inputs = image_inputs(identity, kernel, tools=tools)
    key = inputs.key()
    if not force and (hit := cache.lookup(IMAGE_KIND, key)):
        log.info("image %s: cache hit (%s)", key, hit.path)
        return _guest_image(hit, identity)
    with cache.lock(IMAGE_KIND, key):
        if not force and (hit := cache.lookup(IMAGE_KIND, key)):
            return _guest_image(hit, identity)
        progress = Progress("image build")
        with cache.staging(IMAGE_KIND, key) as staged, \
                tempdir("image") as work:
            entry = _build_into(inputs, key, cache, staged, Path(work), progress)
        return _guest_image(entry, identity)


def _build_into(inputs: ImageInputs, key: str, cache: Cache, staged: Path, work: Path,
                progress: Progress) -> CacheEntry:
    started = time.time()
    progress.update("compiling pveoi-load (gcc -O2 -static)", force=True)
    load_helper = staged / LOAD_NAME
    source = work / "pveoi-load.c"
    source.write_bytes(inputs.load_source)  # exactly what the key hashed
    compiler = compile_load_helper(source, load_helper)
    progress.update("generating the dropbear host key", force=True)
    host_key, host_key_line = make_host_key(work)
    busybox = next(f for f in inputs.files if f.dest == "bin/busybox").source
    applets = busybox_applets(busybox)

    tree = ImageTree()
    populate_tree(tree, inputs, host_key, load_helper, applets, key)
    modules: list[str] = []
    if inputs.modules is not None:
        progress.update(f"adding kernel {inputs.modules.release} modules", force=True)
        modules = add_kernel_modules(tree, inputs.modules, inputs.wanted_modules)

    entries = tree.entries()
    progress.update(f"writing {len(entries)} members to {INITRD_NAME}", force=True)
    initrd = staged / INITRD_NAME
    with open(initrd, "wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=ARCHIVE_MTIME
    ) as gz:
        uncompressed = write_newc(entries, gz)

    tools = [t for t in inputs.tools if t.dest is not None]
    versions = package_versions(t.package for t in inputs.tools)
    by_dest = {f.dest: f for f in inputs.files}
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "initramfs",
        "hash": key,
        "host_key_line": host_key_line,
        "client_key_line": inputs.client_public_line,
        "ready_pattern": READY_PATTERN,
        "binaries": {
            t.name: {"image_path": "/" + str(t.dest), "host_path": str(by_dest[str(t.dest)].source),
                     "sha256": by_dest[str(t.dest)].sha256, "package": t.package,
                     "version": versions.get(t.package, "unknown")}
            for t in tools
        },
        "libraries": {"/" + f.dest: f.sha256 for f in inputs.files
                      if f.dest not in {str(t.dest) for t in tools}},
        "packages": versions,
        "load_helper": {"image_path": "/" + LOAD_PATH, "compiler": f"gcc {compiler}",
                        "source_sha256": hashlib.sha256(inputs.load_source).hexdigest()},
        "kernel_modules": None if inputs.modules is None else {
            "release": inputs.modules.release, "modules_tar_sha256": inputs.modules.sha256,
            "load_order": modules,
        },
        "contents": {"/" + e.name: len(e.payload()) if e.source is None else e.source.stat().st_size
                     for e in entries if stat.S_ISREG(e.mode)},
        "archive": {"members": len(entries), "uncompressed_bytes": uncompressed,
                    "compressed_bytes": initrd.stat().st_size, "format": "newc+gzip"},
        "build_seconds": round(time.time() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    entry = cache.publish(IMAGE_KIND, key, staged, [INITRD_NAME, LOAD_NAME], manifest)
    progress.done(f"built {entry.path / INITRD_NAME} ({_size_mb(entry)} MB, "
                  f"{len(entries)} members)")
    return entry


def _size_mb(entry: CacheEntry) -> str:
    return f"{(entry.path / INITRD_NAME).stat().st_size / 1e6:.1f}"


def load_image(path: Path) -> GuestImage:
    """An already built image entry (``pveoi image build --json``'s ``path``), used as is.

    Verifies the entry like a cache hit does and needs nothing writable, so it
    serves inside the virtual KVM host, where the cache is read-only.

    :raises ConfigError: ``path`` is not a pveoi image entry, or a damaged one
        (it is left in place: the error names it and the fix).
    """
    path = path.expanduser().absolute()
    if path.parent.name != IMAGE_KIND or not (path / MANIFEST).is_file():
        raise ConfigError(f"{path} is not a pveoi image entry",
                          fix="pass the path `pveoi image build --json` prints, or omit --image")
    manifest, problem = entry_problem(path)
    if problem is not None or manifest is None:
        raise corrupt_entry_error(path, problem or "no manifest", "pveoi image build --force")
    entry = CacheEntry(IMAGE_KIND, path.name, path, manifest)
    return _guest_image(entry, ssh_identity(Cache(root=path.parent.parent)))


def _guest_image(entry: CacheEntry, identity: SshIdentity) -> GuestImage:
    manifest = entry.manifest
    if manifest.get("client_key_line") != identity.public_line:
        raise BuildError(f"image {entry.path} carries another client key",
                         fix="rebuild it with pveoi image build --force")
    helper = entry.path / LOAD_NAME
    return GuestImage(entry.path / INITRD_NAME, str(manifest["host_key_line"]), identity, manifest,
                      entry.path, helper if helper.is_file() else None)
