"""The guest image without building one: key derivation, the init script, which kernels and images
are refused, and what goes in (e2e.build.image). The real builds are tests/e2e/test_image_build.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from e2e.build import image
from e2e.build.cache import Built, Cache
from e2e.build.elf import HostFile
from e2e.build.image import ImageInputs
from e2e.build.kentry import entry_of
from e2e.build.modules import KernelModules
from e2e.errors import ConfigError
from tests.helpers.bzimage import bzimage_bytes
from tests.helpers.cached import fetched_debian_bzimage

HAVE_BUSYBOX = Path("/bin/busybox").is_file()


# ---------------------------------------------------------------- key derivation


def make_inputs(**overrides: object) -> ImageInputs:
    base = ImageInputs(
        init=b"#!/bin/sh\necho ready\n",
        load_source=b"int main(void) { return 0; }\n",
        files=(HostFile("bin/busybox", Path("/bin/busybox"), "a" * 64, 0o755),
               HostFile("usr/sbin/dropbear", Path("/usr/sbin/dropbear"), "b" * 64, 0o755)),
        client_public_line="ecdsa-sha2-nistp256 AAAAclient pveoi",
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_key_is_stable_and_tracks_every_input() -> None:
    base = make_inputs()
    assert base.key() == make_inputs().key()
    assert re.fullmatch(r"[0-9a-f]{24}", base.key())
    variants = {
        "init": make_inputs(init=b"#!/bin/sh\necho ready now\n"),
        "load": make_inputs(load_source=b"int main(void) { return 1; }\n"),
        "client key": make_inputs(client_public_line="ecdsa-sha2-nistp256 AAAAother pveoi"),
        "binary": make_inputs(files=(HostFile("bin/busybox", Path("/bin/busybox"), "c" * 64, 0o755),
                                     base.files[1])),
        "extra lib": make_inputs(files=(*base.files, HostFile("lib/libz.so.1", Path("/x"), "d" * 64, 0o644))),
        "modules": make_inputs(modules=KernelModules("6.1.0-1-cloud-amd64", Path("/m.tar"), "e" * 64)),
    }
    keys = {name: v.key() for name, v in variants.items()}
    assert base.key() not in keys.values()
    assert len(set(keys.values())) == len(keys)
    other_release = make_inputs(modules=KernelModules("6.1.0-2-cloud-amd64", Path("/m.tar"), "e" * 64))
    assert other_release.key() != keys["modules"]
    # where a file comes from on the host does not matter, only what it is
    moved = make_inputs(files=(replace(base.files[0], source=Path("/usr/bin/busybox")), base.files[1]))
    assert moved.key() == base.key()


# ---------------------------------------------------------------- guest files


@pytest.mark.skipif(not HAVE_BUSYBOX, reason="busybox-static not installed")
def test_init_script_parses_and_prints_one_ready_line() -> None:
    subprocess.run(["/bin/busybox", "sh", "-n", str(image.INIT_SCRIPT)], check=True)
    code = [ln for ln in image.INIT_SCRIPT.read_text().splitlines() if not ln.lstrip().startswith("#")]
    assert sum("pveoi-guest-ready uptime=" in ln for ln in code) == 1
    assert re.search(image.READY_PATTERN, "pveoi-guest-ready uptime=1.45\r\n").group(1) == "1.45"  # type: ignore[union-attr]
    assert re.search(image.READY_PATTERN, "pveoi-guest-ready uptime=1") is None  # the line is not complete yet


# ---------------------------------------------------------------- images for a kernel (--kernel)


DEBIAN_BZIMAGE = fetched_debian_bzimage()
needs_debian = pytest.mark.skipif(DEBIAN_BZIMAGE is None, reason="no fetched Debian kernel in the cache "
                                                                 "(pveoi kernel fetch --debian)")


def test_entry_of_a_cache_kernel_and_of_other_files(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    entry = cache.get_or_build("kernels", "k1", lambda staged: (
        (staged / "bzImage").write_bytes(bzimage_bytes()), Built(("bzImage",), {"kind": "test"}))[1])
    found = entry_of(entry.path / "bzImage")
    assert found is not None and found.path == entry.path and found.manifest["kind"] == "test"
    assert entry_of(entry.path / "manifest.json") is None  # not one of the entry's files
    own = tmp_path / "bzImage"
    own.write_bytes(bzimage_bytes())
    assert entry_of(own) is None
    link = tmp_path / "link"
    link.symlink_to(entry.path / "bzImage")
    assert entry_of(link) == found  # a symlink into the cache finds the entry
    data = bytearray((entry.path / "bzImage").read_bytes())
    data[-8] ^= 0xFF  # in the payload: still a bzImage, not the one recorded
    (entry.path / "bzImage").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=rf"cache entry {entry.path} is damaged: .*bzImage is corrupt"):
        entry_of(entry.path / "bzImage")


@needs_debian
def test_a_bare_kernel_without_virtio_drivers_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    assert DEBIAN_BZIMAGE is not None
    bare = tmp_path / "vmlinuz"
    shutil.copy(DEBIAN_BZIMAGE, bare)
    cache = Cache(tmp_path / "cache")
    with pytest.raises(ConfigError) as err:  # (how fast: a benchmark's business, not a timed assertion)
        image.image_for_kernel(bare, cache)
    text = str(err.value)
    assert text.startswith(f"kernel {bare} lacks virtio_pci, virtio_net, virtio_blk: not built in") and \
        "; fix: " in text and "\n" not in text
    assert not (cache.root / image.IMAGE_KIND).exists()


def test_load_image_refuses_what_is_not_an_image_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    kernel = cache.get_or_build("kernels", "k", lambda staged: (
        (staged / "bzImage").write_bytes(bzimage_bytes()), Built(("bzImage",), {"kind": "fetch"}))[1])
    fake = cache.get_or_build(image.IMAGE_KIND, "x", lambda staged: (
        (staged / "notes").write_text("hi"), Built(("notes",), {"kind": "notes"}))[1])
    for path, pattern in ((tmp_path / "nope", "not found"), (kernel.path, "is not a pveoi image entry"),
                          (kernel.path / "bzImage", "is a file, not a pveoi image entry"),
                          (fake.path, r"is not a pveoi image entry \(its manifest is of kind 'notes'\)")):
        with pytest.raises(ConfigError, match=pattern) as err:
            image.load_image(path)
        assert "; fix: " in str(err.value)


def test_an_image_for_workloads_that_run_no_iperf3_leaves_it_out() -> None:
    from e2e.model.workloads import WORKLOADS

    def names(workloads: list[str]) -> set[str]:
        return {t.name for t in image.tools_for(n for w in workloads for n in WORKLOADS[w].needs)}

    assert names(["timer"]) == names(["timer", "ipi", "block"]) == {"busybox", "dropbear", "dropbearkey"}
    assert "iperf3" in names(["timer", "net"]) and names(["net"]) == {t.name for t in image.TOOLS}
