"""Writes the golden outputs of pveoi's hand-written statistics and HTML renderer, as they were
before scipy.stats and jinja2 replaced them (run once, at commit "golden files"; the tests compare
today's outputs with these files). Kept for the record: re-running it after the change would
overwrite the reference with the new code's output, so don't. (Two parts were written again since,
on purpose: ``reanalyzed_fixtures`` after the fix that keeps a schema-2 result whose runs did not
complete an error on re-analysis, and the HTML pages after the report gained detection floors and
failed attempts, and the schema-2 page when a first night in error became a warning; the statistics'
own figures are still the hand-written code's.)

    python tests/unit/golden/make_golden.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from e2e.analysis import stats  # noqa: E402
from e2e.analysis.droprule import CheckSettings  # noqa: E402
from e2e.analysis.history import load_history  # noqa: E402
from e2e.analysis.regress import check  # noqa: E402
from e2e.model.plan import DEFAULT_ARMS, Plan  # noqa: E402
from e2e.report.render import render_html  # noqa: E402
from e2e.report.results import load  # noqa: E402
from e2e.run.ab import reanalyze  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "history"

#: Synthetic samples: spread, ties, a single value, a zero baseline, many runs (random permutations).
SAMPLES = {
    "three_vs_three": ([1.02, 0.98, 1.01], [2.01, 1.97, 2.05]),
    "ties": ([1.0, 1.0, 1.0], [1.0, 1.0, 2.0]),
    "one_vs_three": ([0.5], [1.5, 1.4, 1.6]),
    "one_vs_one": ([0.5], [1.5]),
    "zero_baseline": ([0.1, 0.2, 0.0], [0.0, 0.0, 0.3]),
    "zero_resamples": ([0.1, 0.2, 0.3], [0.0, 1.0, 1.0]),
    "five_vs_four": ([3.1, 2.9, 3.3, 3.0, 2.8], [4.0, 4.2, 3.9, 4.4]),
    "twelve_vs_twelve": (list(np.linspace(1.0, 1.3, 12)), list(np.linspace(1.2, 1.6, 12))),
}


def stats_golden() -> dict[str, object]:
    out: dict[str, object] = {}
    for name, (on, off) in SAMPLES.items():
        case: dict[str, object] = {
            "bootstrap_on": list(stats.bootstrap_ci(on)),
            "bootstrap_off_mean": list(stats.bootstrap_ci(off, np.mean)),
            "diff_ci": list(stats.diff_ci(on, off)),
            "ratio_reduction": [stats.ratio_reduction(on, off)[0],
                                (list(stats.ratio_reduction(on, off)[1])  # type: ignore[arg-type]
                                 if stats.ratio_reduction(on, off)[1] else None)],
            "summary": stats.summarize(name, on, off).to_json(),
        }
        if len(on) + len(off) > 2:
            case["p_value"] = stats.permutation_pvalue(on, off)
            case["p_value_n99"] = stats.permutation_pvalue(on, off, n=99)
        out[name] = case
    a, b = SAMPLES["three_vs_three"], SAMPLES["five_vs_four"]
    out["effect_difference"] = list(stats.effect_difference(a[0], a[1], b[0], b[1])[1])
    results: dict[str, object] = {}
    for path in sorted(FIXTURES.glob("schema*/*.json")):
        res = load(path)
        if not res.runs:
            continue
        plan = res.plan or Plan(workloads=tuple(res.workloads), arms=tuple(res.arms.values()) or DEFAULT_ARMS,
                                runs=res.runs_per_arm or 0, kernel=Path("k"), image=Path("i"), logs=Path("l"))
        again = reanalyze(res, plan)
        results[f"{path.parent.name}/{path.name}"] = {n: w.to_json() for n, w in again.workloads.items()}
    out["reanalyzed_fixtures"] = results
    return out


def html_golden() -> dict[str, str]:
    matplotlib.rcParams["svg.hashsalt"] = "pveoi-golden"
    out = {}
    for d in sorted(FIXTURES.glob("schema*")):
        history = load_history(d)
        out[d.name] = render_html(history, check(history, CheckSettings()))
    return out


if __name__ == "__main__":
    (HERE / "stats.json").write_text(json.dumps(stats_golden(), indent=1, sort_keys=True) + "\n")
    for name, text in html_golden().items():
        (HERE / f"report-{name}.html").write_text(text)
