"""
What pveoi's cache holds and what may go: ``pveoi cache du`` (sizes by kind), ``pveoi cache prune``
(by age and by size) and the automatic cap applied after every A/B and kernel build.

The cache (:func:`e2e.build.cache.cache_root`) holds, by kind: ``kernels/`` and ``images/`` (content-hashed
entries), ``kbuild/`` (a persistent build directory per source path and config, about
1.6 GB each), ``ccache/`` (capped by ccache itself, :data:`e2e.build.kbuild.CCACHE_MAXSIZE`),
``logs/`` (failed builds' logs) and ``ssh/`` (the client key: never removed).

What goes first: build directories whose source tree is gone (a finished bisect's worktree, a
deleted checkout), then logs and build directories, least recently used first, then kernels and
images, least recently used first. Never removed: an entry a running pveoi holds (its lock, see
:meth:`e2e.build.cache.Cache.hold`; an A/B holds every kernel and image its plan names for as long as it
runs, a build holds its entry and build directory), and, unless asked, a kernel or image a result
in a named history points at (so ``pveoi analyze`` and a report's links keep working).

Last use is the mtime of the entry's lock file (``<kind>/.<key>.lock``), touched on every cache
hit, hold and build; a log's own mtime.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

#: The kinds, in the order ``du`` lists them, with their names for people.
KINDS = {"kernels": "kernels", "images": "images", "vhost-initrd": "virtual host boot files",
         "kbuild": "build dirs", "ccache": "ccache", "logs": "logs", "ssh": "ssh keys"}
#: Kinds whose entries prune may remove, and their rank: every item of a lower rank goes before any of a
#: higher one (build directories, logs and a packaged kernel's virtual-host boot files are rebuilt or lost
#: cheaply; a kernel takes minutes).
PRUNABLE = {"logs": 0, "kbuild": 0, "vhost-initrd": 0, "kernels": 1, "images": 1}
#: The automatic cap unless ``$PVEOI_CACHE_MAX`` says otherwise (``off`` disables it).
DEFAULT_CAP = "20G"
#: A build directory's record of the source it builds (for "its source tree is gone").
ORIGIN = "origin"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.I)


def parse_size(text: str) -> int:
    """Bytes from ``2G``, ``500M``, ``1.5GiB``, ``20GB`` or a plain number (powers of 1024).

    :raises ConfigError: anything else.
    """
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"cannot read the size {text!r}", fix="write e.g. 2G, 500M or 20GB")
    number, unit = float(m.group(1)), m.group(2).upper()
    return int(number * 1024 ** ("KMGT".index(unit) + 1)) if unit else int(number)


def human(size: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} G"  # pragma: no cover


def tree_size(path: Path) -> int:
    """Bytes a file or directory takes (allocated blocks, links not followed)."""
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return st.st_blocks * 512
    total = st.st_blocks * 512
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def build_dir_size(path: Path) -> int:
    """:func:`tree_size` of a build directory, remembered beside it (``.<key>.size``) until its next build
    changes its ``state`` file: walking its 70,000 files took 2.5-5.6 s after every A/B here."""
    memo = path.parent / f".{path.name}.size"
    try:
        stamp = (path / "state").stat().st_mtime_ns
    except OSError:  # never built: nothing to remember it by
        return tree_size(path)
    with contextlib.suppress(OSError, ValueError):
        seen, known = memo.read_text().split()
        if int(seen) == stamp:
            return int(known)
    size = tree_size(path)
    with contextlib.suppress(OSError):
        memo.write_text(f"{stamp} {size}\n")
    return size


@dataclass(frozen=True)
class Item:
    """One removable thing: a kernel, image or build directory entry, or a log file."""

    kind: str
    key: str
    path: Path
    size: int
    used: float  #: last use, seconds since the epoch
    orphan: bool = False  #: a build directory whose source tree is gone

    @property
    def lock(self) -> Path:
        return self.path.parent / f".{self.key}.lock"


def items(root: Path) -> list[Item]:
    """Every prunable item under ``root``."""
    out: list[Item] = []
    for kind in PRUNABLE:
        d = root / kind
        if not d.is_dir():
            continue
        for path in sorted(d.iterdir()):
            if path.name.startswith("."):
                continue
            if kind == "logs":
                with contextlib.suppress(OSError):
                    out.append(Item(kind, path.name, path, tree_size(path), path.lstat().st_mtime))
                continue
            lock = d / f".{path.name}.lock"
            used = max((p.stat().st_mtime for p in (lock, path) if p.exists()), default=0.0)
            orphan = False
            if kind == "kbuild":
                with contextlib.suppress(OSError):
                    origin = (path / ORIGIN).read_text().strip()
                    orphan = bool(origin) and not Path(origin).exists()
            size = build_dir_size(path) if kind == "kbuild" else tree_size(path)
            out.append(Item(kind, path.name, path, size, used, orphan))
    return out


def du(root: Path) -> dict[str, tuple[int, int]]:
    """``{kind: (entries, bytes)}`` for every kind present under ``root``, and ``other``."""
    out: dict[str, tuple[int, int]] = {}
    if not root.is_dir():
        return out
    for kind in KINDS:
        d = root / kind
        if not d.is_dir():
            continue
        children = list(d.iterdir())
        if kind == "kbuild":  # by their remembered sizes (build_dir_size): du runs after every A/B
            size = d.lstat().st_blocks * 512 + sum(build_dir_size(p) if p.is_dir() else tree_size(p) for p in children)
        else:
            size = tree_size(d)
        out[kind] = (sum(1 for p in children if not p.name.startswith(".")), size)
    rest = [p for p in root.iterdir() if p.name not in KINDS]
    if rest:
        out["other"] = (len(rest), sum(tree_size(p) for p in rest))
    return out


def history_keys(histories: Iterable[Path]) -> set[tuple[str, str]]:
    """The (kind, key) of every kernel and image a result in ``histories`` points at."""
    keys: set[tuple[str, str]] = set()
    for root in histories:
        root = root.expanduser()
        if not root.is_dir():
            continue
        for path in root.rglob("*.json"):
            try:
                doc = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if not isinstance(doc, dict):
                continue
            for value in _paths_in(doc):
                parts = Path(value).parts
                for kind in ("kernels", "images"):
                    if kind in parts[:-1]:
                        i = parts.index(kind)
                        if i + 1 < len(parts):
                            keys.add((kind, parts[i + 1]))
    return keys


def _paths_in(doc: object) -> Iterator[str]:
    """Every string in a result document that could be a cache path."""
    if isinstance(doc, dict):
        for v in doc.values():
            yield from _paths_in(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _paths_in(v)
    elif isinstance(doc, str) and ("/kernels/" in doc or "/images/" in doc):
        yield doc


@dataclass
class PruneReport:
    """What a prune removed (or, dry, would remove), what it kept that it could not, and the sizes."""

    before: int
    after: int
    removed: list[Item] = field(default_factory=list)
    held: list[Item] = field(default_factory=list)  #: in use by a running pveoi
    protected: list[Item] = field(default_factory=list)  #: named by a history

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would remove" if dry_run else "removed"
        out = [f"{verb} {KINDS.get(i.kind, i.kind)} {i.key} ({human(i.size)}"
               f"{', its source tree is gone' if i.orphan else ''}, last used "
               f"{time.strftime('%Y-%m-%d', time.localtime(i.used))})" for i in self.removed]
        out += [f"kept {KINDS[i.kind]} {i.key} ({human(i.size)}): in use by a running pveoi" for i in self.held]
        if self.protected:
            out.append(f"kept {len(self.protected)} kernel(s)/image(s) a history points at "
                       f"({human(sum(i.size for i in self.protected))}; --include-history removes them too)")
        out.append(f"cache: {human(self.before)} -> {human(self.after)}{' (dry run)' if dry_run else ''}")
        return out


def prune(root: Path, *, max_size: int | None = None, keep_days: float | None = None,
          histories: Sequence[Path] = (), include_history: bool = False, dry_run: bool = False,
          now: float | None = None) -> PruneReport:
    """Remove what may go (see the module's docstring) until the cache is at most ``max_size`` bytes,
    and whatever was last used more than ``keep_days`` ago; orphaned build directories always.

    Each removal takes the item's lock first without waiting: an item a running pveoi holds is kept.
    """
    now = time.time() if now is None else now
    everything = items(root)
    total = sum(n for _, n in du(root).values())
    protected = set() if include_history else history_keys(histories)
    order = sorted(everything, key=lambda i: (not i.orphan, PRUNABLE[i.kind], i.used))
    report = PruneReport(total, total)
    for item in order:
        expired = keep_days is not None and now - item.used > keep_days * 86400
        over = max_size is not None and report.after > max_size
        if not (item.orphan or expired or over):
            continue
        if (item.kind, item.key) in protected:
            report.protected.append(item)
            continue
        if not _remove(item, dry_run):
            report.held.append(item)
            continue
        report.removed.append(item)
        report.after -= item.size
    return report


def _remove(item: Item, dry_run: bool) -> bool:
    """Remove ``item`` under its lock, taken without waiting; False if a running pveoi holds it (an A/B
    holds its kernels, image, logs directory and run log: :meth:`e2e.build.cache.Cache.hold`)."""
    if item.kind == "logs" and not item.lock.exists():  # never held
        if not dry_run:
            with contextlib.suppress(FileNotFoundError):
                item.path.unlink() if not item.path.is_dir() else shutil.rmtree(item.path)
        return True
    try:
        f = open(item.lock, "a+")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        try:
            if not dry_run:
                if item.path.is_dir():
                    shutil.rmtree(item.path, ignore_errors=True)
                else:
                    item.path.unlink(missing_ok=True)
                item.lock.unlink(missing_ok=True)
                (item.path.parent / f".{item.key}.size").unlink(missing_ok=True)
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return True


def cap() -> int | None:
    """The automatic cap in bytes (``$PVEOI_CACHE_MAX``, default :data:`DEFAULT_CAP`), or None if off.

    :raises ConfigError: an unreadable ``$PVEOI_CACHE_MAX``.
    """
    text = os.environ.get("PVEOI_CACHE_MAX", DEFAULT_CAP).strip()
    if text.lower() in ("off", "0", "none", ""):
        return None
    return parse_size(text)


def auto_cap(root: Path, histories: Sequence[Path] = ()) -> PruneReport | None:
    """Keep the cache under :func:`cap` (after an A/B or a build): what it removed, logged."""
    limit = cap()
    if limit is None or not root.is_dir():
        return None
    report = prune(root, max_size=limit, histories=histories)
    for line in report.lines(dry_run=False)[:-1] if report.removed else []:
        log.info("cache cap %s: %s", human(limit), line)
    if report.after > limit:
        log.warning("the cache is %s, over its cap %s, with nothing more it may remove (held or named by a "
                    "history); fix: pveoi cache prune --include-history, or raise PVEOI_CACHE_MAX",
                    human(report.after), human(limit))
    return report
