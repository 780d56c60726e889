"""
A fetched kernel's modules in the guest image: which module files the wanted
drivers need (their dependencies, recursively, as kmod's ``modinfo`` reads
them), in which order to load them, and copying them into the image's tree
with a load-order file that the guest's init reads.

Debian's kernel packages ship no ``modules.dep`` (depmod makes it on
install), so the dependencies come from each module's own ``depends=`` field,
read by ``modinfo -F depends`` (kmod reads compressed modules too). The
archive's ``modules.builtin`` tells a built-in driver from a missing one.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError, ConfigError
from ..util import command
from ..util.tmpdirs import tempdir
from .bzimage import config_values, embedded_config, vmlinux
from .cache import CacheEntry, sha256_file
from .cpio import ImageTree
from .elf import Tool, find_tool

log = logging.getLogger(__name__)

MODULE_ORDER_NAME = "pveoi-modules.order"
WANTED_MODULES = ("virtio_pci", "virtio_net", "virtio_blk")
"""Drivers the guest's init needs (eth0, /dev/vda) from a kernel that has them as modules;
their dependencies are found by :func:`module_dependencies`."""

MODINFO = Tool("modinfo", "/usr/sbin/modinfo", "kmod", None)

MODULE_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")
_DECOMPRESS: Mapping[str, Tool] = {
    ".xz": Tool("xz", "/usr/bin/xz", "xz-utils", None),
    ".zst": Tool("zstd", "/usr/bin/zstd", "zstd", None),
    ".gz": Tool("gzip", "/bin/gzip", "gzip", None),
}
"""The tool that decompresses a module with this suffix (``-dc``: to stdout)."""

_REFETCH = "re-fetch the kernel (pveoi kernel fetch --debian)"


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


def module_name(relpath: str) -> str:
    """``kernel/drivers/net/virtio_net.ko.xz`` -> ``virtio_net`` (dashes as underscores)."""
    base = relpath.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def module_load_order(deps: Mapping[str, Sequence[str]], wanted: Iterable[str]) -> list[str]:
    """Module paths to insmod, dependencies first, for the ``wanted`` module names.

    A wanted module not in ``deps`` is built in (or absent) and is skipped.

    :param deps: ``{module path: the paths of its direct dependencies}``.
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


def modinfo_depends(module: Path) -> tuple[str, ...]:
    """The names a module depends on: ``modinfo -F depends MODULE`` (kmod), dashes as underscores.

    :raises ConfigError: if kmod's ``modinfo`` is not installed.
    :raises BuildError: if ``modinfo`` cannot read the module.
    """
    modinfo = find_tool(MODINFO)
    proc = command.run([str(modinfo), "-F", "depends", str(module)], check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"modinfo {module.name} failed: {detail[0]}", fix=_REFETCH)
    return tuple(n.strip().replace("-", "_") for line in proc.stdout.splitlines() for n in line.split(",")
                 if n.strip())


