"""
Guest and host kernels: build from source (Debian's linux-source-<base> or the
user's tree) plus the base's series in ``guest_patches/<base>/``, or fetch
prebuilt (Debian's package, a path, a URL with sha256). Results are cached by
content hash with a manifest.

A *base* is a kernel line pveoi ships a guest series for (:data:`BASES`: 6.1
and 6.12). Debian's source of a base is ``/usr/src/linux-source-<base>.tar.xz``;
a user's tree gets the series of the newest base not above its version.

Builds are always out of tree (``O=``) and never touch the user's tree: a
series of patches is applied to a private copy, so a patch that fails to apply
leaves the original as it was. The ``O=`` directory and the private copy
persist per (source path, flavour, config) and the compiler runs under
ccache, so a rebuild after a small change recompiles only what changed
(:mod:`e2e.build.kbuild`); the content-hash cache still decides what is built.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BuildError, CommandError, ConfigError
from ..util import command
from ..util.progress import Progress
from ..util.tmpdirs import tempdir
from . import kbuild
from .bzimage import read_setup_header
from .cache import (
    MANIFEST,
    Built,
    Cache,
    CacheEntry,
    content_hash,
    corrupt_entry_error,
    entry_problem,
    sha256_file,
    sha256_tree,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
FLAVOURS = ("guest", "host")
KERNEL_KIND = "kernels"
SCHEMA = 1

_CONFIG_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_CONFIG_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


# ---------------------------------------------------------------- config


def parse_config_fragment(text: str, origin: str = "<fragment>") -> dict[str, str]:
    """Parse a Kconfig fragment into ``{symbol: value}`` (``"n"`` for "is not set").

    :raises ConfigError: on a line that is neither an assignment, an unset
        marker, a comment nor blank (e.g. ``CONFIG_MODULES=n`` is accepted,
        ``MODULES=y`` is not).
    """
    options: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if m := _CONFIG_SET.match(line):
            options[m.group(1)] = m.group(2)
        elif m := _CONFIG_UNSET.match(line):
            options[m.group(1)] = "n"
        elif line.startswith("#"):
            continue
        else:
            raise ConfigError(
                f"{origin}:{lineno}: not a Kconfig line: {line!r}",
                fix="write CONFIG_FOO=y or '# CONFIG_FOO is not set'",
            )
    return options


def merge_fragments(fragments: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """Merge fragments in order; a later fragment overrides an earlier one."""
    merged: dict[str, str] = {}
    for frag in fragments:
        merged.update(frag)
    return merged


def render_fragment(options: Mapping[str, str]) -> str:
    """Render options back to Kconfig syntax, sorted for stable hashing."""
    lines = []
    for sym in sorted(options):
        val = options[sym]
        lines.append(f"# {sym} is not set" if val == "n" else f"{sym}={val}")
    return "\n".join(lines) + "\n"


def missing_options(requested: Mapping[str, str], final: Mapping[str, str]) -> list[str]:
    """Options whose final value differs from the requested one.

    A requested ``n`` is satisfied by absence; quoting of strings is ignored.
    """
    dropped = []
    for sym, want in requested.items():
        have = final.get(sym, "n")
        if want.strip('"') != have.strip('"'):
            dropped.append(f"{sym}={want} (got {have})")
    return dropped


def flavour_fragments(flavour: str) -> list[Path]:
    """The repo's config fragments for a flavour, in merge order."""
    if flavour not in FLAVOURS:
        raise ConfigError(f"unknown kernel flavour {flavour!r}", fix="use 'guest' or 'host'")
    frags = [REPO_ROOT / "images" / "kernel" / "guest.config"]
    if flavour == "host":
        frags.append(REPO_ROOT / "images" / "kernel" / "host.config")
    return frags


# ---------------------------------------------------------------- bases


@dataclass(frozen=True)
class Base:
    """A kernel line pveoi ships a guest series for, with Debian's source package of it.

    :param name: ``"6.1"``, ``"6.12"``: what ``--base`` and ``kernel = { base = ... }`` take.
    :param apt: how to install its source (the suite it comes from).
    """

    name: str
    apt: str

    @property
    def version(self) -> tuple[int, int]:
        major, minor = self.name.split(".")
        return int(major), int(minor)

    @property
    def package(self) -> str:
        return f"linux-source-{self.name}"

    @property
    def tarball(self) -> Path:
        return Path("/usr/src") / f"{self.package}.tar.xz"

    @property
    def series_dir(self) -> Path:
        """pveoi's guest series for this base."""
        return REPO_ROOT / "guest_patches" / self.name


