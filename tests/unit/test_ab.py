"""Unit tests for e2e.run.ab's pure parts (arms, the CPU vendor, reanalyze), the
plan's run order, thresholds, and ``e2e.analysis.compare.analyze()`` on synthetic run
records shaped like ``run_guest``'s.

The synthetic runs model a 1-vCPU timer workload: each injected interrupt
ends with one EOI (``kvm:kvm_eoi`` fires for every EOI KVM completes, PV or
trapped). Without PV EOI every EOI is an exit; with it KVM completes almost
all of them on the next exit (``kvm:kvm_pv_eoi``), so trapped EOIs per
interrupt fall from ~1 to ~0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from e2e.analysis import compare as analysis
from e2e.analysis.compare import THRESHOLDS, load_thresholds
from e2e.analysis.stats import headline_counts, per_interrupt, trapped_eoi_per_interrupt
from e2e.errors import ConfigError, MeasurementError
from e2e.model.plan import Plan
from e2e.model.result import Result, RunRecord, WorkloadResult
from e2e.model.workloads import WORKLOADS
from e2e.report.results import format_table
from e2e.run import ab
from e2e.run.ab import COUNTED, DEFAULT_ARMS, Arm, cpu_vendor, validate_arms
from e2e.run.arms import load_arms
from tests.helpers.bzimage import bzimage_bytes

TIMER = WORKLOADS["timer"]
ON, OFF = DEFAULT_ARMS

# ---------------------------------------------------------------- arms


@pytest.mark.parametrize(
    ("arm", "expected"),
    [
        (Arm("a", pv_eoi=True), True),
        (Arm("a", pv_eoi=None), True),  # QEMU's default offers PV EOI under KVM
        (Arm("a", pv_eoi=False), False),
        (Arm("a", pv_eoi=True, append="no-kvm-pv-eoi"), False),
        (Arm("a", pv_eoi=None, append="quiet no-kvm-pv-eoi loglevel=3"), False),
        (Arm("a", pv_eoi=True, append="no-kvm-pv-eoi-please"), True),
        (Arm("a", pv_eoi=True, append="no-kvmapf no-steal-acc"), True),
        # The kernel matches parameters by name before "=" with - and _ alike...
        (Arm("a", pv_eoi=True, append="no-kvm-pv-eoi=1"), False),
        (Arm("a", pv_eoi=True, append="no_kvm_pv_eoi"), False),
        # ...and hands what follows "--" to init.
        (Arm("a", pv_eoi=True, append="quiet -- no-kvm-pv-eoi"), True),
    ],
)
def test_expects_pv_eoi(arm: Arm, expected: bool) -> None:
    assert arm.expects_pv_eoi is expected
    assert arm.to_json()["expects_pv_eoi"] is expected


def test_default_arms() -> None:
    validate_arms(DEFAULT_ARMS)
    assert [a.name for a in DEFAULT_ARMS] == ["on", "off"]
    assert ON.expects_pv_eoi and not OFF.expects_pv_eoi


def test_arm_to_json() -> None:
    arm = Arm("x", pv_eoi=None, cpu_flags=("x2apic=on",), append="no-kvm-pv-eoi",
              kernel=Path("/k/bzImage"))
    assert arm.to_json() == {"name": "x", "kvm_pv_eoi": None, "cpu_flags": ["x2apic=on"],
                             "append": "no-kvm-pv-eoi", "kernel": "/k/bzImage", "smp": None,
                             "host_kernel": None, "origin": {}, "expects_pv_eoi": False}
    json.dumps(arm.to_json())
    assert Arm.from_json(json.loads(json.dumps(arm.to_json()))) == arm


@pytest.mark.parametrize(
    ("arms", "words"),
    [
        ((), "at least two arms, got 0"),
        ((Arm("on"),), "at least two arms, got 1"),
        ((Arm("on"), Arm("off", pv_eoi=False), Arm("off2", pv_eoi=False)), "off and off2 are the same"),
        ((Arm("same"), Arm("same", pv_eoi=False)), "unique"),
        ((Arm("a"), Arm("b")), "a and b are the same experiment"),  # identical but for the name
        ((Arm("a", pv_eoi=False), Arm("b", pv_eoi=False)), "a and b are the same experiment"),
        ((Arm(""), Arm("b", pv_eoi=False)), "non-empty"),
        ((Arm("on", smp=0), Arm("off", pv_eoi=False)), "smp 0 is not in 1..64"),
        ((Arm("on", smp=65), Arm("off", pv_eoi=False)), "smp 65 is not in 1..64"),
    ],
)
def test_validate_arms_rejects(arms: tuple[Arm, ...], words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        validate_arms(arms)
    assert info.value.fix


def test_validate_arms_accepts_guest_side_baseline() -> None:
    validate_arms((Arm("guest-off", append="no-kvm-pv-eoi"), Arm("pv")))


@pytest.mark.parametrize(
    "arms",
    [
        (Arm("a", kernel=Path("/k/a")), Arm("b", kernel=Path("/k/b"))),  # both with PV EOI: two kernels
        (Arm("x2apic"), Arm("xapic", cpu_flags=("-x2apic",))),
        (Arm("two", smp=2), Arm("four", smp=4)),
        (Arm("qemu-off", pv_eoi=False), Arm("guest-off", append="no-kvm-pv-eoi")),  # both off, two ways
        (Arm("on"), Arm("off", pv_eoi=False), Arm("on-4", smp=4)),
        (Arm("a-on", kernel=Path("/k/a")), Arm("a-off", pv_eoi=False, kernel=Path("/k/a")),
         Arm("b-on", kernel=Path("/k/b")), Arm("b-off", pv_eoi=False, kernel=Path("/k/b"))),
    ],
)
def test_validate_arms_accepts_arms_that_differ_in_anything(arms: tuple[Arm, ...]) -> None:
    validate_arms(arms)


def write_arms(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "arms.toml"
    path.write_text(text)
    return path


def fake_bzimage(path: Path) -> Path:
    """A well-formed x86 bzImage (it boots nothing)."""
    path.write_bytes(bzimage_bytes())
    return path


def test_load_arms(tmp_path: Path) -> None:
    kernel = fake_bzimage(tmp_path / "bzImage")
    path = write_arms(tmp_path, f"""
