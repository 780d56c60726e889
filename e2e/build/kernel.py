"""
Building a kernel from source (Debian's linux-source-<base> or the user's tree)
plus a base's series in ``guest_patches/<base>/`` (:mod:`e2e.build.bases`), with
pveoi's config fragments (:mod:`e2e.build.kconfig`): one config for the guest
and the virtual host, so pveoi's kernel of a base is one build serving both.
Results are cached by content hash with a manifest (:mod:`e2e.build.kentry`);
prebuilt kernels are :mod:`e2e.build.prebuilt`'s.

Builds are always out of tree (``O=``) and never touch the user's tree: a
series of patches is applied to a private copy, so a patch that fails to apply
leaves the original as it was. The ``O=`` directory and the private copy
persist per (source path, config) and the compiler runs under
ccache, so a rebuild after a small change recompiles only what changed
(:mod:`e2e.build.kbuild`); the content-hash cache still decides what is built.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BuildError, CommandError, ConfigError
from ..util import command
from ..util.progress import Progress
from ..util.tmpdirs import tempdir
from . import kbuild
from .bases import Patch, apply_patches, base_for_version, base_named, load_series, patched_paths, tree_version
from .cache import Built, Cache, CacheEntry, atomic_write, content_hash, sha256_file
from .kconfig import (
    ROLES,
    merge_fragments,
    missing_options,
    parse_config_fragment,
    pveoi_fragments,
    read_config,
    render_fragment,
)
from .kentry import KERNEL_KIND, SCHEMA

log = logging.getLogger(__name__)


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
    patches: tuple[Patch, ...] = ()
    fragments: tuple[Path, ...] = ()
    jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    #: The kernel base (recorded in the manifest; the source and patches already make the key).
    base: str | None = None
    #: "pveoi's <base> series" when ``patches`` is pveoi's own, for the error of a series that does not apply.
    series: str | None = None

    def requested_options(self) -> dict[str, str]:
        frags = []
        for path in (*pveoi_fragments(), *self.fragments):
            if not path.is_file():
                raise ConfigError(f"config fragment {path} not found", fix="pass an existing file to --config")
            frags.append(parse_config_fragment(path.read_text(), str(path)))
        return merge_fragments(frags)

    def key(self, identity: str | None = None, requested: Mapping[str, str] | None = None) -> str:
        """The cache key; pass ``identity``/``requested`` if already computed (a git tree's
        identity runs ``git diff``)."""
        identity = identity if identity is not None else self.source.identity()
        requested = requested if requested is not None else self.requested_options()
        parts: list[str | bytes] = [f"schema={SCHEMA}", identity, render_fragment(requested)]
        for p in self.patches:
            parts += [p.name, p.path.read_bytes()]
        return content_hash(parts)[:24]


def make_argv(tree: Path, builddir: Path, targets: Sequence[str], jobs: int = 1, cc: str | None = None) -> list[str]:
    """``make`` command line for an out-of-tree build (pure).

    :param cc: the C compiler (``CC=``), e.g. ``ccache gcc``; None for the kernel's default.
    """
    return ["make", "-C", str(tree), f"O={builddir}", f"-j{jobs}", *([f"CC={cc}"] if cc else []), *targets]


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

    :returns: the cache entry holding ``bzImage``, ``config``, ``build.log``, ``System.map``
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
        progress = Progress("kernel build")
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
    with kbuild.build_tree(cache, kbuild.tree_key(spec.source.kind, spec.source.path, fragment),
                           spec.source.path) as bt:
        reused = bt.reused()
        marks = {"start": time.monotonic()}  # where a build's time goes (manifest "stages")
        tree = _source_tree(spec, identity, bt, work, progress)
        marks["source"] = time.monotonic()
        builddir = bt.out
        before = kbuild.ccache_stats(comp)
        merged = staged / "fragment.config"
        merged.write_text(fragment)
        inputs = kbuild.config_inputs(tree, fragment, kbuild.compiler_version())
        with kbuild.making(bt):
            if bt.configured(inputs):
                progress.update("config unchanged (same Kconfig files, fragments and compiler)", force=True)
            else:
                bt.config_record.unlink(missing_ok=True)
                progress.update("configuring: tinyconfig + kvm_guest.config + fragments", force=True)
                _make_logged(make_argv(tree, builddir, ["tinyconfig"], cc=comp.cc), logfile, progress, "tinyconfig",
                             comp.env)
                frags = [tree / "kernel" / "configs" / "kvm_guest.config", merged]
                command.run([str(tree / "scripts" / "kconfig" / "merge_config.sh"), "-m", "-O", str(builddir),
                             str(builddir / ".config"), *map(str, frags)], what="merge_config.sh", cwd=tree)
                _make_logged(make_argv(tree, builddir, ["olddefconfig"], cc=comp.cc), logfile, progress,
                             "olddefconfig", comp.env)
                atomic_write(bt.config_record, inputs)
            marks["configure"] = time.monotonic()
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
            marks["make"] = time.monotonic()
            release = command.run(["make", "-s", "-C", str(tree), f"O={builddir}", "kernelrelease"],
                                  what="make kernelrelease").stdout.strip().splitlines()[-1]
            version = tree_version(tree)
        shutil.copy(builddir / "arch" / "x86" / "boot" / "bzImage", staged / "bzImage")
        shutil.copy(builddir / ".config", staged / "config")
        # the symbols, for a triple fault's RIP (e2e.vm.shutdowns) and any address a developer reads
        shutil.copy(builddir / "System.map", staged / "System.map")
        after = kbuild.ccache_stats(comp)
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "build",
        "hash": key,
        "base": spec.base,
        "version": version,
        "release": release,
        "source": {"kind": spec.source.kind, "path": str(spec.source.path), "identity": identity},
        "patches": [{"name": p.name, "sha256": sha256_file(p.path)} for p in spec.patches],
        "config": dict(sorted(requested.items())),
        "build_seconds": round(time.time() - started, 1),
        # the source (sync and patches), configuring (skipped when its inputs are unchanged), make
        "stages": {b: round(marks[b] - marks[a], 1) for a, b in itertools.pairwise(marks)},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "incremental": {"build_dir": str(builddir), "reused": reused, "ccache": comp.uses_ccache,
                        **{k: after[k] - before.get(k, 0) for k in after}},
    }
    progress.done(f"built {release} ({final / 'bzImage'})")
    return Built(("bzImage", "config", "fragment.config", "build.log", "System.map"), manifest)


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
        # the files the last series changed in the copy are restored first, as are this one's
        written = kbuild.sync_tree(origin, bt.src, always=bt.patched() | patched_paths(spec.patches))
        log.info("synced %d changed files into %s", len(written), bt.src)
    if spec.patches:
        progress.update(f"applying {len(spec.patches)} patches", force=True)
        bt.record_patched(patched_paths(spec.patches))  # before they apply: a killed apply is undone next sync
        apply_patches(bt.src, spec.patches, spec.series)
    bt.stamp.write_text(stamp)
    return bt.src


def default_spec(role: str = "guest", source: Path | None = None, patches_dir: Path | None = None,
                 fragments: Sequence[Path] = (), jobs: int | None = None,
                 with_patches: bool | None = None, base: str | None = None) -> BuildSpec:
    """The spec pveoi uses unless told otherwise, for a kernel that runs as ``role`` (``guest`` or
    ``host``, the virtual KVM host).

    :param base: Debian's source of this base (default :data:`DEFAULT_BASE`); with ``source``, the
        series to use instead of the one the tree's version picks.

    The config is the same for both roles. So are the patches of pveoi's own kernel (Debian's source,
    the base's series ``guest_patches/<base>/``): one build serves as guest and as virtual host. A
    guest from your tree gets the series too (its counters and window markers); a host from your tree
    gets none (L1 never uses them, and a KVM tree newer than every base need not take them).
    ``patches_dir`` replaces the series in either role.

    :raises ConfigError: unknown role or base, a tree older than every base, a missing source package.
    """
    if role not in ROLES:
        raise ConfigError(f"unknown kernel role {role!r}", fix="use 'guest' or 'host'")
    if source:
        src = KernelSource.tree(source)
        b = base_named(base) if base is not None else base_for_version(tree_version(src.path))
    else:
        src = KernelSource.debian(base)
        b = base_named(base)
    if with_patches is None:
        with_patches = role == "guest" or patches_dir is not None or source is None
    patches: tuple[Patch, ...] = ()
    if with_patches:
        patches = tuple(load_series(patches_dir or b.series_dir))
    series = f"pveoi's {b.name} series" if with_patches and patches_dir is None else None
    return BuildSpec(src, patches, tuple(fragments), jobs or os.cpu_count() or 2, b.name, series)
