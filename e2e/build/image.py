"""
The guest image: an uncompressed newc initramfs for an x86-64 guest, built
from this Debian machine's own binaries. Uncompressed because the guest's CPU
is emulated (nested TCG): QEMU copies a plain archive in at host speed, while
gunzip would run in the emulated guest at every boot.

Contents: busybox (static) with its applet links in ``/bin``; dropbear with a
host key made at build time (its public line is in the manifest, for
pinning); ``/root/.ssh/authorized_keys`` holding the cache's client key;
iperf3 with every shared library it loads and the dynamic loader (what the
workloads run and nothing more: every byte is unpacked by an emulated CPU at
every boot); ``pveoi-load`` compiled here with ``gcc -O2 -static`` from
``images/guest/pveoi-load.c``; ``/init`` from ``images/guest/init``; and, for
a fetched Debian kernel (a kernel entry with ``modules.tar``), its virtio
modules with their load order precomputed (kmod's ``modinfo``, see
:mod:`e2e.build.modules`).

The archive is written in Python (newc), so every entry is owned by root
(uid/gid 0), has a fixed mtime, and the output is the same for the same
inputs apart from the freshly generated host key. The image is cached by a
content hash of everything that goes into it (see :class:`ImageInputs`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BuildError, ConfigError
from ..util import command
from ..util.paths import REPO_ROOT
from ..util.progress import Progress
from ..util.tmpdirs import tempdir
from .bzimage import read_setup_header
from .cache import MANIFEST, Built, Cache, CacheEntry, content_hash, corrupt_entry_error, entry_problem
from .cpio import ImageTree, write_initrd
from .elf import HostFile, Tool, collect_host_files, find_tool
from .kentry import entry_of
from .modules import (
    WANTED_MODULES,
    KernelModules,
    add_kernel_modules,
    kernel_modules,
    missing_builtin_drivers,
)
from .sshkey import SshIdentity, ssh_identity

log = logging.getLogger(__name__)

GUEST_DIR = REPO_ROOT / "images" / "guest"
INIT_SCRIPT = GUEST_DIR / "init"
LOAD_SOURCE = GUEST_DIR / "pveoi-load.c"

IMAGE_KIND = "images"
SCHEMA = 1
INITRD_NAME = "initramfs.cpio"
LOAD_NAME = "pveoi-load"

READY_PATTERN = r"pveoi-guest-ready uptime=(\S+)\r?\n"
"""The one line the guest prints when dropbear listens (group 1: uptime in s)."""
PVEOI_PATTERN = r"pveoi-guest-pveoi: ([^\r\n]*)"
"""The guest's PV EOI report: a ``kvm_pv_eoi`` debugfs line or ``unavailable``."""

HOST_KEY_PATH = "etc/dropbear/dropbear_ecdsa_host_key"
LOAD_PATH = "usr/bin/pveoi-load"

#: gzip level of the initramfs; None: uncompressed (see the module's docstring).
GZIP_LEVEL: int | None = None


BUSYBOX = Tool("busybox", "/bin/busybox", "busybox-static", "bin/busybox")
TOOLS: tuple[Tool, ...] = (
    BUSYBOX,
    Tool("dropbear", "/usr/sbin/dropbear", "dropbear-bin", "usr/sbin/dropbear"),
    Tool("dropbearkey", "/usr/bin/dropbearkey", "dropbear-bin", None),
    Tool("iperf3", "/usr/bin/iperf3", "iperf3", "usr/bin/iperf3"),
)
COMPILER = Tool("gcc", "/usr/bin/gcc", "gcc libc6-dev", None)
#: Tools only some workloads run (:attr:`e2e.model.workloads.Workload.needs`): an image for workloads that do
#: not need them leaves them out (iperf3 brings libcrypto, 4.7 of the image's 13 MB, and every byte is
#: copied into the emulated guest at every boot).
OPTIONAL_TOOLS = frozenset({"iperf3"})


def tools_for(needs: Iterable[str]) -> tuple[Tool, ...]:
    """:data:`TOOLS` less the optional ones nothing in ``needs`` names."""
    wanted = set(needs)
    return tuple(t for t in TOOLS if t.name not in OPTIONAL_TOOLS or t.name in wanted)


