"""Incremental kernel builds: the persistent tree's key, rsync syncing with fresh mtimes,
the killed-build rule, ccache (e2e.build.kbuild), and make's argv. Real rsync and ccache."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from e2e.build import kbuild
from e2e.build.cache import Cache
from e2e.build.kbuild import BuildTree, build_tree, making, rsync_argv, sync_tree, tree_key, written_files
from e2e.build.kernel import make_argv
from e2e.errors import BuildError

HAVE_RSYNC = shutil.which("rsync") is not None
HAVE_CCACHE = shutil.which("ccache") is not None


def test_make_argv_with_ccache() -> None:
    assert make_argv(Path("/src"), Path("/b"), ["bzImage"], jobs=2, cc="ccache gcc") == [
        "make", "-C", "/src", "O=/b", "-j2", "CC=ccache gcc", "bzImage"]
    assert make_argv(Path("/src"), Path("/b"), ["bzImage"], jobs=2) == ["make", "-C", "/src", "O=/b", "-j2", "bzImage"]


def test_tree_key_follows_path_and_config_not_content() -> None:
    base = tree_key("tree", Path("/home/me/linux"), "CONFIG_X=y\n")
    assert base == tree_key("tree", Path("/home/me/linux"), "CONFIG_X=y\n")
    others = {tree_key("tree", Path("/home/me/linux2"), "CONFIG_X=y\n"),
              tree_key("tree", Path("/home/me/linux"), "CONFIG_X=n\n"),
              tree_key("debian", Path("/home/me/linux"), "CONFIG_X=y\n")}
    assert base not in others and len(others) == 3


def test_rsync_argv() -> None:
    assert rsync_argv(Path("/a"), Path("/b"), (".git",)) == [
        "rsync", "-a", "--no-times", "--checksum", "--delete", "--itemize-changes", "--out-format=%i %n",
        "--exclude=.git", "/a/", "/b/"]


def test_written_files_from_itemized_output() -> None:
    out = (">f+++++++++ arch/x86/kernel/kvm.c\n"
           ">f.st...... Makefile\n"
           "cd+++++++++ drivers/new/\n"
           "cL+++++++++ link -> target\n"
           "*deleting   gone.c\n"
           ".d..t...... arch/\n")
    assert written_files(out) == ["arch/x86/kernel/kvm.c", "Makefile"]


@pytest.mark.skipif(not HAVE_RSYNC, reason="rsync not installed")
def test_sync_tree_gives_written_files_a_fresh_mtime_and_leaves_the_rest(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "arch" / "x86").mkdir(parents=True)
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    for name, text in (("Makefile", "all:\n"), ("arch/x86/kvm.c", "int a;\n"), ("gone.c", "x\n"),
                       ("built.o", "obj")):
        (src / name).write_text(text)
        os.utime(src / name, (1_000_000_000, 1_000_000_000))  # 2001: older than any object
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in src.rglob("*") if p.is_file()}

    first = sync_tree(src, dest)
    assert sorted(first) == ["Makefile", "arch/x86/kvm.c", "gone.c"]  # not .git, not objects
    assert not (dest / ".git").exists() and not (dest / "built.o").exists()
    assert all((dest / n).stat().st_mtime > 1_500_000_000 for n in first)

    kept = (dest / "Makefile").stat().st_mtime_ns
    # The user reverts kvm.c to an older version of the same size: rsync sees the mtime change.
    (src / "arch/x86/kvm.c").write_text("int b;\n")
    os.utime(src / "arch/x86/kvm.c", (900_000_000, 900_000_000))
    (src / "gone.c").unlink()
    assert sync_tree(src, dest) == ["arch/x86/kvm.c"]
    assert (dest / "arch/x86/kvm.c").read_text() == "int b;\n"
    assert (dest / "arch/x86/kvm.c").stat().st_mtime > 1_500_000_000  # newer than the objects, though older in src
    assert (dest / "Makefile").stat().st_mtime_ns == kept  # unchanged: not touched, not rebuilt
    assert not (dest / "gone.c").exists()
    assert sync_tree(src, dest) == []
    # the source is never written
    del snapshot[src / "gone.c"]
    snapshot[src / "arch/x86/kvm.c"] = ((src / "arch/x86/kvm.c").read_bytes(),
                                        (src / "arch/x86/kvm.c").stat().st_mtime_ns)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in src.rglob("*") if p.is_file()} == snapshot


@pytest.mark.skipif(not HAVE_RSYNC, reason="rsync not installed")
def test_after_the_first_sync_changes_are_found_by_the_sources_stat_not_by_reading_both_sides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "arch" / "x86").mkdir(parents=True)
    (src / "arch/x86/kvm.c").write_text("int a;\n")
    (src / "Kconfig").write_text("config A\n")
    (src / "link").symlink_to("Kconfig")
    assert sync_tree(src, dest) == ["Kconfig", "arch/x86/kvm.c"]  # the first one: rsync
    assert (tmp_path / "dest.synced").is_file()
    # from here on no rsync is run (none is found), and no unchanged file is read or written
    monkeypatch.setattr(kbuild.shutil, "which", lambda _name: None)
    kept = (dest / "Kconfig").stat().st_mtime_ns
    (src / "arch/x86/kvm.c").write_text("int a; int b;\n")
    (src / "new.c").write_text("n\n")
    (src / "link").unlink()
    (src / "link").symlink_to("new.c")
    assert sync_tree(src, dest) == ["arch/x86/kvm.c", "new.c"]
    assert (dest / "arch/x86/kvm.c").read_text() == "int a; int b;\n" and (dest / "new.c").read_text() == "n\n"
    assert os.readlink(dest / "link") == "new.c" and (dest / "Kconfig").stat().st_mtime_ns == kept
    # a file a patch changed in the copy, and one a patch created there, are restored / removed on request
    (dest / "arch/x86/kvm.c").write_text("patched\n")
    (dest / "created-by-patch.c").write_text("p\n")
    assert sync_tree(src, dest, always=["arch/x86/kvm.c", "created-by-patch.c"]) == ["arch/x86/kvm.c"]
    assert (dest / "arch/x86/kvm.c").read_text() == "int a; int b;\n" and not (dest / "created-by-patch.c").exists()
    # a file that became a directory
    (src / "new.c").unlink()
    (src / "new.c").mkdir()
    (src / "new.c" / "inner.c").write_text("i\n")
    assert sync_tree(src, dest) == ["new.c/inner.c"]
    assert (dest / "new.c" / "inner.c").read_text() == "i\n"


@pytest.mark.skipif(not HAVE_RSYNC, reason="rsync not installed")
def test_a_copy_recorded_from_another_source_is_synced_by_content_again(tmp_path: Path) -> None:
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    for tree, text in ((a, "a\n"), (b, "b\n")):
        tree.mkdir()
        (tree / "f.c").write_text(text)
        os.utime(tree / "f.c", (1_000_000_000, 1_000_000_000))  # same size, same mtime: only content differs
    sync_tree(a, dest)
    assert sync_tree(b, dest) == ["f.c"] and (dest / "f.c").read_text() == "b\n"


@pytest.mark.skipif(not HAVE_RSYNC, reason="rsync not installed")
def test_sync_tree_failure_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"^rsync .*/missing -> .* failed: "):
        sync_tree(tmp_path / "missing", tmp_path / "dest")


def test_a_build_killed_while_make_ran_starts_clean(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with build_tree(cache, "t1") as bt:
        assert bt.root == tmp_path / "kbuild" / "t1" and bt.out.is_dir() and not bt.reused()
        (bt.out / ".config").write_text("CONFIG_X=y\n")
        with making(bt):
            assert bt.state.read_text() == "building\n"
        assert bt.state.read_text() == "idle\n"
    with build_tree(cache, "t1") as bt:
        assert bt.reused()
        with pytest.raises(BuildError), making(bt):
            raise BuildError("make bzImage failed (make exit 2)")
        assert bt.state.read_text() == "idle\n"  # make cleans up after itself: keep the objects
    with build_tree(cache, "t1") as bt:
        assert bt.reused()
        with pytest.raises(KeyboardInterrupt), making(bt):
            raise KeyboardInterrupt  # make was killed: objects may be half written
        assert bt.state.read_text() == "building\n"
    with build_tree(cache, "t1") as bt:
        assert not bt.reused() and bt.out.is_dir() and list(bt.out.iterdir()) == []


def test_src_holds_only_a_finished_sync(tmp_path: Path) -> None:
    bt = BuildTree(tmp_path)
    assert not bt.src_holds("s1")
    bt.src.mkdir()
    bt.stamp.write_text("s1")
    assert bt.src_holds("s1") and not bt.src_holds("s2")


def test_without_ccache_the_default_compiler_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kbuild.shutil, "which", lambda name: None)
    comp = kbuild.compiler(tmp_path)
    assert comp.cc is None and not comp.uses_ccache and kbuild.ccache_stats(comp) == {}


@pytest.mark.skipif(not HAVE_CCACHE or shutil.which("gcc") is None, reason="ccache or gcc not installed")
def test_ccache_compiles_from_its_cache_the_second_time(tmp_path: Path) -> None:
    comp = kbuild.compiler(tmp_path / "cache")
    assert comp.cc == "ccache gcc" and comp.env["CCACHE_DIR"] == str(tmp_path / "cache" / "ccache")
    src = tmp_path / "kvm.c"
    src.write_text("int pveoi(int x) { return x * 3 + 1; }\n")
    env = dict(os.environ, **comp.env)
    for out in ("a.o", "b.o"):
        subprocess.run([*comp.cc.split(), "-O2", "-c", "-o", str(tmp_path / out), str(src)], env=env, check=True)
    stats = kbuild.ccache_stats(comp)
    assert stats["cache_miss"] == 1 and stats["direct_cache_hit"] + stats["preprocessed_cache_hit"] == 1
    assert (tmp_path / "a.o").read_bytes() == (tmp_path / "b.o").read_bytes()


def test_config_inputs_follow_kconfig_files_config_fragments_and_the_compiler_not_sources(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    for rel, text in (("Makefile", "VERSION = 6\n"), ("Kconfig", "source arch/Kconfig\n"),
                      ("arch/x86/Kconfig", "config X86\n"), ("arch/x86/configs/tiny.config", "CONFIG_X=y\n"),
                      ("kernel/configs/kvm_guest.config", "CONFIG_KVM_GUEST=y\n"),
                      ("scripts/kconfig/conf.c", "int main;\n"), ("arch/x86/kernel/kvm.c", "int a;\n"),
                      (".git/Kconfig", "not the tree's\n")):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    base = kbuild.config_inputs(tree, "CONFIG_A=y\n", "gcc 12")
    assert base == kbuild.config_inputs(tree, "CONFIG_A=y\n", "gcc 12")
    (tree / "arch/x86/kernel/kvm.c").write_text("int a; int b;\n")  # a source edit: config unchanged
    (tree / ".git/Kconfig").write_text("history\n")
    assert kbuild.config_inputs(tree, "CONFIG_A=y\n", "gcc 12") == base
    assert kbuild.config_inputs(tree, "CONFIG_A=n\n", "gcc 12") != base
    assert kbuild.config_inputs(tree, "CONFIG_A=y\n", "gcc 13") != base
    for rel in ("arch/x86/Kconfig", "arch/x86/configs/tiny.config", "kernel/configs/kvm_guest.config",
                "scripts/kconfig/conf.c", "Makefile"):
        before = kbuild.config_inputs(tree, "CONFIG_A=y\n", "gcc 12")
        (tree / rel).write_text((tree / rel).read_text() + "# changed\n")
        assert kbuild.config_inputs(tree, "CONFIG_A=y\n", "gcc 12") != before, rel
