"""
Incremental kernel builds: a persistent out-of-tree build directory and a
private source copy per (source, flavour, config), plus ccache.

The content-hash cache (:mod:`e2e.build.cache`) stays the source of truth: a build
whose inputs differ gets a new entry. What is reused between such builds is
only work: the ``O=`` directory of the last build of the same source path,
flavour and config (so make recompiles only what changed) and ccache's
object cache (``CCACHE_DIR`` under the cache root).

Layout under the cache root::

    kbuild/<tree key>/src        private copy of the source with the patches applied
    kbuild/<tree key>/src.stamp  what src holds (source identity + patches)
    kbuild/<tree key>/out        the O= build directory
    kbuild/<tree key>/state      "building" while make runs; "idle" after
    ccache/                      ccache's directory

The private copy is synced with ``rsync --checksum --no-times --delete``:
files are compared by content, not by size and mtime, and a file rsync
writes gets the current time, so make rebuilds what it came from even when
the source's own mtime is older than the objects (a patch taken out of the
series restores an older file; a file copied with its old mtime). Unchanged
files keep their mtimes and are not rebuilt. (Preserving the source's mtimes
instead would miss those cases, and touching the written files afterwards
would make the next sync's quick check see every one of them as changed.)
Checksumming both sides costs a few seconds on a kernel tree. A user's tree
(``--source DIR``) is only read.

A build killed while make ran (the state still says ``building``) may have
left half-written objects, so the next build of that tree starts from an
empty ``out`` (ccache keeps it fast).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError, ConfigError
from ..util import command
from .cache import Cache, atomic_write, content_hash

log = logging.getLogger(__name__)

TREE_KIND = "kbuild"
CCACHE_NAME = "ccache"
CCACHE_MAXSIZE = "5G"
SYNC_EXCLUDES = (".git", "*.o", "*.cmd")
"""Left out of the private copy: history and the objects of a build made in the user's tree."""
SYNC_TIMEOUT = 3600.0
"""Seconds rsync may take to copy a kernel tree (a first copy of a full tree on a slow disk: minutes)."""


def tree_key(source_kind: str, source_path: Path, flavour: str, config: str) -> str:
    """The persistent tree's key: source *path* (not content), flavour and the rendered config fragment."""
    return content_hash(["kbuild=1", source_kind, str(source_path), flavour, config])[:16]


@dataclass(frozen=True)
class BuildTree:
    """One persistent build tree (see the module's docstring)."""

    root: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def stamp(self) -> Path:
        return self.root / "src.stamp"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def src_holds(self, stamp: str) -> bool:
        """Whether the private copy holds exactly what ``stamp`` names (a finished sync and patching)."""
        try:
            return self.src.is_dir() and self.stamp.read_text() == stamp
        except OSError:
            return False

    def reused(self) -> bool:
        """Whether ``out`` holds a previous build's objects."""
        return (self.out / ".config").is_file()


@contextlib.contextmanager
def build_tree(cache: Cache, key: str, origin: Path | None = None) -> Iterator[BuildTree]:
    """Hold the persistent tree ``key`` (locked: one build at a time), ready to build in.

    :param origin: the source it builds, recorded in the tree (``origin``) so that a prune knows the
        tree is an orphan once that source is gone (a finished bisect's worktree).

    :raises ConfigError: if the cache directory cannot be created.
    """
    with cache.lock(TREE_KIND, key):
        tree = BuildTree(cache.root / TREE_KIND / key)
        tree.root.mkdir(parents=True, exist_ok=True)
        if origin is not None:
            atomic_write(tree.root / "origin", f"{origin}\n")
        if tree.state.is_file() and tree.state.read_text().strip() == "building":
            log.warning("the last build in %s was killed while make ran; starting from an empty %s",
                        tree.root, tree.out)
            shutil.rmtree(tree.out, ignore_errors=True)
        tree.out.mkdir(exist_ok=True)
        yield tree


