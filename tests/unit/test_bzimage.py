"""The bzImage check (--kernel), the kernel inside it, and what is built in (e2e.build.bzimage,
e2e.build.modules.missing_builtin_drivers). Real kernels from the cache where there are
some (pveoi's guest build: virtio built in; Debian's cloud kernel: virtio as modules)."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from e2e.build.bzimage import embedded_config, parse_setup_header, read_setup_header, vmlinux
from e2e.build.cache import cache_root
from e2e.build.kentry import check_kernel_file
from e2e.build.modules import missing_builtin_drivers
from e2e.build.prebuilt import fetch_path
from e2e.errors import ConfigError
from tests.helpers.bzimage import bzimage_bytes
from tests.helpers.cached import is_cloud_kernel


def one_line_error(path: Path, pattern: str) -> str:
    """check_kernel_file(path) fails at once with one line that matches ``pattern`` and names a fix."""
    start = time.monotonic()
    with pytest.raises(ConfigError, match=pattern) as err:
        check_kernel_file(path)
    assert time.monotonic() - start < 1.0
    text = str(err.value)
    assert "\n" not in text and "; fix: " in text, text
    return text


def cached_kernels(kind: str) -> list[Path]:
    """bzImages of the default cache whose manifest is of ``kind`` (build, debian: its cloud flavour)."""
    found = []
    for image in sorted((cache_root() / "kernels").glob("*/bzImage")):
        try:
            if json.loads((image.parent / "manifest.json").read_text()).get("kind") == kind and (
                    kind != "debian" or is_cloud_kernel(image.parent / "manifest.json")):
                found.append(image)
        except (OSError, ValueError):
            continue
    return found


BUILT = cached_kernels("build")
DEBIAN = cached_kernels("debian")
REAL = BUILT + DEBIAN


# ---------------------------------------------------------------- the setup header


def test_a_well_formed_bzimage_is_accepted_and_read(tmp_path: Path) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(bzimage_bytes(version=b"6.1.0-27-cloud-amd64 (debian-kernel@lists) #1"))
    assert check_kernel_file(path) == path
    header = read_setup_header(path)
    assert (header.version, header.setup_sects, header.release) == (0x020F, 4, "6.1.0-27-cloud-amd64")
    assert header.expected_size == path.stat().st_size
    assert header.kernel_start + header.payload_offset + header.payload_length <= path.stat().st_size


def test_no_version_string_reads_unknown(tmp_path: Path) -> None:
    assert parse_setup_header(bzimage_bytes(version=None)).release == "unknown"
    data = bytearray(bzimage_bytes(version=None))
    struct.pack_into("<H", data, 0x20E, 0xF000)  # pointing past the data
    assert parse_setup_header(bytes(data)).release == "unknown"


def test_etc_passwd_is_refused(tmp_path: Path) -> None:
    one_line_error(Path("/etc/passwd"), r"^/etc/passwd is not an x86 bzImage: no boot-sector signature "
                                         r"0x55AA at offset 510; fix: pass a bzImage")


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.touch()
    one_line_error(empty, r"is not an x86 bzImage: only 0 bytes, too short")


def test_a_directory_is_refused_naming_its_bzimage(tmp_path: Path) -> None:
    one_line_error(tmp_path, rf"^{tmp_path} is a directory, not a kernel file; fix: pass a bzImage")
    (tmp_path / "bzImage").write_bytes(bzimage_bytes())
    one_line_error(tmp_path, rf"is a directory, not a kernel file; fix: pass {tmp_path}/bzImage$")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    one_line_error(tmp_path / "nope", r"^kernel .*/nope not found; fix: ")


def test_an_elf_vmlinux_is_refused(tmp_path: Path) -> None:
    elf = tmp_path / "vmlinux"
    shutil.copy("/bin/true", elf)  # a real ELF file
    one_line_error(elf, r"is an ELF file \(a vmlinux\?\), not a bzImage.*; fix: pass arch/x86/boot/bzImage")


def test_a_truncated_bzimage_is_refused(tmp_path: Path) -> None:
    source = REAL[0].read_bytes() if REAL else bzimage_bytes(payload=os.urandom(8192))
    for keep in (len(source) - 16, len(source) // 2, 0x1000):
        cut = tmp_path / f"cut-{keep}"
        cut.write_bytes(source[:keep])
        one_line_error(cut, r"is truncated: its setup header describes \d+ bytes, the file has \d+; "
                            r"fix: copy or download it again")
    header_only = tmp_path / "header-only"
    header_only.write_bytes(source[:0x200])
    one_line_error(header_only, r"too short|not an x86 bzImage")


@pytest.mark.parametrize(("offset", "value", "pattern"), [
    (0x1FE, b"\0\0", r"no boot-sector signature 0x55AA"),
    (0x202, b"HdrX", r"no HdrS setup header at offset 0x202"),
    (0x206, struct.pack("<H", 0x0204), r"has boot protocol 2\.04, not a version between 2\.08 and 2\.255"),
    (0x206, struct.pack("<H", 0x0300), r"has boot protocol 3\.00"),
    (0x206, struct.pack("<H", 0xFFFF), r"has boot protocol 255\.255"),
], ids=["no-signature", "no-HdrS", "too-old", "protocol-3", "garbage-version"])
def test_header_faults_are_named(tmp_path: Path, offset: int, value: bytes, pattern: str) -> None:
    data = bytearray(bzimage_bytes())
    data[offset:offset + len(value)] = value
    path = tmp_path / "bzImage"
    path.write_bytes(bytes(data))
    one_line_error(path, pattern)


def test_fetch_path_refuses_a_non_kernel(tmp_path: Path) -> None:
    from e2e.build.cache import Cache

    with pytest.raises(ConfigError, match="no boot-sector signature"):
        fetch_path(Path("/etc/passwd"), Cache(tmp_path))


@pytest.mark.skipif(not REAL, reason="no kernel in the cache (pveoi kernel build / kernel fetch --debian)")
def test_real_kernels_pass_and_their_release_matches_the_manifest() -> None:
    for image in REAL:
        start = time.monotonic()
        assert check_kernel_file(image) == image
        assert time.monotonic() - start < 1.0
        release = read_setup_header(image).release
        assert release == json.loads((image.parent / "manifest.json").read_text())["release"]


# ---------------------------------------------------------------- the kernel inside, and its drivers


ELF_STUB = b"\x7fELF\x02\x01\x01" + b"\0" * 57


def with_payload(tmp_path: Path, body: bytes, compress: str = "gzip") -> Path:
    packed = gzip.compress(ELF_STUB + body, mtime=0) if compress == "gzip" else lzma.compress(ELF_STUB + body)
    path = tmp_path / f"bzImage-{compress}"
    path.write_bytes(bzimage_bytes(payload=packed))
    return path


@pytest.mark.parametrize("compress", ["gzip", "xz"])
def test_vmlinux_expands_the_payload(tmp_path: Path, compress: str) -> None:
    assert vmlinux(with_payload(tmp_path, b"hello kernel", compress)) == ELF_STUB + b"hello kernel"


def test_an_unknown_payload_format_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(bzimage_bytes(payload=b"\x00\x01\x02\x03" * 16))
    with pytest.raises(ConfigError, match=r"unknown compression of the kernel \(starts 000102030001\)"):
        vmlinux(path)


def test_embedded_config_is_read(tmp_path: Path) -> None:
    config = b"CONFIG_VIRTIO_NET=y\nCONFIG_VIRTIO_BLK=m\n# CONFIG_VIRTIO_PCI is not set\n"
    image = b"junk" + b"IKCFG_ST" + gzip.compress(config, mtime=0) + b"IKCFG_ED" + b"more"
    assert embedded_config(image) == {"CONFIG_VIRTIO_NET": "y", "CONFIG_VIRTIO_BLK": "m"}
    assert embedded_config(b"no config here") is None
    path = with_payload(tmp_path, image)
    check = missing_builtin_drivers(path)
    assert check.missing == ("virtio_pci", "virtio_blk") and check.evidence == "its embedded config"


def test_the_config_file_is_the_first_evidence(tmp_path: Path) -> None:
    path = with_payload(tmp_path, b"\0virtio_net\0")  # the image's strings would say otherwise
    config = tmp_path / "config"
    config.write_text("CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_NET=m\nCONFIG_VIRTIO_BLK=y\n")
    check = missing_builtin_drivers(path, config)
    assert check.missing == ("virtio_net",) and str(config) in check.evidence


def test_driver_names_in_the_image_are_the_last_evidence(tmp_path: Path) -> None:
    builtin = with_payload(tmp_path, b"\0virtio-pci\0\0virtio_net.napi_tx\0\0virtio_blk\0")
    assert missing_builtin_drivers(builtin).missing == ()
    (tmp_path / "lookalike").mkdir()
    lookalike = with_payload(tmp_path / "lookalike", b"\0my_virtio_net\0virtio_blk_x\0virtio_pci_thing\0")
    check = missing_builtin_drivers(lookalike)
    assert check.missing == ("virtio_pci", "virtio_net", "virtio_blk")
    assert check.evidence == "the driver names in its image"


@pytest.mark.skipif(not BUILT, reason="no pveoi-built kernel in the cache (pveoi kernel build)")
def test_pveois_guest_kernel_has_its_virtio_drivers_built_in() -> None:
    for image in BUILT:
        assert missing_builtin_drivers(image, image.parent / "config").missing == ()
        assert missing_builtin_drivers(image).missing == ()  # the strings agree with the config


@pytest.mark.skipif(not DEBIAN, reason="no fetched Debian kernel in the cache (pveoi kernel fetch --debian)")
def test_debians_cloud_kernel_has_them_as_modules() -> None:
    for image in DEBIAN:
        assert vmlinux(image).startswith(b"\x7fELF")  # lz4, with its trailing size word
        assert missing_builtin_drivers(image, image.parent / "config").missing == \
            ("virtio_pci", "virtio_net", "virtio_blk")
        assert missing_builtin_drivers(image).missing == ("virtio_pci", "virtio_net", "virtio_blk")
