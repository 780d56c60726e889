"""The installed perf against live processes (root, perf and the kvm tracepoints needed; skipped
otherwise), and the exit-reason tables against the Linux headers: they depend on this host (and a
root perf mounts tracefs on first use), so they live here, not in tests/unit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.errors import CapabilityError, MeasurementError, PveoiError
from e2e.host.hostfacts import list_kvm_tracepoints
from e2e.measure.perf import PerfStat
from e2e.measure.perf_errors import PERMISSION_FIX
from e2e.measure.perf_events import Event
from e2e.measure.vmexits import SVM_EXIT_REASONS, VMX_EXIT_REASONS
from tests.helpers.processes import ended_within

REPO = Path(__file__).resolve().parents[2]

EXIT = Event("kvm:kvm_exit")
EXIT_MSR = Event("kvm:kvm_exit", "exit_reason == 124", "kvm_exit[MSR]")
PV = Event("kvm:kvm_pv_eoi")


@pytest.fixture(scope="module")
def uapi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """arch/x86/include/uapi/asm of Debian's linux-source of the default base (installed by
    host_config/install-deps.sh), unpacked once."""
    import subprocess

    from e2e.build.bases import base_named

    base = base_named(None)
    if not base.tarball.is_file():
        pytest.fail(f"{base.tarball} not found: {base.apt} (host_config/install-deps.sh)")
    dest = tmp_path_factory.mktemp("uapi")
    where = f"{base.package}/arch/x86/include/uapi/asm"
    subprocess.run(["tar", "-xJf", str(base.tarball), "-C", str(dest), f"{where}/svm.h", f"{where}/vmx.h"],
                   check=True, capture_output=True)
    return dest / where


def header_codes(uapi: Path, name: str, pattern: str) -> dict[str, int]:
    text = (uapi / name).read_text()
    return {m[0]: int(m[1], 0) for m in re.findall(pattern, text)}


def test_exit_reason_tables_match_the_kernel_headers(uapi: Path) -> None:
    svm = header_codes(uapi, "svm.h", r"#define SVM_EXIT_(\w+)\s+(0x[0-9a-fA-F]+)")
    vmx = header_codes(uapi, "vmx.h", r"#define EXIT_REASON_(\w+)\s+(\d+)\b")
    assert {k: svm[k] for k in SVM_EXIT_REASONS} == dict(SVM_EXIT_REASONS)
    assert dict(VMX_EXIT_REASONS) == vmx


def _real_perf_reason() -> str | None:
    if shutil.which("perf") is None:
        return "perf is not installed"
    if os.geteuid() != 0:
        return "needs root to count kernel tracepoints"
    try:
        names = list_kvm_tracepoints()
    except CapabilityError as err:
        return str(err)
    return None if "kvm:kvm_exit" in names else "no kvm:kvm_exit tracepoint"


real_perf = pytest.mark.skipif(_real_perf_reason() is not None,
                               reason=_real_perf_reason() or "")


SWITCHER = textwrap.dedent("""
    import sys, time
    for line in sys.stdin:
        for _ in range(int(line)):
            time.sleep(0.0005)
        sys.stdout.write("done\\n")
        sys.stdout.flush()