@contextlib.contextmanager
def making(tree: BuildTree) -> Iterator[None]:
    """Mark ``tree`` as being built while the block runs.

    Leaving by a :class:`BuildError` (make failed: make deletes the targets it
    could not build) marks it idle again; any other exit (an interrupt that
    killed make) leaves ``building`` so the next build starts clean.
    """
    atomic_write(tree.state, "building\n")
    try:
        yield
    except BuildError:
        atomic_write(tree.state, "idle\n")
        raise
    atomic_write(tree.state, "idle\n")


def rsync_argv(source: Path, dest: Path, excludes: Sequence[str] = SYNC_EXCLUDES) -> list[str]:
    """``rsync`` making ``dest`` a copy of ``source`` by content, written files getting the current
    time, listing each change (pure)."""
    return ["rsync", "-a", "--no-times", "--checksum", "--delete", "--itemize-changes", "--out-format=%i %n",
            *(f"--exclude={e}" for e in excludes), f"{source}/", f"{dest}/"]


def written_files(itemized: str) -> list[str]:
    """The regular files an ``rsync --itemize-changes --out-format='%i %n'`` run wrote (``>f...``)."""
    names = []
    for line in itemized.splitlines():
        code, _, name = line.partition(" ")
        if len(code) == 11 and code.startswith(">f") and name:
            names.append(name)
    return names


def sync_tree(source: Path, dest: Path, excludes: Sequence[str] = SYNC_EXCLUDES) -> list[str]:
    """Make ``dest`` a copy of ``source`` (rsync by content); every file written has the current time.

    :returns: the files written (relative paths).
    :raises ConfigError: if rsync is missing.
    :raises BuildError: if rsync fails.
    """
    if shutil.which("rsync") is None:
        raise ConfigError("rsync not found", fix="apt-get install rsync (host_config/install-deps.sh)")
    dest.mkdir(parents=True, exist_ok=True)
    proc = command.run(rsync_argv(source, dest, excludes), timeout=SYNC_TIMEOUT, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise BuildError(f"rsync {source} -> {dest} failed: {tail[0]}", fix=f"check that {source} is readable")
    return written_files(proc.stdout)


@dataclass(frozen=True)
class Compiler:
    """The C compiler make is given, and the environment it needs.

    :param cc: ``CC=`` for make, or None for the kernel's default (gcc).
    """

    cc: str | None
    env: Mapping[str, str]

    @property
    def uses_ccache(self) -> bool:
        return self.cc is not None and self.cc.startswith("ccache ")


def compiler(cache_root: Path) -> Compiler:
    """``ccache gcc`` with ``CCACHE_DIR`` under the cache if ccache is installed, else plain gcc (logged)."""
    if shutil.which("ccache") is None:
        log.warning("ccache not found: kernel builds recompile everything they rebuild "
                    "(apt-get install ccache, host_config/install-deps.sh)")
        return Compiler(None, {})
    # CCACHE_BASEDIR: every build tree is <kbuild>/<key>/{src,out} and make runs in out/, so with paths
    # rewritten relative to it, one object compiled for one tree (the guest flavour, another config,
    # another base's copy) is a hit for every other tree whose preprocessed source is the same.
    return Compiler("ccache gcc", {"CCACHE_DIR": str(cache_root / CCACHE_NAME),
                                   "CCACHE_MAXSIZE": CCACHE_MAXSIZE,
                                   "CCACHE_BASEDIR": str(cache_root / TREE_KIND), "CCACHE_NOHASHDIR": "1"})


def ccache_stats(comp: Compiler) -> dict[str, int]:
    """ccache's hit and miss counters (``ccache --print-stats``), {} without ccache."""
    if not comp.uses_ccache:
        return {}
    proc = command.run(["ccache", "--print-stats"], env=comp.env, check=False)
    stats = {}
    for line in proc.stdout.splitlines():
        name, _, value = line.partition("\t")
        if name in ("direct_cache_hit", "preprocessed_cache_hit", "cache_miss") and value.strip().isdigit():
            stats[name] = int(value)
    return stats
