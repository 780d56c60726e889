"""Unit tests for e2e.model.plan (arms, the plan and its run order, runs and results as JSON)
and e2e.errors (every error's kind decides retry and exit code)."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from e2e import errors
from e2e.analysis.compare import analyze, conclude, load_thresholds
from e2e.errors import (
    BuildError,
    CapabilityError,
    ConfigError,
    Finding,
    GuestError,
    GuestPanic,
    GuestTimeout,
    Kind,
    LaunchError,
    MeasurementError,
    NotMeasurable,
    SchemaError,
    SshError,
    retryable,
)
from e2e.model.plan import DEFAULT_ARMS, Arm, Plan
from e2e.model.result import (
    SCHEMA,
    Agreement,
    Comparison,
    Result,
    RunRecord,
    WorkloadResult,
    migrate,
    overall_verdict,
)
from e2e.model.workloads import WORKLOADS

TIMER = WORKLOADS["timer"]

GOOD_ON = Arm("good-on", kernel=Path("/k/good/bzImage"), origin={"guest_source": "/src/good"})
GOOD_OFF = Arm("good-off", pv_eoi=False, kernel=Path("/k/good/bzImage"))
BAD_ON = Arm("bad-on", kernel=Path("/k/bad/bzImage"), smp=4)
BAD_OFF = Arm("bad-off", kernel=Path("/k/bad/bzImage"), smp=4, append="no-kvm-pv-eoi")


def plan(arms: tuple[Arm, ...] = DEFAULT_ARMS, runs: int = 3, **kw: Any) -> Plan:
    return Plan(workloads=("timer",), arms=arms, runs=runs, kernel=Path("/k/default/bzImage"),
                image=Path("/cache/images/abc"), logs=Path("/logs/ab"), **kw)


def via_json(data: Any) -> Any:
    return json.loads(json.dumps(data, allow_nan=False))


def run(arm: str, rep: int, trapped: float, inj: int = 3000) -> RunRecord:
    """A timer run: every interrupt ends in one EOI, ``trapped`` of them per interrupt exit."""
    inj += 7 * rep
    trap = min(inj, round(trapped * inj) + rep)
    pv = inj - trap
    exits = trap + inj + 900 + 11 * rep
    return RunRecord(rep=rep, arm=arm, vcpus=2, counts={
        "kvm:kvm_exit": exits, "kvm:kvm_entry": exits + 1, "kvm:kvm_msr": trap + inj, "kvm:kvm_apic": trap + inj,
        "kvm:kvm_eoi": inj, "kvm:kvm_pv_eoi": pv, "kvm:kvm_inj_virq": inj, "kvm:kvm_apic_accept_irq": inj},
        exit_reasons={"MSR": trap + inj, "HLT": 900 + 11 * rep},
        guest={"interrupts": {"LOC": inj, "total": inj},
               "pv_eoi": {"skipped": pv, "written": trap, "feature": [True, True], "enabled": [True, True],
                          "per_cpu": {"0": {"skipped": 0, "written": 0}, "1": {"skipped": pv, "written": trap}}}
               if pv else None},
        qmp={"kvm": {"enabled": True, "present": True}, "kvm_pv_eoi": [pv > 0] * 2, "vcpu_threads": [11, 12]},
        boot_seconds=2.5, workload_seconds=0.61, ready_line="pveoi-guest-ready uptime=1.9",
        workload_output="timer: 3000 sleeps", attempt=1 + rep % 2)


# ---------------------------------------------------------------- JSON round trips


def test_plan_round_trip() -> None:
    p = plan((GOOD_ON, GOOD_OFF, BAD_ON, BAD_OFF), runs=4, thresholds={"min_interrupts": 100.0}, retries=2,
             memory_mb=512, boot_timeout=90.0, timeout=7200.0)
    again = Plan.from_json(via_json(p.to_json()))
    assert again == p
    assert again.arms[0].origin == {"guest_source": "/src/good"}
    assert again.arms[2].smp == 4 and again.arms[3].append == "no-kvm-pv-eoi"
    assert isinstance(again.kernel, Path) and isinstance(again.arms[0].kernel, Path)
    assert again.files() == [Path("/k/default/bzImage"), Path("/cache/images/abc"), Path("/k/good/bzImage"),
                             Path("/k/good/bzImage"), Path("/k/bad/bzImage"), Path("/k/bad/bzImage")]


@pytest.mark.parametrize("breakage", [
    lambda d: d.pop("arms"),
    lambda d: d.pop("runs"),
    lambda d: d.update(runs="three"),
    lambda d: d.update(arms=[{"pv_eoi": True}]),  # an arm without a name
    lambda d: d.update(thresholds=["min_interrupts"]),
    lambda d: d.update(memory_mb=None),
], ids=["no-arms", "no-runs", "runs-text", "arm-without-name", "thresholds-list", "memory-none"])
def test_a_malformed_plan_is_a_config_error(breakage: Any) -> None:
    data = plan().to_json()
    breakage(data)
    with pytest.raises(ConfigError, match="malformed plan") as info:
        Plan.from_json(data)
    assert info.value.fix and info.value.kind is Kind.CONFIG


def test_run_record_round_trip() -> None:
    r = run("on", 1, 0.01)
    again = RunRecord.from_json(via_json(r.to_json()))
    assert again == r
    assert again.attempt == 2 and again.vcpus == 2
    assert again.guest_pv_eoi is not None and again.guest_pv_eoi["per_cpu"]["1"]["written"] == r.counts[
        "kvm:kvm_eoi"] - r.counts["kvm:kvm_pv_eoi"]


def test_run_record_of_an_old_document_takes_its_arm_from_the_list_holding_it() -> None:
    data = run("on", 0, 0.01).to_json()
    del data["arm"], data["attempt"], data["vcpus"]
    old = RunRecord.from_json(data, arm="treated")
    assert old.arm == "treated" and old.attempt == 1 and old.vcpus is None


@pytest.mark.parametrize("counts", [{"kvm:kvm_exit": "12"}, {"kvm:kvm_exit": 1.5}, {"kvm:kvm_exit": True}, [1]])
def test_run_record_counts_must_be_integers(counts: Any) -> None:
    data = {**run("on", 0, 0.01).to_json(), "counts": counts}
    with pytest.raises(ValueError):
        RunRecord.from_json(data)


def measured_result() -> Result:
    p = plan(runs=3)
    runs = [run(arm.name, rep, 0.01 if arm.name == "on" else 1.0) for rep, arm in p.order()]
    w = analyze(TIMER, p.arms, runs, load_thresholds("timer"), retried=("off rep 2: boot deadline",))
    verdict, reason = conclude({"timer": w})
    return Result(verdict=verdict, reason=reason, created="2026-11-30T03:01:30Z", runs_per_arm=3, plan=p,
                  arms={a.name: a for a in p.arms}, runs={"timer": tuple(runs)}, workloads={"timer": w},
                  runner={"hostname": "ci-a", "id": "ci-a", "doctor": []},
                  host={"chosen": "direct", "reason": "/dev/kvm is usable"}, kernel={"kind": "path"},
                  image={"path": "/cache/images/abc"}, logs="/logs/ab",
                  events=({"name": "kvm:kvm_exit", "filter": None, "label": None},))


def test_result_round_trip() -> None:
    res = measured_result()
    assert res.verdict == "pass", res.reason
    doc = via_json(res.to_json())
    again = Result.from_json(doc)
    assert again.to_json() == doc
    assert again.plan == res.plan and again.arms == res.arms and again.runs == res.runs
    assert again.workloads["timer"].agreement == res.workloads["timer"].agreement
    assert again.workloads["timer"].comparisons[0].kind == "effect"
    assert [(c.kind, c.a, c.b, c.differs_in, c.verdict) for c in again.workloads["timer"].comparisons] == [
        (c.kind, c.a, c.b, c.differs_in, c.verdict) for c in res.workloads["timer"].comparisons]
    assert again.workloads["timer"].retried == ("off rep 2: boot deadline",)
    assert again.headline == res.headline and again.headline is not None
    assert (again.verdict, again.reason, again.created, again.exit_code) == (res.verdict, res.reason, res.created, 0)


def test_result_keeps_the_order_the_runs_ran_in() -> None:
    res = measured_result()
    again = Result.from_json(via_json(res.to_json()))
    assert [(r.arm, r.rep) for r in again.runs["timer"]] == [(a.name, rep) for rep, a in res.plan.order()]
    assert [(r.arm, r.rep) for r in again.runs["timer"]] != sorted((r.arm, r.rep) for r in again.runs["timer"])


def test_schema_3_document_layout() -> None:
    doc = measured_result().to_json()
    assert doc["schema"] == SCHEMA == 3
    assert sorted(doc["arms"]) == ["off", "on"]
    assert doc["arms"]["on"]["settings"]["kvm_pv_eoi"] is True
    assert [r["rep"] for r in doc["arms"]["off"]["runs"]["timer"]] == [0, 1, 2]
    assert doc["run_order"]["timer"][:3] == [["on", 0, 1], ["off", 0, 1], ["off", 1, 2]]
    assert doc["eoi_exits_saved_per_interrupt"] == doc["workloads"]["timer"]["eoi_exits_saved_per_interrupt"]
    assert doc["metrics"]["timer"] == doc["workloads"]["timer"]["metrics"]
    assert all(a["arm"] == "on" for a in doc["workloads"]["timer"]["agreement"])
    assert "error" not in doc


@pytest.mark.parametrize(("doc", "words"), [
    ({"verdict": "pass"}, "result schema None"),
    ({"schema": 99, "verdict": "pass"}, "upgrade pveoi"),
    ({"schema": "2", "verdict": "pass"}, "move the file out"),
    ([], "not a JSON object"),
    ({"schema": 2, "verdict": "pass", "workloads": {"timer": "x"}}, "malformed result"),
    ({"schema": 2, "verdict": "pass", "runner": None}, "malformed result"),
    ({"schema": 2}, "malformed result"),  # no verdict
    ({"schema": 3, "verdict": "pass", "plan": {"runs": 3}}, "malformed result"),
])
def test_unreadable_documents_are_schema_errors_naming_the_file(doc: Any, words: str) -> None:
    with pytest.raises(SchemaError, match=words) as info:
        Result.from_json(doc, "nightly.json")
    assert "nightly.json" in info.value.message and info.value.fix


def test_migrate_schema_1_moves_the_outer_runner_and_leaves_its_input() -> None:
    doc = {"schema": 1, "verdict": "pass", "runner": {"hostname": "pveoi-vhost"},
           "host": {"chosen": "virtual", "outer_runner": {"hostname": "ci-7"}}}
    new = migrate(doc)
    assert new["schema"] == SCHEMA
    assert new["runner"] == {"hostname": "ci-7", "id": "ci-7", "doctor": []}
    assert new["host"] == {"chosen": "virtual", "inner_runner": {"hostname": "pveoi-vhost"}}
    assert doc["host"]["outer_runner"] == {"hostname": "ci-7"} and doc["schema"] == 1
    direct = migrate({"schema": 1, "verdict": "pass", "runner": {"hostname": "ci-b"}})
    assert direct["runner"]["id"] == "ci-b" and "inner_runner" not in direct["host"]


def test_overall_verdict_is_the_worst() -> None:
    assert overall_verdict(["pass", "fail", "error"]) == "fail"
    assert overall_verdict(["pass", "error", "not-measurable"]) == "error"
    assert overall_verdict(["not-measurable", "pass"]) == "pass"
    assert overall_verdict(["not-measurable"]) == overall_verdict([]) == "not-measurable"
    assert [Result(verdict=v).exit_code for v in ("pass", "fail", "error", "not-measurable")] == [0, 1, 2, 2]


def test_small_types_round_trip() -> None:
    a = Agreement(rep=1, arm="on", host_pv_eoi=2990, guest_skipped=2992, ok=True, vcpu=1)
    assert Agreement.from_json(via_json(a.to_json())) == a
    assert "vcpu" not in Agreement(0, "on", 1, 1, True).to_json()
    c = Comparison("difference", "a", "b", ("kernel",), {"trapped_eoi": {"diff": 0.5}}, "regression", ("x",))
    assert Comparison.from_json(via_json(c.to_json())) == c and c.label == "b vs a"
    w = WorkloadResult("timer", "fail", reasons=("x",), comparisons=(c,), agreement=(a,))
    assert WorkloadResult.from_json("timer", via_json(w.to_json())) == w
    assert w.measurable and not WorkloadResult("t", "error").measurable


# ---------------------------------------------------------------- the run order


def arms_of(n: int) -> tuple[Arm, ...]:
    return tuple(Arm(f"arm{i}", smp=i + 1) for i in range(n))


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("runs", [1, 2, 3, 4, 6])
def test_order_runs_every_arm_once_per_rep(n: int, runs: int) -> None:
    arms = arms_of(n)
    order = plan(arms, runs).order()
    assert len(order) == n * runs
    for rep in range(runs):
        block = order[rep * n:(rep + 1) * n]
        assert {r for r, _ in block} == {rep}, "reps are not mixed"
        assert sorted(a.name for _, a in block) == sorted(a.name for a in arms), "each arm once per rep"
    assert Counter(a.name for _, a in order) == {a.name: runs for a in arms}


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("runs", [2, 4, 10])
def test_order_is_balanced_over_an_even_number_of_reps(n: int, runs: int) -> None:
    arms = arms_of(n)
    order = plan(arms, runs).order()
    positions: dict[str, list[int]] = {a.name: [] for a in arms}
    for i, (rep, arm) in enumerate(order):
        positions[arm.name].append(i - rep * n)  # position within its rep
    means = {name: sum(p) / len(p) for name, p in positions.items()}
    assert set(means.values()) == {(n - 1) / 2}, means
    # Drift spreads: no arm always goes first.
    firsts = Counter(order[rep * n][1].name for rep in range(runs))
    assert max(firsts.values()) == runs // 2


def test_order_of_three_arms() -> None:
    a, b, c = arms_of(3)
    assert plan((a, b, c), 2).order() == [(0, a), (0, b), (0, c), (1, c), (1, b), (1, a)]
    assert plan((a, b, c), 0).order() == []


def test_plan_narrowing() -> None:
    host = Arm("new-host", host_kernel=Path("/k/host/bzImage"))
    p = replace(plan((*DEFAULT_ARMS, host)), workloads=("timer", "ipi"))
    assert p.host_kernels() == [None, Path("/k/host/bzImage")]
    assert p.only("ipi").workloads == ("ipi",) and p.only("ipi").arms == p.arms
    assert p.only(host_kernel=None).arms == DEFAULT_ARMS
    assert p.only("timer", Path("/k/host/bzImage")).arms == (host,)
    assert p.kernel_of(host) == Path("/k/default/bzImage") and p.kernel_of(GOOD_ON) == Path("/k/good/bzImage")


# ---------------------------------------------------------------- arms


@pytest.mark.parametrize(("a", "b", "differs", "twin"), [
    (Arm("on"), Arm("off", pv_eoi=False), ("pv_eoi",), True),
    (Arm("off", pv_eoi=False), Arm("on"), ("pv_eoi",), True),
    (Arm("on"), Arm("guest-off", append="no-kvm-pv-eoi"), ("pv_eoi",), True),  # refused by the guest
    (Arm("on", pv_eoi=None), Arm("guest-off", pv_eoi=None, append="no_kvm_pv_eoi=1"), ("pv_eoi",), True),
    (Arm("on", append="quiet"), Arm("off", append="quiet no-kvm-pv-eoi"), ("pv_eoi",), True),
    # Off both ways: they differ in how, but neither uses PV EOI.
    (Arm("qemu-off", pv_eoi=False), Arm("guest-off", append="no-kvm-pv-eoi"), ("pv_eoi",), False),
    (Arm("on", pv_eoi=True), Arm("default", pv_eoi=None), ("pv_eoi",), False),  # both use it
    (GOOD_ON, Arm("bad-on", kernel=Path("/k/bad/bzImage")), ("kernel",), False),
    (GOOD_ON, Arm("bad-off", pv_eoi=False, kernel=Path("/k/bad/bzImage")), ("kernel", "pv_eoi"), False),
    (Arm("x2apic"), Arm("xapic", cpu_flags=("-x2apic",)), ("cpu_flags",), False),
    (Arm("two", smp=2), Arm("four", smp=4), ("smp",), False),
    (Arm("on", smp=2), Arm("off", pv_eoi=False, smp=4), ("pv_eoi", "smp"), False),
    (Arm("on"), Arm("quiet", append="quiet"), ("append",), False),
    (Arm("on"), Arm("new-host", host_kernel=Path("/k/h")), ("host_kernel",), False),
    (Arm("a", origin={"guest_source": "/x"}), Arm("b", origin={"guest_source": "/y"}), (), False),
    (Arm("a"), Arm("b"), (), False),
])
def test_differences_and_twins(a: Arm, b: Arm, differs: tuple[str, ...], twin: bool) -> None:
    assert a.differences(b) == differs
    assert b.differences(a) == differs, "symmetric"
    assert a.is_twin(b) is twin and b.is_twin(a) is twin
    assert not a.is_twin(a) and a.differences(a) == ()


def test_arm_json_of_an_old_document() -> None:
    # Schema 1/2 arm settings: no smp, host_kernel or origin.
    old = {"name": "off", "kvm_pv_eoi": False, "cpu_flags": [], "append": "", "kernel": None,
           "expects_pv_eoi": False}
    assert Arm.from_json(old) == Arm("off", pv_eoi=False)
    assert Arm.from_json({"name": "on"}) == Arm("on")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("err", "kind", "code", "retry"), [
    (ConfigError("bad --runs"), Kind.CONFIG, 2, False),
    (BuildError("make failed", log="/tmp/build.log"), Kind.CONFIG, 2, False),
    (CapabilityError("no perf"), Kind.CAPABILITY, 2, False),
    (NotMeasurable("no KVM"), Kind.CAPABILITY, 2, False),
    (MeasurementError("tracepoint missing"), Kind.CAPABILITY, 2, False),
    (MeasurementError("perf lost its threads", kind=Kind.INFRASTRUCTURE), Kind.INFRASTRUCTURE, 2, True),
    (GuestError("QMP gone"), Kind.INFRASTRUCTURE, 2, True),
    (GuestTimeout("no ready line in 180 s"), Kind.INFRASTRUCTURE, 2, True),
    (SshError("connection reset"), Kind.INFRASTRUCTURE, 2, True),
    (LaunchError("QEMU exited", exitcode=1), Kind.INFRASTRUCTURE, 2, True),
    (LaunchError("bad -cpu flag", kind=Kind.CONFIG), Kind.CONFIG, 2, False),
    (GuestPanic("Kernel panic", lines=["Kernel panic - not syncing"]), Kind.FINDING, 1, False),
    (GuestPanic("the virtual host panicked", kind=Kind.INFRASTRUCTURE), Kind.INFRASTRUCTURE, 2, True),
    (Finding("cpu1 did not enable PV EOI", vcpu=1), Kind.FINDING, 1, False),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None)
def test_the_kind_decides_retry_and_exit_code(err: errors.PveoiError, kind: Kind, code: int, retry: bool) -> None:
    assert err.kind is kind
    assert err.exit_code == code
    assert retryable(err) is retry


def test_a_finding_names_its_vcpu_and_is_one_line() -> None:
    f = Finding("arm on: cpu1 did not enable PV EOI", fix="enable it on every CPU", vcpu=1)
    assert f.vcpu == 1 and str(f) == "arm on: cpu1 did not enable PV EOI; fix: enable it on every CPU"
    assert errors.EXIT_CODES == {Kind.CONFIG: 2, Kind.CAPABILITY: 2, Kind.INFRASTRUCTURE: 2, Kind.FINDING: 1}
    assert {str(k) for k in Kind} == {"config", "capability", "infrastructure", "finding"}


def test_a_boot_plan_round_trips_through_json_and_a_malformed_one_is_a_config_error(tmp_path: Path) -> None:
    from e2e.model.plan import Arm, BootPlan

    arm = Arm("boot", pv_eoi=False, append="no-kvm-pv-eoi", kernel=tmp_path / "arm-bzImage")
    plan = BootPlan(arm=arm, kernel=tmp_path / "bzImage", image=tmp_path / "image", accel="kvm", smp=2,
                    memory_mb=512, boot_timeout=30.0, timeout=5.0, command=("sh", "-c", "exit 3"),
                    logs=tmp_path / "logs")
    doc = json.loads(json.dumps(plan.to_json()))
    assert BootPlan.from_json(doc) == plan
    assert plan.files() == [tmp_path / "bzImage", tmp_path / "image", tmp_path / "arm-bzImage"]
    assert BootPlan.from_json({**doc, "logs": None}).logs is None
    with pytest.raises(ConfigError, match=r"malformed boot plan \(KeyError: 'arm'\)"):
        BootPlan.from_json({k: v for k, v in doc.items() if k != "arm"})


def test_the_inner_runner_refuses_a_wrong_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from e2e.run import inner

    assert inner.main(["boot"]) == 2
    assert "usage: python -m e2e.run.inner PLAN.json RESULT.json | boot BOOTPLAN.json" in capsys.readouterr().err


def test_the_inner_runner_knows_how_long_ago_its_process_started() -> None:
    """Its interpreter start-up counts (L1's Python is slow); this test's process started seconds ago."""
    from e2e.util.laps import seconds_since_process_start

    ago = seconds_since_process_start()
    assert ago is not None and 0 < ago < 24 * 3600


def test_laps_time_stages_back_to_back() -> None:
    from e2e.util.laps import Laps

    laps = Laps()
    time.sleep(0.05)
    laps.lap("a")
    laps.lap("b")
    time.sleep(0.02)
    laps.lap("a")
    assert laps.seconds["a"] >= 0.07 and laps.seconds["b"] < 0.05 and list(laps.seconds) == ["a", "b"]