# ---------------------------------------------------------------- inputs and key


@dataclass(frozen=True)
class ImageInputs:
    """Everything an image is made of; :meth:`key` is its cache key."""

    init: bytes
    load_source: bytes
    files: tuple[HostFile, ...]
    client_public_line: str
    modules: KernelModules | None = None
    wanted_modules: tuple[str, ...] = WANTED_MODULES
    tools: tuple[Tool, ...] = TOOLS

    def key(self) -> str:
        """Content hash of the inputs (24 hex digits)."""
        parts: list[str | bytes] = [f"schema={SCHEMA}", self.init, self.load_source,
                                    self.client_public_line]
        for f in sorted(self.files, key=lambda f: f.dest):
            parts += [f.dest, f.sha256, f"{f.mode:o}"]
        if self.modules is not None:
            parts += [f"modules={self.modules.release}", self.modules.sha256, *self.wanted_modules]
        return content_hash(parts)[:24]


def image_inputs(identity: SshIdentity, kernel: CacheEntry | None = None,
                 guest_dir: Path = GUEST_DIR, tools: Sequence[Tool] = TOOLS) -> ImageInputs:
    """Gather (and hash) what the image for ``kernel`` is built from.

    :raises ConfigError: if the recipe files or a tool is missing.
    """
    recipe = []
    for path in (guest_dir / "init", guest_dir / "pveoi-load.c"):
        if not path.is_file():
            raise ConfigError(f"{path} not found", fix="run pveoi from a complete checkout")
        recipe.append(path.read_bytes())
    return ImageInputs(recipe[0], recipe[1], tuple(collect_host_files(tools)), identity.public_line,
                       kernel_modules(kernel), tools=tuple(tools))


# ---------------------------------------------------------------- build


@dataclass(frozen=True)
class GuestImage:
    """A built guest initramfs and what the harness needs to use it.

    :param initrd: the ``cpio.gz`` in the cache entry.
    :param host_key_line: dropbear's public host key (``ecdsa-sha2-nistp256 AAAA...``).
    :param path: the cache entry directory.
    """

    initrd: Path
    host_key_line: str
    identity: SshIdentity
    manifest: Mapping[str, Any]
    path: Path
    load_helper: Path | None = field(default=None)
    """The static ``pveoi-load`` (also in the image), runnable natively."""


def _run(argv: Sequence[str], what: str, fix: str, cwd: Path | None = None) -> str:
    return command.run(argv, what=what, fix=fix, cwd=cwd).stdout


def compile_load_helper(source: Path, out: Path) -> str:
    """Build ``pveoi-load`` with ``gcc -O2 -static``.

    :returns: the compiler's version.
    :raises ConfigError: if gcc is missing.
    :raises BuildError: with gcc's messages if the build fails.
    """
    gcc = str(find_tool(COMPILER))
    _run([gcc, "-O2", "-static", "-pthread", "-Wall", "-Wextra", "-o", str(out), str(source)],
         f"gcc -static {source.name}", fix="apt-get install gcc libc6-dev (static glibc)")
    return _run([gcc, "-dumpfullversion"], "gcc -dumpfullversion", fix="check gcc").strip()


def make_host_key(workdir: Path) -> tuple[Path, str]:
    """A fresh dropbear ECDSA P-256 host key.

    :returns: the key file and its public line (``type base64``, no comment).
    :raises BuildError: if dropbearkey fails or prints no public key.
    """
    keygen = str(find_tool(next(t for t in TOOLS if t.name == "dropbearkey")))
    key = workdir / "dropbear_ecdsa_host_key"
    fix = "apt-get install --reinstall dropbear-bin"
    _run([keygen, "-t", "ecdsa", "-s", "256", "-f", str(key)], "dropbearkey -t ecdsa", fix)
    out = _run([keygen, "-y", "-f", str(key)], "dropbearkey -y", fix)
    for line in out.splitlines():
        if line.startswith("ecdsa-sha2-nistp256 "):
            return key, " ".join(line.split()[:2])
    raise BuildError("dropbearkey -y printed no ecdsa-sha2-nistp256 line", fix=fix)


