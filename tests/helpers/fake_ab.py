"""An A/B without QEMU: a ``Setup`` whose files need not exist, and a ``run_guest`` that writes an
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


def fake_run_guest(failures: list[Exception], windows_before: int = 0) -> Any:
    """A run_guest that writes its attempt's console log, measures ``windows_before`` of its reps (in
    its first failing attempt only), then raises the next of ``failures``, or measures every rep."""
    first_failure = [True]

    def run_guest(setup: ab.Setup, arm: ab.Arm, workload: Any, events: Any, reps: tuple[int, ...],
                  attempt: int = 1, trace: AttemptTrace | None = None, measured: Any = None) -> None:
        setup.artifacts.mkdir(parents=True, exist_ok=True)
        log = setup.artifacts / f"{attempt_name(workload.name, arm.name, reps[0], attempt)}-console.log"
        log.write_text(f"attempt {attempt}\n")
        assert trace is not None and measured is not None
        trace.extra_logs.append(log)
        if failures:
            if first_failure[0]:
                first_failure[0] = False
                for window, rep in enumerate(reps[:windows_before], 1):
                    measured(RunRecord(rep=rep, arm=arm.name, counts={}, attempt=attempt, window=window))
            raise failures.pop(0)
        for window, rep in enumerate(reps, 1):
            measured(RunRecord(rep=rep, arm=arm.name, counts={}, attempt=attempt, window=window))

    return run_guest
