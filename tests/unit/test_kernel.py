"""Unit tests for the pure parts of e2e.build.kernel, .kconfig and .bases: config fragments, the patch series,
make's argv, the build cache key, and the bzImage header checks.

The tests marked ``slow`` run the real ``patch`` on a broken patch in a temp
tree. The real ``guest_patches/`` series against Debian's linux-source-6.1 and
the headers of cached real kernels are tested in tests/e2e/test_kernel_build.py
(they need the host's source package and the kernel cache).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from e2e.build.bases import (
    BASES,
    DEFAULT_BASE,
    Patch,
    apply_patches,
    base_for_version,
    base_named,
    load_series,
    parse_series,
    tree_version,
)
from e2e.build.kconfig import merge_fragments, missing_options, parse_config_fragment, render_fragment
from e2e.build.kernel import BuildSpec, KernelSource, default_spec, make_argv
from e2e.errors import BuildError, ConfigError

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- config fragments


def test_parse_config_fragment() -> None:
    text = """
# a comment
CONFIG_KVM_GUEST=y
CONFIG_HZ=1000
CONFIG_CMDLINE="console=ttyS0 quiet"

# CONFIG_MODULES is not set
  CONFIG_SMP=y \t
CONFIG_DEBUG_FS=n
"""
    assert parse_config_fragment(text) == {
        "CONFIG_KVM_GUEST": "y",
        "CONFIG_HZ": "1000",
        "CONFIG_CMDLINE": '"console=ttyS0 quiet"',
        "CONFIG_MODULES": "n",
        "CONFIG_SMP": "y",
        "CONFIG_DEBUG_FS": "n",
    }


def test_parse_config_fragment_last_assignment_wins() -> None:
    assert parse_config_fragment("CONFIG_A=y\n# CONFIG_A is not set\n") == {"CONFIG_A": "n"}
    assert parse_config_fragment("# CONFIG_A is not set\nCONFIG_A=m\n") == {"CONFIG_A": "m"}


def test_parse_config_fragment_empty() -> None:
    assert parse_config_fragment("") == {}
    assert parse_config_fragment("# only comments\n\n") == {}


@pytest.mark.parametrize("line", ["MODULES=y", "CONFIG_FOO", "CONFIG FOO=y", "y"])
def test_parse_config_fragment_rejects_junk(line: str) -> None:
    with pytest.raises(ConfigError, match=r"frag\.config:3: not a Kconfig line") as info:
        parse_config_fragment(f"CONFIG_A=y\n\n{line}\n", origin="frag.config")
    assert "CONFIG_FOO=y" in str(info.value)  # the fix shows the syntax


@pytest.mark.parametrize("name", ["guest.config", "host.config"])
def test_repo_fragments_parse(name: str) -> None:
    path = REPO / "images" / "kernel" / name
    options = parse_config_fragment(path.read_text(), str(path))
    assert options, f"{path} sets nothing"
    assert all(sym.startswith("CONFIG_") for sym in options)


def test_guest_fragment_enables_what_the_measurement_needs() -> None:
    options = parse_config_fragment((REPO / "images" / "kernel" / "guest.config").read_text())
    # The guest patch's counters live in kvm.c (KVM_GUEST) and show up in debugfs.
    assert options.get("CONFIG_KVM_GUEST") == "y"
    assert options.get("CONFIG_DEBUG_FS") == "y"


def test_merge_fragments_later_wins_and_inputs_untouched() -> None:
    a = {"CONFIG_A": "y", "CONFIG_B": "y"}
    b = {"CONFIG_B": "n", "CONFIG_C": "m"}
    assert merge_fragments([a, b]) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "m"}
    assert merge_fragments([b, a])["CONFIG_B"] == "y"
    assert a == {"CONFIG_A": "y", "CONFIG_B": "y"}
    assert merge_fragments([]) == {}


def test_render_fragment_sorted_and_unset_syntax() -> None:
    text = render_fragment({"CONFIG_Z": "y", "CONFIG_A": "n", "CONFIG_M": '"x y"'})
    assert text == '# CONFIG_A is not set\nCONFIG_M="x y"\nCONFIG_Z=y\n'


def test_render_fragment_is_order_independent_and_round_trips() -> None:
    options = {"CONFIG_B": "y", "CONFIG_A": "n", "CONFIG_HZ": "250", "CONFIG_S": '"a"'}
    reordered = dict(reversed(list(options.items())))
    assert render_fragment(options) == render_fragment(reordered)
    assert parse_config_fragment(render_fragment(options)) == options


def test_missing_options() -> None:
    requested = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"ttyS0"', "CONFIG_D": "y",
                 "CONFIG_E": "m"}
    final = {"CONFIG_A": "y", "CONFIG_C": "ttyS0", "CONFIG_E": "y"}
    # B=n is satisfied by absence; C's quotes are ignored; D is absent; E differs.
    assert missing_options(requested, final) == ["CONFIG_D=y (got n)", "CONFIG_E=m (got y)"]
    assert missing_options({}, final) == []
    assert missing_options({"CONFIG_B": "n"}, {"CONFIG_B": "y"}) == ["CONFIG_B=n (got y)"]


# ---------------------------------------------------------------- series


def test_parse_series() -> None:
    text = """# header comment
