"""Unit tests for e2e.report.results: atomic emission of result documents, history
file names, and the end-of-run table."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from e2e.model.result import SCHEMA, Result, WorkloadResult
from e2e.report.results import emit, format_table, history_name, kernel_manifest, not_measurable


def small_doc() -> dict[str, Any]:
    """A (schema 1) result document shaped like run_ab's, one workload, one run per arm."""
    def run(arm: str, pv: int, skipped: int | None) -> dict[str, Any]:
        return {"rep": 0, "arm": arm,
                "counts": {"kvm:kvm_pv_eoi": pv, "kvm:kvm_inj_virq": 3000},
                "guest": {"interrupts": {"total": 3000},
                          "pv_eoi": None if skipped is None else {"skipped": skipped}}}

    return {
        "schema": 1, "created": "2026-11-25T10:20:30Z", "verdict": "pass", "reason": "timer: pass",
        "host": {"chosen": "direct", "reason": "/dev/kvm is usable"},
        "arms": {"on": {"runs": {"timer": [run("on", 2990, 2992)]}},
                 "off": {"runs": {"timer": [run("off", 0, None)]}}},
        "workloads": {
            "timer": {
                "verdict": "pass", "description": "3000 x 100 us clock_nanosleep",
                "treatment": "on", "baseline": "off",
                "eoi_exits_saved_per_interrupt": {"value": 0.9987, "ci": [0.99, 1.0], "limit": 1.0},
                "metrics": {
                    "kvm_exit": {"off_median": 2.1, "on_median": 1.1, "reduction": 0.47619,
                                 "reduction_ci": [0.45, 0.5]},
                    "kvm_pv_eoi": {"off_median": 0.0, "on_median": 0.9967, "reduction": None,
                                   "reduction_ci": None},
                    "odd": {"off_median": float("nan"), "on_median": 3, "reduction": None},
                },
                "reasons": [],
                "notes": ["a note"],
            },
        },
    }


def small_result() -> Result:
    return Result.from_json(small_doc())


# ---------------------------------------------------------------- emit


def test_emit_writes_json_and_history(tmp_path: Path) -> None:
    doc = small_result()
    json_path = tmp_path / "out" / "ab.json"
    history = tmp_path / "history"
    emit(doc, json_path, history)
    written = json.loads(json_path.read_text())
    assert written["verdict"] == "pass"
    assert written["workloads"]["timer"]["metrics"]["kvm_exit"]["reduction"] == 0.47619
    entries = list(history.iterdir())
    assert len(entries) == 1
    assert entries[0].read_text() == json_path.read_text()
    assert entries[0].name.endswith(".json")
    assert os.listdir(json_path.parent) == ["ab.json"], "no temp file left behind"


def test_emit_is_deterministic_text(tmp_path: Path) -> None:
    host = {"b": 1, "a": {"z": Path("/x"), "y": 2}}
    emit(Result(verdict="pass", created="2026-11-25T10:20:30Z", host=host), tmp_path / "1.json", None)
    emit(Result(verdict="pass", created="2026-11-25T10:20:30Z", host=dict(reversed(list(host.items())))),
         tmp_path / "2.json", None)
    text = (tmp_path / "1.json").read_text()
    assert text == (tmp_path / "2.json").read_text(), "keys are sorted"
    assert text.endswith("}\n")
    doc = json.loads(text)
    assert list(doc) == sorted(doc)
    assert doc["host"] == {"a": {"y": 2, "z": "/x"}, "b": 1}, "non-JSON values become strings"


def test_emit_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "ab.json"
    emit(Result(verdict="fail"), path, None)
    with open(path) as reader:  # a reader of the old document is never handed a half-written one
        emit(Result(verdict="pass"), path, None)
        assert json.loads(reader.read())["verdict"] == "fail"
    assert json.loads(path.read_text())["verdict"] == "pass"


