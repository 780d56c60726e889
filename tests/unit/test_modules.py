"""A fetched kernel's modules: dependencies, load order, copying (e2e.build.modules)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from e2e.build.modules import (
    elf_modinfo,
    modinfo_dependencies,
    module_load_order,
    module_name,
    parse_modules_dep,
)

HAVE_GCC = shutil.which("gcc") is not None


MODULES_DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko \
kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/sound/unrelated.ko:
"""


def test_module_load_order_puts_dependencies_first() -> None:
    deps = parse_modules_dep(MODULES_DEP)
    order = module_load_order(deps, ["virtio_pci", "virtio-net", "virtio_blk", "built_in_thing"])
    names = [module_name(p) for p in order]
    assert "unrelated" not in names and "built_in_thing" not in names
    assert sorted(names) == sorted(["virtio", "virtio_ring", "virtio_pci_modern_dev",
                                    "virtio_pci_legacy_dev", "virtio_pci", "failover",
                                    "net_failover", "virtio_net", "virtio_blk"])
    for path in order:
        for dep in deps[path]:
            assert order.index(dep) < order.index(path), f"{dep} must load before {path}"
    assert order == module_load_order(deps, ["virtio_pci", "virtio-net", "virtio_blk"])  # stable


def _module_object(tmp_path: Path, name: str, depends: str) -> bytes:
    src = tmp_path / f"{name}.c"
    src.write_text(
        '__attribute__((section(".modinfo"), used)) static const char info[] = '
        f'"license=GPL\\0depends={depends}\\0name={name}";\n'
    )
    obj = tmp_path / f"{name}.o"
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True)
    return obj.read_bytes()


@pytest.mark.skipif(not HAVE_GCC, reason="gcc not installed")
def test_modinfo_dependencies_without_modules_dep(tmp_path: Path) -> None:
    mods = {
        "kernel/a/virtio.ko": _module_object(tmp_path, "virtio", ""),
        "kernel/a/virtio_ring.ko": _module_object(tmp_path, "virtio_ring", "virtio"),
        "kernel/b/virtio_net.ko": _module_object(tmp_path, "virtio_net", "virtio_ring,virtio,failover"),
        "kernel/c/failover.ko": _module_object(tmp_path, "failover", ""),
        "kernel/d/other.ko": _module_object(tmp_path, "other", ""),
    }
    assert elf_modinfo(mods["kernel/b/virtio_net.ko"])["depends"] == ["virtio_ring,virtio,failover"]
    deps = modinfo_dependencies(mods.__getitem__, mods, ["virtio_net", "virtio_blk"])
    assert "kernel/d/other.ko" not in deps
    order = module_load_order(deps, ["virtio_net"])
    assert order[-1] == "kernel/b/virtio_net.ko"
    assert order.index("kernel/a/virtio.ko") < order.index("kernel/a/virtio_ring.ko")
    assert set(order) == {"kernel/a/virtio.ko", "kernel/a/virtio_ring.ko", "kernel/b/virtio_net.ko",
                          "kernel/c/failover.ko"}
