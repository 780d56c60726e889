"""
What ``perf stat`` counts and what it prints, pure: :class:`Event` is one counter (a
tracepoint, an optional ``--filter`` and a label, e.g. ``kvm_exit[MSR]``; the same tracepoint
may appear with several filters); :data:`REQUIRED` and :func:`check_required` are the
tracepoints pveoi cannot measure without; :func:`perf_stat_argv` is the command line and
:func:`parse_perf_csv` reads its CSV back into counts.

CSV rows (``-x SEP``): ``value SEP unit SEP event SEP run-time SEP percent
SEP metric SEP metric-unit``, one row per requested event in request order.
A ``<not counted>`` value means the counted threads never ran while the
event was enabled; ``<not supported>`` that the kernel refused the event.
Both are errors here, never zero.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, MeasurementError, PerfError
from ..host.hostfacts import COUNTED

log = logging.getLogger(__name__)


#: perf's CSV field separator. It cannot appear in an event name (checked by
#: :class:`Event`) nor in a unit; filters never appear in the CSV.
SEPARATOR = ";"

#: The tracepoints pveoi cannot measure PV EOI without (:data:`e2e.host.hostfacts.COUNTED`).
REQUIRED: tuple[str, ...] = tuple(COUNTED)

NOT_COUNTED = "<not counted>"
NOT_SUPPORTED = "<not supported>"


def check_required(available: Iterable[str]) -> None:
    """Check that every tracepoint in :data:`REQUIRED` is available.

    :param available: tracepoint names, as from :func:`list_kvm_tracepoints`.
    :raises MeasurementError: naming the missing ones.
    """
    have = set(available)
    missing = [name for name in REQUIRED if name not in have]
    if missing:
        raise MeasurementError(
            f"tracepoints missing: {', '.join(missing)}; PV EOI cannot be measured without them",
            fix="use a host kernel whose kvm module has them (kvm_pv_eoi needs Linux >= 3.6) "
                "and check `perf list 'kvm:*'`",
        )


@dataclass(frozen=True)
class Event:
    """One perf counter.

    :param name: the event, e.g. ``"kvm:kvm_exit"``.
    :param filter: a tracepoint filter (``--filter``), e.g. ``"exit_reason == 124"``.
    :param label: the key of its count; defaults to ``name``. Labels must be
        unique among the events of one perf run.
    :raises ConfigError: an empty name or filter, or a name with whitespace or
        the CSV separator in it.
    """

    name: str
    filter: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.name or SEPARATOR in self.name or any(c.isspace() for c in self.name):
            raise ConfigError(f"bad perf event name {self.name!r}",
                              fix=f"use a name like kvm:kvm_exit (no spaces, no {SEPARATOR!r})")
        if self.filter is not None and (not self.filter.strip() or "\n" in self.filter):
            raise ConfigError(f"bad filter {self.filter!r} for {self.name}",
                              fix="pass None for no filter, or a one-line expression")
        if self.label is None:
            object.__setattr__(self, "label", self.name)

    @property
    def key(self) -> str:
        """The key of this event's count (its label)."""
        return self.label or self.name


