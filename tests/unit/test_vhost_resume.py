"""A virtual host that dies mid-part costs the guest it was running, not the part: the inner runner
checkpoints after each guest, and the outer runner keeps what a lost virtual host had measured and
resumes the part in a fresh one after it, in the same balanced order. No QEMU: ``run_guest`` and
``in_vhost`` are replaced (tests/e2e/test_vhost.py boots real virtual hosts)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from e2e.errors import Finding, GuestError, Kind
from e2e.model.plan import DEFAULT_ARMS, Plan
from e2e.model.result import Result
from e2e.model.workloads import WORKLOADS
from e2e.run import ab, inner, runner
from tests.helpers.fake_ab import fake_run_guest, setup_in


def plan_in(tmp_path: Path, runs: int = 3, start: int = 0) -> Plan:
    return Plan(workloads=("timer",), arms=DEFAULT_ARMS, runs=runs, kernel=tmp_path / "k", image=tmp_path / "i",
                logs=tmp_path / "logs", start=start)


def test_a_plans_start_survives_json_and_is_left_out_when_zero(tmp_path: Path) -> None:
    plan = plan_in(tmp_path, start=4)
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert "start" not in plan_in(tmp_path).to_json()  # results written before resuming existed stay as they were


def test_a_resumed_part_runs_only_the_guests_after_its_start_and_checkpoints_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ab, "run_guest", fake_run_guest([]))
    plan = plan_in(tmp_path, start=2)
    seen: list[tuple[int, list[tuple[int, str]]]] = []

    def checkpoint(done: int, result: Result) -> None:
        seen.append((done, [(r.rep, r.arm) for r in result.runs["timer"]]))
        assert result.verdict == "unanalyzed" and result.plan == plan

    res = ab.run_workloads(setup_in(tmp_path), plan, [WORKLOADS["timer"]], [], "AMD", analyzed=False,
                           checkpoint=checkpoint)
    order = [(rep, arm.name) for rep, arm in plan.order()]
    assert [(r.rep, r.arm) for r in res.runs["timer"]] == order[2:]
    assert seen == [(3, order[2:3]), (4, order[2:4]), (5, order[2:5]), (6, order[2:6])]


def test_the_inner_runner_leaves_its_checkpoint_and_a_reader_takes_it_back(tmp_path: Path) -> None:
    write = inner._checkpoint(tmp_path / inner.PARTIAL)
    assert inner.load_partial(tmp_path / inner.PARTIAL) is None  # nothing measured yet
    write(3, Result(verdict="unanalyzed", reason="raw"))
    done, res = inner.load_partial(tmp_path / inner.PARTIAL)  # type: ignore[misc]
    assert done == 3 and res.verdict == "unanalyzed"
    (tmp_path / inner.PARTIAL).write_text("{half")
    assert inner.load_partial(tmp_path / inner.PARTIAL) is None


def fake_in_vhost(tmp_path: Path, script: list[Any], calls: list[Plan]) -> Any:
    """An in_vhost that, per call, measures the guests of its plan from ``plan.start`` up to the
    scripted count, then (for an exception in the script) checkpoints them and fails like a dead L1."""

    def in_vhost(plan: Plan, host_kernel: Path, timeout: float, vhost_logs: Path, sink: Any = None,
                 under_test: bool = False, salvage: list[tuple[int, Result]] | None = None) -> tuple[Result, Any]:
        calls.append(plan)
        step = script.pop(0)
        order = plan.order()
        upto, err = (step if isinstance(step, tuple) else (len(order), None))
        setup = replace(setup_in(tmp_path), artifacts=tmp_path / "logs")
        part = ab.run_workloads(setup, plan, [WORKLOADS["timer"]], [], "AMD", analyzed=False)
        runs = [r for r in part.runs["timer"] if order.index((r.rep, plan.arm(r.arm))) < upto]
        got = part.with_(runs={"timer": tuple(runs)})
        if err is not None:
            if salvage is not None and upto > plan.start:
                salvage.append((upto, got))
            raise err
        vh = type("VH", (), {"boot_seconds": 3.0, "kvm_facts": {"npt": "Y"},
                             "stage_seconds": {"boot": 3.0, "command": 9.0, "shutdown": 0.5}})()
        return got, vh

    return in_vhost


@pytest.fixture
def virtual(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Plan]:
    monkeypatch.setattr(ab, "run_guest", fake_run_guest([]))
    stock = tmp_path / "stock-bzImage"
    stock.write_bytes(b"not a kernel")
    monkeypatch.setattr(runner, "stock_host_kernel", lambda base=None: stock)
    monkeypatch.setattr(runner, "is_stock_host_kernel", lambda path: True)
    monkeypatch.setattr(ab, "reanalyze", lambda first, plan, rest=(), recurring=None: first.with_(
        runs={"timer": tuple(r for p in (first, *rest) for r in p.runs["timer"])}))
    return []


def crash(what: str = "triple fault") -> GuestError:
    from e2e.vm.vhost import vhost_error

    return vhost_error(f"the virtual host stopped before the command finished: {what}", what, (), "x")


def test_a_lost_virtual_host_costs_one_guest_and_the_next_resumes_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, virtual: list[Plan]) -> None:
    plan = plan_in(tmp_path)
    monkeypatch.setattr(runner, "in_vhost", fake_in_vhost(tmp_path, [(4, crash()), None], virtual))
    res = runner.run_virtual(plan, "test")
    assert [p.start for p in virtual] == [0, 4]
    order = [(rep, arm.name) for rep, arm in plan.order()]
    assert [(r.rep, r.arm) for r in res.runs["timer"]] == order  # every guest once, in the balanced order
    restarts = res.host["virtual_host"]["restarts"]
    assert [(r["class"], r["kept"]) for r in restarts] == [("virtual host triple fault", 4)]
    vhost = res.host["virtual_host"]
    assert vhost["stages"] == [{"part": "timer", "boot": 3.0, "command": 9.0, "shutdown": 0.5}]  # the L1 that lasted
    assert vhost["analysis_seconds"] >= 0


def test_two_losses_in_a_row_keep_both_parts_measurements(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, virtual: list[Plan]) -> None:
    plan = replace(plan_in(tmp_path), retries=2)
    monkeypatch.setattr(runner, "in_vhost", fake_in_vhost(tmp_path, [(2, crash()), (3, crash("panic")), None],
                                                          virtual))
    res = runner.run_virtual(plan, "test")
    assert [p.start for p in virtual] == [0, 2, 3]
    assert len(res.runs["timer"]) == 6
    assert [r.get("kept") for r in res.host["virtual_host"]["restarts"]] == [2, 1]


def test_a_virtual_host_lost_after_its_last_guest_needs_no_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, virtual: list[Plan]) -> None:
    plan = plan_in(tmp_path)
    monkeypatch.setattr(runner, "in_vhost", fake_in_vhost(tmp_path, [(6, crash())], virtual))
    res = runner.run_virtual(plan, "test")
    assert len(virtual) == 1 and len(res.runs["timer"]) == 6


def test_spent_restarts_raise_with_the_earlier_ones_and_a_finding_is_never_restarted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, virtual: list[Plan]) -> None:
    plan = plan_in(tmp_path)
    monkeypatch.setattr(runner, "in_vhost", fake_in_vhost(tmp_path, [(1, crash()), (2, crash()), (3, crash())],
                                                          virtual))
    with pytest.raises(GuestError) as err:
        runner.run_virtual(plan, "test")  # the default retries: two restarts, then the third crash raises
    assert [r["kept"] for r in err.value.retried] == [1, 1]
    virtual.clear()
    monkeypatch.setattr(runner, "in_vhost", fake_in_vhost(
        tmp_path, [(1, Finding("the host kernel under test panicked in the virtual host"))], virtual))
    with pytest.raises(Finding) as found:
        runner.run_virtual(plan, "test")
    assert len(virtual) == 1 and found.value.kind is Kind.FINDING


def test_an_l1_crash_is_named_as_the_virtual_hosts_own_unless_its_kernel_is_under_test(tmp_path: Path) -> None:
    from e2e.vm.ending import KILLED, TRIPLE_FAULT, ExitCause
    from e2e.vm.vhost import VhostSpec, VirtualKvmHost

    def fix(under_test: bool, cls: str) -> str:
        host = VirtualKvmHost(VhostSpec(tmp_path / "bzImage", kernel_under_test=under_test), tmp_path, None,
                              tmp_path / "logs")
        return host._crash_fix(ExitCause(cls, ("SHUTDOWN reason guest-reset",)))

    own = fix(False, TRIPLE_FAULT)
    assert "the virtual host's own failure" in own and "not the kernel under test" in own
    assert "resumes in a fresh virtual host after the guests already measured" in own
    assert "guest kernel or the KVM under test" not in own
    assert "host kernel under test, or nested TCG under it" in fix(True, TRIPLE_FAULT)
    assert "virtual host's own" not in fix(False, KILLED)  # a signal from outside is named as such
