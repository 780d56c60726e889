"""Real kernel builds: the patched guest kernel, its cache and manifest, a dropped option."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e import kernel
from e2e.cache import Cache
from e2e.errors import BuildError


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
