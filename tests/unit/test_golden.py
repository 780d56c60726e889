"""Library replacements keep behaviour and numbers: today's outputs against the golden files the
hand-written code wrote before scipy.stats and jinja2 replaced it (tests/unit/golden/).

Statistics: the bootstrap draws the same resample indices as the old code (one
``default_rng(seed).integers`` call per resampled arm, in the same order), so CI endpoints
differ only by scipy taking the percentile at ``100 * alpha`` where the old code took the
quantile at ``alpha``: at most a few ulp (4.4e-16 measured), hence ``rel=1e-12``. p-values
match exactly: exact enumeration counts the same labellings, and the random permutations
(``random_permutations_old_code``, written by the old code from git after the change) use
the same generator calls.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))

import make_golden  # noqa: E402

from e2e import stats  # noqa: E402


def compare(old: Any, new: Any, path: str = "") -> None:
    if isinstance(old, dict):
        assert set(old) == set(new), f"{path}: keys {set(old) ^ set(new)}"
        for key in old:
            compare(old[key], new[key], f"{path}.{key}")
    elif isinstance(old, list):
        assert len(old) == len(new), path
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            compare(a, b, f"{path}[{i}]")
    elif isinstance(old, float) and "p_value" not in path:
        assert new == pytest.approx(old, rel=1e-12, abs=1e-12), path
    else:
        assert new == old, path


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / "stats.json").read_text())
    return data


def test_statistics_match_the_hand_written_code(golden: dict[str, Any]) -> None:
    now = json.loads(json.dumps(make_golden.stats_golden()))
    old = {k: v for k, v in golden.items() if k != "random_permutations_old_code"}
    compare(old, now)


def test_random_permutation_p_values_match_exactly(golden: dict[str, Any]) -> None:
    for name, case in golden["random_permutations_old_code"].items():
        on, off = case["on"], case["off"]
        assert stats.permutation_pvalue(on, off) == case["p_value"], name
        assert stats.permutation_pvalue(on, off, n=99) == case["p_value_n99"], name
        assert stats.permutation_pvalue(on[:6], off[:6], n=5000) == case["p_value_exact_n5000"], name
