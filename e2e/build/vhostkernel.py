"""
An L1 kernel made bootable as the virtual host, including one whose virtio-PCI,
9p and KVM are modules: a distribution's packaged kernel (``pveoi kernel fetch
--debian --package linux-image-amd64``), the kind a KVM developer's distro runs.

pveoi's own kernel has these drivers built in and boots L1 straight into the
host's root over 9p, with no initramfs. A modular kernel cannot mount that root
by itself, so it gets a small initramfs: static busybox, the drivers'
modules (decompressed, dependencies first, as :mod:`.modules` finds them with
kmod's ``modinfo``) and ``e2e/data/vhost-initrd-init.sh``, which loads them,
mounts the host's root as the kernel would and hands over to the virtual host's
own init unchanged. Such kernels are also big and XZ-compressed (Debian's 6.1:
8 MB): under TCG the first kernel line came 6.8 s after QEMU started. When the
kernel can boot through PVH (``CONFIG_PVH``, as Debian's can), QEMU loads its
uncompressed vmlinux instead, and the kernel starts in 0.6 s.
Both are cached by content (the modules, the script, busybox, the bzImage).

The kernel comes from pveoi's cache (``pveoi kernel fetch``: its entry keeps
the config and ``modules.tar``) or installed as a distribution lays it out
(``/boot/vmlinuz-R`` with ``/boot/config-R`` and ``/lib/modules/R``). The check
comes first and costs no boot: a kernel whose own config says a driver is
neither built in nor there as a module is refused in one line, naming the way
out.
"""

from __future__ import annotations

import functools
import logging
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..util.paths import DATA
from .bzimage import config_values, read_setup_header, vmlinux
from .cache import Built, Cache, CacheEntry, content_hash, sha256_file
from .cpio import ImageTree, write_initrd
from .elf import find_tool
from .image import BUSYBOX
from .kentry import entry_of
from .modules import (
    DRIVERS,
    BuiltinCheck,
    KernelModules,
    ModuleTree,
    add_kernel_modules,
    add_tree_modules,
    kernel_modules,
    missing_builtin_drivers,
)

log = logging.getLogger(__name__)

HOST_DRIVERS = ("virtio_pci", "9pnet_virtio", "9p", "kvm_amd")
"""What L1 needs of its kernel: the host's root over virtio-9p, and KVM on (TCG's emulated) SVM."""
INIT = DATA / "vhost-initrd-init.sh"
APPLETS = ("sh", "mount", "umount", "insmod", "mkdir", "switch_root", "reboot", "sleep", "uname", "tr", "echo")
"""What the init script runs (busybox links in /bin)."""
INITRD_KIND = "vhost-initrd"
INITRD_NAME = "initramfs.cpio"
VMLINUX_NAME = "vmlinux"
SCHEMA = 1
_FIX = ("use a kernel with virtio-PCI, 9p (NET_9P_VIRTIO, 9P_FS) and KVM_AMD built in or as modules: pveoi's "
        "own (pveoi kernel build), a packaged one fetched with its modules "
        "(pveoi kernel fetch --debian --package linux-image-amd64), or an installed one with its "
        "config-<release> beside it and lib/modules/<release>")


@dataclass(frozen=True)
class HostKernelNeeds:
    """What booting ``kernel`` as the virtual host takes.

    :param modular: the drivers of :data:`HOST_DRIVERS` it has as modules (an initramfs loads them);
        empty: all built in (as far as ``evidence`` tells), no initramfs.
    :param evidence: what the built-in check read (its config, embedded config, or its strings).
    """

    kernel: Path
    modular: tuple[str, ...]
    evidence: str


@dataclass(frozen=True)
class KernelParts:
    """Where a kernel's config and modules are: its cache entry's (``config``, ``modules.tar``), or an
    installed kernel's, as a distribution lays it out (``/boot/vmlinuz-R`` with ``/boot/config-R`` and
    ``/lib/modules/R``; found relative to the file, so an unpacked package's tree works too)."""

    config: Path | None = None
    modules: KernelModules | None = None
    tree: ModuleTree | None = None

    @property
    def has_modules(self) -> bool:
        return self.modules is not None or self.tree is not None


def kernel_parts(kernel: Path) -> KernelParts:
    """The config and modules of ``kernel`` (a bzImage), where there are any.

    :raises ConfigError: not a bzImage, or a damaged cache entry.
    """
    real = kernel.resolve()
    st = real.stat()
    entry = _entry_of(real, st.st_size, st.st_mtime_ns)
    if entry is not None:
        config = entry.file("config")
        return KernelParts(config if config.is_file() else None, kernel_modules(entry))
    release = read_setup_header(kernel).release
    if release == "unknown":
        return KernelParts()
    config = real.parent / f"config-{release}"
    modules = real.parent.parent / "lib" / "modules"
    return KernelParts(config if config.is_file() else None, None,
                       ModuleTree(modules, release) if (modules / release).is_dir() else None)


@functools.lru_cache(maxsize=16)
def _entry_of(kernel: Path, _size: int, _mtime_ns: int) -> CacheEntry | None:
    """:func:`entry_of`, once per process and file: it verifies every file's sha256 (a packaged kernel's
    400 MB of modules), and a run asks about its host kernels several times."""
    return entry_of(kernel)


