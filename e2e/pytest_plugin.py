"""
pveoi as a pytest plugin: boot a KVM (or TCG) guest with a chosen kernel, arm
and vCPU count in a fixture, talk to it over QMP, SSH and its console, count
``kvm:*`` on its vCPUs over a ``with`` block, or run a whole A/B, in a test of
about 20 lines. Installed with pveoi (the ``pytest11`` entry point), so any
test suite gets it::

    import pytest

    @pytest.mark.qemu
    def test_timer_interrupts_arrive(pveoi_guest):
        before = pveoi_guest.interrupts()["LOC"]
        pveoi_guest.run(["usleep", "200000"])
        assert sum(pveoi_guest.interrupts()["LOC"]) > sum(before)

    @pytest.mark.kvm
    @pytest.mark.pveoi_guest(pv_eoi=True, smp=2)
    def test_pv_eoi_saves_exits(pveoi_guest):
        with pveoi_guest.count_kvm() as counts:
            pveoi_guest.run(["pveoi-load", "timer", "2000", "100"])
        assert counts["kvm:kvm_pv_eoi"] > 0

Fixtures: ``pveoi_guest`` (one booted guest, settings from the
``pveoi_guest`` marker, then the ``--pveoi-*`` options), ``pveoi_boot`` (a
factory: ``pveoi_boot(arm=..., smp=..., kernel=...)``, any number of guests),
``pveoi_ab`` (``pveoi_ab(arms=..., workloads=..., runs=...)`` runs
:func:`e2e.run.ab.run_plan` and returns the typed :class:`e2e.model.result.Result`),
``pveoi_kernel``, ``pveoi_image``, ``pveoi_kvm`` (the doctor's decision).

Every guest is shut down at the end of its test, whatever happened; when the
test failed, its console and QEMU logs are saved into the test's directory
(``--pveoi-results DIR``, else pytest's ``tmp_path``) and named in the report.

``kvm``-marked tests that use these fixtures need KVM usable *directly* (in
this process): they are skipped with the doctor's reason and fix otherwise.
On a host whose KVM the doctor routes through pveoi's virtual KVM host (e.g.
``kvm_pvm``), the guest would have to run inside that virtual host, which a
fixture in this process cannot reach; use ``pveoi ab`` (which drives the
virtual host) or run the tests on a host whose ``pveoi doctor`` says
``direct``. ``qemu``-marked tests boot under TCG anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pytest

from .model.plan import DEFAULT_RETRIES

if TYPE_CHECKING:
    from .build.image import GuestImage
    from .host.decision import Decision
    from .measure.perf import PerfStat
    from .measure.perf_events import Event
    from .model.plan import Arm
    from .model.result import Result
    from .vm.machine import Machine
    from .vm.ssh import CommandResult, GuestSsh

log = logging.getLogger(__name__)

_REPORT_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()


# ---------------------------------------------------------------- options and markers


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pveoi", "pveoi: KVM/QEMU guests as fixtures")
    group.addoption("--pveoi-kernel", metavar="BZIMAGE",
                    help="guest kernel for the pveoi fixtures (default: pveoi's patched guest kernel, built and "
                         "cached on first use)")
    group.addoption("--pveoi-image", metavar="DIR", help="a built guest image entry (default: pveoi's, cached)")
    group.addoption("--pveoi-accel", choices=("auto", "kvm", "tcg"), default="auto",
                    help="accelerator of qemu-marked guests: auto is kvm where the doctor finds KVM usable "
                         "directly, else tcg; kvm-marked tests always use kvm (default auto)")
    group.addoption("--pveoi-smp", type=int, default=2, metavar="N", help="vCPUs per guest (default 2)")
    group.addoption("--pveoi-pv-eoi", choices=("on", "off", "default"), default="on",
                    help="QEMU's kvm-pv-eoi for guests whose test does not choose (default on)")
    group.addoption("--pveoi-memory", type=int, default=256, metavar="MIB", help="guest memory (default 256)")
    group.addoption("--pveoi-boot-timeout", type=float, default=180.0, metavar="S",
                    help="seconds from QEMU start to the guest's ready line (default 180)")
    group.addoption("--pveoi-results", metavar="DIR",
                    help="save a failed test's console and QEMU logs under DIR/<test id>/ (default: the "
                         "test's tmp_path)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "qemu: boots a guest under QEMU (TCG is enough; seconds)")
    config.addinivalue_line("markers", "kvm: needs KVM usable directly by this process (skipped with the "
                                       "doctor's reason and fix otherwise)")
    config.addinivalue_line("markers", "pveoi_guest(pv_eoi=True, smp=2, kernel=None, append='', cpu_flags=(), "
                                       "accel=None): settings of the pveoi_guest fixture")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Keep each phase's report on the item, so fixtures know at teardown whether the test failed."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(_REPORT_KEY, {})[report.when] = report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORT_KEY, {})
    return any(r.failed for r in reports.values())


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Options:
    """The ``--pveoi-*`` options, parsed."""

    kernel: Path | None
    image: Path | None
    accel: str
    smp: int
    pv_eoi: bool | None
    memory_mb: int
    boot_timeout: float
    results: Path | None

    @classmethod
    def from_config(cls, config: pytest.Config) -> Options:
        from .errors import ConfigError

        def path(name: str) -> Path | None:
            value = config.getoption(name)
            return Path(value).expanduser().absolute() if value else None

        smp = int(config.getoption("--pveoi-smp"))
        if not 1 <= smp <= 64:
            raise ConfigError(f"--pveoi-smp {smp} is not in 1..64", fix="pass e.g. --pveoi-smp 2")
        pv = {"on": True, "off": False, "default": None}[config.getoption("--pveoi-pv-eoi")]
        return cls(kernel=path("--pveoi-kernel"), image=path("--pveoi-image"), accel=config.getoption("--pveoi-accel"),
                   smp=smp, pv_eoi=pv, memory_mb=int(config.getoption("--pveoi-memory")),
                   boot_timeout=float(config.getoption("--pveoi-boot-timeout")), results=path("--pveoi-results"))


@pytest.fixture(scope="session")
def pveoi_options(pytestconfig: pytest.Config) -> Options:
    """The ``--pveoi-*`` options."""
    return Options.from_config(pytestconfig)


@pytest.fixture(scope="session")
def pveoi_kvm() -> Decision:
    """The doctor's decision for this host (no probe boot): ``host`` is ``direct`` when this
    process can run KVM guests itself."""
    from .host.doctor import decision_from_report, run_doctor

    return decision_from_report(run_doctor())


def kvm_skip_reason(decision: Decision) -> str | None:
    """Why a test needing direct KVM cannot run here (None: it can), with the fix."""
    if decision.measurable_direct:
        return None
    if decision.host == "virtual":
        return (f"KVM is not usable directly: {decision.reason}. The pveoi fixtures boot guests in this process "
                "and cannot reach the virtual KVM host; fix: run this test on a host where `pveoi doctor` says "
                "direct, or measure through the virtual host with `pveoi ab`")
    return f"KVM is not usable: {decision.reason}" + (f"; fix: {decision.fix}" if decision.fix else "")


@pytest.fixture(scope="session")
def pveoi_kernel(pveoi_options: Options) -> Path:
    """The guest kernel: ``--pveoi-kernel``, else pveoi's own (built on first use, then cached)."""
    from .build import kernel
    from .build.kentry import check_kernel_file

    if pveoi_options.kernel is not None:
        check_kernel_file(pveoi_options.kernel)
        return pveoi_options.kernel
    return kernel.build_kernel(kernel.default_spec("guest")).file("bzImage")


