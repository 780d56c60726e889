"""Unit tests for the host probes (e2e.host.capability, .tools, .access), the checks (e2e.host.checks),
the decision (e2e.host.decision) and the doctor's report (e2e.host.doctor).

Fixture trees under fixtures/doctor/<case>/ stand in for ``/``; perf and QEMU
are faked through the injectable command runner. The doctor on this machine,
as a real non-root user, and the real prepare-host.sh: tests/e2e/test_host_doctor.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from e2e.errors import GuestTimeout, NotMeasurable
from e2e.host import access, capability, checks, doctor, tools
from e2e.host.capability import HostFacts, probe_host
from e2e.host.decision import Decision, ProbeBoot, decide, resolve_host
from e2e.host.tools import CommandOutput

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"

QEMU_VERSION = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"
CPU_HELP = """Available CPUs:
x86 host                  KVM processor with all supported host features
x86 max                   Enables all features supported by the accelerator in the current host

Recognized CPUID flags:
  kvm-asyncpf kvm-asyncpf-int kvm-hint-dedicated kvm-mmu
  kvm-msi-ext-dest-id kvm-nopiodelay kvm-poll-control kvm-pv-eoi kvm-pv-ipi
  x2apic xsave
"""
ACCEL_HELP = "Accelerators supported in QEMU binary:\ntcg\nkvm\n"


def fake_run(*, perf: bool = True, qemu: bool = True, pv_eoi: bool = True, tcg: bool = True,
             calls: list[list[str]] | None = None) -> tools.RunCommand:
    """A command runner that answers like this machine's perf 6.1 and QEMU 7.2."""

    def run(argv: Sequence[str]) -> CommandOutput:
        argv = list(argv)
        if calls is not None:
            calls.append(argv)
        binary, args = argv[0], argv[1:]
        if binary == "perf":
            if not perf:
                return CommandOutput(False, "", "perf not found")
            return CommandOutput(True, "perf version 6.1.192\n")
        if binary == "qemu-system-x86_64":
            if not qemu:
                return CommandOutput(False, "", "qemu-system-x86_64 not found")
            if args == ["--version"]:
                return CommandOutput(True, QEMU_VERSION)
            if args == ["-cpu", "help"]:
                text = CPU_HELP if pv_eoi else CPU_HELP.replace("kvm-pv-eoi", "")
                return CommandOutput(True, text)
            if args == ["-accel", "help"]:
                return CommandOutput(True, ACCEL_HELP if tcg else ACCEL_HELP.replace("tcg\n", ""))
        raise AssertionError(f"unexpected command {argv}")

    return run


def facts_for(case: str, *, euid: int = 0, perf: bool = True, qemu: bool = True,
              pv_eoi: bool = True, tcg: bool = True) -> HostFacts:
    run = fake_run(perf=perf, qemu=qemu, pv_eoi=pv_eoi, tcg=tcg)
    return probe_host(FIXTURES / case, run=run, euid=euid)


GOOD_PROBE = ProbeBoot(ran=True, reached_ready=True, seconds=1.4, detail="pveoi-ready on ttyS0")
BAD_PROBE = ProbeBoot(ran=True, reached_ready=False, seconds=3.0,
                      detail="KVM internal error. Suberror: 1 (emulation failure)")


# ---------------------------------------------------------------- probes on fixture trees


@pytest.mark.parametrize(("case", "backend", "apicv", "avic"), [
    ("vmx_apicv_on", "vmx", True, None),
    ("vmx_apicv_off", "vmx", False, None),
    ("svm_avic_on", "svm", None, True),
    ("svm_avic_off", "svm", None, False),
    ("pvm", "pvm", None, None),
    ("none", "none", None, None),
])
def test_probe_fixture_backend(case: str, backend: str, apicv: bool | None,
                               avic: bool | None) -> None:
    facts = facts_for(case)
    assert facts.backend == backend
    assert facts.apicv is apicv
    assert facts.avic is avic
    assert facts.kvm_dev is (case != "none")
    assert facts.kvm_usable is (case != "none")
    assert facts.perf_version == "6.1.192"
    assert facts.qemu_version == "7.2.22"
    assert facts.qemu_knows_pv_eoi is True
    assert facts.qemu_has_tcg is True