def host_kernel_needs(kernel: Path) -> HostKernelNeeds:
    """Check, before any boot, that ``kernel`` can be the virtual host's, and whether it needs an initramfs.

    A driver not built in must come as a module: from the kernel's cache entry (``modules.tar``, as
    ``pveoi kernel fetch`` keeps it) or, for an installed kernel, its ``lib/modules/<release>``
    (:func:`kernel_parts`).

    :raises ConfigError: the file is missing or no bzImage, or it lacks a driver (:func:`modular_drivers`).
    """
    if not kernel.is_file():
        raise ConfigError(f"the host kernel {kernel} is not a file", fix="give the path of a bzImage")
    parts = kernel_parts(kernel)
    check = missing_builtin_drivers(kernel, parts.config, HOST_DRIVERS)
    values = config_values(parts.config) if parts.config is not None and check.missing else None
    modular = modular_drivers(str(kernel), check, values, parts.has_modules)
    return HostKernelNeeds(kernel, modular, check.evidence)


def modular_drivers(kernel: str, check: BuiltinCheck, config: Mapping[str, str] | None,
                    has_modules: bool) -> tuple[str, ...]:
    """The drivers an initramfs must load, from what the built-in check found (pure).

    With the kernel's ``config``, exact: each missing driver must be a module (``=m``) and the modules
    must be there. Without it (the check read only the kernel's strings), a driver not found is loaded
    from the modules if there are any, and refused if not: booted without it, a host kernel under test
    would fail as if by its own fault.

    :raises ConfigError: a driver neither built in nor a module, or modules needed and none beside it.
    """
    if not check.missing:
        return ()
    if config is not None:
        absent = [d for d in check.missing if config.get(DRIVERS[d].symbol) != "m"]
        if absent:
            raise ConfigError(f"the host kernel {kernel} has {', '.join(absent)} neither built in nor as a module "
                              f"({check.evidence})", fix=_FIX)
    if has_modules:
        return check.missing
    if config is None:
        # Only the strings to go on: refused rather than booted, since a host kernel under test that cannot
        # mount its root would read as that kernel's failure. Its config beside it settles it either way.
        raise ConfigError(f"the host kernel {kernel} shows no built-in {', '.join(check.missing)} ({check.evidence}; "
                          "no config beside it) and has no modules beside it",
                          fix="put its config beside it as config-<release> (and its modules in "
                              f"../lib/modules/<release>), or {_FIX}")
    raise ConfigError(f"the host kernel {kernel} has {', '.join(check.missing)} as modules ({check.evidence}) "
                      "and none beside it", fix=_FIX)


@dataclass(frozen=True)
class L1Boot:
    """What QEMU boots as the virtual host: ``kernel`` (the bzImage, or its vmlinux through PVH) and
    ``initrd`` (None: the drivers are built in)."""

    kernel: Path
    initrd: Path | None = None


def vhost_boot(kernel: Path, cache: Cache | None = None) -> L1Boot:
    """How the virtual host boots ``kernel``: as it is when it has the drivers built in; else with an
    initramfs that loads them, and (when it boots through PVH) its uncompressed vmlinux.

    Made on first use (seconds: the vmlinux is decompressed natively), then a cache hit.

    :raises ConfigError: as :func:`host_kernel_needs`; busybox (busybox-static) or kmod missing; a driver
        neither a module of the kernel nor built in (its ``modules.builtin``).
    :raises BuildError: a module cannot be read.
    """
    needs = host_kernel_needs(kernel)
    if not needs.modular:
        return L1Boot(kernel)
    parts = kernel_parts(kernel)
    pvh = parts.config is not None and config_values(parts.config).get("CONFIG_PVH") == "y"
    cache = cache or Cache()
    busybox = find_tool(BUSYBOX)
    script = INIT.read_bytes()
    if parts.modules is not None:
        release, modules_key = parts.modules.release, parts.modules.sha256
    else:  # an installed kernel's tree: keyed by the files it would load (not the whole tree's 400 MB)
        assert parts.tree is not None  # host_kernel_needs: modular drivers come with modules
        release = parts.tree.release
        modules_key = content_hash([release, *(f"{rel}:{sha256_file(parts.tree.base / rel)}"
                                               for rel in parts.tree.load_order(HOST_DRIVERS))])
    key = content_hash(["vhost-initrd", str(SCHEMA), modules_key, script, sha256_file(busybox),
                        sha256_file(kernel) if pvh else "", *HOST_DRIVERS])[:24]

    def build(staged: Path) -> Built:
        tree = ImageTree()
        for d in ("proc", "newroot", "dev"):
            tree.dir(d)
        tree.node("dev/console", stat.S_IFCHR, 5, 1)
        tree.file("bin/busybox", source=busybox, mode=0o755)
        for applet in APPLETS:
            tree.symlink(f"bin/{applet}", "busybox")
        tree.file("init", data=script, mode=0o755)
        if parts.modules is not None:
            loaded = add_kernel_modules(tree, parts.modules, HOST_DRIVERS, fix=_FIX)
        else:
            assert parts.tree is not None
            loaded = add_tree_modules(tree, parts.tree, HOST_DRIVERS, fix=_FIX)
        size = write_initrd(tree.entries(), staged / INITRD_NAME, level=None)
        files = [INITRD_NAME]
        if pvh:
            (staged / VMLINUX_NAME).write_bytes(vmlinux(kernel))
            files.append(VMLINUX_NAME)
        log.info("virtual host initramfs for %s: %d modules, %.1f MB%s", release, len(loaded), size / 1e6,
                 "; its vmlinux for a PVH boot" if pvh else "")
        return Built(tuple(files), {"schema": SCHEMA, "kind": INITRD_KIND, "release": release,
                                    "modules_key": modules_key, "modules": loaded, "pvh": pvh})

    made = cache.get_or_build(INITRD_KIND, key, build)
    return L1Boot(made.file(VMLINUX_NAME) if pvh else kernel, made.file(INITRD_NAME))
