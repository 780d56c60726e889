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
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))

import make_golden  # noqa: E402

from e2e.analysis import stats  # noqa: E402


def compare(old: Any, new: Any, path: str = "") -> None:
    if isinstance(old, dict):
        # Figures added since the golden was written (p_rate, attempts, ...) are new; every one it holds
        # must still be there, unchanged.
        assert set(old) <= set(new), f"{path}: keys lost {set(old) - set(new)}"
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


# ---------------------------------------------------------------- the HTML report


class _Structure(HTMLParser):
    """An HTML page as (start tag, attributes) / end tag / text events: what a browser builds,
    whatever the quoting of attributes, the entity spelling or the blank lines between tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[Any, ...]] = []
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", tag, tuple(sorted(attrs))))
        self.pre += tag == "pre"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", tag, tuple(sorted(attrs))))
        self.events.append(("end", tag))

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", tag))
        self.pre -= tag == "pre"

    def handle_data(self, data: str) -> None:
        text = data if self.pre else " ".join(data.split())
        if text:
            if self.events and self.events[-1][0] == "data":  # one text node, however the parser splits it
                self.events[-1] = ("data", self.events[-1][1] + text)
            else:
                self.events.append(("data", text))

    def handle_decl(self, decl: str) -> None:
        self.events.append(("decl", decl.lower()))


def structure(page: str) -> list[tuple[Any, ...]]:
    parser = _Structure()
    parser.feed(re.sub(r"\S*?/tests/fixtures/history", "FIXTURES", page))  # where the checkout lives
    parser.close()
    return parser.events


@pytest.mark.parametrize("schema", [1, 2, 3])
def test_the_html_report_has_the_structure_it_had(schema: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "svg.hashsalt", "pveoi-golden")
    old = (GOLDEN / f"report-schema{schema}.html").read_text()
    new = make_golden.html_golden()[f"schema{schema}"]
    a, b = structure(old), structure(new)
    assert len(a) > 100
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        assert x == y, f"event {i}: was {x!r}, now {y!r}"
    assert len(a) == len(b)


def test_history_borne_text_is_escaped(tmp_path: Path) -> None:
    from e2e.analysis.history import load_history
    from e2e.analysis.regress import check
    from e2e.report.render import render_html

    evil = "<script>alert('x')</script>"
    src = next((make_golden.FIXTURES / "schema3").glob("*.json"))
    doc = json.loads(src.read_text())
    doc["runner"]["id"] = doc["runner"]["hostname"] = f"lab{evil}"
    doc["runner"]["doctor"][0]["detail"] = evil
    doc["host"]["reason"] = f"because {evil}"
    doc["workloads"]["timer"]["reasons"] = [f"reason {evil}"]
    doc["workloads"]["timer"]["notes"] = [f"note {evil}"]
    doc["workloads"]["timer"]["description"] = f'"quoted" {evil}'
    doc["logs"] = f"/nonexistent/{evil}"
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "run.json").write_text(json.dumps(doc))
    history = load_history(tmp_path / "h")
    page = render_html(history, check(history))
    assert "<script" not in page
    assert page.count("&lt;script&gt;") >= 7
    texts = [e[1] for e in structure(page) if e[0] == "data"]
    assert f"reason {evil}"[:-9] in " ".join(texts) or any(evil in t for t in texts), "shown as text, not code"
    anchors = [dict(e[2]).get("id") for e in structure(page) if e[0] == "start" and e[1] == "section"]
    assert anchors and all(a and "<" not in a for a in anchors)


def test_chromium_draws_the_same_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference page and today's, screenshotted by headless Chromium: the same pixels."""
    import shutil

    import matplotlib

    if not (shutil.which("chromium") or shutil.which("chromium-headless-shell")):
        pytest.skip("chromium is missing: run host_config/install-deps.sh (Debian package chromium)")
    from PIL import Image, ImageChops

    from tests.helpers.screens import screenshot

    monkeypatch.setitem(matplotlib.rcParams, "svg.hashsalt", "pveoi-golden")
    old, new = tmp_path / "old.html", tmp_path / "new.html"
    where = re.compile(r"\S*?/tests/fixtures/history")  # where the checkout lives is not the page's look
    old.write_text(where.sub("FIXTURES", (GOLDEN / "report-schema3.html").read_text()))
    new.write_text(where.sub("FIXTURES", make_golden.html_golden()["schema3"]))
    shots = []
    for page in (old, new):
        png = page.with_suffix(".png")
        screenshot(page, png, (1280, 3000))
        with Image.open(png) as img:
            shots.append(img.convert("RGB"))
    assert len(shots[0].getcolors(maxcolors=1 << 20) or []) > 50, "the screenshot is (nearly) blank"
    assert ImageChops.difference(shots[0], shots[1]).getbbox() is None, "the pages look different"
