"""
Content-addressed cache for kernels and images.

An entry lives in ``<root>/<kind>/<key>/`` and is complete only when its
``manifest.json`` exists and every file it lists has the recorded sha256.
Entries are built in a temp dir beside their final place and published with
one ``rename``; a per-key lock serialises concurrent builds of one key, so two
pveoi runs never clash and a half-written entry is never used.

Leftovers of a killed process (SIGKILL, power loss) -- the temp file of an
:func:`atomic_write` (``.<name>.<host tag>.<pid>.XXXX.tmp``) and the staging
dir of a build (``.<key>.<host tag>.<pid>.XXXX.tmp``) -- are removed by the
next write into that directory / the next build of that key, but only when the
name's host tag is this process's (:attr:`e2e.util.hostid.HostIdentity.tag`: host
name plus a hash of host name, boot id and pid namespace) and its pid is not a
live process here (and, if this process cannot read its pid namespace or boot
id, the leftover is older than :data:`e2e.util.hostid.STALE_AGE`). A cache or
history directory shared between hosts or containers is therefore safe: a pid
that is dead here may be alive in another pid namespace, and its writer's
files are never touched from here. Leftovers from before a reboot (another
boot id) and names without a host tag stay; readers ignore ``.*.tmp`` names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, write_error
from ..util.hostid import TAG_PATTERN, TEMP_PATTERN, leftover_of_dead_writer, temp_prefix

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def cache_root() -> Path:
    """Where pveoi keeps kernels, images and keys.

    ``$PVEOI_CACHE`` if set, else ``$XDG_CACHE_HOME/pveoi``, else
    ``~/.cache/pveoi``.
    """
    env = os.environ.get("PVEOI_CACHE")
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "pveoi").absolute()


def sha256_file(path: Path) -> str:
    """sha256 of a file's contents, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: Path) -> str:
    """sha256 over a directory's relative file names and contents (sorted)."""
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode() + b"\0")
        digest.update(sha256_file(item).encode() + b"\0")
    return digest.hexdigest()


