"""
``pveoi report``: render a history (:mod:`e2e.history`) for people and
machines, and check it for regressions (:mod:`e2e.regress`).

* HTML: one self-contained file (plots are inline SVG; no script, no network):
  the latest verdict per runner and workload up top with the regressions;
  per workload the per-interrupt exit counts on vs off with intervals, the
  exit-reason breakdown of both arms, the trend of the headline figures with
  the baseline band; then the run's settings, kernel manifest, doctor findings
  and links to its logs.
* Markdown: the verdicts, headline figures and regressions, short enough for
  a mailing-list reply or a CI summary.
* JUnit XML: one test case per runner and workload (the latest verdict) and
  one per regression check.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cache import atomic_write
from .history import HEADLINES, History, Record, load_history, records
from .regress import CheckResult, CheckSettings, GroupStatus, check, format_findings
from .results import failed_attempts
from .results import fmt_ci as _ci
from .results import fmt_number as _fmt

log = logging.getLogger(__name__)

PER_INTERRUPT = ["kvm_exit", "kvm_msr", "kvm_apic", "kvm_eoi", "trapped_eoi", "kvm_pv_eoi"]
COLOURS = {"off": "#c0504d", "on": "#4f81bd", "pass": "#2e7d32", "fail": "#c62828", "other": "#9e9e9e"}


def _findings_of(result: CheckResult, group: GroupStatus) -> list[str]:
    return [f.message for f in result.findings if (f.runner, f.workload) == (group.runner, group.workload)]


# ---------------------------------------------------------------- plots


def _svg(draw: Callable[[Any], None], size: tuple[float, float]) -> str:
    """Run ``draw(figure)`` and return the figure as an inline ``<svg>`` element."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    draw(fig)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF boilerplate, nothing to show
    return text[text.index("<svg"):]


def _err(median: float, ci: Sequence[float] | None) -> tuple[float, float]:
    if not ci or median is None:
        return (0.0, 0.0)
    return (max(0.0, median - ci[0]), max(0.0, ci[1] - median))


def plot_per_interrupt(w: dict[str, Any]) -> str:
    """Grouped bars: per-interrupt counts, off vs on arm, medians with their intervals."""
    metrics = w.get("metrics", {})
    keys = [k for k in PER_INTERRUPT if k in metrics]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        width = 0.38
        for i, (arm, field, colour) in enumerate(((w.get("baseline", "off"), "off", COLOURS["off"]),
                                                  (w.get("treatment", "on"), "on", COLOURS["on"]))):
            med = [metrics[k][f"{field}_median"] for k in keys]
            errs = [_err(metrics[k][f"{field}_median"], metrics[k].get(f"{field}_ci")) for k in keys]
            xs = [j + (i - 0.5) * width for j in range(len(keys))]
            ax.bar(xs, med, width, label=f"arm {arm}", color=colour,
                   yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=3)
        ax.set_xticks(range(len(keys)), keys, rotation=20)
        ax.set_ylabel("events per injected interrupt")
        ax.set_title("per-interrupt counts (median, 95% CI)")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)

    return _svg(draw, (7.5, 3.6))


def plot_exit_reasons(w: dict[str, Any]) -> str:
    """Stacked bars: kvm_exit per interrupt of each arm, split by exit reason."""
    metrics = w.get("metrics", {})
    reasons = sorted(k for k in metrics if k.startswith("kvm_exit["))

    def draw(fig: Any) -> None:
        import matplotlib

        ax = fig.subplots()
        arms = [(w.get("baseline", "off"), "off"), (w.get("treatment", "on"), "on")]
        bottoms = [0.0, 0.0]
        cmap = matplotlib.colormaps["tab10"]
        for n, key in enumerate(reasons):
            vals = [metrics[key][f"{field}_median"] for _, field in arms]
            ax.bar([a for a, _ in arms], vals, 0.5, bottom=bottoms, label=key[len("kvm_exit["):-1],
                   color=cmap(n % 10))
            bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
        ax.set_ylabel("kvm_exit per injected interrupt")
        ax.set_title("exit reasons (median per arm)")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)

    return _svg(draw, (5.5, 3.6))


