"""
Incremental kernel builds: a persistent out-of-tree build directory and a
private source copy per (source, config), plus ccache.

The content-hash cache (:mod:`e2e.build.cache`) stays the source of truth: a build
whose inputs differ gets a new entry. What is reused between such builds is
only work: the ``O=`` directory of the last build of the same source path
and config (so make recompiles only what changed) and ccache's
object cache (``CCACHE_DIR`` under the cache root).

Layout under the cache root::

    kbuild/<tree key>/src        private copy of the source with the patches applied
    kbuild/<tree key>/src.stamp  what src holds (source identity + patches)
    kbuild/<tree key>/src.synced what each source file was when src last took it
    kbuild/<tree key>/src.patched the files the patch series changed in src
    kbuild/<tree key>/out        the O= build directory
    kbuild/<tree key>/state      "building" while make runs; "idle" after
    ccache/                      ccache's directory

The private copy is synced by the source's own stat: each sync records, beside
the copy (``src.synced``), every source file's size, mtime (ns) and mode; the
next one walks the source (stat only, about a second for a kernel tree),
copies what differs from that record (a newer edit, a file reverted to an
older mtime, a new file), removes what is gone, and restores the files the
patch series changed in the copy (``always``) before the series is applied
again. A file written gets the current time, so make rebuilds what it came
from even when the source's own mtime is older than the objects; unchanged
files keep their mtimes and are not rebuilt. The first sync into a copy
(no record yet) is ``rsync --checksum --no-times --delete``. Hand-written
because rsync compares either by content (``--checksum``: it read both sides'
gigabyte on every build, 50 s of a 98 s one-line rebuild here under load) or
by the destination's size and mtime, which must be "now" for make's sake.
A user's tree (``--source DIR``) is only read.

A build killed while make ran (the state still says ``building``) may have
left half-written objects, so the next build of that tree starts from an
empty ``out`` (ccache keeps it fast).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def tree_key(source_kind: str, source_path: Path, config: str) -> str:
    """The persistent tree's key: source *path* (not content) and the rendered config fragment."""
    return content_hash(["kbuild=1", source_kind, str(source_path), config])[:16]


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

    @property
    def patched_record(self) -> Path:
        return self.root / "src.patched"

    def patched(self) -> set[str]:
        """The files a patch series was last applied to in the private copy (:meth:`record_patched`)."""
        try:
            return {line for line in self.patched_record.read_text().splitlines() if line}
        except OSError:
            return set()

    def record_patched(self, paths: Iterable[str]) -> None:
        """Note the files a series is about to change in the private copy: the next sync restores them."""
        atomic_write(self.patched_record, "".join(f"{p}\n" for p in sorted(paths)))

    @property
    def config_record(self) -> Path:
        return self.root / "config.inputs"

    def configured(self, inputs: str) -> bool:
        """Whether ``out`` holds a ``.config`` made from exactly ``inputs`` (:func:`config_inputs`)."""
        try:
            return (self.out / ".config").is_file() and self.config_record.read_text() == inputs
        except OSError:
            return False

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


SYNCED_SUFFIX = ".synced"
"""Beside the private copy (``src.synced``): what each source file was when the copy last took it."""

_Entry = list[Any]  # ["f", size, mtime_ns, mode] | ["l", target] | ["d"]


def source_stats(source: Path, excludes: Sequence[str] = SYNC_EXCLUDES) -> dict[str, _Entry]:
    """Every entry of ``source`` (relative path -> kind and stat; symlinks not followed), leaving out
    what ``excludes`` names (rsync's sense for patterns without a slash: any path component)."""
    out: dict[str, _Entry] = {}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(source / rel_dir) as it:
            for entry in it:
                if any(fnmatch.fnmatchcase(entry.name, pat) for pat in excludes):
                    continue
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_symlink():
                    out[rel] = ["l", os.readlink(entry.path)]
                elif entry.is_dir(follow_symlinks=False):
                    out[rel] = ["d"]
                    stack.append(rel)
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    out[rel] = ["f", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)]
    return out