def test_probe_fixture_details() -> None:
    vmx = facts_for("vmx_apicv_off")
    assert (vmx.cpu_vmx, vmx.cpu_svm, vmx.cpu_hypervisor) == (True, False, False)
    assert vmx.kvm_modules == ("kvm", "kvm_intel")
    assert vmx.ept is True and vmx.perf_paranoid == 1
    assert vmx.tracefs_mounted and vmx.tracefs_readable
    assert vmx.tracefs_path == "/sys/kernel/tracing"
    assert vmx.kvm_tracepoints == 8 and vmx.missing_tracepoints == ()
    svm = facts_for("svm_avic_off")
    assert svm.npt is True and svm.nested is True
    assert not svm.tracefs_mounted and svm.kvm_tracepoints == 0
    pvm = facts_for("pvm")
    assert pvm.pvm_native is True and pvm.cpu_hypervisor and not pvm.cpu_vmx
    assert pvm.vendor_module == "kvm_pvm"
    none = facts_for("none")
    assert none.kvm_modules == () and none.vendor_module is None


def test_probe_tolerates_missing_tools_and_empty_root(tmp_path: Path) -> None:
    facts = probe_host(tmp_path, run=fake_run(perf=False, qemu=False), euid=1000)
    assert facts.backend == "none"
    assert facts.perf_version is None and facts.perf_error == "perf not found"
    assert facts.qemu_version is None and facts.qemu_knows_pv_eoi is None
    assert facts.qemu_has_tcg is None
    assert facts.perf_paranoid is None and facts.cap_perfmon is None
    assert not facts.is_root


def test_probe_does_not_ask_missing_qemu_for_cpu_help() -> None:
    calls: list[list[str]] = []
    probe_host(FIXTURES / "none", run=fake_run(qemu=False, calls=calls), euid=0)
    assert calls == [["perf", "--version"], ["qemu-system-x86_64", "--version"]]


def test_backend_of() -> None:
    assert capability.backend_of(["kvm", "kvm_intel"], True) == "vmx"
    assert capability.backend_of(["kvm", "kvm_amd"], True) == "svm"
    assert capability.backend_of(["kvm", "kvm_pvm"], True) == "pvm"
    assert capability.backend_of(["kvm", "kvm_intel", "kvm_pvm"], True) == "pvm"
    assert capability.backend_of(["kvm", "kvm_foo"], True) == "unknown-kvm_foo"
    assert capability.backend_of(["kvm"], True) == "unknown-kvm"
    assert capability.backend_of(["kvm"], False) == "none"
    assert capability.backend_of([], False) == "none"


@pytest.mark.parametrize(("text", "value"), [
    ("Y\n", True), ("N\n", False), ("1\n", True), ("0\n", False), ("y", True), ("2", True),
    ("maybe", None), (None, None),
])
def test_parse_bool_param(text: str | None, value: bool | None) -> None:
    assert capability.parse_bool_param(text) is value


def test_parsers() -> None:
    assert tools.parse_version(QEMU_VERSION) == "7.2.22"
    assert tools.parse_version("perf version 6.1.192\n") == "6.1.192"
    assert tools.parse_version("garbage") is None
    assert tools.qemu_knows_property(CPU_HELP)
    assert not tools.qemu_knows_property(CPU_HELP.replace("kvm-pv-eoi", "kvm-pv-eoix"))
    # a CPU model's description mentioning the property does not count
    assert not tools.qemu_knows_property(
        "x86 foo  no kvm-pv-eoi here\nRecognized CPUID flags:\n  x2apic\n")
    assert tools.qemu_has_accel(ACCEL_HELP)
    assert not tools.qemu_has_accel("Accelerators supported in QEMU binary:\nkvm\n")
    assert capability.cpu_flags("processor : 0\nflags\t\t: fpu vmx\n") == {"fpu", "vmx"}
    assert capability.cpu_flags(None) == frozenset()