# the guest refuses PV EOI although QEMU offers it
[[arm]]
name = "guest-off"
append = "no-kvm-pv-eoi"
kernel = "{kernel}"

[[arm]]
name = "pv"
pv_eoi = true
cpu_flags = ["x2apic=on", "kvm-pv-ipi=off"]
""")
    off, on = load_arms(path)
    assert off == Arm("guest-off", pv_eoi=True, append="no-kvm-pv-eoi", kernel=kernel,
                      origin={"guest_kernel": str(kernel)})
    assert on == Arm("pv", pv_eoi=True, cpu_flags=("x2apic=on", "kvm-pv-ipi=off"))
    assert not off.expects_pv_eoi and on.expects_pv_eoi


def test_load_arms_defaults(tmp_path: Path) -> None:
    path = write_arms(tmp_path, '[[arm]]\nname = "on"\n[[arm]]\nname = "off"\npv_eoi = false\n')
    assert load_arms(path) == DEFAULT_ARMS


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[[arm]]\nname = 'on'\n", "at least two arms, got 1"),
        ("", "at least two arms, got 0"),
        ("[[arm]]\nname = 'a'\n[[arm]]\nname = 'b'\n", "a and b are the same experiment"),
        ("[[arm]]\nname = 'a'\npv_eoi = false\n[[arm]]\nname = 'b'\npv_eoi = false\n",
         "a and b are the same experiment"),
        ("[[arm]]\nname = 'a'\n[[arm]]\nname = 'a'\npv_eoi = false\n", "must be unique"),
        ("[[arm]]\nname = 'on'\npv-eoi = false\n[[arm]]\nname = 'off'\n", "unknown keys"),
        ("[[arm]]\npv_eoi = true\n[[arm]]\nname = 'off'\npv_eoi = false\n", "no name"),
        ("[[arm]]\nname = 'on'\n[[arm]]\nname = 'off'\npv_eoi = 'off'\n", "pv_eoi must be true"),
        ("[[arm]]\nname = 'on'\ncpu_flags = 'x2apic=on'\n[[arm]]\nname = 'off'\npv_eoi = false\n",
         "cpu_flags a list"),
        ("[[arm]]\nname = 'on'\n[[arm]]\nname = 'off'\npv_eoi = false\nkernel = '/no/such/bzImage'\n",
         "kernel /no/such/bzImage not found"),
        ("[[arm]\nname = 'on'\n", "cannot read arms file"),
        ("[[arm]]\nname = 'on'\nsmp = 'two'\n[[arm]]\nname = 'off'\npv_eoi = false\n", "smp must be an integer"),
        ("[[arm]]\nname = 'on'\nsmp = 0\n[[arm]]\nname = 'off'\npv_eoi = false\n", "smp 0 is not in 1..64"),
        ("[[arm]]\nname = 'on'\nappend = 1\n[[arm]]\nname = 'off'\npv_eoi = false\n", "append must be a string"),
        ("[[arm]]\nname = 'on'\nkernel = 5\n[[arm]]\nname = 'off'\npv_eoi = false\n", "expected a bzImage path"),
        ("runs = 3\n[[arm]]\nname = 'on'\n[[arm]]\nname = 'off'\npv_eoi = false\n", "expected only"),
    ],
)
def test_load_arms_rejects(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_arms(write_arms(tmp_path, text))


def test_load_arms_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read arms file"):
        load_arms(tmp_path / "nope.toml")


def arm_order(arms: Sequence[Arm], runs: int) -> list[tuple[int, Arm]]:
    """The interleaved (rep, arm) order of a plan of ``arms`` and ``runs`` reps."""
    return make_plan(arms, runs).order()


def make_plan(arms: Sequence[Arm] = DEFAULT_ARMS, runs: int = 3, workloads: Sequence[str] = ("timer",),
              thresholds: dict[str, float] | None = None) -> Plan:
    return Plan(workloads=tuple(workloads), arms=tuple(arms), runs=runs, kernel=Path("/k/bzImage"),
                image=Path("/cache/images/x"), logs=Path("/logs"), thresholds=thresholds or {})


def test_arm_order_interleaves() -> None:
    a, b = DEFAULT_ARMS
    assert arm_order(DEFAULT_ARMS, 3) == [(0, a), (0, b), (1, b), (1, a), (2, a), (2, b)]
    assert arm_order(DEFAULT_ARMS, 1) == [(0, a), (0, b)]
    assert arm_order(DEFAULT_ARMS, 0) == []


@pytest.mark.parametrize("runs", [1, 2, 5, 10])
def test_arm_order_balanced(runs: int) -> None:
    order = arm_order(DEFAULT_ARMS, runs)
    for arm in DEFAULT_ARMS:
        assert sorted(rep for rep, a in order if a == arm) == list(range(runs))
    # Each arm goes first in half the reps (drift is spread over both).
    firsts = [order[2 * rep][1] for rep in range(runs)]
    assert abs(firsts.count(ON) - firsts.count(OFF)) <= 1
    # Never three of one arm in a row.
    names = [a.name for _, a in order]
    assert all(len(set(names[i:i + 3])) == 2 for i in range(len(names) - 2))


# ---------------------------------------------------------------- thresholds


def test_load_thresholds_default_and_workload() -> None:
    default = load_thresholds("no-such-workload")
    assert set(default) == {"min_eoi_saved_per_interrupt", "max_agreement_error", "agreement_slack",
                            "min_interrupts", "max_trapped_eoi_increase", "max_exit_increase",
                            "max_effect_drop"}
    assert all(isinstance(v, float) for v in default.values())
    timer = load_thresholds("timer")
    assert timer["min_eoi_saved_per_interrupt"] == 0.9  # [timer] overrides [default]
    assert {k: v for k, v in timer.items() if k != "min_eoi_saved_per_interrupt"} == {
        k: v for k, v in default.items() if k != "min_eoi_saved_per_interrupt"}


def test_every_workload_has_sane_thresholds() -> None:
    for name in WORKLOADS:
        t = load_thresholds(name)
        assert 0 < t["min_eoi_saved_per_interrupt"] <= 1.0, name  # 1.0 is the physical limit
        assert 0 <= t["max_agreement_error"] < 1, name
        assert t["min_interrupts"] >= 1, name
        assert 0 < t["max_trapped_eoi_increase"] < 1, name
        assert 0 < t["max_exit_increase"] < 1, name
        assert 0 < t["max_effect_drop"] < 1, name


def test_load_thresholds_overrides() -> None:
    t = load_thresholds("timer", {"min_interrupts": 10, "min_eoi_saved_per_interrupt": 0.25})
    assert t["min_interrupts"] == 10.0
    assert isinstance(t["min_interrupts"], float)
    assert t["min_eoi_saved_per_interrupt"] == 0.25
    assert load_thresholds("timer", {}) == load_thresholds("timer", None) == load_thresholds("timer")


def test_load_thresholds_unknown_override() -> None:
    with pytest.raises(ConfigError, match="unknown threshold 'min_interupts'") as info:
        load_thresholds("timer", {"min_interupts": 10})
    assert "min_interrupts" in str(info.value.fix)


def test_load_thresholds_custom_file(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text("[default]\na = 1\nb = 2.5\n[w]\nb = 3\nc = 4\n")
    assert load_thresholds("w", path=path) == {"a": 1.0, "b": 3.0, "c": 4.0}
    assert load_thresholds("other", {"a": 7}, path=path) == {"a": 7.0, "b": 2.5}
    with pytest.raises(ConfigError):
        load_thresholds("other", {"c": 1}, path=path)  # c exists only for workload w
    assert THRESHOLDS.is_file()


# ---------------------------------------------------------------- cpu vendor

AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep svm extapic cr8_legacy abm
bugs\t\t: sysret_ss_attrs
"""
INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse tsc msr pae mce vmx smx est tm2 ssse3 x2apic
vmx flags\t: vnmi preemption_timer posted_intr invvpid ept_x_only
"""


def test_cpu_vendor() -> None:
    assert cpu_vendor(AMD) == "svm"
    assert cpu_vendor(INTEL) == "vmx"
    assert cpu_vendor(INTEL.replace(" vmx ", " ")) == "unknown"
    assert cpu_vendor("") == "unknown"
    # A flag name must match whole: "svm_lock" alone is not "svm".
    assert cpu_vendor("flags\t\t: fpu svm_lock nrip_save\n") == "unknown"


def test_cpu_vendor_of_this_machine() -> None:
    assert cpu_vendor() in ("svm", "vmx", "unknown")


# ---------------------------------------------------------------- analyze: synthetic runs


def off_run(rep: int, arm: str = "off", inj: int | None = None) -> dict[str, Any]:
    """A run without PV EOI: every EOI traps (an x2APIC EOI MSR write)."""
    inj = 3000 + 7 * rep if inj is None else inj
    hlt = 900 + 11 * rep
    return record(rep, arm, inj=inj, eoi=inj, pv=0, msr=inj + 5, hlt=hlt,
                  guest={"skipped": 0, "written": inj, "feature": [False], "enabled": [False]})


def on_run(rep: int, arm: str = "on", inj: int | None = None, pv: int | None = None,
           guest_skipped: int | None = None) -> dict[str, Any]:
    """A run with PV EOI: all but a handful of EOIs are completed by KVM without an exit."""
    inj = 3000 + 5 * rep if inj is None else inj
    pv = inj - 3 - rep if pv is None else pv
    skipped = pv + 2 if guest_skipped is None else guest_skipped
    return record(rep, arm, inj=inj, eoi=inj, pv=pv, msr=inj - pv + 5, hlt=905 + 9 * rep,
                  guest={"skipped": skipped, "written": inj - skipped, "feature": [True],
                         "enabled": [True]})


def record(rep: int, arm: str, *, inj: int, eoi: int, pv: int, msr: int, hlt: int,
           guest: dict[str, Any] | None) -> dict[str, Any]:
    ext = 40 + rep
    exits = msr + hlt + ext + inj // 2  # EOI writes, HLT, host interrupts, timer reprogramming
    counts = {
        "kvm:kvm_exit": exits, "kvm:kvm_entry": exits + 1, "kvm:kvm_msr": msr + inj // 2,
        "kvm:kvm_apic": msr + inj // 2, "kvm:kvm_eoi": eoi, "kvm:kvm_pv_eoi": pv,
        "kvm:kvm_inj_virq": inj, "kvm:kvm_apic_accept_irq": inj,
    }
    assert set(counts) == set(COUNTED)
    return {
        "rep": rep, "arm": arm,
        "counts": counts,
        "exit_reasons": {"MSR_WRITE": msr + inj // 2, "HLT": hlt, "EXTERNAL_INTERRUPT": ext},
        "guest": {"interrupts": {"LOC": inj, "total": inj}, "pv_eoi": guest},
    }


def interleaved(on: Sequence[dict[str, Any]], off: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs in the order run_ab produces them."""
    by_key = {(r["arm"], r["rep"]): r for r in [*on, *off]}
    return [by_key[(arm.name, rep)] for rep, arm in arm_order(DEFAULT_ARMS, len(on))]


