"""``pveoi bisect``'s pure parts: a step's exit code from its result, and the input checks
on a real (tiny) git repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from e2e.errors import ConfigError
from e2e.model.result import Result, WorkloadResult
from e2e.run.bisect import ABORT, BAD, GOOD, SKIP, BisectSpec, judge, resolve


def result(verdict: str, saved: float | None = None, ci: tuple[float, float] | None = None) -> Result:
    head = {"value": saved, "ci": list(ci) if ci else None, "limit": 1.0} if saved is not None else None
    w = WorkloadResult("timer", verdict, eoi_exits_saved_per_interrupt=head, reasons=(f"why {verdict}",))
    return Result(verdict=verdict, reason=f"timer: why {verdict}", workloads={"timer": w})


@pytest.mark.parametrize(("res", "baseline", "code"), [
    (result("pass", 0.99, (0.98, 0.995)), None, GOOD),        # measuring the good revision itself
    (result("pass", 0.99, (0.98, 0.995)), 0.99, GOOD),
    (result("pass", 0.96, (0.95, 0.97)), 0.99, GOOD),          # within max_effect_drop (0.05)
    (result("pass", 0.92, (0.90, 0.93)), 0.99, BAD),           # still passes its threshold, but dropped
    (result("pass", 0.92, (0.85, 0.995)), 0.99, GOOD),         # the drop's interval reaches the baseline
    (result("fail", 0.5, (0.49, 0.51)), 0.99, BAD),
    (result("not-measurable"), 0.99, SKIP),
    (result("error"), 0.99, ABORT),
])
def test_judge(res: Result, baseline: float | None, code: int) -> None:
    got, why = judge(res, baseline, 0.05)
    assert got == code, why
    assert why


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def spec(source: Path, good: str, bad: str, tmp: Path) -> BisectSpec:
    return BisectSpec(source=source, good=good, bad=bad, workload="timer", runs=1, history=tmp / "h", logs=tmp / "l")


def test_resolve_checks_the_repository_and_the_revisions(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    for i in range(3):
        (repo / "f").write_text(str(i))
        git(repo, "add", "f")
        git(repo, "commit", "-q", "-m", f"c{i}")
    first, last = git(repo, "rev-list", "--max-parents=0", "HEAD"), git(repo, "rev-parse", "HEAD")
    s = resolve(spec(repo, "HEAD~2", "HEAD", tmp_path))
    assert (s.good, s.bad) == (first, last)
    with pytest.raises(ConfigError, match="not an ancestor"):
        resolve(spec(repo, "HEAD", "HEAD~2", tmp_path))
    with pytest.raises(ConfigError, match="rev-parse"):
        resolve(spec(repo, "no-such-rev", "HEAD", tmp_path))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="not a git repository"):
        resolve(spec(tmp_path / "plain", "a", "b", tmp_path))


def test_spec_round_trips_through_json(tmp_path: Path) -> None:
    s = spec(tmp_path, "a" * 40, "b" * 40, tmp_path)
    assert BisectSpec.from_json(s.to_json()) == s