@pytest.fixture(scope="session")
def pveoi_image(pveoi_options: Options) -> GuestImage:
    """The guest image (busybox, dropbear, the workload helpers): ``--pveoi-image``, else pveoi's."""
    from .build import image

    if pveoi_options.image is not None:
        return image.load_image(pveoi_options.image)
    return image.build_image()


# ---------------------------------------------------------------- a guest


class KvmCounter:
    """``kvm:*`` tracepoints counted on a guest's vCPU threads over a ``with`` block.

    After the block it is a mapping from event (``kvm:kvm_exit``, ``kvm_exit[MSR]``, ...) to count.
    """

    def __init__(self, events: Sequence[Event], tids: Sequence[int]) -> None:
        self.events = list(events)
        self.tids = list(tids)
        self.counts: dict[str, int] = {}
        self._perf: PerfStat | None = None

    def __enter__(self) -> KvmCounter:
        from .measure.perf import PerfStat

        perf = PerfStat(self.events, tids=self.tids)
        perf.__enter__()
        try:
            perf.start()
            perf.enable()
        except BaseException:
            perf.close()
            raise
        self._perf = perf
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        perf, self._perf = self._perf, None
        if perf is None:
            return
        try:
            if exc is None:
                perf.disable()
                self.counts = dict(perf.stop())
        finally:
            perf.close()

    def __getitem__(self, key: str) -> int:
        return self.counts[key if ":" in key or key.startswith("kvm_exit[") else f"kvm:{key}"]

    def get(self, key: str, default: int = 0) -> int:
        try:
            return self[key]
        except KeyError:
            return default

    def per_interrupt(self, key: str) -> float:
        """``key`` per injected interrupt (``kvm:kvm_inj_virq``); NaN without interrupts."""
        inj = self.counts.get("kvm:kvm_inj_virq", 0)
        return self[key] / inj if inj else float("nan")


