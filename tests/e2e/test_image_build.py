"""The guest image built for real (about 5 s each, into a temporary cache; e2e.build.image): its
contents, GNU cpio's reading of it, the load helper run natively, cache hits and rebuilds, its
userland in a chroot, and the images for pveoi's own and for a fetched Debian kernel. (Key derivation
and the init script, which build nothing, are tests/unit/test_image.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.build import image
from e2e.build.cache import Built, Cache
from e2e.build.cpio import read_initrd
from e2e.build.image import GuestImage
from e2e.build.kentry import entry_of
from e2e.errors import ConfigError
from tests.helpers.bzimage import bzimage_bytes
from tests.helpers.cached import fetched_debian_bzimage

HAVE_CPIO = shutil.which("cpio") is not None
DEBIAN_BZIMAGE = fetched_debian_bzimage()
needs_debian = pytest.mark.skipif(DEBIAN_BZIMAGE is None, reason="no fetched Debian kernel in the cache "
                                                                 "(pveoi kernel fetch --debian)")


# ---------------------------------------------------------------- a real build


def _tools_present() -> bool:
    return all(Path(t.path).is_file() or shutil.which(t.name) for t in (*image.TOOLS, image.COMPILER))


needs_tools = pytest.mark.skipif(not _tools_present(), reason="image tools missing (host_config/install-deps.sh)")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cache, GuestImage]]:
    cache = Cache(root=tmp_path_factory.mktemp("pveoi-cache"))
    yield cache, image.build_image(cache=cache)


@needs_tools
def test_build_contents(built: tuple[Cache, GuestImage]) -> None:
    cache, img = built
    assert img.initrd == img.path / image.INITRD_NAME
    assert img.path.parent == cache.root / image.IMAGE_KIND
    members = {e.name: e for e in read_initrd(img.initrd)}
    for name in ("init", "bin/busybox", "bin/sh", "bin/mount", "bin/ip", "bin/usleep",
                 "usr/sbin/dropbear", "usr/bin/iperf3",
                 "usr/bin/pveoi-load", "lib64/ld-linux-x86-64.so.2", "etc/passwd", "etc/group",
                 "etc/shells", "root/.ssh/authorized_keys", image.HOST_KEY_PATH, "dev/console"):
        assert name in members, name
    assert members["init"].data == image.INIT_SCRIPT.read_bytes()
    assert stat.S_IMODE(members["init"].mode) == 0o755
    assert members["bin/sh"].data == b"busybox" and stat.S_ISLNK(members["bin/sh"].mode)
    assert members["root/.ssh/authorized_keys"].data.decode() == img.identity.public_line + "\n"
    assert stat.S_IMODE(members["root/.ssh/authorized_keys"].mode) == 0o600
    assert stat.S_IMODE(members["root"].mode) == 0o700
    assert b"root:x:0:0:root:/root:/bin/sh" in members["etc/passwd"].data
    assert b"/bin/sh" in members["etc/shells"].data
    assert members["usr/sbin/dropbear"].data == Path("/usr/sbin/dropbear").read_bytes()
    assert re.fullmatch(r"ecdsa-sha2-nistp256 AAAA[A-Za-z0-9+/=]+", img.host_key_line)
    m = img.manifest
    assert m["hash"] == img.path.name and m["host_key_line"] == img.host_key_line
    assert m["client_key_line"] == img.identity.public_line
    assert set(m["binaries"]) == {"busybox", "dropbear", "iperf3"}
    assert m["binaries"]["dropbear"]["package"] == "dropbear-bin"
    assert m["contents"]["/usr/bin/iperf3"] == Path("/usr/bin/iperf3").stat().st_size
    # What no workload runs stays out: Debian's fio alone brought 55 MB of the 90 MB image (Ceph, ICU).
    assert not any(n.startswith(("usr/bin/fio", "usr/bin/cyclictest")) or "libceph" in n or "libicudata" in n
                   for n in members)
    assert "/lib64/ld-linux-x86-64.so.2" in m["libraries"]
    assert set(m["files"]) == {image.INITRD_NAME, image.LOAD_NAME}
    on_disk = json.loads((img.path / "manifest.json").read_text())
    assert on_disk["host_key_line"] == img.host_key_line


@needs_tools
@pytest.mark.skipif(not HAVE_CPIO, reason="cpio not installed")
def test_build_is_listed_by_gnu_cpio(built: tuple[Cache, GuestImage]) -> None:
    _, img = built
    raw = img.initrd.read_bytes()
    assert raw[:6] == b"070701", "an uncompressed newc archive (gunzip would run in the emulated guest)"
    names = set(subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True,
                               check=True).stdout.decode().split())
    assert {"init", "bin/busybox", "usr/sbin/dropbear", "usr/bin/iperf3", "usr/bin/pveoi-load",
            "root/.ssh/authorized_keys"} <= names


@needs_tools
def test_load_helper_runs_natively(built: tuple[Cache, GuestImage]) -> None:
    _, img = built
    assert img.load_helper is not None
    helper = str(img.load_helper)
    timer = subprocess.run([helper, "timer", "100", "100"], capture_output=True, text=True, timeout=30)
    assert timer.returncode == 0, timer.stderr
    m = re.fullmatch(r"timer count=100 usec=100 elapsed_ns=(\d+)\n", timer.stdout)
    assert m and int(m.group(1)) >= 100 * 100_000  # 100 sleeps of at least 100 us
    ipi = subprocess.run([helper, "ipi", "1000"], capture_output=True, text=True, timeout=60)
    if (os.cpu_count() or 1) < 2:
        assert ipi.returncode == 3 and "2 online CPUs" in ipi.stderr
    else:
        assert ipi.returncode == 0, ipi.stderr
        assert re.fullmatch(r"ipi count=1000 elapsed_ns=\d+\n", ipi.stdout)
    for bad in (["timer", "10"], ["timer", "0", "5"], ["ipi", "x"], ["nope"], []):
        proc = subprocess.run([helper, *bad], capture_output=True, text=True, timeout=10)
        assert proc.returncode == 2 and proc.stderr.startswith("usage: "), bad


@needs_tools
def test_cache_hit_is_fast_and_corruption_rebuilds(tmp_path: Path) -> None:
    # Its own cache: corrupting and rebuilding the shared `built` entry would change it under the
    # tests that run after this one (a fresh host key), so their outcome would depend on the order.
    cache = Cache(root=tmp_path / "cache")
    img = image.build_image(cache=cache)
    start = time.monotonic()
    again = image.build_image(cache=cache)
    assert time.monotonic() - start < 2.0
    assert again.path == img.path and again.host_key_line == img.host_key_line

    with open(img.initrd, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    rebuilt = image.build_image(cache=cache)
    assert rebuilt.path == img.path  # same inputs, same key
    assert rebuilt.host_key_line != img.host_key_line  # but really rebuilt (a fresh host key)
    read_initrd(rebuilt.initrd)  # and intact


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@needs_tools
@pytest.mark.skipif(os.geteuid() != 0 or not HAVE_CPIO, reason="needs root (chroot) and cpio")
def test_image_userland_works_in_a_chroot(built: tuple[Cache, GuestImage], tmp_path: Path) -> None:
    """The copied binaries find all their libraries, and dropbear accepts the key."""
    from e2e.vm.ssh import GuestSsh

    cache, _ = built
    img = image.build_image(cache=cache)  # a hit
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=img.initrd.read_bytes(),
                   cwd=root, check=True)
    for argv in (["/usr/bin/iperf3", "--version"], ["/usr/bin/pveoi-load"], ["/bin/sh", "-c", "echo ok"]):
        proc = subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, timeout=30)
        assert "error while loading shared libraries" not in proc.stderr, (argv, proc.stderr)
    port = _free_port()
    dropbear = subprocess.Popen(
        ["chroot", str(root), "/usr/sbin/dropbear", "-r", "/" + image.HOST_KEY_PATH, "-p", f"127.0.0.1:{port}",
         "-s", "-F", "-E", "-P", "/run/dropbear.pid"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        with GuestSsh(port, img.identity.private_key, img.host_key_line).connect(timeout=15) as ssh:
            result = ssh.run(["id", "-u"], timeout=15).check()
            assert result.stdout.strip() == "0"
            load = ssh.run(["pveoi-load", "timer", "3", "10"], timeout=15).check()
            assert load.stdout.startswith("timer count=3 usec=10 ")
    finally:
        dropbear.terminate()
        try:
            dropbear.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dropbear.kill()
            dropbear.wait()
        assert dropbear.stderr is not None
        dropbear.stderr.close()


# ---------------------------------------------------------------- images for a kernel (--kernel)


@needs_tools
def test_pveoi_kernels_and_none_get_the_default_image(built: tuple[Cache, GuestImage], tmp_path: Path) -> None:
    cache, img = built
    assert image.image_for_kernel(None, cache).path == img.path
    kernel_cache = Cache(tmp_path / "kc")
    own = kernel_cache.get_or_build("kernels", "b1", lambda staged: (
        (staged / "bzImage").write_bytes(bzimage_bytes()),
        (staged / "config").write_text("CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_NET=y\nCONFIG_VIRTIO_BLK=y\n"),
        Built(("bzImage", "config"), {"kind": "build"}))[2])
    assert image.image_for_kernel(own.path / "bzImage", cache).path == img.path
    assert image.build_image(own.path / "bzImage", cache).path == img.path  # a path works like an entry


@pytest.fixture(scope="module")
def debian_image(built: tuple[Cache, GuestImage]) -> GuestImage:
    cache, _ = built
    assert DEBIAN_BZIMAGE is not None
    return image.image_for_kernel(DEBIAN_BZIMAGE, cache)


@needs_tools
@needs_debian
def test_a_fetched_debian_kernel_gets_its_modules(built: tuple[Cache, GuestImage],
                                                  debian_image: GuestImage) -> None:
    assert DEBIAN_BZIMAGE is not None
    _, default = built
    entry = entry_of(DEBIAN_BZIMAGE)
    assert entry is not None
    release = entry.manifest["release"]
    assert debian_image.path != default.path
    mods = debian_image.manifest["kernel_modules"]
    assert mods["release"] == release and mods["modules_tar_sha256"] == entry.manifest["files"]["modules.tar"]
    names = {Path(p).name for p in mods["load_order"]}
    assert {"virtio.ko", "virtio_ring.ko", "virtio_pci.ko", "virtio_net.ko", "virtio_blk.ko"} <= names
    members = {e.name: e for e in read_initrd(debian_image.initrd)}
    order = members[f"lib/modules/{release}/pveoi-modules.order"].data.decode().split()
    assert order == mods["load_order"]
    for rel in order:
        assert members[f"lib/modules/{release}/{rel}"].data.startswith(b"\x7fELF")
    assert image.build_image(entry, built[0]).path == debian_image.path  # entry or path: one image


@needs_tools
@needs_debian
def test_an_image_without_the_kernels_modules_is_refused(built: tuple[Cache, GuestImage],
                                                         debian_image: GuestImage) -> None:
    assert DEBIAN_BZIMAGE is not None
    _, default = built
    with pytest.raises(ConfigError, match=rf"image {default.path} has no modules for kernel "):
        image.guest_image(DEBIAN_BZIMAGE, default.path)
    assert image.guest_image(DEBIAN_BZIMAGE, debian_image.path).path == debian_image.path
    assert image.guest_image(None, default.path).path == default.path
