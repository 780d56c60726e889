"""The history, the regression check and the renderers, on synthetic histories.

A synthetic run is a real schema-2 result document whose per-rep counts are
made so that each rep's "EOI exits saved per interrupt" is a chosen value
(tests/helpers/results.py).
"""

from __future__ import annotations

import json
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from e2e import cli
from e2e.analysis.droprule import CheckSettings, one_sided_p
from e2e.analysis.history import HistoryError, load_history, migrate
from e2e.analysis.regress import check, format_flags
from e2e.errors import CapabilityError
from e2e.report import results
from e2e.report.render import render_html, render_junit, render_markdown
from tests.helpers.results import make_doc, noisy, write_history

# ---------------------------------------------------------------- the check


@pytest.mark.parametrize("seed", range(5))
def test_a_clean_noisy_history_is_never_flagged(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    docs = [make_doc(i, {"timer": (noisy(rng, 0.95), "pass")}) for i in range(16)]
    for night in range(1, len(docs) + 1):  # every night's check, as the nightly job would run it
        root = write_history(tmp_path / f"n{night}", docs[:night])
        result = check(load_history(root))
        assert result.flags == [], f"night {night}: {format_flags(result)}"
        assert result.exit_code == 0


def test_a_ten_percent_drop_is_flagged_with_its_size_and_run(tmp_path: Path) -> None:
    rng = random.Random(1)
    docs = [make_doc(i, {"timer": (noisy(rng, 0.95), "pass")}) for i in range(6)]
    docs.append(make_doc(6, {"timer": (noisy(rng, 0.95 * 0.9), "pass")}))
    result = check(load_history(write_history(tmp_path, docs)))
    drops = [f for f in result.flags if f.kind == "drop"]
    assert {f.metric for f in drops} == {"EOI exits saved per interrupt", "kvm_exit reduction"}
    saved = next(f for f in drops if f.metric == "EOI exits saved per interrupt")
    assert saved.since == "run006-r1" and saved.workload == "timer"
    assert saved.before == pytest.approx(0.95, abs=0.03) and saved.after == pytest.approx(0.855, abs=0.03)
    assert saved.p_value is not None and saved.p_value < 0.05
    assert result.exit_code == 1
    text = format_flags(result)
    assert "REGRESSION [r1] timer: EOI exits saved per interrupt dropped" in text
    assert "since run run006-r1" in text


def test_a_sustained_drop_is_dated_from_its_first_run(tmp_path: Path) -> None:
    rng = random.Random(2)
    docs = [make_doc(i, {"timer": (noisy(rng, 0.95), "pass")}) for i in range(5)]
    docs += [make_doc(i, {"timer": (noisy(rng, 0.80), "pass")}) for i in range(5, 8)]
    result = check(load_history(write_history(tmp_path, docs)))
    assert {f.since for f in result.flags} == {"run005-r1"}


def test_a_drop_within_the_runs_spread_is_not_flagged(tmp_path: Path) -> None:
    # 13 % below the baseline median, but the latest reps sit inside the baseline's spread.
    base = [[0.40, 0.75, 0.99], [0.42, 0.76, 0.98], [0.38, 0.74, 0.99]]
    latest = make_doc(3, {"timer": ([0.50, 0.65, 0.80], "pass")})
    # Two baseline runs (6 reps): too few for a spread, so the relative threshold applies and the test decides.
    docs = [*(make_doc(i, {"timer": (s, "pass")}) for i, s in enumerate(base[:2])), latest]
    result = check(load_history(write_history(tmp_path / "two", docs)), CheckSettings(baseline=5))
    assert not [f for f in result.flags if f.metric == "EOI exits saved per interrupt"]
    assert any("within the runs' spread" in n for g in result.groups for n in g.notes)
    assert result.groups[0].floors["eoi_saved"].basis == "relative"
    # Three (9 reps): the spread is known, and its floor is far beyond this drop.
    docs = [*(make_doc(i, {"timer": (s, "pass")}) for i, s in enumerate(base)), latest]
    result = check(load_history(write_history(tmp_path / "three", docs)), CheckSettings(baseline=5))
    assert not [f for f in result.flags if f.metric == "EOI exits saved per interrupt"]
    floor = result.groups[0].floors["eoi_saved"]
    assert floor.basis == "spread" and floor.threshold > 0.75 - 0.65


def test_a_missing_workload_is_reported(tmp_path: Path) -> None:
    rng = random.Random(3)
    docs = [make_doc(i, {"timer": (noisy(rng, 0.95), "pass"), "ipi": (noisy(rng, 0.9), "pass")}) for i in range(3)]
    docs.append(make_doc(3, {"timer": (noisy(rng, 0.95), "pass")}))
    result = check(load_history(write_history(tmp_path, docs)))
    assert [(f.kind, f.workload) for f in result.flags] == [("missing", "ipi")]
    assert "last run in run002-r1" in result.flags[0].message


def test_runners_are_compared_only_with_themselves(tmp_path: Path) -> None:
    rng = random.Random(4)
    docs = []
    for i in range(12):  # a fast runner (0.99) and a slower one (0.80), interleaved in time
        runner, mean = ("fast", 0.99) if i % 2 else ("slow", 0.80)
        docs.append(make_doc(i, {"timer": (noisy(rng, mean, 0.01), "pass")}, runner=runner))
    history = load_history(write_history(tmp_path / "mixed", docs))
    assert history.runners() == ["fast", "slow"]
    assert check(history).flags == []
    # The same runner reached another way (direct, not virtual) has no baseline in that mode: not compared.
    docs.append(make_doc(12, {"timer": (noisy(rng, 0.5, 0.01), "pass")}, runner="fast", host="direct"))
    assert check(load_history(write_history(tmp_path / "mixed2", docs))).flags == []
    # A drop on one runner is flagged on that runner only.
    docs.append(make_doc(13, {"timer": (noisy(rng, 0.60, 0.01), "pass")}, runner="slow"))
    result = check(load_history(write_history(tmp_path / "mixed3", docs)))
    assert result.flags and {f.runner for f in result.flags} == {"slow"}


def test_pass_to_fail_and_measurable_to_not_measurable(tmp_path: Path) -> None:
    rng = random.Random(5)
    docs = [make_doc(i, {"timer": (noisy(rng, 0.95), "pass"), "net": (noisy(rng, 0.7), "pass")}) for i in range(3)]
    docs.append(make_doc(3, {"timer": (noisy(rng, 0.95), "fail"), "net": ([], "not-measurable")}))
    docs.append(make_doc(4, {"timer": (noisy(rng, 0.95), "fail"), "net": ([], "not-measurable")}))
    result = check(load_history(write_history(tmp_path, docs)))
    kinds = {(f.kind, f.workload, f.since) for f in result.flags}
    assert ("fail", "timer", "run003-r1") in kinds
    assert ("not-measurable", "net", "run003-r1") in kinds
    msg = next(f.message for f in result.flags if f.kind == "fail")
    assert msg.startswith("verdict turned from pass to fail since run run003-r1")


def test_a_run_that_measured_nothing_counts_as_not_measurable_not_missing(tmp_path: Path) -> None:
    rng = random.Random(7)
    docs = [make_doc(i, {"timer": (noisy(rng, 0.95), "pass")}) for i in range(2)]
    docs.append({**make_doc(2, {}), "verdict": "not-measurable", "reason": "no usable KVM; fix: ..."})
    result = check(load_history(write_history(tmp_path, docs)))
    assert [(f.kind, f.workload) for f in result.flags] == [("not-measurable", "timer")]
    assert "no usable KVM" in result.flags[0].message


@pytest.mark.parametrize("kind", ["not-measurable", "error"])
def test_real_documents_of_a_run_that_measured_nothing_are_flagged(tmp_path: Path, kind: str) -> None:
    rng = random.Random(8)
    docs = [make_doc(i, {"timer": (noisy(rng, 0.95), "pass")}) for i in range(3)]
    if kind == "error":
        res = results.error_result(CapabilityError("perf is missing", fix="apt-get install linux-perf"),
                                   "virtual", "kvm_pvm", 3)
    else:
        res = results.not_measurable("no usable KVM", 3)
    docs.append(res.with_(runner={"id": "r1"}, created="2026-11-02T00:00:00Z").to_json())
    history = load_history(write_history(tmp_path, docs))
    result = check(history)
    assert [(f.kind, f.workload) for f in result.flags] == [("not-measurable", "timer")]
    assert f"measurable to {kind}" in result.flags[0].message
    assert ("perf is missing" if kind == "error" else "no usable KVM") in result.flags[0].message
    assert "this run measured nothing" in render_html(history, result)


def test_an_error_verdicts_leftover_figures_are_not_a_drop(tmp_path: Path) -> None:
    rng = random.Random(9)
    docs = [make_doc(i, {"timer": (noisy(rng, 0.95), "pass")}) for i in range(4)]
    docs.append(make_doc(4, {"timer": (noisy(rng, 0.5), "pass")}))
    docs[-1]["workloads"]["timer"]["verdict"] = "error"
    del docs[-1]["arms"]["on"]["runs"]["timer"][1]  # a rep that did not complete: reps pair by number
    result = check(load_history(write_history(tmp_path, docs)))
    assert [f.kind for f in result.flags] == ["not-measurable"]


def test_with_one_rep_a_drop_needs_to_clear_the_whole_baseline(tmp_path: Path) -> None:
    rng = random.Random(10)
    docs = [make_doc(i, {"timer": (noisy(rng, 0.95, n=1), "pass")}) for i in range(5)]
    assert check(load_history(write_history(tmp_path / "a", [*docs, make_doc(5, {"timer": ([0.85], "pass")})]))
                 ).flags
    inside = min(d["workloads"]["timer"]["eoi_exits_saved_per_interrupt"]["value"] for d in docs) + 1e-3
    result = check(load_history(write_history(tmp_path / "b", [*docs, make_doc(5, {"timer": ([inside], "pass")})])),
                   CheckSettings(rel=0.0))
    assert not [f for f in result.flags if f.metric == "EOI exits saved per interrupt"]


@pytest.mark.parametrize("bad", [{"runner": None}, {"workloads": {"timer": "x"}},
                                 {"workloads": {"timer": {"eoi_exits_saved_per_interrupt": {"value": "0.9"}}}},
                                 {"arms": {"on": {"runs": {"timer": [{"counts": {}}]}}},
                                  "workloads": {"timer": {"treatment": "on"}}}])
def test_a_malformed_result_is_named_not_a_traceback(tmp_path: Path, bad: dict[str, Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root = write_history(tmp_path / "h", [make_doc(0, {"timer": ([0.95] * 3, "pass")})])
    (root / "bad.json").write_text(json.dumps({**make_doc(1, {}), **bad}))
    assert any("bad.json" in p for p in load_history(root).problems)
    assert cli.main(["report", "--history", str(root), "--check"]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_a_runner_whose_newest_result_is_too_old_is_flagged(tmp_path: Path) -> None:
    import calendar
    import time

    history = load_history(write_history(tmp_path, [make_doc(0, {"timer": ([0.95] * 3, "pass")})]))
    created = calendar.timegm(time.strptime(history.runs[-1].created, "%Y-%m-%dT%H:%M:%SZ"))
    assert check(history, CheckSettings(max_age_hours=20, now=created + 19 * 3600)).flags == []
    [stale] = check(history, CheckSettings(max_age_hours=20, now=created + 21 * 3600)).flags
    assert stale.kind == "stale" and "21.0 h old" in stale.message and "recorded nothing" in stale.message
    assert check(history).flags == []  # off unless asked for


def test_a_runner_that_never_measured_is_a_note_not_a_regression(tmp_path: Path) -> None:
    docs = [make_doc(i, {"timer": ([], "not-measurable")}) for i in range(2)]
    result = check(load_history(write_history(tmp_path, docs)))
    assert result.flags == [] and any("never measurable" in n for n in result.groups[0].notes)
    # A runner whose every run measured nothing (no workload at all) is a skip, not a failure.
    root = write_history(tmp_path / "none", [{**make_doc(0, {}), "reason": "no KVM"}])
    result = check(load_history(root))
    assert result.flags == [] and "no KVM" in result.groups[0].notes[0]
    junit = ET.fromstring(render_junit(result).split("?>", 1)[1])
    assert next(junit.iter("testcase")).find("skipped") is not None
    assert "no KVM" in render_html(load_history(root), result)


def test_one_sided_p_direction() -> None:
    assert one_sided_p([0.5, 0.6, 0.7], [0.9, 0.95, 1.0, 0.92, 0.97, 0.99]) == pytest.approx(1 / 84)
    assert one_sided_p([0.9, 0.95, 1.0], [0.5, 0.6, 0.7]) > 0.9
    assert one_sided_p([], [1.0]) == 1.0


# ---------------------------------------------------------------- loading


def test_schema_1_documents_migrate(tmp_path: Path) -> None:
    doc = make_doc(0, {"timer": ([0.9, 0.95, 0.97], "pass")})
    doc["schema"] = 1
    doc["runner"] = {"hostname": "pveoi-vhost", "kernel": "6.1.192"}
    doc["host"] = {"chosen": "virtual", "outer_runner": {"hostname": "ci-7", "kernel": "6.18"}}
    new = migrate(doc)
    assert new["schema"] == 3
    assert new["runner"]["hostname"] == "ci-7" and new["runner"]["id"] == "ci-7"
    assert new["host"]["inner_runner"]["hostname"] == "pveoi-vhost" and "outer_runner" not in new["host"]
    assert doc["schema"] == 1  # the input is untouched
    history = load_history(write_history(tmp_path, [doc]))
    assert history.runners() == ["ci-7"]


def test_unreadable_files_are_named_and_fail_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_history(tmp_path / "h", [make_doc(0, {"timer": ([0.95] * 3, "pass")})])
    (root / "future.json").write_text(json.dumps({**make_doc(1, {}), "schema": 99}))
    (root / "torn.json").write_text('{"schema": 2, "verd')
    (root / ".run.json.abc.tmp").write_text("in progress")  # an atomic write in flight: not a result
    history = load_history(root)
    assert len(history.runs) == 1
    assert any("schema 99" in p and "upgrade pveoi" in p for p in history.problems)
    assert any("torn.json" in p for p in history.problems)
    with pytest.raises(HistoryError):
        history.require_clean()
    assert cli.main(["report", "--history", str(root), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "future.json: result schema 99" in err and "(and 1 more)" in err  # files are read in name order
    # Without --check the report still renders what it can.
    assert cli.main(["report", "--history", str(root), "--markdown", str(tmp_path / "r.md")]) == 0


@pytest.mark.parametrize("make", ["missing", "empty", "junk"])
def test_an_unusable_history_exits_2_with_one_line(tmp_path: Path, make: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "h"
    if make != "missing":
        root.mkdir()
    if make == "junk":
        (root / "x.json").write_text("[]")
    assert cli.main(["report", "--history", str(root), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pveoi: error: ") and "fix:" in err[0]


# ---------------------------------------------------------------- renderers and CLI


def test_report_cli_writes_every_format_and_exits_by_the_check(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(6)
    docs = [make_doc(i, {"timer": (noisy(rng, 0.95), "pass")}) for i in range(4)]
    root = write_history(tmp_path / "h", docs)
    out = tmp_path / "out"
    argv = ["report", "--history", str(root), "--html", str(out / "r.html"), "--markdown", str(out / "r.md"),
            "--junit", str(out / "r.xml"), "--check", "--baseline", "3"]
    assert cli.main(argv) == 0
    assert "check: clean" in capsys.readouterr().out
    docs.append(make_doc(4, {"timer": (noisy(rng, 0.70), "pass")}))
    write_history(root, docs)
    assert cli.main(argv) == 1
    printed = capsys.readouterr().out
    assert "REGRESSION [r1] timer: EOI exits saved per interrupt dropped" in printed
    md = (out / "r.md").read_text()
    assert "regression(s)" in md and "| r1 | timer | **PASS** |" in md
    suites = ET.parse(out / "r.xml").getroot()
    failures = [c.get("name") for c in suites.iter("testcase") if c.find("failure") is not None]
    assert failures == ["timer.regression"]
    page = (out / "r.html").read_text()
    assert page.count("<svg") == 3 and "<script" not in page
    # Self-contained: nothing fetched (SVG namespaces are names, not fetches).
    assert not re.search(r"""(src=|@import|url\(\s*['"]?https?:|href=['"]https?:)""", page)
    assert "EOI exits saved per interrupt dropped" in page and "Doctor findings" in page
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_renderers_handle_failing_and_unmeasurable_workloads(tmp_path: Path) -> None:
    docs = [make_doc(0, {"timer": ([0.95] * 3, "fail"), "net": ([], "not-measurable")})]
    history = load_history(write_history(tmp_path, docs))
    result = check(history)
    assert "**FAIL**" in render_markdown(history, result)
    page = render_html(history, result)
    assert "NOT-MEASURABLE" in page and "kvm_pv_eoi was 0" in page
    root = ET.fromstring(render_junit(result).split("?>", 1)[1])
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["timer.verdict"].find("failure") is not None
    assert cases["net.verdict"].find("skipped") is not None


def test_building_the_cli_loads_no_numeric_stack() -> None:
    """`pveoi` builds its parser (report's included) for every command: it must stay light, and work
    where the numeric libraries are not importable (e.g. a non-root user of a root-owned venv)."""
    import subprocess
    import sys

    code = ("import sys, e2e.cli; e2e.cli.make_parser(); "
            "print(sorted(m for m in ('numpy', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_require_measurable_flags_a_runner_that_never_measured(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """r1 never measured (not measurable, then an error that measured nothing); r2 measured once, long ago:
    only r1 is flagged, and only when asked for."""
    error_doc = {**make_doc(1, {}), "verdict": "error", "reason": "perf is missing"}
    r1 = [make_doc(0, {"timer": ([], "not-measurable")}), error_doc]
    r2 = [make_doc(0, {"timer": ([0.95] * 3, "pass")}, runner="r2"),
          make_doc(1, {"timer": ([], "not-measurable")}, runner="r2")]
    root = write_history(tmp_path, [*r1, *r2])
    history = load_history(root)
    assert not [f for f in check(history).flags if f.runner == "r1"]  # a note unless asked for
    never = [f for f in check(history, CheckSettings(require_measurable=True)).flags if f.kind == "never-measured"]
    assert [(f.runner, f.since) for f in never] == [("r1", "run000-r1")]
    assert "none of its 2 result(s) measured PV EOI (1 error, 1 not-measurable)" in never[0].message
    assert "latest run001-r1: error: perf is missing" in never[0].message
    # The CLI: --check --require-measurable exits 1 naming r1; without it, r1 alone is clean.
    only_r1 = write_history(tmp_path / "r1", r1)
    assert cli.main(["report", "--history", str(only_r1), "--check"]) == 0
    assert cli.main(["report", "--history", str(only_r1), "--check", "--require-measurable"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION [r1] (all): none of its 2 result(s) measured PV EOI" in out
