"""Fault matrix, file side, with real processes in temp dirs: corrupt cache entries
(flipped bytes), temp dirs of a SIGKILLed pveoi, concurrent history writers.
A full disk (a tiny tmpfs mounted for the test): tests/e2e/test_faults_disk.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.build.cache import MANIFEST, Cache, atomic_write, remove_dead_temps
from e2e.build.image import IMAGE_KIND, load_image
from e2e.build.kentry import check_kernel_file
from e2e.errors import ConfigError, PveoiError
from e2e.util import hostid, tmpdirs
from tests.helpers.bzimage import bzimage_bytes

REPO = Path(__file__).resolve().parents[2]


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, f"not one line: {text!r}"
    assert "; fix: " in text, f"no fix named: {text!r}"
    return text


STUCK_WRITER = """
import os, sys, time
from pathlib import Path
from e2e.build.cache import atomic_write
os.fsync = lambda fd: (print("writing", flush=True), time.sleep(600))  # hold the write open: the kill lands mid-write
atomic_write(Path(sys.argv[1]), "x" * 100000)
"""


def test_sigkill_mid_write_leaves_no_partial_file_after_the_next_write(tmp_path: Path) -> None:
    hist = tmp_path / "history"
    hist.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", STUCK_WRITER, str(hist / "run-1.json")], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        writer.kill()
        writer.wait()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    left = os.listdir(hist)
    prefix = f".run-1.json.{hostid.host_identity().tag}.{writer.pid}."
    assert len(left) == 1 and left[0].startswith(prefix) and left[0].endswith(".tmp"), left
    assert not (hist / "run-1.json").exists(), "a killed write never shows under the final name"
    atomic_write(hist / "run-2.json", "{}\n")  # the next write into that dir removes the dead writer's temp
    assert os.listdir(hist) == ["run-2.json"]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_dead_writer_temps_are_removed_only_when_written_here(tmp_path: Path) -> None:
    """A shared history dir: a pid dead here may be a live writer in another host or container."""
    me, pid = hostid.host_identity(), dead_pid()
    assert me.complete, "this test expects a readable boot id and pid namespace"
    other_ns = hostid.HostIdentity(me.node, me.boot_id, (me.pid_ns or 0) + 1).tag  # a container, same host name
    other_boot = hostid.HostIdentity(me.node, "another-boot", me.pid_ns).tag
    names = {
        "mine": f".b.json.{me.tag}.{pid}.abc.tmp",
        "live": f".c.json.{me.tag}.{os.getpid()}.abc.tmp",
        "other host": f".a.json.otherhost-deadbeef.{pid}.abc.tmp",
        "other pid namespace": f".e.json.{other_ns}.{pid}.abc.tmp",
        "other boot": f".f.json.{other_boot}.{pid}.abc.tmp",
        "no host tag": f".d.json.{pid}.abc.tmp",  # an older pveoi's: cannot tell where it was written
    }
    for name in names.values():
        (tmp_path / name).write_text("partial")
    assert remove_dead_temps(tmp_path) == [tmp_path / names["mine"]]
    assert sorted(os.listdir(tmp_path)) == sorted(n for k, n in names.items() if k != "mine")


def test_without_a_pid_namespace_only_old_dead_temps_are_removed(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostid, "pid_namespace", lambda: None)
    me = hostid.host_identity()
    assert not me.complete
    temp = tmp_path / f".run.json.{me.tag}.{dead_pid()}.abc.tmp"
    temp.write_text("partial")
    assert remove_dead_temps(tmp_path) == [], "a young temp of an ambiguous pid is kept"
    old = time.time() - hostid.STALE_AGE - 60
    os.utime(temp, (old, old))
    assert remove_dead_temps(tmp_path) == [temp]


STUCK_BUILD = """
import sys, time
from pathlib import Path
from e2e.build.cache import Cache
cache = Cache(Path(sys.argv[1]))
with cache.lock("kernels", "k"), cache.staging("kernels", "k") as staged:
    (staged / "bzImage").write_bytes(b"half")
    print(staged, flush=True)
    time.sleep(600)