@pytest.fixture
def thresholds() -> dict[str, float]:
    return load_thresholds("timer")


def analyze(workload: Any, arms: Sequence[Arm], runs: Sequence[dict[str, Any]],
            thresholds: dict[str, float]) -> dict[str, Any]:
    """:func:`e2e.analysis.compare.analyze` of the synthetic runs, as the document it writes."""
    out = analysis.analyze(workload, arms, [RunRecord.from_json(r) for r in runs], thresholds)
    assert isinstance(out, WorkloadResult)
    return out.to_json()


def check_document(out: dict[str, Any]) -> None:
    """Every analysis is a JSON document with a verdict and reasons, read back as it was written."""
    text = json.dumps(out, allow_nan=False)
    assert out["verdict"] in ("pass", "fail", "not-measurable")
    assert isinstance(out["reasons"], list)
    assert (out["verdict"] == "pass") == (out["reasons"] == [])
    assert out["workload"] == "timer"
    typed = WorkloadResult.from_json("timer", json.loads(text))
    assert json.loads(json.dumps(typed.to_json())) == json.loads(text)
    table = format_table(Result(verdict=out["verdict"], workloads={"timer": typed}))
    assert f"workload timer: {out['verdict'].upper()}" in table


def test_per_interrupt_helpers() -> None:
    r = on_run(0)
    assert per_interrupt(r, "kvm:kvm_pv_eoi") == 2997 / 3000
    assert trapped_eoi_per_interrupt(headline_counts(r)) == 3 / 3000
    assert trapped_eoi_per_interrupt(headline_counts(off_run(0))) == 1.0
    zero = record(0, "on", inj=0, eoi=0, pv=0, msr=0, hlt=0, guest=None)
    assert math.isnan(per_interrupt(zero, "kvm:kvm_exit"))
    with pytest.raises(MeasurementError, match="zero counts"):
        trapped_eoi_per_interrupt(headline_counts(zero))
    # The typed run gives the same figures.
    typed = RunRecord.from_json(r)
    assert typed.interrupts == 3000
    assert typed.per_interrupt("kvm_pv_eoi") == typed.per_interrupt("kvm:kvm_pv_eoi") == 2997 / 3000
    assert typed.per_interrupt("trapped_eoi") == 3 / 3000
    assert typed.per_interrupt("kvm_exit[HLT]") == 905 / 3000
    assert math.isnan(RunRecord.from_json(zero).per_interrupt("kvm_exit"))


