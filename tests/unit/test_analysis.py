"""Unit tests for e2e.analysis.compare (every pair of arms compared), the per-vCPU arm proof
(e2e.run.boot.check_guest_arm), arms files (e2e.run.arms.load_arms) and `pveoi analyze`.

The synthetic runs model a 2-vCPU timer run: each injected interrupt ends with one
EOI (``kvm:kvm_eoi`` fires for every EOI, PV or trapped); without PV EOI every EOI
traps (an MSR write exit), with it KVM completes almost all of them without an
exit (``kvm:kvm_pv_eoi``). A "broken" kernel with PV EOI traps about half of its
EOIs (e.g. it enabled PV EOI on one of two busy vCPUs only).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from e2e import cli
from e2e.analysis.compare import analyze, conclude, load_thresholds
from e2e.errors import ConfigError, Finding, Kind, MeasurementError
from e2e.measure.guest_counters import STATE_MARK, GuestState
from e2e.model.plan import DEFAULT_ARMS, Arm, Plan
from e2e.model.result import Result, RunRecord, WorkloadResult
from e2e.model.workloads import WORKLOADS
from e2e.report import results
from e2e.run.arms import load_arms
from e2e.run.boot import check_guest_arm
from tests.helpers.bzimage import bzimage_bytes

TIMER = WORKLOADS["timer"]
GOOD = Path("/k/good/bzImage")
BROKEN = Path("/k/broken/bzImage")


def run(arm: str, rep: int, trapped: float, inj: int = 3000, pv_used: bool = True) -> RunRecord:
    """One run: ``trapped`` EOIs per interrupt exit (plus a little per-rep noise)."""
    inj += 7 * rep
    noise = (rep * 37 % 11) - 5  # -5..5 EOIs
    trap = inj if not pv_used else min(inj, max(0, round(trapped * inj) + noise))
    pv = inj - trap
    rearm = inj  # the timer rearms its TSC deadline once per interrupt: an MSR write exit
    hlt = 900 + (rep * 53 % 17)
    exits = trap + rearm + hlt + 40
    skipped = pv + 2 if pv else 0
    return RunRecord(
        rep=rep, arm=arm, vcpus=2,
        counts={"kvm:kvm_exit": exits, "kvm:kvm_entry": exits + 1, "kvm:kvm_msr": trap + rearm,
                "kvm:kvm_apic": trap + rearm, "kvm:kvm_eoi": inj, "kvm:kvm_pv_eoi": pv, "kvm:kvm_inj_virq": inj,
                "kvm:kvm_apic_accept_irq": inj},
        exit_reasons={"MSR": trap + rearm, "HLT": hlt, "INTR": 40},
        guest={"interrupts": {"LOC": inj, "total": inj},
               "pv_eoi": {"skipped": skipped, "written": inj - skipped, "feature": [True, True],
                          "enabled": [pv_used, pv_used]}})


def runs_of(arms: dict[str, float], reps: int = 5) -> list[RunRecord]:
    """Runs of each arm (name -> trapped EOIs per interrupt; 1.0 means PV EOI not in use), interleaved."""
    names = list(arms)
    out = []
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            out.append(run(name, rep, arms[name], pv_used=arms[name] < 1.0))
    return out


@pytest.fixture
def thresholds() -> dict[str, float]:
    return load_thresholds("timer")


def comparisons(w: WorkloadResult, kind: str) -> list[Any]:
    return [c for c in w.comparisons if c.kind == kind]


# ---------------------------------------------------------------- two kernels, both with PV EOI


def test_a_kernel_that_traps_half_its_eois_is_a_regression(thresholds: dict[str, float]) -> None:
    arms = (Arm("good", kernel=GOOD), Arm("broken", kernel=BROKEN))
    w = analyze(TIMER, arms, runs_of({"good": 0.01, "broken": 0.5}), thresholds)
    assert w.verdict == "fail"
    [diff] = w.comparisons
    assert (diff.kind, diff.a, diff.b, diff.differs_in, diff.verdict) == (
        "difference", "good", "broken", ("kernel",), "regression")
    t = diff.metrics["trapped_eoi"]
    assert t["a_median"] == pytest.approx(0.01, abs=0.005) and t["b_median"] == pytest.approx(0.5, abs=0.01)
    assert t["diff"] == pytest.approx(0.49, abs=0.01)
    assert 0 < t["diff_ci"][0] <= t["diff"] <= t["diff_ci"][1]
    assert t["p_value"] is not None and t["p_value"] < 0.05
    assert any(r.startswith("arm broken traps +0.49") for r in diff.reasons), diff.reasons
    assert any("arm broken exits" in r for r in diff.reasons), "kvm_exit per interrupt rose too"
    assert w.reasons == diff.reasons, "one comparison: its reasons are the workload's"
    assert w.treatment is None and w.eoi_exits_saved_per_interrupt is None, "no on/off pair, no headline"
    assert conclude({"timer": w}) == ("fail", f"timer: {'; '.join(w.reasons)}")


def test_with_reps_sharing_boots_a_difference_between_arms_is_shown_not_judged(thresholds: dict[str, float]) -> None:
    arms = (Arm("good", kernel=GOOD), Arm("broken", kernel=BROKEN))
    shared = [replace(r, window=r.rep + 1) for r in runs_of({"good": 0.01, "broken": 0.5}, reps=3)]
    w = analyze(TIMER, arms, shared, thresholds)
    [diff] = w.comparisons
    assert (diff.kind, diff.verdict) == ("difference", "info") and w.verdict == "pass"
    assert diff.reasons[0] == "not judged: reps shared guest boots"
    assert any(r.startswith("would have flagged: arm broken traps +0.49") for r in diff.reasons), diff.reasons
    assert diff.metrics["trapped_eoi"]["diff"] == pytest.approx(0.49, abs=0.01)  # still shown
    assert any("reps shared guest boots" in n for n in w.notes)


def test_with_reps_sharing_boots_pv_eois_own_effect_is_still_judged(thresholds: dict[str, float]) -> None:
    shared = [replace(r, window=r.rep + 1) for r in runs_of({"on": 1.0, "off": 1.0}, reps=3)]
    w = analyze(TIMER, DEFAULT_ARMS, shared, thresholds)  # PV EOI on saves nothing: the effect fails
    assert w.verdict == "fail" and [c.verdict for c in w.comparisons] == ["fail"]


def test_two_kernels_that_behave_alike_pass(thresholds: dict[str, float]) -> None:
    arms = (Arm("a", kernel=GOOD), Arm("b", kernel=BROKEN))
    w = analyze(TIMER, arms, runs_of({"a": 0.01, "b": 0.01}), thresholds)
    assert w.verdict == "pass" and w.reasons == ()
    [diff] = w.comparisons
    assert (diff.kind, diff.verdict) == ("difference", "ok")
    lo, hi = diff.metrics["trapped_eoi"]["diff_ci"]
    assert lo <= 0 <= hi and lo < hi, "the CI spans zero"
    assert abs(diff.metrics["trapped_eoi"]["diff"]) < 0.005


def test_the_broken_kernel_first_is_an_improvement_not_a_regression(thresholds: dict[str, float]) -> None:
    arms = (Arm("broken", kernel=BROKEN), Arm("good", kernel=GOOD))
    w = analyze(TIMER, arms, runs_of({"broken": 0.5, "good": 0.01}), thresholds)
    [diff] = w.comparisons
    assert (diff.a, diff.b, diff.verdict) == ("broken", "good", "ok")
    assert diff.metrics["trapped_eoi"]["diff"] < -0.4 and diff.metrics["trapped_eoi"]["diff_ci"][1] < 0
    assert w.verdict == "pass" and w.reasons == ()


def test_a_small_increase_within_the_threshold_is_ok(thresholds: dict[str, float]) -> None:
    arms = (Arm("a", kernel=GOOD), Arm("b", kernel=BROKEN))
    w = analyze(TIMER, arms, runs_of({"a": 0.01, "b": 0.04}), thresholds)  # +0.03 < 0.05
    [diff] = w.comparisons
    assert diff.metrics["trapped_eoi"]["diff_ci"][0] > 0, "a real increase..."
    assert not any("traps" in r for r in diff.reasons), "...but below max_trapped_eoi_increase"
    strict = analyze(TIMER, arms, runs_of({"a": 0.01, "b": 0.04}),
                     {**thresholds, "max_trapped_eoi_increase": 0.02, "max_exit_increase": 0.5})
    assert strict.verdict == "fail" and strict.comparisons[0].verdict == "regression"


# ---------------------------------------------------------------- 2 kernels x {on, off}


def test_two_kernels_on_and_off(thresholds: dict[str, float]) -> None:
    arms = (Arm("good-on", kernel=GOOD), Arm("good-off", pv_eoi=False, kernel=GOOD),
            Arm("broken-on", kernel=BROKEN), Arm("broken-off", pv_eoi=False, kernel=BROKEN))
    w = analyze(TIMER, arms, runs_of({"good-on": 0.01, "good-off": 1.0, "broken-on": 0.5, "broken-off": 1.0}),
                thresholds)
    effects = comparisons(w, "effect")
    assert [(c.a, c.b, c.differs_in) for c in effects] == [("good-off", "good-on", ("pv_eoi",)),
                                                            ("broken-off", "broken-on", ("pv_eoi",))]
    good, broken = effects
    assert good.verdict == "pass" and good.headline["value"] == pytest.approx(0.99, abs=0.01)
    assert broken.verdict == "fail" and broken.headline["value"] == pytest.approx(0.5, abs=0.01)
    # The headline is the first effect's; both are reported.
    assert (w.treatment, w.baseline) == ("good-on", "good-off")
    assert w.eoi_exits_saved_per_interrupt == good.headline
    [ed] = comparisons(w, "effect-difference")
    assert (ed.a, ed.b, ed.verdict) == ("good-on/good-off", "broken-on/broken-off", "regression")
    m = ed.metrics["eoi_saved"]
    assert m["diff"] == pytest.approx(-0.49, abs=0.02) and m["diff_ci"][1] < 0
    assert m["a"] == good.headline["value"] and m["b"] == broken.headline["value"]
    # The same-side pairs: both on (a regression), both off (alike).
    same = {(c.a, c.b): c.verdict for c in comparisons(w, "difference") if "pv_eoi" not in c.differs_in}
    assert same == {("good-on", "broken-on"): "regression", ("good-off", "broken-off"): "ok"}
    assert len(w.comparisons) == 2 + 1 + 4
    assert w.verdict == "fail"
    assert any(r.startswith("broken-on/broken-off vs good-on/good-off: PV EOI saves") for r in w.reasons), w.reasons
    assert any(r.startswith("broken-on vs broken-off: EOI exits saved per interrupt") for r in w.reasons)
    assert any(r.startswith("broken-on vs good-on: arm broken-on traps") for r in w.reasons)
    assert [a.arm for a in w.agreement] == [r.arm for r in runs_of({"good-on": 0, "good-off": 1, "broken-on": 0,
                                                                    "broken-off": 1}) if r.arm.endswith("-on")]


def test_an_effect_difference_names_what_differs_between_the_pairs(thresholds: dict[str, float]) -> None:
    """The pairs differ in their kernel (each pair's own arms differ in pv_eoi only)."""
    arms = (Arm("good-on", kernel=GOOD), Arm("good-off", pv_eoi=False, kernel=GOOD),
            Arm("broken-on", kernel=BROKEN), Arm("broken-off", pv_eoi=False, kernel=BROKEN))
    w = analyze(TIMER, arms, runs_of({"good-on": 0.01, "good-off": 1.0, "broken-on": 0.5, "broken-off": 1.0}),
                thresholds)
    [ed] = comparisons(w, "effect-difference")
    assert ed.differs_in == ("kernel",)


def test_two_good_kernels_on_and_off_pass(thresholds: dict[str, float]) -> None:
    arms = (Arm("a-on", kernel=GOOD), Arm("a-off", pv_eoi=False, kernel=GOOD),
            Arm("b-on", kernel=BROKEN), Arm("b-off", pv_eoi=False, kernel=BROKEN))
    w = analyze(TIMER, arms, runs_of({"a-on": 0.01, "a-off": 1.0, "b-on": 0.01, "b-off": 1.0}), thresholds)
    assert w.verdict == "pass", w.reasons
    [ed] = comparisons(w, "effect-difference")
    assert ed.verdict == "ok" and ed.metrics["eoi_saved"]["diff_ci"][0] <= 0 <= ed.metrics["eoi_saved"]["diff_ci"][1]


# ---------------------------------------------------------------- xAPIC vs x2APIC


def test_xapic_against_x2apic_both_with_pv_eoi(thresholds: dict[str, float]) -> None:
    arms = (Arm("x2apic"), Arm("xapic", cpu_flags=("-x2apic",)))
    w = analyze(TIMER, arms, runs_of({"x2apic": 0.01, "xapic": 0.01}), thresholds)
    [diff] = w.comparisons
    assert diff.kind == "difference" and diff.differs_in == ("cpu_flags",)
    assert diff.verdict == "ok" and w.verdict == "pass"
    broken = analyze(TIMER, arms, runs_of({"x2apic": 0.01, "xapic": 0.5}), thresholds)
    assert broken.comparisons[0].verdict == "regression" and broken.verdict == "fail"


# ---------------------------------------------------------------- findings, errors, retries


def good_runs() -> list[RunRecord]:
    return runs_of({"on": 0.01, "off": 1.0}, reps=3)


def test_the_default_arms_pass(thresholds: dict[str, float]) -> None:
    w = analyze(TIMER, DEFAULT_ARMS, good_runs(), thresholds)
    assert w.verdict == "pass", w.reasons
    assert [c.kind for c in w.comparisons] == ["effect"] and w.notes == ()


def test_a_finding_fails_the_workload_with_it_as_the_reason(thresholds: dict[str, float]) -> None:
    finding = "on rep 2: arm on: cpu1 did not enable PV EOI (MSR_KVM_PV_EOI_EN)"
    w = analyze(TIMER, DEFAULT_ARMS, good_runs(), thresholds, findings=[finding])
    assert w.verdict == "fail" and w.reasons == (finding,) and w.findings == (finding,)
    assert conclude({"timer": w})[0] == "fail"


def test_runs_that_did_not_complete_make_it_an_error(thresholds: dict[str, float]) -> None:
    runs = [r for r in good_runs() if not (r.arm == "on" and r.rep == 1)]
    w = analyze(TIMER, DEFAULT_ARMS, runs, thresholds, errors=["on rep 2: the guest did not get ready"])
    assert w.verdict == "error"
    assert w.reasons == ("1 of 6 runs did not complete, so no verdict", "on rep 2: the guest did not get ready")
    assert w.eoi_exits_saved_per_interrupt is None
    assert conclude({"timer": w, "ipi": WorkloadResult("ipi", "pass")})[0] == "error"


def test_retries_are_notes_not_reasons(thresholds: dict[str, float]) -> None:
    retried = ["off rep 1: QMP connection lost", "on rep 3: boot deadline"]
    w = analyze(TIMER, DEFAULT_ARMS, good_runs(), thresholds, retried=retried)
    assert w.verdict == "pass" and w.reasons == ()
    assert w.retried == tuple(retried)
    assert w.notes == ("2 run(s) failed and were retried on a fresh guest: off rep 1: QMP connection lost; "
                       "on rep 3: boot deadline",)


def test_a_finding_beats_an_error(thresholds: dict[str, float]) -> None:
    w = analyze(TIMER, DEFAULT_ARMS, good_runs(), thresholds, findings=["x"], errors=["y"])
    assert w.verdict == "fail" and w.reasons == ("x",)


# ---------------------------------------------------------------- the per-vCPU arm proof

INTERRUPTS = ("           CPU0       CPU1       \n"
              "LOC:       3210       2999   Local timer interrupts\n"
              "CAL:         40         38   Function call interrupts\n")


def state(*cpus: tuple[int, int]) -> GuestState:
    """Guest state with the PV EOI debugfs lines of each (feature, enabled) vCPU."""
    lines = "".join(f"cpu{i} feature={f} enabled={e} skipped={100 * i} written={7 + i}\n"
                    for i, (f, e) in enumerate(cpus))
    return GuestState.parse(f"{INTERRUPTS}{STATE_MARK}\n{lines}")


ON, OFF = DEFAULT_ARMS


def test_a_vcpu_that_did_not_enable_pv_eoi_is_a_finding_naming_it() -> None:
    with pytest.raises(Finding, match=r"arm on: cpu1 did not enable PV EOI") as info:
        check_guest_arm(ON, state((1, 1), (1, 0)), kvm_enabled=True)
    assert info.value.vcpu == 1 and info.value.kind is Kind.FINDING and info.value.exit_code == 1
    assert "enabled on cpu0" in info.value.message and "cpu0 did" not in info.value.message
    with pytest.raises(Finding) as three:
        check_guest_arm(ON, state((1, 1), (1, 0), (1, 0)), kvm_enabled=True)
    assert three.value.vcpu == 1 and "cpu1, cpu2 did not enable" in three.value.message


def test_every_vcpu_enabled_passes_the_proof() -> None:
    check_guest_arm(ON, state((1, 1), (1, 1)), kvm_enabled=True)
    check_guest_arm(OFF, state((0, 0), (0, 0)), kvm_enabled=True)
    check_guest_arm(Arm("guest-off", append="no-kvm-pv-eoi"), state((1, 0), (1, 0)), kvm_enabled=True)


def test_an_enabled_vcpu_on_the_off_arm_is_a_finding() -> None:
    with pytest.raises(Finding, match="cpu0 enabled PV EOI although the kernel command line refuses it") as info:
        check_guest_arm(Arm("guest-off", append="no-kvm-pv-eoi"), state((1, 1), (1, 0)), kvm_enabled=True)
    assert info.value.vcpu == 0
    with pytest.raises(Finding, match="cpu1 enabled PV EOI although its CPUID does not offer it"):
        # QEMU off, CPUID agrees, yet the kernel wrote the MSR: a bug of the kernel under test.
        check_guest_arm(OFF, state((0, 0), (0, 1)), kvm_enabled=True)


def test_cpuid_disagreeing_with_qemu_is_a_capability_error_not_a_finding() -> None:
    with pytest.raises(MeasurementError, match="cpu1") as info:
        check_guest_arm(ON, state((1, 1), (0, 0)), kvm_enabled=True)
    assert not isinstance(info.value, Finding) and info.value.kind is Kind.CAPABILITY
    with pytest.raises(MeasurementError, match="cpu0, cpu1"):
        check_guest_arm(OFF, state((1, 0), (1, 0)), kvm_enabled=True)


def test_nothing_to_prove_without_the_patch_or_under_tcg() -> None:
    check_guest_arm(ON, GuestState.parse(INTERRUPTS), kvm_enabled=True)
    check_guest_arm(ON, state((1, 1), (1, 0)), kvm_enabled=False)


# ---------------------------------------------------------------- arms files


def fake_bzimage(path: Path) -> Path:
    """A well-formed x86 bzImage (it boots nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bzimage_bytes())
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_load_three_arms_with_smp(tmp_path: Path) -> None:
    arms = load_arms(write(tmp_path / "arms.toml", """
[[arm]]
name = "on"
[[arm]]
name = "off"
pv_eoi = false
[[arm]]
name = "on-4"
smp = 4
"""))
    assert arms == (Arm("on"), Arm("off", pv_eoi=False), Arm("on-4", smp=4))


def test_load_four_arms_with_relative_kernels(tmp_path: Path) -> None:
    good = fake_bzimage(tmp_path / "kernels" / "good" / "bzImage")
    bad = fake_bzimage(tmp_path / "kernels" / "bad" / "bzImage")
    text = "".join(f'[[arm]]\nname = "{k}-{s}"\nkernel = "kernels/{k}/bzImage"\npv_eoi = {str(s == "on").lower()}\n'
                   for k in ("good", "bad") for s in ("on", "off"))
    arms = load_arms(write(tmp_path / "conf" / ".." / "arms.toml", text))
    assert [a.name for a in arms] == ["good-on", "good-off", "bad-on", "bad-off"]
    assert all(a.kernel is not None and a.kernel.is_absolute() for a in arms)
    assert [a.kernel.resolve() for a in arms if a.kernel] == [good, good, bad, bad], "relative to the arms file"
    assert arms[0].origin == {"guest_kernel": str(arms[0].kernel)}
    assert arms[0].is_twin(arms[1]) and not arms[0].is_twin(arms[2])


def test_relative_paths_do_not_depend_on_the_working_directory(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bzimage(tmp_path / "arms" / "bzImage")
    write(tmp_path / "arms" / "arms.toml", '[[arm]]\nname = "a"\nkernel = "bzImage"\n[[arm]]\nname = "b"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    kernel = load_arms(Path("../arms/arms.toml"))[0].kernel
    assert kernel is not None and kernel.is_absolute()
    monkeypatch.chdir(tmp_path)
    assert kernel.resolve() == tmp_path / "arms" / "bzImage", "the same file from any working directory"


def test_a_kernel_from_source_is_built_by_the_callback(tmp_path: Path) -> None:
    (tmp_path / "linux").mkdir()
    (tmp_path / "patches").mkdir()
    calls: list[tuple[Path, Path | None, str]] = []

    def build(source: Path | None, patches: Path | None, flavour: str, base: str | None) -> Path:
        calls.append((source, patches, flavour))
        return fake_bzimage(tmp_path / "cache" / str(len(calls)) / "bzImage")

    arms = load_arms(write(tmp_path / "arms.toml", """
[[arm]]
name = "patched"
kernel = { source = "linux", patches = "patches" }
[[arm]]
name = "stock"
kernel = { source = "linux" }
"""), build=build)
    assert calls == [(tmp_path / "linux", tmp_path / "patches", "guest"), (tmp_path / "linux", None, "guest")]
    assert [a.kernel for a in arms] == [tmp_path / "cache" / "1" / "bzImage", tmp_path / "cache" / "2" / "bzImage"]
    assert arms[0].origin == {"guest_source": str(tmp_path / "linux"), "guest_patches": str(tmp_path / "patches")}
    assert arms[1].origin == {"guest_source": str(tmp_path / "linux")}
    assert arms[0].differences(arms[1]) == ("kernel",)


def test_a_kernel_from_source_without_a_builder_or_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "linux").mkdir()
    path = write(tmp_path / "arms.toml", '[[arm]]\nname = "a"\nkernel = { source = "linux" }\n'
                                         '[[arm]]\nname = "b"\npv_eoi = false\n')
    with pytest.raises(ConfigError, match="built from source is not available"):
        load_arms(path)
    missing = write(tmp_path / "m.toml", '[[arm]]\nname = "a"\nkernel = { source = "nope" }\n'
                                         '[[arm]]\nname = "b"\npv_eoi = false\n')
    with pytest.raises(ConfigError, match="nope is not a directory"):
        load_arms(missing, build=lambda *a: Path("/never"))
    odd = write(tmp_path / "o.toml", '[[arm]]\nname = "a"\nkernel = { src = "linux" }\n'
                                     '[[arm]]\nname = "b"\npv_eoi = false\n')
    with pytest.raises(ConfigError, match="expected a bzImage path or"):
        load_arms(odd, build=lambda *a: Path("/never"))


def test_a_kernel_that_is_not_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    for value in ("missing/bzImage", "adir"):
        path = write(tmp_path / "arms.toml", f'[[arm]]\nname = "a"\nkernel = "{value}"\n'
                                             '[[arm]]\nname = "b"\npv_eoi = false\n')
        with pytest.raises(ConfigError, match=f"arm a: kernel: .*{tmp_path / value}.*(not found|is a directory)"):
            load_arms(path)


def test_a_kernel_that_is_not_a_bzimage_is_a_config_error(tmp_path: Path) -> None:
    """A file that is no bzImage (here a text file) is refused before anything boots."""
    write(tmp_path / "vmlinux", "not a kernel\n")
    path = write(tmp_path / "arms.toml", '[[arm]]\nname = "a"\nkernel = "vmlinux"\n'
                                         '[[arm]]\nname = "b"\npv_eoi = false\n')
    with pytest.raises(ConfigError, match="not an x86 bzImage"):
        load_arms(path)


@pytest.mark.parametrize("key", ["pv-eoi", "kernel_path", "vcpus", "memory"])
def test_unknown_arm_keys_are_rejected(tmp_path: Path, key: str) -> None:
    path = write(tmp_path / "arms.toml", f'[[arm]]\nname = "a"\n{key} = 1\n[[arm]]\nname = "b"\npv_eoi = false\n')
    with pytest.raises(ConfigError, match=rf"unknown keys \['{key}'\]") as info:
        load_arms(path)
    assert "smp" in str(info.value.fix) and "host_kernel" in str(info.value.fix)


# ---------------------------------------------------------------- pveoi analyze


def saved(tmp_path: Path, trapped_on: float = 0.01) -> Path:
    plan = Plan(workloads=("timer",), arms=DEFAULT_ARMS, runs=3, kernel=GOOD, image=Path("/cache/images/abc"),
                logs=tmp_path / "logs")
    runs = runs_of({"on": trapped_on, "off": 1.0}, reps=3)
    w = analyze(TIMER, plan.arms, runs, load_thresholds("timer"))
    verdict, reason = conclude({"timer": w})
    res = Result(verdict=verdict, reason=reason, runs_per_arm=3, plan=plan, arms={a.name: a for a in plan.arms},
                 runs={"timer": tuple(runs)}, workloads={"timer": w}, host={"chosen": "direct", "reason": "test"})
    path = tmp_path / "ab.json"
    results.emit(res, path, None)
    return path


def test_analyze_reproduces_the_saved_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = saved(tmp_path)
    before = json.loads(path.read_text())
    assert before["verdict"] == "pass"
    assert cli.main(["analyze", str(path), "--json", str(tmp_path / "again.json")]) == 0
    assert capsys.readouterr().out.startswith("verdict: PASS")
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["workloads"]["timer"]["eoi_exits_saved_per_interrupt"] == before["workloads"]["timer"][
        "eoi_exits_saved_per_interrupt"]
    assert again["workloads"]["timer"]["comparisons"] == before["workloads"]["timer"]["comparisons"]
    assert json.loads(path.read_text()) == before, "the input is not rewritten"


def test_analyze_reproduces_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = saved(tmp_path, trapped_on=0.5)
    assert json.loads(path.read_text())["verdict"] == "fail"
    assert cli.main(["analyze", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("verdict: FAIL") and "< threshold 0.90" in out


def test_analyze_with_a_stricter_threshold_turns_a_pass_into_a_fail(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = saved(tmp_path)
    assert cli.main(["analyze", str(path), "--threshold", "min_eoi_saved_per_interrupt=2",
                     "--json", str(tmp_path / "strict.json")]) == 1
    out = capsys.readouterr().out
    assert out.startswith("verdict: FAIL") and "< threshold 2.00" in out
    strict = results.load(tmp_path / "strict.json")
    assert strict.verdict == "fail" and strict.plan is not None
    assert strict.plan.thresholds == {"min_eoi_saved_per_interrupt": 2.0}
    assert strict.workloads["timer"].thresholds["min_eoi_saved_per_interrupt"] == 2.0


def test_analyze_rejects_an_unknown_threshold_and_a_result_without_runs(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = saved(tmp_path)
    assert cli.main(["analyze", str(path), "--threshold", "min_eoi_saved=2"]) == 2
    assert "unknown threshold 'min_eoi_saved'" in capsys.readouterr().err
    empty = tmp_path / "nm.json"
    results.emit(results.not_measurable("no KVM", 3), empty, None)
    assert cli.main(["analyze", str(empty)]) == 2
    assert "holds no runs to analyze" in capsys.readouterr().err


def test_unanalyzed_parts_of_the_virtual_host_are_concluded_outside() -> None:
    """The inner runner writes raw runs with verdict ``unanalyzed`` (no analysis in L1's slow Python);
    the outer reanalyze draws the verdict from the runs of every part, findings and retries kept."""
    from e2e.model.plan import DEFAULT_ARMS, Plan
    from e2e.model.result import Result
    from e2e.run.ab import UNANALYZED, reanalyze

    plan = Plan(workloads=("timer",), arms=DEFAULT_ARMS, runs=5, kernel=GOOD, image=Path("/i"), logs=Path("/l"))
    raw = runs_of({"on": 0.01, "off": 1.0})
    arms = {a.name: a for a in DEFAULT_ARMS}
    part = Result(verdict=UNANALYZED, plan=plan, arms=arms, runs={"timer": tuple(raw)},
                  workloads={"timer": WorkloadResult("timer", UNANALYZED, retried=("on rep 2: SSH dropped",))})
    out = reanalyze(Result.from_json(part.to_json()), plan)  # as it comes back through the results share
    w = out.workloads["timer"]
    assert out.verdict == "pass" and w.verdict == "pass", w.reasons
    assert (w.eoi_exits_saved_per_interrupt or {})["value"] > 0.9 and w.retried == ("on rep 2: SSH dropped",)
    finding = Result(verdict=UNANALYZED, plan=plan, arms=arms, runs={"timer": tuple(raw)},
                     workloads={"timer": WorkloadResult("timer", UNANALYZED, findings=("cpu1 did not enable",))})
    assert reanalyze(finding, plan).verdict == "fail"


# ---------------------------------------------------------------- A/A: the noise check, on purpose


def test_an_aa_experiment_is_allowed_on_purpose_and_an_accidental_duplicate_is_not(
        thresholds: dict[str, float], tmp_path: Path) -> None:
    from e2e.errors import ConfigError
    from e2e.model.plan import Arm, validate_arms

    with pytest.raises(ConfigError, match="are the same experiment") as err:
        validate_arms([Arm("a"), Arm("b")])
    assert 'replica_of = "a"' in (err.value.fix or "")
    with pytest.raises(ConfigError, match="which is no arm"):
        validate_arms([Arm("a"), Arm("b", replica_of="c")])
    arms = (Arm("a"), Arm("b", replica_of="a"))
    validate_arms(arms)
    assert Arm.from_json(arms[1].to_json()) == arms[1] and "replica_of" not in arms[0].to_json()
    w = analyze(WORKLOADS["timer"], arms, runs_of({"a": 0.01, "b": 0.01}), thresholds)
    (aa,) = comparisons(w, "aa")
    assert aa.verdict == "ok" and aa.differs_in == ()
    path = tmp_path / "aa.toml"
    path.write_text('[[arm]]\nname = "a"\n[[arm]]\nname = "b"\nreplica_of = "a"\n')
    assert load_arms(path) == arms
