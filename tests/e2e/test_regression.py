"""A deliberately broken PV EOI guest kernel must be caught end to end.

The guest kernel is built with guest_patches/6.1/* plus the fixture
tests/fixtures/broken-pv-eoi/0003-broken-pv-eoi.patch, which makes every other
EOI per CPU skip the PV EOI bit and write the APIC instead (about half the
saving lost). Two clean A/Bs with the default kernel and one with the broken
kernel go into one history; ``pveoi report --check`` must pass on the clean
history and flag the broken run: the workload, the headline metric and the
drop, in the console, the HTML and the Markdown report.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.measurable import not_measurable

pytestmark = [pytest.mark.kvm, pytest.mark.slow, pytest.mark.timeout(7200)]

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "broken-pv-eoi" / "0003-broken-pv-eoi.patch"
HEADLINE = "EOI exits saved per interrupt"
AB_TIMEOUT = 1800


def pveoi(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "e2e.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)


def broken_patch_dir(tmp_path: Path, fixture: Path = FIXTURE, base: str = "6.1") -> Path:
    """The base's guest series in order, then the fixture, as one quilt dir (symlinks:
    the cache key hashes names and contents, so every build of it is the same key)."""
    from e2e.build.bases import base_named, load_series

    d = tmp_path / f"{fixture.parent.name}-{base}-patches"
    d.mkdir()
    names = []
    for patch in [*load_series(base_named(base).series_dir), fixture]:
        path = patch if isinstance(patch, Path) else patch.path
        (d / path.name).symlink_to(path)
        names.append(path.name)
    (d / "series").write_text("\n".join(names) + "\n")
    return d


def build_broken_kernel(tmp_path: Path, fixture: Path = FIXTURE, base: str = "6.1") -> Path:
    proc = pveoi("kernel", "build", "--base", base, "--patches", str(broken_patch_dir(tmp_path, fixture, base)),
                 "--json", timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    assert [p["name"] for p in manifest["patches"]][-1] == fixture.name
    assert manifest["base"] == base and manifest["version"].startswith(f"{base}.")
    bzimage = Path(manifest["path"]) / "bzImage"
    assert bzimage.is_file()
    return bzimage


def run_ab(history: Path, out: Path, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    proc = pveoi("ab", "--workload", "timer", "--runs", "3", "--json", str(out), "--history", str(history), *extra,
                 timeout=AB_TIMEOUT)
    assert out.is_file(), f"no result (exit {proc.returncode}): {proc.stderr[-3000:]}"
    doc = json.loads(out.read_text())
    if doc["verdict"] == "not-measurable":
        not_measurable(doc["reason"])
    assert proc.returncode == {"pass": 0, "fail": 1}[doc["verdict"]], proc.stderr[-2000:]
    return proc.returncode, doc


def stated_drop(line: str) -> tuple[float, float]:
    """``before -> after`` as the report states it (``... dropped 0.990 -> 0.497 (-49.8%; ...``)."""
    m = re.search(r"(-?\d+\.\d+)\s*->\s*(-?\d+\.\d+)", line)
    assert m, f"no 'before -> after' in: {line}"
    return float(m.group(1)), float(m.group(2))


def test_broken_pv_eoi_kernel_is_flagged(tmp_path: Path) -> None:
    broken = build_broken_kernel(tmp_path)
    history = tmp_path / "history"

    # A clean baseline: two A/Bs with pveoi's default guest kernel.
    clean = []
    for i in range(2):
        rc, doc = run_ab(history, tmp_path / f"clean{i}.json")
        assert rc == 0, doc["workloads"]["timer"]["reasons"]
        clean.append(doc["workloads"]["timer"]["eoi_exits_saved_per_interrupt"]["value"])
    clean_runs = set(history.glob("*.json"))
    assert len(clean_runs) == 2
    proc = pveoi("report", "--history", str(history), "--check", "--baseline", "2")
    assert proc.returncode == 0, f"clean history flagged:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"

    # The broken kernel: about half the saving is gone, so the A/B itself fails...
    rc, doc = run_ab(history, tmp_path / "broken.json", "--kernel", str(broken))
    w = doc["workloads"]["timer"]
    after = w["eoi_exits_saved_per_interrupt"]["value"]
    assert rc == 1 and w["verdict"] == "fail", w["reasons"]
    assert 0.3 <= after <= 0.7, after
    on_runs = doc["arms"]["on"]["runs"]["timer"]
    assert all(r["counts"]["kvm:kvm_pv_eoi"] > 0 for r in on_runs)
    # ...while the guest's skipped-EOI counter still agrees with the host: the
    # breakage is in the saving, not in the accounting.
    for a in w["agreement"]:
        assert a["ok"], a

    # ...and the report flags it against the clean baseline: what, by how much, since which run.
    broken_run = (set(history.glob("*.json")) - clean_runs).pop().stem
    before = sum(clean) / len(clean)
    proc = pveoi("report", "--history", str(history), "--check", "--baseline", "2")
    out = proc.stdout
    assert proc.returncode == 1, f"exit {proc.returncode}:\n{out[-3000:]}\n{proc.stderr[-2000:]}"
    # (the failed verdict has a REGRESSION line of its own; the drop is the one that says "dropped")
    flagged = [ln for ln in out.splitlines() if ln.startswith("REGRESSION") and f"{HEADLINE} dropped" in ln]
    assert flagged, out
    line = flagged[0]
    assert "timer" in line, line
    said_before, said_after = stated_drop(line)
    assert abs(said_after - after) < 0.002, (line, after)
    assert abs(said_before - before) < 0.02, (line, clean)
    assert broken_run in line, f"not dated from the broken run {broken_run}: {line}"

    html, md = history / "r.html", history / "r.md"
    proc = pveoi("report", "--history", str(history), "--baseline", "2", "--html", str(html), "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in (html, md):
        assert path.is_file(), f"{path} not written: {proc.stderr[-2000:]}"
        text = path.read_text()
        for needle in ("timer", HEADLINE, "dropped", f"{said_after:.3f}", broken_run):
            assert needle in text, f"{path} does not mention the regression ({needle!r} missing)"


ONE_IN_100 = {"6.1": REPO / "tests" / "fixtures" / "pv-eoi-1-in-100" / "0004-pv-eoi-1-in-100.patch",
              "6.12": REPO / "tests" / "fixtures" / "pv-eoi-1-in-100" / "6.12" / "0004-pv-eoi-1-in-100.patch"}


@pytest.mark.parametrize("base", sorted(ONE_IN_100))
def test_one_in_100_is_flagged_against_clean_history(tmp_path: Path, base: str) -> None:
    """A guest writing 1 EOI in 100 natively passes its own A/B (0.98 > 0.90), but
    ``report --check`` flags it against three clean runs of the same runner and base: the
    noise-aware floor, not the fixed threshold, catches a 1 % drop, on every base."""
    kernel = build_broken_kernel(tmp_path, ONE_IN_100[base], base)
    history = tmp_path / "history"
    clean = []
    for i in range(3):
        rc, doc = run_ab(history, tmp_path / f"clean{i}.json", "--base", base)
        assert rc == 0, doc["workloads"]["timer"]["reasons"]
        clean.append(doc["workloads"]["timer"]["eoi_exits_saved_per_interrupt"]["value"])
    proc = pveoi("report", "--history", str(history), "--check", "--baseline", "3")
    assert proc.returncode == 0, f"clean history flagged:\n{proc.stdout[-3000:]}"
    rc, doc = run_ab(history, tmp_path / "one-in-100.json", "--kernel", str(kernel))
    w = doc["workloads"]["timer"]
    after = w["eoi_exits_saved_per_interrupt"]["value"]
    assert rc == 0 and w["verdict"] == "pass", w["reasons"]  # the fixed 0.90 threshold cannot see it
    assert 0.004 <= min(clean) - after <= 0.03, (clean, after)
    assert all(a["ok"] for a in w["agreement"])  # the accounting stays exact
    proc = pveoi("report", "--history", str(history), "--check", "--baseline", "3")
    regressions = [ln for ln in proc.stdout.splitlines() if ln.startswith("REGRESSION")]
    assert proc.returncode == 1 and regressions, proc.stdout[-3000:]
    # The per-event trace sees it directly: about 1 % of armed EOIs written natively.
    taken = [ln for ln in regressions if "PV EOI taken when armed dropped" in ln]
    assert taken, proc.stdout[-3000:]
    said_before, said_after = stated_drop(taken[0])
    assert said_before > 0.998 and 0.985 <= said_after <= 0.995, taken[0]
    # The headline itself drops by about 0.01; its noise-aware floor (about 0.0067 for timer) flags it
    # on most nights (see the README's detection floors), so it is reported, not required here.
    saved = [ln for ln in regressions if f"{HEADLINE} dropped" in ln]
    if saved:
        assert abs(stated_drop(saved[0])[1] - after) < 0.002, saved[0]


DOUBLE_EOI = {"6.1": REPO / "tests" / "fixtures" / "double-eoi-1-in-100" / "0004-double-eoi-1-in-100.patch",
              "6.12": REPO / "tests" / "fixtures" / "double-eoi-1-in-100" / "6.12" / "0004-double-eoi-1-in-100.patch"}


@pytest.mark.parametrize("base", sorted(DOUBLE_EOI))
def test_a_double_eoi_is_a_regression_on_its_first_night(tmp_path: Path, base: str) -> None:
    """A guest that writes a second EOI after 1 PV EOI in 100 keeps every PV EOI figure (taken when armed,
    the workload's own, exact agreement) and moves the headline by about 1 %, which alone would be a
    warning; the EOIs with no vector in service make ``report --check`` exit 1 on its first night."""
    kernel = build_broken_kernel(tmp_path, DOUBLE_EOI[base], base)
    history = tmp_path / "history"
    for i in range(3):
        rc, doc = run_ab(history, tmp_path / f"clean{i}.json", "--base", base)
        assert rc == 0, doc["workloads"]["timer"]["reasons"]
    rc, doc = run_ab(history, tmp_path / "double.json", "--kernel", str(kernel))
    w = doc["workloads"]["timer"]
    assert rc == 0 and w["verdict"] == "pass", w["reasons"]  # a single A/B cannot see it
    assert all(a["ok"] for a in w["agreement"])  # the accounting stays exact
    proc = pveoi("report", "--history", str(history), "--check", "--baseline", "3")
    regressions = [ln for ln in proc.stdout.splitlines() if ln.startswith("REGRESSION")]
    assert proc.returncode == 1, proc.stdout[-3000:]
    rose = [ln for ln in regressions if "EOIs with no vector in service per interrupt rose" in ln]
    assert rose, proc.stdout[-3000:]
    before, after = stated_drop(rose[0])
    assert before < 0.002 and 0.004 <= after <= 0.03, rose[0]  # about one extra EOI per 100 PV EOIs
