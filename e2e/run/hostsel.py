"""
Choosing where KVM work runs (``--host auto|direct|virtual``), and the doctor's
probe boot: the tiny guest under ``-enable-kvm`` on this machine, which is what
exposes a backend that only emulates (e.g. ``kvm_pvm``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import CapabilityError, GuestError, PveoiError
from ..host.decision import ProbeBoot
from ..host.doctor import decision_from_report, run_doctor

log = logging.getLogger(__name__)

DEAD_STATES = ("internal-error", "guest-panicked", "shutdown", "io-error")


def probe_boot(timeout: float = 60.0) -> Callable[[], ProbeBoot]:
    """A callable that boots pveoi's guest under KVM here and reports whether it got ready."""

    def run() -> ProbeBoot:
        from ..build import image, kernel
        from ..vm.argv import MachineSpec
        from ..vm.machine import Machine

        kern = kernel.build_kernel(kernel.default_spec("guest")).file("bzImage")
        img = image.build_image()
        spec = MachineSpec(kernel=kern, initrd=img.initrd, accel="kvm", pv_eoi=True, name="pveoi-probe")
        start = time.monotonic()
        with Machine(spec, image.READY_PATTERN) as m:
            while True:
                try:
                    m.wait_ready(2.0)
                    took = time.monotonic() - start
                    return ProbeBoot(True, True, took, f"the guest reached its ready line in {took:.1f}s")
                except GuestError as err:
                    took = time.monotonic() - start
                    if not m.is_running():
                        return ProbeBoot(True, False, took, f"QEMU exited: {err}")
                    status = m.status()
                    if status in DEAD_STATES:
                        tail = [ln for ln in m.qemu_log().splitlines() if ln.strip()][:1]
                        return ProbeBoot(True, False, took, f"QEMU stopped the guest ({status})"
                                         + (f": {tail[0]}" if tail else ""))
                    if took >= timeout:
                        return ProbeBoot(True, False, took, f"no ready line within {timeout:.0f}s (status {status})")

    return run


def choose(requested: str, probe: bool = True) -> tuple[str, str, dict[str, Any]]:
    """Resolve ``--host``.

    :returns: ``(direct|virtual|not-measurable, why, the doctor's report)``; for
        ``virtual`` the report is made without a probe boot (it only records the host).
    :raises CapabilityError: ``direct`` was asked for and this machine's KVM cannot measure PV EOI.
    """
    if requested == "virtual":
        return "virtual", "asked for --host virtual", run_doctor()
    report = run_doctor(probe_boot=probe_boot() if probe else None)
    decision = decision_from_report(report)
    if requested == "direct":
        if not decision.measurable_direct:
            raise CapabilityError(f"--host direct: {decision.reason}",
                                  fix=decision.fix or "use --host virtual")
        return "direct", decision.reason, report
    if requested != "auto":
        raise PveoiError(f"unknown host kind {requested!r}", fix="use auto, direct or virtual")
    log.info("doctor: %s (%s)", decision.host, decision.reason)
    why = decision.reason + (f"; fix: {decision.fix}" if decision.host == "not-measurable" and decision.fix else "")
    return decision.host, why, report
