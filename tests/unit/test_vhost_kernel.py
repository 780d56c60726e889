"""An L1 kernel made bootable as the virtual host (e2e.build.vhostkernel): which drivers an initramfs must
load, the one-line refusals before any boot, and the initramfs and PVH vmlinux made for a real packaged
kernel where one is fetched (pveoi kernel fetch --debian --package linux-image-amd64)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from e2e.build.bzimage import read_setup_header
from e2e.build.cache import Cache
from e2e.build.cpio import read_initrd
from e2e.build.modules import BuiltinCheck, module_name
from e2e.build.vhostkernel import HOST_DRIVERS, INIT, host_kernel_needs, modular_drivers, vhost_boot
from e2e.errors import ConfigError
from e2e.vm.vhost import VhostSpec, vhost_argv

HAVE_MODINFO = Path("/usr/sbin/modinfo").is_file()  # kmod (host_config/install-deps.sh)
CONFIG = "its config /k/config"
STRINGS = "the driver names in its image"


def test_a_kernel_with_every_driver_built_in_needs_no_initramfs() -> None:
    assert modular_drivers("k", BuiltinCheck((), CONFIG), {}, has_modules=False) == ()


def test_drivers_its_config_has_as_modules_are_loaded_when_the_modules_are_there() -> None:
    config = {"CONFIG_VIRTIO_PCI": "m", "CONFIG_NET_9P_VIRTIO": "m", "CONFIG_9P_FS": "m", "CONFIG_KVM_AMD": "m"}
    assert modular_drivers("k", BuiltinCheck(HOST_DRIVERS, CONFIG), config, has_modules=True) == HOST_DRIVERS


def test_a_driver_its_config_lacks_is_refused_by_name_with_the_way_out() -> None:
    # Debian's cloud kernel: KVM_AMD a module, 9p not configured at all
    config = {"CONFIG_VIRTIO_PCI": "m", "CONFIG_KVM_AMD": "m"}
    with pytest.raises(ConfigError) as err:
        modular_drivers("/k/bzImage", BuiltinCheck(HOST_DRIVERS, CONFIG), config, has_modules=True)
    assert "9pnet_virtio, 9p neither built in nor as a module" in err.value.message
    assert "virtio_pci" not in err.value.message and "linux-image-amd64" in err.value.fix


def test_modules_the_config_names_but_that_are_not_beside_the_kernel_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"as modules .* and none beside it"):
        modular_drivers("/k/bzImage", BuiltinCheck(("kvm_amd",), CONFIG), {"CONFIG_KVM_AMD": "m"}, has_modules=False)


def test_without_a_config_a_driver_not_found_in_the_strings_is_loaded_or_refused() -> None:
    # only the strings to go on: loaded when modules are there; refused when not (booted, a host kernel
    # under test that cannot mount its root would read as its own failure)
    assert modular_drivers("k", BuiltinCheck(("9p",), STRINGS), None, has_modules=True) == ("9p",)
    with pytest.raises(ConfigError) as err:
        modular_drivers("k", BuiltinCheck(("9p",), STRINGS), None, has_modules=False)
    assert "shows no built-in 9p" in err.value.message and "config-<release>" in err.value.fix


def test_a_missing_file_is_refused_before_anything_reads_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        host_kernel_needs(tmp_path / "bzImage")


def test_the_l1_argv_boots_what_vhost_boot_gives() -> None:
    from e2e.build.vhostkernel import L1Boot

    spec = VhostSpec(Path("/k/bzImage"), boot=L1Boot(Path("/c/vmlinux"), Path("/c/initramfs.cpio")))
    argv = vhost_argv(spec, Path("/tmp/r"), 3, 4, 5)
    assert argv[argv.index("-kernel") + 1] == "/c/vmlinux" and argv[argv.index("-initrd") + 1] == "/c/initramfs.cpio"
    plain = vhost_argv(VhostSpec(Path("/k/bzImage")), Path("/tmp/r"), 3, 4, 5)
    assert plain[plain.index("-kernel") + 1] == "/k/bzImage" and "-initrd" not in plain
    # the initramfs's init reads root's flags and init= from the same command line the built-in kind uses
    append = argv[argv.index("-append") + 1]
    assert "rootflags=trans=virtio" in append and " init=/bin/sh " in append


def test_the_init_script_passes_module_parameters_and_hands_over_with_its_arguments() -> None:
    text = INIT.read_text()
    assert 'exec switch_root /newroot "$init" "$@"' in text
    assert '"$name".*=*) params="$params ${w#"$name".}"' in text
    assert "pveoi-vhost-error:" in text  # the virtual host's own error line (e2e.vm.vhost.ERROR_PATTERN)


def _generic_debian_kernel() -> Path | None:
    """A fetched Debian kernel with 9p as a module (linux-image-amd64, not the cloud flavour), if any."""
    root = Cache().root / "kernels"
    for entry in sorted(root.glob("deb-*")) if root.is_dir() else []:
        config = entry / "config"
        if (entry / "modules.tar").is_file() and config.is_file() and "CONFIG_9P_FS=m" in config.read_text():
            return entry / "bzImage"
    return None


GENERIC = _generic_debian_kernel()


@pytest.mark.skipif(GENERIC is None or not HAVE_MODINFO,
                    reason="no fetched generic Debian kernel (pveoi kernel fetch --debian --package linux-image-amd64)")
def test_a_real_packaged_kernel_gets_its_modules_in_order_and_its_vmlinux(tmp_path: Path) -> None:
    assert GENERIC is not None
    needs = host_kernel_needs(GENERIC)
    assert set(needs.modular) == set(HOST_DRIVERS)
    boot = vhost_boot(GENERIC, Cache(tmp_path / "cache"))
    assert boot.initrd is not None and boot.kernel.name == "vmlinux" and boot.kernel.read_bytes()[:4] == b"\x7fELF"
    members = {e.name: e for e in read_initrd(boot.initrd)}
    assert stat.S_ISCHR(members["dev/console"].mode) and members["init"].mode & 0o111
    order_name = next(n for n in members if n.endswith("pveoi-modules.order"))
    order = [module_name(p) for p in members[order_name].payload().decode().split()]
    for driver in HOST_DRIVERS:
        assert driver in order
    # dependencies first: KVM before kvm_amd, the 9p transport before the filesystem that mounts the root
    assert order.index("kvm") < order.index("kvm_amd") and order.index("9pnet") < order.index("9pnet_virtio")
    # a second call is a cache hit: the same files
    assert vhost_boot(GENERIC, Cache(tmp_path / "cache")) == boot


@pytest.mark.skipif(GENERIC is None or not HAVE_MODINFO,
                    reason="no fetched generic Debian kernel (pveoi kernel fetch --debian --package linux-image-amd64)")
def test_an_installed_kernel_is_read_as_a_distribution_lays_it_out(tmp_path: Path) -> None:
    """/boot/vmlinuz-R, /boot/config-R, /lib/modules/R (here under tmp_path, as an unpacked package)."""
    import shutil
    import tarfile

    assert GENERIC is not None
    release = read_setup_header(GENERIC).release
    boot = tmp_path / "boot"
    boot.mkdir()
    kernel = boot / f"vmlinuz-{release}"
    shutil.copy(GENERIC, kernel)
    # without its config or modules: only the strings, which show no 9p built in: refused, not booted
    with pytest.raises(ConfigError, match="shows no built-in"):
        host_kernel_needs(kernel)
    shutil.copy(GENERIC.parent / "config", boot / f"config-{release}")
    with pytest.raises(ConfigError, match=r"as modules .* and none beside it"):
        host_kernel_needs(kernel)
    with tarfile.open(GENERIC.parent / "modules.tar") as tf:
        tf.extractall(tmp_path / "lib" / "modules", filter="data")
    needs = host_kernel_needs(kernel)
    assert set(needs.modular) == set(HOST_DRIVERS) and f"config-{release}" in needs.evidence
    boot_files = vhost_boot(kernel, Cache(tmp_path / "cache"))
    assert boot_files.initrd is not None and boot_files.kernel.name == "vmlinux"
    loaded = {module_name(e.name) for e in read_initrd(boot_files.initrd) if e.name.endswith(".ko")}
    assert set(HOST_DRIVERS) <= loaded
