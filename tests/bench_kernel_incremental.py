"""Benchmark: a cold guest-kernel build of a user tree, then the rebuild after a one-file change.

Not collected by pytest (no ``test_`` prefix): speed goals belong here, not in
timed assertions. Builds kernels (about 4-5 min cold on 2 cores); do not run it
beside another kernel build. Run:

    python tests/bench_kernel_incremental.py             # a fresh temporary cache: cold ccache
    python tests/bench_kernel_incremental.py --cache     # the normal cache (its ccache may be warm)

Steps: unpack Debian's linux-source-6.1 into a temporary git tree; ``pveoi
kernel build --source TREE --role guest`` (cold: new build dir, guest
patches applied to the private copy); add a line of code to
arch/x86/kernel/kvm.c; build again (a new cache entry: the source changed;
the build dir and ccache are reused); revert the change and build again (the
first entry, a cache hit). Prints one JSON line with the three times.
Goal: the rebuild after the one-file change in <= 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
EDITED = "arch/x86/kernel/kvm.c"
EDIT = "\nstatic int __maybe_unused pveoi_bench_marker(int x)\n{\n\treturn x * 3 + 1;\n}\n"
GIT = ["git", "-c", "user.name=pveoi-bench", "-c", "user.email=pveoi-bench@localhost", "-c", "gc.auto=0"]


def build(tree: Path, env: dict[str, str]) -> dict[str, object]:
    """Time one ``pveoi kernel build --source TREE --role guest --json``."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "e2e.cli", "-q", "kernel", "build", "--source", str(tree),
                           "--role", "guest", "--json"], env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"kernel build failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    manifest = json.loads(proc.stdout)
    return {"seconds": round(seconds, 1), "hash": manifest.get("hash"),
            "incremental": manifest.get("incremental")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", action="store_true", help="use the normal cache instead of a fresh one")
    args = parser.parse_args()
    if not TARBALL.is_file():
        raise SystemExit(f"{TARBALL} not found; fix: apt-get install linux-source-6.1")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    with tempfile.TemporaryDirectory(prefix="pveoi-bench-kernel-") as tmp:
        work = Path(tmp)
        if not args.cache:
            env["PVEOI_CACHE"] = str(work / "cache")
        start = time.monotonic()
        subprocess.run(["tar", "-xJf", str(TARBALL), "-C", str(work)], check=True)
        tree = work / "linux-source-6.1"
        subprocess.run([*GIT, "init", "-q"], cwd=tree, check=True)
        subprocess.run([*GIT, "add", "-A", "--force"], cwd=tree, check=True)  # Debian's .gitignore ignores /*
        subprocess.run([*GIT, "commit", "-q", "-m", "linux-source-6.1"], cwd=tree, check=True)
        setup = round(time.monotonic() - start, 1)

        cold = build(tree, env)
        with open(tree / EDITED, "a") as f:
            f.write(EDIT)
        rebuild = build(tree, env)
        subprocess.run([*GIT, "checkout", "-q", "--", EDITED], cwd=tree, check=True)
        back = build(tree, env)
        status = subprocess.run([*GIT, "status", "--porcelain"], cwd=tree, capture_output=True, text=True,
                                check=True).stdout
        result = {
            "bench": "kernel_incremental", "cpus": os.cpu_count(), "setup_seconds": setup,
            "cold_seconds": cold["seconds"], "one_file_rebuild_seconds": rebuild["seconds"],
            "reverted_seconds": back["seconds"], "goal_rebuild_seconds": 60,
            "rebuild_is_new_entry": rebuild["hash"] != cold["hash"],
            "reverted_is_cold_entry": back["hash"] == cold["hash"],
            "user_tree_unmodified": status == "",
            "cold": cold["incremental"], "rebuild": rebuild["incremental"],
        }
        print(json.dumps(result), flush=True)
        shutil.rmtree(tree, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
