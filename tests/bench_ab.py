"""Benchmark: time to verdict of the timer A/B (2 arms x 3 reps), warm and cold caches.

Not collected by pytest (no ``test_`` prefix): speed goals belong here, not in
timed assertions. Run:

    python tests/bench_ab.py            # warm: uses the normal cache
    python tests/bench_ab.py --cold     # cold: a fresh temporary cache (builds both kernels + image)
    python tests/bench_ab.py --arms4    # warm: 2 arms then 4 arms (on/off x two -x2apic settings), and the ratio
    python tests/bench_ab.py --breakdown  # warm: where the time of a timer A/B goes, stage by stage
    python tests/bench_ab.py --breakdown --reps-per-boot 3   # the same with one guest per arm
    python tests/bench_ab.py --breakdown --reps-per-boot 3 --overlap-boots   # ... both booted at once

Prints one JSON line per measurement: phase, seconds, verdict, host.
Goals: warm <= 5 min through the virtual host on 2 cores; <= 60 s on a hardware KVM host;
4 arms x 3 reps at most 2.1x the 2-arm time (one virtual host for all arms, so only guests are added);
the breakdown's ``windows_ratio`` (wall time over the sum of the measured workload windows) at most 4
(issue 25).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from e2e.util import spawn

FOUR_ARMS = """
[[arm]]
name = "on"
[[arm]]
name = "off"
pv_eoi = false
[[arm]]
name = "xapic-on"
cpu_flags = ["-x2apic"]
[[arm]]
name = "xapic-off"
cpu_flags = ["-x2apic"]
pv_eoi = false
"""


def time_ab(env: dict[str, str], runs: int, arms: str | None = None, speed: tuple[str, ...] = ()) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="pveoi-bench-") as tmp:
        out = Path(tmp) / "result.json"
        extra = list(speed)
        if arms:
            (Path(tmp) / "arms.toml").write_text(arms)
            extra += ["--arms", str(Path(tmp) / "arms.toml")]
        start = time.monotonic()
        proc = spawn.run([sys.executable, "-m", "e2e.cli", "-q", "ab", "--workload", "timer", "--runs",
                          str(runs), "--json", str(out), *extra], env=env, text=True)
        seconds = time.monotonic() - start
        doc = json.loads(out.read_text()) if out.is_file() else {}
    return {"seconds": round(seconds, 1), "exit": proc.returncode, "verdict": doc.get("verdict"),
            "host": (doc.get("host") or {}).get("chosen"), "runs_per_arm": runs, "options": list(speed)}


def breakdown(env: dict[str, str], runs: int, speed: tuple[str, ...] = ()) -> dict[str, object]:
    """One warm timer A/B, and where its wall time went, level by level, each with what no stage of it
    explains (``unstaged``):

    - the outer pveoi (``runner.timings``): its Python start-up, the input checks, choosing the host (the
      doctor), planning (kernel and image cache), measuring, and what is left (recording, printing);
    - measuring through the virtual host (``host.virtual_host``): each part's L1 boot, the command in it,
      its shutdown, the traces summarized outside, the analysis of all parts;
    - the command in L1 (``host.inner_runner.timings`` and the guests' ``timings`` summed): L1's Python
      start-up and imports, each guest stage (QEMU start to paused, boot to ready, SSH, state reads, perf
      attach, the workload window, trace read, shutdown), and the time between guests."""
    with tempfile.TemporaryDirectory(prefix="pveoi-bench-") as tmp:
        out = Path(tmp) / "result.json"
        start = time.monotonic()
        spawn.run([sys.executable, "-m", "e2e.cli", "-q", "ab", "--workload", "timer", "--runs", str(runs),
                   *speed, "--json", str(out)], env=env, text=True)
        total = time.monotonic() - start
        doc = json.loads(out.read_text()) if out.is_file() else {}
    return breakdown_of(doc, total) | {"options": list(speed)}


def breakdown_of(doc: dict[str, Any], total: float) -> dict[str, object]:
    """:func:`breakdown`'s levels from a result document and the A/B's wall time."""
    guests: dict[str, float] = {}
    windows = 0.0
    for arm in (doc.get("arms") or {}).values():
        for runs_of in (arm.get("runs") or {}).values():
            for run in runs_of:
                windows += run.get("workload_seconds") or 0.0
                for stage, seconds in (run.get("timings") or {}).items():
                    # a guest's wait in an overlapped round while the others are measured: not its own time
                    key = "idle (others measured)" if stage.endswith("->idle") else stage
                    guests[key] = guests.get(key, 0.0) + seconds
    outer = dict((doc.get("runner") or {}).get("timings") or {})
    vhost = (doc.get("host") or {}).get("virtual_host") or {}
    inner = dict(((doc.get("host") or {}).get("inner_runner") or {}).get("timings") or {})
    parts = vhost.get("stages") or []
    l1 = {k: round(sum(p.get(k, 0.0) for p in parts), 1) for k in ("boot", "command", "shutdown")}
    outside = inner.pop("traces_summarized_outside", 0.0)
    in_l1 = (sum(v for v in inner.values() if v)
             + sum(v for k, v in guests.items() if k != "idle (others measured)"))
    measured = outer.get("measured", 0.0)
    analysis = vhost.get("analysis_seconds") or 0.0
    overlapped = bool((doc.get("plan") or {}).get("overlap_boots"))
    return {
        **({"note": "boots overlapped: the guests' boot stages ran at the same time, so their sum exceeds the "
                    "wall time and between_guests can be negative"} if overlapped else {}),
        "seconds": round(total, 1), "verdict": doc.get("verdict"), "windows": round(windows, 1),
        "windows_ratio": round(total / windows, 2) if windows else None,
        "outer": {**outer, "unstaged": round(total - sum(outer.values()), 1)},
        "measured": {"virtual_host": l1, "traces_summarized_outside": outside,
                     "analysis": analysis, "unstaged": round(measured - sum(l1.values()) - outside - analysis, 1)},
        "command_in_l1": {"inner_runner": inner, "guests": {k: round(v, 1) for k, v in guests.items()},
                          # the inner runner's own timings are its first part's: one part unless L1 restarted
                          "between_guests": round((parts[0].get("command", 0.0) if parts else 0.0) - in_l1, 1)
                          if len(parts) == 1 else "n/a: the virtual host restarted"},
    }


def main() -> int:
    spawn.exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also measure with an empty cache")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--arms4", action="store_true", help="also time 4 arms and print the ratio to 2 arms")
    parser.add_argument("--breakdown", action="store_true", help="where the time of a warm timer A/B goes")
    parser.add_argument("--reps-per-boot", type=int, default=1, metavar="N", help="pveoi ab --reps-per-boot N")
    parser.add_argument("--overlap-boots", action="store_true", help="pveoi ab --overlap-boots")
    parser.add_argument("--of", type=Path, metavar="RESULT", help="with --breakdown and --seconds: the levels of a "
                        "result already measured")
    parser.add_argument("--seconds", type=float, help="the wall time of --of's A/B")
    args = parser.parse_args()
    env = dict(os.environ)
    speed = (("--reps-per-boot", str(args.reps_per_boot)) if args.reps_per_boot != 1 else ()) + (
        ("--overlap-boots",) if args.overlap_boots else ())
    if args.breakdown and args.of:
        levels = breakdown_of(json.loads(args.of.read_text()), args.seconds or 0.0)
        print(json.dumps({"phase": "breakdown-of", **levels}), flush=True)
        return 0
    if args.breakdown:
        print(json.dumps({"phase": "warm-breakdown", **breakdown(env, args.runs, speed)}), flush=True)
        return 0
    if args.arms4:
        two = time_ab(env, args.runs, speed=speed)
        four = time_ab(env, args.runs, FOUR_ARMS, speed)
        print(json.dumps({"phase": "warm-2-arms", **two}), flush=True)
        print(json.dumps({"phase": "warm-4-arms", **four,
                          "ratio": round(float(str(four["seconds"])) / float(str(two["seconds"])), 2)}), flush=True)
        return 0
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="pveoi-bench-cache-") as cache:
            print(json.dumps({"phase": "cold", **time_ab(dict(env, PVEOI_CACHE=cache), args.runs,
                                                         speed=speed)}), flush=True)
    print(json.dumps({"phase": "warm", **time_ab(env, args.runs, speed=speed)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
