"""A fetched kernel's modules: dependencies through kmod's modinfo, load order, copying
(e2e.build.modules). Real modinfo throughout, on modules made here with gcc and, where
`pveoi kernel fetch --debian` has run, on the real Debian kernel's modules."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from e2e.build import modules as mods
from e2e.build.cache import MANIFEST, Cache, CacheEntry, sha256_file
from e2e.build.cpio import ImageTree
from e2e.build.elf import Tool
from e2e.build.modules import (
    MODULE_ORDER_NAME,
    KernelModules,
    add_kernel_modules,
    decompressed,
    kernel_modules,
    modinfo_depends,
    module_dependencies,
    module_load_order,
    module_name,
)
from e2e.errors import BuildError, ConfigError
from tests.helpers.cached import is_cloud_kernel

HAVE_GCC = shutil.which("gcc") is not None
HAVE_MODINFO = Path(mods.MODINFO.path).is_file() or shutil.which("modinfo") is not None
needs_modinfo = pytest.mark.skipif(not HAVE_MODINFO, reason="kmod not installed (host_config/install-deps.sh)")
needs_gcc = pytest.mark.skipif(not HAVE_GCC, reason="gcc not installed")


def debian_kernel() -> CacheEntry | None:
    """The newest fetched Debian cloud kernel with modules in the default cache, if any."""
    cache = Cache()
    kinds = cache.root / "kernels"
    found = []
    for path in sorted(kinds.glob("deb-*")) if kinds.is_dir() else []:
        entry = cache.lookup("kernels", path.name, discard=False)
        if entry is not None and (entry.path / "modules.tar").is_file() and is_cloud_kernel(entry.path / MANIFEST):
            found.append(entry)
    return max(found, key=lambda e: e.path.stat().st_mtime) if found else None


DEBIAN = debian_kernel()
needs_debian = pytest.mark.skipif(DEBIAN is None, reason="no fetched Debian kernel in the cache "
                                                         "(run pveoi kernel fetch --debian)")


# ---------------------------------------------------------------- load order (pure)


DEPS = {
    "kernel/drivers/virtio/virtio.ko": (),
    "kernel/drivers/virtio/virtio_ring.ko": ("kernel/drivers/virtio/virtio.ko",),
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko": (),
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko": (),
    "kernel/drivers/virtio/virtio_pci.ko": ("kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                                            "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
                                            "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko"),
    "kernel/net/core/failover.ko": (),
    "kernel/drivers/net/net_failover.ko": ("kernel/net/core/failover.ko",),
    "kernel/drivers/net/virtio_net.ko": ("kernel/drivers/net/net_failover.ko", "kernel/net/core/failover.ko",
                                         "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko"),
    "kernel/drivers/block/virtio_blk.ko.xz": ("kernel/drivers/virtio/virtio_ring.ko",
                                              "kernel/drivers/virtio/virtio.ko"),
    "kernel/sound/unrelated.ko": (),
}


def test_module_name() -> None:
    assert module_name("kernel/drivers/net/virtio_net.ko.xz") == "virtio_net"
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert module_name("virtio_blk.ko.zst") == "virtio_blk"


def test_module_load_order_puts_dependencies_first() -> None:
    order = module_load_order(DEPS, ["virtio_pci", "virtio-net", "virtio_blk", "built_in_thing"])
    names = [module_name(p) for p in order]
    assert "unrelated" not in names and "built_in_thing" not in names
    assert sorted(names) == sorted(["virtio", "virtio_ring", "virtio_pci_modern_dev",
                                    "virtio_pci_legacy_dev", "virtio_pci", "failover",
                                    "net_failover", "virtio_net", "virtio_blk"])
    for path in order:
        for dep in DEPS[path]:
            assert order.index(dep) < order.index(path), f"{dep} must load before {path}"
    assert order == module_load_order(DEPS, ["virtio_pci", "virtio-net", "virtio_blk"])  # stable


# ---------------------------------------------------------------- modinfo (real kmod)


def make_module(directory: Path, name: str, depends: str, suffix: str = ".ko") -> Path:
    """A relocatable ELF object with a module's ``.modinfo`` section, as modinfo reads it."""
    src = directory / f"{name}.c"
    src.write_text('__attribute__((section(".modinfo"), used)) static const char info[] = '
                   f'"license=GPL\\0depends={depends}\\0name={name}";\n')
    obj = directory / f"{name}.ko"
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True)
    src.unlink()
    if suffix == ".ko.xz":
        subprocess.run(["xz", "-f", str(obj)], check=True)
    elif suffix == ".ko.gz":
        subprocess.run(["gzip", "-f", "-n", str(obj)], check=True)
    return obj.with_name(obj.name + suffix.removeprefix(".ko"))