def plot_trend(recs: Sequence[Record], group: GroupStatus) -> str:
    """The headline figures over the history with their intervals and the baseline band."""

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, len(HEADLINES))
        xs = list(range(len(recs)))
        for ax, (key, (label, _unit)) in zip(axes, HEADLINES.items(), strict=True):
            if key in group.band:
                low, mid, high = group.band[key]
                ax.axhspan(low, high, color="#dddddd", label=f"baseline ({len(group.baseline)} good runs)")
                ax.axhline(mid, color="#888888", lw=1)
            for x, r in zip(xs, recs, strict=True):
                v = r.value.get(key)
                if v is None:
                    ax.plot([x], [0], marker="x", color=COLOURS["other"])
                    continue
                e = _err(v, r.ci.get(key))
                ax.errorbar([x], [v], yerr=[[e[0]], [e[1]]], fmt="o", capsize=3,
                            color=COLOURS.get(r.verdict, COLOURS["other"]))
            ax.set_title(label)
            ax.set_xticks(xs, [r.run.created[5:16].replace("T", " ") for r in recs], rotation=45,
                          fontsize="x-small", ha="right")
            ax.grid(alpha=0.3)
            if key in group.band:
                ax.legend(fontsize="x-small")

    return _svg(draw, (9.0, 3.4))


# ---------------------------------------------------------------- HTML

CSS = """
body{font-family:sans-serif;margin:1.5em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
.pass{color:#2e7d32;font-weight:bold}.fail{color:#c62828;font-weight:bold}.other{color:#757575;font-weight:bold}
.regression{background:#fdecea;border-left:4px solid #c62828;padding:.4em .8em;margin:.3em 0}
.note{color:#555}.plots svg{max-width:100%;height:auto}pre{background:#f5f5f5;padding:.5em;overflow:auto}
section.workload{border-top:2px solid #ddd;margin-top:1.5em}
"""


def _cls(verdict: str) -> str:
    return verdict if verdict in ("pass", "fail") else "other"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _settings_html(run_doc: dict[str, Any], w: dict[str, Any]) -> str:
    e = html.escape
    arms = [[e(name), e(json.dumps(a.get("settings", {}), sort_keys=True))]
            for name, a in run_doc.get("arms", {}).items()]
    parts = [
        "<h4>Settings</h4>",
        _table(["setting", "value"], [
            ["runs per arm", e(str(run_doc.get("runs_per_arm")))],
            ["host", e(f"{run_doc.get('host', {}).get('chosen')}: {run_doc.get('host', {}).get('reason')}")],
            ["thresholds", e(json.dumps(w.get("thresholds", {}), sort_keys=True))],
            ["pveoi", e(str(run_doc.get("pveoi_version")))],
        ] + [[f"arm {a}", s] for a, s in arms]),
        "<details><summary>kernel manifest</summary><pre>"
        + e(json.dumps(run_doc.get("kernel", {}), indent=2, sort_keys=True)) + "</pre></details>",
        "<details><summary>runner</summary><pre>"
        + e(json.dumps({k: v for k, v in run_doc.get("runner", {}).items() if k != "doctor"}, indent=2,
                       sort_keys=True)) + "</pre></details>",
    ]
    doctor = run_doc.get("runner", {}).get("doctor") or []
    if doctor:
        parts.append("<h4>Doctor findings</h4>" + _table(
            ["check", "status", "detail", "fix"],
            [[e(str(f.get("name"))), e(str(f.get("status"))), e(str(f.get("detail"))), e(str(f.get("fix") or ""))]
             for f in doctor]))
    logs = run_doc.get("logs")
    if logs:
        links = []
        root = Path(logs)
        if root.is_dir():
            links = [f'<a href="{e(p.as_uri())}">{e(str(p.relative_to(root)))}</a>'
                     for p in sorted(root.rglob("*.log"))[:40]]
        parts.append(f'<h4>Logs</h4><p><a href="{e(root.as_uri())}">{e(logs)}</a></p>'
                     + ("<p>" + " · ".join(links) + "</p>" if links else
                        "<p class=note>(not on this machine)</p>"))
    return "\n".join(parts)


