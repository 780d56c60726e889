"""Real kernel builds: the patched guest kernel, its cache and manifest, a dropped option; every
base's guest_patches/<base>/ series against that base's Debian linux-source; the headers of the
cached real kernels."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from e2e.build import kernel
from e2e.build.bases import BASES, DEFAULT_BASE, Patch, apply_patches, base_named, load_series
from e2e.build.bzimage import read_setup_header
from e2e.build.cache import Cache, cache_root
from e2e.build.kconfig import read_config
from e2e.build.kentry import load_manifest
from e2e.errors import BuildError


def test_guest_kernel_is_patched_and_cached(guest_kernel: Path) -> None:
    entry = kernel.build_kernel(kernel.default_spec("guest"))  # a cache hit now
    assert entry.file("bzImage") == guest_kernel
    manifest = load_manifest(entry)
    series = load_series(base_named(None).series_dir)
    assert [p["name"] for p in manifest["patches"]] == [p.name for p in series]
    assert manifest["release"].startswith(f"{DEFAULT_BASE}.")
    # one build for both jobs: the virtual host's own kernel is this entry
    assert kernel.build_kernel(kernel.default_spec("host")).file("bzImage") == guest_kernel
    assert manifest["base"] == DEFAULT_BASE and manifest["version"].startswith(f"{DEFAULT_BASE}.")
    config = read_config(entry.file("config"))
    for opt in ("CONFIG_KVM_GUEST", "CONFIG_X86_X2APIC", "CONFIG_SMP", "CONFIG_DEBUG_FS", "CONFIG_KVM_AMD",
                "CONFIG_9P_FS", "CONFIG_TRACEPOINTS"):
        assert config.get(opt) == "y", opt


@pytest.mark.slow
def test_a_dropped_option_fails_the_build_naming_it(tmp_path: Path) -> None:
    frag = tmp_path / "extra.config"
    # Not user-selectable (no prompt; only lock debugging or the irqsoff tracer select it): olddefconfig drops it.
    frag.write_text("CONFIG_TRACE_IRQFLAGS=y\n")
    spec = kernel.default_spec("guest", fragments=[frag])
    cache = Cache(tmp_path / "cache")
    with pytest.raises(BuildError, match=r"dropped 1 requested option\(s\): CONFIG_TRACE_IRQFLAGS=y") as err:
        kernel.build_kernel(spec, cache=cache)
    assert err.value.log and Path(err.value.log).is_file()
    assert not list((tmp_path / "cache" / "kernels").glob("*/manifest.json")), "a failed build left an entry"


@pytest.fixture(scope="module", params=sorted(BASES))
def linux_files(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A base, and kvm.c and kernel-parameters.txt from its Debian linux-source, unpacked once.
    A missing source package fails: host_config/install-deps.sh installs every base's."""
    base = base_named(request.param)
    if not base.tarball.is_file():
        pytest.fail(f"{base.tarball} not found: {base.apt} (host_config/install-deps.sh)")
    dest = tmp_path_factory.mktemp(f"linux-{base.name}")
    subprocess.run(
        ["tar", "-xJf", str(base.tarball), "-C", str(dest),
         f"{base.package}/arch/x86/kernel/kvm.c",
         f"{base.package}/Documentation/admin-guide/kernel-parameters.txt"],
        check=True, capture_output=True,
    )
    return base.name, dest / base.package


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def guest_fixtures(base: str) -> list[Path]:
    """The planted guest-kernel fixtures for ``base``: a fixture directory's own patch is for 6.1, its
    ``<base>/`` one for that base (the host fixtures, quilt dirs with a ``series``, patch KVM instead)."""
    out = []
    for d in sorted(p for p in FIXTURES.iterdir() if p.is_dir() and not (p / "series").exists()):
        where = d if base == "6.1" else d / base
        out += sorted(where.glob("000*.patch"))
    return out


def test_every_series_applies_to_its_bases_debian_source(linux_files: tuple[str, Path]) -> None:
    """Each shipped series, in order, with fuzz 0, on the source of the base it is for (the two files
    it touches: seconds, so the default run checks it)."""
    name, tree = linux_files
    series = load_series(base_named(name).series_dir)
    kvm_c = tree / "arch" / "x86" / "kernel" / "kvm.c"
    params = tree / "Documentation" / "admin-guide" / "kernel-parameters.txt"
    before = kvm_c.read_text()
    assert "kvm_pv_eoi_skipped" not in before
    # apply_patches runs patch with --fuzz=0: success means every hunk matched exactly.
    apply_patches(tree, series, f"pveoi's {name} series")
    after = kvm_c.read_text()
    for needle in ("kvm_pv_eoi_skipped", "kvm_pv_eoi_written", "kvm_pv_eoi_enabled",
                   '"cpu%d feature=%d enabled=%u skipped=%lu written=%lu\\n"',
                   'early_param("no-kvm-pv-eoi"', "pv_eoi_supported", "KVM_HC_PV_EOI_MARK",
                   'debugfs_create_file("kvm_pv_eoi_mark"'):
        assert needle in after, needle
    assert "\tno-kvm-pv-eoi\t[X86,KVM" in params.read_text()
    leftovers = [p.name for p in kvm_c.parent.iterdir() if p.suffix in (".orig", ".rej")]
    assert leftovers == []
    # Every planted guest fixture applies on top of the series of each base it is for (a fixture that no
    # longer applies would silently stop testing anything: its slow test builds it only weekly).
    fixtures = guest_fixtures(name)
    assert len(fixtures) >= 4, fixtures  # broken-pv-eoi, pv-eoi-1-in-100, pv-eoi-cpu0-only, double-eoi-1-in-100
    for fixture in fixtures:
        tried = tree.parent / f"{name}-with-{fixture.stem}"
        shutil.copytree(tree / "arch", tried / "arch")
        apply_patches(tried, [Patch(fixture.name, fixture)], f"the fixture {fixture}")
    # A second application is refused (--forward), naming the first patch.
    with pytest.raises(BuildError, match=r"0001-[^ ]+: .*Reversed"):
        apply_patches(tree, series, f"pveoi's {name} series")
    # The other base's series does not apply here, and says whose it is and the ways out.
    for other in sorted(set(BASES) - {name}):
        fresh = tree.parent / f"fresh-{other}"
        (fresh / "arch" / "x86" / "kernel").mkdir(parents=True)
        (fresh / "arch" / "x86" / "kernel" / "kvm.c").write_text(before)
        with pytest.raises(BuildError, match=f"pveoi's {other} series does not apply to this tree") as err:
            apply_patches(fresh, load_series(base_named(other).series_dir), f"pveoi's {other} series")
        assert "--patches" in (err.value.fix or "")


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

