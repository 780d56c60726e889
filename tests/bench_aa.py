"""Benchmark: the A/A noise check, repeated. Two identical arms (``pveoi ab --aa``: the on arm and its
replica) compared by the same rules as any two arms, N times: how often does this runner flag a
difference that cannot be there? The goal (issue 25): at most 1 in 20 at the 5 % level.

Not collected by pytest (no ``test_`` prefix). Run:

    python tests/bench_aa.py --count 20 --out results/aa          # 20 timer A/As, 3 reps per arm
    python tests/bench_aa.py --count 20 --hours 1.5 --resume ...   # in the background, within 1.5 hours
    python tests/bench_aa.py --summarize results/aa                # the summary again
    python tests/bench_aa.py --count 20 --reps-per-boot 3 ...      # the A/A of one guest per arm
    python tests/bench_aa.py --count 20 --reps-per-boot 3 --overlap-boots ...   # ... booted at once

Each A/A is its own process (a fresh virtual host), its result in ``OUT/timer-NN.json``; the summary
counts the A/As whose ``aa`` comparison flagged a difference (verdict ``regression``), lists their
reasons, counts the A/As with an interval (trapped EOIs or exits per interrupt) clear of zero at all (a
difference "at the 5 % level" before pveoi's threshold), and gives the replicas' difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.bench_soak import run_one, time_left


def summarize(out: Path) -> dict[str, Any]:
    """Per A/A: its verdict, whether the aa comparison flagged (pveoi's rule: a difference beyond the
    threshold with its interval clear of zero), whether an interval of trapped EOIs or exits per interrupt
    was clear of zero at all (a difference at the 5 % level, threshold or not), and the replicas'
    difference in trapped EOIs per interrupt; then how many of each."""
    rows = []
    for path in sorted(out.glob("*-[0-9][0-9].json")):
        doc = json.loads(path.read_text())
        for name, w in (doc.get("workloads") or {}).items():
            aa = [c for c in w.get("comparisons", []) if c.get("kind") == "aa"]
            metrics = (aa[0].get("metrics") or {}) if aa else {}
            diff = (metrics.get("trapped_eoi") or {}).get("diff")
            clear = [key for key in ("trapped_eoi", "kvm_exit")
                     if (ci := (metrics.get(key) or {}).get("diff_ci")) and (ci[0] > 0 or ci[1] < 0)]
            rows.append({"result": path.name, "workload": name, "verdict": w.get("verdict"),
                         "flagged": bool(aa and aa[0].get("verdict") == "regression"),
                         "interval_clear_of_zero": clear,
                         "reasons": list(aa[0].get("reasons", [])) if aa else [], "trapped_eoi_diff": diff})
    measured = [r for r in rows if r["verdict"] in ("pass", "fail")]
    diffs = [r["trapped_eoi_diff"] for r in measured if isinstance(r["trapped_eoi_diff"], float)]
    return {"aa": len(rows), "measured": len(measured), "flagged": sum(r["flagged"] for r in measured),
            "interval_clear_of_zero": sum(bool(r["interval_clear_of_zero"]) for r in measured),
            "trapped_eoi_diff": {"median": statistics.median(diffs), "min": min(diffs), "max": max(diffs)}
            if diffs else None, "rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--workload", default="timer")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1500.0)
    p.add_argument("--out", type=Path, default=Path("results") / time.strftime("aa-%Y%m%dT%H%M"))
    p.add_argument("--resume", action="store_true", help="continue in --out after the A/As already there")
    p.add_argument("--hours", type=float, metavar="H", help="start no A/A after H hours")
    p.add_argument("--summarize", type=Path, metavar="DIR")
    p.add_argument("--reps-per-boot", type=int, default=1, metavar="N", help="pveoi ab --reps-per-boot N")
    p.add_argument("--overlap-boots", action="store_true", help="pveoi ab --overlap-boots")
    args = p.parse_args()
    args.deadline = time.monotonic() + args.hours * 3600 if args.hours else None
    out = args.summarize or args.out
    if not args.summarize:
        out.mkdir(parents=True, exist_ok=True)
        # Resume after the highest index there (an A/A that wrote no result leaves a gap, not a shift).
        done = max((int(p.stem.rsplit("-", 1)[1]) for p in out.glob(f"{args.workload}-[0-9][0-9].stderr")),
                   default=0) if args.resume else 0
        for index in range(done + 1, args.count + 1):
            timeout = time_left(args)
            if timeout is None:
                print(f"--hours {args.hours:g} reached: stopping before A/A #{index}", flush=True)
                break
            entry = run_one(args.workload, index, out, args.runs, timeout,
                            extra=("--aa", "--reps-per-boot", str(args.reps_per_boot),
                                   *(("--overlap-boots",) if args.overlap_boots else ())))
            print(f"A/A #{index}: exit {entry['exit']} in {entry['seconds']:.0f} s; {entry['last_line'][:150]}",
                  flush=True)
    summary = summarize(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{summary['measured']} of {summary['aa']} A/As measured; a difference flagged in {summary['flagged']} "
          f"(goal: at most 1 in 20); an interval clear of zero in {summary['interval_clear_of_zero']}; replicas' "
          f"trapped EOIs per interrupt, difference: {summary['trapped_eoi_diff']}")
    for r in summary["rows"]:
        if r["flagged"]:
            print(f"  {r['result']}: {'; '.join(r['reasons'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