def test_real_reduction_passes(thresholds: dict[str, float]) -> None:
    runs = interleaved([on_run(i) for i in range(3)], [off_run(i) for i in range(3)])
    out = analyze(TIMER, DEFAULT_ARMS, runs, thresholds)
    check_document(out)
    assert out["verdict"] == "pass", out["reasons"]
    assert out["treatment"] == "on" and out["baseline"] == "off"
    assert out["notes"] == []
    saved = out["eoi_exits_saved_per_interrupt"]
    assert saved["limit"] == 1.0
    assert 0.99 < saved["value"] <= 1.0
    assert thresholds["min_eoi_saved_per_interrupt"] < saved["ci"][0] <= saved["ci"][1] <= 1.0
    m = out["metrics"]
    assert "inj_virq" not in m and "kvm_inj_virq" not in m, "the denominator is not a metric"
    assert {"kvm_exit", "kvm_eoi", "kvm_pv_eoi", "trapped_eoi", "kvm_exit[MSR_WRITE]",
            "kvm_exit[HLT]", "kvm_exit[EXTERNAL_INTERRUPT]"} <= set(m)
    assert m["kvm_pv_eoi"]["off_median"] == 0.0
    assert m["kvm_pv_eoi"]["on_median"] > 0.99
    assert m["kvm_eoi"]["on_median"] == m["kvm_eoi"]["off_median"] == 1.0  # every EOI, PV or not
    assert m["trapped_eoi"]["diff"] == saved["value"]
    assert m["kvm_exit"]["on_median"] < m["kvm_exit"]["off_median"]
    assert m["kvm_exit"]["reduction"] > 0.3
    assert m["kvm_exit[MSR_WRITE]"]["reduction"] > 0.5
    assert [a["rep"] for a in out["agreement"]] == [0, 1, 2]
    assert all(a["ok"] and a["arm"] == "on" for a in out["agreement"])
    [effect] = out["comparisons"]  # two arms: the one on/off effect, the headline's own
    assert (effect["kind"], effect["a"], effect["b"], effect["verdict"]) == ("effect", "off", "on", "pass")
    assert effect["differs_in"] == ["pv_eoi"] and effect["headline"] == saved


