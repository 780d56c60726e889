"""
``pveoi bisect``: find the commit that broke PV EOI, with the A/B as ``git bisect run``'s predicate.

The user's repository is never checked out or written: the bisection runs in a
temporary ``git worktree`` of it (bisect state is per worktree), removed at the
end whatever happens. Every step builds the kernel of its revision (the same
source path every step, so pveoi's incremental build directory and ccache are
reused), runs the A/B and keeps its result in a history. The good revision is
measured first: its PV EOI effect is the baseline a later revision regresses
from.

Exit codes of a step, as ``git bisect run`` reads them (git-bisect(1)):

* 0 good: the A/B passes and PV EOI's saving did not drop from the good revision's;
* 1 bad: the A/B fails (a finding, the verdict), or the saving dropped beyond
  ``max_effect_drop`` with the drop's interval clear of zero;
* 125 skip: the revision does not build, or cannot be measured here;
* 128 abort: infrastructure failed even after the retries (git stops bisecting).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, Kind, PveoiError
from ..util import command
from ..util.logs import setup_logging
from ..util.paths import REPO_ROOT

log = logging.getLogger(__name__)

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 128


@dataclass(frozen=True)
class BisectSpec:
    """What to bisect and how to judge a revision.

    :param source: the user's git repository (never written).
    :param host: bisect the host (KVM) kernel instead of the guest kernel (virtual host only).
    :param patches: a quilt patch dir applied on every revision (default: none).
    :param history: where every step's result goes.
    :param host_choice: ``direct`` or ``virtual`` and why (decided once, before the first build).
    """

    source: Path
    good: str
    bad: str
    workload: str
    runs: int
    history: Path
    logs: Path
    host: bool = False
    patches: Path | None = None
    retries: int = 1
    thresholds: dict[str, float] = field(default_factory=dict)
    host_choice: tuple[str, str] = ("virtual", "")
    baseline: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("source", "history", "logs", "patches"):
            out[key] = str(out[key]) if out[key] is not None else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BisectSpec:
        return cls(**{**data, "source": Path(data["source"]), "history": Path(data["history"]),
                      "logs": Path(data["logs"]), "patches": Path(data["patches"]) if data.get("patches") else None,
                      "host_choice": tuple(data["host_choice"])})


def git(repo: Path, *args: str, check: bool = True) -> str:
    """``git -C repo args...``'s stdout.

    :raises ConfigError: git failed (naming its message).
    """
    return command.run(["git", "-C", str(repo), *args], what=f"git {' '.join(args)} in {repo}",
                       fix="pass a git repository and revisions it has", check=check).stdout.strip()


def resolve(spec: BisectSpec) -> BisectSpec:
    """The spec with both revisions as full commit ids, checked before anything builds.

    :raises ConfigError: not a repository, an unknown revision, or good not an ancestor of bad.
    """
    if not (spec.source / ".git").exists() and not git(spec.source, "rev-parse", "--git-dir", check=False):
        raise ConfigError(f"{spec.source} is not a git repository", fix="pass --source a kernel git tree")
    good = git(spec.source, "rev-parse", "--verify", f"{spec.good}^{{commit}}")
    bad = git(spec.source, "rev-parse", "--verify", f"{spec.bad}^{{commit}}")
    if command.run(["git", "-C", str(spec.source), "merge-base", "--is-ancestor", good, bad],
                   what=f"git merge-base --is-ancestor in {spec.source}", check=False).returncode != 0:
        raise ConfigError(f"--good {spec.good} is not an ancestor of --bad {spec.bad}",
                          fix="pass the older, good revision as --good")
    return replace(spec, good=good, bad=bad)


# ---------------------------------------------------------------- one step


def _plan(spec: BisectSpec, tree: Path) -> Any:
    """Build this revision's kernel and the A/B plan that judges it."""
    from ..build import kernel
    from ..build.image import image_for_kernel
    from ..model.plan import DEFAULT_ARMS, Plan

    role = "host" if spec.host else "guest"
    built = kernel.build_kernel(kernel.default_spec(role, source=tree, patches_dir=spec.patches,
                                                    with_patches=spec.patches is not None)).file("bzImage")
    if spec.host:
        guest = kernel.build_kernel(kernel.default_spec("guest")).file("bzImage")
        arms = tuple(replace(a, host_kernel=built) for a in DEFAULT_ARMS)
    else:
        guest, arms = built, DEFAULT_ARMS
    img = image_for_kernel(guest)
    return Plan(workloads=(spec.workload,), arms=arms, runs=spec.runs, kernel=guest, image=img.path,
                logs=spec.logs, thresholds=spec.thresholds, retries=spec.retries)


def judge(result: Any, baseline: float | None, max_drop: float) -> tuple[int, str]:
    """A step's exit code from its typed result (pure).

    :param baseline: the good revision's EOI exits saved per interrupt (None while measuring it).
    """
    if result.verdict == "pass":
        head = result.headline or {}
        value, ci = head.get("value"), head.get("ci")
        if baseline is not None and value is not None and baseline - value > max_drop and (
                ci is None or ci[1] < baseline):
            return BAD, (f"EOI exits saved per interrupt {value:.3f} dropped from the good revision's "
                         f"{baseline:.3f} (more than {max_drop:.2f})")
        return GOOD, "pass" + (f" (saved {value:.3f} per interrupt)" if value is not None else "")
    if result.verdict == "fail":
        return BAD, result.reason
    if result.verdict == "not-measurable":
        return SKIP, result.reason
    return ABORT, result.reason  # error: runs did not complete even after the retries