def test_run_command_missing_binary_is_a_finding() -> None:
    out = tools.run_command(["pveoi-no-such-binary-xyz", "--version"])
    assert not out.ok and out.error is not None and "not found" in out.error


def test_run_command_nonzero_and_timeout() -> None:
    bad = tools.run_command(["sh", "-c", "echo oops >&2; exit 3"])
    assert not bad.ok and bad.error is not None and "exited with 3: oops" in bad.error
    slow = tools.run_command(["sleep", "5"], timeout=0.2)
    assert not slow.ok and slow.error is not None and "did not finish" in slow.error
    good = tools.run_command(["sh", "-c", "echo $LC_ALL"])
    assert good.ok and good.output.strip() == "C"


# ---------------------------------------------------------------- decide()


def test_vmx_apicv_off_with_good_probe_is_direct() -> None:
    decision = decide(facts_for("vmx_apicv_off"), GOOD_PROBE)
    assert decision.host == "direct" and decision.measurable_direct
    assert "kvm_intel" in decision.reason and "APICv is off" in decision.reason
    assert "1.4s" in decision.reason
    assert decision.fix is None


def test_vmx_apicv_off_without_probe_is_direct() -> None:
    assert decide(facts_for("vmx_apicv_off"), None).host == "direct"


def test_skipped_probe_counts_as_none() -> None:
    decision = decide(facts_for("vmx_apicv_off"), ProbeBoot.skipped("not wired yet"))
    assert decision.host == "direct"


def test_failed_probe_boot_means_virtual() -> None:
    decision = decide(facts_for("vmx_apicv_off"), BAD_PROBE)
    assert decision.host == "virtual" and not decision.measurable_direct
    assert "probe boot" in decision.reason and "emulation failure" in decision.reason
    assert "virtual KVM host" in decision.reason


def test_vmx_apicv_on_is_virtual_naming_apicv() -> None:
    decision = decide(facts_for("vmx_apicv_on"), GOOD_PROBE)
    assert decision.host == "virtual" and not decision.measurable_direct
    assert "APICv is on" in decision.reason and "kvm_intel.enable_apicv=Y" in decision.reason
    assert decision.fix is not None
    assert "modprobe -r kvm_intel && modprobe kvm_intel enable_apicv=0" in decision.fix


def test_vmx_apicv_unreadable_is_not_direct() -> None:
    facts = dataclasses.replace(facts_for("vmx_apicv_off"), apicv=None)
    decision = decide(facts, None)
    assert decision.host == "virtual"
    assert "cannot read kvm_intel.enable_apicv" in decision.reason


def test_svm_avic_on_is_virtual_naming_avic() -> None:
    decision = decide(facts_for("svm_avic_on"), None)
    assert decision.host == "virtual"
    assert "AVIC is on" in decision.reason
    assert decision.fix is not None and "modprobe kvm_amd avic=0" in decision.fix


def test_svm_avic_off_is_direct_for_root_even_without_tracefs() -> None:
    decision = decide(facts_for("svm_avic_off"), GOOD_PROBE)
    assert decision.host == "direct" and decision.measurable_direct
    assert "kvm_amd" in decision.reason and "AVIC is off" in decision.reason


def test_svm_avic_off_non_root_without_tracefs_is_virtual() -> None:
    facts = dataclasses.replace(facts_for("svm_avic_off", euid=1000), cap_perfmon=False)
    decision = decide(facts, None)
    assert decision.host == "virtual"
    assert "tracefs is not mounted" in decision.reason
    assert "perf_event_paranoid=2" in decision.reason
    assert decision.fix is not None and "mount -t tracefs" in decision.fix


