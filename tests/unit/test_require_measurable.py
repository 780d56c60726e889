"""PVEOI_REQUIRE_MEASURABLE: "not measurable" skips a test, or fails it where CI demands a measurement."""

from __future__ import annotations

import pytest

from tests.helpers.measurable import REQUIRE_MEASURABLE, not_measurable


@pytest.mark.parametrize("value", [None, "", "0"])
def test_not_measurable_skips_by_default(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(REQUIRE_MEASURABLE, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_MEASURABLE, value)
    with pytest.raises(pytest.skip.Exception, match="PV EOI is not measurable here: no usable KVM"):
        not_measurable("no usable KVM")


def test_not_measurable_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_MEASURABLE, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_MEASURABLE} is set: no usable KVM"):
        not_measurable("no usable KVM")


def test_ci_and_the_nightly_require_a_measurement() -> None:
    """.ci/run exports it before tox (which passes PVEOI_* on); the nightly sets it and checks the history."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    ci = (repo / ".ci" / "run").read_text()
    assert f"export {REQUIRE_MEASURABLE}=1" in ci and ci.index(REQUIRE_MEASURABLE) < ci.index("exec python3 -m tox")
    tox = (repo / "tox.ini").read_text()
    nightly = tox.split("[testenv:nightly]", 1)[1].split("\n[", 1)[0]
    assert f"{REQUIRE_MEASURABLE} = 1" in nightly and "--check --max-age 20 --require-measurable" in nightly
    assert "PVEOI_*" in tox.split("passenv", 1)[1].split("\n\n", 1)[0]
