"""Soak: the full A/B again and again in one process; nothing may accumulate.

Bounded by ``PVEOI_SOAK_ROUNDS`` (default 3) and ``PVEOI_SOAK_SECONDS``
(default 1200: no new round starts after that). Marked ``soak``: the nightly
job runs it (``tox -e nightly``), the default run does not.

The rounds run in this process (``cli.main``), so a leak in pveoi itself
(file descriptors, threads, child processes) shows here as growth between
rounds, as well as leftovers on the machine (QEMU processes, temp dirs) and
disk use outside the per-run logs and the history, which grow by design.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from e2e import cli
from e2e.build.cache import cache_root
from tests.helpers.measurable import not_measurable
from tests.helpers.processes import qemu_pids

pytestmark = [pytest.mark.soak, pytest.mark.kvm]


def children() -> set[int]:
    """Live (non-zombie) child processes of this process."""
    me = str(os.getpid())
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            out.add(int(entry))
    return out


def du(root: Path, skip: tuple[Path, ...] = ()) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if any(Path(dirpath).is_relative_to(s) for s in skip):
            dirnames[:] = []
            continue
        for f in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def pveoi_tmp() -> list[str]:
    """This process's pveoi temp dirs (``pveoi-<kind>-<pid>-*``; other runs on the machine have their own)."""
    return sorted(p.name for p in Path("/tmp").glob(f"pveoi-*-{os.getpid()}-*"))


def snapshot(logs: Path, history: Path) -> dict[str, object]:
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "children": children(),
        "qemu": qemu_pids(),
        "tmp": pveoi_tmp(),
        "cache_bytes": du(cache_root(), skip=(cache_root() / "logs", logs)),
        "history_files": len(list(history.glob("*.json"))),
    }


def test_repeated_ab_leaks_nothing(tmp_path: Path) -> None:
    rounds = int(os.environ.get("PVEOI_SOAK_ROUNDS", "3"))
    budget = float(os.environ.get("PVEOI_SOAK_SECONDS", "1200"))
    history, logs = tmp_path / "history", tmp_path / "logs"
    tmp_before = pveoi_tmp()
    start = time.monotonic()
    snaps = []
    for n in range(rounds):
        if n >= 2 and time.monotonic() - start > budget:
            break
        rc = cli.main(["-q", "ab", "--workload", "timer", "--runs", "2", "--history", str(history),
                       "--json", str(tmp_path / "last.json"), "--logs", str(logs / f"round{n}")])
        verdict = json.loads((tmp_path / "last.json").read_text())["verdict"]
        if verdict == "not-measurable":
            not_measurable(f"nothing to soak: {json.loads((tmp_path / 'last.json').read_text()).get('reason')}")
        assert rc == {"pass": 0, "fail": 1}.get(verdict, 2)
        snaps.append(snapshot(logs, history))
    assert len(snaps) >= 2, "the soak needs at least two rounds"
    first = snaps[0]
    for n, snap in enumerate(snaps[1:], 2):
        assert snap["qemu"] == set(), f"round {n}: QEMU left running: {snap['qemu']}"
        assert snap["children"] == set(), f"round {n}: child processes left: {snap['children']}"
        assert snap["tmp"] == tmp_before, f"round {n}: temp dirs left: {set(snap['tmp']) - set(tmp_before)}"  # type: ignore[arg-type]
        assert snap["fds"] <= first["fds"], f"round {n}: open files grew {first['fds']} -> {snap['fds']}"  # type: ignore[operator]
        assert snap["threads"] <= first["threads"], f"round {n}: threads grew {first['threads']} -> {snap['threads']}"  # type: ignore[operator]
        assert snap["cache_bytes"] == first["cache_bytes"], \
            f"round {n}: the cache grew by {snap['cache_bytes'] - first['cache_bytes']} bytes outside logs"  # type: ignore[operator]
        assert snap["history_files"] == n  # exactly one result per round, no strays
