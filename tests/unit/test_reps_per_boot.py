"""Several reps per guest boot (``Plan.reps_per_boot``, ``pveoi ab --reps-per-boot``): which guests boot in
what order, what a guest that fails in a later window keeps and retries, how a resumed part picks up in the
middle of a guest, and the flag's input check. No QEMU: ``run_guest`` is replaced (the real one is run by
tests/e2e/test_reps_per_boot.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from e2e.errors import ConfigError, GuestTimeout
from e2e.model.plan import DEFAULT_ARMS, Plan
from e2e.model.result import RunRecord
from e2e.model.workloads import WORKLOADS
from e2e.run import ab
from tests.helpers.fake_ab import fake_run_guest, setup_in

ON, OFF = DEFAULT_ARMS
TIMER = WORKLOADS["timer"]


def plan_in(tmp_path: Path, runs: int, per_boot: int, start: int = 0) -> Plan:
    return Plan(workloads=("timer",), arms=DEFAULT_ARMS, runs=runs, kernel=tmp_path / "k", image=tmp_path / "i",
                logs=tmp_path / "logs", start=start, reps_per_boot=per_boot)


def test_one_rep_per_boot_keeps_the_balanced_order_of_before(tmp_path: Path) -> None:
    plan = plan_in(tmp_path, 4, 1)
    assert [(a.name, reps) for a, reps in plan.boots()] == [
        ("on", (0,)), ("off", (0,)), ("off", (1,)), ("on", (1,)), ("on", (2,)), ("off", (2,)), ("off", (3,)),
        ("on", (3,))]
    assert [(rep, a.name) for rep, a in plan.order()] == [(0, "on"), (0, "off"), (1, "off"), (1, "on"), (2, "on"),
                                                         (2, "off"), (3, "off"), (3, "on")]


def test_reps_go_in_groups_per_guest_and_the_groups_alternate_the_arms(tmp_path: Path) -> None:
    assert [(a.name, reps) for a, reps in plan_in(tmp_path, 3, 3).boots()] == [("on", (0, 1, 2)), ("off", (0, 1, 2))]
    assert [(a.name, reps) for a, reps in plan_in(tmp_path, 5, 2).boots()] == [
        ("on", (0, 1)), ("off", (0, 1)), ("off", (2, 3)), ("on", (2, 3)), ("on", (4,)), ("off", (4,))]
    # the order is the guests' reps one after another: what a resumed part's start counts
    assert [(rep, a.name) for rep, a in plan_in(tmp_path, 3, 3).order()] == [
        (0, "on"), (1, "on"), (2, "on"), (0, "off"), (1, "off"), (2, "off")]


def test_reps_per_boot_survives_json_and_is_left_out_when_one(tmp_path: Path) -> None:
    plan = plan_in(tmp_path, 3, 3)
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert "reps_per_boot" not in plan_in(tmp_path, 3, 1).to_json()


def test_a_guest_that_fails_in_a_later_window_keeps_what_it_measured_and_retries_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ab, "run_guest", fake_run_guest([GuestTimeout("SSH timed out")], windows_before=1))
    outcome = ab.Outcome()
    told: list[int] = []
    ab._run_with_retries(setup_in(tmp_path), ON, TIMER, [], (0, 1, 2), 2, outcome, lambda r: told.append(r.rep))
    assert [(r.rep, r.attempt, r.window) for r in outcome.runs] == [(0, 1, 1), (1, 2, 1), (2, 2, 2)]
    assert told == [0, 1, 2]
    # the failure is the window of rep 2 (index 1): recorded under it, and the retry boots for reps 1 and 2
    assert [(a.rep, a.attempt, a.outcome) for a in outcome.attempts] == [(1, 1, "retried")]
    assert outcome.retried == ["on rep 2: SSH timed out"]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["timer-on-0-console.log",
                                                                    "timer-on-1-attempt2-console.log"]


def test_a_resumed_part_boots_a_guest_for_the_rest_of_a_group_and_checkpoints_every_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, tuple[int, ...]]] = []
    fake = fake_run_guest([])

    def run_guest(setup: ab.Setup, arm: ab.Arm, workload: object, events: object, reps: tuple[int, ...],
                  attempt: int = 1, trace: object = None, measured: object = None) -> None:
        calls.append((arm.name, reps))
        fake(setup, arm, workload, events, reps, attempt, trace, measured)

    monkeypatch.setattr(ab, "run_guest", run_guest)
    plan = plan_in(tmp_path, 3, 3, start=4)  # on 0-2 and off 0 measured by a part before
    seen: list[int] = []
    res = ab.run_workloads(setup_in(tmp_path), plan, [TIMER], [], "AMD", analyzed=False,
                           checkpoint=lambda done, result: seen.append(done))
    assert calls == [("off", (1, 2))]
    assert [(r.rep, r.arm) for r in res.runs["timer"]] == [(1, "off"), (2, "off")]
    assert seen == [5, 6]


def test_the_cli_refuses_a_reps_per_boot_below_one_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from e2e.cli import main

    assert main(["ab", "--reps-per-boot", "0", "--host", "direct"]) == 2
    err = capsys.readouterr().err
    assert "--reps-per-boot must be at least 1" in err and "Traceback" not in err


def test_records_of_later_windows_round_trip_their_window() -> None:
    record = RunRecord(rep=1, arm="on", counts={"kvm:kvm_exit": 3}, window=2)
    assert RunRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert "window" not in RunRecord(rep=0, arm="on", counts={}).to_json()


def test_reps_per_boot_is_checked_by_the_plan_runner(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reps-per-boot"):
        ab.check_plan(plan_in(tmp_path, 3, 0))


# ---------------------------------------------------------------- boots overlapped (Plan.overlap_boots)


def test_rounds_are_one_guest_per_arm_in_the_balanced_order(tmp_path: Path) -> None:
    plan = plan_in(tmp_path, 4, 2)
    assert [[(a.name, reps) for a, reps in r] for r in plan.rounds()] == [
        [("on", (0, 1)), ("off", (0, 1))], [("off", (2, 3)), ("on", (2, 3))]]
    overlapped = replace(plan, overlap_boots=True)
    assert Plan.from_json(json.loads(json.dumps(overlapped.to_json()))) == overlapped
    assert "overlap_boots" not in plan.to_json()


class FakeGuest:
    """A Guest whose steps only log what ran, failing where the test says (``fail``: (arm, step) -> error,
    raised once)."""

    log: list[str] = []
    fail: dict[tuple[str, str], Exception] = {}

    def __init__(self, setup: ab.Setup, arm: ab.Arm, workload: object, events: object, reps: tuple[int, ...],
                 attempt: int, trace: object, measured: Any) -> None:
        self.arm, self.reps, self.measured, self.trace = arm, reps, measured, trace
        self.open = False

    def _step(self, step: str) -> None:
        FakeGuest.log.append(f"{step} {self.arm.name}")
        err = FakeGuest.fail.pop((self.arm.name, step), None)
        if err is not None:
            raise err

    def launch(self) -> None:
        self.open = True
        self._step("launch")

    def come_up(self) -> None:
        self._step("come_up")

    def measure(self) -> None:
        self._step("measure")
        for window, rep in enumerate(self.reps, 1):
            self.measured(RunRecord(rep=rep, arm=self.arm.name, counts={}, window=window))

    def close(self, exc: BaseException | None = None) -> None:
        if self.open:
            FakeGuest.log.append(f"close {self.arm.name}" + (" (failed)" if exc else ""))
        self.open = False


def test_a_round_boots_every_arm_then_measures_each_while_the_others_idle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeGuest.log, FakeGuest.fail = [], {}
    monkeypatch.setattr(ab, "Guest", FakeGuest)
    outcome = ab.Outcome()
    ab._run_round(setup_in(tmp_path), [(ON, (0, 1)), (OFF, (0, 1))], TIMER, [], 2, outcome)
    assert FakeGuest.log == ["launch on", "launch off", "come_up on", "come_up off", "measure on", "measure off",
                             "close on", "close off"]
    assert [(r.arm, r.rep) for r in outcome.runs] == [("on", 0), ("on", 1), ("off", 0), ("off", 1)]


def test_a_guest_that_fails_in_a_round_leaves_it_at_once_and_is_retried_alone_afterwards(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeGuest.log, FakeGuest.fail = [], {("off", "come_up"): GuestTimeout("guest not ready after 180s")}
    monkeypatch.setattr(ab, "Guest", FakeGuest)
    retried: list[tuple[str, tuple[int, ...], int]] = []
    fake = fake_run_guest([])

    def run_guest(setup: ab.Setup, arm: ab.Arm, workload: Any, events: Any, reps: tuple[int, ...],
                  attempt: int = 1, trace: Any = None, measured: Any = None) -> None:
        retried.append((arm.name, reps, attempt))
        fake(setup, arm, workload, events, reps, attempt, trace, measured)

    monkeypatch.setattr(ab, "run_guest", run_guest)
    outcome = ab.Outcome()
    ab._run_round(setup_in(tmp_path), [(ON, (0, 1)), (OFF, (0, 1))], TIMER, [], 2, outcome)
    assert FakeGuest.log == ["launch on", "launch off", "come_up on", "come_up off", "close off (failed)",
                             "measure on", "close on"]
    assert retried == [("off", (0, 1), 2)]  # its second attempt, alone, after the round
    assert outcome.retried == ["off rep 1: guest not ready after 180s"]
    assert [(a.arm, a.rep, a.attempt, a.outcome) for a in outcome.attempts] == [("off", 0, 1, "retried")]
    assert sorted((r.arm, r.rep) for r in outcome.runs) == [("off", 0), ("off", 1), ("on", 0), ("on", 1)]


def test_a_finding_in_a_round_is_recorded_and_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from e2e.errors import Finding

    FakeGuest.log, FakeGuest.fail = [], {("on", "come_up"): Finding("the guest did not enable PV EOI")}
    monkeypatch.setattr(ab, "Guest", FakeGuest)
    monkeypatch.setattr(ab, "run_guest", fake_run_guest([AssertionError("never retried")]))
    outcome = ab.Outcome()
    ab._run_round(setup_in(tmp_path), [(ON, (0,)), (OFF, (0,))], TIMER, [], 2, outcome)
    assert outcome.findings == ["on rep 1: the guest did not enable PV EOI"]
    assert [(r.arm, r.rep) for r in outcome.runs] == [("off", 0)]


def test_overlapped_rounds_are_checkpointed_after_each_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeGuest.log, FakeGuest.fail = [], {}
    monkeypatch.setattr(ab, "Guest", FakeGuest)
    plan = replace(plan_in(tmp_path, 2, 1), overlap_boots=True)
    seen: list[tuple[int, int]] = []
    res = ab.run_workloads(setup_in(tmp_path), plan, [TIMER], [], "AMD", analyzed=False,
                           checkpoint=lambda done, result: seen.append((done, len(result.runs["timer"]))))
    assert seen == [(2, 2), (4, 4)]
    assert [(r.rep, r.arm) for r in res.runs["timer"]] == [(0, "on"), (0, "off"), (1, "off"), (1, "on")]