def content_hash(parts: Iterable[str | bytes]) -> str:
    """Hash an ordered sequence of strings/bytes unambiguously (length-prefixed)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def remove_dead_temps(directory: Path) -> list[Path]:
    """Remove the temp files of :func:`atomic_write` calls whose process died (SIGKILL mid-write).

    Their names carry the writer's host tag and pid; only those written on this
    host, boot and pid namespace by a process that is gone are removed (see the
    module's docstring), never a live writer's or another host's.
    """
    removed: list[Path] = []
    try:
        candidates = list(directory.glob(".*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        match = TEMP_PATTERN.match(tmp.name)
        if (match and tmp.is_file() and not tmp.is_symlink()
                and leftover_of_dead_writer(match.group(1), int(match.group(2)), tmp)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                log.info("removed %s, left by a writer that was killed", tmp)
                removed.append(tmp)
    return removed


def touch(path: Path) -> None:
    """Mark a cache entry used now (its lock file's mtime, where it has one: :mod:`e2e.build.cachegc` prunes
    the least recently used first); nothing happens where the cache is read-only."""
    try:
        os.utime(path)
    except OSError:
        pass


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters made literal."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new, never half.

    On any failure the temp file is removed and ``path`` is untouched; temp
    files of writers that were killed mid-write are removed first.

    :raises PveoiError: the write failed (disk full, read-only, permissions),
        naming the file, its filesystem and the fix.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(err, OSError):
            raise write_error(path, err) from err
        raise


def entry_problem(path: Path, verify: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """Check a cache entry dir: ``(manifest, None)`` if intact, else ``(None, what is wrong)``.

    :param verify: also check every listed file's sha256.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return None, f"no {MANIFEST} (an unfinished or damaged entry)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError(f"files is a {type(files).__name__}, not a mapping")
    except (ValueError, KeyError, TypeError, OSError) as err:
        return None, f"unreadable {MANIFEST} ({type(err).__name__}: {err})"
    if verify:
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                return None, f"{f} is missing"
            if sha256_file(f) != digest:
                return None, f"{f} is corrupt (its sha256 differs from the manifest's)"
    return manifest, None


def corrupt_entry_error(path: Path, problem: str, rebuild: str) -> ConfigError:
    """The one-line error for a corrupt cache entry the user pointed at."""
    return ConfigError(f"cache entry {path} is damaged: {problem}",
                       fix=f"delete it (rm -r {path}) and rebuild it ({rebuild})")


@dataclass(frozen=True)
class Built:
    """What a build left in its staging dir, for :meth:`Cache.get_or_build` to publish.

    :param files: the entry's files, relative to the staging dir (their sha256 go into the manifest).
    :param manifest: the entry's manifest, without ``files``.
    """

    files: tuple[str, ...]
    manifest: Mapping[str, Any]


@dataclass(frozen=True)
class CacheEntry:
    """A complete, verified cache entry."""

    kind: str
    key: str
    path: Path
    manifest: Mapping[str, Any]

    def file(self, name: str) -> Path:
        """Path of one of the entry's files."""
        return self.path / name


class Cache:
    """The cache under ``root`` (default :func:`cache_root`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else cache_root()
        self._held: set[tuple[str, str]] = set()  # the (kind, key) locks this object holds

    def _kind_dir(self, kind: str) -> Path:
        d = self.root / kind
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot create cache directory {d}: {err.strerror}",
                fix="set PVEOI_CACHE to a writable directory",
            ) from err
        return d

    def entry_path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def lookup(self, kind: str, key: str, verify: bool = True, discard: bool = True) -> CacheEntry | None:
        """Return the entry if complete and intact, else None (a corrupt entry is logged, naming it).

        :param verify: check every file's sha256 against the manifest.
        :param discard: remove a corrupt entry (so the caller rebuilds it); False
            leaves it alone (a read-only cache, or an entry the user named).
        """
        path = self.entry_path(kind, key)
        if not path.exists():
            return None
        manifest, problem = entry_problem(path, verify)
        if problem is not None or manifest is None:
            log.warning("cache entry %s: %s; %s", path, problem,
                        "discarding it (it will be rebuilt)" if discard else "not using it")
            if discard:
                shutil.rmtree(path, ignore_errors=True)
            return None
        touch(self.root / kind / f".{key}.lock")
        return CacheEntry(kind, key, path, manifest)

    @contextlib.contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        """Hold an exclusive lock on ``kind/key`` (blocks while another process builds it)."""
        lock_path = self._kind_dir(kind) / f".{key}.lock"
        with open(lock_path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            self._held.add((kind, key))
            touch(lock_path)
            try:
                yield
            finally:
                self._held.discard((kind, key))
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def hold(self, paths: Iterable[Path]) -> Iterator[None]:
        """Hold a shared lock on every cache entry ``paths`` lie in, for as long as the block runs: a
        prune (:mod:`e2e.build.cachegc`) never removes them meanwhile. Paths outside the cache are ignored;
        a lock that cannot be taken (a read-only cache) is skipped."""
        with contextlib.ExitStack() as stack:
            for kind, key in sorted({k for p in paths if (k := self.entry_of(p)) is not None}):
                lock_path = self.root / kind / f".{key}.lock"
                try:
                    f = stack.enter_context(open(lock_path, "a+"))
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH)
                except OSError as err:
                    log.debug("cannot hold %s: %s", lock_path, err)
                    continue
                touch(lock_path)
            yield

    def entry_of(self, path: Path) -> tuple[str, str] | None:
        """The (kind, key) of the cache entry ``path`` lies in, or None."""
        try:
            rel = path.expanduser().absolute().relative_to(self.root)
        except ValueError:
            return None
        parts = rel.parts
        if len(parts) >= 2 and not parts[1].startswith("."):
            return parts[0], parts[1]
        return None

    def _reap_dead_staging(self, kind: str, key: str) -> list[Path]:
        """Remove the staging dirs of ``kind/key`` left by builds killed on this host (see the
        module's docstring), under the entry's lock: the one this object holds, or else taken
        without waiting (if another process holds it, nothing is reaped now)."""
        kind_dir = self._kind_dir(kind)
        pattern = re.compile(rf"^\.{re.escape(key)}\.({TAG_PATTERN})\.(\d+)\.[^.]+\.tmp$")

        def dead() -> list[Path]:
            out = []
            for path in kind_dir.glob(f".{glob_escape(key)}.*.tmp"):
                match = pattern.match(path.name)
                if (match and path.is_dir() and not path.is_symlink()
                        and leftover_of_dead_writer(match.group(1), int(match.group(2)), path)):
                    out.append(path)
            return out

        def reap() -> list[Path]:
            removed = []
            for path in dead():
                shutil.rmtree(path, ignore_errors=True)
                if not path.exists():
                    log.info("removed %s, left by a build that was killed", path)
                    removed.append(path)
            return removed

        if (kind, key) in self._held:
            return reap()
        if not dead():  # the common case: no lock file made, no lock taken
            return []
        with open(kind_dir / f".{key}.lock", "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []
            try:
                return reap()
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def staging(self, kind: str, key: str) -> Iterator[Path]:
        """A temp dir beside the entry's final place; removed unless published.

        Its name carries this host's tag and pid; the staging dirs of this key
        left by builds killed on this host are removed first (under the lock).

        :raises PveoiError: the cache's disk filled up while the entry was written.
        """
        try:
            self._reap_dead_staging(kind, key)
        except OSError as err:
            log.debug("cannot reap dead staging dirs of %s/%s: %s", kind, key, err)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(key), suffix=".tmp", dir=self._kind_dir(kind)))
        except OSError as err:
            raise write_error(self._kind_dir(kind) / f".{key}.tmp", err) from err
        try:
            yield tmp
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):  # name the file only if it is the one written
                named = Path(err.filename) if isinstance(err.filename, str) else None
                raise write_error(named if named and named.is_relative_to(tmp) else tmp, err) from err
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def publish(
        self, kind: str, key: str, staged: Path, files: Iterable[str], manifest: Mapping[str, Any]
    ) -> CacheEntry:
        """Record ``files`` (relative to ``staged``) with their hashes and move into place.

        :returns: the published entry.
        """
        record = dict(manifest)
        record["files"] = {name: sha256_file(staged / name) for name in files}
        atomic_write(staged / MANIFEST, json.dumps(record, indent=2, sort_keys=True) + "\n")
        final = self.entry_path(kind, key)
        if final.exists():
            shutil.rmtree(final)
        os.rename(staged, final)
        staged.mkdir()  # so staging()'s cleanup has something to remove
        return CacheEntry(kind, key, final, record)

    def get_or_build(self, kind: str, key: str, build: Callable[[Path], Built], *, force: bool = False,
                     verify: bool = True) -> CacheEntry:
        """The intact entry ``kind/key``, built and published first if it is missing or damaged.

        The one sequence every producer uses: look up; on a miss take the key's
        lock, look up again (another process may have built it meanwhile),
        then call ``build`` with a fresh staging dir and publish what it
        returns. A failing build publishes nothing and leaves no staging dir.

        :param build: fills the staging dir it is given and returns what to publish.
        :param force: rebuild even if an intact entry exists (under the lock).
        :param verify: check every file's sha256 on lookup.
        :returns: the entry found or published.
        :raises PveoiError: whatever ``build`` raises, or a failed write (full disk).
        """
        if not force and (hit := self.lookup(kind, key, verify)) is not None:
            log.info("%s/%s: cache hit (%s)", kind, key, hit.path)
            return hit
        with self.lock(kind, key):
            if not force and (hit := self.lookup(kind, key, verify)) is not None:
                log.debug("%s/%s: built meanwhile by another process (%s)", kind, key, hit.path)
                return hit
            with self.staging(kind, key) as staged:
                built = build(staged)
                return self.publish(kind, key, staged, built.files, built.manifest)