#: The bases, oldest first. 6.1: Debian 12's own kernel line, the base every soak so far ran on;
#: 6.12: the current LTS (bookworm-backports), whose APIC callbacks changed (apic_update_callback).
BASES: dict[str, Base] = {
    "6.1": Base("6.1", "apt-get install linux-source-6.1"),
    "6.12": Base("6.12", "apt-get install -t bookworm-backports linux-source-6.12"),
}
#: The base of the quick start (why: README.md, "Kernel bases and QEMU").
DEFAULT_BASE = "6.1"

_VERSION_LINE = re.compile(r"^(VERSION|PATCHLEVEL|SUBLEVEL)\s*=\s*(\d*)\s*$", re.M)


def base_named(name: str | None) -> Base:
    """The base called ``name`` (None: :data:`DEFAULT_BASE`).

    :raises ConfigError: for a base pveoi has no series for, naming the ones it has.
    """
    name = DEFAULT_BASE if name is None else str(name).strip()
    if name not in BASES:
        raise ConfigError(f"unknown kernel base {name!r}: pveoi has series for {', '.join(BASES)}",
                          fix=f"pass --base {' or --base '.join(BASES)}, or your own series with --patches DIR")
    return BASES[name]


def tree_version(tree: Path) -> str:
    """``VERSION.PATCHLEVEL.SUBLEVEL`` of a source tree, from its top Makefile (what ``make
    kernelversion`` prints, less EXTRAVERSION; reading three lines costs no make start-up).

    :raises ConfigError: if the Makefile has no version.
    """
    try:
        head = (tree / "Makefile").read_text(errors="replace")[:4096]
    except OSError as err:
        raise ConfigError(f"cannot read {tree / 'Makefile'}: {err.strerror}", fix="pass a Linux source tree") from err
    fields = {k: v for k, v in _VERSION_LINE.findall(head)}
    if not fields.get("VERSION") or not fields.get("PATCHLEVEL"):
        raise ConfigError(f"{tree / 'Makefile'} names no kernel version", fix="pass a Linux source tree")
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields.get('SUBLEVEL') or 0}"


def base_for_version(version: str) -> Base:
    """The newest base not above ``version`` (``"6.13.2"`` -> 6.12).

    :raises ConfigError: for a kernel older than every base.
    """
    try:
        have = tuple(int(x) for x in version.split(".")[:2])
    except ValueError as err:
        raise ConfigError(f"cannot read kernel version {version!r}", fix="pass a Linux source tree") from err
    fitting = [b for b in BASES.values() if b.version <= have]
    if not fitting:
        raise ConfigError(f"Linux {version} is older than every base pveoi has a series for ({', '.join(BASES)})",
                          fix="pass your own series with --patches DIR, or --no-patches (loose agreement)")
    return max(fitting, key=lambda b: b.version)


# ---------------------------------------------------------------- patches


@dataclass(frozen=True)
class Patch:
    name: str
    path: Path


def parse_series(text: str) -> list[str]:
    """Patch names from a quilt ``series`` file (comments, blanks and ``-p`` opts dropped).

    :raises ConfigError: on a patch option other than ``-p1``.
    """
    names = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        for opt in parts[1:]:
            if opt != "-p1":
                raise ConfigError(f"series: unsupported option {opt!r} for {parts[0]}", fix="use -p1 patches")
        names.append(parts[0])
    return names


def load_series(directory: Path) -> list[Patch]:
    """Read ``directory/series`` and check every patch exists.

    :raises ConfigError: if the series or a listed patch is missing.
    """
    series = directory / "series"
    if not series.is_file():
        raise ConfigError(f"no series file in {directory}", fix="list the patches, one per line, in series")
    patches = []
    for name in parse_series(series.read_text()):
        path = directory / name
        if not path.is_file():
            raise ConfigError(f"series names {name}, which is not in {directory}", fix="add it or drop it from series")
        patches.append(Patch(name, path))
    return patches


