"""
What each attempt of a run leaves behind, kept: its logs under attempt-numbered
names (``{workload}-{arm}-{rep}`` for the first attempt, ``...-attempt{N}``
from the second; console, QEMU, perf's CSV and stderr), and, for an attempt
that failed, a structured :class:`~e2e.model.result.Attempt` naming its class
(:mod:`e2e.vm.ending`) and those logs.

:func:`e2e.run.ab.run_guest` fills an :class:`AttemptTrace` as it goes;
:func:`e2e.run.ab._run_with_retries` turns the trace of a failed attempt into an
:class:`~e2e.model.result.Attempt`.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LaunchError, PveoiError, QemuExited
from ..measure.perf import PerfStat
from ..measure.record import PerfRecord
from ..model.result import Attempt
from ..vm.ending import QEMU_ERROR, RUNNING
from ..vm.machine import Machine

log = logging.getLogger(__name__)


def attempt_name(workload: str, arm: str, rep: int, attempt: int) -> str:
    """The guest's name, and so its logs' prefix: unique per workload, arm, rep and attempt."""
    return f"{workload}-{arm}-{rep}" + (f"-attempt{attempt}" if attempt > 1 else "")


@dataclass
class AttemptTrace:
    """What one attempt has left so far (filled in by :func:`e2e.run.ab.run_guest`).

    :param artifacts: the run's log directory (paths are recorded relative to it).
    """

    artifacts: Path
    machine: Machine | None = None
    extra_logs: list[Path] = field(default_factory=list)

    def logs(self) -> tuple[str, ...]:
        """Every log of this attempt that exists, relative to :attr:`artifacts`."""
        paths = [*(self.machine.log_paths() if self.machine else []), *self.extra_logs]
        out = []
        for path in paths:
            if path.is_file():
                try:
                    out.append(str(path.relative_to(self.artifacts)))
                except ValueError:
                    out.append(str(path))
        return tuple(out)

    def attempt(self, err: PveoiError, arm: str, rep: int, attempt: int, outcome: str) -> Attempt:
        """The structured record of this attempt, failed with ``err``."""
        ended = self.machine.ended if self.machine is not None else None
        if isinstance(err, QemuExited):
            cls, evidence = err.cause, err.evidence
        elif ended is not None:
            cls, evidence = ended.cls, ended.evidence
            if cls == RUNNING:  # what failed, and what the error kept of it (a boot deadline's vCPUs)
                cls, evidence = while_running(err), (*ended.evidence, *err.evidence)
        else:
            cls, evidence = (QEMU_ERROR if isinstance(err, LaunchError) else ""), ()
        return Attempt(arm=arm, rep=rep, attempt=attempt, kind=str(err.kind), cls=cls, message=str(err),
                       logs=self.logs(), outcome=outcome, evidence=tuple(evidence))


def while_running(err: PveoiError) -> str:
    """The class of an attempt that failed while its QEMU still ran: what failed
    (:attr:`~e2e.errors.PveoiError.failed`: ``perf failure``, ``guest deadline``, ...), else
    ``qemu running``."""
    return err.failed or RUNNING


@contextlib.contextmanager
def keep_perf_output(perf: PerfStat, artifacts: Path, name: str, trace: AttemptTrace | None = None) -> Iterator[None]:
    """Keep perf's CSV and stderr as ``{name}-perf.csv`` and ``{name}-perf-stderr.log`` in ``artifacts``.

    Enter it inside ``with PerfStat(...) as perf`` so that on a failure it runs before
    :meth:`PerfStat.close` removes perf's temp dir; on success it keeps what
    :meth:`PerfStat.stop` read. A failure to copy is logged, never raised over the run's own error.
    """
    try:
        yield
    finally:
        kept = {f"{name}-perf.csv": (perf.output_text, "perf.csv"),
                f"{name}-perf-stderr.log": (perf.stderr_text, "stderr")}
        for dest, (text, inside) in kept.items():
            source = perf.workdir / inside if perf.workdir is not None else None
            try:
                if source is not None and source.is_file():
                    text = source.read_text(errors="replace")
                if text is None:
                    continue
                (artifacts / dest).write_text(text)
            except OSError as err:
                log.warning("could not keep perf's %s as %s: %s", inside, artifacts / dest, err)
                continue
            if trace is not None:
                trace.extra_logs.append(artifacts / dest)


def write_gz(path: Path, text: str) -> None:
    """Keep ``text`` gzipped at ``path`` (level 6, gzip(1)'s: half level 9's time for a trace of
    megabytes, within a few % of its size).

    :raises OSError: it could not be written.
    """
    with gzip.open(path, "wt", compresslevel=6, encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def keep_trace_output(rec: PerfRecord, artifacts: Path, name: str, trace: AttemptTrace | None = None) -> Iterator[None]:
    """Keep a :class:`e2e.measure.record.PerfRecord`'s ``perf script`` text (gzipped) and stderr as
    ``{name}-trace.txt.gz`` and ``{name}-trace-stderr.log``, on success and on failure alike
    (a failed run's events up to the failure, salvaged from perf's data before it is removed)."""
    try:
        yield
    finally:
        rec.salvage()
        stderr = rec.stderr_text
        if stderr is None and rec.workdir is not None and (rec.workdir / "stderr").is_file():
            stderr = (rec.workdir / "stderr").read_text(errors="replace")
        for dest, text in ((f"{name}-trace.txt.gz", rec.output_text), (f"{name}-trace-stderr.log", stderr)):
            if text is None:
                continue
            try:
                if dest.endswith(".gz"):
                    write_gz(artifacts / dest, text)
                else:
                    (artifacts / dest).write_text(text)
            except OSError as err:
                log.warning("could not keep the trace's %s: %s", artifacts / dest, err)
                continue
            if trace is not None:
                trace.extra_logs.append(artifacts / dest)
