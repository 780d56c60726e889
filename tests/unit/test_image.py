"""Guest image: newc writer/parser, key derivation, SSH identity, module order,
and one real build (about 5 s) into a temporary cache."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest

from e2e import image
from e2e.cache import Cache
from e2e.errors import BuildError, ConfigError
from e2e.image import (
    CpioEntry,
    GuestImage,
    HostFile,
    ImageInputs,
    ImageTree,
    KernelModules,
    Tool,
    elf_interpreter,
    elf_modinfo,
    modinfo_dependencies,
    module_load_order,
    module_name,
    parse_ldd,
    parse_modules_dep,
    parse_newc,
    read_initrd,
    ssh_identity,
    write_newc,
)

HAVE_CPIO = shutil.which("cpio") is not None
HAVE_GCC = shutil.which("gcc") is not None
HAVE_BUSYBOX = Path("/bin/busybox").is_file()


# ---------------------------------------------------------------- newc


def sample_entries() -> list[CpioEntry]:
    return [
        CpioEntry("bin", stat.S_IFDIR | 0o755),
        CpioEntry("bin/hello", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
        CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        CpioEntry("dev", stat.S_IFDIR | 0o755),
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("empty", stat.S_IFREG | 0o644, b""),
        CpioEntry("odd", stat.S_IFREG | 0o600, b"abc"),  # 3 bytes: exercises padding
    ]


def test_newc_round_trip_and_alignment() -> None:
    buf = io.BytesIO()
    size = write_newc(sample_entries(), buf)
    data = buf.getvalue()
    assert size == len(data)
    assert size % 512 == 0
    assert parse_newc(data) == sample_entries()


def test_newc_is_deterministic() -> None:
    a, b = io.BytesIO(), io.BytesIO()
    write_newc(sample_entries(), a)
    write_newc(sample_entries(), b)
    assert a.getvalue() == b.getvalue()


def test_newc_source_file_is_read(tmp_path: Path) -> None:
    src = tmp_path / "blob"
    src.write_bytes(b"x" * 1001)
    buf = io.BytesIO()
    write_newc([CpioEntry("blob", stat.S_IFREG | 0o644, source=src)], buf)
    (entry,) = parse_newc(buf.getvalue())
    assert entry.data == b"x" * 1001


def test_newc_rejects_absolute_names() -> None:
    with pytest.raises(ValueError, match="relative"):
        write_newc([CpioEntry("/etc/passwd", stat.S_IFREG | 0o644, b"")], io.BytesIO())


def test_parse_newc_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="newc header"):
        parse_newc(b"not an archive" * 20)


@pytest.mark.skipif(not HAVE_CPIO, reason="cpio not installed (apt-get install cpio)")
def test_gnu_cpio_lists_our_archive() -> None:
    buf = io.BytesIO()
    write_newc(sample_entries(), buf)
    listing = subprocess.run(["cpio", "-itv", "--numeric-uid-gid", "--quiet"], input=buf.getvalue(),
                             capture_output=True, check=True).stdout.decode()
    lines = listing.splitlines()
    assert [ln.split()[-1] if "->" not in ln else ln.split()[-3] for ln in lines] == [
        e.name for e in sample_entries()
    ]
    for line in lines:
        owner, group = line.split()[2:4]
        assert (owner, group) == ("0", "0")
    assert any(ln.startswith("lrwxrwxrwx") and ln.endswith("bin/sh -> busybox") for ln in lines)
    assert any(ln.startswith("crw-------") and "dev/console" in ln for ln in lines)


def test_image_tree_adds_parents_first() -> None:
    tree = ImageTree()
    tree.file("usr/lib/x86_64-linux-gnu/libc.so.6", data=b"elf")
    tree.symlink("bin/sh", "busybox")
    tree.dir("root", 0o700)
    names = [e.name for e in tree.entries()]
    assert names == ["bin", "bin/sh", "root", "usr", "usr/lib", "usr/lib/x86_64-linux-gnu",
                     "usr/lib/x86_64-linux-gnu/libc.so.6"]
    for i, name in enumerate(names):
        parent = os.path.dirname(name)
        assert not parent or parent in names[:i]
    root = next(e for e in tree.entries() if e.name == "root")
    assert stat.S_IMODE(root.mode) == 0o700


def test_image_tree_keeps_existing_unless_replacing() -> None:
    tree = ImageTree()
    tree.file("bin/ls", data=b"real")
    tree.symlink("bin/ls", "busybox", replace=False)
    (ls,) = [e for e in tree.entries() if e.name == "bin/ls"]
    assert stat.S_ISREG(ls.mode)
    with pytest.raises(ValueError):
        tree.file("../escape", data=b"")


# ---------------------------------------------------------------- host files


LDD_SAMPLE = """\
\tlinux-vdso.so.1 (0x00007ffd3a1f2000)
\tlibtomcrypt.so.1 => /lib/x86_64-linux-gnu/libtomcrypt.so.1 (0x00007f0e4c8e5000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e4c703000)
\tlibceph-common.so.2 => /usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2 (0x00007f0e40000000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e4ca07000)
"""


def test_parse_ldd() -> None:
    assert parse_ldd(LDD_SAMPLE) == [
        "/lib/x86_64-linux-gnu/libtomcrypt.so.1",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2",
        "/lib64/ld-linux-x86-64.so.2",
    ]


def test_parse_ldd_missing_library_is_an_error() -> None:
    with pytest.raises(BuildError, match=r"libgone\.so\.3"):
        parse_ldd("\tlibgone.so.3 => not found\n", "/usr/bin/thing")


@pytest.mark.skipif(not Path("/usr/sbin/dropbear").is_file() or not HAVE_BUSYBOX,
                    reason="needs dropbear-bin and busybox-static")
def test_elf_interpreter() -> None:
    assert elf_interpreter(Path("/usr/sbin/dropbear")) == "/lib64/ld-linux-x86-64.so.2"
    assert elf_interpreter(Path("/bin/busybox")) is None


def test_elf_interpreter_rejects_non_elf(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n" + "#" * 80 + "\n")
    with pytest.raises(BuildError, match="not a 64-bit"):
        elf_interpreter(script)


def test_missing_tool_names_the_package() -> None:
    tool = Tool("pveoi-no-such-tool", "/nonexistent/pveoi-no-such-tool", "pveoi-pkg", None)
    with pytest.raises(ConfigError) as err:
        image.find_tool(tool)
    assert str(err.value) == "pveoi-no-such-tool not found; fix: apt-get install pveoi-pkg"


def test_dropbear_missing_message(monkeypatch: pytest.MonkeyPatch) -> None:
    tool = next(t for t in image.TOOLS if t.name == "dropbear")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"^dropbear not found; fix: apt-get install dropbear-bin$"):
        image.find_tool(replace(tool, path="/nonexistent/dropbear"))


# ---------------------------------------------------------------- modules


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


# ---------------------------------------------------------------- ssh identity


def test_ssh_identity_permissions_and_reuse(tmp_path: Path) -> None:
    cache = Cache(root=tmp_path / "cache")
    ident = ssh_identity(cache)
    assert ident.private_key == tmp_path / "cache" / "ssh" / "id_ecdsa"
    assert stat.S_IMODE(ident.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ident.private_key.parent.stat().st_mode) == 0o700
    assert re.fullmatch(r"ecdsa-sha2-nistp256 AAAA[A-Za-z0-9+/=]+ pveoi", ident.public_line)
    key = paramiko.ECDSAKey.from_private_key_file(str(ident.private_key))
    assert ident.public_line.split()[1] == key.get_base64()
    assert ssh_identity(cache) == ident  # generated once per cache

    os.chmod(ident.private_key, 0o644)
    os.chmod(ident.private_key.parent, 0o755)
    assert ssh_identity(cache) == ident
    assert stat.S_IMODE(ident.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ident.private_key.parent.stat().st_mode) == 0o700


def test_ssh_identity_reads_a_good_key_without_locking(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(root=tmp_path)
    ident = ssh_identity(cache)

    def no_lock(*args: object) -> None:
        raise AssertionError("a good key must be read without the lock (read-only caches)")

    monkeypatch.setattr(Cache, "lock", no_lock)
    assert ssh_identity(cache) == ident


def test_ssh_identity_regenerates_an_unreadable_key(tmp_path: Path) -> None:
    cache = Cache(root=tmp_path)
    old = ssh_identity(cache)
    old.private_key.write_text("-----BEGIN NONSENSE-----\ngarbage\n")
    new = ssh_identity(cache)
    assert new.public_line != old.public_line
    paramiko.ECDSAKey.from_private_key_file(str(new.private_key))
    assert stat.S_IMODE(new.private_key.stat().st_mode) == 0o600


# ---------------------------------------------------------------- guest files


@pytest.mark.skipif(not HAVE_BUSYBOX, reason="busybox-static not installed")
def test_init_script_parses_and_prints_one_ready_line() -> None:
    subprocess.run(["/bin/busybox", "sh", "-n", str(image.INIT_SCRIPT)], check=True)
    code = [ln for ln in image.INIT_SCRIPT.read_text().splitlines() if not ln.lstrip().startswith("#")]
    assert sum("pveoi-guest-ready uptime=" in ln for ln in code) == 1
    assert re.search(image.READY_PATTERN, "pveoi-guest-ready uptime=1.45\r\n").group(1) == "1.45"  # type: ignore[union-attr]
    assert re.search(image.READY_PATTERN, "pveoi-guest-ready uptime=1") is None  # the line is not complete yet


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
                 "usr/sbin/dropbear", "usr/bin/fio", "usr/bin/iperf3", "usr/bin/cyclictest",
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
    assert set(m["binaries"]) == {"busybox", "dropbear", "fio", "iperf3", "cyclictest"}
    assert m["binaries"]["dropbear"]["package"] == "dropbear-bin"
    assert m["contents"]["/usr/bin/fio"] == Path("/usr/bin/fio").stat().st_size
    assert "/lib64/ld-linux-x86-64.so.2" in m["libraries"]
    assert set(m["files"]) == {image.INITRD_NAME, image.LOAD_NAME}
    on_disk = json.loads((img.path / "manifest.json").read_text())
    assert on_disk["host_key_line"] == img.host_key_line


@needs_tools
@pytest.mark.skipif(not HAVE_CPIO, reason="cpio not installed")
def test_build_is_listed_by_gnu_cpio(built: tuple[Cache, GuestImage]) -> None:
    _, img = built
    raw = gzip.decompress(img.initrd.read_bytes())
    names = set(subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True,
                               check=True).stdout.decode().split())
    assert {"init", "bin/busybox", "usr/sbin/dropbear", "usr/bin/fio", "usr/bin/pveoi-load",
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
    from e2e.ssh import GuestSsh

    cache, _ = built
    img = image.build_image(cache=cache)  # a hit
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=gzip.decompress(img.initrd.read_bytes()),
                   cwd=root, check=True)
    for argv in (["/usr/bin/fio", "--version"], ["/usr/bin/iperf3", "--version"],
                 ["/usr/bin/cyclictest", "--help"], ["/bin/sh", "-c", "echo ok"]):
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