def busybox_applets(busybox: Path) -> list[str]:
    """The applet names of ``busybox --list``.

    :raises BuildError: if busybox cannot list them.
    """
    out = _run([str(busybox), "--list"], "busybox --list",
               fix="apt-get install --reinstall busybox-static")
    return sorted({name for name in out.split() if name and "/" not in name})


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """``dpkg-query`` versions of installed packages (missing ones are left out)."""
    names = sorted(set(packages))
    proc = command.run(["dpkg-query", "-W", "-f=${Package}\t${Version}\n", *names], check=False)
    versions = {}
    for line in proc.stdout.splitlines():
        pkg, _, version = line.partition("\t")
        if pkg and version:
            versions[pkg.split(":", 1)[0]] = version
    return versions


_ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\ntty:x:5:\n",
    "etc/shells": "/bin/sh\n/bin/ash\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    "etc/hosts": "127.0.0.1 localhost\n10.0.2.15 pveoi-guest\n",
    "etc/hostname": "pveoi-guest\n",
}


def populate_tree(tree: ImageTree, inputs: ImageInputs, host_key: Path, load_helper: Path,
                  applets: Sequence[str], key: str) -> None:
    """Fill ``tree`` with the guest's userland, keys and configuration (kernel modules apart).

    :param host_key: dropbear's private host key file.
    :param load_helper: the compiled ``pveoi-load``.
    :param applets: busybox applet names, linked in ``/bin`` unless a real file is there.
    :param key: the image's cache key, recorded in ``/etc/pveoi-image``.
    """
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "etc", "proc", "sys", "dev",
              "run", "tmp", "mnt", "var", "var/log"):
        tree.dir(d)
    tree.dir("tmp", 0o1777)
    tree.dir("root", 0o700)
    tree.dir("root/.ssh", 0o700)
    tree.dir("etc/dropbear", 0o700)
    tree.symlink("var/run", "../run")
    tree.node("dev/console", stat.S_IFCHR, 5, 1)
    tree.node("dev/null", stat.S_IFCHR, 1, 3, 0o666)
    tree.file("init", data=inputs.init, mode=0o755)
    for f in inputs.files:
        tree.file(f.dest, source=f.source, mode=f.mode)
    for name in applets:
        if name != "busybox":
            tree.symlink(f"bin/{name}", "busybox", replace=False)
    tree.file(LOAD_PATH, source=load_helper, mode=0o755)
    tree.file(HOST_KEY_PATH, source=host_key, mode=0o600)
    tree.file("root/.ssh/authorized_keys", data=(inputs.client_public_line + "\n").encode(),
              mode=0o600)
    for name, text in _ETC_FILES.items():
        tree.file(name, data=text.encode())
    tree.file("etc/pveoi-image", data=f"key={key}\n".encode())


def build_image(kernel: CacheEntry | Path | None = None, cache: Cache | None = None,
                force: bool = False, *, tools: Sequence[Tool] = TOOLS) -> GuestImage:
    """Build (or find in the cache) the guest initramfs.

    :param kernel: the kernel it will boot, as its cache entry or its bzImage
        path (the entry it lies in is found); only a fetched Debian kernel
        (an entry with ``modules.tar``) changes the image (its virtio
        modules are added).
    :param force: rebuild even on a cache hit.
    :param tools: the host binaries to include (default :data:`TOOLS`; busybox
        and dropbear are required). No workload runs fio: Debian's brings about
        80 MB of shared libraries (Ceph, ICU), 55 MB of a 90 MB image.
    :raises ConfigError: if a tool is missing (naming the package to install),
        the kernel's modules lack a wanted driver, or its cache entry is damaged.
    :raises BuildError: if compiling ``pveoi-load``, key generation or
        library resolution fails.
    """
    cache = cache or Cache()
    if isinstance(kernel, Path):
        kernel = entry_of(kernel)
    identity = ssh_identity(cache)
    names = {t.name for t in tools}
    if not {"busybox", "dropbear", "dropbearkey"} <= names:
        raise ConfigError("the image needs busybox, dropbear and dropbearkey",
                          fix="keep them in tools")
    inputs = image_inputs(identity, kernel, tools=tools)
    key = inputs.key()
    final = cache.entry_path(IMAGE_KIND, key)

    def build(staged: Path) -> Built:
        progress = Progress("image build")
        with tempdir("image") as work:
            return _build_into(inputs, key, staged, Path(work), progress, final)

    return _guest_image(cache.get_or_build(IMAGE_KIND, key, build, force=force), identity)


