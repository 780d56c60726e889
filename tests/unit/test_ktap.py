"""KTAP version 1 output (e2e/report/ktap.py), read back by a strict parser of the format as
Documentation/dev-tools/ktap.rst defines it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from e2e import cli
from e2e.model.result import Agreement, Comparison, Result, WorkloadResult
from e2e.report import ktap, results

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "history"
ALL = sorted(FIXTURES.glob("schema*/*.json"))

RESULT_RE = re.compile(r"(ok|not ok) ([1-9][0-9]*)(?: ([^#]+?))?(?: # (SKIP|TODO|XFAIL|TIMEOUT|ERROR)(?: (.+))?)?")
DIRECTIVES = ("SKIP", "TODO", "XFAIL", "TIMEOUT", "ERROR")


class KtapError(AssertionError):
    pass


@dataclass
class Node:
    number: int
    name: str
    ok: bool
    directive: str = ""
    reason: str = ""
    diagnostics: list[str] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    def walk(self) -> list[Node]:
        return [self, *(n for c in self.children for n in c.walk())]


def parse(text: str) -> list[Node]:
    """Parse KTAP version 1 strictly: version line, plan, numbering 1, 2, ... at every level,
    two spaces per level, known directives only, ``not ok`` for TIMEOUT and ERROR, a parent
    ``not ok`` if a (non-skipped) child is, and the parent's result right after its subtests.

    :raises KtapError: naming the line.
    """
    if not text.endswith("\n"):
        raise KtapError("no final newline")
    lines = text[:-1].split("\n")
    pos = 0

    def block(depth: int) -> list[Node]:
        nonlocal pos
        pad = "  " * depth

        def expect(line_no: int, what: str) -> str:
            if line_no >= len(lines):
                raise KtapError(f"end of input, expected {what}")
            line = lines[line_no]
            if "\t" in line or line != line.rstrip():
                raise KtapError(f"line {line_no + 1}: tab or trailing blank: {line!r}")
            if not line.startswith(pad) or line[len(pad):].startswith(" "):
                raise KtapError(f"line {line_no + 1}: expected {what} indented {len(pad)}: {line!r}")
            return line[len(pad):]

        if expect(pos, "the version line") != "KTAP version 1":
            raise KtapError(f"line {pos + 1}: not 'KTAP version 1': {lines[pos]!r}")
        plan = re.fullmatch(r"1\.\.([0-9]+)", expect(pos + 1, "the plan"))
        if not plan:
            raise KtapError(f"line {pos + 2}: not a plan: {lines[pos + 1]!r}")
        pos += 2
        nodes: list[Node] = []
        for number in range(1, int(plan.group(1)) + 1):
            children: list[Node] = []
            diagnostics: list[str] = []
            while True:
                if pos >= len(lines):
                    raise KtapError(f"end of input before test {number} of {plan.group(1)}")
                line = lines[pos]
                if line.startswith(pad + "  KTAP version 1") and line.strip() == "KTAP version 1":
                    if children or diagnostics:
                        raise KtapError(f"line {pos + 1}: a second subtest block or one after diagnostics")
                    children = block(depth + 1)
                    continue
                body = expect(pos, f"test {number}")
                pos += 1
                if body.startswith("#"):
                    if not body.startswith("# ") or len(body) < 3:
                        raise KtapError(f"line {pos}: empty or malformed diagnostic {line!r}")
                    diagnostics.append(body[2:])
                    continue
                m = RESULT_RE.fullmatch(body)
                if not m:
                    raise KtapError(f"line {pos}: not a result line: {line!r}")
                result, num, name, directive, reason = m.groups()
                if int(num) != number:
                    raise KtapError(f"line {pos}: test number {num}, expected {number}")
                ok = result == "ok"
                if directive in ("TIMEOUT", "ERROR") and ok:
                    raise KtapError(f"line {pos}: {directive} with ok")
                if ok and any(not c.ok and c.directive != "SKIP" for c in children):
                    raise KtapError(f"line {pos}: ok although a subtest failed")
                nodes.append(Node(number, name or "", ok, directive or "", reason or "", diagnostics, children))
                break
        return nodes

    top = block(0)
    # Diagnostic lines "can be anywhere in the test output" (Documentation/dev-tools/ktap.rst): the
    # report's warnings follow the last result. Anything else there is an error.
    while pos < len(lines) and lines[pos].startswith("# ") and lines[pos] == lines[pos].rstrip():
        pos += 1
    if pos != len(lines):
        raise KtapError(f"line {pos + 1}: text after the last test: {lines[pos]!r}")
    return top


# ---------------------------------------------------------------- the parser itself


GOOD = """KTAP version 1
1..2
  KTAP version 1
  1..2
  # why
  not ok 1 a
  ok 2 b # SKIP no reason
