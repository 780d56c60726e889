"""Soak: many consecutive A/Bs through the virtual KVM host, every infrastructure failure classified,
and each workload's run-to-run spread of its headline.

Not collected by pytest (no ``test_`` prefix). Run:

    python tests/bench_soak.py                     # 20 net A/Bs and 10 each of timer, ipi, block, 3 reps each
    python tests/bench_soak.py --net 5 --each 3    # a shorter one
    python tests/bench_soak.py --summarize DIR     # the summary of a soak's results again
    python tests/bench_soak.py --qemu 7.2=/usr/bin --qemu 10.0=/opt/qemu10-bin   # QEMUs side by side
    python tests/bench_soak.py --hours 2 ...         # in the background: over within 2 hours, whatever is left
    python tests/bench_soak.py --variant base= --variant nonpt=PVEOI_VHOST_APPEND=kvm_amd.npt=0 \
        --variant epyc=PVEOI_VHOST_CPU=EPYC-v4 --variant-args h612="--host-base 6.12"   # L1 trials side by side

With ``--qemu NAME=DIR`` (repeatable) every A/B of the plan runs once with each QEMU (DIR first on
PATH: its ``qemu-system-x86_64`` is both the virtual host's TCG and the guest launcher), in an order
that alternates round by round so drift lands on all alike; each QEMU's results, ledger and summary
go to ``--out/NAME/`` (``--summarize --out/NAME`` again later). ``--variant NAME=VAR=VALUE`` (repeatable,
one NAME may set several variables; ``NAME=`` alone: pveoi as it is) and ``--variant-args NAME=ARGS`` (extra
``pveoi ab`` arguments) make variants the same way, e.g. the virtual host's trials of issue 24
(``PVEOI_VHOST_CPU``, ``PVEOI_VHOST_APPEND``, ``--host-base``; docs/virtual-host.md).

Each A/B is its own ``pveoi ab --workload W --runs 3`` process (a fresh virtual host each),
round-robin over the workloads so drifts of the machine spread evenly. Its result JSON and
logs go to ``DIR/W-NN.json`` and ``DIR/logs-W-NN/``. The summary (``DIR/summary.json`` and a
Markdown table on stdout) gives, per workload: A/Bs, verdicts, the headline (EOI exits saved
per injected interrupt) median, min, max, relative range and coefficient of variation, the
trapped EOIs' reasons summed over every run (per-vector attribution), and every failed
attempt with its class (guest reset, panic, OOM, ... from e2e.vm.ending) and logs, and where KVM saw the
guests' CPUs shut down, counted by RIP (one RIP again and again is a defect at that instruction). A failed
attempt whose class is empty, ``unknown`` or ``qemu running`` is *unexplained*; the goal is none.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from e2e.analysis.history import HEADLINES, Run  # noqa: E402
from e2e.errors import SchemaError  # noqa: E402
from e2e.measure.trace_figures import armed_taken, source_counts  # noqa: E402
from e2e.model.result import Result  # noqa: E402
from e2e.model.workloads import WORKLOADS as DECLARED  # noqa: E402
from e2e.util import spawn  # noqa: E402  (the checkout's own, like the pveoi it runs)

WORKLOADS = ("net", "timer", "ipi", "block")


def schedule(net: int, each: int) -> list[str]:
    """Round-robin: net first in every round while any remain, then the others."""
    out = []
    for i in range(max(net, each)):
        out += [w for w in WORKLOADS if i < (net if w == "net" else each)]
    return out


def run_one(workload: str, index: int, out: Path, runs: int, timeout: float,
            env: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One ``pveoi ab`` (plus ``extra`` arguments) through the virtual host: its result, logs and stderr
    under ``out``, and its ledger entry."""
    result, logs = out / f"{workload}-{index:02d}.json", out / f"logs-{workload}-{index:02d}"
    argv = [sys.executable, "-m", "e2e.cli", "ab", "--host", "virtual", "--workload", workload, "--runs", str(runs),
            "--json", str(result), "--logs", str(logs), "--history", str(out / "history"),
            "--timeout", str(timeout), *extra]
    started = time.monotonic()
    proc = spawn.run(argv, cwd=REPO, text=True, env=env)  # stopped in order with the soak: no A/B outlives it
    seconds = time.monotonic() - started
    (out / f"{workload}-{index:02d}.stderr").write_text(proc.stderr)
    # What to print: the verdict, or the one-line error pveoi ends with when there is no result.
    said = (json.loads(result.read_text()).get("verdict", "?") if result.is_file()
            else (proc.stderr.strip().splitlines() or [""])[-1])
    return {"workload": workload, "index": index, "exit": proc.returncode, "seconds": round(seconds, 1),
            "result": result.name if result.is_file() else None, "last_line": said}