@pytest.mark.parametrize(("paranoid", "readable", "host"), [
    (-1, True, "direct"), (1, True, "direct"), (2, True, "virtual"), (1, False, "virtual"),
])
def test_non_root_perf_permissions(paranoid: int, readable: bool, host: str) -> None:
    facts = dataclasses.replace(facts_for("vmx_apicv_off", euid=1000), cap_perfmon=False,
                                perf_paranoid=paranoid, tracefs_readable=readable)
    assert decide(facts, None).host == host


def test_cap_perfmon_is_enough() -> None:
    facts = dataclasses.replace(facts_for("vmx_apicv_off", euid=1000), cap_perfmon=True,
                                perf_paranoid=3, tracefs_readable=True)
    assert decide(facts, None).host == "direct"


def test_missing_tracepoints_are_not_direct() -> None:
    facts = dataclasses.replace(facts_for("vmx_apicv_off"), missing_tracepoints=("kvm_pv_eoi",))
    decision = decide(facts, None)
    assert decision.host == "virtual" and "kvm:kvm_pv_eoi missing" in decision.reason


def test_kvm_dev_not_accessible_is_not_direct() -> None:
    facts = dataclasses.replace(facts_for("vmx_apicv_off", euid=1000), kvm_access=False, user="alice",
                                kvm_dev_group="kvm", kvm_dev_mode="0660", kvm_group_member=False)
    decision = decide(facts, None)
    assert decision.host == "virtual"
    assert decision.fix is not None and "usermod -aG kvm alice" in decision.fix


def test_pvm_is_virtual_naming_kvm_pvm() -> None:
    decision = decide(facts_for("pvm"), None)
    assert decision.host == "virtual" and not decision.measurable_direct
    assert decision.reason.startswith(
        "/dev/kvm is backed by kvm_pvm (a paravirtual backend without VMX/SVM) and cannot run "
        "standard guests")
    assert decision.reason.endswith("running a KVM kernel)")
    assert decision.fix is None


def test_pvm_with_failed_probe_says_it_was_confirmed() -> None:
    decision = decide(facts_for("pvm"), BAD_PROBE)
    assert decision.host == "virtual"
    assert "a probe boot confirmed it" in decision.reason


def test_pvm_without_perf_is_not_measurable() -> None:
    decision = decide(facts_for("pvm", perf=False), None)
    assert decision.host == "not-measurable"
    assert "kvm_pvm" in decision.reason and "perf is missing" in decision.reason
    assert decision.fix == "apt-get install linux-perf"


def test_none_with_qemu_is_virtual() -> None:
    decision = decide(facts_for("none"), None)
    assert decision.host == "virtual"
    assert "no KVM" in decision.reason and "itself a guest" in decision.reason


def test_none_without_qemu_is_not_measurable() -> None:
    decision = decide(facts_for("none", qemu=False), None)
    assert decision.host == "not-measurable" and not decision.measurable_direct
    assert "no KVM" in decision.reason and "qemu-system-x86_64 is missing" in decision.reason
    assert decision.fix is not None and decision.fix.startswith("apt-get install qemu-system-x86")


def test_none_without_qemu_and_perf_merges_the_install_fix() -> None:
    decision = decide(facts_for("none", qemu=False, perf=False), None)
    assert decision.host == "not-measurable"
    assert decision.fix is not None
    assert decision.fix.startswith("apt-get install qemu-system-x86 linux-perf")


def test_none_with_cpu_vmx_suggests_modprobe() -> None:
    facts = dataclasses.replace(facts_for("none"), cpu_vmx=True)
    decision = decide(facts, None)
    assert "kvm_intel is not loaded" in decision.reason
    assert decision.fix == "modprobe kvm_intel"