"""


def test_sigkilled_build_staging_dir_is_removed_by_the_next_build_of_the_key(tmp_path: Path) -> None:
    builder = subprocess.Popen([sys.executable, "-c", STUCK_BUILD, str(tmp_path)], stdout=subprocess.PIPE,
                               text=True, cwd=REPO)
    try:
        assert builder.stdout is not None
        staged = Path(builder.stdout.readline().strip())
        builder.kill()
        builder.wait()
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait()
    me = hostid.host_identity()
    assert staged.is_dir() and staged.name.startswith(f".k.{me.tag}.{builder.pid}."), staged
    kernels = tmp_path / "kernels"
    kept = [kernels / f".k.{me.tag}.{os.getpid()}.live.tmp",  # a build still running
            kernels / f".k.otherhost-deadbeef.{builder.pid}.abc.tmp",  # another host's, in a shared cache
            kernels / f".k2.{me.tag}.{builder.pid}.abc.tmp"]  # another key's: reaped under that key's lock
    for path in kept:
        path.mkdir()
    cache = Cache(tmp_path)
    with cache.lock("kernels", "k"), cache.staging("kernels", "k") as new:
        assert not staged.exists(), "the killed build's staging dir is removed"
        assert all(p.is_dir() for p in kept)
        assert new.name.startswith(f".k.{me.tag}.{os.getpid()}.")
    with cache.staging("kernels", "k2"):  # without the lock held: taken for the reaping
        assert not kept[2].exists()
    assert kept[0].is_dir() and kept[1].is_dir()


# ---------------------------------------------------------------- corrupt cache entries


def publish(cache: Cache, kind: str, name: str, data: bytes, key: str = "k1") -> Path:
    with cache.staging(kind, key) as staged:
        (staged / name).write_bytes(data)
        entry = cache.publish(kind, key, staged, [name], {"kind": "test"})
    return entry.path


def flip(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_cache_entry_is_detected_named_and_discarded_for_rebuild(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    cache = Cache(tmp_path)
    entry = publish(cache, "kernels", "bzImage", os.urandom(4096))
    assert cache.lookup("kernels", "k1") is not None
    flip(entry / "bzImage")
    assert cache.lookup("kernels", "k1") is None
    assert f"{entry / 'bzImage'} is corrupt" in caplog.text and "rebuilt" in caplog.text
    assert not entry.exists(), "the damaged entry must go so the next build replaces it"


def test_corrupt_image_entry_named_by_the_user_is_an_error_naming_it_and_kept(tmp_path: Path) -> None:
    entry = publish(Cache(tmp_path), IMAGE_KIND, "initrd.img", os.urandom(4096))
    flip(entry / "initrd.img")
    with pytest.raises(ConfigError) as err:
        load_image(entry)
    text = one_line(err.value)
    assert f"cache entry {entry} is damaged" in text and "is corrupt" in text
    assert f"rm -r {entry}" in text and "pveoi image build --force" in text
    assert (entry / "initrd.img").is_file(), "an entry the user named is never deleted behind their back"
    (entry / MANIFEST).write_text("{not json")
    with pytest.raises(ConfigError, match=r"unreadable manifest\.json"):
        load_image(entry)


def test_corrupt_kernel_entry_named_by_the_user_is_an_error(tmp_path: Path) -> None:
    entry = publish(Cache(tmp_path), "kernels", "bzImage", bzimage_bytes(payload=os.urandom(4096)))
    assert check_kernel_file(entry / "bzImage") == entry / "bzImage"
    flip(entry / "bzImage", 0x1000)  # in the payload: still a bzImage, but not the one recorded
    with pytest.raises(ConfigError) as err:
        check_kernel_file(entry / "bzImage")
    assert "pveoi kernel build --force" in one_line(err.value) and str(entry) in str(err.value)
    own = tmp_path / "mine" / "bzImage"  # a kernel of the user's own, not in a cache entry
    own.parent.mkdir()
    own.write_bytes(bzimage_bytes())
    assert check_kernel_file(own) == own
    with pytest.raises(ConfigError, match="not found"):
        check_kernel_file(tmp_path / "nope")


# ---------------------------------------------------------------- temp dirs of a killed pveoi


HOLDER = ("import sys, time; from e2e.util.tmpdirs import mkdtemp; print(mkdtemp(sys.argv[1]), flush=True); "
          "time.sleep(600)")


def test_sigkilled_owner_dir_is_reaped_live_ones_never(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    holders = [subprocess.Popen([sys.executable, "-c", HOLDER, kind], stdout=subprocess.PIPE, text=True, env=env,
                                cwd=REPO) for kind in ("vm", "ab")]
    try:
        dirs = [Path(p.stdout.readline().strip()) for p in holders if p.stdout]
        assert all(d.is_dir() and d.name.startswith(f"pveoi-{k}-{p.pid}-")
                   for d, k, p in zip(dirs, ("vm", "ab"), holders, strict=True))
        foreign = tmp_path / "pveoi-vm-1-foreign"  # no owner file: not ours to judge
        foreign.mkdir()
        assert tmpdirs.reap_stale(tmp_path) == [], "a live owner's dir was reaped"
        os.kill(holders[0].pid, signal.SIGKILL)
        holders[0].wait()
        assert dirs[0].is_dir(), "SIGKILL left it behind (the fault being reaped)"
        assert tmpdirs.reap_stale(tmp_path) == [dirs[0]]
        assert not dirs[0].exists() and dirs[1].is_dir() and foreign.is_dir()
    finally:
        for p in holders:
            p.kill()
            p.wait()


def test_reaping_skips_zombies_alive_other_boots_and_the_virtual_host(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    zombie = subprocess.Popen(["true"])  # exited, not yet reaped: its pid cannot be reused
    deadline = time.monotonic() + 10
    while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)

    def owned(pid: int, **extra: object) -> Path:
        path = tmpdirs.mkdtemp("vm", tmp_path)
        owner = {**json.loads((path / tmpdirs.OWNER_FILE).read_text()), "pid": pid, **extra}
        (path / tmpdirs.OWNER_FILE).write_text(json.dumps(owner))
        return path

    gone, undead, other_boot = owned(dead.pid), owned(zombie.pid), owned(dead.pid, boot_id="another-boot")
    monkeypatch.setenv("PVEOI_IN_VHOST", "1")
    assert tmpdirs.reap_stale(tmp_path) == []
    monkeypatch.delenv("PVEOI_IN_VHOST")
    assert sorted(tmpdirs.reap_stale(tmp_path)) == sorted([gone, undead])
    assert other_boot.is_dir()
    zombie.wait()


def test_reaping_needs_the_same_host_and_pid_namespace(tmp_path: Path) -> None:
    """Containers sharing /tmp share the boot id, not the pid namespace; an owner file of
    an older pveoi records neither: none of those dirs is reaped, only the one made here."""
    pid = dead_pid()

    def owned(**extra: object) -> Path:
        path = tmpdirs.mkdtemp("vm", tmp_path)
        owner = {**json.loads((path / tmpdirs.OWNER_FILE).read_text()), "pid": pid, **extra}
        owner = {k: v for k, v in owner.items() if v is not None}
        (path / tmpdirs.OWNER_FILE).write_text(json.dumps(owner))
        return path

    here = owned()
    me = hostid.host_identity()
    others = [owned(host="another-host"), owned(pid_ns=(me.pid_ns or 0) + 1),
              owned(host=None, pid_ns=None)]  # None: the key is left out (an older owner file)
    assert json.loads((here / tmpdirs.OWNER_FILE).read_text())["host"] == os.uname().nodename
    assert tmpdirs.reap_stale(tmp_path) == [here]
    assert all(p.is_dir() for p in others)


def test_without_a_pid_namespace_only_old_dirs_are_reaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostid, "pid_namespace", lambda: None)
    path = tmpdirs.mkdtemp("vm", tmp_path)
    owner_file = path / tmpdirs.OWNER_FILE
    owner_file.write_text(json.dumps({**json.loads(owner_file.read_text()), "pid": dead_pid()}))
    assert tmpdirs.reap_stale(tmp_path) == []
    old = time.time() - hostid.STALE_AGE - 60
    os.utime(owner_file, (old, old))
    assert tmpdirs.reap_stale(tmp_path) == [path]


def test_mkdtemp_owner_file_write_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(PveoiError, match="is full"):
        tmpdirs.mkdtemp("vm", tmp_path)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- two runs at once


WRITER = """
import sys
from pathlib import Path
from e2e.report import results
from e2e.model.result import Result
for i in range(25):
    doc = Result(verdict="pass", created="2026-11-26T00:00:00Z", host={"writer": sys.argv[2], "i": i})
    results.emit(doc, None, Path(sys.argv[1]))
"""


def test_two_runs_writing_one_history_never_clash(tmp_path: Path) -> None:
    hist = tmp_path / "history"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(hist), str(n)], cwd=REPO) for n in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    names = sorted(os.listdir(hist))
    assert len(names) == 50 and all(n.endswith(".json") for n in names), "a clash or a temp file"
    docs = [json.loads((hist / n).read_text()) for n in names]
    written = sorted((d["host"]["writer"], d["host"]["i"]) for d in docs)
    assert written == sorted((w, i) for w in "12" for i in range(25))