def apply_patches(tree: Path, patches: Sequence[Patch], what: str | None = None) -> None:
    """Apply ``patches`` in order to ``tree`` (a private copy).

    :param what: the series when it is pveoi's own (e.g. "pveoi's 6.12 series"): then the
        error names it and the ways out, not a rebase of pveoi's patch.
    :raises BuildError: naming the first patch that fails and its failing hunk.
    """
    for patch in patches:
        proc = subprocess.run(
            ["patch", "-p1", "--fuzz=0", "--forward", "--batch", "--no-backup-if-mismatch", "-r", "-", "-i",
             str(patch.path)],
            cwd=tree, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).splitlines()
            failed = [ln for ln in out if "FAILED" in ln or "malformed" in ln or "can't find file" in ln.lower()
                      or "Reversed" in ln]
            current = next((ln for ln in reversed(out) if ln.startswith("patching file")), "")
            detail = "; ".join(([current] if current else []) + failed[:3]) or (out[-1] if out else "no output")
            if what is not None:
                raise BuildError(f"{what} does not apply to this tree: {patch.name}: {detail}",
                                 fix="pass your own series with --patches DIR (or kernel = { source, patches }), "
                                     "or --no-patches to build without pveoi's patches (loose agreement)")
            raise BuildError(
                f"patch {patch.name} does not apply: {detail}",
                fix=f"rebase {patch.path} onto this kernel tree or drop it from the series",
            )


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class KernelSource:
    """Where a kernel comes from: Debian's linux-source tarball or a user tree."""

    kind: str  # "debian" or "tree"
    path: Path
    #: Debian's source: the base it is of (a tree's base comes from its version).
    base: str | None = None

    @classmethod
    def debian(cls, base: str | None = None) -> KernelSource:
        """Debian's ``linux-source-<base>`` (default :data:`DEFAULT_BASE`).

        :raises ConfigError: unknown base, or its package is not installed.
        """
        b = base_named(base)
        if not b.tarball.is_file():
            raise ConfigError(f"{b.tarball} not found",
                              fix=f"{b.apt} (host_config/install-deps.sh installs both), or pass --source DIR")
        return cls("debian", b.tarball, b.name)

    @classmethod
    def tree(cls, path: Path) -> KernelSource:
        path = path.expanduser().absolute()
        if not (path / "Makefile").is_file() or not (path / "arch" / "x86").is_dir():
            raise ConfigError(f"{path} is not a Linux source tree", fix="pass --source pointing at a kernel checkout")
        return cls("tree", path)

    def identity(self) -> str:
        """A string that changes whenever the source's content does."""
        if self.kind == "debian":
            st = self.path.stat()
            package = base_named(self.base).package
            version = _dpkg_version(package)
            return f"debian:{package}={version}:{st.st_size}:{int(st.st_mtime)}"
        git = shutil.which("git")
        if git and (self.path / ".git").exists():
            fix = f"repair the git tree {self.path}, or pass a tree without .git"
            head = command.run([git, "-C", str(self.path), "rev-parse", "HEAD"], fix=fix).stdout.strip()
            diff = command.run([git, "-C", str(self.path), "diff", "HEAD"], fix=fix).stdout
            untracked = command.run([git, "-C", str(self.path), "status", "--porcelain", "--untracked-files=normal"],
                                    fix=fix).stdout
            return f"git:{head}:{content_hash([diff, untracked])}"
        # No git: hash names, sizes and mtimes of the sources (stat only, ~0.5 s).
        parts = []
        for root, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.endswith((".c", ".h", ".S", "Makefile", "Kconfig", ".lds")):
                    st = os.stat(os.path.join(root, name))
                    parts.append(f"{os.path.join(root, name)}:{st.st_size}:{st.st_mtime_ns}")
        return f"tree:{self.path}:{content_hash(parts)}"

    def unpacked(self, workdir: Path) -> Path:
        """The source as a directory: Debian's tarball unpacked into ``workdir``, or the user's tree itself
        (which is only read; patches go to the private copy of :mod:`e2e.build.kbuild`).

        :raises BuildError: if the tarball cannot be unpacked.
        """
        if self.kind == "debian":
            command.run(["tar", "-xJf", str(self.path), "-C", str(workdir)], what="unpacking linux-source",
                        fix="check the disk has room, or reinstall the linux-source package")
            return workdir / base_named(self.base).package
        return self.path