0001-first.patch

0002-second.patch -p1   # trailing comment
   0003-third.patch
"""
    assert parse_series(text) == ["0001-first.patch", "0002-second.patch", "0003-third.patch"]
    assert parse_series("") == []


@pytest.mark.parametrize("opt", ["-p0", "-p2", "-R"])
def test_parse_series_rejects_other_options(opt: str) -> None:
    with pytest.raises(ConfigError, match=f"unsupported option '{opt}' for 0001.patch"):
        parse_series(f"0001.patch {opt}\n")


@pytest.mark.parametrize("base", sorted(BASES))
def test_load_series_real_guest_patches(base: str) -> None:
    series_dir = REPO / "guest_patches" / base
    assert BASES[base].series_dir == series_dir
    patches = load_series(series_dir)
    names = [p.name for p in patches]
    assert names == parse_series((series_dir / "series").read_text())
    assert names == sorted(names), "the series is applied in its numbered order"
    assert len(names) == 3, "counters, no-kvm-pv-eoi, window markers"
    for p in patches:
        assert p.path == series_dir / p.name
        assert p.path.is_file()


def test_every_series_dir_is_a_base() -> None:
    """A guest_patches/<dir> is a base pveoi knows (else nothing would ever pick it)."""
    dirs = sorted(d.name for d in (REPO / "guest_patches").iterdir() if d.is_dir())
    assert dirs == sorted(BASES)
    assert DEFAULT_BASE in BASES


@pytest.mark.parametrize(("version", "base"), [
    ("6.1.0", "6.1"), ("6.1.192", "6.1"), ("6.6.60", "6.1"), ("6.11.11", "6.1"), ("6.12.0", "6.12"),
    ("6.12.95", "6.12"), ("6.18.1", "6.12"), ("7.0.0", "6.12"),
])
def test_base_for_version_is_the_newest_not_above(version: str, base: str) -> None:
    assert base_for_version(version).name == base


def test_a_tree_older_than_every_base_is_refused_naming_the_way_out() -> None:
    with pytest.raises(ConfigError, match=r"Linux 5\.15\.0 is older than every base") as err:
        base_for_version("5.15.0")
    assert "--patches" in (err.value.fix or "") and "--no-patches" in (err.value.fix or "")


@pytest.mark.parametrize("name", ["6.6", "6", "latest", "", "6.12 "])
def test_base_named(name: str) -> None:
    if name.strip() in BASES:
        assert base_named(name).name == name.strip()
        return
    with pytest.raises(ConfigError, match="unknown kernel base") as err:
        base_named(name)
    assert "--base 6.1" in (err.value.fix or "")


def test_base_named_default() -> None:
    assert base_named(None).name == DEFAULT_BASE
    b = base_named("6.12")
    assert (b.package, b.tarball, b.version) == ("linux-source-6.12", Path("/usr/src/linux-source-6.12.tar.xz"),
                                                  (6, 12))


@pytest.mark.parametrize(("makefile", "version"), [
    ("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 95\nEXTRAVERSION =\n", "6.12.95"),
    ("# SPDX\nVERSION = 7\nPATCHLEVEL = 0\nSUBLEVEL = 0\nEXTRAVERSION = -rc3\n", "7.0.0"),
    ("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL =\n", "6.1.0"),
])
def test_tree_version(tmp_path: Path, makefile: str, version: str) -> None:
    (tmp_path / "Makefile").write_text(makefile)
    assert tree_version(tmp_path) == version


def test_tree_version_without_one(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("all:\n\ttrue\n")
    with pytest.raises(ConfigError, match="names no kernel version"):
        tree_version(tmp_path)


def test_default_spec_picks_the_trees_series(tmp_path: Path) -> None:
    """--source picks the series of the newest base not above the tree; --base overrides; pveoi's own
    series is named so a failure to apply says whose it is."""
    tree = make_source(tmp_path)
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 14\nSUBLEVEL = 2\n")
    spec = default_spec("guest", source=tree)
    assert spec.base == "6.12" and spec.series == "pveoi's 6.12 series"
    assert [p.path.parent for p in spec.patches] == [BASES["6.12"].series_dir] * 3
    spec = default_spec("guest", source=tree, base="6.1")
    assert spec.base == "6.1" and spec.patches[0].path.parent == BASES["6.1"].series_dir
    own = tmp_path / "own"
    own.mkdir()
    (own / "series").write_text("")
    assert default_spec("guest", source=tree, patches_dir=own).series is None
    assert default_spec("guest", source=tree, with_patches=False).patches == ()
    assert default_spec("host", source=tree).patches == ()
    (tree / "Makefile").write_text("VERSION = 5\nPATCHLEVEL = 10\nSUBLEVEL = 0\n")
    with pytest.raises(ConfigError, match="older than every base"):
        default_spec("guest", source=tree)


def test_pveois_own_series_that_does_not_apply_names_the_ways_out(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "file.c").write_text("int a;\n")
    patch = tmp_path / "0001-x.patch"
    patch.write_text("--- a/src/file.c\n+++ b/src/file.c\n@@ -1 +1 @@\n-int b;\n+int c;\n")
    with pytest.raises(BuildError, match=r"pveoi's 6\.12 series does not apply to this tree: 0001-x\.patch") as err:
        apply_patches(tree, [Patch("0001-x.patch", patch)], "pveoi's 6.12 series")
    assert "--patches DIR" in (err.value.fix or "") and "--no-patches" in (err.value.fix or "")


def test_load_series_missing_series(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no series file"):
        load_series(tmp_path)


def test_load_series_missing_patch(tmp_path: Path) -> None:
    (tmp_path / "series").write_text("0001-here.patch\n0002-gone.patch\n")
    (tmp_path / "0001-here.patch").write_text("")
    with pytest.raises(ConfigError, match=r"0002-gone\.patch"):
        load_series(tmp_path)


# ---------------------------------------------------------------- apply_patches

ORIGINAL = "".join(f"line {i}\n" for i in range(1, 21))

GOOD_PATCH = """\
Subject: [PATCH] change line 2