def test_qemu_without_pv_eoi_property_is_not_measurable() -> None:
    facts = facts_for("vmx_apicv_off", pv_eoi=False)
    decision = decide(facts, None)
    assert decision.host == "not-measurable"
    assert "kvm-pv-eoi" in decision.reason
    found = {f.name: f for f in doctor.doctor_checks(facts, None, decision)}
    assert found["kvm-pv-eoi property"].status == "fail"


def test_qemu_without_tcg_on_pvm_is_not_measurable_but_direct_is_fine() -> None:
    assert decide(facts_for("pvm", tcg=False), None).host == "not-measurable"
    assert decide(facts_for("vmx_apicv_off", tcg=False), None).host == "direct"


def test_unknown_backend() -> None:
    facts = dataclasses.replace(facts_for("pvm"), backend="unknown-kvm_foo")
    decision = decide(facts, None)
    assert decision.host == "virtual" and "kvm_foo" in decision.reason


# ---------------------------------------------------------------- findings, report, text


FINDING_NAMES = ["kvm backend", "/dev/kvm", "probe boot", "apicv/avic", "perf", "kvm tracepoints",
                 "perf permissions", "qemu", "qemu tcg", "kvm-pv-eoi property", "cache", "decision"]


@pytest.mark.parametrize("case", ["vmx_apicv_on", "vmx_apicv_off", "svm_avic_on", "svm_avic_off",
                                  "pvm", "none"])
def test_findings_one_per_check(case: str) -> None:
    facts = facts_for(case)
    decision = decide(facts, None)
    found = doctor.doctor_checks(facts, None, decision)
    assert [f.name for f in found] == FINDING_NAMES
    assert all(f.status in ("ok", "warn", "fail", "info") for f in found)
    assert found[-1].detail.startswith(f"{decision.host}: ")


@pytest.mark.parametrize(("version", "case", "status"), [
    ("7.2.22", "pvm", "warn"),          # the virtual host on an old QEMU: a warning naming install-deps
    ("10.0.2", "pvm", "ok"),
    ("7.2.22", "vmx_apicv_off", "ok"),  # direct: nested TCG never runs, the version does not matter
    ("weird", "pvm", "ok"),
])
def test_an_old_qemu_is_a_warning_for_the_virtual_host(version: str, case: str, status: str) -> None:
    facts = dataclasses.replace(facts_for(case), qemu_version=version)
    found = {f.name: f for f in doctor.doctor_checks(facts, None, decide(facts, None))}
    assert found["qemu"].status == status
    if status == "warn":
        assert found["qemu"].detail.startswith("QEMU 7.2.22, older than 10.0: under nested TCG")
        assert found["qemu"].fix is not None and "host_config/install-deps.sh" in found["qemu"].fix
    assert checks.qemu_older_than_recommended("9.2.0") and not checks.qemu_older_than_recommended("11.0.0")


def test_findings_statuses_for_apicv_on() -> None:
    facts = facts_for("vmx_apicv_on")
    found = {f.name: f for f in doctor.doctor_checks(facts, GOOD_PROBE, decide(facts, GOOD_PROBE))}
    assert found["kvm backend"].status == "ok"
    assert found["probe boot"].status == "ok" and "1.4s" in found["probe boot"].detail
    assert found["apicv/avic"].status == "warn"
    assert found["apicv/avic"].fix is not None
    assert found["apicv/avic"].fix.startswith("modprobe -r kvm_intel && modprobe kvm_intel enable_apicv=0 ")
    assert "host_config/prepare-host.sh --apicv" in found["apicv/avic"].fix
    assert found["decision"].status == "info"


def test_findings_host_side_perf_gaps_are_info_when_virtual() -> None:
    facts = dataclasses.replace(facts_for("pvm", euid=1000), cap_perfmon=False)
    found = {f.name: f for f in doctor.doctor_checks(facts, None, decide(facts, None))}
    assert found["perf permissions"].status == "info"
    assert "not needed" in found["perf permissions"].detail
    assert found["perf permissions"].fix is not None