# example failed
not ok 1 example
ok 2 other # SKIP because
"""


def test_the_parser_reads_the_specs_shape() -> None:
    top = parse(GOOD)
    assert [(n.name, n.ok) for n in top] == [("example", False), ("other", True)]
    assert top[0].diagnostics == ["example failed"]
    assert [(c.name, c.ok, c.directive) for c in top[0].children] == [("a", False, ""), ("b", True, "SKIP")]
    assert top[1].reason == "because"


@pytest.mark.parametrize("bad", [
    GOOD.replace("KTAP version 1\n1..2\n  K", "TAP version 13\n1..2\n  K", 1),  # version line
    GOOD.replace("1..2\n  KTAP", "1..3\n  KTAP", 1),  # plan says 3
    GOOD.replace("ok 2 other", "ok 3 other"),  # numbering
    GOOD.replace("  not ok 1 a", "   not ok 1 a"),  # indentation
    GOOD.replace("  not ok 1 a", "\tnot ok 1 a"),
    GOOD.replace("not ok 1 example", "ok 1 example"),  # a parent passes over a failed child
    GOOD.replace("ok 2 other # SKIP because", "ok 2 other # ERROR broke"),  # ERROR needs not ok
    GOOD.replace("ok 2 other # SKIP because", "not ok 2 other # TIMEOUT"),  # fine: see below
    GOOD.replace("ok 2 other # SKIP because", "ok 2 other # BOGUS x"),
    GOOD + "ok 3 extra\n",
    GOOD[:-1],
], ids=["version", "plan", "numbering", "indent", "tab", "parent", "error-ok", "timeout-not-ok", "directive",
        "extra", "no-newline"])
def test_the_parser_is_strict(bad: str) -> None:
    if "TIMEOUT" in bad:
        assert parse(bad)[1].directive == "TIMEOUT"
        return
    with pytest.raises(KtapError):
        parse(bad)


# ---------------------------------------------------------------- pveoi's output


def check_invariants(nodes: list[Node]) -> None:
    for node in (n for top in nodes for n in top.walk()):
        if node.children and not node.ok and not node.directive:
            assert any(not c.ok and c.directive != "SKIP" for c in node.walk()[1:]), (
                f"{node.name} fails but none of its subtests does")
        assert node.name and re.fullmatch(r"[A-Za-z0-9_.-]+", node.name)


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_fixture_result_is_strict_ktap(path: Path) -> None:
    res = results.load(path)
    top = parse(ktap.render([res]))
    check_invariants(top)
    if res.workloads:
        assert [n.name for n in top] == list(res.workloads)
        for node, w in zip(top, res.workloads.values(), strict=True):
            expected = {"pass": (True, ""), "fail": (False, ""), "not-measurable": (True, "SKIP"),
                        "error": (False, "ERROR")}[w.verdict]
            assert (node.ok, node.directive) == expected, w.verdict
    else:
        assert len(top) == 1 and top[0].name == "pveoi"
        assert top[0].directive == ("SKIP" if res.verdict == "not-measurable" else "ERROR")
        assert top[0].reason


def test_a_whole_history_is_one_document() -> None:
    res = [results.load(p) for p in ALL]
    top = parse(ktap.render(res))
    check_invariants(top)
    assert len(top) == sum(max(1, len(r.workloads)) for r in res)
    assert {n.name.split(".")[0] for n in top} == {"ci-a", "ci-b"}, "named <runner>.<workload>"


def test_a_pass_carries_its_numbers_and_conditions() -> None:
    res = results.load(next(p for p in ALL if p.parent.name == "schema3"))
    (timer,) = parse(ktap.render([res]))
    assert timer.ok and timer.name == "timer"
    diag = "\n".join(timer.diagnostics)
    head = res.workloads["timer"].eoi_exits_saved_per_interrupt
    assert head is not None
    assert f"EOI exits saved per injected interrupt {head['value']:.3f} [{head['ci'][0]:.3f}, {head['ci'][1]:.3f}]" \
        in diag
    assert "kvm_exit reduction 0.4" in diag
    on = [r.counts["kvm:kvm_pv_eoi"] for r in res.runs_of("timer", "on")]
    assert f"arm on: kvm_pv_eoi={on}" in diag and "arm off: kvm_pv_eoi=[0, 0, 0]" in diag
    names = [c.name for c in timer.children]
    assert names == ["pv_eoi_used_in_every_on_run", "no_pv_eoi_in_off_runs", "eoi_saved_at_least_threshold",
                     "eoi_saved_ci_clear_of_zero", "kvm_exit_lower_with_pv_eoi", "host_guest_agreement"]
    assert all(c.ok for c in timer.children)
    assert timer.children[0].diagnostics == [f"kvm_pv_eoi per on run: {on}"]
    assert "threshold 0.90" in timer.children[2].diagnostics[0]
    agreement = timer.children[5]
    assert [c.name for c in agreement.children] == ["on_rep0", "on_rep1", "on_rep2"]


def test_a_fail_names_the_failed_conditions() -> None:
    res = results.load(next(p for p in ALL if p.name.endswith("ci-a-fail.json") and p.parent.name == "schema2"))
    (timer,) = parse(ktap.render([res]))
    assert not timer.ok
    failed = {c.name for c in timer.children if not c.ok}
    assert "pv_eoi_used_in_every_on_run" in failed and "eoi_saved_at_least_threshold" in failed


def _result(w: WorkloadResult, **kw: object) -> Result:
    return Result(verdict=w.verdict, workloads={w.workload: w}, runner={"id": "lab-1"}, **kw)  # type: ignore[arg-type]


def test_regressions_and_agreement_failures_fail_their_parent() -> None:
    regression = Comparison("difference", "stock", "mine", ("kernel",), {
        "trapped_eoi": {"a_median": 0.0, "b_median": 0.5, "diff": 0.5, "diff_ci": [0.4, 0.6], "p_value": 0.05}},
        "regression", ("arm mine traps +0.500 EOIs per interrupt more than stock",))
    info = Comparison("difference", "off", "mine", ("kernel", "pv_eoi"), {}, "info")
    w = WorkloadResult("timer", "fail", reasons=("mine vs stock: arm mine traps more",),
                       agreement=(Agreement(0, "mine", 3000, 10, False),), comparisons=(regression, info),
                       thresholds={"agreement_slack": 50, "max_agreement_error": 0.1})
    (timer,) = parse(ktap.render([_result(w)]))
    assert not timer.ok
    agreement, comparisons = timer.children
    assert not agreement.ok and agreement.children[0].name == "mine_rep0" and not agreement.children[0].ok
    assert not comparisons.ok
    assert [(c.name, c.ok) for c in comparisons.children] == [("difference_mine_vs_stock", False),
                                                               ("difference_mine_vs_off", True)]
    assert "trapped_eoi: a 0.000, b 0.500, diff 0.500 [0.400, 0.600], p 0.050" in comparisons.children[0].diagnostics


def test_not_measurable_is_a_skip_and_error_is_an_error() -> None:
    skip = WorkloadResult("block", "not-measurable", reasons=("3 run(s) injected fewer than 500 interrupts",))
    err = WorkloadResult("net", "error", reasons=("1 of 6 runs did not complete, so no verdict",
                                                  "off rep 2: # SSH lost\nagain"))
    res = Result(verdict="error", workloads={"block": skip, "net": err})
    top = parse(ktap.render([res]))
    assert [(n.name, n.ok, n.directive) for n in top] == [("block", True, "SKIP"), ("net", False, "ERROR")]
    assert top[0].reason == "3 run(s) injected fewer than 500 interrupts"
    assert "#" not in top[1].reason and "\n" not in top[1].reason


def test_a_fail_without_a_failing_condition_still_fails() -> None:
    w = WorkloadResult("timer", "fail", findings=("cpu1 did not enable PV EOI",), reasons=("cpu1 did not",))
    (timer,) = parse(ktap.render([_result(w)]))
    assert not timer.ok and [(c.name, c.ok) for c in timer.children] == [("kernel_under_test_behaved", False)]


def test_cli_writes_ktap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "report.ktap"
    assert cli.main(["report", "--history", str(FIXTURES / "schema2"), "--ktap", str(out)]) == 0
    top = parse(out.read_text())
    assert {n.name.split(".")[0] for n in top} == {"ci-a", "ci-b"}, "the latest run of each runner"
    assert out.read_text().splitlines()[-1].startswith("# WARNING [ci-b] timer: verdict turned from measurable")
    args = cli.make_parser().parse_args(["ab", "--ktap", "-"])
    assert args.ktap == "-"
    capsys.readouterr()
    results.write_ktap("-", [results.load(ALL[0])])
    parse(capsys.readouterr().out)
