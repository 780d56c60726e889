"""Benchmark: a kernel developer's loop, from a one-line edit of ``arch/x86/kernel/kvm.c`` to the verdict.

Not collected by pytest (no ``test_`` prefix). Run:

    python tests/bench_edit_loop.py --prepare ~/linux-6.1    # once: Debian's linux-source-6.1 as a git
                                                              # tree, built once by pveoi (the warm state)
    python tests/bench_edit_loop.py --tree ~/linux-6.1        # the loop: edit, pveoi ab --source, revert
    python tests/bench_edit_loop.py --tree ~/linux-6.1 -- --reps-per-boot 3 --overlap-boots

The loop appends one function to ``arch/x86/kernel/kvm.c`` (a new cache entry: the source changed, so
the kernel is rebuilt incrementally), runs ``pveoi ab --source TREE --workload timer --runs 3`` plus any
options after ``--``, reverts the edit (``git checkout``) and prints one JSON line: the wall time, the
rebuild's share (the kernel manifest's ``build_seconds``), the verdict. Goal (issue 25): at most 120 s.
Each run's edit is different (a counter in the function's name), so no run is a cache hit of an earlier
one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
EDITED = "arch/x86/kernel/kvm.c"
GIT = ["git", "-c", "user.name=pveoi-bench", "-c", "user.email=pveoi-bench@localhost", "-c", "gc.auto=0"]
REPO = Path(__file__).resolve().parents[1]


def pveoi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "e2e.cli", *args], cwd=REPO, capture_output=True, text=True,
                          check=False)


def prepare(tree: Path) -> dict[str, object]:
    """Debian's 6.1 source as a git tree at ``tree``, and pveoi's guest build of it (the warm state)."""
    if not TARBALL.is_file():
        raise SystemExit(f"{TARBALL} not found; fix: apt-get install linux-source-6.1")
    if tree.exists():
        raise SystemExit(f"{tree} exists; fix: pass a new directory, or --tree {tree} to run the loop")
    start = time.monotonic()
    tree.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tree.parent) as tmp:
        subprocess.run(["tar", "-xJf", str(TARBALL), "-C", tmp], check=True)
        Path(tmp, "linux-source-6.1").rename(tree)
    subprocess.run([*GIT, "init", "-q"], cwd=tree, check=True)
    subprocess.run([*GIT, "add", "-A", "--force"], cwd=tree, check=True)  # Debian's .gitignore ignores /*
    subprocess.run([*GIT, "commit", "-q", "-m", "linux-source-6.1"], cwd=tree, check=True)
    built = pveoi("-q", "kernel", "build", "--source", str(tree), "--json")
    if built.returncode != 0:
        raise SystemExit(f"the first build failed (exit {built.returncode}): {built.stderr.strip()[-2000:]}")
    return {"phase": "prepared", "tree": str(tree), "seconds": round(time.monotonic() - start, 1)}


def loop(tree: Path, extra: list[str]) -> dict[str, object]:
    """One edit -> verdict, then the edit reverted."""
    if not (tree / EDITED).is_file():
        raise SystemExit(f"{tree} is no kernel tree; fix: python tests/bench_edit_loop.py --prepare {tree}")
    with tempfile.TemporaryDirectory(prefix="pveoi-bench-loop-") as tmp:
        out = Path(tmp) / "result.json"
        stamp = time.time_ns()
        with open(tree / EDITED, "a") as f:
            f.write(f"\nstatic int __maybe_unused pveoi_bench_{stamp}(int x)\n{{\n\treturn x * 3 + 1;\n}}\n")
        try:
            start = time.monotonic()
            proc = pveoi("ab", "--source", str(tree), "--workload", "timer", "--runs", "3", "--json", str(out),
                         *extra)
            seconds = time.monotonic() - start
        finally:
            subprocess.run([*GIT, "checkout", "-q", "--", EDITED], cwd=tree, check=True)
        doc = json.loads(out.read_text()) if out.is_file() else {}
    kernel = doc.get("kernel") or {}
    return {"phase": "edit-to-verdict", "seconds": round(seconds, 1), "exit": proc.returncode,
            "verdict": doc.get("verdict"), "rebuild_seconds": kernel.get("build_seconds"),
            "rebuild_stages": kernel.get("stages"),
            "options": extra, "goal_seconds": 120,
            **({"stderr": proc.stderr.strip()[-500:]} if proc.returncode not in (0, 1) else {})}


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", type=Path, metavar="DIR", help="make the tree and build it once")
    parser.add_argument("--tree", type=Path, metavar="DIR", help="run the loop on this tree")
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.prepare:
        print(json.dumps(prepare(args.prepare.expanduser().absolute())), flush=True)
    if args.tree:
        print(json.dumps(loop(args.tree.expanduser().absolute(), extra)), flush=True)
    if not (args.prepare or args.tree):
        parser.error("pass --prepare DIR or --tree DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