def _dpkg_version(package: str) -> str:
    try:
        return command.run(["dpkg-query", "-W", "-f=${Version}", package], timeout=60).stdout.strip() or "unknown"
    except CommandError:
        return "unknown"


# ---------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildSpec:
    """What to build; its :meth:`key` is the cache key."""

    source: KernelSource
    flavour: str = "guest"
    patches: tuple[Patch, ...] = ()
    fragments: tuple[Path, ...] = ()
    jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    #: The kernel base (recorded in the manifest; the source and patches already make the key).
    base: str | None = None
    #: "pveoi's <base> series" when ``patches`` is pveoi's own, for the error of a series that does not apply.
    series: str | None = None

    def requested_options(self) -> dict[str, str]:
        frags = []
        for path in (*flavour_fragments(self.flavour), *self.fragments):
            if not path.is_file():
                raise ConfigError(f"config fragment {path} not found", fix="pass an existing file to --config")
            frags.append(parse_config_fragment(path.read_text(), str(path)))
        return merge_fragments(frags)

    def key(self, identity: str | None = None, requested: Mapping[str, str] | None = None) -> str:
        """The cache key; pass ``identity``/``requested`` if already computed (a git tree's
        identity runs ``git diff``)."""
        identity = identity if identity is not None else self.source.identity()
        requested = requested if requested is not None else self.requested_options()
        parts: list[str | bytes] = [f"schema={SCHEMA}", f"flavour={self.flavour}", identity,
                                    render_fragment(requested)]
        for p in self.patches:
            parts += [p.name, p.path.read_bytes()]
        return content_hash(parts)[:24]


def make_argv(tree: Path, builddir: Path, targets: Sequence[str], jobs: int = 1, cc: str | None = None) -> list[str]:
    """``make`` command line for an out-of-tree build (pure).

    :param cc: the C compiler (``CC=``), e.g. ``ccache gcc``; None for the kernel's default.
    """
    return ["make", "-C", str(tree), f"O={builddir}", f"-j{jobs}", *([f"CC={cc}"] if cc else []), *targets]


def read_config(path: Path) -> dict[str, str]:
    opts: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if m := _CONFIG_SET.match(line):
            opts[m.group(1)] = m.group(2)
    return opts


def _make_logged(argv: Sequence[str], logfile: Path, progress: Progress, what: str,
                 extra_env: Mapping[str, str] | None = None) -> None:
    """Run make, appending to ``logfile`` and reporting progress per compiled object."""
    objects = 0
    env = dict(os.environ, LC_ALL="C", KBUILD_BUILD_TIMESTAMP="pveoi", KBUILD_BUILD_USER="pveoi",
               KBUILD_BUILD_HOST="pveoi", **(extra_env or {}))
    with open(logfile, "a") as logf:
        logf.write(f"$ {' '.join(argv)}\n")
        logf.flush()
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                stripped = line.strip()
                if stripped.startswith(("CC ", "AS ", "LD ", "AR ")):
                    objects += 1
                    progress.update(f"{what}: {objects} objects, now {stripped.split()[-1]}")
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        raise BuildError(f"{what} failed (make exit {rc})", fix="read the log for the first error", log=str(logfile))


def build_kernel(spec: BuildSpec, cache: Cache | None = None, force: bool = False) -> CacheEntry:
    """Build (or find in the cache) the kernel ``spec`` describes.

    :returns: the cache entry holding ``bzImage``, ``config``, ``build.log``
        and ``manifest.json``.
    :raises BuildError: if a patch fails, a requested option is dropped or
        make fails (the log is kept and named).
    """
    cache = cache or Cache()
    requested = spec.requested_options()
    identity = spec.source.identity()
    key = spec.key(identity, requested)
    final = cache.entry_path(KERNEL_KIND, key)

    def build(staged: Path) -> Built:
        progress = Progress(f"kernel build {spec.flavour}")
        started = time.time()
        logfile = staged / "build.log"
        with tempdir("kbuild") as work:
            try:
                return _build_into(spec, cache, key, identity, requested, Path(work), staged, logfile,
                                   progress, started, final)
            except BuildError as err:
                kept = cache.root / "logs" / f"kernel-{key}-{int(started)}.log"
                kept.parent.mkdir(parents=True, exist_ok=True)
                if logfile.exists():
                    shutil.copy(logfile, kept)
                    err.log = str(kept)
                raise

    return cache.get_or_build(KERNEL_KIND, key, build, force=force)


