"""Real kernel builds: the patched guest kernel, its cache and manifest, a dropped option; the real
guest_patches/ series against Debian's linux-source-6.1; the headers of the cached real kernels."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from e2e import kernel
from e2e.bzimage import read_setup_header
from e2e.cache import Cache, cache_root
from e2e.errors import BuildError
from e2e.kernel import apply_patches, load_series

GUEST_PATCHES = kernel.REPO_ROOT / "guest_patches"


def test_guest_kernel_is_patched_and_cached(guest_kernel: Path) -> None:
    entry = kernel.build_kernel(kernel.default_spec("guest"))  # a cache hit now
    assert entry.file("bzImage") == guest_kernel
    manifest = kernel.load_manifest(entry)
    series = kernel.load_series(kernel.REPO_ROOT / "guest_patches")
    assert [p["name"] for p in manifest["patches"]] == [p.name for p in series]
    assert manifest["flavour"] == "guest" and manifest["release"].startswith("6.1")
    config = kernel.read_config(entry.file("config"))
    for opt in ("CONFIG_KVM_GUEST", "CONFIG_X86_X2APIC", "CONFIG_SMP", "CONFIG_DEBUG_FS"):
        assert config.get(opt) == "y", opt


@pytest.mark.slow
def test_a_dropped_option_fails_the_build_naming_it(tmp_path: Path) -> None:
    frag = tmp_path / "extra.config"
    # Not user-selectable without tracing in the guest flavour: olddefconfig drops it.
    frag.write_text("CONFIG_TRACEPOINTS=y\n")
    spec = kernel.default_spec("guest", fragments=[frag])
    cache = Cache(tmp_path / "cache")
    with pytest.raises(BuildError, match=r"dropped 1 requested option\(s\): CONFIG_TRACEPOINTS=y") as err:
        kernel.build_kernel(spec, cache=cache)
    assert err.value.log and Path(err.value.log).is_file()
    assert not list((tmp_path / "cache" / "kernels").glob("*/manifest.json")), "a failed build left an entry"


@pytest.fixture(scope="module")
def linux_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kvm.c and kernel-parameters.txt from Debian's linux-source-6.1, unpacked once."""
    tarball = kernel.DEBIAN_SOURCE_TARBALL
    if not tarball.is_file():
        pytest.skip(f"{tarball} not found (apt-get install {kernel.DEBIAN_SOURCE_PACKAGE})")
    dest = tmp_path_factory.mktemp("linux")
    subprocess.run(
        ["tar", "-xJf", str(tarball), "-C", str(dest),
         "linux-source-6.1/arch/x86/kernel/kvm.c",
         "linux-source-6.1/Documentation/admin-guide/kernel-parameters.txt"],
        check=True, capture_output=True,
    )
    return dest / "linux-source-6.1"


@pytest.mark.slow
def test_real_series_applies_cleanly(linux_files: Path) -> None:
    kvm_c = linux_files / "arch" / "x86" / "kernel" / "kvm.c"
    params = linux_files / "Documentation" / "admin-guide" / "kernel-parameters.txt"
    before = kvm_c.read_text()
    assert "kvm_pv_eoi_skipped" not in before
    # apply_patches runs patch with --fuzz=0: success means every hunk matched exactly.
    apply_patches(linux_files, load_series(GUEST_PATCHES))
    after = kvm_c.read_text()
    for needle in ("kvm_pv_eoi_skipped", "kvm_pv_eoi_written", "kvm_pv_eoi_enabled",
                   '"cpu%d feature=%d enabled=%u skipped=%lu written=%lu\\n"',
                   'early_param("no-kvm-pv-eoi"', "pv_eoi_supported"):
        assert needle in after, needle
    assert "no-kvm-pv-eoi\t[X86,KVM]" in params.read_text()
    leftovers = [p.name for p in kvm_c.parent.iterdir() if p.suffix in (".orig", ".rej")]
    assert leftovers == []
    # A second application is refused (--forward), naming the first patch.
    with pytest.raises(BuildError, match=r"patch 0001-[^ ]+ does not apply.*Reversed"):
        apply_patches(linux_files, load_series(GUEST_PATCHES))


def test_kernel_release_of_cached_real_kernels(guest_kernel: Path) -> None:
    """pveoi's own builds (at least the guest kernel, built or a cache hit): the header agrees with the manifest."""
    images = sorted((cache_root() / "kernels").glob("*/bzImage"))
    assert guest_kernel in images
    for image in images:
        release = read_setup_header(image).release  # strict: a cached kernel is a whole bzImage
        manifest = json.loads((image.parent / "manifest.json").read_text())
        assert release != "unknown"
        if manifest.get("kind") == "build":
            assert release == manifest["release"]