def _build_into(inputs: ImageInputs, key: str, staged: Path, work: Path, progress: Progress,
                final: Path) -> Built:
    started = time.time()
    progress.update("compiling pveoi-load (gcc -O2 -static)", force=True)
    load_helper = staged / LOAD_NAME
    source = work / "pveoi-load.c"
    source.write_bytes(inputs.load_source)  # exactly what the key hashed
    compiler = compile_load_helper(source, load_helper)
    progress.update("generating the dropbear host key", force=True)
    host_key, host_key_line = make_host_key(work)
    busybox = next(f for f in inputs.files if f.dest == "bin/busybox").source
    applets = busybox_applets(busybox)

    tree = ImageTree()
    populate_tree(tree, inputs, host_key, load_helper, applets, key)
    modules: list[str] = []
    if inputs.modules is not None:
        progress.update(f"adding kernel {inputs.modules.release} modules", force=True)
        modules = add_kernel_modules(tree, inputs.modules, inputs.wanted_modules)

    entries = tree.entries()
    progress.update(f"writing {len(entries)} members to {INITRD_NAME}", force=True)
    initrd = staged / INITRD_NAME
    uncompressed = write_initrd(entries, initrd, GZIP_LEVEL)

    tools = [t for t in inputs.tools if t.dest is not None]
    versions = package_versions(t.package for t in inputs.tools)
    by_dest = {f.dest: f for f in inputs.files}
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "initramfs",
        "hash": key,
        "host_key_line": host_key_line,
        "client_key_line": inputs.client_public_line,
        "ready_pattern": READY_PATTERN,
        "binaries": {
            t.name: {"image_path": "/" + str(t.dest), "host_path": str(by_dest[str(t.dest)].source),
                     "sha256": by_dest[str(t.dest)].sha256, "package": t.package,
                     "version": versions.get(t.package, "unknown")}
            for t in tools
        },
        "libraries": {"/" + f.dest: f.sha256 for f in inputs.files
                      if f.dest not in {str(t.dest) for t in tools}},
        "packages": versions,
        "load_helper": {"image_path": "/" + LOAD_PATH, "compiler": f"gcc {compiler}",
                        "source_sha256": hashlib.sha256(inputs.load_source).hexdigest()},
        "kernel_modules": None if inputs.modules is None else {
            "release": inputs.modules.release, "modules_tar_sha256": inputs.modules.sha256,
            "load_order": modules,
        },
        "contents": {"/" + e.name: len(e.payload()) if e.source is None else e.source.stat().st_size
                     for e in entries if stat.S_ISREG(e.mode)},
        "archive": {"members": len(entries), "uncompressed_bytes": uncompressed,
                    "compressed_bytes": initrd.stat().st_size,
                    "format": "newc" if GZIP_LEVEL is None else "newc+gzip"},
        "build_seconds": round(time.time() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    progress.done(f"built {final / INITRD_NAME} ({initrd.stat().st_size / 1e6:.1f} MB, {len(entries)} members)")
    return Built((INITRD_NAME, LOAD_NAME), manifest)


def image_for_kernel(bzimage: Path | None, cache: Cache | None = None,
                     tools: Sequence[Tool] = TOOLS) -> GuestImage:
    """The image to boot ``bzimage`` with (what ``--kernel`` gives the CLI).

    None or a kernel with the drivers built in (pveoi's own) gets the
    default image; a fetched kernel whose cache entry holds ``modules.tar``
    gets an image with its virtio modules and their dependencies. A kernel
    with neither is refused here, before any boot, naming the drivers it
    lacks (see :func:`e2e.build.modules.missing_builtin_drivers` for how
    that is read).

    :raises ConfigError: ``bzimage`` is not a bzImage, its cache entry is
        damaged, or it lacks virtio drivers; one line naming the fix.
    """
    if bzimage is None:
        return build_image(cache=cache, tools=tools)
    read_setup_header(bzimage)  # what check_kernel_file does, without hashing the entry twice
    entry = entry_of(bzimage)
    if entry is not None and kernel_modules(entry) is not None:
        return build_image(entry, cache, tools=tools)
    check = missing_builtin_drivers(bzimage, entry.file("config") if entry is not None else None)
    if check.missing:
        raise ConfigError(
            f"kernel {bzimage} lacks {', '.join(check.missing)}: not built in (read from {check.evidence}) and "
            "it has no modules in the cache",
            fix="build it with them =y, or for Debian's kernel use the bzImage `pveoi kernel fetch --debian` "
                "prints (it brings its modules), or omit --kernel")
    return build_image(entry, cache, tools=tools)


def load_image(path: Path) -> GuestImage:
    """An already built image entry (``pveoi image build --json``'s ``path``), used as is.

    Verifies the entry like a cache hit does and needs nothing writable, so it
    serves inside the virtual KVM host, where the cache is read-only.

    :raises ConfigError: ``path`` is missing, a file (the initramfs itself, say), not a pveoi image
        entry (a kernel entry, any other directory), or a damaged one (it is left in place: the
        error names it and the fix); one line.
    """
    path = path.expanduser().absolute()
    fix = "pass the path `pveoi image build --json` prints, or omit --image"
    if not path.exists():
        raise ConfigError(f"image {path} not found", fix=fix)
    if not path.is_dir():
        inside = path.parent.parent.name == IMAGE_KIND and (path.parent / MANIFEST).is_file()
        raise ConfigError(f"{path} is a file, not a pveoi image entry (a directory)",
                          fix=f"pass its directory {path.parent}" if inside else fix)
    if path.parent.name != IMAGE_KIND or not (path / MANIFEST).is_file():
        raise ConfigError(f"{path} is not a pveoi image entry", fix=fix)
    manifest, problem = entry_problem(path)
    if problem is not None or manifest is None:
        raise corrupt_entry_error(path, problem or "no manifest", "pveoi image build --force")
    if manifest.get("kind") != "initramfs" or INITRD_NAME not in manifest.get("files", {}):
        raise ConfigError(f"{path} is not a pveoi image entry (its manifest is of kind {manifest.get('kind')!r})",
                          fix=fix)
    entry = CacheEntry(IMAGE_KIND, path.name, path, manifest)
    return _guest_image(entry, ssh_identity(Cache(root=path.parent.parent)))


def guest_image(kernel: Path | None, image: Path | None = None, tools: Sequence[Tool] = TOOLS) -> GuestImage:
    """The image the CLI boots ``--kernel`` with: ``--image DIR`` as is, else :func:`image_for_kernel`.

    A given image must carry the modules of a fetched kernel that needs them
    (read from the two manifests, without hashing: both are checked on load).

    :raises ConfigError: a bad kernel or image (see :func:`image_for_kernel`, :func:`load_image`), or an
        image without the kernel's modules.
    """
    if image is None:
        return image_for_kernel(kernel, tools=tools)
    img = load_image(image)
    release = _modules_release(kernel) if kernel is not None else None
    mods = img.manifest.get("kernel_modules") or {}
    if release is not None and mods.get("release") != release:
        raise ConfigError(f"image {img.path} has no modules for kernel {release} ({kernel})",
                          fix="omit --image (pveoi builds the image for this kernel), or pass the one built for it")
    return img


def _modules_release(bzimage: Path) -> str | None:
    """The release of the modules in the kernel entry ``bzimage`` lies in; None if it has none."""
    try:
        manifest = json.loads((bzimage.expanduser().resolve().parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or "modules.tar" not in (manifest.get("files") or {}):
        return None
    return str(manifest.get("release") or "") or None


def _guest_image(entry: CacheEntry, identity: SshIdentity) -> GuestImage:
    manifest = entry.manifest
    if manifest.get("client_key_line") != identity.public_line:
        raise BuildError(f"image {entry.path} carries another client key",
                         fix="rebuild it with pveoi image build --force")
    helper = entry.path / LOAD_NAME
    return GuestImage(entry.path / INITRD_NAME, str(manifest["host_key_line"]), identity, manifest,
                      entry.path, helper if helper.is_file() else None)