@dataclass
class Guest:
    """A booted guest: QMP through :attr:`machine`, SSH through :attr:`ssh`, the console through
    :attr:`console`, and its vCPU threads for counting.

    :param arm: what it was booted with (PV EOI, CPU flags, kernel parameters).
    """

    machine: Machine
    ssh: GuestSsh
    arm: Arm
    accel: str
    vcpu_tids: tuple[int, ...]
    boot_seconds: float
    _events: Callable[[], Sequence[Event]] = field(repr=False, default=lambda: ())

    @property
    def console(self) -> Any:
        """The serial console (:class:`e2e.vm.console.Console`: ``expect``, ``logpath``)."""
        return self.machine.console

    def qmp(self, command: str, **arguments: Any) -> Any:
        """A QMP command's ``return`` value."""
        return self.machine.qmp(command, **arguments)

    def run(self, argv: Sequence[str] | str, timeout: float = 120.0, check: bool = True) -> CommandResult:
        """Run a command in the guest over SSH; with ``check`` a non-zero exit raises."""
        result = self.ssh.run(argv, timeout=timeout)
        return result.check() if check else result

    def interrupts(self) -> dict[str, list[int]]:
        """The guest's ``/proc/interrupts``: per-CPU counts by name (``LOC``, ``CAL``, ``TLB``, ...)."""
        from .measure.guest_counters import parse_proc_interrupts

        return parse_proc_interrupts(self.run(["cat", "/proc/interrupts"], timeout=30).stdout)

    def state(self) -> Any:
        """The guest's view (:class:`e2e.measure.guest_counters.GuestState`: interrupts and, with guest_patches/0001,
        the PV EOI feature, enable bit and skipped/written EOIs per CPU)."""
        from .measure.guest_counters import STATE_COMMAND, GuestState

        return GuestState.parse(self.run(STATE_COMMAND, timeout=30).stdout)

    def count_kvm(self, events: Sequence[Event] | None = None) -> KvmCounter:
        """A context manager counting ``kvm:*`` (default: pveoi's events and the vendor's exit
        reasons) on this guest's vCPU threads over its ``with`` block.

        :raises CapabilityError: the guest runs under TCG (no KVM exits to count).
        """
        from .errors import CapabilityError

        if self.accel != "kvm":
            raise CapabilityError(f"guest {self.machine.spec.name} runs under {self.accel}: there are no KVM exits "
                                  "to count", fix="mark the test @pytest.mark.kvm (it then runs under KVM or skips)")
        return KvmCounter(events if events is not None else self._events(), self.vcpu_tids)