def _build_into(
    spec: BuildSpec, cache: Cache, key: str, identity: str, requested: Mapping[str, str], work: Path,
    staged: Path, logfile: Path, progress: Progress, started: float, final: Path,
) -> Built:
    fragment = render_fragment(requested)
    comp = kbuild.compiler(cache.root)
    with kbuild.build_tree(cache, kbuild.tree_key(spec.source.kind, spec.source.path, spec.flavour, fragment),
                           spec.source.path) as bt:
        reused = bt.reused()
        tree = _source_tree(spec, identity, bt, work, progress)
        builddir = bt.out
        before = kbuild.ccache_stats(comp)
        with kbuild.making(bt):
            progress.update("configuring: tinyconfig + kvm_guest.config + fragments", force=True)
            _make_logged(make_argv(tree, builddir, ["tinyconfig"], cc=comp.cc), logfile, progress, "tinyconfig",
                         comp.env)
            merged = staged / "fragment.config"
            merged.write_text(fragment)
            frags = [tree / "kernel" / "configs" / "kvm_guest.config", merged]
            command.run([str(tree / "scripts" / "kconfig" / "merge_config.sh"), "-m", "-O", str(builddir),
                         str(builddir / ".config"), *map(str, frags)], what="merge_config.sh", cwd=tree)
            _make_logged(make_argv(tree, builddir, ["olddefconfig"], cc=comp.cc), logfile, progress, "olddefconfig",
                         comp.env)
            configured = read_config(builddir / ".config")
            dropped = missing_options(requested, configured)
            if dropped:
                raise BuildError(
                    f"this tree dropped {len(dropped)} requested option(s): {', '.join(dropped)}",
                    fix="remove them from the fragment or enable their dependencies", log=str(logfile),
                )
            progress.update(f"building bzImage with -j{spec.jobs}"
                            f"{' (incremental)' if reused else ''}{' with ccache' if comp.uses_ccache else ''}",
                            force=True)
            _make_logged(make_argv(tree, builddir, ["bzImage"], spec.jobs, comp.cc), logfile, progress,
                         "make bzImage", comp.env)
            release = command.run(["make", "-s", "-C", str(tree), f"O={builddir}", "kernelrelease"],
                                  what="make kernelrelease").stdout.strip().splitlines()[-1]
            version = tree_version(tree)
        shutil.copy(builddir / "arch" / "x86" / "boot" / "bzImage", staged / "bzImage")
        shutil.copy(builddir / ".config", staged / "config")
        after = kbuild.ccache_stats(comp)
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "build",
        "hash": key,
        "flavour": spec.flavour,
        "base": spec.base,
        "version": version,
        "release": release,
        "source": {"kind": spec.source.kind, "path": str(spec.source.path), "identity": identity},
        "patches": [{"name": p.name, "sha256": sha256_file(p.path)} for p in spec.patches],
        "config": dict(sorted(requested.items())),
        "build_seconds": round(time.time() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "incremental": {"build_dir": str(builddir), "reused": reused, "ccache": comp.uses_ccache,
                        **{k: after[k] - before.get(k, 0) for k in after}},
    }
    progress.done(f"built {release} ({final / 'bzImage'})")
    return Built(("bzImage", "config", "fragment.config", "build.log"), manifest)


def _source_tree(spec: BuildSpec, identity: str, bt: kbuild.BuildTree, work: Path, progress: Progress) -> Path:
    """The tree make builds from: the user's own (read only: ``O=`` builds write nothing there) when no
    patch applies, else the persistent private copy, synced and patched unless it already holds this
    source with these patches."""
    if spec.source.kind == "tree" and not spec.patches:
        return spec.source.path
    stamp = content_hash([identity, *(part for p in spec.patches for part in (p.name, p.path.read_bytes()))])
    if bt.src_holds(stamp):
        progress.update(f"source unchanged in {bt.src}", force=True)
        return bt.src
    bt.stamp.unlink(missing_ok=True)
    if spec.source.kind == "debian" and not bt.src.exists():
        progress.update(f"unpacking {spec.source.path} into {bt.src}", force=True)
        shutil.rmtree(bt.out, ignore_errors=True)  # objects of another copy: rebuild them all
        bt.out.mkdir()
        shutil.rmtree(bt.root / base_named(spec.source.base).package, ignore_errors=True)  # a killed unpack's
        spec.source.unpacked(bt.root).rename(bt.src)
    else:
        progress.update(f"syncing the source ({spec.source.kind}: {spec.source.path}) into {bt.src}", force=True)
        origin = spec.source.unpacked(work)
        written = kbuild.sync_tree(origin, bt.src)
        log.info("synced %d changed files into %s", len(written), bt.src)
    if spec.patches:
        progress.update(f"applying {len(spec.patches)} patches", force=True)
        apply_patches(bt.src, spec.patches, spec.series)
    bt.stamp.write_text(stamp)
    return bt.src