def test_real_reduction_with_one_run_per_arm(thresholds: dict[str, float]) -> None:
    out = analyze(TIMER, DEFAULT_ARMS, [on_run(0), off_run(0)], thresholds)
    check_document(out)
    assert out["verdict"] == "pass", out["reasons"]
    assert out["metrics"]["trapped_eoi"]["p_value"] is None


def test_no_difference_fails(thresholds: dict[str, float]) -> None:
    # The "on" arm behaves exactly like the baseline: PV EOI never happened.
    runs = interleaved([off_run(i, arm="on") for i in range(3)], [off_run(i) for i in range(3)])
    out = analyze(TIMER, DEFAULT_ARMS, runs, thresholds)
    check_document(out)
    assert out["verdict"] == "fail"
    reasons = " | ".join(out["reasons"])
    assert "EOI exits saved per interrupt 0.000 (on vs off) < threshold 0.90" in reasons
    assert "kvm_pv_eoi was 0 in a on run" in reasons
    assert "kvm_exit per interrupt not lower with PV EOI" in reasons
    assert out["eoi_exits_saved_per_interrupt"]["value"] == 0.0


def test_small_saving_fails_the_threshold(thresholds: dict[str, float]) -> None:
    # PV EOI works on only half of the EOIs: real, but below the timer's 0.9.
    on = [on_run(i, pv=1500 + i) for i in range(3)]
    out = analyze(TIMER, DEFAULT_ARMS, interleaved(on, [off_run(i) for i in range(3)]), thresholds)
    assert out["verdict"] == "fail"
    assert len(out["reasons"]) == 1
    assert "< threshold 0.90" in out["reasons"][0]
    assert 0.45 < out["eoi_exits_saved_per_interrupt"]["value"] < 0.55
    relaxed = analyze(TIMER, DEFAULT_ARMS, interleaved(on, [off_run(i) for i in range(3)]),
                      {**thresholds, "min_eoi_saved_per_interrupt": 0.4})
    assert relaxed["verdict"] == "pass", relaxed["reasons"]


