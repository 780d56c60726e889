"""``pveoi doctor``: can this machine measure PV EOI, and how (direct, virtual, or not at all)?"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from .common import SubParsers


@dataclass(frozen=True)
class DoctorOptions:
    """``pveoi doctor``'s options."""

    json: bool
    no_probe: bool
    always_probe: bool

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> DoctorOptions:
        return cls(json=ns.json, no_probe=ns.no_probe, always_probe=ns.always_probe)


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser("doctor", help="can this machine measure PV EOI, and how?",
                       description="Probe the KVM backend (vmx/svm/pvm/none), a probe boot under -enable-kvm, "
                                   "APICv/AVIC, perf and its permissions, QEMU and kvm-pv-eoi; decide direct, "
                                   "virtual or not measurable.")
    p.add_argument("--json", action="store_true", help="the stable machine-readable report")
    p.add_argument("--no-probe", action="store_true", help="skip the probe boot")
    p.add_argument("--always-probe", action="store_true",
                   help="run the probe boot even where the backend cannot run guests, to see the failure")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    return doctor(DoctorOptions.from_args(args))


def doctor(opts: DoctorOptions) -> int:
    """Print the doctor's report; 0 if PV EOI can be measured here (directly or virtually), else 2."""
    from ..host.doctor import format_text, run_doctor
    from ..run.hostsel import probe_boot

    report = run_doctor(probe_boot=None if opts.no_probe else probe_boot(), always_probe=opts.always_probe)
    if opts.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        sys.stdout.write(format_text(report))
    return 0 if report["decision"]["host"] != "not-measurable" else 2