def _default_events() -> Sequence[Event]:
    from .host.hostfacts import cpu_vendor, list_kvm_tracepoints
    from .run.ab import perf_events

    return perf_events(cpu_vendor(), list_kvm_tracepoints())


def _test_dir(request: pytest.FixtureRequest, options: Options) -> Path:
    if options.results is not None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid).strip("_")
        return options.results / name
    return Path(request.getfixturevalue("tmp_path"))


class GuestFactory:
    """Boots guests for one test and owns them: all are shut down at the end of the test."""

    def __init__(self, request: pytest.FixtureRequest, options: Options, kernel: Path, image: GuestImage,
                 kvm: Callable[[], Decision]) -> None:
        self.request = request
        self.options = options
        self.kernel = kernel
        self.image = image
        self._kvm = kvm
        self.guests: list[Guest] = []
        self.machines: list[Machine] = []
        self._stack = contextlib.ExitStack()

    def accel(self, wanted: str | None) -> str:
        """The accelerator for a guest: ``kvm`` for ``kvm`` tests, else the option (``auto``: kvm
        where usable directly); skips the test when KVM is required and not usable."""
        needs_kvm = wanted == "kvm" or self.request.node.get_closest_marker("kvm") is not None
        choice = "kvm" if needs_kvm else (wanted or self.options.accel)
        if choice == "auto":
            return "kvm" if kvm_skip_reason(self._kvm()) is None else "tcg"
        if choice == "kvm":
            reason = kvm_skip_reason(self._kvm())
            if reason:
                pytest.skip(reason)
        return choice

    def __call__(self, arm: Arm | None = None, *, pv_eoi: bool | str | None = "option", smp: int | None = None,
                 kernel: Path | None = None, append: str = "", cpu_flags: Sequence[str] = (),
                 accel: str | None = None, name: str | None = None) -> Guest:
        """Boot a guest and return it once SSH is up.

        :param arm: an :class:`e2e.model.plan.Arm` (its ``pv_eoi``, ``cpu_flags``, ``append``, ``kernel``,
            ``smp``); or the keyword arguments, which default to the ``--pveoi-*`` options.
        :raises Finding: under KVM, QEMU's or the guest's view of PV EOI is not the arm's.
        """
        import time

        from .build.image import READY_PATTERN
        from .model.plan import Arm
        from .run.boot import boot, machine_spec
        from .vm.machine import Machine

        if arm is None:
            arm = Arm(name or f"guest{len(self.machines)}",
                      pv_eoi=self.options.pv_eoi if pv_eoi == "option" else pv_eoi,  # type: ignore[arg-type]
                      cpu_flags=tuple(cpu_flags), append=append, kernel=kernel, smp=smp)
        chosen = self.accel(accel)
        spec = machine_spec(arm, kernel=self.kernel, initrd=self.image.initrd, accel=chosen, smp=self.options.smp,
                            memory_mb=self.options.memory_mb, name=name or f"pveoi-{arm.name}-{len(self.machines)}")
        started = time.monotonic()
        machine = Machine(spec, READY_PATTERN)
        self.machines.append(machine)
        proven = boot(self._stack, machine, arm, private_key=self.image.identity.private_key,
                      host_key_line=self.image.host_key_line, boot_timeout=self.options.boot_timeout)
        ssh, tids = proven.ssh, tuple(proven.thread_ids)
        guest = Guest(machine, ssh, arm, chosen, tids, round(time.monotonic() - started, 2), _default_events)
        self.guests.append(guest)
        return guest

    def save_logs(self) -> Path | None:
        """Copy every guest's console and QEMU logs into the test's dir; return it (None: no logs)."""
        from .errors import PveoiError

        target = _test_dir(self.request, self.options) / "pveoi-logs"
        saved = False
        for machine in self.machines:
            try:
                logs = sorted(machine.logdir.glob("*.log"))
            except PveoiError as err:  # a machine that never launched has no dir
                log.debug("no logs of %s: %s", machine.spec.name, err)
                continue
            for path in logs:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
                saved = True
        return target if saved else None

    def close(self, failed: bool) -> None:
        """Save the logs if the test failed, then shut every guest down (in reverse order)."""
        try:
            if failed:
                where = self.save_logs()
                if where is not None:
                    self.request.node.add_report_section("teardown", "pveoi", f"guest logs saved in {where}")
        finally:
            self._stack.close()