--- a/src/file.c
+++ b/src/file.c
@@ -1,4 +1,4 @@
 line 1
-line 2
+LINE TWO
 line 3
 line 4
"""

# Hunk 1 is fine; in hunk 2 the context line "line 17" reads "no such line".
# GNU patch's default fuzz would apply it anyway; pveoi's patches must match.
BROKEN_PATCH = """\
Subject: [PATCH] broken on purpose

--- a/src/file.c
+++ b/src/file.c
@@ -3,7 +3,7 @@
 line 3
 line 4
 line 5
-line 6
+LINE SIX
 line 7
 line 8
 line 9
@@ -11,7 +11,7 @@
 line 11
 line 12
 line 13
-line 14
+LINE FOURTEEN
 line 15
 line 16
 no such line
"""


def make_tree(root: Path) -> Path:
    (root / "tree" / "src").mkdir(parents=True)
    (root / "tree" / "src" / "file.c").write_text(ORIGINAL)
    return root / "tree"


def write_patch(root: Path, name: str, text: str) -> Patch:
    path = root / name
    path.write_text(text)
    return Patch(name, path)


def test_apply_patches_good_patch(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    apply_patches(tree, [write_patch(tmp_path, "0001-good.patch", GOOD_PATCH)])
    assert (tree / "src" / "file.c").read_text() == ORIGINAL.replace("line 2\n", "LINE TWO\n")
    assert sorted(p.name for p in (tree / "src").iterdir()) == ["file.c"], "no .orig/.rej left"


def test_apply_patches_nothing_to_do(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    apply_patches(tree, [])
    assert (tree / "src" / "file.c").read_text() == ORIGINAL


def test_apply_patches_broken_patch_names_patch_and_hunk(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    good = write_patch(tmp_path, "0001-good.patch", GOOD_PATCH)
    broken = write_patch(tmp_path, "0002-broken.patch", BROKEN_PATCH)
    with pytest.raises(BuildError) as info:
        apply_patches(tree, [good, broken])
    message = str(info.value)
    assert "patch 0002-broken.patch does not apply" in message
    assert "0001-good.patch" not in message
    assert "patching file src/file.c" in message
    assert "Hunk #2 FAILED at 11" in message
    assert "Hunk #1" not in message
    assert info.value.fix is not None and str(broken.path) in info.value.fix
    assert sorted(p.name for p in (tree / "src").iterdir()) == ["file.c"], "no .orig/.rej left"


def test_apply_patches_missing_file_and_reapplied(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    elsewhere = write_patch(tmp_path, "0001-elsewhere.patch",
                            GOOD_PATCH.replace("src/file.c", "src/other.c"))
    with pytest.raises(BuildError, match=r"0001-elsewhere\.patch does not apply: can't find file"):
        apply_patches(tree, [elsewhere])
    good = write_patch(tmp_path, "0001-good.patch", GOOD_PATCH)
    apply_patches(tree, [good])
    with pytest.raises(BuildError, match=r"0001-good\.patch does not apply.*Reversed"):
        apply_patches(tree, [good])


# ---------------------------------------------------------------- make argv


def test_make_argv() -> None:
    assert make_argv(Path("/src"), Path("/b"), ["tinyconfig"]) == [
        "make", "-C", "/src", "O=/b", "-j1", "tinyconfig"]
    assert make_argv(Path("/src"), Path("/b"), ["bzImage", "modules"], jobs=8) == [
        "make", "-C", "/src", "O=/b", "-j8", "bzImage", "modules"]
    assert make_argv(Path("/src"), Path("/b"), []) == ["make", "-C", "/src", "O=/b", "-j1"]


# ---------------------------------------------------------------- BuildSpec.key


def make_source(root: Path) -> Path:
    tree = root / "linux"
    (tree / "arch" / "x86" / "kernel").mkdir(parents=True)
    (tree / "Makefile").write_text("VERSION = 6\n")
    (tree / "arch" / "x86" / "kernel" / "kvm.c").write_text("int x;\n")
    return tree


def test_kernel_source_tree_rejects_non_trees(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a Linux source tree"):
        KernelSource.tree(tmp_path)
    src = KernelSource.tree(make_source(tmp_path))
    assert src.kind == "tree"
    assert src.path == tmp_path / "linux"


def test_build_spec_key_sensitivity(tmp_path: Path) -> None:
    tree = make_source(tmp_path)
    source = KernelSource.tree(tree)
    frag = tmp_path / "extra.config"
    frag.write_text("CONFIG_HZ_1000=y\n")
    p1 = write_patch(tmp_path, "0001-a.patch", GOOD_PATCH)
    base = BuildSpec(source, (p1,), (frag,), jobs=2)
    key = base.key()
    assert len(key) == 24
    assert int(key, 16) >= 0

    # Same inputs, same key; jobs is not an input of the result.
    assert BuildSpec(source, (p1,), (frag,), jobs=2).key() == key
    assert BuildSpec(source, (p1,), (frag,), jobs=7).key() == key

    seen = {key}

    def changed(spec: BuildSpec, why: str) -> None:
        k = spec.key()
        assert k not in seen, f"key did not change when {why}"
        seen.add(k)

    changed(BuildSpec(source, (), (frag,)), "the patches were dropped")
    changed(BuildSpec(source, (p1,), ()), "the fragment was dropped")
    p1_renamed = Patch("0001-b.patch", p1.path)
    changed(BuildSpec(source, (p1_renamed,), (frag,)), "a patch was renamed")
    p2 = write_patch(tmp_path, "0002-b.patch", BROKEN_PATCH)
    changed(BuildSpec(source, (p1, p2), (frag,)), "a patch was added")
    changed(BuildSpec(source, (p2, p1), (frag,)), "the patch order changed")

    p1.path.write_text(GOOD_PATCH.replace("LINE TWO", "LINE 2"))
    changed(base, "a patch's content changed")
    frag.write_text("CONFIG_HZ_1000=y\nCONFIG_HZ=1000\n")
    changed(base, "the fragment's content changed")
    (tree / "arch" / "x86" / "kernel" / "kvm.c").write_text("int x, y;\n")
    changed(base, "a source file changed")
    (tree / "arch" / "x86" / "kernel" / "new.c").write_text("int z;\n")
    changed(base, "a source file was added")

    # Editing a fragment back to an equivalent rendering gives the same key.
    k = base.key()
    frag.write_text("CONFIG_HZ=1000\n# comment\nCONFIG_HZ_1000=y\n")
    assert base.key() == k


def test_build_spec_missing_fragment(tmp_path: Path) -> None:
    source = KernelSource.tree(make_source(tmp_path))
    spec = BuildSpec(source, (), (tmp_path / "nope.config",))
    with pytest.raises(ConfigError, match=r"nope\.config not found"):
        spec.key()


def test_default_spec_unknown_role(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown kernel role 'fat'"):
        default_spec("fat", source=make_source(tmp_path))


def test_every_build_gets_the_guest_and_the_host_fragment(tmp_path: Path) -> None:
    """One config for both jobs: what a guest needs, then what the virtual host adds."""
    source = KernelSource.tree(make_source(tmp_path))
    guest = parse_config_fragment((REPO / "images" / "kernel" / "guest.config").read_text())
    host = parse_config_fragment((REPO / "images" / "kernel" / "host.config").read_text())
    assert BuildSpec(source).requested_options() == {**guest, **host}
    assert {"CONFIG_KVM_AMD", "CONFIG_9P_FS", "CONFIG_VIRTIO_NET", "CONFIG_DEBUG_FS"} <= set(
        BuildSpec(source).requested_options())


def test_pveois_own_kernel_is_one_build_for_guest_and_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's source of a base: both roles get the base's series, so they are one spec (one key, one
    build); a tree or a series of the user's still differs by role as documented."""
    from e2e.build import kernel as kernel_mod
    from e2e.build.bases import base_named

    tarball = tmp_path / "linux-source.tar.xz"
    tarball.write_bytes(b"not really")
    monkeypatch.setattr(kernel_mod.KernelSource, "debian",
                        classmethod(lambda cls, base=None: cls("debian", tarball, base_named(base).name)))
    for base in ("6.1", "6.12"):
        guest, host = default_spec("guest", base=base), default_spec("host", base=base)
        assert host == guest and host.series == f"pveoi's {base} series" and len(host.patches) == 3
    assert default_spec("host", base="6.1") != default_spec("host", base="6.12")
    own = tmp_path / "own"
    own.mkdir()
    (own / "series").write_text("")
    assert default_spec("host", patches_dir=own).patches == () and default_spec("host", patches_dir=own).series is None
    assert default_spec("host", with_patches=False).patches == ()


