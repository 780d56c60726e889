"""Checked-in histories of every schema pveoi has written (tests/fixtures/history/schema<N>/,
made by that schema's own writer: see make_fixtures.py there) load, render, check and
convert as a history of today's does.

Each history has two runners: ``ci-a`` (through the virtual KVM host) and ``ci-b``
(direct), with a pass, a fail and a run that measured nothing or did not complete.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from e2e import cli
from e2e.analysis.history import load_history
from e2e.analysis.regress import check
from e2e.model.result import SCHEMA, Result
from e2e.report import results
from e2e.report.render import render_html, render_junit, render_markdown

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "history"
SCHEMAS = (1, 2, 3)


def fixture_files(schema: int) -> list[Path]:
    return sorted((FIXTURES / f"schema{schema}").glob("*.json"))


def raw(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


ALL = [p for s in SCHEMAS for p in fixture_files(s)]


def test_the_fixtures_are_of_the_schema_they_claim() -> None:
    for schema in SCHEMAS:
        files = fixture_files(schema)
        assert files, f"no schema-{schema} fixture"
        assert {raw(p)["schema"] for p in files} == {schema}
    for schema in (1, 2):
        docs = [raw(p) for p in fixture_files(schema)]
        assert {d["verdict"] for d in docs} >= {"pass", "fail"}
        assert any(d["verdict"] in ("not-measurable", "error") and not d["workloads"] for d in docs)
    # Schema 1 kept the machine that ran pveoi as host.outer_runner (for the virtual host).
    assert any("outer_runner" in raw(p)["host"] for p in fixture_files(1))
    assert not any("outer_runner" in raw(p)["host"] for p in fixture_files(2))
    assert SCHEMA == 3


@pytest.mark.parametrize("schema", SCHEMAS)
def test_each_history_loads_with_both_runners(schema: int) -> None:
    history = load_history(FIXTURES / f"schema{schema}")
    assert history.problems == []
    assert len(history.runs) == len(fixture_files(schema))
    assert history.runners() == (["ci-a"] if schema == 3 else ["ci-a", "ci-b"])
    created = [r.created for r in history.runs]
    assert created == sorted(created), "oldest first"
    for run in history.runs:
        assert run.doc["schema"] == SCHEMA, "every document is read as today's"
        assert run.runner in run.path.name, "the runner is the machine that ran pveoi, not the virtual host"
        assert run.mode in ("virtual", "direct", "not-measurable")


def test_schema_1_virtual_runs_are_grouped_by_the_outer_machine() -> None:
    history = load_history(FIXTURES / "schema1")
    virtual = [r for r in history.runs if r.mode == "virtual"]
    assert virtual and all(r.runner == "ci-a" for r in virtual)
    for r in virtual:
        assert r.doc["host"]["inner_runner"]["hostname"] == "pveoi-vhost"
        assert "outer_runner" not in r.doc["host"]


def test_the_histories_load_together() -> None:
    # Merging histories of any age is copying their files into one directory.
    history = load_history(FIXTURES)
    assert history.problems == []
    assert len(history.runs) == len(ALL)
    assert history.runners() == ["ci-a", "ci-b"]
    assert [r.doc["schema"] for r in history.runs] == [SCHEMA] * len(ALL)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_each_history_renders(schema: int) -> None:
    history = load_history(FIXTURES / f"schema{schema}")
    result = check(history)
    page = render_html(history, result)
    assert page.startswith("<!doctype html>") and "ci-a" in page and "timer" in page
    md = render_markdown(history, result)
    assert md.startswith("### pveoi PV EOI report:") and "| ci-a | timer |" in md
    suites = ET.fromstring(render_junit(result).split("?>", 1)[1])
    names = {c.get("name") for c in suites.iter("testcase")}
    assert "timer.verdict" in names
    if schema != 3:
        assert "ci-b" in page and "| ci-b | ipi |" in md
        assert "this run measured nothing" in page  # ci-b's last run: no workload at all
        assert "| ci-a | timer | **FAIL** |" in md
        failures = {c.get("name") for c in suites.iter("testcase") if c.find("failure") is not None}
        assert "timer.verdict" in failures


@pytest.mark.parametrize(("schema", "expected"), [
    (1, {("fail", "ci-a", "timer"), ("not-measurable", "ci-b", "timer"), ("not-measurable", "ci-b", "ipi")}),
    (2, {("fail", "ci-a", "timer"), ("not-measurable", "ci-b", "timer"), ("not-measurable", "ci-b", "ipi")}),
    (3, set()),
])
def test_the_check_finds_what_each_history_holds(schema: int, expected: set[tuple[str, str, str]]) -> None:
    result = check(load_history(FIXTURES / f"schema{schema}"))
    assert {(f.kind, f.runner, f.workload) for f in result.flags} == expected
    assert result.exit_code == (1 if expected else 0)


@pytest.mark.parametrize(("schema", "code", "words"), [
    (1, 1, "REGRESSION [ci-a] timer: verdict turned from pass to fail"),
    (2, 1, "REGRESSION [ci-a] timer: verdict turned from pass to fail"),
    (3, 0, "check: clean"),
])
def test_report_check_on_each_history(tmp_path: Path, capsys: pytest.CaptureFixture[str], schema: int, code: int,
                                      words: str) -> None:
    out = tmp_path / "out"
    argv = ["report", "--history", str(FIXTURES / f"schema{schema}"), "--check", "--html", str(out / "r.html"),
            "--markdown", str(out / "r.md"), "--junit", str(out / "r.xml")]
    assert cli.main(argv) == code
    assert words in capsys.readouterr().out
    assert (out / "r.html").is_file() and (out / "r.md").is_file()
    ET.parse(out / "r.xml")


def test_a_history_of_every_schema_is_checked_as_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ci-a's schema-3 pass after its schema-2 fail: the verdict is back, the check is clean for it."""
    root = tmp_path / "h"
    for p in ALL:
        dest = root / p.parent.name / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    result = check(load_history(root))
    assert not [f for f in result.flags if f.runner == "ci-a"]
    assert {(f.kind, f.workload) for f in result.flags if f.runner == "ci-b"} == {
        ("not-measurable", "timer"), ("not-measurable", "ipi")}
    assert cli.main(["report", "--history", str(root), "--check"]) == 1
    assert "[ci-a]" not in capsys.readouterr().out.split("check:")[0].replace("note [ci-a]", "").replace(
        "floor [ci-a]", "")