def test_inverted_fails(thresholds: dict[str, float]) -> None:
    # The arms' behaviours are swapped: the baseline uses PV EOI, the "on" arm does not.
    runs = interleaved([off_run(i, arm="on") for i in range(3)], [on_run(i, arm="off") for i in range(3)])
    out = analyze(TIMER, DEFAULT_ARMS, runs, thresholds)
    check_document(out)
    assert out["verdict"] == "fail"
    assert out["eoi_exits_saved_per_interrupt"]["value"] < -0.99
    reasons = " | ".join(out["reasons"])
    assert "< threshold" in reasons
    assert "kvm_pv_eoi was 0 in a on run" in reasons
    assert "kvm_pv_eoi was non-zero in a off run" in reasons
    assert "kvm_exit per interrupt not lower" in reasons


def test_zero_pv_eoi_in_one_on_run_fails(thresholds: dict[str, float]) -> None:
    on = [on_run(0), on_run(1, pv=0, guest_skipped=0), on_run(2)]
    out = analyze(TIMER, DEFAULT_ARMS, interleaved(on, [off_run(i) for i in range(3)]), thresholds)
    check_document(out)
    assert out["verdict"] == "fail"
    assert any(r.startswith("kvm_pv_eoi was 0 in a on run ([2997, 0, 3005])")
               for r in out["reasons"]), out["reasons"]


def test_pv_eoi_in_a_baseline_run_fails(thresholds: dict[str, float]) -> None:
    off = [off_run(0), off_run(1), off_run(2)]
    off[2]["counts"]["kvm:kvm_pv_eoi"] = 1
    out = analyze(TIMER, DEFAULT_ARMS, interleaved([on_run(i) for i in range(3)], off), thresholds)
    assert out["verdict"] == "fail"
    assert out["reasons"] == ["kvm_pv_eoi was non-zero in a off run ([0, 0, 1])"]