def sync_tree(source: Path, dest: Path, excludes: Sequence[str] = SYNC_EXCLUDES,
              always: Iterable[str] = ()) -> list[str]:
    """Make ``dest`` a copy of ``source`` (see the module's docstring); every file written gets the
    current time.

    :param always: files to restore to the source's state whatever the record says (the ones a patch
        series changed or created in ``dest``; one the source does not have is removed).
    :returns: the files written (relative paths).
    :raises ConfigError: if rsync is missing (a first sync).
    :raises BuildError: if the source cannot be read, or rsync fails.
    """
    record = dest.with_name(dest.name + SYNCED_SUFFIX)
    old: dict[str, _Entry] | None = None
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(record.read_text())
        if dest.is_dir() and doc.get("source") == str(source) and doc.get("excludes") == list(excludes):
            old = doc["entries"]
    try:
        now = source_stats(source, excludes) if source.is_dir() else {}
    except OSError as err:
        raise BuildError(f"cannot read {source}: {err}", fix=f"check that {source} is readable") from err
    if not source.is_dir() or old is None:
        record.unlink(missing_ok=True)
        written = _rsync(source, dest, excludes)  # by content: it also undoes whatever was done to dest
    else:
        forced = set(always)
        written = []
        for rel, entry in now.items():
            if entry[0] == "d":
                if os.path.lexists(dest / rel) and (not (dest / rel).is_dir() or (dest / rel).is_symlink()):
                    (dest / rel).unlink()  # a file or link that became a directory
                (dest / rel).mkdir(parents=True, exist_ok=True)
            elif old.get(rel) != entry or rel in forced or not os.path.lexists(dest / rel):
                _put(source / rel, dest / rel, entry)
                if entry[0] == "f":
                    written.append(rel)
        for rel in sorted((set(old) | forced) - set(now), reverse=True):  # children before their dirs
            _remove(dest / rel)
    atomic_write(record, json.dumps({"source": str(source), "excludes": list(excludes), "entries": now}))
    return sorted(written)


@functools.cache
def compiler_version() -> str:
    """``gcc --version``'s first line (what Kconfig's compiler probes depend on), or "" without gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return ""
    proc = command.run([gcc, "--version"], check=False)
    return (proc.stdout.splitlines() or [""])[0]


def config_inputs(tree: Path, fragment: str, compiler: str) -> str:
    """What a configured ``.config`` follows from, as one hash: every ``Kconfig*`` file of ``tree`` and the
    config fragments and kconfig tools it ships (by path, size and mtime: a sync rewrites a changed file,
    an edit gives it a new mtime), the top ``Makefile``, pveoi's ``fragment`` and the compiler's version
    (Kconfig probes the compiler). Equal inputs, equal ``.config``: ``tinyconfig``, the merge and
    ``olddefconfig`` (seconds of make on a kernel tree) need not run again."""
    parts: list[str] = ["config-inputs=1", fragment, compiler]
    for root, dirs, files in os.walk(tree):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        rel_root = os.path.relpath(root, tree)
        in_configs = rel_root == "scripts/kconfig" or rel_root.endswith("/configs") or rel_root == "kernel/configs"
        for name in sorted(files):
            if name.startswith("Kconfig") or in_configs or (rel_root == "." and name == "Makefile"):
                st = os.stat(os.path.join(root, name))
                parts.append(f"{rel_root}/{name}:{st.st_size}:{st.st_mtime_ns}")
    return content_hash(parts)


def _put(src: Path, dst: Path, entry: _Entry) -> None:
    """Copy one file or symlink into place (a fresh file: its mtime is now)."""
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.pveoi-sync")
    tmp.unlink(missing_ok=True)
    if entry[0] == "l":
        os.symlink(entry[1], tmp)
    else:
        shutil.copyfile(src, tmp, follow_symlinks=False)
        os.chmod(tmp, entry[3])
    os.replace(tmp, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def _rsync(source: Path, dest: Path, excludes: Sequence[str]) -> list[str]:
    """The first sync: rsync by content (:func:`rsync_argv`)."""
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
    # rewritten relative to it, one object compiled for one tree (another config, another base's
    # copy) is a hit for every other tree whose preprocessed source is the same.
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
