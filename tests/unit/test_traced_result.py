"""A real traced result (tests/fixtures/traced/net-ab.json: a net A/B through the virtual KVM host,
2 reps, guest_patches/0003's markers): the per-vector attribution reaches the table, the HTML
report and the history's third figure; re-analysis keeps the exact per-vCPU agreement."""

from __future__ import annotations

import shutil
from pathlib import Path

from e2e.analysis import agreement
from e2e.history import load_history, records
from e2e.regress import check
from e2e.report import render_html
from e2e.results import format_table, load

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "traced" / "net-ab.json"


def test_the_table_shows_eois_by_vector_with_reasons() -> None:
    text = format_table(load(FIXTURE))
    assert "arm on, EOIs by vector over 2 run(s) (marker windows)" in text
    assert "PV EOI taken when armed 1.0000-1.0000" in text
    line = next(ln for ln in text.splitlines() if "virtio0-input.0" in ln and "IRR pending" in ln)
    assert "VM exit before the EOI" in line
    assert "arm off, EOIs by vector" in text and "PV EOI off" in text


def test_vectors_add_up_and_agreement_is_exact_per_vcpu() -> None:
    result = load(FIXTURE)
    runs = result.runs["net"]
    for r in runs:
        for v in r.trace["vcpus"]:
            mine = [x for x in r.trace["vectors"] if x["vcpu"] == v["vcpu"]]
            assert sum(x["pv"] for x in mine) == v["host_pv_eoi"] == v["guest_skipped"]
            assert sum(x["pv"] + x["trapped"] for x in mine) == v["host_eoi"]
            # The written counter lives in the PV EOI hook, which only a PV EOI guest installs.
            assert v["host_trapped"] == v["guest_written"] if r.arm == "on" else v["guest_written"] == 0
    entries, reasons = agreement(list(result.arms.values()), runs, result.workloads["net"].thresholds)
    assert reasons == [] and len(entries) == 8 and all(a.vcpu is not None and a.ok for a in entries)


def test_the_html_report_and_the_history_carry_it(tmp_path: Path) -> None:
    shutil.copy(FIXTURE, tmp_path / "run.json")
    history = load_history(tmp_path)
    (rec,) = records(history, history.runners()[0], "net")
    assert rec.value["pv_taken"] == 1.0 and len(rec.samples["pv_taken"]) == 2
    html = render_html(history, check(history))
    assert "EOIs by vector, arm on (2 runs" in html and "virtio0-input.0 (0x22)" in html
    assert "PV EOI taken when armed" in html
