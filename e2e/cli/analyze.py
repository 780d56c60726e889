"""``pveoi analyze``: a saved result's conclusions drawn anew from its raw counts (boots nothing)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .common import SubParsers, parse_thresholds


@dataclass(frozen=True)
class AnalyzeOptions:
    """``pveoi analyze``'s options; ``threshold`` the raw ``KEY=VALUE`` items."""

    result: Path
    threshold: tuple[str, ...]
    json: Path | None

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> AnalyzeOptions:
        return cls(result=ns.result, threshold=tuple(ns.threshold), json=ns.json)


def add_parser(sub: SubParsers) -> None:
    a = sub.add_parser(
        "analyze", help="recompute metrics, comparisons and verdicts from a saved result (boots nothing)",
        description="Read a result document (`pveoi ab --json`, any schema), draw every conclusion anew from its "
                    "raw counts under today's thresholds (and --threshold overrides), print the table. Exit codes "
                    "as for `pveoi ab`.")
    a.add_argument("result", type=Path, metavar="RESULT.json")
    a.add_argument("--threshold", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument("--json", type=Path, metavar="PATH", help="write the recomputed result here")
    a.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    return analyze(AnalyzeOptions.from_args(args))


def analyze(opts: AnalyzeOptions) -> int:
    """Load, reanalyze under today's thresholds, print (and with --json write); the verdict's exit code."""
    from dataclasses import replace

    from ..model.plan import DEFAULT_ARMS, Plan
    from ..report import results
    from ..run import ab

    res = results.load(opts.result.expanduser())
    overrides = parse_thresholds(opts.threshold)
    plan = res.plan
    if plan is None:  # a schema 1/2 result: its arms and workloads are in the document
        plan = Plan(workloads=tuple(res.workloads), arms=tuple(res.arms.values()) or DEFAULT_ARMS,
                    runs=res.runs_per_arm or 0, kernel=Path(str(res.kernel.get("path", ""))),
                    image=Path(str(res.image.get("path", ""))), logs=Path(res.logs or ""))
    plan = replace(plan, thresholds={**plan.thresholds, **overrides})
    if not res.runs:
        raise ConfigError(f"{opts.result} holds no runs to analyze (verdict {res.verdict})",
                          fix="pass a result of an A/B that measured something")
    again = ab.reanalyze(res, plan)
    if opts.json:
        results.emit(again, opts.json, None)
    print(results.format_table(again))
    return again.exit_code