def module_dependencies(module_paths: Iterable[str], wanted: Iterable[str],
                        depends: Callable[[str], Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """A ``modules.dep``-like map for the wanted modules and, recursively, what they depend on.

    :param module_paths: every module file of the kernel (paths, any suffix of :data:`MODULE_SUFFIXES`).
    :param depends: the names a module (by path) depends on, e.g. via :func:`modinfo_depends`.
    :returns: ``{module path: direct dependency paths}`` for the modules reached.
    """
    by_name = {module_name(p): p for p in module_paths}
    deps: dict[str, tuple[str, ...]] = {}
    todo = [by_name[n] for n in (w.replace("-", "_") for w in wanted) if n in by_name]
    while todo:
        path = todo.pop()
        if path in deps:
            continue
        names = depends(path)
        for n in names:
            if n not in by_name:
                log.warning("module %s depends on %s, which is not a module file", path, n)
        deps[path] = tuple(by_name[n] for n in names if n in by_name)
        todo.extend(deps[path])
    return deps


def decompressed(path: Path) -> tuple[str, bytes]:
    """A module file's name without its compression suffix and its decompressed contents.

    :raises ConfigError: if the decompressor (xz, zstd, gzip) is not installed.
    :raises BuildError: if it fails.
    """
    tool = _DECOMPRESS.get(path.suffix) if path.name.endswith(MODULE_SUFFIXES[:-1]) else None
    if tool is None:
        return path.name, path.read_bytes()
    proc = command.run_bytes([str(find_tool(tool)), "-dc", str(path)], check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip()[-200:] or f"exit {proc.returncode}"
        raise BuildError(f"{tool.name} -dc {path.name} failed: {detail}", fix=_REFETCH)
    return path.name[: -len(path.suffix)], proc.stdout


@dataclass(frozen=True)
class ModuleTree:
    """A kernel's module tree unpacked on disk (``<root>/<release>/...``)."""

    root: Path
    release: str

    @property
    def base(self) -> Path:
        """``<root>/<release>``: what module paths are relative to."""
        return self.root / self.release

    def module_paths(self) -> list[str]:
        """Every module file, relative to :attr:`base`, sorted."""
        return sorted(str(p.relative_to(self.base)) for p in self.base.rglob("*.ko*")
                      if p.name.endswith(MODULE_SUFFIXES) and p.is_file())

    def builtin(self) -> set[str] | None:
        """Names of the drivers built into the kernel (``modules.builtin``); None if that list is absent."""
        listing = self.base / "modules.builtin"
        if not listing.is_file():
            return None
        return {module_name(line.strip()) for line in listing.read_text().splitlines() if line.strip()}

    def load_order(self, wanted: Sequence[str]) -> list[str]:
        """The module paths to load, dependencies first, for the ``wanted`` drivers.

        :raises ConfigError: if ``modinfo`` is missing.
        :raises BuildError: if a module cannot be read.
        """
        deps = module_dependencies(self.module_paths(), wanted,
                                   lambda rel: modinfo_depends(self.base / rel))
        return module_load_order(deps, wanted)


def unpack_modules(modules: KernelModules, into: Path) -> ModuleTree:
    """Unpack ``modules.tar`` into ``into`` (members outside ``<release>/`` and links are left out).

    :raises BuildError: if the archive is unreadable or has nothing under ``<release>/``.
    """
    prefix = f"{modules.release}/"
    try:
        with tarfile.open(modules.tar) as tf:
            members = [m for m in tf.getmembers() if (m.isfile() or m.isdir())
                       and m.name.removeprefix("./").startswith(prefix)]
            if not any(m.isfile() for m in members):
                raise BuildError(f"{modules.tar} has nothing under {prefix}", fix=_REFETCH)
            tf.extractall(into, members=members, filter="data")
    except (OSError, tarfile.TarError) as err:
        raise BuildError(f"cannot unpack {modules.tar}: {err}", fix=_REFETCH) from err
    return ModuleTree(into, modules.release)


def add_kernel_modules(tree: ImageTree, modules: KernelModules, wanted: Sequence[str] = WANTED_MODULES,
                       fix: str = "use a kernel with these virtio drivers (omit --kernel)") -> list[str]:
    """Copy the wanted modules (decompressed), their dependencies and their load order into ``tree``
    from a fetched kernel's ``modules.tar`` (:func:`add_tree_modules` on it unpacked).

    :returns: the module paths in load order (relative to ``/lib/modules/<release>``).
    :raises ConfigError: if the kernel lacks a wanted driver, or a tool is missing.
    :raises BuildError: if a module cannot be read.
    """
    with tempdir("modules") as work:
        return add_tree_modules(tree, unpack_modules(modules, work), wanted, fix)


def add_tree_modules(tree: ImageTree, mods: ModuleTree, wanted: Sequence[str], fix: str) -> list[str]:
    """Copy the wanted modules of a module tree (decompressed), their dependencies and their load order
    (:data:`MODULE_ORDER_NAME`) into ``tree`` under ``lib/modules/<release>``.

    A wanted driver with no module file is built in (``modules.builtin``) and
    skipped; one neither built in nor a module is an error (if the tree has
    no ``modules.builtin``, it is assumed built in and logged).

    :param fix: the way out named when the kernel lacks a wanted driver.
    :returns: the module paths in load order (relative to ``/lib/modules/<release>``).
    :raises ConfigError: if the kernel lacks a wanted driver, or a tool is missing.
    :raises BuildError: if a module cannot be read.
    """
    order = mods.load_order(wanted)
    builtin = mods.builtin()
    missing = sorted({w.replace("-", "_") for w in wanted} - {module_name(p) for p in order} - (builtin or set()))
    if missing and builtin is None:
        log.info("kernel %s: no module file for %s (built in?)", mods.release, ", ".join(missing))
    elif missing:
        raise ConfigError(f"kernel {mods.release} has no {', '.join(missing)} (neither a module nor built in)",
                          fix=fix)
    loaded = []
    for relpath in order:
        name, data = decompressed(mods.base / relpath)
        dest = str(Path(relpath).with_name(name))
        tree.file(f"lib/modules/{mods.release}/{dest}", data=data)
        loaded.append(dest)
    tree.file(f"lib/modules/{mods.release}/{MODULE_ORDER_NAME}",
              data="".join(f"{name}\n" for name in loaded).encode())
    return loaded


# ---------------------------------------------------------------- built-in drivers


@dataclass(frozen=True)
class Driver:
    """A driver the guest needs, as the kernel's config and image name it.

    :param name: its module name (``KBUILD_MODNAME``).
    :param symbol: its Kconfig symbol.
    :param marks: byte strings that only a built-in copy leaves in the uncompressed kernel: the driver's
        registered name and the ``<module name>.`` prefix of its module parameters, each NUL-delimited.
    """

    name: str
    symbol: str
    marks: tuple[bytes, ...]


DRIVERS: Mapping[str, Driver] = {
    "virtio_pci": Driver("virtio_pci", "CONFIG_VIRTIO_PCI", (b"\0virtio-pci\0", b"\0virtio_pci.")),
    "virtio_net": Driver("virtio_net", "CONFIG_VIRTIO_NET", (b"\0virtio_net\0", b"\0virtio_net.")),
    "virtio_blk": Driver("virtio_blk", "CONFIG_VIRTIO_BLK", (b"\0virtio_blk\0", b"\0virtio_blk.")),
    # the virtual host's (e2e.build.vhostkernel): the host's root over virtio-9p, and KVM on SVM
    "9pnet_virtio": Driver("9pnet_virtio", "CONFIG_NET_9P_VIRTIO", (b"\09pnet_virtio\0",)),
    "9p": Driver("9p", "CONFIG_9P_FS", (b"\0v9fs_inode_cache\0",)),
    "kvm_amd": Driver("kvm_amd", "CONFIG_KVM_AMD", (b"\0kvm_amd.",)),
}


@dataclass(frozen=True)
class BuiltinCheck:
    """Which wanted drivers a kernel lacks built in, and what that was read from."""

    missing: tuple[str, ...]
    evidence: str


def missing_builtin_drivers(bzimage: Path, config: Path | None = None,
                            wanted: Sequence[str] = WANTED_MODULES) -> BuiltinCheck:
    """The ``wanted`` drivers that are not built into the kernel ``bzimage``.

    The evidence, most reliable first:

    1. the kernel's own ``.config`` (``config``: what pveoi's build and
       ``fetch --debian`` keep beside the bzImage in its verified cache
       entry): ``CONFIG_VIRTIO_NET=y`` is exactly "built in";
    2. the config embedded in the image (``CONFIG_IKCONFIG``), just as exact;
    3. otherwise, the uncompressed kernel's strings. A built-in driver
       registers its name (``virtio_net``; ``virtio-pci`` for the PCI
       transport) and prefixes its module parameters with ``<name>.``; a
       modular one leaves neither in vmlinux (checked on Debian's 6.1 cloud
       kernel, whose virtio drivers are modules, and on pveoi's guest
       kernel, where they are built in). NUL-delimited, so a longer name
       that merely contains the driver's does not count. This is a
       heuristic: a false "built in" only means the guest's init reports
       the missing eth0 after boot, as before this check existed.

    :raises ConfigError: the file is not a bzImage, or its compression tool is missing.
    """
    unknown = [w for w in wanted if w not in DRIVERS]
    if unknown:
        raise ValueError(f"no built-in check for {unknown}")
    if config is not None and config.is_file():
        values: Mapping[str, str] = config_values(config)
        evidence = f"its config {config}"
    else:
        image = vmlinux(bzimage)
        embedded = embedded_config(image)
        if embedded is None:
            found = [w for w in wanted if any(mark in image for mark in DRIVERS[w].marks)]
            return BuiltinCheck(tuple(w for w in wanted if w not in found), "the driver names in its image")
        values, evidence = embedded, "its embedded config"
    return BuiltinCheck(tuple(w for w in wanted if values.get(DRIVERS[w].symbol) != "y"), evidence)
