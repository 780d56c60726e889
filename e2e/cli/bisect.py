"""``pveoi bisect``: ``git bisect run`` over a kernel tree with the A/B as the predicate; the first bad commit."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..errors import CapabilityError, ConfigError
from ..model.plan import DEFAULT_RETRIES
from .common import SubParsers, choose_host, parse_thresholds


@dataclass(frozen=True)
class BisectOptions:
    """``pveoi bisect``'s options; ``host``: bisect the host (KVM) kernel; ``threshold`` the raw items."""

    source: Path
    good: str
    bad: str
    host: bool
    patches: Path | None
    workload: str
    runs: int
    retries: int
    threshold: tuple[str, ...]
    history: Path | None
    logs: Path | None

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> BisectOptions:
        return cls(source=ns.source, good=ns.good, bad=ns.bad, host=ns.host, patches=ns.patches,
                   workload=ns.workload, runs=ns.runs, retries=ns.retries, threshold=tuple(ns.threshold),
                   history=ns.history, logs=ns.logs)


def add_parser(sub: SubParsers) -> None:
    from ..model.workloads import WORKLOADS

    p = sub.add_parser(
        "bisect", help="find the commit that broke PV EOI: git bisect run with the A/B as the predicate",
        description="Bisect --good..--bad of your kernel tree in a temporary git worktree (your checkout is never "
                    "touched). Each step builds that revision incrementally and runs the A/B: good if it passes "
                    "and PV EOI's saving did not drop from the good revision's, bad if it fails or dropped, "
                    "skipped if it does not build or cannot be measured; infrastructure failures (after retries) "
                    "abort. Prints the first bad commit; every step's result goes to --history.")
    p.add_argument("--source", type=Path, required=True, metavar="DIR", help="your kernel git tree")
    p.add_argument("--good", required=True, metavar="REV")
    p.add_argument("--bad", required=True, metavar="REV")
    p.add_argument("--host", action="store_true", help="bisect the host (KVM) kernel (through the virtual host)")
    p.add_argument("--patches", type=Path, metavar="DIR", help="a quilt patch dir applied on every revision")
    p.add_argument("--workload", default="timer", choices=sorted(WORKLOADS))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES)
    p.add_argument("--threshold", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--history", type=Path, metavar="DIR", help="every step's result (default: under the cache)")
    p.add_argument("--logs", type=Path, metavar="DIR")
    p.set_defaults(func=cmd_bisect)


def cmd_bisect(args: argparse.Namespace) -> int:
    return bisect(BisectOptions.from_args(args))


def bisect(opts: BisectOptions) -> int:
    """Check the inputs, bisect, print every step and the first bad commit."""
    import time
    from dataclasses import replace

    from ..analysis.compare import load_thresholds
    from ..build.cache import cache_root
    from ..run import bisect as bisection

    overrides = parse_thresholds(opts.threshold)
    load_thresholds(opts.workload, overrides)
    if opts.runs < 1 or opts.retries < 0:
        raise ConfigError("--runs must be at least 1 and --retries at least 0", fix="pass --runs 3 --retries 1")
    if opts.patches is not None and not opts.patches.is_dir():
        raise ConfigError(f"--patches {opts.patches} is not a directory", fix="pass a quilt patch directory")
    stamp = time.strftime("bisect-%Y%m%d-%H%M%S")
    spec = bisection.resolve(bisection.BisectSpec(
        source=opts.source.expanduser().resolve(), good=opts.good, bad=opts.bad, workload=opts.workload,
        runs=opts.runs, retries=opts.retries, thresholds=overrides, host=opts.host,
        patches=opts.patches.expanduser().resolve() if opts.patches else None,
        history=(opts.history or cache_root() / "bisect" / stamp).expanduser().absolute(),
        logs=(opts.logs or cache_root() / "logs" / stamp).expanduser().absolute()))
    host, why, _ = choose_host("virtual" if opts.host else "auto")
    if host == "not-measurable":
        raise CapabilityError(f"PV EOI cannot be measured here: {why}", fix="run pveoi doctor")
    outcome = bisection.run(replace(spec, host_choice=(host, why)))
    for rev, code, reason in outcome.steps:
        word = {0: "good", 1: "bad", 125: "skip"}.get(code, "abort")
        print(f"{rev[:12]} {word}: {reason}")
    print(f"first bad commit: {outcome.first_bad} {outcome.subject}")
    print(f"history: {spec.history}")
    return 0