def test_emit_history_accumulates(tmp_path: Path) -> None:
    doc = small_result()
    for _ in range(3):
        emit(doc, None, tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 3


def test_emit_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    emit(small_result(), None, None)
    assert list(tmp_path.iterdir()) == []


def test_emit_expands_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    emit(Result(verdict="pass"), Path("~/r/ab.json"), Path("~/r/hist"))
    assert (tmp_path / "r" / "ab.json").is_file()
    assert len(list((tmp_path / "r" / "hist").iterdir())) == 1


# ---------------------------------------------------------------- history_name


def test_history_name_unique_and_safe() -> None:
    doc = small_result()
    names = {history_name(doc) for _ in range(200)}
    assert len(names) == 200
    for name in names:
        assert name.startswith("20261125T102030Z-")
        assert name.endswith(f"-{os.getpid()}-{name.split('-')[-1]}")
        assert re.fullmatch(r"[^/:\s]+\.json", name), name


def test_history_name_without_created() -> None:
    name = history_name(Result(verdict="pass", created=""))
    assert re.match(r"\d{8}T\d{6}Z-", name), name


# ---------------------------------------------------------------- documents


def test_not_measurable_document() -> None:
    res = not_measurable("no KVM here", 3)
    doc = res.to_json()
    assert doc["schema"] == SCHEMA == 3
    assert doc["verdict"] == "not-measurable"
    assert doc["reason"] == doc["host"]["reason"] == "no KVM here"
    assert doc["runs_per_arm"] == 3
    assert doc["eoi_exits_saved_per_interrupt"] is None
    json.dumps(doc, allow_nan=False)
    assert doc["workloads"] == {} and doc["arms"] == {}
    assert res.exit_code == 2
    assert not_measurable("x", None).to_json()["runs_per_arm"] is None
    assert Result.from_json(json.loads(json.dumps(doc))).to_json() == doc
    text = format_table(res)
    assert text.splitlines()[0] == "verdict: NOT-MEASURABLE"
    assert "reason: no KVM here" in text


def test_kernel_manifest(tmp_path: Path) -> None:
    plain = tmp_path / "bzImage"
    plain.write_bytes(b"abc")
    assert kernel_manifest(plain) == {
        "kind": "path", "path": str(plain),
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "build", "release": "6.1",
                                                        "files": {"bzImage": "..."}}))
    assert kernel_manifest(plain) == {"kind": "build", "release": "6.1"}


# ---------------------------------------------------------------- format_table


def test_format_table_small_doc() -> None:
    lines = format_table(small_result()).splitlines()
    assert lines[0] == "verdict: PASS"
    assert lines[1] == "host: direct (/dev/kvm is usable)"
    assert "workload timer: PASS  (3000 x 100 us clock_nanosleep)" in lines
    assert "  EOI exits saved per injected interrupt: 0.999 [0.990, 1.000] (limit 1.0; on vs off)" in lines
    header = next(line for line in lines if "per injected interrupt" in line and "reduction" in line)
    assert header.split() == ["per", "injected", "interrupt", "off", "on", "reduction", "interval", "p", "p_rate"]
    exit_row = next(line for line in lines if line.strip().startswith("kvm_exit "))
    assert exit_row.split() == ["kvm_exit", "2.100", "1.100", "0.476", "[0.450,", "0.500]", "-", "-"]
    pv_row = next(line for line in lines if line.strip().startswith("kvm_pv_eoi "))
    assert pv_row.split() == ["kvm_pv_eoi", "0.000", "0.997", "-", "-", "-"]
    odd_row = next(line for line in lines if line.strip().startswith("odd "))
    assert odd_row.split() == ["odd", "-", "3", "-", "-", "-"], "NaN and None print as '-'"
    assert "  arm on: kvm_pv_eoi=[2990] inj_virq=[3000] guest_skipped=[2992]" in lines
    assert "  arm off: kvm_pv_eoi=[0] inj_virq=[3000] guest_skipped=[None]" in lines
    assert "  note: a note" in lines
    assert not any(line.startswith("reason:") for line in lines)


def test_format_table_shows_the_rate_p_next_to_the_permutation_p() -> None:
    doc = small_doc()
    m = doc["workloads"]["timer"]["metrics"]["kvm_exit"]
    m.update({"p_value": 0.1, "p_rate": 3.2e-9, "rate_model": "poisson"})
    doc["workloads"]["timer"]["metrics"]["kvm_pv_eoi"].update(
        {"p_value": 0.1, "p_rate": 0.0004, "rate_model": "quasi-poisson"})
    lines = format_table(Result.from_json(doc)).splitlines()
    assert next(line for line in lines if line.strip().startswith("kvm_exit ")).split()[-2:] == ["0.100", "3e-09"]
    assert next(line for line in lines if line.strip().startswith("kvm_pv_eoi ")).split()[-2:] == ["0.100", "4e-04*"]
    assert any("p_rate: rate test on the counts" in line for line in lines)


def test_format_table_failed_workload() -> None:
    doc = small_doc()
    w = doc["workloads"]["timer"]
    doc["verdict"] = w["verdict"] = "fail"
    w["reasons"] = ["kvm_pv_eoi was 0 in a on run ([0]): the host never used PV EOI"]
    w["notes"] = []
    text = format_table(Result.from_json(doc))
    assert text.startswith("verdict: FAIL\n")
    assert "workload timer: FAIL" in text
    assert "  ! kvm_pv_eoi was 0 in a on run ([0]): the host never used PV EOI" in text


def test_format_table_sparse_workload() -> None:
    res = Result(verdict="not-measurable", reason="timer: too few interrupts",
                 workloads={"timer": WorkloadResult("timer", "not-measurable",
                                                    reasons=("1 run(s) injected fewer than 200 interrupts",))})
    lines = format_table(res).splitlines()
    assert lines[0] == "verdict: NOT-MEASURABLE"
    assert "workload timer: NOT-MEASURABLE  ()" in lines
    assert not any("EOI exits saved" in line for line in lines)
    assert "  ! 1 run(s) injected fewer than 200 interrupts" in lines
    assert lines[-1] == "reason: timer: too few interrupts"
