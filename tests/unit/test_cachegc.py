"""The cache's size: du by kind, prune by age and size in the documented order, what is never removed
(a held entry, a kernel a history names), and the automatic cap. Real files, real locks."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.build.cache import Cache
from e2e.build.cachegc import auto_cap, du, history_keys, items, parse_size, prune
from e2e.errors import ConfigError

DAY = 86400.0
NOW = 1_800_000_000.0


def entry(root: Path, kind: str, key: str, mb: int, days_ago: float, origin: Path | None = None) -> Path:
    d = root / kind / key
    d.mkdir(parents=True)
    with open(d / "blob", "wb") as f:
        f.write(os.urandom(1024) * (mb * 1024))  # real blocks, so du sees them
    lock = root / kind / f".{key}.lock"
    lock.touch()
    when = NOW - days_ago * DAY
    os.utime(lock, (when, when))
    os.utime(d, (when, when))
    if origin is not None:
        (d / "origin").write_text(f"{origin}\n")
    return d


@pytest.mark.parametrize(("text", "size"), [("2G", 2 << 30), ("500M", 500 << 20), ("1.5GiB", 3 << 29),
                                            ("20GB", 20 << 30), ("4096", 4096), ("1k", 1024)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "two", "2X", "-1G"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="cannot read the size"):
        parse_size(text)


def test_prune_takes_orphans_first_then_build_dirs_then_kernels_each_least_recently_used_first(
        tmp_path: Path) -> None:
    root = tmp_path / "cache"
    entry(root, "kbuild", "gone", 3, 0.0, origin=tmp_path / "finished-bisect-worktree")
    entry(root, "kbuild", "old", 3, 9.0, origin=tmp_path)
    entry(root, "kbuild", "new", 3, 1.0, origin=tmp_path)
    entry(root, "kernels", "k-old", 2, 10.0)
    entry(root, "kernels", "k-new", 2, 0.5)
    sizes = du(root)
    assert sizes["kbuild"][0] == 3 and sizes["kernels"][0] == 2
    assert [i.key for i in items(root) if i.orphan] == ["gone"]
    report = prune(root, max_size=8 << 20, now=NOW, dry_run=True)
    assert [i.key for i in report.removed] == ["gone", "old"]  # the orphan always; then build dirs, oldest first
    assert (root / "kbuild" / "gone").is_dir(), "a dry run removes nothing"
    report = prune(root, max_size=3 << 20, now=NOW)
    assert [i.key for i in report.removed] == ["gone", "old", "new", "k-old"]
    assert not (root / "kbuild" / "gone").exists() and (root / "kernels" / "k-new").is_dir()
    assert report.after <= 3 << 20 < report.before


def test_a_packaged_kernels_virtual_host_boot_files_are_counted_and_go_before_any_kernel(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    entry(root, "kernels", "deb-k", 3, 5.0)
    entry(root, "vhost-initrd", "boot", 3, 0.0)  # its initramfs and vmlinux: made again in seconds
    assert du(root)["vhost-initrd"][0] == 1 and "other" not in du(root)
    report = prune(root, max_size=4 << 20, now=NOW)
    assert [i.key for i in report.removed] == ["boot"] and (root / "kernels" / "deb-k").is_dir()


def test_keep_days_removes_what_was_last_used_before(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    entry(root, "kbuild", "a", 1, 20.0)
    entry(root, "images", "i", 1, 3.0)
    (root / "logs").mkdir()
    log = root / "logs" / "pveoi-x.log"
    log.write_text("x")
    os.utime(log, (NOW - 30 * DAY, NOW - 30 * DAY))
    report = prune(root, keep_days=7, now=NOW)
    assert sorted(i.key for i in report.removed) == ["a", "pveoi-x.log"]


def test_a_held_entry_and_one_a_history_names_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    kept = entry(root, "kernels", "named", 2, 30.0)
    held = entry(root, "images", "held", 2, 30.0)
    entry(root, "kernels", "free", 2, 30.0)
    history = tmp_path / "history"
    history.mkdir()
    (history / "night.json").write_text(json.dumps({"verdict": "pass", "kernel": {"path": str(kept / "bzImage")}}))
    assert history_keys([history]) == {("kernels", "named")}
    with Cache(root).hold([held / "initramfs.cpio", tmp_path / "elsewhere"]):
        report = prune(root, max_size=0, histories=[history], now=NOW)
    assert [i.key for i in report.removed] == ["free"]
    assert [i.key for i in report.held] == ["held"] and [i.key for i in report.protected] == ["named"]
    assert held.is_dir() and kept.is_dir()
    report = prune(root, max_size=0, histories=[history], include_history=True, now=NOW)
    assert sorted(i.key for i in report.removed) == ["held", "named"]


def test_an_entry_held_by_another_process_is_kept(tmp_path: Path) -> None:
    """The lock is a real flock of another process (a running A/B), not this object's bookkeeping."""
    root = tmp_path / "cache"
    entry(root, "kbuild", "busy", 1, 30.0)
    lock = root / "kbuild" / ".busy.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_SH); "
        "print('held', flush=True); time.sleep(30)"), str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        report = prune(root, max_size=0, now=NOW)
        assert [i.key for i in report.held] == ["busy"] and (root / "kbuild" / "busy").is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert [i.key for i in prune(root, max_size=0, now=NOW).removed] == ["busy"]
    with open(tmp_path / "x.lock", "a+") as f:  # flock works on this filesystem at all
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_the_automatic_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cache"
    entry(root, "kbuild", "a", 3, 2.0)
    entry(root, "kbuild", "b", 3, 1.0)
    monkeypatch.setenv("PVEOI_CACHE_MAX", "off")
    assert auto_cap(root) is None
    monkeypatch.setenv("PVEOI_CACHE_MAX", "4M")
    report = auto_cap(root)
    assert report is not None and [i.key for i in report.removed] == ["a"]
    monkeypatch.setenv("PVEOI_CACHE_MAX", "lots")
    with pytest.raises(ConfigError):
        auto_cap(root)
    assert time.time() > 0


