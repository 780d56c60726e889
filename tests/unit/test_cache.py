"""Unit tests for e2e.build.cache: root selection, hashing, atomic writes, and the
content-addressed entries (publish, lookup, corruption detection, locking)."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from e2e.build.cache import (
    MANIFEST,
    Built,
    Cache,
    CacheEntry,
    atomic_write,
    cache_root,
    content_hash,
    sha256_file,
    sha256_tree,
)
from e2e.errors import ConfigError

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

# ---------------------------------------------------------------- cache_root


def test_cache_root_prefers_pveoi_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PVEOI_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "mine"


def test_cache_root_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PVEOI_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "pveoi"


def test_cache_root_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PVEOI_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "pveoi"


def test_cache_root_empty_vars_fall_through(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PVEOI_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "pveoi"


def test_cache_root_is_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PVEOI_CACHE", "relative/dir")
    assert cache_root() == tmp_path / "relative" / "dir"
    assert Cache().root == tmp_path / "relative" / "dir"


# ---------------------------------------------------------------- hashes


def test_sha256_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "empty") == EMPTY_SHA256
    assert sha256_file(tmp_path / "abc") == ABC_SHA256


def test_sha256_tree_names_and_contents(tmp_path: Path) -> None:
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "x").write_text("1")
    (a / "sub" / "y").write_text("2")
    first = sha256_tree(a)
    assert sha256_tree(a) == first
    (a / "x").write_text("3")
    assert sha256_tree(a) != first
    (a / "x").write_text("1")
    assert sha256_tree(a) == first
    (a / "x").rename(a / "z")
    assert sha256_tree(a) != first


def test_content_hash_is_unambiguous() -> None:
    assert content_hash(["ab", "c"]) != content_hash(["a", "bc"])
    assert content_hash(["abc"]) != content_hash(["ab", "c"])
    assert content_hash(["x"]) == content_hash([b"x"])
    assert content_hash([]) != content_hash([""])
    assert len(content_hash(["x"])) == 64


# ---------------------------------------------------------------- atomic_write


def test_atomic_write_creates_parents_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "f.json"
    atomic_write(path, "hello\n")
    assert path.read_text() == "hello\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    atomic_write(path, b"\x00\x01", mode=0o600)
    assert path.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["f.json"], "no temp file left behind"


def test_atomic_write_replaces_never_truncates(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, "old")
    with open(path) as reader:  # a reader that opened the old file keeps reading it whole
        atomic_write(path, "new contents")
        assert reader.read() == "old"
    assert path.read_text() == "new contents"


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, "old")
    with pytest.raises(TypeError):
        atomic_write(path, 12345)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f"]


# ---------------------------------------------------------------- entries


def publish(cache: Cache, key: str = "k1", files: dict[str, bytes] | None = None,
            manifest: dict[str, object] | None = None, kind: str = "kernels") -> CacheEntry:
    files = {"bzImage": b"kernel bytes", "config": b"CONFIG_X=y\n"} if files is None else files
    with cache.staging(kind, key) as staged:
        for name, data in files.items():
            (staged / name).write_bytes(data)
        entry = cache.publish(kind, key, staged, list(files), manifest or {"kind": "test"})
    return entry


def test_publish_and_lookup(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    entry = publish(cache, manifest={"kind": "test", "release": "6.1"})
    assert entry.path == tmp_path / "c" / "kernels" / "k1"
    assert entry.file("bzImage").read_bytes() == b"kernel bytes"
    assert entry.manifest["files"] == {
        "bzImage": sha256_file(entry.file("bzImage")),
        "config": sha256_file(entry.file("config")),
    }
    on_disk = json.loads((entry.path / MANIFEST).read_text())
    assert on_disk == dict(entry.manifest)
    assert on_disk["release"] == "6.1"

    hit = cache.lookup("kernels", "k1")
    assert hit is not None
    assert hit == entry
    # The staging dir is gone; only the entry and the kind dir remain.
    assert sorted(p.name for p in (tmp_path / "c" / "kernels").iterdir()) == ["k1"]


def test_staging_is_removed_when_not_published(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with pytest.raises(RuntimeError), cache.staging("kernels", "k") as staged:
        (staged / "half").write_text("x")
        raise RuntimeError("build failed")
    assert not staged.exists()
    assert cache.lookup("kernels", "k") is None
    assert list((tmp_path / "kernels").iterdir()) == []


def test_lookup_missing(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    assert cache.lookup("kernels", "nothing") is None
    assert cache.lookup("no-such-kind", "nothing") is None


def test_publish_replaces_an_existing_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    publish(cache, files={"a": b"1", "stale": b"s"})
    entry = publish(cache, files={"a": b"2"})
    assert entry.file("a").read_bytes() == b"2"
    assert not entry.file("stale").exists()
    hit = cache.lookup("kernels", "k1")
    assert hit is not None and set(hit.manifest["files"]) == {"a"}


def test_lookup_detects_a_corrupt_file(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = publish(cache)
    entry.file("bzImage").write_bytes(b"kernel bytez")  # same size, different content
    assert cache.lookup("kernels", "k1", verify=False) is not None, "verify=False trusts the files"
    assert cache.lookup("kernels", "k1") is None
    assert not entry.path.exists(), "a corrupt entry is discarded"


def test_lookup_detects_a_missing_file(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = publish(cache)
    entry.file("config").unlink()
    assert cache.lookup("kernels", "k1") is None
    assert not entry.path.exists()


def test_lookup_discards_an_entry_without_manifest(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    half = tmp_path / "kernels" / "k1"
    half.mkdir(parents=True)
    (half / "bzImage").write_bytes(b"half written")
    assert cache.lookup("kernels", "k1") is None
    assert not half.exists()


@pytest.mark.parametrize(
    "manifest",
    ['{"files": {"bzImage": ', "not json", "[]", '"a string"', "{}", '{"files": ["bzImage"]}',
     '{"files": "bzImage"}', '{"files": 3}'],
)
def test_lookup_discards_an_unreadable_manifest(tmp_path: Path, manifest: str) -> None:
    cache = Cache(tmp_path)
    entry = publish(cache)
    (entry.path / MANIFEST).write_text(manifest)
    assert cache.lookup("kernels", "k1") is None
    assert not entry.path.exists()


def test_kinds_and_keys_are_separate(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    publish(cache, key="k1", files={"f": b"kernel"}, kind="kernels")
    publish(cache, key="k1", files={"f": b"image"}, kind="images")
    publish(cache, key="k2", files={"f": b"other"}, kind="kernels")
    a, b, c = (cache.lookup(kind, key) for kind, key in
               (("kernels", "k1"), ("images", "k1"), ("kernels", "k2")))
    assert a is not None and b is not None and c is not None
    assert {a.file("f").read_bytes(), b.file("f").read_bytes(), c.file("f").read_bytes()} == {
        b"kernel", b"image", b"other"}


def test_unwritable_root_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = Cache(blocker / "cache")
    with (pytest.raises(ConfigError, match="cannot create cache directory") as info,
          cache.staging("kernels", "k")):
        pass
    assert "PVEOI_CACHE" in str(info.value)


def test_lock_is_exclusive(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    lock_file = tmp_path / "kernels" / ".k1.lock"
    with cache.lock("kernels", "k1"):
        # Another open file description, as another pveoi process would have.
        with open(lock_file) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with (cache.lock("kernels", "k2"), open(tmp_path / "kernels" / ".k2.lock") as k2,
              pytest.raises(BlockingIOError)):
            fcntl.flock(k2.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock_file) as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------- get_or_build


def _writer(content: bytes, calls: list[Path]) -> Callable[[Path], Built]:
    def build(staged: Path) -> Built:
        calls.append(staged)
        (staged / "blob").write_bytes(content)
        return Built(("blob",), {"what": content.decode()})
    return build


def test_get_or_build_builds_once_then_hits(tmp_path: Path) -> None:
    cache = Cache(root=tmp_path)
    calls: list[Path] = []
    entry = cache.get_or_build("things", "k1", _writer(b"one", calls))
    assert entry.path == tmp_path / "things" / "k1" and (entry.path / "blob").read_bytes() == b"one"
    assert entry.manifest["what"] == "one" and entry.manifest["files"]["blob"] == sha256_file(entry.path / "blob")
    assert len(calls) == 1 and calls[0].parent == tmp_path / "things" and calls[0].name.startswith(".k1.")
    assert cache.get_or_build("things", "k1", _writer(b"two", calls)) == entry  # a hit: not rebuilt
    assert len(calls) == 1
    forced = cache.get_or_build("things", "k1", _writer(b"two", calls), force=True)
    assert len(calls) == 2 and (forced.path / "blob").read_bytes() == b"two"
    assert sorted(p.name for p in (tmp_path / "things").iterdir()) == [".k1.lock", "k1"]  # no staging left


def test_get_or_build_rebuilds_a_corrupt_entry(tmp_path: Path) -> None:
    cache = Cache(root=tmp_path)
    calls: list[Path] = []
    entry = cache.get_or_build("things", "k", _writer(b"good", calls))
    (entry.path / "blob").write_bytes(b"evil")
    again = cache.get_or_build("things", "k", _writer(b"good", calls))
    assert len(calls) == 2 and (again.path / "blob").read_bytes() == b"good"


def test_a_failed_build_publishes_nothing_and_leaves_no_staging(tmp_path: Path) -> None:
    cache = Cache(root=tmp_path)

    def broken(staged: Path) -> Built:
        (staged / "half").write_bytes(b"x")
        raise ConfigError("the build broke", fix="mend it")

    with pytest.raises(ConfigError, match="the build broke"):
        cache.get_or_build("things", "k", broken)
    assert cache.lookup("things", "k") is None
    assert [p.name for p in (tmp_path / "things").iterdir()] == [".k.lock"]


def test_get_or_build_waits_for_a_concurrent_build_and_uses_it(tmp_path: Path) -> None:
    """The second caller blocks on the key's lock, then finds the first one's entry (no second build)."""
    first, second = Cache(root=tmp_path), Cache(root=tmp_path)
    started, release = threading.Event(), threading.Event()
    results: dict[str, CacheEntry] = {}

    def slow(staged: Path) -> Built:
        started.set()
        assert release.wait(30)
        (staged / "blob").write_bytes(b"first")
        return Built(("blob",), {})

    def must_not_build(staged: Path) -> Built:
        raise AssertionError("built twice")

    a = threading.Thread(target=lambda: results.update(a=first.get_or_build("things", "k", slow)))
    a.start()
    assert started.wait(30)
    b = threading.Thread(target=lambda: results.update(b=second.get_or_build("things", "k", must_not_build)))
    b.start()
    b.join(0.3)
    assert b.is_alive(), "the second caller must wait for the lock"
    release.set()
    a.join(30)
    b.join(30)
    assert results["a"].path == results["b"].path and (results["b"].path / "blob").read_bytes() == b"first"
