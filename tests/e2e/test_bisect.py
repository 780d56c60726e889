"""``pveoi bisect`` on a small git repository over Debian's kernel source: four commits, one of
which plants tests/fixtures/broken-pv-eoi; the bisection must name it, with incremental builds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kvm, pytest.mark.slow, pytest.mark.timeout(7200)]

REPO = Path(__file__).resolve().parents[2]
DEBIAN_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")


def sh(cwd: Path, *argv: str) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def commit(tree: Path, message: str) -> str:
    sh(tree, "git", "add", "-A")
    sh(tree, "git", "-c", "user.name=pveoi", "-c", "user.email=pveoi@localhost", "commit", "-q", "-m", message)
    return sh(tree, "git", "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def kernel_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    if not DEBIAN_SOURCE.is_file():
        pytest.fail(f"{DEBIAN_SOURCE} is missing: run host_config/install-deps.sh (linux-source-6.1)")
    root = tmp_path_factory.mktemp("bisect")
    with tarfile.open(DEBIAN_SOURCE) as tar:
        tar.extractall(root, filter="data")
    tree = root / "linux-source-6.1"
    sh(tree, "git", "init", "-q")
    (tree / ".gitignore").unlink(missing_ok=True)  # Debian's tree ignores /*: track everything
    for patch in sorted((REPO / "guest_patches" / "6.1").glob("0*.patch")):
        sh(tree, "patch", "-p1", "-s", "-i", str(patch))
    revs = [commit(tree, "base: Debian 6.1 with pveoi's guest patches")]
    (tree / "Documentation" / "pveoi-note.txt").write_text("a harmless change\n")
    revs.append(commit(tree, "docs: a harmless change"))
    sh(tree, "patch", "-p1", "-s", "-i", str(REPO / "tests/fixtures/broken-pv-eoi/0003-broken-pv-eoi.patch"))
    revs.append(commit(tree, "x86/kvm: write every other EOI natively (the planted regression)"))
    (tree / "Documentation" / "pveoi-note.txt").write_text("another harmless change\n")
    revs.append(commit(tree, "docs: another harmless change"))
    yield tree, revs
    shutil.rmtree(root, ignore_errors=True)


def test_bisect_finds_the_planted_commit(kernel_repo: tuple[Path, list[str]], tmp_path: Path) -> None:
    tree, revs = kernel_repo
    history = tmp_path / "history"
    proc = subprocess.run([sys.executable, "-m", "e2e.cli", "bisect", "--source", str(tree), "--good", revs[0],
                           "--bad", revs[-1], "--workload", "timer", "--runs", "2", "--history", str(history)],
                          cwd=REPO, capture_output=True, text=True, timeout=7000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"first bad commit: {revs[2]} x86/kvm: write every other EOI natively" in proc.stdout
    assert len(list(history.glob("*.json"))) >= 2  # the good revision and at least one step
    assert sh(tree, "git", "rev-parse", "HEAD") == revs[-1], "the user's checkout moved"
    assert "pveoi" not in sh(tree, "git", "worktree", "list")