@needs_modinfo
@needs_gcc
@pytest.mark.parametrize("suffix", [".ko", ".ko.xz"])
def test_modinfo_depends_reads_the_modules_own_field(tmp_path: Path, suffix: str) -> None:
    module = make_module(tmp_path, "virtio_net", "virtio_ring,virtio,net-failover", suffix)
    assert module.name == "virtio_net" + suffix
    assert modinfo_depends(module) == ("virtio_ring", "virtio", "net_failover")
    assert modinfo_depends(make_module(tmp_path, "virtio", "")) == ()


@needs_modinfo
def test_modinfo_of_a_non_module_is_a_build_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ko"
    junk.write_text("root:x:0:0:root:/root:/bin/sh\n")
    with pytest.raises(BuildError, match=r"^modinfo junk\.ko failed: .*; fix: re-fetch the kernel"):
        modinfo_depends(junk)


def test_missing_modinfo_names_kmod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mods, "MODINFO", Tool("pveoi-no-modinfo", "/nonexistent/modinfo", "kmod", None))
    with pytest.raises(ConfigError, match=r"^pveoi-no-modinfo not found; fix: apt-get install kmod$"):
        modinfo_depends(tmp_path / "x.ko")


@needs_modinfo
@needs_gcc
def test_module_dependencies_follow_modinfo_recursively(tmp_path: Path) -> None:
    for sub, name, depends in (("a", "virtio", ""), ("a", "virtio_ring", "virtio"),
                               ("b", "virtio_net", "virtio_ring,virtio,failover"), ("c", "failover", ""),
                               ("d", "other", "")):
        (tmp_path / sub).mkdir(exist_ok=True)
        make_module(tmp_path / sub, name, depends)
    paths = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.ko"))
    deps = module_dependencies(paths, ["virtio_net", "virtio_blk"], lambda rel: modinfo_depends(tmp_path / rel))
    assert deps == {"b/virtio_net.ko": ("a/virtio_ring.ko", "a/virtio.ko", "c/failover.ko"),
                    "a/virtio_ring.ko": ("a/virtio.ko",), "a/virtio.ko": (), "c/failover.ko": ()}
    order = module_load_order(deps, ["virtio_net"])
    assert order[-1] == "b/virtio_net.ko"
    assert order.index("a/virtio.ko") < order.index("a/virtio_ring.ko")


@pytest.mark.parametrize("compress", ["xz", "gzip"])
def test_decompressed_module_has_the_original_bytes(tmp_path: Path, compress: str) -> None:
    original = bytes(range(256)) * 64
    plain = tmp_path / "virtio_net.ko"
    plain.write_bytes(original)
    assert decompressed(plain) == ("virtio_net.ko", original)
    subprocess.run([compress, "-k", "-f", str(plain)], check=True)
    packed = next(p for p in tmp_path.iterdir() if p.name != "virtio_net.ko")
    assert decompressed(packed) == ("virtio_net.ko", original)


# ---------------------------------------------------------------- a kernel's modules.tar


def modules_tar(tmp_path: Path, release: str, builtin: list[str] | None, modules: dict[str, str],
                compress: str = ".ko") -> KernelModules:
    """A ``modules.tar`` like ``fetch_debian`` packs: ``<release>/kernel/...`` and ``modules.builtin``."""
    base = tmp_path / "tree" / release
    for rel, depends in modules.items():
        where = base / Path(rel).parent
        where.mkdir(parents=True, exist_ok=True)
        make_module(where, module_name(rel), depends, compress)
    if builtin is not None:
        base.mkdir(parents=True, exist_ok=True)
        (base / "modules.builtin").write_text("".join(f"{b}\n" for b in builtin))
    tar = tmp_path / "modules.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(tmp_path / "tree"), release], check=True)
    return KernelModules(release, tar, sha256_file(tar))


FAKE = {"kernel/drivers/virtio/virtio.ko": "", "kernel/drivers/virtio/virtio_ring.ko": "virtio",
        "kernel/drivers/virtio/virtio_pci.ko": "virtio_ring,virtio",
        "kernel/drivers/net/virtio_net.ko": "virtio_ring,virtio"}


