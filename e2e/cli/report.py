"""``pveoi report``: render a history (HTML, Markdown, JUnit, KTAP, KCIDB) and check it for regressions; the
rendering itself is :mod:`e2e.report.render`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .common import SubParsers


@dataclass(frozen=True)
class ReportOptions:
    """``pveoi report``'s options; ``threshold`` is the relative drop a regression must exceed."""

    history: Path
    html: Path | None
    markdown: Path | None
    junit: Path | None
    ktap: Path | None
    kcidb: Path | None
    origin: str
    check: bool
    baseline: int
    threshold: float
    alpha: float
    max_age: float | None
    require_measurable: bool
    strict: bool

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> ReportOptions:
        return cls(history=ns.history, html=ns.html, markdown=ns.markdown, junit=ns.junit, ktap=ns.ktap,
                   kcidb=ns.kcidb, origin=ns.origin, check=ns.check, baseline=ns.baseline, threshold=ns.threshold,
                   alpha=ns.alpha, max_age=ns.max_age, require_measurable=ns.require_measurable, strict=ns.strict)


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser(
        "report", help="render a history as HTML/Markdown/JUnit and check it for regressions",
        description="Read a history directory of `pveoi ab --history` results (from one or many runners), "
                    "render it, and with --check compare each runner's latest run per workload with its "
                    "previous good runs. --check exits 0 clean, 1 regression, 2 unusable history.")
    p.add_argument("--history", type=Path, required=True, metavar="DIR", help="the history directory")
    p.add_argument("--html", type=Path, metavar="PATH", help="write a self-contained HTML report")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="write a short Markdown summary")
    p.add_argument("--junit", type=Path, metavar="PATH", help="write JUnit XML (verdicts and regressions)")
    p.add_argument("--ktap", type=Path, metavar="PATH",
                   help="write KTAP version 1: the latest run of each runner, one test per workload")
    p.add_argument("--kcidb", type=Path, metavar="PATH",
                   help="write a KCIDB v5.3 document of every run (submit it with kcidb-submit)")
    p.add_argument("--origin", default="pveoi", metavar="NAME",
                   help="the KCIDB origin KernelCI gave your lab ([a-z0-9_]+, default pveoi)")
    p.add_argument("--check", action="store_true", help="exit 1 on a regression (2 if the history is unusable)")
    p.add_argument("--baseline", type=int, default=5, metavar="N",
                   help="good runs per runner and workload in the baseline (default 5)")
    p.add_argument("--threshold", type=float, default=0.05, metavar="FRACTION",
                   help="relative drop a regression must exceed (default 0.05)")
    p.add_argument("--alpha", type=float, default=0.05, help="level of the one-sided test (default 0.05)")
    p.add_argument("--max-age", type=float, metavar="HOURS",
                   help="also flag a runner whose newest result is older than this (an A/B that recorded nothing)")
    p.add_argument("--require-measurable", action="store_true",
                   help="also flag a runner none of whose results measured PV EOI (all not measurable or error)")
    p.add_argument("--strict", action="store_true",
                   help="every finding exits 1, a one-night drop of the headline alone too (default: that is a "
                        "warning while the figures of PV EOI itself held)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    return report(ReportOptions.from_args(args))


def report(opts: ReportOptions) -> int:
    """Check the history, write each output asked for (Markdown on stdout if none); with --check, the
    findings and their exit code."""
    from ..analysis.droprule import CheckSettings
    from ..analysis.history import load_history
    from ..analysis.regress import check, format_flags
    from ..build.cache import atomic_write
    from ..report.render import render_html, render_junit, render_kcidb, render_ktap, render_markdown

    if opts.baseline < 1:
        raise ConfigError("--baseline must be at least 1", fix="pass --baseline 5")
    if not 0 <= opts.threshold < 1 or not 0 < opts.alpha < 1:
        raise ConfigError("--threshold must be in [0, 1) and --alpha in (0, 1)",
                          fix="e.g. --threshold 0.05 --alpha 0.05")
    if opts.kcidb is not None:
        from ..report.kcidb import check_origin

        check_origin(opts.origin)
    history = load_history(opts.history)
    if opts.check:
        history.require_clean()  # a nightly must not skip a file it cannot read
    if opts.max_age is not None and opts.max_age <= 0:
        raise ConfigError("--max-age must be positive", fix="e.g. --max-age 20 for a nightly job")
    result = check(history, CheckSettings(baseline=opts.baseline, rel=opts.threshold, alpha=opts.alpha,
                                          max_age_hours=opts.max_age, require_measurable=opts.require_measurable,
                                          strict=opts.strict))
    outputs: list[tuple[Path | None, Callable[[], str]]] = [(opts.html, lambda: render_html(history, result)),
               (opts.markdown, lambda: render_markdown(history, result)),
               (opts.junit, lambda: render_junit(result)),
               (opts.ktap, lambda: render_ktap(history, result)),
               (opts.kcidb, lambda: render_kcidb(history, opts.origin))]
    for path, render in outputs:
        if path is not None:
            target = path.expanduser().absolute()
            try:
                atomic_write(target, render())
            except OSError as err:
                raise ConfigError(f"cannot write {target}: {err.strerror}",
                                  fix="pick a writable path with free space") from err
            print(f"wrote {target}")
    if opts.check:
        print(format_flags(result))
        return result.exit_code
    if all(path is None for path, _ in outputs):
        print(render_markdown(history, result), end="")
    return 0