def test_a_build_dirs_size_is_remembered_until_its_next_build(tmp_path: Path) -> None:
    from e2e.build.cachegc import build_dir_size, tree_size

    tree = tmp_path / "kbuild" / "abc"
    (tree / "out").mkdir(parents=True)
    (tree / "out" / "vmlinux.o").write_bytes(b"x" * 100_000)
    (tree / "state").write_text("idle\n")
    first = build_dir_size(tree)
    assert first == tree_size(tree) and (tmp_path / "kbuild" / ".abc.size").is_file()
    (tree / "out" / "more.o").write_bytes(b"y" * 100_000)  # no build marked it: the remembered size stands
    assert build_dir_size(tree) == first
    os.utime(tree / "state", ns=(1, 2))  # the next build rewrites its state
    assert build_dir_size(tree) == tree_size(tree) > first


def test_a_running_abs_logs_are_kept_and_its_lock_goes_with_them(tmp_path: Path) -> None:
    """An A/B holds its logs directory and run log (cli/ab.py through Cache.hold): a prune down to nothing
    leaves them while held, takes them (and their lock files) afterwards; logs nobody held go as before."""
    from e2e.build.cache import Cache

    root = tmp_path / "cache"
    logs = root / "logs"
    (logs / "ab-20261207-101500").mkdir(parents=True)
    (logs / "ab-20261207-101500" / "timer-on-0-console.log").write_text("x" * 5000)
    (logs / "pveoi-20261207-101500-4242.log").write_text("y" * 5000)
    (logs / "pveoi-20261201-000000-1.log").write_text("old" * 2000)
    held = [logs / "ab-20261207-101500", logs / "pveoi-20261207-101500-4242.log"]
    with Cache(root).hold(held):
        report = prune(root, max_size=0, now=NOW)
        assert sorted(i.key for i in report.held) == sorted(p.name for p in held)
        assert all(p.exists() for p in held) and not (logs / "pveoi-20261201-000000-1.log").exists()
    report = prune(root, max_size=0, now=NOW)
    assert sorted(i.key for i in report.removed) == sorted(p.name for p in held)
    assert list(logs.iterdir()) == []  # no lock file left behind