def _skip_unless_direct_kvm(request: pytest.FixtureRequest) -> None:
    """A ``kvm`` test skips here, before any kernel or image is built, unless KVM is usable directly."""
    if request.node.get_closest_marker("kvm") is not None:
        reason = kvm_skip_reason(request.getfixturevalue("pveoi_kvm"))
        if reason:
            pytest.skip(reason)


@pytest.fixture
def pveoi_boot(request: pytest.FixtureRequest, pveoi_options: Options) -> Iterator[GuestFactory]:
    """A factory booting guests for this test: ``pveoi_boot(arm=Arm("off", pv_eoi=False), smp=4)``.
    Every guest is shut down after the test; a failed test's guest logs are saved. A ``kvm`` test
    skips (with the doctor's reason and fix) unless KVM is usable directly."""
    _skip_unless_direct_kvm(request)
    factory = GuestFactory(request, pveoi_options, request.getfixturevalue("pveoi_kernel"),
                           request.getfixturevalue("pveoi_image"), lambda: request.getfixturevalue("pveoi_kvm"))
    try:
        yield factory
    finally:
        factory.close(_failed(request))


@pytest.fixture
def pveoi_guest(request: pytest.FixtureRequest) -> Guest:
    """One booted guest; settings from ``@pytest.mark.pveoi_guest(pv_eoi=..., smp=..., kernel=...,
    append=..., cpu_flags=..., accel=...)``, else the ``--pveoi-*`` options."""
    marker = request.node.get_closest_marker("pveoi_guest")
    kwargs: Mapping[str, Any] = dict(marker.kwargs) if marker else {}
    unknown = set(kwargs) - {"pv_eoi", "smp", "kernel", "append", "cpu_flags", "accel", "name", "arm"}
    if unknown:
        pytest.fail(f"unknown pveoi_guest marker argument(s) {sorted(unknown)}", pytrace=False)
    boot: GuestFactory = request.getfixturevalue("pveoi_boot")
    return boot(**kwargs)


@pytest.fixture
def pveoi_ab(request: pytest.FixtureRequest, pveoi_options: Options) -> Callable[..., Result]:
    """Run an A/B in this process and return its typed result (:func:`e2e.run.ab.run_plan`):
    ``pveoi_ab(workloads=("timer",), runs=3, arms=DEFAULT_ARMS, thresholds={...})``. Needs KVM
    usable directly (skips otherwise); the guests' logs go to the test's dir."""
    from .model.plan import DEFAULT_ARMS, Plan
    from .run.ab import run_plan

    def run(workloads: Sequence[str] = ("timer",), runs: int = 3, arms: Sequence[Arm] = DEFAULT_ARMS,
            thresholds: Mapping[str, float] | None = None, retries: int = DEFAULT_RETRIES) -> Result:
        reason = kvm_skip_reason(request.getfixturevalue("pveoi_kvm"))
        if reason:
            pytest.skip(reason)
        plan = Plan(workloads=tuple(workloads), arms=tuple(arms), runs=runs,
                    kernel=request.getfixturevalue("pveoi_kernel"), image=request.getfixturevalue("pveoi_image").path,
                    logs=_test_dir(request, pveoi_options) / "pveoi-logs",
                    thresholds=dict(thresholds or {}), retries=retries, memory_mb=pveoi_options.memory_mb,
                    boot_timeout=pveoi_options.boot_timeout)
        return run_plan(plan)

    return run