def render_html(history: History, result: CheckResult) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>pveoi report</title><style>{CSS}</style>"
           "</head><body>",
           "<h1>pveoi: KVM PV EOI report</h1>",
           f"<p>{len(history.runs)} run(s) from {len(history.runners())} runner(s) in {e(str(history.root))}; "
           f"latest {e(history.runs[-1].created)}.</p>"]
    state = "regression" if result.findings else "clean"
    out.append(f"<h2>Latest verdicts <span class={'fail' if result.findings else 'pass'}>({state})</span></h2>")
    rows = []
    for g in result.groups:
        r = g.latest
        if r is None:
            continue
        rows.append([e(g.runner), f"<a href='#{e(_anchor(g))}'>{e(g.workload)}</a>",
                     f"<span class={_cls(r.verdict)}>{e(r.verdict.upper())}</span>",
                     f"{_fmt(r.value['eoi_saved'])} {_ci(r.ci['eoi_saved'])}",
                     f"{_fmt(r.value['exit_reduction'])} {_ci(r.ci['exit_reduction'])}", e(r.run.name)])
    out.append(_table(["runner", "workload", "verdict", HEADLINES["eoi_saved"][0] + " [95% CI]",
                       HEADLINES["exit_reduction"][0] + " [95% CI]", "run"], rows))
    for f in result.findings:
        out.append(f"<div class=regression><b>{e(f.runner)} {e(f.workload)}</b>: {e(f.message)}</div>")
    for p in history.problems:
        out.append(f"<p class=note>unreadable: {e(p)}</p>")
    for g in result.groups:
        out.append(_group_html(history, result, g))
    out.append("</body></html>")
    return "\n".join(out)


def _anchor(g: GroupStatus) -> str:
    return "w-" + "".join(c if c.isalnum() else "-" for c in f"{g.runner}-{g.workload}")


def _group_html(history: History, result: CheckResult, g: GroupStatus) -> str:
    e = html.escape
    recs = records(history, g.runner, g.workload)
    out = [f"<section class=workload id='{e(_anchor(g))}'><h2>{e(g.workload)} on {e(g.runner)}</h2>"]
    latest = g.latest
    if latest is None:
        return "\n".join([out[0], *(f"<p class=note>note: {e(n)}</p>" for n in g.notes), "</section>"])
    w = latest.run.doc.get("workloads", {}).get(g.workload) or {
        "description": "this run measured nothing", "metrics": {}, "notes": []}
    out.append(f"<p>{e(str(w.get('description', '')))}</p>")
    out.append(f"<p>latest: <span class={_cls(latest.verdict)}>{e(latest.verdict.upper())}</span> "
               f"({e(latest.run.name)})</p>")
    out.extend(f"<div class=regression>{e(m)}</div>" for m in _findings_of(result, g))
    out.extend(f"<p class=note>! {e(r)}</p>" for r in latest.reasons)
    out.extend(f"<p class=note>note: {e(n)}</p>" for n in [*w.get("notes", []), *g.notes])
    out.append("<div class=plots>")
    if w.get("metrics"):
        out.append(plot_per_interrupt(w))
        out.append(plot_exit_reasons(w))
    out.append(plot_trend(recs, g))
    out.append("</div>")
    metrics = w.get("metrics", {})
    if metrics:
        out.append(_table(["per injected interrupt", f"arm {w.get('baseline')}", f"arm {w.get('treatment')}",
                           "reduction [95% CI]", "p"],
                          [[e(k), _fmt(m.get("off_median")), _fmt(m.get("on_median")),
                            f"{_fmt(m.get('reduction'))} {_ci(m.get('reduction_ci'))}", _fmt(m.get("p_value"))]
                           for k, m in metrics.items()]))
    out.append(_settings_html(latest.run.doc, w))
    out.append("</section>")
    return "\n".join(out)


# ---------------------------------------------------------------- Markdown and JUnit