@needs_modinfo
@needs_gcc
def test_add_kernel_modules_copies_decompressed_modules_in_order(tmp_path: Path) -> None:
    km = modules_tar(tmp_path, "6.1.0-99-test", ["kernel/drivers/block/virtio_blk.ko"], FAKE, ".ko.xz")
    tree = ImageTree()
    order = add_kernel_modules(tree, km)
    assert order == ["kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko",
                     "kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/net/virtio_net.ko"]
    members = {e.name: e for e in tree.entries()}
    assert members[f"lib/modules/6.1.0-99-test/{MODULE_ORDER_NAME}"].data.decode() == "".join(
        f"{p}\n" for p in order)
    net = members["lib/modules/6.1.0-99-test/kernel/drivers/net/virtio_net.ko"].data
    assert net.startswith(b"\x7fELF") and b"depends=virtio_ring,virtio" in net  # decompressed


@needs_modinfo
@needs_gcc
def test_a_kernel_without_a_wanted_driver_is_refused(tmp_path: Path) -> None:
    km = modules_tar(tmp_path, "6.1.0-99-test", ["kernel/fs/ext4/ext4.ko"], FAKE)
    with pytest.raises(ConfigError, match=r"^kernel 6\.1\.0-99-test has no virtio_blk \(neither a module nor "
                                          r"built in\); fix: "):
        add_kernel_modules(ImageTree(), km)


@needs_modinfo
@needs_gcc
def test_without_modules_builtin_a_missing_driver_is_assumed_built_in(tmp_path: Path) -> None:
    km = modules_tar(tmp_path, "6.1.0-99-test", None, FAKE)
    assert len(add_kernel_modules(ImageTree(), km)) == 4


def test_an_empty_archive_is_a_build_error(tmp_path: Path) -> None:
    tar = tmp_path / "modules.tar"
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo("elsewhere/x.ko")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BuildError, match=r"has nothing under 6\.1\.0-1/"):
        add_kernel_modules(ImageTree(), KernelModules("6.1.0-1", tar, sha256_file(tar)))


# ---------------------------------------------------------------- golden: the real Debian kernel


GOLDEN_RELEASE = "6.1.0-57-cloud-amd64"
GOLDEN_ORDER = [  # what the hand-written .modinfo reader gave for this release, before kmod's modinfo
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/block/virtio_blk.ko",
]


@needs_modinfo
@needs_debian
def test_real_debian_kernel_modules(tmp_path: Path) -> None:
    assert DEBIAN is not None
    km = kernel_modules(DEBIAN)
    assert km is not None and km.release == DEBIAN.manifest["release"]
    tree = ImageTree()
    order = add_kernel_modules(tree, km)
    names = [module_name(p) for p in order]
    assert {"virtio_pci", "virtio_net", "virtio_blk", "virtio", "virtio_ring"} <= set(names)
    if km.release == GOLDEN_RELEASE:
        assert order == GOLDEN_ORDER
    members = {e.name: e.data for e in tree.entries()}
    with tarfile.open(km.tar) as tf:
        for rel in order:
            f = tf.extractfile(f"{km.release}/{rel}")
            assert f is not None
            original = f.read()
            assert hashlib.sha256(members[f"lib/modules/{km.release}/{rel}"]).digest() == \
                hashlib.sha256(original).digest()
            # each module's dependencies load before it
            here = tmp_path / Path(rel).name
            here.write_bytes(original)
            for dep in modinfo_depends(here):
                assert dep in names[:names.index(module_name(rel))], f"{dep} must load before {rel}"
    assert members[f"lib/modules/{km.release}/{MODULE_ORDER_NAME}"].decode().split() == order


@needs_debian
def test_gzip_of_a_real_module_round_trips(tmp_path: Path) -> None:
    assert DEBIAN is not None
    with tarfile.open(DEBIAN.path / "modules.tar") as tf:
        member = next(m for m in tf if m.name.endswith("/virtio_blk.ko"))
        f = tf.extractfile(member)
        assert f is not None
        original = f.read()
    packed = tmp_path / "virtio_blk.ko.gz"
    packed.write_bytes(gzip.compress(original))
    assert decompressed(packed) == ("virtio_blk.ko", original)