def perf_stat_argv(
    events: Sequence[Event],
    *,
    pid: int | None = None,
    tids: Sequence[int] = (),
    control_fifo: tuple[Path, Path] | None = None,
    start_disabled: bool = True,
    perf: str = "perf",
    output: Path | None = None,
) -> list[str]:
    """The ``perf stat`` command line (pure).

    ``perf stat -x SEP --no-big-num -e EV [--filter F] ... (-p PID | -t T1,T2)
    [-D -1] [--control fifo:CTL,ACK] [-o OUT]``.

    :param events: the counters, in the order perf will print them.
    :param pid: count every thread of this process (threads that exist when
        perf attaches).
    :param tids: or count exactly these threads (e.g. vCPU threads).
    :param control_fifo: ``(ctl, ack)`` FIFOs for ``--control``.
    :param start_disabled: with a control FIFO, start with the events
        disabled (``-D -1``) until ``enable`` is sent; ignored without one
        (nothing could enable them).
    :param perf: the perf binary.
    :param output: write the CSV to this file instead of stderr.
    :returns: argv.
    :raises ConfigError: no events, duplicate labels, not exactly one of
        pid/tids, a bad id, or a FIFO path with a comma.
    """
    if not events:
        raise ConfigError("no perf events given", fix="pass at least one Event")
    labels = [e.key for e in events]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ConfigError(f"duplicate perf event labels {dupes}",
                          fix="give each filtered event its own label, e.g. kvm_exit[MSR]")
    if (pid is None) == (not tids):
        raise ConfigError("perf needs exactly one of pid or tids",
                          fix="pass pid=QEMU_PID or tids=vCPU thread ids")
    ids = [pid] if pid is not None else list(tids)
    if any(isinstance(i, bool) or not isinstance(i, int) or i <= 0 for i in ids):
        raise ConfigError(f"bad pid/tid in {ids}", fix="pass positive integers")
    argv = [perf, "stat", "-x", SEPARATOR, "--no-big-num"]
    for event in events:
        argv += ["-e", event.name]
        if event.filter is not None:
            argv += ["--filter", event.filter]
    if pid is not None:
        argv += ["-p", str(pid)]
    else:
        argv += ["-t", ",".join(str(t) for t in tids)]
    if control_fifo is not None:
        ctl, ack = control_fifo
        if "," in str(ctl) or "," in str(ack):
            raise ConfigError(f"control FIFO paths may not contain ',' ({ctl}, {ack})",
                              fix="use a directory without commas")
        if start_disabled:
            argv += ["-D", "-1"]
        argv += ["--control", f"fifo:{ctl},{ack}"]
    if output is not None:
        argv += ["-o", str(output)]
    return argv


def parse_perf_csv(text: str, events: Sequence[Event], sep: str = SEPARATOR) -> dict[str, int]:
    """Counts from ``perf stat -x SEP`` output (pure).

    Rows are matched to ``events`` by order (perf prints them in request
    order, and one tracepoint may appear several times with different
    filters), and each row's event name must match. Comments (``#``), blank
    lines, metric continuation rows and perf's prose (``Some events weren't
    counted...``) are skipped.

    :param text: perf's output.
    :param events: the events perf was asked for, in order.
    :param sep: the ``-x`` separator.
    :returns: label -> count. Fractional values (software clocks) are rounded.
    :raises MeasurementError: rows missing or extra, an event name
        mismatch, ``<not counted>``/``<not supported>``, or a bad value.
    """
    rows: list[list[str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = [f.strip() for f in stripped.split(sep)]
        if len(fields) < 3 or not fields[0] or not fields[2] or not _is_value(fields[0]):
            log.debug("perf output: skipping %r", line)
            continue
        rows.append(fields)
    if len(rows) != len(events):
        raise PerfError(
            f"perf printed {len(rows)} counter rows for {len(events)} events "
            f"({', '.join(e.key for e in events)})",
            fix="see perf's stderr; run the perf command by hand",
        )
    counts: dict[str, int] = {}
    for index, (fields, event) in enumerate(zip(rows, events, strict=True)):
        value, printed = fields[0], fields[2]
        if printed != event.name:
            raise PerfError(
                f"perf row {index + 1} is {printed!r}, expected {event.name!r} ({event.key})",
                fix="perf reordered or renamed events; count them in separate runs",
            )
        if value == NOT_COUNTED:
            raise PerfError(
                f"perf did not count {event.key} ({NOT_COUNTED}): the counted threads never ran "
                "while it was enabled",
                fix="check the pid/tids are the vCPU threads and that the window contains work",
            )
        if value == NOT_SUPPORTED:
            raise PerfError(
                f"{event.key} is {NOT_SUPPORTED} by this kernel",
                fix=f"check `perf list '{event.name}'` and the filter {event.filter!r}",
            )
        counts[event.key] = _to_count(value, event)
        if len(fields) > 4 and fields[4]:
            with contextlib.suppress(ValueError):
                if float(fields[4]) < 100.0:
                    log.warning("%s was counted %.2f%% of the window (multiplexed, scaled)",
                                event.key, float(fields[4]))
    return counts


def _is_value(text: str) -> bool:
    if text in (NOT_COUNTED, NOT_SUPPORTED):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _to_count(value: str, event: Event) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise PerfError(f"perf printed {value!r} for {event.key}", fix="run perf by hand")
    return round(number)
