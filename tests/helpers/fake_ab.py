"""An A/B without QEMU: a ``Setup`` whose files need not exist, and a ``run_once`` that writes an
attempt's console log and fails the way a real one does (or succeeds with no counts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e2e.model.result import RunRecord
from e2e.run import ab
from e2e.run.evidence import AttemptTrace, attempt_name


def setup_in(tmp_path: Path) -> ab.Setup:
    """An A/B's setup under ``tmp_path`` (kernel, initrd and key are never read: nothing boots)."""
    return ab.Setup(kernel=tmp_path / "bzImage", initrd=tmp_path / "initrd", private_key=tmp_path / "key",
                    host_key_line="ssh-ed25519 AAAA", artifacts=tmp_path / "logs")


def fake_run_once(failures: list[Exception]) -> Any:
    """A run_once that writes its attempt's console log, then raises the next of ``failures`` (or succeeds)."""

    def run_once(setup: ab.Setup, arm: ab.Arm, workload: Any, events: Any, rep: int, attempt: int = 1,
                 trace: AttemptTrace | None = None) -> RunRecord:
        setup.artifacts.mkdir(parents=True, exist_ok=True)
        log = setup.artifacts / f"{attempt_name(workload.name, arm.name, rep, attempt)}-console.log"
        log.write_text(f"attempt {attempt}\n")
        assert trace is not None
        trace.extra_logs.append(log)
        if failures:
            raise failures.pop(0)
        return RunRecord(rep=rep, arm=arm.name, counts={}, attempt=attempt)

    return run_once