def summarize(out: Path) -> dict[str, Any]:
    ledger = json.loads((out / "ledger.json").read_text()) if (out / "ledger.json").is_file() else []
    per: dict[str, dict[str, Any]] = {}
    for entry in ledger:
        w = entry["workload"]
        s = per.setdefault(w, {"ab": 0, "verdicts": Counter(), "headline": [], "failures": [], "reasons": Counter(),
                               "seconds": [], "taken": [], "speed": [], "head_speed": [], "own": [],
                               "mix": []})
        s["ab"] += 1
        s["seconds"].append(entry["seconds"])
        if entry["result"] is None:
            s["verdicts"]["no result"] += 1
            s["failures"].append({"ab": entry["index"], "class": "", "message": entry["last_line"], "logs": []})
            continue
        doc = json.loads((out / entry["result"]).read_text())
        wr = doc.get("workloads", {}).get(w, {})
        s["verdicts"][wr.get("verdict", doc.get("verdict"))] += 1
        head = (wr.get("eoi_exits_saved_per_interrupt") or {}).get("value")
        if isinstance(head, float):
            s["headline"].append(head)
        # The same A/B's figure over the workload's own interrupts only, as the history reads it.
        try:
            record = Run(out / entry["result"], Result.from_json(doc, entry["result"])).record(w)
        except SchemaError as err:  # a result pveoi cannot read back
            print(f"{entry['result']}: not readable as a result ({err}); its own-interrupt figure is left out",
                  file=sys.stderr)
            record = None
        if record is not None and record.value.get("own_saved") is not None:
            s["own"].append(record.value["own_saved"])
        for a in wr.get("attempts", []):
            s["failures"].append({"ab": entry["index"], "arm": a.get("arm"), "rep": a.get("rep"),
                                  "attempt": a.get("attempt"), "class": a.get("class", ""), "kind": a.get("kind"),
                                  "outcome": a.get("outcome"), "message": a.get("message"), "logs": a.get("logs", []),
                                  # where KVM saw the guest's CPU shut down (a triple fault's RIP and symbol)
                                  "kvm": [e for e in a.get("evidence", []) if str(e).startswith("KVM: ")]})
        for r in [*(doc.get("host") or {}).get("virtual_host", {}).get("restarts", []),
                  *(doc.get("error") or {}).get("retried", [])]:
            if isinstance(r, dict):  # results before 2026-12-04 kept a restart as one string
                s["failures"].append({"ab": entry["index"], "arm": "virtual host", "attempt": r.get("attempt"),
                                      "class": r.get("class", ""), "kind": r.get("kind"), "outcome": "restarted",
                                      "message": r.get("message"), "logs": [r.get("logs")]})
        if doc.get("error"):
            s["failures"].append({"ab": entry["index"], "class": doc["error"].get("class", ""),
                                  "message": doc["error"].get("message"), "logs": []})
        for arm in doc.get("arms", {}).values():
            for run in (arm.get("runs") or {}).get(w, []):
                for v in (run.get("trace") or {}).get("vectors", []):
                    s["reasons"].update({k: n for k, n in v.get("reasons", {}).items() if k != "PV EOI off"})
        treated = (doc.get("arms", {}).get(wr.get("treatment") or "on", {}).get("runs") or {}).get(w, [])
        for run in treated:
            taken = armed_taken(run.get("trace") or {})
            if taken is not None:
                s["taken"].append(taken)
            # The timing model of the spread: how much of the PV arm's EOIs trapped, against how
            # long its workload took in nested TCG (per run).
            vectors = (run.get("trace") or {}).get("vectors", [])
            injected = sum(v.get("injected", 0) for v in vectors)
            if injected and run.get("workload_seconds"):
                trapped = sum(v.get("trapped", 0) for v in vectors)
                s["speed"].append((float(run["workload_seconds"]), trapped / injected))
        # What the PV arm's injected interrupts were: the workload's own share, and how often its
        # own and the others (tick, IPIs) trapped, over the A/B's runs.
        own_ti = [source_counts(r.get("trace") or {}, DECLARED[w].sources) for r in treated]
        all_ti = [source_counts(r.get("trace") or {}, ("*",)) for r in treated]
        if treated and all(own_ti) and all(all_ti):
            ot, oi = (sum(x[k] for x in own_ti if x) for k in (0, 1))
            at, ai = (sum(x[k] for x in all_ti if x) for k in (0, 1))
            s["mix"].append({"share": oi / ai, "own": ot / oi, "other": (at - ot) / (ai - oi) if ai > oi else None})
        seconds = [float(r["workload_seconds"]) for r in treated if r.get("workload_seconds")]
        if isinstance(head, float) and seconds:
            s["head_speed"].append((statistics.median(seconds), head))
    summary = {}
    for w, s in per.items():
        h = s["headline"]
        med = statistics.median(h) if h else None
        summary[w] = {
            "ab": s["ab"], "verdicts": dict(s["verdicts"]), "headline_median": med,
            "headline_min": min(h) if h else None, "headline_max": max(h) if h else None,
            "relative_range": (max(h) - min(h)) / med if h and med else None,
            "cv": statistics.stdev(h) / statistics.mean(h) if len(h) > 1 and statistics.mean(h) else None,
            "own_median": statistics.median(s["own"]) if s["own"] else None,
            "own_min": min(s["own"]) if s["own"] else None, "own_max": max(s["own"]) if s["own"] else None,
            "own_cv": (statistics.stdev(s["own"]) / statistics.mean(s["own"])
                       if len(s["own"]) > 1 and statistics.mean(s["own"]) else None),
            "mix": {k: _span([m[k] for m in s["mix"] if m[k] is not None]) for k in ("share", "own", "other")},
            "trapped_reasons": dict(s["reasons"].most_common()),
            "pv_taken_min": min(s["taken"]) if s["taken"] else None,
            "pv_taken_median": statistics.median(s["taken"]) if s["taken"] else None,
            "failures": s["failures"],
            # "qemu running" names no cause (QEMU had not ended when the attempt was judged)
            "unexplained": [f for f in s["failures"] if f["class"] in ("", "unknown", "qemu running")],
            "seconds_median": statistics.median(s["seconds"]),
            "timing": timing(s["speed"], s["head_speed"]),
        }
    return summary