""")


class Switcher:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SWITCHER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.switch(1)  # running and reading

    @property
    def pid(self) -> int:
        return self.proc.pid

    def switch(self, n: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def switcher() -> Iterator[Switcher]:
    s = Switcher()
    yield s
    s.close()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def assert_gone(perf: PerfStat) -> None:
    proc = perf._proc
    assert proc is not None and proc.returncode is not None  # reaped
    assert perf.workdir is None


@real_perf
@pytest.mark.timeout(60)
@pytest.mark.parametrize("by", ["pid", "tids"])
def test_real_perf_counts_only_the_enabled_windows(switcher: Switcher, by: str) -> None:
    events = [Event("sched:sched_switch"), EXIT, EXIT_MSR, PV]
    target = {"pid": switcher.pid} if by == "pid" else {"tids": [switcher.pid]}
    with PerfStat(events, **target) as perf:
        perf.start()
        workdir = perf.workdir
        assert workdir is not None and (workdir / "ctl").exists()
        pid = perf.process_id
        assert pid is not None and os.getpgid(pid) == pid  # its own process group
        switcher.switch(300)  # outside: attached but disabled
        perf.enable()
        switcher.switch(100)
        perf.disable()
        switcher.switch(300)  # outside
        perf.enable()
        switcher.switch(50)
        perf.disable()
        counts = perf.stop()
        assert_gone(perf)
        assert not workdir.exists()
    assert set(counts) == {"sched:sched_switch", "kvm:kvm_exit", "kvm_exit[MSR]", "kvm:kvm_pv_eoi"}
    assert all(isinstance(v, int) for v in counts.values())
    # 150 sleeps (+ a read or two, a preemption maybe) inside; 600 outside.
    assert 150 <= counts["sched:sched_switch"] < 300, counts
    assert counts["kvm:kvm_exit"] == counts["kvm_exit[MSR]"] == counts["kvm:kvm_pv_eoi"] == 0
    assert perf.output_text is not None and "sched:sched_switch" in perf.output_text


@real_perf
@pytest.mark.timeout(60)
def test_real_perf_a_process_that_never_ran_is_not_counted_not_zero(
        sleeper: subprocess.Popen[bytes]) -> None:
    with PerfStat([EXIT, PV], pid=sleeper.pid) as perf:
        perf.start()
        perf.enable()
        perf.disable()
        with pytest.raises(MeasurementError, match="not counted"):
            perf.stop()
        assert_gone(perf)


@real_perf
@pytest.mark.timeout(60)
def test_real_perf_nonexistent_pid(tmp_path: Path) -> None:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text())  # pids are < pid_max
    with PerfStat([EXIT], pid=pid) as perf:
        with pytest.raises(MeasurementError, match="Problems finding threads") as info:
            perf.start()
        assert info.value.fix is not None and "do not exist" in info.value.fix
        assert_gone(perf)


@real_perf
@pytest.mark.timeout(60)
def test_real_perf_unknown_tracepoint_and_bad_filter(sleeper: subprocess.Popen[bytes]) -> None:
    with (PerfStat([Event("kvm:pveoi_no_such_event")], pid=sleeper.pid) as perf,
          pytest.raises(CapabilityError, match="unknown tracepoint")):
        perf.start()
    with (PerfStat([Event("kvm:kvm_exit", "no_such_field == (")], pid=sleeper.pid) as perf,
          pytest.raises(MeasurementError, match="failed to set filter")):
        perf.start()


@real_perf
@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is not installed")
def test_real_perf_without_permission(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    wrapper = tmp_path / "perf-as-nobody"
    wrapper.write_text(f"#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups "
                       f"{shutil.which('perf')} \"$@\"\n")
    wrapper.chmod(0o755)
    with (PerfStat([EXIT], pid=sleeper.pid, perf=str(wrapper)) as perf,
          pytest.raises(CapabilityError) as info):
        perf.start()
    assert info.value.fix is not None and PERMISSION_FIX in info.value.fix


@real_perf
@pytest.mark.timeout(60)
def test_real_perf_is_killed_when_the_context_is_left_by_an_exception(
        sleeper: subprocess.Popen[bytes]) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), PerfStat([EXIT], pid=sleeper.pid) as perf:
        perf.start()
        perf.enable()
        raise Boom
    assert_gone(perf)
    assert perf._proc is not None and perf._proc.returncode == -signal.SIGKILL
    with pytest.raises(PveoiError, match="make a new PerfStat"):
        perf.enable()


@real_perf
@pytest.mark.timeout(60)
def test_real_perf_dies_with_the_harness(sleeper: subprocess.Popen[bytes]) -> None:
    harness = textwrap.dedent(f"""
        import sys
        from e2e.measure.perf import PerfStat
        from e2e.measure.perf_errors import PERMISSION_FIX
        from e2e.measure.perf_events import Event
        perf = PerfStat([Event("kvm:kvm_exit")], pid={sleeper.pid})
        perf.start()
        print(perf.process_id, perf.workdir, flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", harness], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pid_text, workdir = proc.stdout.readline().split()
        perf_pid = int(pid_text)
        pidfd = os.pidfd_open(perf_pid)
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs in the harness
        proc.wait()
    try:
        # perf's target (sleep) is alive, so only PR_SET_PDEATHSIG can end it.
        assert ended_within(pidfd, perf_pid), f"perf {perf_pid} survived its harness"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the killed harness could not



@real_perf
@pytest.mark.timeout(60)
def test_a_failed_runs_trace_is_salvaged_up_to_the_failure(switcher: Switcher, tmp_path: Path) -> None:
    """A run that fails mid-window (here: its code raises; in the soak, a guest that triple-faulted)
    still leaves the events recorded up to then beside its logs, as perf script text."""
    import gzip

    from e2e.measure.record import PerfRecord
    from e2e.run.evidence import AttemptTrace, keep_trace_output

    kept = AttemptTrace(tmp_path)
    with pytest.raises(RuntimeError), PerfRecord(switcher.pid, events=["sched:sched_switch"]) as rec, \
            keep_trace_output(rec, tmp_path, "failed", kept):
        rec.start()
        rec.enable()
        switcher.switch(40)
        raise RuntimeError("the guest went away mid-workload")
    text = gzip.open(tmp_path / "failed-trace.txt.gz", "rt").read()
    assert text.count("sched:sched_switch") >= 40
    assert tmp_path / "failed-trace.txt.gz" in kept.extra_logs
    assert rec.workdir is None  # and perf's own temp dir is gone


@real_perf
@pytest.mark.timeout(120)
def test_a_kept_perf_data_is_scripted_and_summarized_outside(switcher: Switcher, tmp_path: Path) -> None:
    """The virtual host's path, with this host's perf: perf record keeps perf.data and returns no text;
    traces.finish_traces runs perf script on it, keeps the text gzipped and removes the perf.data."""
    import gzip

    from e2e.measure.record import PerfRecord
    from e2e.model.result import Result, RunRecord
    from e2e.run.traces import deferred, finish_traces

    rec = PerfRecord(switcher.pid, events=("sched:sched_switch",), keep_data=tmp_path / "r-perf.data")
    with rec:
        rec.start()
        rec.enable()
        switcher.switch(50)
        rec.disable()
        assert rec.finish() == "" and rec.output_text is None
    assert (tmp_path / "r-perf.data").stat().st_size > 0
    run = RunRecord(rep=0, arm="on", counts={}, trace=deferred("r", [switcher.pid], pv_eoi=True, names={}, marks=False))
    done = finish_traces(Result(verdict="unanalyzed", runs={"w": (run,)}), tmp_path).runs["w"][0]
    assert "deferred" not in done.trace and done.trace["marks"] is False and "vcpus" in done.trace
    with gzip.open(tmp_path / "r-trace.txt.gz", "rt") as f:
        assert f.read().count("sched:sched_switch") >= 50
    assert not (tmp_path / "r-perf.data").exists()
