"""The runner's conditions a result records (load, busy and stolen CPU time, other QEMUs) and when a
night counts as far from the runner's usual. A fake procfs for the sampler, and this machine's real one."""

from __future__ import annotations

import os
from pathlib import Path

from e2e.host.conditions import snapshot, summarize, unusual


def fake_proc(root: Path, stat: str, load: str, procs: dict[int, tuple[str, int]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(stat)
    (root / "loadavg").write_text(load)
    for pid, (comm, ppid) in procs.items():
        (root / str(pid)).mkdir(exist_ok=True)
        (root / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} 1 1 0 -1\n")
    return root


def test_summarize_the_run_from_two_snapshots(tmp_path: Path) -> None:
    me = os.getpid()
    procs = {me: ("python3", 1), 5000: ("qemu-system-x86", me), 6000: ("qemu-system-x86", 1), 7000: ("bash", 1)}
    a = snapshot(fake_proc(tmp_path / "a", "cpu  100 0 100 700 100 0 0 0 0 0\n", "1.50 1 1 2/100 9\n", procs))
    b = snapshot(fake_proc(tmp_path / "b", "cpu  400 0 200 800 100 0 0 100 0 0\n", "3.50 2 1 2/100 9\n", procs))
    got = summarize(a, b)
    assert got["load_1m"] == {"start": 1.5, "end": 3.5, "mean": 2.5}
    assert got["busy"] == 0.8333 and got["steal"] == 0.1667  # of 600 jiffies: 500 busy (100 stolen), 100 idle
    assert got["other_qemu"] == 1, "our own QEMU (a descendant) is not another's"


def test_this_machines_procfs_gives_every_figure() -> None:
    got = summarize(snapshot(), snapshot())
    assert got["cpus"] == os.cpu_count() and got["load_1m"]["mean"] is not None
    assert isinstance(got["other_qemu"], int)


def test_a_night_far_from_the_usual_says_why() -> None:
    usual = [{"load_1m": {"mean": 2.4}, "steal": 0.0, "cpus": 2, "other_qemu": 0} for _ in range(5)]
    assert unusual({"load_1m": {"mean": 2.6}, "steal": 0.0, "cpus": 2, "other_qemu": 0}, usual) == []
    assert unusual({"load_1m": {"mean": 4.4}, "steal": 0.0, "cpus": 2, "other_qemu": 0}, usual) == [
        "load average 4.4 on 2 CPUs (usually 2.4)"]
    why = unusual({"load_1m": {"mean": 2.5}, "steal": 0.09, "cpus": 2, "other_qemu": 2}, usual)
    assert why == ["2 other QEMU process(es) ran", "9% of CPU time stolen by the hypervisor"]
    assert unusual(None, usual) == [] and unusual({}, []) == []