def default_spec(flavour: str = "guest", source: Path | None = None, patches_dir: Path | None = None,
                 fragments: Sequence[Path] = (), jobs: int | None = None,
                 with_patches: bool | None = None, base: str | None = None) -> BuildSpec:
    """The spec pveoi uses unless told otherwise.

    :param base: Debian's source of this base (default :data:`DEFAULT_BASE`); with ``source``, the
        series to use instead of the one the tree's version picks.
    Guest kernels get the base's series (``guest_patches/<base>/``) by default; host kernels get none.

    :raises ConfigError: unknown base, a tree older than every base, a missing source package.
    """
    if source:
        src = KernelSource.tree(source)
        b = base_named(base) if base is not None else base_for_version(tree_version(src.path))
    else:
        src = KernelSource.debian(base)
        b = base_named(base)
    if with_patches is None:
        with_patches = flavour == "guest" or patches_dir is not None
    patches: tuple[Patch, ...] = ()
    if with_patches:
        patches = tuple(load_series(patches_dir or b.series_dir))
    series = f"pveoi's {b.name} series" if with_patches and patches_dir is None else None
    return BuildSpec(src, flavour, patches, tuple(fragments), jobs or os.cpu_count() or 2, b.name, series)


# ---------------------------------------------------------------- fetch


def fetch_path(path: Path, cache: Cache | None = None) -> CacheEntry:
    """Put a local bzImage into the cache.

    :raises ConfigError: if ``path`` is not a kernel image.
    """
    cache = cache or Cache()
    path = path.expanduser().absolute()
    if not path.is_file():
        raise ConfigError(f"kernel {path} not found", fix="pass the path of a bzImage/vmlinuz")
    read_setup_header(path)
    digest = sha256_file(path)
    key = f"file-{digest[:24]}"
    return _publish_file(cache, key, path, {"kind": "path", "origin": str(path), "sha256": digest})


def fetch_url(url: str, sha256: str, cache: Cache | None = None) -> CacheEntry:
    """Download a kernel image, verify its sha256, cache it.

    :raises ConfigError: if the digest does not match or the download fails.
    """
    cache = cache or Cache()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256 or ""):
        raise ConfigError("a URL kernel needs --sha256 with 64 hex digits", fix="pass --sha256 of the image")
    key = f"url-{sha256.lower()[:24]}"
    if hit := cache.lookup(KERNEL_KIND, key):
        return hit
    if os.environ.get("PVEOI_NO_DOWNLOAD"):
        raise ConfigError(f"{url} is not cached and PVEOI_NO_DOWNLOAD is set", fix="unset it or fetch online once")
    with tempdir("fetch") as tmp:
        target = Path(tmp) / "download"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(target, "xb") as out:
                shutil.copyfileobj(resp, out)
        except OSError as err:
            raise ConfigError(f"download of {url} failed: {err}", fix="check the URL and the network") from err
        got = sha256_file(target)
        if got != sha256.lower():
            raise ConfigError(f"{url} has sha256 {got}, expected {sha256.lower()}", fix="check --sha256 or the URL")
        read_setup_header(target)
        return _publish_file(cache, key, target, {"kind": "url", "origin": url, "sha256": got})


def _publish_file(cache: Cache, key: str, src: Path, origin: Mapping[str, Any]) -> CacheEntry:
    def build(staged: Path) -> Built:
        shutil.copy(src, staged / "bzImage")
        manifest = {"schema": SCHEMA, "kind": "fetch", "hash": key, "flavour": "guest",
                    "release": read_setup_header(staged / "bzImage").release, "source": dict(origin),
                    "patches": [], "config": {}}
        return Built(("bzImage",), manifest)

    return cache.get_or_build(KERNEL_KIND, key, build)


