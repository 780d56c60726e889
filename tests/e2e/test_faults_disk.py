"""Fault matrix, a full disk: a tiny tmpfs mounted for each test (root only; unmounted after it)
under results, the cache and builds. Each write fails with one line naming the disk and the
fix, and leaves no partial file or temp dir. Mounting is host state, so these live in tests/e2e."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.build.cache import Cache, atomic_write
from e2e.errors import PveoiError
from e2e.model.result import Result
from e2e.report import results
from e2e.util import tmpdirs
from tests.helpers.bzimage import bzimage_bytes
from tests.helpers.terminal import clean_stderr_lines

REPO = Path(__file__).resolve().parents[2]


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, f"not one line: {text!r}"
    assert "; fix: " in text, f"no fix named: {text!r}"
    return text


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``where`` (root only), always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_disk_full_atomic_write_names_the_disk_and_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "tiny") as tiny:
        target = tiny / "ab.json"
        atomic_write(target, "old\n")
        with pytest.raises(PveoiError) as err:
            atomic_write(target, "x" * (256 << 10))
        text = one_line(err.value)
        assert f"the filesystem at {tiny} is full" in text and f"free space on {tiny}" in text
        assert isinstance(err.value.__cause__, OSError)
        assert sorted(os.listdir(tiny)) == ["ab.json"], "a temp file was left behind"
        assert target.read_text() == "old\n"


def test_disk_full_history_gets_no_partial_result(tmp_path: Path) -> None:
    doc = Result(verdict="pass", created="2026-11-26T00:00:00Z", reason="x" * (256 << 10))
    with tiny_tmpfs(tmp_path / "tiny") as tiny:
        with pytest.raises(PveoiError, match="is full"):
            results.emit(doc, tiny / "ab.json", tiny / "history")
        with pytest.raises(PveoiError, match="is full"):
            results.emit(doc, None, tiny / "history")
        assert not (tiny / "ab.json").exists()
        assert os.listdir(tiny / "history") == [], "a partial history file was left behind"


def test_disk_full_while_publishing_a_cache_entry(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "tiny") as tiny:
        cache = Cache(tiny)
        with pytest.raises(PveoiError) as err, cache.lock("kernels", "k"), cache.staging("kernels", "k") as staged:
            (staged / "bzImage").write_bytes(os.urandom(256 << 10))
            cache.publish("kernels", "k", staged, ["bzImage"], {"kind": "test"})
        assert "is full" in one_line(err.value)
        assert sorted(os.listdir(tiny / "kernels")) == [".k.lock"], "a half-written entry was left"
        assert cache.lookup("kernels", "k") is None


def test_mkdtemp_on_a_full_disk_names_it_and_leaves_nothing(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "tiny", size="8k") as tiny:
        with contextlib.suppress(OSError), open(tiny / "filler", "wb") as f:
            while True:
                f.write(b"x" * 1024)
                f.flush()
        with pytest.raises(PveoiError) as err:
            tmpdirs.mkdtemp("vm", tiny)
        text = one_line(err.value)
        assert f"the filesystem at {tiny} is full" in text, text
        assert os.listdir(tiny) == ["filler"], "a temp dir without owner file was left behind"


def pveoi_cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "e2e.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "PVEOI_CACHE": str(cache)})


def assert_disk_full_line(proc: subprocess.CompletedProcess[str], disk: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    line = clean_stderr_lines(proc.stderr)[-1]
    assert line.startswith("pveoi: error: cannot write ") and f"the filesystem at {disk} is full" in line, line
    assert line.endswith(f"; fix: free space on {disk} or write the file somewhere else"), line


def leftovers(cache: Path) -> list[str]:
    """Anything in the cache but locks, the SSH key and empty kind dirs."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if not p.name.endswith(".lock") and p.parent.name != "ssh" and p.name != "ssh"
                  and not (p.is_dir() and p.parent == cache))


def test_disk_full_cli_kernel_fetch_into_the_cache(tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"  # a well-formed bzImage of 256 KiB: more than the disk holds
    kernel.write_bytes(bzimage_bytes(payload=os.urandom(256 << 10), version=None))
    with tiny_tmpfs(tmp_path / "tiny") as tiny:
        proc = pveoi_cli("kernel", "fetch", "--path", str(kernel), cache=tiny)
        assert_disk_full_line(proc, tiny)
        assert leftovers(tiny) == [], "a half-written cache entry was left"


def test_disk_full_cli_image_build_into_the_cache(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "tiny", size="4m") as tiny:  # room for the SSH key, not the image
        proc = pveoi_cli("image", "build", cache=tiny)
        assert_disk_full_line(proc, tiny)
        assert leftovers(tiny) == [], "a half-written cache entry was left"