def test_findings_for_not_measurable() -> None:
    facts = facts_for("none", qemu=False)
    found = {f.name: f for f in doctor.doctor_checks(facts, BAD_PROBE, decide(facts, BAD_PROBE))}
    assert found["qemu"].status == "fail" and found["qemu"].fix == "apt-get install qemu-system-x86"
    assert found["kvm-pv-eoi property"].status == "info"
    assert found["kvm-pv-eoi property"].detail == "unknown: QEMU is missing"
    assert found["probe boot"].status == "fail"
    assert found["decision"].status == "fail"


def test_doctor_report_shape_and_round_trip() -> None:
    facts = facts_for("vmx_apicv_on")
    report = doctor.doctor_report(facts, GOOD_PROBE)
    assert list(report) == ["schema", "facts", "probe_boot", "findings", "decision"]
    assert report["schema"] == 1
    assert report["facts"]["backend"] == "vmx" and report["facts"]["apicv"] is True
    assert report["facts"]["kvm_modules"] == ["kvm", "kvm_intel"]
    assert set(report["facts"]) == {f.name for f in dataclasses.fields(HostFacts)}
    assert report["probe_boot"] == {"ran": True, "reached_ready": True, "seconds": 1.4,
                                    "detail": "pveoi-ready on ttyS0"}
    assert all(list(f) == ["name", "status", "detail", "fix"] for f in report["findings"])
    assert list(report["decision"]) == ["host", "reason", "measurable_direct", "fix"]
    assert json.loads(json.dumps(report)) == report
    assert doctor.decision_from_report(json.loads(json.dumps(report))) == decide(facts, GOOD_PROBE)
    assert doctor.doctor_report(facts)["probe_boot"] is None


def test_decision_from_report_rejects_other_documents() -> None:
    with pytest.raises(ValueError, match="doctor report"):
        doctor.decision_from_report({"schema": 2, "decision": {}})
    with pytest.raises(ValueError, match="bad decision host"):
        doctor.decision_from_report({"schema": 1, "decision": {"host": "maybe"}})


def test_format_text() -> None:
    report = doctor.doctor_report(facts_for("vmx_apicv_on"), None)
    text = doctor.format_text(report)
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[0] == "ok    kvm backend: kvm_intel (VMX); cpu flags: vmx; nested=Y"
    assert "warn  apicv/avic: APICv is on" in text
    assert any(line.startswith("      fix: modprobe -r kvm_intel && modprobe kvm_intel enable_apicv=0")
               for line in lines)
    assert lines[-2].startswith("info  decision: virtual: APICv is on")
    assert sum(not line.startswith(" ") for line in lines) == len(FINDING_NAMES)


def test_resolve_host() -> None:
    assert resolve_host(Decision("direct", "r", True)) == "direct"
    assert resolve_host(Decision("virtual", "r", False)) == "virtual"
    with pytest.raises(NotMeasurable) as err:
        resolve_host(Decision("not-measurable", "no QEMU", False, "apt-get install x"))
    assert "no QEMU" in str(err.value) and err.value.fix == "apt-get install x"


# ---------------------------------------------------------------- run_doctor and the probe boot


def test_run_doctor_skips_probe_boot_on_pvm() -> None:
    def boot() -> ProbeBoot:
        raise AssertionError("must not boot on kvm_pvm")

    report = doctor.run_doctor(FIXTURES / "pvm", boot, run=fake_run())
    assert report["probe_boot"]["ran"] is False
    assert "pvm cannot run standard guests" in report["probe_boot"]["detail"]
    assert report["decision"]["host"] == "virtual"