# ---------------------------------------------------------------- the private source copy of incremental builds


def user_tree(root: Path) -> Path:
    """A directory KernelSource.tree accepts, with src/file.c for the patches above."""
    tree = make_tree(root)
    (tree / "Makefile").write_text("all:\n")
    (tree / "arch" / "x86").mkdir(parents=True)
    return tree


def tree_snapshot(tree: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(tree)): (p.read_bytes(), p.stat().st_mtime_ns) for p in tree.rglob("*") if p.is_file()}


def test_source_tree_syncs_patches_and_reuses_the_private_copy(tmp_path: Path) -> None:
    from e2e.build import kbuild
    from e2e.build.cache import Cache
    from e2e.build.kernel import BuildSpec, KernelSource, _source_tree
    from e2e.util.progress import Progress

    tree = user_tree(tmp_path)
    (tree / "other.c").write_text("int other;\n")
    patch = write_patch(tmp_path, "0001-good.patch", GOOD_PATCH)
    spec = BuildSpec(KernelSource.tree(tree), (patch,))
    progress = Progress("test")
    patched = ORIGINAL.replace("line 2\n", "LINE TWO\n")
    with kbuild.build_tree(Cache(tmp_path / "cache"), "t") as bt:
        src = _source_tree(spec, "id-1", bt, tmp_path, progress)
        assert src == bt.src and (src / "src" / "file.c").read_text() == patched
        synced = tree_snapshot(src)
        # Same identity and patches: the copy is used as it is (nothing rewritten, so nothing rebuilt).
        assert _source_tree(spec, "id-1", bt, tmp_path, progress) == src and tree_snapshot(src) == synced
        # The user edits other.c: only it (and the re-patched file) is rewritten.
        before = tree_snapshot(tree)
        (tree / "other.c").write_text("int other = 1;\n")
        os.utime(tree / "other.c", (1_000_000_000, 1_000_000_000))  # even with an old mtime
        edited = tree_snapshot(tree)
        assert _source_tree(spec, "id-2", bt, tmp_path, progress) == src
        now = tree_snapshot(src)
        assert now["other.c"][0] == b"int other = 1;\n" and now["other.c"][1] > synced["other.c"][1]
        assert now["Makefile"] == synced["Makefile"]  # unchanged: untouched
        assert now["src/file.c"][0] == patched.encode()
        # Without patches, make reads the user's tree itself (O= builds write nothing there).
        assert _source_tree(BuildSpec(spec.source, ()), "id-2", bt, tmp_path, progress) == tree
    assert tree_snapshot(tree) == edited and before != edited, "the user's tree was modified by pveoi"