def test_guest_host_disagreement_fails(thresholds: dict[str, float]) -> None:
    on = [on_run(0), on_run(1, guest_skipped=1400), on_run(2)]
    out = analyze(TIMER, DEFAULT_ARMS, interleaved(on, [off_run(i) for i in range(3)]), thresholds)
    check_document(out)
    assert out["verdict"] == "fail"
    assert out["reasons"] == ["host kvm_pv_eoi 3001 and guest skipped EOIs 1400 disagree (arm on, rep 1)"]
    assert [a["ok"] for a in out["agreement"]] == [True, False, True]
    assert out["agreement"][1] == {"rep": 1, "arm": "on", "host_pv_eoi": 3001, "guest_skipped": 1400,
                                   "ok": False}


def test_agreement_tolerance_boundary(thresholds: dict[str, float]) -> None:
    # Allowed: agreement_slack (50) + max_agreement_error (10 %) of the larger count.
    off = [off_run(i, inj=1000) for i in range(3)]

    def verdict(guest_skipped: int) -> str:
        on = [on_run(i, inj=1000, pv=1000) for i in range(3)]
        on[0] = on_run(0, inj=1000, pv=1000, guest_skipped=guest_skipped)
        return str(analyze(TIMER, DEFAULT_ARMS, interleaved(on, off), thresholds)["verdict"])

    assert verdict(850) == "pass"   # |1000 - 850| = 150 = 50 + 0.1 * 1000
    assert verdict(849) == "fail"
    assert verdict(1166) == "pass"  # 166 <= 50 + 116.6
    assert verdict(1167) == "fail"  # 167 > 50 + 116.7


def test_without_guest_counter_agreement_is_a_note(thresholds: dict[str, float]) -> None:
    on = [on_run(i) for i in range(3)]
    for r in on:
        r["guest"]["pv_eoi"] = None
    out = analyze(TIMER, DEFAULT_ARMS, interleaved(on, [off_run(i) for i in range(3)]), thresholds)
    check_document(out)
    assert out["verdict"] == "pass", out["reasons"]
    assert out["agreement"] == []
    assert len(out["notes"]) == 1 and "guest_patches/0001" in out["notes"][0]


def test_too_few_interrupts_is_not_measurable(thresholds: dict[str, float]) -> None:
    on = [on_run(0), on_run(1, inj=150, pv=140), on_run(2)]
    runs = interleaved(on, [off_run(i) for i in range(3)])
    out = analyze(TIMER, DEFAULT_ARMS, runs, thresholds)
    check_document(out)
    assert out["verdict"] == "not-measurable"
    assert out["reasons"][0].startswith("1 run(s) injected fewer than 200 interrupts")
    assert out["metrics"] == {}
    assert out["eoi_exits_saved_per_interrupt"] is None
    lowered = analyze(TIMER, DEFAULT_ARMS, runs, {**thresholds, "min_interrupts": 100})
    assert lowered["verdict"] == "pass", lowered["reasons"]


def test_no_interrupts_at_all_is_not_measurable(thresholds: dict[str, float]) -> None:
    quiet = [record(i, arm, inj=0, eoi=0, pv=0, msr=0, hlt=5, guest=None)
             for i in range(2) for arm in ("on", "off")]
    out = analyze(TIMER, DEFAULT_ARMS, quiet, thresholds)
    check_document(out)
    assert out["verdict"] == "not-measurable"
    assert out["reasons"][0].startswith("4 run(s) injected fewer than 200")


@pytest.mark.parametrize("missing", ["on", "off", "both"])
def test_an_arm_without_runs_is_not_measurable(thresholds: dict[str, float], missing: str) -> None:
    runs = [r for r in [on_run(0), off_run(0)] if missing not in (r["arm"], "both")]
    out = analyze(TIMER, DEFAULT_ARMS, runs, thresholds)
    check_document(out)
    assert out["verdict"] == "not-measurable"
    names = {"on": ["on"], "off": ["off"], "both": ["on", "off"]}[missing]
    assert out["reasons"] == [f"arm(s) {names} have no completed runs"]