def _span(values: list[float]) -> list[float] | None:
    """``[median, min, max]`` of the values (None for none)."""
    return [statistics.median(values), min(values), max(values)] if values else None


def timing(runs: list[tuple[float, float]], abs_: list[tuple[float, float]]) -> dict[str, Any]:
    """How far the spread follows nested TCG's speed: Spearman's rho of the PV arm's trapped
    fraction against its workload's seconds (per run), and of the headline against the PV arm's
    median workload seconds (per A/B), with their p-values; None where there are too few."""
    from scipy.stats import spearmanr  # the suite's own dependency (e2e/analysis/stats.py)

    def rho(pairs: list[tuple[float, float]]) -> dict[str, float] | None:
        if len(pairs) < 4 or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
            return None
        res = spearmanr([x for x, _ in pairs], [y for _, y in pairs])
        return {"rho": round(float(res.statistic), 3), "p": float(res.pvalue), "n": len(pairs)}

    fast = sorted(runs)[: max(1, len(runs) // 4)]
    slow = sorted(runs)[-max(1, len(runs) // 4):]
    return {"trapped_vs_seconds": rho(runs), "headline_vs_seconds": rho(abs_),
            "trapped_fastest_quarter": statistics.median(t for _, t in fast) if runs else None,
            "trapped_slowest_quarter": statistics.median(t for _, t in slow) if runs else None,
            "seconds_fastest_quarter": statistics.median(x for x, _ in fast) if runs else None,
            "seconds_slowest_quarter": statistics.median(x for x, _ in slow) if runs else None}


def false_alarms(out: Path, baseline: int = 3) -> dict[str, Any]:
    """Every soak A/B as one night: ``pveoi report --check`` over the history as it stood after
    each of them (from the ``baseline + 1``-th run of a workload on); all runs are clean, so
    every REGRESSION line is a false alarm."""
    import shutil
    import tempfile

    runs = sorted((out / "history").glob("*.json"))
    alarms: list[str] = []
    warnings: list[str] = []
    marked: list[str] = []  # nights the check marked as run far from the runner's usual conditions
    nights = 0
    with tempfile.TemporaryDirectory() as tmp:
        night = Path(tmp)
        seen: Counter[str] = Counter()
        for path in runs:
            shutil.copy(path, night / path.name)
            doc = json.loads(path.read_text())
            workloads = list(doc.get("workloads", {}))
            seen.update(workloads)
            # A night that measured nothing (an error before any workload) is its planned workloads' night.
            mine = workloads or [w for w in (doc.get("plan") or {}).get("workloads", seen) if seen[w] >= baseline]
            if not mine or (workloads and seen[workloads[0]] <= baseline):
                continue
            nights += 1
            proc = subprocess.run([sys.executable, "-m", "e2e.cli", "report", "--history", str(night), "--check",
                                   "--baseline", str(baseline)], cwd=REPO, capture_output=True, text=True,
                                  check=False)
            alarms += [f"{path.name}: {ln}" for ln in proc.stdout.splitlines()
                       if ln.startswith("REGRESSION") and any(f"] {w}:" in ln for w in mine)]
            warnings += [f"{path.name}: {ln}" for ln in proc.stdout.splitlines()
                         if ln.startswith("WARNING") and any(f"] {w}:" in ln for w in mine)]
            marked += [f"{path.name}: {ln}" for ln in proc.stdout.splitlines()
                       if ln.startswith("note") and "far from this runner's usual" in ln
                       and any(f"] {w}:" in ln for w in mine)][:1]
    return {"nights": nights, "false_alarms": alarms, "warnings": warnings, "marked_loaded": marked}


def markdown(summary: dict[str, Any]) -> str:
    def pct(x: Any) -> str:
        return f"{100 * x:.2f} %" if isinstance(x, float) else "-"

    def num(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, float) else "-"

    def num4(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, float) else "-"

    lines = ["| workload | A/Bs | verdicts | headline median [min, max] | range | CV | PV EOI taken when armed, "
             "median (min rep) | failed attempts (class) | unexplained | s per A/B |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for w in WORKLOADS:
        s = summary.get(w)
        if not s:
            continue
        classes = Counter(f["class"] or "unclassified" for f in s["failures"])
        lines.append(f"| {w} | {s['ab']} | {', '.join(f'{k} {n}' for k, n in s['verdicts'].items())} | "
                     f"{num(s['headline_median'])} [{num(s['headline_min'])}, {num(s['headline_max'])}] | "
                     f"{pct(s['relative_range'])} | {pct(s['cv'])} | "
                     f"{num4(s['pv_taken_median'])} ({num4(s['pv_taken_min'])}) | "
                     f"{', '.join(f'{k} {n}' for k, n in classes.items()) or 'none'} | {len(s['unexplained'])} | "
                     f"{s['seconds_median']:.0f} |")
    lines.append("")
    lines += [f"| workload | own interrupts | {HEADLINES['own_saved'][0]}, median [min, max] | CV | "
              "PV arm, per A/B: own share of injected | own trapped | others trapped |",
              "|---|---|---|---|---|---|---|"]

    def span(x: list[float] | None) -> str:
        return f"{pct(x[0])} [{pct(x[1])}, {pct(x[2])}]" if x else "-"

    for w in WORKLOADS:
        s = summary.get(w)
        if s and s["own_median"] is not None:
            mix = s["mix"]
            lines.append(f"| {w} | {', '.join(DECLARED[w].sources)} | {num(s['own_median'])} "
                         f"[{num(s['own_min'])}, {num(s['own_max'])}] | {pct(s['own_cv'])} | "
                         f"{span(mix['share'])} | {span(mix['own'])} | {span(mix['other'])} |")
    lines.append("")
    lines += ["| workload | trapped/injected vs workload seconds, per PV run (rho, p, n) | headline vs "
              "seconds, per A/B | trapped/injected: fastest quarter (s) / slowest quarter (s) |", "|---|---|---|---|"]
    for w in WORKLOADS:
        t = (summary.get(w) or {}).get("timing")
        if not t:
            continue

        def r(x: Any) -> str:
            return f"{x['rho']:+.2f}, p={x['p']:.2g}, n={x['n']}" if x else "-"

        lines.append(f"| {w} | {r(t['trapped_vs_seconds'])} | {r(t['headline_vs_seconds'])} | "
                     f"{num(t['trapped_fastest_quarter'])} ({num(t['seconds_fastest_quarter'])}) / "
                     f"{num(t['trapped_slowest_quarter'])} ({num(t['seconds_slowest_quarter'])}) |")
    lines.append("")
    for w in WORKLOADS:
        for f in (summary.get(w) or {}).get("failures", []):
            where = f"{f.get('arm')} rep {int(f['rep']) + 1}" if isinstance(f.get("rep"), int) else f.get("arm") or ""
            lines.append(f"- {w} #{f['ab']} {where} attempt {f.get('attempt') or '-'}: "
                         f"{f['class'] or 'UNEXPLAINED'} ({f.get('outcome') or 'error'}): {str(f['message'])[:160]}"
                         + "".join(f"; {k}" for k in f.get("kvm", [])))
    places = Counter(re.sub(r"^KVM: vCPU \d+ shut down at ", "", k)
                     for w in WORKLOADS for f in (summary.get(w) or {}).get("failures", []) for k in f.get("kvm", []))
    if places:  # one RIP again and again, across virtual hosts: a defect at that instruction, not chance
        lines.append("- where KVM saw the guests' CPUs shut down, over every workload: "
                     + ", ".join(f"{where} x{n}" for where, n in places.most_common()))
    lines.append("")
    for w in WORKLOADS:
        s = summary.get(w)
        if s and s["trapped_reasons"]:
            lines.append(f"- {w}: trapped EOIs of the PV EOI arm by reason, over every run: "
                         + ", ".join(f"{k} {n}" for k, n in s["trapped_reasons"].items()))
    return "\n".join(lines)


def time_left(args: argparse.Namespace) -> float | None:
    """The next A/B's --timeout: ``--timeout``, cut to what is left of ``--hours``; None when too little is
    left for an A/B (2 min)."""
    if args.deadline is None:
        return float(args.timeout)
    left = args.deadline - time.monotonic()
    return min(float(args.timeout), left) if left > 120 else None


def main() -> int:
    spawn.exit_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", type=int, default=20)
    p.add_argument("--each", type=int, default=10, help="A/Bs of timer, ipi and block each")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1500.0,
                   help="each A/B's --timeout (a healthy one takes 3-7 min here; a hang costs no more than this)")
    p.add_argument("--out", type=Path, default=REPO / "results" / time.strftime("soak-%Y%m%dT%H%M"))
    p.add_argument("--summarize", type=Path, metavar="DIR", help="only summarize an earlier soak's DIR")
    p.add_argument("--resume", action="store_true",
                   help="continue the soak in --out where its ledger stops (same plan, next A/Bs)")
    p.add_argument("--hours", type=float, metavar="H",
                   help="end within H hours: no A/B starts after that, and each one's --timeout is cut to the "
                        "time left (a soak run in the background never outlives its window)")
    p.add_argument("--qemu", action="append", default=[], metavar="NAME=DIR",
                   help="run every A/B with each of these QEMUs (DIR first on PATH), results in --out/NAME")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=VAR=VALUE",
                   help="a variant with this environment variable set (repeatable; NAME= alone: none)")
    p.add_argument("--variant-args", action="append", default=[], metavar="NAME=ARGS",
                   help="a variant whose A/Bs get these extra pveoi ab arguments")
    args = p.parse_args()
    args.deadline = time.monotonic() + args.hours * 3600 if args.hours else None
    if (args.qemu or args.variant or args.variant_args) and not args.summarize:
        return side_by_side(args)
    if args.summarize:
        out = args.summarize
    else:
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        ledger: list[dict[str, Any]] = []
        if args.resume and (out / "ledger.json").is_file():
            ledger = json.loads((out / "ledger.json").read_text())
        counts: Counter[str] = Counter(e["workload"] for e in ledger)
        plan = schedule(args.net, args.each)
        for n, w in enumerate(plan, 1):
            if n <= len(ledger):
                continue
            counts[w] += 1
            timeout = time_left(args)
            if timeout is None:
                print(f"--hours {args.hours:g} reached: stopping before {w} #{counts[w]}", flush=True)
                break
            entry = run_one(w, counts[w], out, args.runs, timeout)
            ledger.append(entry)
            (out / "ledger.json").write_text(json.dumps(ledger, indent=1))
            print(f"[{n}/{len(plan)}] {w} #{counts[w]}: exit {entry['exit']} in {entry['seconds']:.0f} s; "
                  f"{entry['last_line'][:150]}", flush=True)
    summary = summarize(out)
    checks = false_alarms(out)
    (out / "summary.json").write_text(json.dumps({**summary, "history_check": checks}, indent=1))
    print(markdown(summary))
    print(f"\nreport --check after each A/B (baseline 3): {checks['nights']} nights, "
          f"{len(checks['false_alarms'])} false alarm(s) (exit 1), {len(checks['warnings'])} warning(s) (exit 0), "
          f"{len(checks['marked_loaded'])} marked as run far from the usual conditions")
    for line in checks["false_alarms"]:
        print(f"  {line}")
    return 0 if not any(s["unexplained"] for s in summary.values()) else 1


def variants_of(qemus: list[str], envs: list[str], extra_args: list[str],
                environ: dict[str, str]) -> list[tuple[str, dict[str, str], tuple[str, ...]]]:
    """The side by side's variants, in the order first named: (name, environment, extra pveoi ab args)."""
    import shlex

    found: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {}

    def variant(name: str, flag: str, item: str) -> tuple[dict[str, str], tuple[str, ...]]:
        if not name:
            raise SystemExit(f"{flag} {item}: expected NAME=...")
        return found.setdefault(name, (dict(environ), ()))

    for item in qemus:
        name, sep, where = item.partition("=")
        if not sep or not (Path(where) / "qemu-system-x86_64").exists():
            raise SystemExit(f"--qemu {item}: expected NAME=DIR with DIR/qemu-system-x86_64")
        env, _ = variant(name, "--qemu", item)
        env["PATH"] = f"{where}:{environ.get('PATH', '')}"
    for item in envs:
        name, _, setting = item.partition("=")
        env, _ = variant(name, "--variant", item)
        if setting:
            var, sep, value = setting.partition("=")
            if not sep or not var:
                raise SystemExit(f"--variant {item}: expected NAME=VAR=VALUE")
            env[var] = value
    for item in extra_args:
        name, _, words = item.partition("=")
        env, extra = variant(name, "--variant-args", item)
        found[name] = (env, (*extra, *shlex.split(words)))
    return [(name, env, extra) for name, (env, extra) in found.items()]


def side_by_side(args: argparse.Namespace) -> int:
    """Every A/B of the plan once per QEMU, alternating which goes first, each QEMU's results apart."""
    import os

    variants = variants_of(args.qemu, args.variant, args.variant_args, dict(os.environ))
    ledgers: dict[str, list[dict[str, Any]]] = {}
    for name, _, _ in variants:
        (args.out / name).mkdir(parents=True, exist_ok=True)
        path = args.out / name / "ledger.json"
        ledgers[name] = json.loads(path.read_text()) if args.resume and path.is_file() else []
    plan = schedule(args.net, args.each)
    for n, w in enumerate(plan, 1):
        if time_left(args) is None:
            break
        for name, env, extra in (variants if n % 2 else list(reversed(variants))):
            ledger = ledgers[name]
            if n <= len(ledger):
                continue
            index = sum(1 for e in ledger if e["workload"] == w) + 1
            timeout = time_left(args)
            if timeout is None:
                print(f"--hours {args.hours:g} reached: stopping before variant {name} {w} #{index}", flush=True)
                break
            entry = {**run_one(w, index, args.out / name, args.runs, timeout, env, extra), "qemu": name}
            ledger.append(entry)
            (args.out / name / "ledger.json").write_text(json.dumps(ledger, indent=1))
            print(f"[{n}/{len(plan)}] variant {name} {w} #{index}: exit {entry['exit']} in {entry['seconds']:.0f} s; "
                  f"{entry['last_line'][:150]}", flush=True)
    for name, _, _ in variants:
        summary = summarize(args.out / name)
        (args.out / name / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"\n## variant {name}\n")
        print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