def test_debian_source_is_unpacked_into_the_private_copy_once(tmp_path: Path) -> None:
    from e2e.build import kbuild
    from e2e.build.cache import Cache
    from e2e.build.kernel import BuildSpec, KernelSource, _source_tree
    from e2e.util.progress import Progress

    top = tmp_path / "pkg" / "linux-source-6.1"
    (top / "src").mkdir(parents=True)
    (top / "src" / "file.c").write_text(ORIGINAL)
    (top / "Makefile").write_text("all:\n")
    tarball = tmp_path / "linux-source-6.1.tar.xz"
    subprocess.run(["tar", "-cJf", str(tarball), "-C", str(tmp_path / "pkg"), "linux-source-6.1"], check=True)
    patch = write_patch(tmp_path, "0001-good.patch", GOOD_PATCH)
    spec = BuildSpec(KernelSource("debian", tarball), (patch,))
    progress = Progress("test")
    work = tmp_path / "work"
    work.mkdir()
    with kbuild.build_tree(Cache(tmp_path / "cache"), "d") as bt:
        (bt.out / "stale.o").write_text("from another copy")
        src = _source_tree(spec, "deb-1", bt, work, progress)
        assert src == bt.src and (src / "src" / "file.c").read_text() == ORIGINAL.replace("line 2\n", "LINE TWO\n")
        assert not (bt.out / "stale.o").exists(), "objects of another copy must not survive a fresh unpack"
        # no unpack left over
        assert sorted(p.name for p in bt.root.iterdir()) == ["out", "src", "src.patched", "src.stamp"]
        makefile = (src / "Makefile").stat().st_mtime_ns
        # A new package version: unpacked beside, synced by content; unchanged files keep their mtimes.
        assert _source_tree(spec, "deb-2", bt, work, progress) == src
        assert (src / "Makefile").stat().st_mtime_ns == makefile
        assert (src / "src" / "file.c").read_text() == ORIGINAL.replace("line 2\n", "LINE TWO\n")