def render_markdown(history: History, result: CheckResult) -> str:
    state = f"{len(result.findings)} regression(s)" if result.findings else "no regression"
    lines = [f"### pveoi PV EOI report: {state}", "",
             f"{len(history.runs)} run(s), {len(history.runners())} runner(s); latest {history.runs[-1].created}.",
             "", "| runner | workload | verdict | EOI exits saved/interrupt [95% CI] | kvm_exit reduction [95% CI] |",
             "|---|---|---|---|---|"]
    for g in result.groups:
        r = g.latest
        if r is None:
            continue
        lines.append(f"| {g.runner} | {g.workload} | **{r.verdict.upper()}** | {_fmt(r.value['eoi_saved'])} "
                     f"{_ci(r.ci['eoi_saved'])} | {_fmt(r.value['exit_reduction'])} {_ci(r.ci['exit_reduction'])} |")
    if result.findings:
        lines += ["", "Regressions:"]
        lines += [f"- [{f.runner}] {f.workload}: {f.message}" for f in result.findings]
    failed = [f"- [{g.runner}] {g.workload}: {line}" for g in result.groups if g.latest is not None
              for line in failed_attempts(g.latest.run.result, g.workload, absolute=True)]
    if failed:
        lines += ["", "Failed attempts of the latest runs (class, kind, outcome, logs):", *failed]
    return "\n".join(lines) + "\n"


def render_junit(result: CheckResult) -> str:
    suites = ET.Element("testsuites", name="pveoi report")
    for runner in sorted({g.runner for g in result.groups}):
        groups = [g for g in result.groups if g.runner == runner]
        suite = ET.SubElement(suites, "testsuite", name=f"pveoi {runner}")
        tests = failures = skipped = 0
        for g in groups:
            latest = g.latest
            case = ET.SubElement(suite, "testcase", classname=f"pveoi.{runner}", name=f"{g.workload}.verdict")
            tests += 1
            if latest is None:
                skipped += 1
                ET.SubElement(case, "skipped", message="; ".join(g.notes) or "no run")
            elif latest.verdict == "fail":
                failures += 1
                ET.SubElement(case, "failure", message="; ".join(latest.reasons))
            elif latest.verdict != "pass":
                skipped += 1
                ET.SubElement(case, "skipped", message=f"{latest.verdict}: " + "; ".join(latest.reasons))
            case = ET.SubElement(suite, "testcase", classname=f"pveoi.{runner}", name=f"{g.workload}.regression")
            tests += 1
            found = _findings_of(result, g)
            if found:
                failures += 1
                ET.SubElement(case, "failure", message="; ".join(found))
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("skipped", str(skipped))
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


# ---------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report", help="render a history as HTML/Markdown/JUnit and check it for regressions",
        description="Read a history directory of `pveoi ab --history` results (from one or many runners), "
                    "render it, and with --check compare each runner's latest run per workload with its "
                    "previous good runs. --check exits 0 clean, 1 regression, 2 unusable history.")
    p.add_argument("--history", type=Path, required=True, metavar="DIR", help="the history directory")
    p.add_argument("--html", type=Path, metavar="PATH", help="write a self-contained HTML report")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="write a short Markdown summary")
    p.add_argument("--junit", type=Path, metavar="PATH", help="write JUnit XML (verdicts and regressions)")
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
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from .errors import ConfigError

    if args.baseline < 1:
        raise ConfigError("--baseline must be at least 1", fix="pass --baseline 5")
    if not 0 <= args.threshold < 1 or not 0 < args.alpha < 1:
        raise ConfigError("--threshold must be in [0, 1) and --alpha in (0, 1)",
                          fix="e.g. --threshold 0.05 --alpha 0.05")
    history = load_history(args.history)
    if args.check:
        history.require_clean()  # a nightly must not skip a file it cannot read
    if args.max_age is not None and args.max_age <= 0:
        raise ConfigError("--max-age must be positive", fix="e.g. --max-age 20 for a nightly job")
    result = check(history, CheckSettings(baseline=args.baseline, rel=args.threshold, alpha=args.alpha,
                                          max_age_hours=args.max_age, require_measurable=args.require_measurable))
    outputs: list[tuple[Path | None, Callable[[], str]]] = [(args.html, lambda: render_html(history, result)),
               (args.markdown, lambda: render_markdown(history, result)),
               (args.junit, lambda: render_junit(result))]
    for path, render in outputs:
        if path is not None:
            target = path.expanduser().absolute()
            try:
                atomic_write(target, render())
            except OSError as err:
                raise ConfigError(f"cannot write {target}: {err.strerror}",
                                  fix="pick a writable path with free space") from err
            print(f"wrote {target}")
    if args.check:
        print(format_findings(result))
        return result.exit_code
    if all(path is None for path, _ in outputs):
        print(render_markdown(history, result), end="")
    return 0