def test_run_doctor_always_probe_runs_it_on_pvm() -> None:
    called: list[bool] = []

    def boot() -> ProbeBoot:
        called.append(True)
        return BAD_PROBE

    report = doctor.run_doctor(FIXTURES / "pvm", boot, run=fake_run(), always_probe=True)
    assert called == [True]
    assert "a probe boot confirmed it" in report["decision"]["reason"]


def test_run_doctor_runs_probe_boot_on_vmx() -> None:
    report = doctor.run_doctor(FIXTURES / "vmx_apicv_off", lambda: GOOD_PROBE, run=fake_run())
    assert report["probe_boot"]["reached_ready"] is True
    assert report["decision"]["host"] == "direct"


def test_run_doctor_probe_boot_error_becomes_failed_probe() -> None:
    def boot() -> ProbeBoot:
        raise GuestTimeout("no ready line within 30s", fix="look at the console log")

    report = doctor.run_doctor(FIXTURES / "vmx_apicv_off", boot, run=fake_run())
    assert report["probe_boot"]["ran"] is True and report["probe_boot"]["reached_ready"] is False
    assert "no ready line within 30s" in report["probe_boot"]["detail"]
    assert report["decision"]["host"] == "virtual"


def test_run_doctor_without_probe_boot() -> None:
    report = doctor.run_doctor(FIXTURES / "svm_avic_on", None, run=fake_run())
    assert report["probe_boot"] is None
    assert report["decision"]["host"] == "virtual"


# ---------------------------------------------------------------- non-root users: each permission, its fix


def non_root(case: str = "vmx_apicv_off", **changes: object) -> HostFacts:
    base = dataclasses.replace(facts_for(case, euid=1000), user="alice", cap_perfmon=False, perf_paranoid=1,
                               tracefs_readable=True, kvm_dev_group="kvm", kvm_dev_mode="0660",
                               kvm_group_member=True, kvm_group_active=True)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_non_root_with_every_permission_is_direct() -> None:
    facts = non_root()
    assert decide(facts, None).host == "direct"
    found = {f.name: f for f in doctor.doctor_checks(facts, None, decide(facts, None))}
    assert found["perf permissions"].status == "ok" and found["/dev/kvm"].status == "ok"


def test_kvm_dev_root_only_says_chgrp_and_usermod() -> None:
    check = checks.check_kvm_dev(non_root(kvm_access=False, kvm_dev_group="root", kvm_dev_mode="0600"))
    assert not check.ok
    assert check.detail == ("/dev/kvm exists but is not readable and writable by alice (root 0600): only root "
                            "may open it")
    assert check.fix is not None
    assert "chgrp kvm /dev/kvm && chmod 0660 /dev/kvm" in check.fix and "usermod -aG kvm alice" in check.fix


def test_kvm_dev_not_in_group_says_usermod() -> None:
    check = checks.check_kvm_dev(non_root(kvm_access=False, kvm_group_member=False))
    assert check.detail.endswith("alice is not in group kvm")
    assert check.fix == "add alice to group kvm: usermod -aG kvm alice, then log in again"


def test_kvm_dev_group_not_in_this_session_says_log_in_again() -> None:
    check = checks.check_kvm_dev(non_root(kvm_access=False, kvm_group_active=False))
    assert "this session is not" in check.detail
    assert check.fix is not None and "log in again" in check.fix and "newgrp kvm" in check.fix


def test_kvm_dev_denied_to_root_is_not_a_group_problem() -> None:
    facts = dataclasses.replace(facts_for("vmx_apicv_off"), kvm_access=False)
    check = checks.check_kvm_dev(facts)
    assert "not even for root" in check.detail and "usermod" not in (check.fix or "")


