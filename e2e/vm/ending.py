"""
Why a QEMU exited mid-command: one class, named from the evidence QEMU and
the guest left behind (pure; :meth:`e2e.vm.machine.Machine.exit_cause` gathers
the evidence).

Every pveoi QEMU runs with ``-no-reboot`` (:func:`e2e.vm.argv.base_argv`), so a
guest reset does not reboot the guest: QEMU turns it into a shutdown and exits
(code 0) after a QMP ``SHUTDOWN`` event whose ``reason`` (QEMU 7.2's
``ShutdownCause``, ``qapi/run-state.json``) tells how the guest ended:

========================  ==============================================
``guest-reset``           the guest reset the machine (keyboard controller,
                          port CF9, ACPI reset register, triple fault)
``guest-shutdown``        the guest powered off (ACPI S5)
``guest-panic``           a pvpanic device reported a panic
``host-signal``           QEMU got SIGTERM/SIGINT/SIGHUP (its log names the
                          signal and the sender's pid)
``host-qmp-quit``         someone sent QMP ``quit``
``host-qmp-system-reset`` someone sent QMP ``system_reset``
``host-ui``, ``host-error``  a display closed, a host-side error
========================  ==============================================

The reason alone cannot tell a kernel's orderly reset from a panic's reboot
(``panic=-1``) or a triple fault: all three are ``guest-reset``. The console
does: a kernel announces every reset it makes (``sysrq: Resetting``,
``reboot: Restarting system``) and every panic (``Kernel panic - not
syncing``), the OOM killer its kills (``Out of memory: Killed process``,
``oom-kill:``). A ``guest-reset`` the kernel did not announce is a CPU
shutdown, i.e. a triple fault (which KVM and TCG both report as a guest
reset; TCG's ``-d cpu_reset`` log says ``Triple fault``). Under KVM the
machine also asks KVM itself (:mod:`e2e.vm.shutdowns`): its record of the
shutdown exit names the vCPU and the RIP it died at. A SIGKILL leaves no
event at all, only the exit status.

Classes, most specific evidence first: ``killed by signal``, ``host quit``,
``host reset``, ``OOM``, ``panic``, ``guest poweroff``, ``triple fault``,
``guest reset``, ``qemu error``, ``unknown``. An attempt that failed while its
QEMU still ran is classed by what failed (its error's ``failed``): ``guest
deadline`` (not ready in time, or a command past its deadline), ``command
failed`` (exited non-zero), ``ssh failure``, ``qmp failure`` (hung, closed),
``perf failure``, ``measurement failure``; else ``qemu running``.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import (
    CommandFailed,
    CommandTimeout,
    GuestTimeout,
    Kind,
    MeasurementError,
    PerfError,
    QmpCommandError,
    QmpLost,
    QmpTimeout,
    SshError,
)

GUEST_RESET = "guest reset"
TRIPLE_FAULT = "triple fault"
POWEROFF = "guest poweroff"
PANIC = "panic"
OOM = "OOM"
KILLED = "killed by signal"
HOST_QUIT = "host quit"
HOST_RESET = "host reset"
QEMU_ERROR = "qemu error"
UNKNOWN = "unknown"
RUNNING = "qemu running"
#: Failures of an attempt whose QEMU still ran, by what failed (the errors' ``failed``).
WHILE_RUNNING = tuple(dict.fromkeys(cls.failed for cls in (
    GuestTimeout, QmpTimeout, QmpLost, QmpCommandError, SshError, CommandTimeout, CommandFailed, MeasurementError,
    PerfError)))

#: Every class, for validation and documentation.
CLASSES = (KILLED, HOST_QUIT, HOST_RESET, OOM, PANIC, POWEROFF, TRIPLE_FAULT, GUEST_RESET, QEMU_ERROR, UNKNOWN,
           RUNNING, *WHILE_RUNNING)

_LINE = r"[^\r\n]*"
#: The kernel's own words for each way it ends (printed even under ``quiet``: pr_emerg/pr_err, or sysrq's
#: raised loglevel).
CONSOLE_PANIC = re.compile(rf"Kernel panic - not syncing{_LINE}|Oops: {_LINE}|kernel BUG at {_LINE}|BUG: {_LINE}"
                           rf"|general protection fault{_LINE}|Unable to handle kernel{_LINE}")
CONSOLE_OOM = re.compile(rf"Out of memory{_LINE}|oom-kill:{_LINE}|invoked oom-killer{_LINE}"
                         rf"|System is deadlocked on memory{_LINE}")
#: The OOM line that says most (what was killed), quoted when there is one.
OOM_KILLED = re.compile(rf"Out of memory{_LINE}|oom-kill:{_LINE}")
CONSOLE_RESET = re.compile(rf"sysrq: Resetting{_LINE}|reboot: Restarting system{_LINE}|Rebooting in \d+ seconds{_LINE}"
                           rf"|reboot: machine restart{_LINE}|Initiating system reboot{_LINE}")
CONSOLE_POWEROFF = re.compile(rf"reboot: Power down{_LINE}|reboot: System halted{_LINE}|sysrq: Power Off{_LINE}")
TRIPLE = re.compile(rf"[Tt]riple fault{_LINE}")
QEMU_SIGNAL = re.compile(r"terminating on signal (\d+)(?: from pid (\d+)(?: \(([^)\r\n]*)\))?)?")
QEMU_TROUBLE = re.compile(rf"KVM internal error{_LINE}|kvm run failed{_LINE}|[Hh]ardware error{_LINE}"
                          rf"|qemu-system-\w+: {_LINE}")
_PRINTK_TIME = re.compile(r"^\[\s*\d+\.\d+\]\s*")

#: What to do about each class.
FIXES = {
    PANIC: "the guest kernel under test panicked: read the console log for its backtrace",
    OOM: "the guest ran out of memory: give it more (--memory) or shrink the workload",
    GUEST_RESET: "something in the guest reset it (a reboot, sysrq b, a watchdog): read the console log",
    TRIPLE_FAULT: "the guest's CPU shut down without a word from its kernel (a triple fault): under the virtual "
                  "host nested TCG does this to a few guests in a hundred by itself, and a retry absorbs it; on every "
                  "attempt it is the guest kernel's or the KVM's under test (pveoi then reports a finding); read "
                  "the console log",
    POWEROFF: "something in the guest powered it off: read the console log",
    KILLED: "nothing in pveoi stops QEMU mid-command: check the sender the QEMU log names, dmesg (the OOM "
            "killer?) and the runner's limits",
    HOST_QUIT: "another program on the host told QEMU to quit over QMP",
    HOST_RESET: "another program on the host reset the guest over QMP",
    QEMU_ERROR: "QEMU failed: read its log",
}


@dataclass(frozen=True)
class ExitCause:
    """How one QEMU ended.

    :param cls: one of :data:`CLASSES`.
    :param evidence: what says so, each ``source: what`` (``SHUTDOWN reason guest-reset``,
        ``console: 'sysrq: Resetting'``, ``QEMU log: '...'``, ``exit status -9``).
    :param detail: the class's particulars, e.g. ``signal 9 (SIGKILL)``.
    :param exitcode: QEMU's exit status (negative: the signal), None while it runs.
    """

    cls: str
    evidence: tuple[str, ...] = ()
    detail: str = ""
    exitcode: int | None = None

    @property
    def headline(self) -> str:
        """The class with its particulars: ``killed by signal 9 (SIGKILL)``, ``guest reset``."""
        if self.cls == KILLED and self.detail:
            return f"killed by {self.detail}"
        return f"{self.cls} ({self.detail})" if self.detail else self.cls

    def describe(self) -> str:
        """``guest reset (SHUTDOWN reason guest-reset; console: 'sysrq: Resetting')``."""
        return f"{self.headline} ({'; '.join(self.evidence)})" if self.evidence else self.headline

    @property
    def kind(self) -> Kind:
        """A panic of the guest kernel is a finding about it (as :class:`e2e.errors.GuestPanic`); every
        other way a QEMU ends is infrastructure (retried on a fresh guest)."""
        return Kind.FINDING if self.cls == PANIC else Kind.INFRASTRUCTURE

    @property
    def fix(self) -> str:
        """What to look at for this class (the logs are named by the caller)."""
        return FIXES.get(self.cls, "nothing in pveoi stops QEMU mid-command; read QEMU's log and the host's dmesg")

    def to_json(self) -> dict[str, Any]:
        return {"class": self.cls, "evidence": list(self.evidence), "detail": self.detail, "exitcode": self.exitcode}


def _quote(line: str, limit: int = 120) -> str:
    line = _PRINTK_TIME.sub("", line.strip())
    return repr(line if len(line) <= limit else line[:limit - 3] + "...")


def _first(pattern: re.Pattern[str], text: str) -> tuple[int, str] | None:
    """Where ``pattern`` first matches in ``text``, and the whole line it matches in."""
    m = pattern.search(text)
    if m is None:
        return None
    start = max(text.rfind("\n", 0, m.start()), text.rfind("\r", 0, m.start())) + 1
    return m.start(), text[start:m.end()]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify_exit(events: Sequence[Mapping[str, Any]], console: str, qemu_log: str,
                  exitcode: int | None, kvm: Sequence[str] = ()) -> ExitCause:
    """The class of a QEMU that exited, from its QMP events, the guest's console and QEMU's own log (pure).

    :param events: the QMP events QEMU sent (``{"event": "SHUTDOWN", "data": {"guest": true,
        "reason": "guest-reset"}, ...}``), in order.
    :param console: the guest's console transcript (its tail is enough).
    :param qemu_log: QEMU's stdout+stderr.
    :param exitcode: QEMU's exit status (negative: killed by that signal); None: still running.
    :param kvm: what KVM recorded of the guest's CPUs shutting down (:mod:`e2e.vm.shutdowns`:
        ``KVM: vCPU 1 shut down at RIP ...``): a guest reset with such a record is a triple fault
        for certain, and the record goes into the evidence of any reset.
    """
    if exitcode is None:
        return ExitCause(RUNNING, ("QEMU still runs",))
    shutdown = next((e for e in reversed(events) if e.get("event") == "SHUTDOWN"), None)
    data = dict(shutdown.get("data") or {}) if shutdown else {}
    reason = str(data.get("reason", "")) if shutdown else ""
    said: list[str] = []
    if shutdown:
        said.append(f"SHUTDOWN reason {reason or '?'}" + ("" if data.get("guest", True) else ", not the guest"))
    panicked = next((e for e in events if e.get("event") == "GUEST_PANICKED"), None)

    def cause(cls: str, *more: str, detail: str = "") -> ExitCause:
        return ExitCause(cls, (*said, *more), detail, exitcode)

    if exitcode < 0:
        sig = -exitcode
        return ExitCause(KILLED, (f"exit status {exitcode}", "no SHUTDOWN event" if not shutdown else said[0]),
                         f"signal {sig} ({_signal_name(sig)})", exitcode)
    sent = QEMU_SIGNAL.search(qemu_log)
    if reason == "host-signal" or (sent and not shutdown):
        if sent:
            sig = int(sent.group(1))
            sender = ""
            if sent.group(2):
                sender = f" from pid {sent.group(2)}" + (f" ({sent.group(3)})" if sent.group(3) else "")
            return cause(KILLED, f"QEMU log: {_quote(sent.group(0))}",
                         detail=f"signal {sig} ({_signal_name(sig)}){sender}")
        return cause(KILLED, detail="a signal")
    if reason in ("host-qmp-quit", "host-ui"):
        return cause(HOST_QUIT, detail="QMP quit" if reason == "host-qmp-quit" else "display closed")
    if reason == "host-qmp-system-reset":
        return cause(HOST_RESET, detail="QMP system_reset")
    oom, panic = _first(CONSOLE_OOM, console), _first(CONSOLE_PANIC, console)
    if oom and (panic is None or oom[0] <= panic[0] or "memory" in panic[1].lower()):
        said_oom = _first(OOM_KILLED, console) or oom
        return cause(OOM, f"console: {_quote(said_oom[1])}",
                     *([f"console: {_quote(panic[1])}"] if panic and panic[1] != said_oom[1] else []))
    if panic or panicked or reason == "guest-panic":
        more = [f"console: {_quote(panic[1])}"] if panic else []
        if panicked:
            more.append(f"GUEST_PANICKED action {dict(panicked.get('data') or {}).get('action', '?')}")
        return cause(PANIC, *more)
    off = _first(CONSOLE_POWEROFF, console)
    if reason == "guest-shutdown" or (not shutdown and off):
        return cause(POWEROFF, *([f"console: {_quote(off[1])}"] if off else []))
    triple = _first(TRIPLE, qemu_log) or _first(TRIPLE, console)
    announced = _first(CONSOLE_RESET, console)
    if reason == "guest-reset" or (not shutdown and (announced or triple)):
        if triple:
            return cause(TRIPLE_FAULT, f"{'QEMU log' if TRIPLE.search(qemu_log) else 'console'}: {_quote(triple[1])}",
                         *kvm)
        if announced:
            return cause(GUEST_RESET, f"console: {_quote(announced[1])}", *kvm)
        return cause(TRIPLE_FAULT, *kvm, "console: no reset, panic or shutdown announced by the guest kernel")
    trouble = [m.group(0) for m in QEMU_TROUBLE.finditer(qemu_log)]
    if exitcode > 0 or reason == "host-error":
        return cause(QEMU_ERROR, f"exit code {exitcode}", *([f"QEMU log: {_quote(trouble[-1])}"] if trouble else []))
    tail = [ln for ln in console.splitlines() if ln.strip()][-1:]
    return cause(UNKNOWN, f"exit code {exitcode}", *([] if shutdown else ["no SHUTDOWN event"]),
                 *([f"console's last line: {_quote(tail[0])}"] if tail else []))