@pytest.mark.parametrize("path", ALL, ids=[f"{p.parent.name}/{p.stem}" for p in ALL])
def test_reading_and_writing_keeps_the_keys_reports_read(path: Path) -> None:
    doc = raw(path)
    again = Result.from_json(doc, str(path)).to_json()
    assert json.loads(json.dumps(again, allow_nan=False)) == again
    assert again["verdict"] == doc["verdict"]
    assert again["schema"] == SCHEMA
    assert set(again["workloads"]) == set(doc["workloads"])
    for name, w in doc["workloads"].items():
        new = again["workloads"][name]
        assert new["verdict"] == w["verdict"]
        assert new["reasons"] == w["reasons"]
        head = w.get("eoi_exits_saved_per_interrupt")
        assert (new["eoi_exits_saved_per_interrupt"] or {}).get("value") == (head or {}).get("value")
        assert [(a["host_pv_eoi"], a["guest_skipped"], a["ok"]) for a in new["agreement"]] == [
            (a["host_pv_eoi"], a["guest_skipped"], a["ok"]) for a in w.get("agreement", [])]
        assert new["metrics"] == w.get("metrics", {})
        for arm in doc["arms"]:  # every run is kept, in its arm
            assert [r["counts"] for r in again["arms"][arm]["runs"].get(name, [])] == [
                r["counts"] for r in doc["arms"][arm]["runs"].get(name, [])]
    # A second round trip changes nothing.
    assert Result.from_json(json.loads(json.dumps(again))).to_json() == again


def test_the_fixtures_hold_agreement_entries() -> None:
    """The round-trip test above compares something: the measured fixtures have agreement entries."""
    for path in ALL:
        doc = raw(path)
        for w in doc["workloads"].values():
            if w.get("eoi_exits_saved_per_interrupt"):
                assert len(w["agreement"]) >= 2, path


#: The measured fixtures whose every run completed (the run-error ones lost a run).
COMPLETE = [p for p in ALL if raw(p)["workloads"] and "run-error" not in p.name]


@pytest.mark.parametrize("path", COMPLETE, ids=[f"{p.parent.name}/{p.stem}" for p in COMPLETE])
def test_analyze_reproduces_a_complete_results_verdict(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pveoi analyze` of a result whose every run completed draws the same verdict from its raw counts."""
    doc = raw(path)
    assert doc["verdict"] in ("pass", "fail")
    code = cli.main(["analyze", str(path)])
    assert code == {"pass": 0, "fail": 1}[doc["verdict"]]
    assert capsys.readouterr().out.startswith(f"verdict: {doc['verdict'].upper()}")


def test_analyze_keeps_an_incomplete_result_from_passing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A schema-2 result whose ipi run never completed (verdict error) must not become a pass when
    concluded anew: the run is missing from its raw counts as much as it was then."""
    path = FIXTURES / "schema2" / "2026-11-27T0416-ci-b-run-error.json"
    assert raw(path)["workloads"]["ipi"]["verdict"] == "error"
    code = cli.main(["analyze", str(path), "--json", str(tmp_path / "again.json")])
    again = results.load(tmp_path / "again.json")
    assert again.workloads["ipi"].verdict == "error", again.workloads["ipi"].reasons
    assert again.verdict == "error" and code == 2