def test_perf_permissions_name_each_missing_permission_and_fix() -> None:
    facts = non_root(perf_paranoid=2, tracefs_readable=False)
    check = checks.check_perf_permissions(facts)
    assert not check.ok
    assert "perf_event_paranoid=2 stops alice counting kernel-mode events" in check.detail
    assert "silently counts user mode only" in check.detail
    assert "/sys/kernel/tracing is not readable by alice" in check.detail
    assert check.fix is not None
    assert "sysctl -w kernel.perf_event_paranoid=1" in check.fix
    assert "mount -o remount,gid=kvm,mode=0750 /sys/kernel/tracing with alice in group kvm" in check.fix
    assert "sudo host_config/prepare-host.sh --perf" in check.fix
    only_paranoid = checks.check_perf_permissions(non_root(perf_paranoid=3))
    assert "tracing" not in only_paranoid.detail and only_paranoid.fix is not None
    assert only_paranoid.fix.startswith("sysctl -w kernel.perf_event_paranoid=1 (both:")


def test_root_only_tracefs_is_named_for_a_non_root_user() -> None:
    facts = non_root(tracefs_listable=False, tracefs_readable=False, kvm_tracepoints=0, missing_tracepoints=())
    check = checks.check_tracepoints(facts)
    assert not check.ok and "/sys/kernel/tracing is root-only, so alice cannot see" in check.detail
    assert check.fix is not None and "host_config/prepare-host.sh --perf" in check.fix
    decision = decide(facts, None)
    assert decision.host == "virtual" and "root-only" in decision.reason
    root = dataclasses.replace(facts, is_root=True)
    assert checks.check_tracepoints(root).ok


def test_cache_findings() -> None:
    facts = facts_for("pvm")
    assert facts.cache_dir is None
    found = {f.name: f for f in doctor.doctor_checks(facts, None, decide(facts, None))}
    assert (found["cache"].status, found["cache"].detail) == ("info", "not checked")

    def cache(**changes: object) -> doctor.DoctorCheck:
        f = dataclasses.replace(non_root("pvm"), cache_dir="/srv/c", **changes)  # type: ignore[arg-type]
        return {x.name: x for x in doctor.doctor_checks(f, None, decide(f, None))}["cache"]

    ok = cache(cache_writable=True, cache_key_readable=True)
    assert ok.status == "ok" and ok.detail == "/srv/c is writable by alice, its SSH key readable"
    key = cache(cache_writable=False, cache_key_readable=False)
    assert key.status == "fail" and "cannot read the cache's SSH client key in /srv/c/ssh" in key.detail
    assert key.fix is not None and "PVEOI_CACHE" in key.fix
    ro = cache(cache_writable=False, cache_key_readable=None)
    assert ro.status == "fail" and "/srv/c is not writable by alice" in ro.detail
    assert ro.fix is not None and "chown -R alice /srv/c" in ro.fix


def test_probe_cache(tmp_path: Path) -> None:
    missing = access.probe_cache(tmp_path / "a" / "b")
    assert missing.writable and missing.key_readable is None and missing.path == str(tmp_path / "a" / "b")
    key = tmp_path / "c" / "ssh" / "id_ecdsa"
    key.parent.mkdir(parents=True)
    key.write_text("key")
    key.chmod(0o600)
    assert access.probe_cache(tmp_path / "c").key_readable is True


def test_probe_kvm_dev_owner(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/kvm").write_text("")
    (tmp_path / "dev/kvm").chmod(0o660)
    owner = access.probe_kvm_dev_owner(tmp_path, os.geteuid())
    assert owner.mode == "0660" and owner.group == access.group_name(os.getegid())
    assert owner.member is True and owner.active is True
    assert access.probe_kvm_dev_owner(tmp_path / "nowhere", 0) == access.KvmDevOwner(None, None, None, None)


def test_run_doctor_checks_the_cache_of_this_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVEOI_CACHE", str(tmp_path / "cache"))
    report = doctor.run_doctor(run=fake_run())
    assert report["facts"]["cache_dir"] == str(tmp_path / "cache")
    assert report["facts"]["cache_writable"] is True
    assert doctor.run_doctor(FIXTURES / "pvm", run=fake_run())["facts"]["cache_dir"] is None
