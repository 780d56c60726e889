"""
Recording one run's events: :class:`PerfRecord` runs one ``perf record`` of :data:`TRACED` on
the QEMU process (every thread: vCPUs, and the I/O threads whose MSIs raise
``kvm_apic_accept_irq``) over the enabled window, and returns ``perf script``'s text
(:mod:`e2e.measure.trace` summarizes it). ``perf stat`` (:mod:`e2e.measure.perf`) counts; this
records. A recording that lost events is never judged: :class:`~e2e.errors.PerfError`
(infrastructure).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from ..errors import CommandError, ConfigError, Kind, PerfError, PveoiError
from ..util import command
from .perf import PerfStat
from .perf_errors import perf_error
from .perf_events import Event

log = logging.getLogger(__name__)


#: What is recorded, one sample per event.
TRACED: tuple[str, ...] = ("kvm:kvm_apic_accept_irq", "kvm:kvm_inj_virq", "kvm:kvm_eoi", "kvm:kvm_pv_eoi",
                           "kvm:kvm_hypercall", "kvm:kvm_exit")


def perf_record_argv(events: Sequence[str], *, pid: int, output: Path, control_fifo: tuple[Path, Path],
                     perf: str = "perf", mmap_pages: int = 1024) -> list[str]:
    """``perf record`` of ``events`` on every thread of ``pid``, started disabled (pure).

    :raises ConfigError: no events, a bad pid, or a FIFO path with a comma.
    """
    if not events:
        raise ConfigError("no events to record", fix="pass at least one tracepoint")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ConfigError(f"bad pid {pid!r}", fix="pass QEMU's pid")
    ctl, ack = control_fifo
    if "," in str(ctl) or "," in str(ack):
        raise ConfigError(f"control FIFO paths may not contain ',' ({ctl}, {ack})", fix="use another directory")
    argv = [perf, "record", "-k", "mono", "-c", "1", "-m", str(mmap_pages), "--no-buildid",
            "--no-buildid-cache", "-o", str(output)]
    for name in events:
        argv += ["-e", name]
    return [*argv, "-p", str(pid), "-D", "-1", "--control", f"fifo:{ctl},{ack}"]


class PerfRecord(PerfStat):
    """One ``perf record`` of :data:`TRACED` on a QEMU process, over an enabled window.

    The same life cycle as :class:`~e2e.measure.perf.PerfStat` (``start``, ``enable``,
    ``disable``, ``stop``); ``stop()`` returns ``perf script``'s text.
    """

    def __init__(self, pid: int, events: Sequence[str] = TRACED, perf: str = "perf", keep_data: Path | None = None,
                 **kw: Any) -> None:
        """:param keep_data: keep ``perf.data`` there and leave ``perf script`` to whoever reads it
            (:func:`script`): ``stop()`` then returns ``""``. The virtual host's inner runner does, since
            ``perf script`` formats every event in L1's emulated CPU for seconds per guest."""
        super().__init__([Event(e) for e in events], pid=pid, perf=perf, **kw)
        self.record_events = tuple(events)
        self.keep_data = keep_data
        perf_record_argv(self.record_events, pid=pid, output=Path("out"), control_fifo=(Path("c"), Path("a")),
                         perf=perf)

    def finish(self) -> str:
        """End perf record and return ``perf script``'s text (see :meth:`PerfStat.stop`)."""
        return cast(str, self.stop())

    def salvage(self) -> str | None:
        """After a failed run: :meth:`finish` what perf recorded up to the failure (a guest's last
        exits before a triple fault are the evidence a KVM maintainer needs) and return its text, or
        None. Never raises: the run's own error matters more. (``_collect`` keeps the text even when
        it then reports lost events.)"""
        if self.output_text is None:
            try:
                self.finish()
                if self.keep_data is not None and self.keep_data.is_file():
                    self.output_text = script(self.keep_data, self.perf)[0]
            except (PveoiError, OSError, subprocess.SubprocessError) as err:
                log.debug("could not salvage the trace of a failed run: %s", err)
        return self.output_text

    def _argv(self, ctl: Path, ack: Path, workdir: Path) -> list[str]:
        assert self.pid is not None
        return perf_record_argv(self.record_events, pid=self.pid, output=workdir / "perf.data",
                                control_fifo=(ctl, ack), perf=self.perf)

    def _collect(self, workdir: Path) -> Any:
        data = workdir / "perf.data"
        if not data.is_file():
            raise PerfError("perf record wrote no perf.data",
                            fix=f"see perf's stderr: {(self.stderr_text or '').strip()[-300:]}")
        lost = lost_in_stderr(self.stderr_text or "")
        if self.keep_data is not None:
            try:
                shutil.copyfile(data, self.keep_data)
            except OSError as err:
                raise PerfError(f"cannot keep perf.data in {self.keep_data}: {err.strerror or err}",
                                fix="check the disk the logs are on", kind=Kind.INFRASTRUCTURE) from err
            text = ""
        else:
            text, _ = script(data, self.perf)
            self.output_text = text
        if lost:
            raise PerfError(f"perf record lost {lost} chunk(s) of events; the trace cannot be judged",
                            fix="the host is overloaded, or raise perf's buffer (record.perf_record_argv)",
                            kind=Kind.INFRASTRUCTURE)
        return text


def script(data: Path, perf: str = "perf") -> tuple[str, list[str]]:
    """``perf script``'s text of a ``perf.data`` of :class:`PerfRecord` (every event: thread, time, name,
    fields), and its argv.

    :raises PerfError: perf could not run, timed out or failed (infrastructure).
    """
    argv = [perf, "script", "-i", str(data), "--ns", "--show-lost-events", "-F", "tid,time,event,trace"]
    try:
        proc = command.run(argv, what="perf script", env={"LC_ALL": "C"}, timeout=600, check=False)
    except CommandError as err:  # could not run, or ran past its deadline: perf's trouble, retried
        raise PerfError(f"perf script did not finish: {err.message}", fix=err.fix, kind=Kind.INFRASTRUCTURE) from err
    if proc.returncode != 0:
        raise perf_error(proc.stderr, proc.returncode, argv, "script")
    return proc.stdout, argv


_LOST_STDERR = re.compile(r"lost (\d+) chunks", re.I)


def lost_in_stderr(text: str) -> int:
    """Chunks perf record says it lost (``Processed N events and lost M chunks!``)."""
    return sum(int(m) for m in _LOST_STDERR.findall(text))