def test_a_host_series_goes_on_the_host_base_of_the_stock_arms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pveoi ab --host-base 6.12 --host-patches DIR`: the host under test is Debian's 6.12 with DIR, the
    base the stock arms' host kernel is built from (it was 6.1's, whatever --host-base said)."""
    import argparse

    from e2e.build import kernel as kernel_mod
    from e2e.build.bases import base_named
    from e2e.cli import ab

    tarballs = {b: tmp_path / f"linux-source-{b}.tar.xz" for b in ("6.1", "6.12")}
    for t in tarballs.values():
        t.write_bytes(b"not really")
    monkeypatch.setattr(kernel_mod.KernelSource, "debian", classmethod(
        lambda cls, base=None: cls("debian", tarballs[base_named(base).name], base_named(base).name)))
    own = tmp_path / "my-kvm-series"
    own.mkdir()
    (own / "series").write_text("")
    parser = argparse.ArgumentParser()
    ab.add_parser(parser.add_subparsers())
    for argv, base in ((["--host-base", "6.12"], "6.12"), ([], "6.1")):
        opts = ab.AbOptions.from_args(parser.parse_args(["ab", "--host-patches", str(own), *argv]))
        spec, origin = ab.host_under_test_spec(opts)
        assert spec.base == base and spec.source.path == tarballs[base] and spec.patches == ()
        assert origin["host_patches"] == str(own) and origin.get("host_base") == (argv[1] if argv else None)
