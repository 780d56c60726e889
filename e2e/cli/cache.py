"""``pveoi cache`` (du, prune) and the automatic cap the other commands apply after their work; the
pruning itself is :mod:`e2e.build.cachegc`."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, PveoiError
from .common import SubParsers

log = logging.getLogger("e2e.cli")


@dataclass(frozen=True)
class CacheDuOptions:
    """``pveoi cache du``'s options."""

    json: bool

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> CacheDuOptions:
        return cls(json=ns.json)


@dataclass(frozen=True)
class CachePruneOptions:
    """``pveoi cache prune``'s options; ``history`` the histories whose kernels and images stay."""

    max_size: str | None
    keep_days: float | None
    history: tuple[Path, ...]
    include_history: bool
    dry_run: bool

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> CachePruneOptions:
        return cls(max_size=ns.max_size, keep_days=ns.keep_days, history=tuple(ns.history),
                   include_history=ns.include_history, dry_run=ns.dry_run)


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser("cache", help="what the cache holds (du) and reclaiming it (prune); capped automatically",
                       description="pveoi's cache ($PVEOI_CACHE, default ~/.cache/pveoi) by kind, and pruning it. "
                                   "After every A/B and kernel build the cache is capped at $PVEOI_CACHE_MAX "
                                   "(default 20G; 'off' disables), least recently used first; what a running "
                                   "pveoi holds is never removed.")
    cs = p.add_subparsers(dest="cache_cmd", required=True)
    d = cs.add_parser("du", help="sizes by kind: kernels, images, build dirs, ccache, logs")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_cmd_cache_du)
    pr = cs.add_parser("prune", help="remove build dirs, logs, kernels and images, least recently used first",
                       description="Remove build directories whose source is gone, then logs and build "
                                   "directories, then kernels and images, least recently used first, until the "
                                   "cache fits --max-size, and whatever is older than --keep-days. Never what a "
                                   "running pveoi holds, nor (without --include-history) a kernel or image a "
                                   "result in --history points at.")
    pr.add_argument("--max-size", metavar="SIZE", help="e.g. 2G, 500M")
    pr.add_argument("--keep-days", type=float, metavar="DAYS", help="remove what was last used before")
    pr.add_argument("--history", type=Path, action="append", default=[], metavar="DIR",
                    help="keep every kernel and image its results point at (repeatable; default $PVEOI_HISTORY)")
    pr.add_argument("--include-history", action="store_true", help="remove those too")
    pr.add_argument("--dry-run", action="store_true", help="only say what would go")
    pr.set_defaults(func=_cmd_cache_prune)


def _cmd_cache_du(args: argparse.Namespace) -> int:
    return du(CacheDuOptions.from_args(args))


def du(opts: CacheDuOptions) -> int:
    """Print the cache's size by kind."""
    from ..build.cache import cache_root
    from ..build.cachegc import KINDS, human
    from ..build.cachegc import du as sizes_of

    root = cache_root()
    sizes = sizes_of(root)
    if opts.json:
        print(json.dumps({"root": str(root), "kinds": {k: {"entries": n, "bytes": b} for k, (n, b) in sizes.items()},
                          "bytes": sum(b for _, b in sizes.values())}, indent=2))
        return 0
    print(f"{root}:")
    for kind, (n, size) in sizes.items():
        print(f"  {KINDS.get(kind, kind):<11} {n:>4}  {human(size):>9}")
    print(f"  {'total':<11} {'':>4}  {human(sum(b for _, b in sizes.values())):>9}")
    return 0


def _histories(given: Sequence[Path]) -> list[Path]:
    """The histories whose kernels and images a prune keeps: those given, else ``$PVEOI_HISTORY``."""
    env = os.environ.get("PVEOI_HISTORY")
    return [p.expanduser().absolute() for p in given] or ([Path(env)] if env else [])


def _cmd_cache_prune(args: argparse.Namespace) -> int:
    return prune(CachePruneOptions.from_args(args))


def prune(opts: CachePruneOptions) -> int:
    """Prune the cache (or say what would go); print what went."""
    from ..build.cache import cache_root
    from ..build.cachegc import parse_size
    from ..build.cachegc import prune as prune_cache

    if opts.max_size is None and opts.keep_days is None:
        raise ConfigError("prune needs --max-size or --keep-days", fix="e.g. pveoi cache prune --max-size 10G")
    if opts.keep_days is not None and opts.keep_days < 0:
        raise ConfigError("--keep-days must be 0 or more", fix="pass e.g. --keep-days 14")
    limit = parse_size(opts.max_size) if opts.max_size is not None else None
    report = prune_cache(cache_root(), max_size=limit, keep_days=opts.keep_days, histories=_histories(opts.history),
                         include_history=opts.include_history, dry_run=opts.dry_run)
    for line in report.lines(opts.dry_run):
        print(line)
    return 0


def cap_cache(histories: Sequence[Path | None]) -> None:
    """The automatic cap, after an A/B or a build; a failure to prune never fails the command."""
    from ..build.cache import cache_root
    from ..build.cachegc import auto_cap

    try:
        auto_cap(cache_root(), _histories([h for h in histories if h is not None]))
    except (OSError, PveoiError) as err:
        log.warning("could not cap the cache: %s", err)
