"""
Rendering a history (:mod:`e2e.analysis.history`) and its regression check
(:mod:`e2e.analysis.regress`) for people and machines; ``pveoi report`` is
:mod:`e2e.cli.report`.

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

import io
import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.history import HEADLINES, History, Record, Run, records
from ..analysis.regress import CheckResult, GroupStatus, format_floors
from .results import failed_attempts
from .results import fmt_ci as _ci
from .results import fmt_number as _fmt

log = logging.getLogger(__name__)

PER_INTERRUPT = ["kvm_exit", "kvm_msr", "kvm_apic", "kvm_eoi", "trapped_eoi", "kvm_pv_eoi"]
COLOURS = {"off": "#c0504d", "on": "#4f81bd", "pass": "#2e7d32", "fail": "#c62828", "other": "#9e9e9e"}


def _flags_of(result: CheckResult, group: GroupStatus, severity: str = "regression") -> list[str]:
    return [f.message for f in result.flags
            if (f.runner, f.workload) == (group.runner, group.workload) and f.severity == severity]


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

    # Figures no run of the history has (pv_taken before per-event tracing) get no panel.
    shown = {k: v for k, v in HEADLINES.items() if any(r.value.get(k) is not None for r in recs)} or HEADLINES

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, len(shown), squeeze=False)[0]
        xs = list(range(len(recs)))
        for ax, (key, (label, _unit)) in zip(axes, shown.items(), strict=True):
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
#
# The page is e2e/data/report.html.j2, rendered by jinja2 with autoescape: this module
# only gathers the values (plain text; the template escapes every one of them).

TEMPLATE = "report.html.j2"


def _cls(verdict: str) -> str:
    return verdict if verdict in ("pass", "fail") else "other"


def _verdict(verdict: str) -> dict[str, str]:
    return {"cls": _cls(verdict), "text": verdict.upper()}


def _anchor(g: GroupStatus) -> str:
    return "w-" + "".join(c if c.isalnum() else "-" for c in f"{g.runner}-{g.workload}")


def _logs_view(logs: str | None) -> dict[str, Any] | None:
    if not logs:
        return None
    root = Path(logs)
    links = ([{"uri": p.as_uri(), "name": str(p.relative_to(root))} for p in sorted(root.rglob("*.log"))[:40]]
             if root.is_dir() else [])
    return {"uri": root.as_uri(), "path": logs, "links": links}


def _settings_view(run_doc: dict[str, Any], w: dict[str, Any]) -> dict[str, Any]:
    host = run_doc.get("host", {})
    rows = [["runs per arm", str(run_doc.get("runs_per_arm"))],
            ["host", f"{host.get('chosen')}: {host.get('reason')}"],
            ["thresholds", json.dumps(w.get("thresholds", {}), sort_keys=True)],
            ["pveoi", str(run_doc.get("pveoi_version"))]]
    rows += [[f"arm {name}", json.dumps(a.get("settings", {}), sort_keys=True)]
             for name, a in run_doc.get("arms", {}).items()]
    runner = {k: v for k, v in run_doc.get("runner", {}).items() if k != "doctor"}
    doctor = [[str(f.get("name")), str(f.get("status")), str(f.get("detail")), str(f.get("fix") or "")]
              for f in run_doc.get("runner", {}).get("doctor") or []]
    return {"settings": rows, "kernel": json.dumps(run_doc.get("kernel", {}), indent=2, sort_keys=True),
            "runner_doc": json.dumps(runner, indent=2, sort_keys=True), "doctor": doctor,
            "logs": _logs_view(run_doc.get("logs"))}


def _group_view(history: History, result: CheckResult, g: GroupStatus) -> dict[str, Any]:
    from markupsafe import Markup

    view: dict[str, Any] = {"anchor": _anchor(g), "workload": g.workload, "runner": g.runner, "notes": list(g.notes),
                            "latest": None}
    latest = g.latest
    if latest is None:
        return view
    w = latest.run.doc.get("workloads", {}).get(g.workload) or {
        "description": "this run measured nothing", "metrics": {}, "notes": []}
    plots = [plot_per_interrupt(w), plot_exit_reasons(w)] if w.get("metrics") else []
    plots.append(plot_trend(records(history, g.runner, g.workload), g))
    metrics = w.get("metrics", {})
    view.update(
        latest=_verdict(latest.verdict), run=latest.run.name, description=str(w.get("description", "")),
        regressions=_flags_of(result, g), reasons=list(latest.reasons), notes=[*w.get("notes", []), *g.notes],
        plots=[Markup(svg) for svg in plots],  # drawn by matplotlib, which escapes the text it writes
        metrics={"head": ["per injected interrupt", f"arm {w.get('baseline')}", f"arm {w.get('treatment')}",
                          "reduction [95% CI]", "p"],
                 "rows": [[k, _fmt(m.get("off_median")), _fmt(m.get("on_median")),
                           f"{_fmt(m.get('reduction'))} {_ci(m.get('reduction_ci'))}", _fmt(m.get("p_value"))]
                          for k, m in metrics.items()]} if metrics else None,
        vectors=_vectors_view(latest.run.doc, g.workload), failures=_failures_view(latest.run.doc, g.workload),
        **_settings_view(latest.run.doc, w))
    return view


def _failures_view(run_doc: dict[str, Any], workload: str) -> list[dict[str, Any]]:
    """Every attempt of ``workload`` that gave no run, and every virtual host restarted for it: what,
    its class (how it ended), kind, outcome, message, evidence and links to its logs (those that
    exist here)."""
    base = Path(run_doc["logs"]) if run_doc.get("logs") else None

    def links(names: list[str]) -> list[dict[str, str]]:
        out = []
        for name in names:
            path = Path(name) if base is None else base / name
            out.append({"name": name, "uri": path.as_uri() if path.is_absolute() and path.exists() else ""})
        return out

    def row(what: str, rec: Mapping[str, Any], outcome: str, logs: list[str]) -> dict[str, Any]:
        return {"what": what, "cls": rec.get("class") or "-", "kind": rec.get("kind", ""), "outcome": outcome,
                "message": rec.get("message", ""), "evidence": "; ".join(rec.get("evidence") or []),
                "logs": links(logs)}

    rows = [row(f"arm {a.get('arm')} rep {int(a.get('rep', 0)) + 1} attempt {a.get('attempt')}", a,
                a.get("outcome", ""), list(a.get("logs") or []))
            for a in (run_doc.get("workloads", {}).get(workload) or {}).get("attempts", [])]
    for r in (run_doc.get("host") or {}).get("virtual_host", {}).get("restarts", []):
        part = str(r.get("part", "")) if isinstance(r, dict) else ""
        if part == workload or part.startswith(f"{workload}-"):  # "net", or "net-<host kernel>"
            rows.append(row(f"virtual host for {part}, attempt {r.get('attempt')}", r, "restarted",
                            [r["logs"]] if r.get("logs") else []))
    return rows


def _vectors_view(run_doc: dict[str, Any], workload: str) -> list[dict[str, Any]]:
    """Per arm, the EOIs of the marker windows by vector (runs traced per event only)."""
    from ..measure.trace_figures import vector_label, vector_rows, window_totals

    out = []
    for arm, a in run_doc.get("arms", {}).items():
        traces = [r["trace"] for r in (a.get("runs") or {}).get(workload, [])
                  if isinstance(r, dict) and isinstance(r.get("trace"), dict) and r["trace"].get("vcpus")]
        if not traces:
            continue
        total = window_totals(traces)
        rows = [[vector_label(r), str(r["injected"]),
                 str(r["pv"]), str(r["trapped"]), ", ".join(f"{k} {n}" for k, n in r["reasons"].items())]
                for r in vector_rows(traces)]
        out.append({"arm": arm, "runs": len(traces), "eoi": total.get("host_eoi", 0),
                    "pv": total.get("host_pv_eoi", 0), "rows": rows})
    return out


@dataclass(frozen=True)
class Matrix:
    """One runner's latest verdicts of one workload on one QEMU, guest base by host base (the nightly's
    kernel matrix): ``cells[(guest, host)]`` is (verdict, headline value, its group's anchor)."""

    runner: str
    workload: str
    qemu: str
    guests: tuple[str, ...]
    hosts: tuple[str, ...]
    cells: Mapping[tuple[str, str], tuple[str, str, str]]

    def cell(self, guest: str, host: str) -> tuple[str, str, str] | None:
        return self.cells.get((guest, host))


def matrices(result: CheckResult) -> list[Matrix]:
    """The kernel matrices of the check's groups: for each runner, QEMU version and workload that were
    measured on more than one (guest base, host base) pair."""
    found: dict[tuple[str, str, str], dict[tuple[str, str], tuple[str, str, str]]] = {}
    for g in result.groups:
        r = g.latest
        if r is None:
            continue
        guest, host, qemu = r.run.stack
        if guest is None or host is None:
            continue
        found.setdefault((r.run.runner_id, g.workload, qemu or "?"), {})[(guest, host)] = (
            r.verdict, _fmt(r.value["eoi_saved"]), _anchor(g))
    out = []
    for (runner, workload, qemu), cells in sorted(found.items()):
        if len(cells) < 2:
            continue
        guests = tuple(sorted({k[0] for k in cells}, key=_version_key))
        hosts = tuple(sorted({k[1] for k in cells}, key=_version_key))
        out.append(Matrix(runner, workload, qemu, guests, hosts, cells))
    return out


def _version_key(base: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in base.split("."))


def render_html(history: History, result: CheckResult) -> str:
    """The self-contained HTML report (``e2e/data/report.html.j2``, autoescaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("e2e", "data"), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    rows = [{"runner": g.runner, "anchor": _anchor(g), "workload": g.workload, "verdict": _verdict(r.verdict),
             "eoi": f"{_fmt(r.value['eoi_saved'])} {_ci(r.ci['eoi_saved'])}",
             "own": f"{_fmt(r.value['own_saved'])} {_ci(r.ci['own_saved'])}",
             "exit": f"{_fmt(r.value['exit_reduction'])} {_ci(r.ci['exit_reduction'])}", "run": r.run.name}
            for g in result.groups if (r := g.latest) is not None]
    return env.get_template(TEMPLATE).render(
        runs=len(history.runs), runners=len(history.runners()), root=str(history.root),
        latest=history.runs[-1].created, regressed=bool(result.regressions), warned=bool(result.warnings),
        head=["runner", "workload", "verdict", HEADLINES["eoi_saved"][0] + " [95% CI]",
              HEADLINES["own_saved"][0] + " [95% CI]", HEADLINES["exit_reduction"][0] + " [95% CI]", "run"],
        rows=rows, flags=[{"runner": f.runner, "workload": f.workload, "message": f.message,
                           "severity": f.severity} for f in result.flags],
        matrices=[{"title": f"{m.workload} on {m.runner}, QEMU {m.qemu}", "hosts": list(m.hosts),
                   "rows": [{"guest": guest, "cells": [
                       None if (c := m.cell(guest, host)) is None
                       else {"verdict": _verdict(c[0]), "value": c[1], "anchor": c[2]} for host in m.hosts]}
                       for guest in m.guests]} for m in matrices(result)],
        problems=list(history.problems), groups=[_group_view(history, result, g) for g in result.groups])


# ---------------------------------------------------------------- Markdown and JUnit


def render_markdown(history: History, result: CheckResult) -> str:
    state = f"{len(result.regressions)} regression(s)" if result.regressions else "no regression"
    if result.warnings:
        state += f", {len(result.warnings)} warning(s)"
    lines = [f"### pveoi PV EOI report: {state}", "",
             f"{len(history.runs)} run(s), {len(history.runners())} runner(s); latest {history.runs[-1].created}.",
             "", "| runner | workload | verdict | EOI exits saved/interrupt [95% CI] | "
             "saved/workload interrupt [95% CI] | kvm_exit reduction [95% CI] |",
             "|---|---|---|---|---|---|"]
    if result.warnings:  # shown first: what a reader of the night should see before the table
        lines[1:1] = ["", "Warnings (exit 0):", *(f"- [{f.runner}] {f.workload}: {f.message}" for f in result.warnings)]
    for g in result.groups:
        r = g.latest
        if r is None:
            continue
        lines.append(f"| {g.runner} | {g.workload} | **{r.verdict.upper()}** | {_fmt(r.value['eoi_saved'])} "
                     f"{_ci(r.ci['eoi_saved'])} | {_fmt(r.value['own_saved'])} {_ci(r.ci['own_saved'])} | "
                     f"{_fmt(r.value['exit_reduction'])} {_ci(r.ci['exit_reduction'])} |")
    for m in matrices(result):
        lines += ["", f"Kernel matrix: {m.workload} on {m.runner}, QEMU {m.qemu} (latest verdict, "
                      f"EOI exits saved/interrupt; rows: guest kernel base, columns: host kernel base)", "",
                  "| guest \\ host | " + " | ".join(m.hosts) + " |", "|---|" + "---|" * len(m.hosts)]
        for guest in m.guests:
            cells = [(f"**{c[0].upper()}** {c[1]}" if (c := m.cell(guest, host)) else "-") for host in m.hosts]
            lines.append(f"| {guest} | " + " | ".join(cells) + " |")
    if result.regressions:
        lines += ["", "Regressions:"]
        lines += [f"- [{f.runner}] {f.workload}: {f.message}" for f in result.regressions]
    floors = format_floors(result)
    if floors:
        lines += ["", "Detection floors (the smallest drop `--check` flags, from each runner's own spread):"]
        lines += [f"- {line}" for line in floors]
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
            found = _flags_of(result, g)
            if found:
                failures += 1
                ET.SubElement(case, "failure", message="; ".join(found))
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("skipped", str(skipped))
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def latest_runs(result: CheckResult) -> list[Run]:
    """The runs holding the latest verdicts (each once, in the check's group order)."""
    out: list[Run] = []
    for g in result.groups:
        if g.latest is not None and all(g.latest.run is not r for r in out):
            out.append(g.latest.run)
    return out


def render_ktap(history: History, result: CheckResult) -> str:
    """KTAP version 1 of the latest run of each runner (:mod:`e2e.report.ktap`)."""
    from . import ktap

    text = ktap.render([r.result for r in latest_runs(result)] or [history.runs[-1].result])
    if not result.warnings:
        return text
    # The warnings as diagnostics of the top level, after its last result: a diagnostic right before a
    # test's subtest block would read as that test's (kunit_tool attaches such lines to the next test).
    notes = [f"# WARNING [{f.runner}] {f.workload}: {f.message}" for f in result.warnings]
    return text.rstrip("\n") + "\n" + "\n".join(notes) + "\n"


def render_kcidb(history: History, origin: str) -> str:
    """A KCIDB v5.3 document of every run of the history (:mod:`e2e.report.kcidb`; ids are stable, so
    submitting a grown history again adds only what is new)."""
    from . import kcidb

    return json.dumps(kcidb.render([r.result for r in history.runs], origin), indent=1, sort_keys=True) + "\n"
