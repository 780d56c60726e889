"""An A/B that stops on an error still leaves a result saying so (verdict ``error``), so a
nightly's ``report --check`` sees a night that measured nothing instead of yesterday's pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e import cli
from e2e.errors import CapabilityError, ConfigError
from e2e.history import load_history
from e2e.regress import check


def fake_host(*_: Any) -> tuple[str, str, None]:
    return "virtual", "asked for --host virtual", None


def test_an_error_mid_ab_is_recorded_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def measure(*_: Any) -> dict[str, Any]:
        raise CapabilityError("perf is missing inside the virtual KVM host", fix="apt-get install linux-perf")

    monkeypatch.setattr(cli, "_choose_host", fake_host)
    monkeypatch.setattr(cli, "_measure", measure)
    history, out = tmp_path / "history", tmp_path / "ab.json"
    rc = cli.main(["ab", "--history", str(history), "--json", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "pveoi: error: perf is missing inside the virtual KVM host; fix: apt-get install linux-perf"
    doc = json.loads(out.read_text())
    assert doc["verdict"] == "error" and doc["error"]["fix"] == "apt-get install linux-perf"
    assert doc["runner"]["id"] and doc["host"]["chosen"] == "virtual"
    [recorded] = list(history.glob("*.json"))
    assert json.loads(recorded.read_text()) == doc
    run = load_history(history).runs[0]
    assert run.record("timer") is not None and run.record("timer").verdict == "error"  # type: ignore[union-attr]
    assert check(load_history(history)).findings == []  # nothing measurable before it: a note, not a regression


def test_a_config_error_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def measure(*_: Any) -> dict[str, Any]:
        raise ConfigError("--kernel /nope: no such file", fix="pass a bzImage")

    monkeypatch.setattr(cli, "_choose_host", fake_host)
    monkeypatch.setattr(cli, "_measure", measure)
    history = tmp_path / "history"
    assert cli.main(["ab", "--history", str(history)]) == 2
    assert list(history.glob("*.json")) == []