def step(spec: BisectSpec, tree: Path) -> tuple[int, str, Any]:
    """Build and measure the revision checked out at ``tree``: (exit code, why, result or None)."""
    from ..analysis.compare import load_thresholds
    from ..report import results
    from .runner import measure

    rev = git(tree, "rev-parse", "HEAD")
    try:
        plan = _plan(spec, tree)
        host, why = spec.host_choice
        result = measure(plan, host, why).with_(kernel=results.kernel_manifest(plan.kernel))
    except PveoiError as err:
        if err.kind in (Kind.CONFIG, Kind.CAPABILITY):  # does not build, or cannot be measured here: skip it
            return SKIP, str(err), None
        if err.kind is Kind.FINDING:
            return BAD, str(err), None
        return ABORT, str(err), None
    result = result.with_(host={**result.host, "bisect": {"revision": rev, "good": spec.good, "bad": spec.bad}})
    results.emit(result, None, spec.history)
    code, reason = judge(result, spec.baseline, load_thresholds(spec.workload, spec.thresholds)["max_effect_drop"])
    return code, reason, result


# ---------------------------------------------------------------- the bisection


@dataclass(frozen=True)
class BisectOutcome:
    """:param first_bad: the first bad commit (None when the bisection stopped early)."""

    first_bad: str | None
    subject: str
    steps: tuple[tuple[str, int, str], ...]
    log: str


def _step_log(history: Path) -> list[tuple[str, int, str]]:
    path = history / ".bisect-steps.jsonl"
    if not path.is_file():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def run(spec: BisectSpec) -> BisectOutcome:
    """Bisect ``spec.good..spec.bad`` in a temporary worktree; the first bad commit.

    :raises ConfigError: bad input, or the good revision is not good here.
    :raises PveoiError: infrastructure failed at the good revision.
    """
    from ..util.tmpdirs import tempdir

    spec = resolve(spec)
    spec.history.mkdir(parents=True, exist_ok=True)
    with tempdir("bisect") as tmp:
        tree = tmp / "tree"
        git(spec.source, "worktree", "add", "--detach", str(tree), spec.good)
        try:
            log.info("bisect: measuring the good revision %s first", spec.good[:12])
            code, why, result = step(spec, tree)
            if code != GOOD or result is None:
                raise ConfigError(f"the good revision {spec.good[:12]} is not good here: {why}",
                                  fix="pass a revision whose A/B passes as --good")
            spec = replace(spec, baseline=(result.headline or {}).get("value"))
            state = tmp / "spec.json"
            state.write_text(json.dumps(spec.to_json()))
            git(tree, "bisect", "start", spec.bad, spec.good)
            env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}
            # no deadline of its own: every step is an A/B with its own
            proc = command.run(["git", "-C", str(tree), "bisect", "run", sys.executable, "-m", "e2e.run.bisect",
                                "step", str(state)], what="git bisect run", env=env, timeout=None, check=False)
            text = proc.stdout + proc.stderr
            first = None
            m = re.search(r"^([0-9a-f]{40}) is the first bad commit", text, re.M)
            if m:
                first = m.group(1)
            subject = git(spec.source, "log", "-1", "--format=%s", first) if first else ""
            bisect_log = git(tree, "bisect", "log", check=False)
        finally:
            git(tree, "bisect", "reset", check=False)
            git(spec.source, "worktree", "remove", "--force", str(tree), check=False)
            git(spec.source, "worktree", "prune", check=False)
    steps = tuple(_step_log(spec.history))
    if first is None:
        raise PveoiError(f"git bisect stopped without a first bad commit: {text.strip().splitlines()[-1:]}",
                         fix=f"read the steps' results in {spec.history}", kind=Kind.INFRASTRUCTURE)
    return BisectOutcome(first, subject, steps, bisect_log)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m e2e.run.bisect step SPEC.json``: the predicate ``git bisect run`` calls (cwd: the tree)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "step":
        print("usage: python -m e2e.run.bisect step SPEC.json", file=sys.stderr)
        return ABORT
    setup_logging(1, prefix="pveoi bisect")  # pveoi's own records on stderr, one line each; no log file of its own
    spec = BisectSpec.from_json(json.loads(Path(args[1]).read_text()))
    tree = Path.cwd()
    try:
        code, why, _ = step(spec, tree)
    except KeyboardInterrupt:
        return ABORT
    rev = git(tree, "rev-parse", "HEAD")
    with open(spec.history / ".bisect-steps.jsonl", "a") as f:
        f.write(json.dumps([rev, code, why]) + "\n")
    word = {GOOD: "good", BAD: "bad", SKIP: "skip"}.get(code, "abort")
    print(f"pveoi bisect: {rev[:12]} is {word}: {why}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
