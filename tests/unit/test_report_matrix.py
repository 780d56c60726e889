"""Like with like: a runner's nights on different stacks (guest base, host base, QEMU) have baselines of
their own, and the reports show the nightly's kernel matrix. No QEMU: histories are written here."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from e2e.analysis.history import load_history
from e2e.analysis.regress import check
from e2e.report.render import matrices, render_html, render_markdown
from tests.helpers.results import make_doc, noisy, write_history

QEMU = {"7.2": "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)",
        "10.0": "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"}


def on_stack(doc: dict[str, Any], guest: str | None, host: str | None, qemu: str = "7.2") -> dict[str, Any]:
    if guest is not None:
        doc["kernel"] = {"kind": "build", "flavour": "guest", "base": guest, "release": f"{guest}.9"}
    if host is not None:
        doc["host"]["virtual_host"] = {"kernels": {"stock": {"kind": "build", "flavour": "host", "base": host,
                                                             "release": f"{host}.9"}}}
    doc["runner"]["qemu"] = QEMU[qemu]
    return doc


def test_each_stack_is_its_own_baseline_and_a_left_stack_is_not_stale(tmp_path: Path) -> None:
    rng = random.Random(3)
    docs = []
    for i in range(6):  # guest 6.1 runs at 0.95, guest 6.12 at 0.85 on the same runner: no drop either way
        docs.append(on_stack(make_doc(2 * i, {"timer": (noisy(rng, 0.95, 0.005), "pass")}), "6.1", "6.1"))
        docs.append(on_stack(make_doc(2 * i + 1, {"timer": (noisy(rng, 0.85, 0.005), "pass")}), "6.12", "6.1"))
    history = load_history(write_history(tmp_path / "h", docs))
    assert history.runners() == ["r1 (guest 6.1, host 6.1, QEMU 7.2.22)", "r1 (guest 6.12, host 6.1, QEMU 7.2.22)"]
    result = check(history)
    assert result.flags == []
    # Each group's baseline holds its own stack's nights only.
    for g in result.groups:
        assert {r.run.stack for r in g.baseline} == {g.latest.run.stack}  # type: ignore[union-attr]


def test_a_real_drop_within_one_stack_is_still_flagged(tmp_path: Path) -> None:
    rng = random.Random(4)
    docs = [on_stack(make_doc(i, {"timer": (noisy(rng, 0.95, 0.005), "pass")}), "6.12", "6.12") for i in range(5)]
    docs.append(on_stack(make_doc(5, {"timer": (noisy(rng, 0.95, 0.005), "pass")}), "6.1", "6.1"))
    docs.append(on_stack(make_doc(6, {"timer": (noisy(rng, 0.80, 0.005), "pass")}), "6.12", "6.12"))
    result = check(load_history(write_history(tmp_path, docs)))
    drops = [f for f in result.flags if f.kind == "drop"]
    assert drops and all(f.runner == "r1 (guest 6.12, host 6.12, QEMU 7.2.22)" for f in drops)


def test_a_run_that_stopped_early_joins_its_runners_last_stack(tmp_path: Path) -> None:
    rng = random.Random(5)
    docs = [on_stack(make_doc(i, {"timer": (noisy(rng, 0.95, 0.005), "pass")}), "6.12", "6.1", "10.0")
            for i in range(3)]
    docs.append(on_stack(make_doc(3, {"timer": (noisy(rng, 0.95, 0.005), "pass")}), "6.1", "6.1", "10.0"))
    early = make_doc(4, {"timer": (noisy(rng, 0.95, 0.005), "pass")})
    early["runner"]["qemu"] = QEMU["10.0"]  # no kernel, no virtual host: it stopped before them
    docs.append(early)
    history = load_history(write_history(tmp_path, docs))
    assert history.runs[-1].runner == "r1 (guest 6.1, host 6.1, QEMU 10.0.2)"


def test_the_reports_show_the_kernel_matrix(tmp_path: Path) -> None:
    rng = random.Random(6)
    docs = []
    n = 0
    for guest in ("6.12", "6.1"):
        for host in ("6.1", "6.12"):
            verdict = "fail" if (guest, host) == ("6.12", "6.12") else "pass"
            docs.append(on_stack(make_doc(n, {"timer": (noisy(rng, 0.95, 0.005), verdict)}), guest, host))
            n += 1
    history = load_history(write_history(tmp_path, docs))
    result = check(history)
    (m,) = matrices(result)
    assert (m.runner, m.workload, m.qemu, m.guests, m.hosts) == ("r1", "timer", "7.2.22", ("6.1", "6.12"),
                                                                 ("6.1", "6.12"))
    assert m.cell("6.12", "6.12")[0] == "fail" and m.cell("6.1", "6.12")[0] == "pass"  # type: ignore[index]
    md = render_markdown(history, result)
    assert "Kernel matrix: timer on r1, QEMU 7.2.22" in md
    assert "| guest \\ host | 6.1 | 6.12 |" in md
    row = next(line for line in md.splitlines() if line.startswith("| 6.12 |"))
    assert row.count("**PASS**") == 1 and row.count("**FAIL**") == 1
    html = render_html(history, result)
    assert "Kernel matrix: timer on r1, QEMU 7.2.22" in html and "guest \\ host" in html
    # One stack only: no matrix, and the group is the runner id as before.
    single = load_history(write_history(tmp_path / "one", docs[:1]))
    assert matrices(check(single)) == [] and single.runners() == ["r1"]
