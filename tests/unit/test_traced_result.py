"""A real traced result (tests/fixtures/traced/net-ab.json: a net A/B through the virtual KVM host,
2 reps, guest_patches/0003's markers): the per-vector attribution reaches the table, the HTML
report and the history's third figure; re-analysis keeps the exact per-vCPU agreement."""

from __future__ import annotations

import shutil
from pathlib import Path

from e2e.analysis.compare import agreement
from e2e.analysis.history import load_history, records
from e2e.analysis.regress import check
from e2e.report.render import render_html
from e2e.report.results import format_table, load

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


def test_the_html_report_lists_failed_attempts_and_restarts_with_links(tmp_path: Path) -> None:
    """A maintainer sees every attempt that gave no run and every restarted virtual host: class,
    outcome, evidence and links to the logs that exist (the retry's never overwrote them)."""
    import json

    doc = json.loads(FIXTURE.read_text())
    logs = tmp_path / "logs"
    (logs / "vhost-net-1").mkdir(parents=True)
    (logs / "net-off-2-console.log").write_text("sysrq: Resetting\n")
    doc["logs"] = str(logs)
    doc["workloads"]["net"]["attempts"] = [{
        "arm": "off", "rep": 1, "attempt": 1, "kind": "infrastructure", "class": "triple fault",
        "message": "QEMU (pid 134) exited mid-command: triple fault", "outcome": "retried",
        "evidence": ["SHUTDOWN reason guest-reset"], "logs": ["net-off-2-console.log", "net-off-2-qemu.log"]}]
    doc["host"]["virtual_host"]["restarts"] = [{
        "part": "net", "attempt": 1, "kind": "infrastructure", "class": "virtual host stall",
        "message": "the virtual host stalled: no heartbeat from its userspace for 151 s", "evidence": [],
        "logs": "vhost-net-1"}]
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "run.json").write_text(json.dumps(doc))
    history = load_history(tmp_path / "h")
    html = render_html(history, check(history))
    assert "Failed attempts (kept, never overwritten by their retries)" in html
    assert "arm off rep 2 attempt 1</td><td>triple fault</td>" in html
    assert f'<a href="{(logs / "net-off-2-console.log").as_uri()}">net-off-2-console.log</a>' in html
    assert " · net-off-2-qemu.log</td>" in html  # gone here: named, not linked
    assert "virtual host for net, attempt 1</td><td>virtual host stall</td>" in html
    assert f'<a href="{(logs / "vhost-net-1").as_uri()}">vhost-net-1</a>' in html
    text = format_table(load(tmp_path / "h" / "run.json"))
    assert "virtual host restarted for net (attempt 1): virtual host stall; logs: vhost-net-1" in text
    assert "off rep 2 attempt 1: triple fault (infrastructure, retried); logs: net-off-2-console.log" in text
