"""KCIDB v5.3 documents (e2e/report/kcidb.py), validated by KernelCI's own schema (PyPI kcidb-io)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kcidb_io.schema import V5_3

from e2e import cli
from e2e.errors import ConfigError
from e2e.model.plan import Arm
from e2e.model.result import Comparison, Result, WorkloadResult
from e2e.report import kcidb, results

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "history"
ALL = sorted(FIXTURES.glob("schema*/*.json"))

MANIFEST = {
    "schema": 1, "kind": "build", "hash": "5b1f0c2a", "flavour": "guest", "release": "6.1.192",
    "source": {"kind": "tree", "path": "/src/linux",
               "identity": "git:0123456789abcdef0123456789abcdef01234567:deadbeef"},
    "patches": [{"name": "0001-pv-eoi-counters.patch", "sha256": "a" * 64},
                {"name": "0002-no-kvm-pv-eoi.patch", "sha256": "b" * 64}],
    "config": {"CONFIG_KVM_GUEST": "y", "CONFIG_DEBUG_FS": "y"},
    "build_seconds": 241.5, "built_at": "2026-11-29T10:00:00Z",
}


def nulls(value: Any, where: str = "") -> Iterator[str]:
    if value is None:
        yield where
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from nulls(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from nulls(v, f"{where}[{i}]")


def loaded() -> list[Result]:
    return [results.load(p) for p in ALL]


def test_every_fixture_history_is_a_valid_kcidb_document() -> None:
    doc = kcidb.render(loaded(), "my_lab")
    V5_3.validate(doc)
    assert doc["version"] == {"major": 5, "minor": 3}
    assert not list(nulls(doc))
    for kind in ("checkouts", "builds", "tests"):
        ids = [o["id"] for o in doc[kind]]
        assert ids and len(set(ids)) == len(ids), kind
        assert all(i.startswith("my_lab:") and o["origin"] == "my_lab" for i, o in zip(ids, doc[kind], strict=True))
    builds = {b["id"] for b in doc["builds"]}
    checkouts = {c["id"] for c in doc["checkouts"]}
    assert all(t["build_id"] in builds for t in doc["tests"])
    assert all(b["checkout_id"] in checkouts for b in doc["builds"])
    # json round trip (what kcidb-submit reads)
    V5_3.validate(json.loads(json.dumps(doc)))


def test_ids_are_stable_across_renderings_and_distinct_across_origins() -> None:
    first, again = kcidb.render(loaded(), "lab_a"), kcidb.render(loaded(), "lab_a")
    assert first == again
    other = kcidb.render(loaded(), "lab_b")
    for kind in ("checkouts", "builds"):
        assert [o["id"].split(":", 1)[1] for o in first[kind]] == [o["id"].split(":", 1)[1] for o in other[kind]]
    assert [t["path"] for t in first["tests"]] == [t["path"] for t in other["tests"]]
    assert all(t["id"].startswith("lab_b:") for t in other["tests"])
    # a grown history re-renders the old runs' objects unchanged
    some = kcidb.render(loaded()[:3], "lab_a")
    assert {t["id"] for t in some["tests"]} <= {t["id"] for t in first["tests"]}


def test_verdicts_conditions_and_figures() -> None:
    res = results.load(next(p for p in ALL if p.parent.name == "schema3"))
    doc = kcidb.render([res], "my_lab")
    V5_3.validate(doc)
    by_path = {t["path"]: t for t in doc["tests"]}
    assert by_path["pveoi.timer"]["status"] == "PASS"
    assert by_path["pveoi.timer.pv_eoi_used_in_every_on_run"]["status"] == "PASS"
    assert by_path["pveoi.timer.host_guest_agreement.on_rep0"]["status"] == "PASS"
    saved = by_path["pveoi.timer.eoi_saved"]
    head = res.workloads["timer"].eoi_exits_saved_per_interrupt
    assert head is not None
    assert saved["status"] == "DONE" and saved["number"] == {"value": head["value"], "unit": "exits/interrupt"}
    assert saved["misc"]["ci95"] == head["ci"]
    assert by_path["pveoi.timer.kvm_exit_reduction"]["number"]["value"] == pytest.approx(0.423, abs=0.01)
    assert by_path["pveoi.timer.arm_on.kvm_exit"]["number"]["unit"] == "events/interrupt"
    assert "pveoi.timer.arm_off.kvm_exit_MSR" in by_path
    for path in by_path:
        assert all(part and "." not in part for part in path.split("."))


def test_failures_errors_and_skips() -> None:
    doc = kcidb.render(loaded(), "my_lab")
    statuses = {t["status"] for t in doc["tests"] if t["path"].count(".") <= 1}
    assert {"PASS", "FAIL", "SKIP"} <= statuses
    fails = [t for t in doc["tests"] if t["status"] == "FAIL"]
    assert fails and all(t.get("log_excerpt") for t in fails if t["path"].count(".") == 1)


def test_kernels_become_checkouts_and_builds() -> None:
    stock = Arm("stock", kernel=None)
    mine = Arm("mine", kernel=Path("/cache/kernels/abcd/bzImage"),
               origin={"guest_source": "/src/linux", "guest_patches": "/src/my-series"})
    comp = Comparison("difference", "stock", "mine", ("kernel",),
                      {"trapped_eoi": {"a_median": 0.0, "b_median": 0.5, "diff": 0.5, "diff_ci": [0.4, 0.6]}},
                      "regression", ("arm mine traps more",))
    w = WorkloadResult("timer", "fail", reasons=("mine vs stock: arm mine traps more",), comparisons=(comp,))
    host = {"chosen": "virtual", "virtual_host": {"kernels": {"stock": {**MANIFEST, "hash": "77aa", "flavour": "host",
                                                                         "patches": []}}}}
    res = Result(verdict="fail", created="2026-11-30T03:01:30Z", workloads={"timer": w}, kernel=MANIFEST,
                 arms={"stock": stock, "mine": mine}, runner={"id": "lab-1", "kernel": "6.1.0"}, host=host)
    doc = kcidb.render([res], "my_lab")
    V5_3.validate(doc)
    guest = next(c for c in doc["checkouts"] if c["comment"] == "guest kernel 6.1.192")
    assert guest["git_commit_hash"] == "0123456789abcdef0123456789abcdef01234567"
    assert guest["patchset_hash"] == kcidb.patchset_hash(["a" * 64, "b" * 64])
    import hashlib

    assert guest["patchset_hash"] == hashlib.sha256(("a" * 64 + "\n" + "b" * 64 + "\n").encode()).hexdigest()
    build = next(b for b in doc["builds"] if b["checkout_id"] == guest["id"])
    assert build["misc"]["config"] == MANIFEST["config"] and build["duration"] == 241.5
    assert build["config_name"] == "tinyconfig+kvm_guest.config+2 options"
    assert any(b["comment"] == "KVM host kernel 6.1.192" for b in doc["builds"])
    arm_build = next(b for b in doc["builds"] if b["comment"] == "guest kernel of arm mine")
    reg = next(t for t in doc["tests"] if t["path"] == "pveoi.timer.difference_mine_vs_stock")
    assert reg["status"] == "FAIL" and reg["build_id"] == arm_build["id"], "a regression is the changed kernel's"
    diff = next(t for t in doc["tests"] if t["path"] == "pveoi.timer.difference_mine_vs_stock.trapped_eoi_diff")
    assert diff["status"] == "DONE" and diff["number"]["value"] == 0.5


@pytest.mark.parametrize("origin", ["", "My-Lab", "lab one", "lab:1"])
def test_a_bad_origin_is_a_config_error(origin: str) -> None:
    with pytest.raises(ConfigError, match="origin"):
        kcidb.render([], origin)


def test_cli_writes_kcidb_and_rejects_a_bad_origin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kcidb.json"
    assert cli.main(["report", "--history", str(FIXTURES / "schema1"), "--kcidb", str(out),
                     "--origin", "my_lab"]) == 0
    V5_3.validate(json.loads(out.read_text()))
    assert cli.main(["report", "--history", str(FIXTURES / "schema1"), "--kcidb", str(tmp_path / "x.json"),
                     "--origin", "Bad"]) == 2
    assert "origin 'Bad'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
