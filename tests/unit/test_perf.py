"""Tests for e2e.measure.perf, .perf_events, .perf_errors and e2e.measure.vmexits.

The pure parts (argv, CSV, error classification, tracefs discovery on a fake
tree, exit-reason tables) run everywhere, whatever the host. The real perf
against live processes and the exit-reason tables against the kernel headers:
tests/e2e/test_perf_real.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from e2e.errors import CapabilityError, ConfigError, Kind, MeasurementError, PerfError, PveoiError
from e2e.host.hostfacts import list_kvm_tracepoints
from e2e.measure.perf import PerfStat
from e2e.measure.perf_errors import PERMISSION_FIX, TRACEFS_MOUNT_FIX, perf_error
from e2e.measure.perf_events import REQUIRED, SEPARATOR, Event, check_required, parse_perf_csv, perf_stat_argv
from e2e.measure.vmexits import breakdown_filters, breakdown_reasons, reason_name

REPO = Path(__file__).resolve().parents[2]

EXIT = Event("kvm:kvm_exit")
EXIT_MSR = Event("kvm:kvm_exit", "exit_reason == 124", "kvm_exit[MSR]")
EXIT_NPF = Event("kvm:kvm_exit", "exit_reason == 1024", "kvm_exit[NPF]")
PV = Event("kvm:kvm_pv_eoi")


# ---------------------------------------------------------------- Event


def test_event_label_defaults_to_name() -> None:
    assert EXIT.label == "kvm:kvm_exit" and EXIT.key == "kvm:kvm_exit"
    assert EXIT_MSR.label == "kvm_exit[MSR]" and EXIT_MSR.filter == "exit_reason == 124"


@pytest.mark.parametrize("name", ["", "kvm:kvm exit", f"kvm:kvm_exit{SEPARATOR}x"])
def test_event_rejects_bad_names(name: str) -> None:
    with pytest.raises(ConfigError):
        Event(name)


@pytest.mark.parametrize("flt", ["", "  ", "a == 1\nb == 2"])
def test_event_rejects_bad_filters(flt: str) -> None:
    with pytest.raises(ConfigError):
        Event("kvm:kvm_exit", flt)


# ---------------------------------------------------------------- perf_stat_argv


def test_argv_for_a_pid_with_filters_control_and_output() -> None:
    argv = perf_stat_argv([EXIT, EXIT_MSR, PV], pid=1234,
                          control_fifo=(Path("/t/ctl"), Path("/t/ack")), output=Path("/t/out.csv"))
    assert argv == [
        "perf", "stat", "-x", SEPARATOR, "--no-big-num",
        "-e", "kvm:kvm_exit",
        "-e", "kvm:kvm_exit", "--filter", "exit_reason == 124",
        "-e", "kvm:kvm_pv_eoi",
        "-p", "1234",
        "-D", "-1", "--control", "fifo:/t/ctl,/t/ack",
        "-o", "/t/out.csv",
    ]


def test_argv_for_tids_enabled_from_the_start_and_another_binary() -> None:
    argv = perf_stat_argv([PV], tids=[11, 12], perf="/opt/perf", start_disabled=False,
                          control_fifo=(Path("/t/c"), Path("/t/a")))
    assert argv == ["/opt/perf", "stat", "-x", SEPARATOR, "--no-big-num", "-e", "kvm:kvm_pv_eoi",
                    "-t", "11,12", "--control", "fifo:/t/c,/t/a"]


def test_argv_without_control_fifo_never_starts_disabled() -> None:
    argv = perf_stat_argv([PV], pid=5)
    assert "-D" not in argv and "--control" not in argv and "-o" not in argv


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pid": 1, "tids": [2]}, "exactly one"),
        ({}, "exactly one"),
        ({"pid": 0}, "bad pid"),
        ({"tids": [3, -1]}, "bad pid"),
        ({"pid": 1, "control_fifo": (Path("/a,b/ctl"), Path("/a/ack"))}, "comma|','"),
    ],
)
def test_argv_rejects_misuse(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        perf_stat_argv([PV], **kwargs)  # type: ignore[arg-type]


def test_argv_rejects_no_events_and_duplicate_labels() -> None:
    with pytest.raises(ConfigError, match="no perf events"):
        perf_stat_argv([], pid=1)
    with pytest.raises(ConfigError, match="duplicate"):
        perf_stat_argv([EXIT, Event("kvm:kvm_exit", "exit_reason == 1")], pid=1)


# ---------------------------------------------------------------- parse_perf_csv


def csv(*rows: str) -> str:
    return "\n".join(rows) + "\n"


def test_parse_maps_rows_by_order_with_duplicate_names() -> None:
    text = csv(
        "# started on Wed Nov 25 23:17:02 2026",
        "",
        "17372;;kvm:kvm_exit;10019273;100.00;;",
        "11718;;kvm:kvm_exit;10019273;100.00;;",
        "0;;kvm:kvm_exit;10019273;100.00;;",
        "4238;;kvm:kvm_pv_eoi;10019273;100.00;;",
    )
    assert parse_perf_csv(text, [EXIT, EXIT_MSR, EXIT_NPF, PV]) == {
        "kvm:kvm_exit": 17372, "kvm_exit[MSR]": 11718, "kvm_exit[NPF]": 0, "kvm:kvm_pv_eoi": 4238,
    }


def test_parse_survives_perf_prose_metric_rows_and_fractions() -> None:
    text = csv(
        "# started on Wed Nov 25 23:17:02 2026",
        "5;;kvm:kvm_exit;1000;100.00;;",
        ";;;;;0.50;insn per cycle",
        "1.53;msec;task-clock;1530000;100.00;0.001;CPUs utilized",
        "",
        "Some events weren't counted. Try disabling the NMI watchdog:",
        "\techo 0 > /proc/sys/kernel/nmi_watchdog",
        "\tperf stat ...",
        "\techo 1 > /proc/sys/kernel/nmi_watchdog",
    )
    assert parse_perf_csv(text, [EXIT, Event("task-clock")]) == {"kvm:kvm_exit": 5, "task-clock": 2}


@pytest.mark.parametrize("marker", ["<not counted>", "<not supported>"])
def test_parse_not_counted_or_supported_is_an_error_never_zero(marker: str) -> None:
    text = csv("5;;kvm:kvm_exit;1000;100.00;;", f"{marker};;kvm:kvm_exit;0;100.00;;")
    with pytest.raises(MeasurementError, match=r"kvm_exit\[MSR\] .*" + re.escape(marker)):
        parse_perf_csv(text, [EXIT, EXIT_MSR])


def test_parse_checks_event_names_and_row_counts() -> None:
    with pytest.raises(MeasurementError, match="expected 'kvm:kvm_pv_eoi'"):
        parse_perf_csv(csv("1;;kvm:kvm_exit;1;100.00;;", "2;;kvm:kvm_eoi;1;100.00;;"), [EXIT, PV])
    with pytest.raises(MeasurementError, match="1 counter rows for 2 events"):
        parse_perf_csv(csv("1;;kvm:kvm_exit;1;100.00;;"), [EXIT, PV])
    with pytest.raises(MeasurementError, match="2 counter rows for 1 events"):
        parse_perf_csv(csv("1;;kvm:kvm_exit;1;100.00;;", "2;;kvm:kvm_pv_eoi;1;100.00;;"), [EXIT])
    with pytest.raises(MeasurementError, match="0 counter rows"):
        parse_perf_csv("", [EXIT])


def test_parse_warns_on_multiplexed_counts(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_perf_csv(csv("10;;kvm:kvm_exit;500;50.00;;"), [EXIT]) == {"kvm:kvm_exit": 10}
    assert "multiplexed" in caplog.text


# ---------------------------------------------------------------- perf_error


def test_perf_error_permission_names_the_fix_and_perfs_hint() -> None:
    stderr = ("event syntax error: 'kvm:kvm_exit'\n   \\___ can't access trace events\n\n"
              "Error:\tNo permissions to read /sys/kernel/tracing/events/kvm/kvm_exit\n"
              "Hint:\tTry 'sudo mount -o remount,mode=755 /sys/kernel/tracing/'\n")
    err = perf_error(stderr, 129, ["perf"], "attach")
    assert isinstance(err, CapabilityError)
    assert "No permissions to read" in str(err)
    assert err.fix is not None and PERMISSION_FIX in err.fix and "remount,mode=755" in err.fix


def test_perf_error_classifies_gone_threads_unknown_events_and_filters(tmp_path: Path) -> None:
    gone = perf_error("Problems finding threads of monitor\n\n Usage: perf stat\n", 234, ["perf"],
                      "x")
    assert type(gone) is PerfError and "Problems finding threads" in str(gone)
    # An unknown tracepoint: "load kvm" where tracefs is mounted, "mount tracefs" where it is not
    # (fake roots: the answer must not depend on this host's tracefs).
    mounted = tmp_path / "mounted"
    fake_tracefs(mounted / "sys/kernel/tracing", ["kvm_exit"])
    unknown = perf_error("event syntax error: 'kvm:nope'\n   \\___ unknown tracepoint\n", 129,
                         ["perf"], "x", root=mounted)
    assert type(unknown) is CapabilityError and "load kvm" in str(unknown)
    assert "kvm:nope' (unknown tracepoint)" in str(unknown)
    unmounted = perf_error("event syntax error: 'kvm:nope'\n   \\___ unknown tracepoint\n", 129,
                           ["perf"], "x", root=tmp_path / "bare")
    assert type(unmounted) is CapabilityError and str(unmounted).endswith(TRACEFS_MOUNT_FIX)
    assert "tracefs is not mounted" in str(unmounted)
    bad = perf_error('failed to set filter "x==(" on event kvm:kvm_exit with 2\n', 255, ["perf"],
                     "x")
    assert type(bad) is PerfError and "failed to set filter" in str(bad)
    ended = perf_error("Events disabled\n", 0, ["perf"], "enable")
    assert "exited" in str(ended)
    other = perf_error("something odd\n", -9, ["perf", "stat"], "stop")
    assert "killed by signal 9" in str(other) and "perf stat" in str(other)


def test_perf_records_usual_warnings_are_no_verdict() -> None:
    """A perf record that exits 255 during attach with only its usual warnings (seen once in a
    soak, in the virtual host) is a retryable infrastructure failure, not "no permission"."""
    usual = ("Couldn't record kernel reference relocation symbol\n"
             "Symbol resolution may be skewed if relocation was used (e.g. kexec).\n"
             "Check /proc/kallsyms permission or run as root.\n"
             "perf_event__synthesize_bpf_events: failed to synthesize bpf images: No such file or directory\n"
             "Couldn't synthesize bpf events.\n")
    err = perf_error(usual, 255, ["perf", "record", "-p", "7"], "attach")
    assert type(err) is PerfError and err.kind is Kind.INFRASTRUCTURE and err.failed == "perf failure"
    assert str(err).startswith("perf record failed during attach (exit code 255): perf printed no error")
    # The same warnings beside a real permission error still give the capability verdict.
    denied = perf_error(usual + "Error:\nAccess to performance monitoring and observability operations is "
                                "limited.\n", 255, ["perf", "record"], "attach")
    assert isinstance(denied, CapabilityError) and "Access to performance monitoring" in str(denied)


# ---------------------------------------------------------------- tracefs


def fake_tracefs(root: Path, names: list[str]) -> Path:
    (root / "events").mkdir(parents=True)
    (root / "events" / "enable").write_text("0\n")
    if names:
        kvm = root / "events" / "kvm"
        kvm.mkdir()
        (kvm / "enable").write_text("0\n")
        (kvm / "filter").write_text("none\n")
        for name in names:
            (kvm / name).mkdir()
            (kvm / name / "id").write_text("1\n")
    return root


def test_list_kvm_tracepoints_reads_event_directories(tmp_path: Path) -> None:
    tracefs = fake_tracefs(tmp_path / "tracing", ["kvm_exit", "kvm_pv_eoi", "kvm_entry"])
    assert list_kvm_tracepoints(tracefs, fallback=None) == ["kvm:kvm_entry", "kvm:kvm_exit",
                                                            "kvm:kvm_pv_eoi"]


def test_list_kvm_tracepoints_falls_back_to_debugfs(tmp_path: Path) -> None:
    debug = fake_tracefs(tmp_path / "debug" / "tracing", ["kvm_exit"])
    assert list_kvm_tracepoints(tmp_path / "unmounted", fallback=debug) == ["kvm:kvm_exit"]


def test_list_kvm_tracepoints_unmounted_says_mount(tmp_path: Path) -> None:
    with pytest.raises(CapabilityError, match="not mounted") as info:
        list_kvm_tracepoints(tmp_path / "tracing", fallback=tmp_path / "debug")
    assert info.value.fix == f"mount -t tracefs nodev {tmp_path / 'tracing'}"


def test_list_kvm_tracepoints_without_kvm_says_load_kvm(tmp_path: Path) -> None:
    tracefs = fake_tracefs(tmp_path / "tracing", [])
    with pytest.raises(CapabilityError, match="kvm module is not loaded") as info:
        list_kvm_tracepoints(tracefs, fallback=None)
    assert info.value.fix is not None and "modprobe kvm" in info.value.fix


def test_check_required_names_the_missing() -> None:
    check_required([*REQUIRED, "kvm:kvm_mmio"])
    with pytest.raises(MeasurementError, match="kvm:kvm_pv_eoi, kvm:kvm_apic_accept_irq"):
        check_required([n for n in REQUIRED
                        if n not in ("kvm:kvm_pv_eoi", "kvm:kvm_apic_accept_irq")])


# ---------------------------------------------------------------- exit reasons


def test_breakdown_reasons_per_vendor() -> None:
    svm = breakdown_reasons("svm")
    assert svm == {"MSR": 0x7C, "NPF": 0x400, "HLT": 0x78, "INTR": 0x60, "IOIO": 0x7B,
                   "VINTR": 0x64}
    vmx = breakdown_reasons("VMX")
    assert vmx["MSR_WRITE"] == 32 and vmx["APIC_ACCESS"] == 44 and vmx["HLT"] == 12
    assert vmx["EXTERNAL_INTERRUPT"] == 1 and vmx["IO_INSTRUCTION"] == 30
    assert vmx["INTERRUPT_WINDOW"] == 7
    svm["MSR"] = 0  # a fresh dict each call
    assert breakdown_reasons("svm")["MSR"] == 0x7C


def test_breakdown_filters_split_svm_msr_writes() -> None:
    svm = breakdown_filters("svm")
    assert svm["MSR"] == "exit_reason == 124"
    assert svm["MSR_WRITE"] == "exit_reason == 124 && info1 == 1"
    assert breakdown_filters("vmx")["MSR_WRITE"] == "exit_reason == 32"


def test_unknown_vendor_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="svm and vmx"):
        breakdown_reasons("unknown")


def test_reason_name() -> None:
    assert reason_name("svm", 0x7C) == "MSR"
    assert reason_name("vmx", 32) == "MSR_WRITE"
    assert reason_name("vmx", 0x80000000 | 33) == "INVALID_STATE"
    assert reason_name("svm", 0x7777) == "UNKNOWN(0x7777)"


# ---------------------------------------------------------------- PerfStat without perf


def test_perfstat_validates_and_guards_its_lifecycle() -> None:
    with pytest.raises(ConfigError):
        PerfStat([PV])
    perf = PerfStat([PV], pid=os.getpid())
    with pytest.raises(PveoiError, match="call start"):
        perf.enable()
    with pytest.raises(PveoiError, match="call start"):
        perf.stop()
    perf.close()
    perf.close()  # idempotent
    with pytest.raises(PveoiError, match="make a new PerfStat"):
        perf.start()


def test_missing_perf_binary_is_a_capability_error(tmp_path: Path) -> None:
    with PerfStat([PV], pid=os.getpid(), perf=str(tmp_path / "no-perf")) as perf:
        with pytest.raises(CapabilityError, match="perf not found") as info:
            perf.start()
        assert info.value.fix is not None and "linux-perf" in info.value.fix
        assert perf.workdir is None


#: A child that, per line "N" on stdin, blocks N times in a short sleep (N
#: voluntary context switches, each a sched:sched_switch of this task), then
#: answers "done".
# ---------------------------------------------------------------- host facts: one owner


def test_host_facts_have_one_owner() -> None:
    """perf, ab, capability and the doctor's checks take the tracepoint list, the tracefs scan and the
    CPU vendor from e2e.host.hostfacts: the same objects, not copies that could drift apart."""
    from e2e.host import capability, checks, hostfacts
    from e2e.measure import perf_errors, perf_events
    from e2e.run import ab

    assert ab.COUNTED is hostfacts.COUNTED and ab.cpu_vendor is hostfacts.cpu_vendor
    assert tuple(hostfacts.COUNTED) == perf_events.REQUIRED
    assert perf_errors.probe_tracefs is hostfacts.probe_tracefs
    assert capability.probe_tracefs is hostfacts.probe_tracefs and capability.cpu_flags is hostfacts.cpu_flags
    assert capability.NEEDED_TRACEPOINTS == hostfacts.TRACEPOINTS
    assert checks.TRACEPOINTS is hostfacts.TRACEPOINTS
    assert tuple(n.removeprefix("kvm:") for n in hostfacts.COUNTED) == hostfacts.TRACEPOINTS


def test_cpu_vendor_reads_the_flags_line_only() -> None:
    from e2e.host.capability import HostFacts
    from e2e.host.hostfacts import cpu_flags, cpu_vendor, vendor_of

    assert cpu_vendor("processor\t: 0\nflags\t\t: fpu vmx ept\n") == "vmx"
    assert cpu_vendor("model name\t: svm box\nflags\t\t: fpu svm\n") == "svm"
    assert cpu_vendor("model name\t: svm box\nflags\t\t: fpu hypervisor\n") == "unknown"
    assert vendor_of(cpu_flags(None)) == "unknown"
    facts = {f.name: None for f in __import__("dataclasses").fields(HostFacts)}
    amd = HostFacts(**{**facts, "cpu_svm": True, "cpu_vmx": False})  # type: ignore[arg-type]
    assert amd.cpu_vendor == "svm"


def test_tracefs_probe_and_listing_agree_on_one_tree(tmp_path: Path) -> None:
    """probe_tracefs (never raises: the doctor) and list_kvm_tracepoints (raises: perf) read the same scan."""
    from e2e.host.hostfacts import TRACEPOINTS, list_kvm_tracepoints, probe_tracefs

    fake_tracefs(tmp_path / "sys/kernel/tracing", [*TRACEPOINTS[:-1], "kvm_mmio"])
    facts = probe_tracefs(tmp_path)
    assert facts.path == "/sys/kernel/tracing" and facts.mounted and facts.readable
    assert facts.missing == (TRACEPOINTS[-1],) and facts.count == len(TRACEPOINTS)
    listed = list_kvm_tracepoints(tmp_path / "sys/kernel/tracing", fallback=None)
    assert listed == [f"kvm:{n}" for n in facts.names]
    assert not probe_tracefs(tmp_path / "none").mounted