def test_arm_names_and_order_come_from_the_arms(thresholds: dict[str, float]) -> None:
    arms = (Arm("guest-off", append="no-kvm-pv-eoi"), Arm("pv"))
    runs = [*(on_run(i, arm="pv") for i in range(3)), *(off_run(i, arm="guest-off") for i in range(3))]
    runs.append(on_run(9, arm="stray"))  # runs of other arms are ignored
    out = analyze(TIMER, arms, runs, thresholds)
    assert out["treatment"] == "pv" and out["baseline"] == "guest-off"
    assert out["verdict"] == "pass", out["reasons"]
    assert out["metrics"]["trapped_eoi"]["n_on"] == 3


def test_exit_reasons_seen_in_one_arm_only(thresholds: dict[str, float]) -> None:
    on = [on_run(i) for i in range(3)]
    off = [off_run(i) for i in range(3)]
    for r in off:
        r["exit_reasons"]["EOI_INDUCED"] = r["counts"]["kvm:kvm_inj_virq"]
    out = analyze(TIMER, DEFAULT_ARMS, interleaved(on, off), thresholds)
    m = out["metrics"]["kvm_exit[EOI_INDUCED]"]
    assert m["on_median"] == 0.0 and m["off_median"] == 1.0 and m["reduction"] == 1.0


def typed(runs: Sequence[dict[str, Any]]) -> tuple[RunRecord, ...]:
    return tuple(RunRecord.from_json(r) for r in runs)


def test_reanalyze_joins_parts_and_recomputes_the_verdict() -> None:
    """The virtual host's parts (one per workload) become one result, concluded anew from the raw runs."""
    plan = make_plan(workloads=("timer", "net"))
    timer_runs = typed(interleaved([on_run(i) for i in range(3)], [off_run(i) for i in range(3)]))
    timer = Result(verdict="pass", reason="timer: pass", runs={"timer": timer_runs},
                   workloads={"timer": WorkloadResult("timer", "pass")}, runner={"hostname": "pveoi-vhost"})
    net_runs = typed([off_run(0)])  # the on arm's rep 0 did not complete
    net = Result(verdict="error", runs={"net": net_runs},
                 workloads={"net": WorkloadResult("net", "error", errors=("on rep 1: ssh lost",))})
    out = ab.reanalyze(timer, plan, [net])
    assert list(out.workloads) == ["timer", "net"]
    assert out.workloads["timer"].verdict == "pass"
    assert out.workloads["net"].verdict == "error"
    assert out.workloads["net"].reasons == ("1 of 2 runs did not complete, so no verdict", "on rep 1: ssh lost")
    assert out.verdict == "error" and out.exit_code == 2
    assert out.reason == "timer: pass; net: 1 of 2 runs did not complete, so no verdict; on rep 1: ssh lost"
    assert out.runs["timer"] == timer_runs and out.runs["net"] == net_runs
    assert out.headline == out.workloads["timer"].eoi_exits_saved_per_interrupt
    assert out.headline is not None and out.headline["value"] > 0.99
    assert out.plan == plan and list(out.arms) == ["on", "off"] and out.runs_per_arm == 3
    assert out.runner == {"hostname": "pveoi-vhost"}, "the first part's identity is kept"
    assert timer.verdict == "pass" and "net" not in timer.workloads  # inputs untouched
    assert ab.reanalyze(timer, plan).verdict == "pass"
    # Thresholds come from the plan: what passed fails under a stricter one.
    strict = make_plan(workloads=("timer",), thresholds={"min_eoi_saved_per_interrupt": 1.5})
    assert ab.reanalyze(timer, strict).verdict == "fail"


def test_reanalyze_keeps_findings_and_retries() -> None:
    plan = make_plan()
    runs = typed(interleaved([on_run(i) for i in range(3)], [off_run(i) for i in range(3)]))
    part = Result(verdict="fail", runs={"timer": runs},
                  workloads={"timer": WorkloadResult("timer", "fail", findings=("on rep 2: cpu1 did not enable",),
                                                     retried=("off rep 1: boot deadline",))})
    out = ab.reanalyze(part, plan)
    w = out.workloads["timer"]
    assert out.verdict == "fail" and w.reasons == ("on rep 2: cpu1 did not enable",)
    assert w.retried == ("off rep 1: boot deadline",) and "off rep 1: boot deadline" in w.notes[0]