def fetch_debian(package: str | None = None, cache: Cache | None = None) -> CacheEntry:
    """Download Debian's packaged kernel with apt, extract bzImage and modules, cache them.

    :param package: e.g. ``linux-image-6.1.0-27-cloud-amd64``; default: what
        ``linux-image-cloud-amd64`` depends on.
    :raises ConfigError: if apt cannot find or download the package.
    """
    cache = cache or Cache()
    package = package if package is not None else _resolve_meta("linux-image-cloud-amd64")
    with tempdir("apt") as tmp:
        proc = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True, check=False)
        debs = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not debs:
            raise ConfigError(f"apt-get download {package} failed: {proc.stderr.strip()[-200:]}",
                              fix="run apt-get update, or name an available package with --package")
        deb = debs[0]
        digest = sha256_file(deb)
        key = f"deb-{digest[:24]}"

        def build(staged: Path) -> Built:
            root = Path(tmp) / "root"
            command.run(["dpkg-deb", "-x", str(deb), str(root)], what="dpkg-deb -x")
            vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
            if not vmlinuz:
                raise ConfigError(f"{package} holds no /boot/vmlinuz-*", fix="pick a linux-image-* package")
            release = vmlinuz[0].name.removeprefix("vmlinuz-")
            shutil.copy(vmlinuz[0], staged / "bzImage")
            files = ["bzImage"]
            mods = root / "lib" / "modules" / release
            if mods.is_dir():
                command.run(["tar", "-cf", str(staged / "modules.tar"), "-C", str(root / "lib" / "modules"),
                             release], what="packing the modules")
                files.append("modules.tar")
            config = root / "boot" / f"config-{release}"
            if config.is_file():
                shutil.copy(config, staged / "config")
                files.append("config")
            manifest = {"schema": SCHEMA, "kind": "debian", "hash": key, "flavour": "guest", "release": release,
                        "source": {"kind": "debian-package", "package": package, "deb_sha256": digest,
                                   "modules_tree": sha256_tree(mods) if mods.is_dir() else None},
                        "patches": [], "config": {}}
            return Built(tuple(files), manifest)

        return cache.get_or_build(KERNEL_KIND, key, build)


def _resolve_meta(meta: str) -> str:
    out = subprocess.run(["apt-cache", "depends", meta], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        dep = line.strip().removeprefix("Depends: ")
        if dep.startswith("linux-image-") and dep != meta:
            return dep
    raise ConfigError(f"cannot resolve {meta} to a kernel package", fix="run apt-get update or pass --package")


def entry_of(bzimage: Path) -> CacheEntry | None:
    """The kernel cache entry ``bzimage`` lives in (verified), or None for a kernel of the user's own.

    A fetched Debian kernel's entry also holds its ``modules.tar`` and
    ``config``; a pveoi build's holds its ``config``.

    :raises ConfigError: the file lies in a kernel cache entry that is damaged (named, with the fix).
    """
    path = bzimage.expanduser().resolve()
    directory = path.parent
    if directory.parent.name != KERNEL_KIND or not (directory / MANIFEST).is_file():
        return None
    manifest, problem = entry_problem(directory)
    if problem is not None or manifest is None:
        raise corrupt_entry_error(directory, problem or "no manifest", "pveoi kernel build --force, or fetch it again")
    if path.name not in manifest.get("files", {}):
        return None
    return CacheEntry(KERNEL_KIND, directory.name, directory, manifest)


def check_kernel_file(path: Path) -> Path:
    """A kernel file the user named (``--kernel``): a bzImage, and an intact cache entry if it lies in one.

    Reads the setup header and the file's size only (the entry's hashes if it
    is in the cache), so a wrong file is refused at once, before any boot.

    :returns: ``path``.
    :raises ConfigError: the file is missing, a directory, not a bzImage (an ELF vmlinux, an empty or
        truncated file, no boot signature or setup header, an insane boot protocol version), or its
        cache entry is damaged; one line naming the fix.
    """
    read_setup_header(path)
    entry_of(path)
    return path


def load_manifest(entry: CacheEntry) -> dict[str, Any]:
    """The manifest without its file list (for reports)."""
    data = json.loads((entry.path / "manifest.json").read_text())
    data.pop("files", None)
    return dict(data)
