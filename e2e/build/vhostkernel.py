"""
An L1 kernel made bootable as the virtual host, including one whose virtio-PCI,
9p and KVM are modules: a distribution's packaged kernel (``pveoi kernel fetch
--debian --package linux-image-amd64``), the kind a KVM developer's distro runs.

pveoi's host flavour has these drivers built in and boots L1 straight into the
host's root over 9p, with no initramfs. A modular kernel cannot mount that root
by itself, so it gets a small initramfs: static busybox, the drivers'
modules (decompressed, dependencies first, as :mod:`.modules` finds them with
kmod's ``modinfo``) and ``e2e/data/vhost-initrd-init.sh``, which loads them,
mounts the host's root as the kernel would and hands over to the virtual host's
own init unchanged. Such kernels are also big and XZ-compressed (Debian's 6.1:
8 MB), and TCG's emulated CPU took 6.2 s to decompress one before the kernel
started; when the kernel can boot through PVH (``CONFIG_PVH``, as Debian's can),
QEMU loads its uncompressed vmlinux instead, and the kernel starts in 0.6 s.
Both are cached by content (the modules, the script, busybox, the bzImage).

The check comes first and costs no boot: a kernel whose own config (beside it in
its cache entry, or embedded) says a driver is neither built in nor there as a
module is refused in one line, naming the way out.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..util.paths import DATA
from .bzimage import config_values, vmlinux
from .cache import Built, Cache, content_hash, sha256_file
from .cpio import ImageTree, write_initrd
from .elf import Tool, find_tool
from .kentry import entry_of
from .modules import DRIVERS, BuiltinCheck, add_kernel_modules, kernel_modules, missing_builtin_drivers

log = logging.getLogger(__name__)

HOST_DRIVERS = ("virtio_pci", "9pnet_virtio", "9p", "kvm_amd")
"""What L1 needs of its kernel: the host's root over virtio-9p, and KVM on (TCG's emulated) SVM."""
INIT = DATA / "vhost-initrd-init.sh"
BUSYBOX = Tool("busybox", "/bin/busybox", "busybox-static", "bin/busybox")
APPLETS = ("sh", "mount", "umount", "insmod", "mkdir", "switch_root", "reboot", "sleep", "uname", "tr", "echo")
"""What the init script runs (busybox links in /bin)."""
INITRD_KIND = "vhost-initrd"
INITRD_NAME = "initramfs.cpio"
VMLINUX_NAME = "vmlinux"
SCHEMA = 1
_FIX = ("use a kernel with virtio-PCI, 9p (NET_9P_VIRTIO, 9P_FS) and KVM_AMD built in or as modules: pveoi's "
        "host flavour (pveoi kernel build --flavour host), or a packaged one fetched with its modules "
        "(pveoi kernel fetch --debian --package linux-image-amd64)")


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


def host_kernel_needs(kernel: Path) -> HostKernelNeeds:
    """Check, before any boot, that ``kernel`` can be the virtual host's, and whether it needs an initramfs.

    A driver not built in must come as a module from the kernel's cache entry (``modules.tar``, as
    ``pveoi kernel fetch`` keeps it).

    :raises ConfigError: the file is missing or no bzImage, or it lacks a driver (:func:`modular_drivers`).
    """
    if not kernel.is_file():
        raise ConfigError(f"the host kernel {kernel} is not a file", fix="give the path of a bzImage")
    entry = entry_of(kernel)
    config = entry.file("config") if entry is not None else None
    check = missing_builtin_drivers(kernel, config, HOST_DRIVERS)
    values = config_values(config) if config is not None and config.is_file() and check.missing else None
    modular = modular_drivers(str(kernel), check, values, kernel_modules(entry) is not None)
    return HostKernelNeeds(kernel, modular, check.evidence)


def modular_drivers(kernel: str, check: BuiltinCheck, config: Mapping[str, str] | None,
                    has_modules: bool) -> tuple[str, ...]:
    """The drivers an initramfs must load, from what the built-in check found (pure).

    With the kernel's ``config``, exact: each missing driver must be a module (``=m``) and the modules
    must be there. Without it (the check read only the kernel's strings), a driver not found with no
    modules to load is taken as built in: the virtual host's init then names what is missing, as it did
    before this check.

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
        log.info("host kernel %s: %s not found in %s; booting it as if built in", kernel, ", ".join(check.missing),
                 check.evidence)
        return ()
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
    entry = entry_of(kernel)
    assert entry is not None  # host_kernel_needs: modular drivers come with their entry's modules
    modules = kernel_modules(entry)
    assert modules is not None
    pvh = config_values(entry.file("config")).get("CONFIG_PVH") == "y" if entry.file("config").is_file() else False
    cache = cache or Cache()
    busybox = find_tool(BUSYBOX)
    script = INIT.read_bytes()
    key = content_hash(["vhost-initrd", str(SCHEMA), modules.sha256, script, sha256_file(busybox),
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
        loaded = add_kernel_modules(tree, modules, HOST_DRIVERS, fix=_FIX)
        size = write_initrd(tree.entries(), staged / INITRD_NAME, level=None)
        files = [INITRD_NAME]
        if pvh:
            (staged / VMLINUX_NAME).write_bytes(vmlinux(kernel))
            files.append(VMLINUX_NAME)
        log.info("virtual host initramfs for %s: %d modules, %.1f MB%s", modules.release, len(loaded), size / 1e6,
                 "; its vmlinux for a PVH boot" if pvh else "")
        return Built(tuple(files), {"schema": SCHEMA, "kind": INITRD_KIND, "release": modules.release,
                                    "modules_tar_sha256": modules.sha256, "modules": loaded, "pvh": pvh})

    made = cache.get_or_build(INITRD_KIND, key, build)
    return L1Boot(made.file(VMLINUX_NAME) if pvh else kernel, made.file(INITRD_NAME))
