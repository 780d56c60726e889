"""
A fetched kernel's modules in the guest image: which module files the wanted
drivers need (their dependencies, recursively), in which order to load them,
and copying them into the image's tree with a load-order file that the
guest's init reads.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cache import CacheEntry, sha256_file
from ..errors import BuildError, ConfigError
from .cpio import ImageTree

log = logging.getLogger(__name__)

MODULE_ORDER_NAME = "pveoi-modules.order"
WANTED_MODULES = ("virtio_pci", "virtio_net", "virtio_blk")
"""Modules a fetched Debian kernel needs; their dependencies come from modules.dep."""


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
