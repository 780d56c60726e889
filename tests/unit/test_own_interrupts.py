"""EOI exits saved per workload interrupt: the headline over the workload's own interrupts only
(:attr:`e2e.model.workloads.Workload.sources`), from a real traced net A/B through the virtual KVM host
(tests/fixtures/traced/net-ab.json, 2 reps per arm)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from e2e.analysis.history import load_history, records
from e2e.measure.trace_figures import source_counts, source_trapped
from e2e.model.result import OWN, Result
from e2e.model.workloads import WORKLOADS
from e2e.report import kcidb, ktap
from e2e.report.results import format_table, load
from e2e.run import ab

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "traced" / "net-ab.json"
NET = WORKLOADS["net"].sources


def reanalyzed(result: Result) -> Result:
    assert result.plan is not None
    return ab.reanalyze(result, result.plan)


def test_every_workload_names_its_own_interrupts() -> None:
    assert {w: WORKLOADS[w].sources for w in ("timer", "ipi", "block", "net")} == {
        "timer": ("LOC",), "ipi": ("CAL", "RES"), "block": ("virtio*-req.*",),
        "net": ("virtio*-input.*", "virtio*-output.*")}


def test_source_counts_sum_the_matching_vectors_only() -> None:
    trace = {"vectors": [
        {"name": "virtio0-input.0", "vector": 34, "vcpu": 1, "injected": 100, "pv": 97, "trapped": 3},
        {"name": "virtio0-output.0", "vector": 34, "vcpu": 0, "injected": 50, "pv": 45, "trapped": 5},
        {"name": "virtio0-config", "vector": 35, "vcpu": 0, "injected": 1, "pv": 0, "trapped": 1},
        {"name": "LOC", "vector": 236, "vcpu": 0, "injected": 40, "pv": 30, "trapped": 10}]}
    assert source_counts(trace, NET) == (8, 150)
    assert source_trapped(trace, NET) == pytest.approx(8 / 150)
    assert source_counts(trace, ("LOC",)) == (10, 40)
    # None where the run took none of them, or was not traced: no figure rather than 0 or 1.
    assert source_counts(trace, ("virtio*-req.*",)) is None
    assert source_trapped({}, NET) is None


def test_the_analysis_adds_the_figure_with_its_sources_and_the_table_shows_it() -> None:
    result = reanalyzed(load(FIXTURE))
    w = result.workloads["net"]
    own = w.metrics[OWN]
    assert own["sources"] == list(NET)
    # Without PV EOI every EOI traps; with it, the workload's own interrupts trap far less
    # often than the run's interrupts as a whole (the tick and IPIs coincide with them).
    assert own["off_median"] == 1.0
    assert own["diff"] == pytest.approx(1.0 - own["on_median"])
    assert own["diff"] > w.eoi_exits_saved_per_interrupt["value"]
    runs = [r for r in result.runs["net"] if r.arm == "on"]
    per_run = [source_trapped(r.trace, NET) for r in runs]
    assert None not in per_run and len(per_run) == 2
    assert own["on_median"] == pytest.approx(sum(x for x in per_run if x is not None) / 2)  # the median of 2
    text = format_table(result)
    assert (f"EOI exits saved per workload interrupt: {own['diff']:.3f}" in text
            and "its own: virtio*-input.*, virtio*-output.*" in text)
    case = ktap.workload_case(result, w)
    assert any(d.startswith("EOI exits saved per workload interrupt") for d in case.diagnostics)
    tests = [t for t in kcidb.render([result])["tests"] if t["path"].endswith("net.eoi_saved_own")]
    assert len(tests) == 1 and tests[0]["number"]["value"] == pytest.approx(own["diff"])
    assert tests[0]["misc"]["sources"] == list(NET)


def test_runs_without_a_trace_give_no_figure(tmp_path: Path) -> None:
    result = load(FIXTURE)
    bare = {k: tuple(dataclasses.replace(r, trace={}) for r in v) for k, v in result.runs.items()}
    again = reanalyzed(result.with_(runs=bare))
    assert OWN not in again.workloads["net"].metrics
    assert "per workload interrupt" not in format_table(again)


def write(doc: dict[str, Any], where: Path) -> Path:
    where.mkdir()
    (where / "run.json").write_text(json.dumps(doc))
    return where


def test_the_history_reads_it_from_the_metric_and_from_results_that_predate_it(tmp_path: Path) -> None:
    """A result written before the figure existed gets it from its traced runs, by the same
    formula (median off minus median on), so a runner's history has it from its first traced night."""
    old = json.loads(FIXTURE.read_text())
    assert OWN not in old["workloads"]["net"]["metrics"]
    new = reanalyzed(load(FIXTURE)).to_json()
    got = {}
    for name, doc in (("old", old), ("new", new)):
        history = load_history(write(doc, tmp_path / name))
        (rec,) = records(history, history.runners()[0], "net")
        got[name] = rec
    assert got["old"].value["own_saved"] == pytest.approx(got["new"].value["own_saved"])
    assert got["new"].value["own_saved"] == pytest.approx(new["workloads"]["net"]["metrics"][OWN]["diff"])
    assert got["new"].ci["own_saved"] == new["workloads"]["net"]["metrics"][OWN]["diff_ci"]
    assert len(got["old"].samples["own_saved"]) == 2 and got["old"].samples == got["new"].samples


def test_the_html_report_shows_it_for_a_result_that_predates_it(tmp_path: Path) -> None:
    from e2e.analysis.regress import check
    from e2e.report.render import render_html

    shutil.copy(FIXTURE, tmp_path / "run.json")
    history = load_history(tmp_path)
    (rec,) = records(history, history.runners()[0], "net")
    html = render_html(history, check(history))
    # The summary row carries the value (read back from the traced runs), and the trend has its panel.
    assert f"<td>{rec.value['own_saved']:.3f} </td>" in html or f"<td>{rec.value['own_saved']:.3f}</td>" in html
    assert "<!-- EOI exits saved per workload interrupt -->" in html
