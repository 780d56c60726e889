"""Benchmark: where a guest's boot goes under the virtual KVM host, from QEMU's start to the ready line.

Not collected by pytest (no ``test_`` prefix): speed goals belong here, not in timed assertions.
Run:

    python tests/bench_boot.py                    # 5 boots of pveoi's guest (default base) in one virtual host
    python tests/bench_boot.py --boots 8 --base 6.12
    python tests/bench_boot.py --kernel BZIMAGE --image DIR
    python tests/bench_boot.py --cpu-flag=svm=on      # an extra -cpu property: here SVM shown (pveoi hides it)

Each boot goes the A/B's way (:class:`e2e.vm.machine.Machine`: QEMU started paused, resumed, the
ready line awaited, SSH), then reads the guest's ``dmesg`` over SSH. Stages per boot:

- ``qemu_start``: QEMU start to paused with QMP up;
- ``to_ready``: resume to the ready line (what an A/B waits for), split into
  - ``before_kernel_clock``: firmware, loading kernel and initramfs, unpacking the kernel
    (``to_ready`` less the guest's uptime at its ready line),
  - ``kernel_to_init``: the kernel's own start-up (uptime at ``Run /init``), of which
    ``initramfs_unpack`` (``Unpacking initramfs`` to ``Freeing initrd memory``; it runs beside
    other initcalls),
  - ``init_to_ready``: the image's /init up to dropbear listening;
- ``ssh``: the ready line to an SSH session.

Prints one JSON line per boot and a summary line (medians). Goal (README): guest QEMU start to
ready at most 1.5x the timer workload's window (about 2.1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]\s*(.*)$")
MILESTONES = {"unpack_start": "Unpacking initramfs", "unpack_end": "Freeing initrd memory",
              "init": "Run /init as init process"}


def parse_dmesg(text: str) -> dict[str, float]:
    """Kernel timestamps of the boot's milestones (the first line of each)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _STAMP.match(line.strip())
        if not m:
            continue
        for key, needle in MILESTONES.items():
            if key not in out and needle in m.group(2):
                out[key] = float(m.group(1))
    return out


def boot_once(kernel: Path, image: Path, logs: Path, index: int, append: str = "",
              cpu_flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """One boot the A/B's way, inside this (KVM) host; its stages in seconds."""
    from e2e.build.image import READY_PATTERN, load_image
    from e2e.vm.argv import DEFAULT_APPEND, MachineSpec
    from e2e.vm.machine import Machine

    img = load_image(image)
    # printk.time=1: dmesg's timestamps (tinyconfig has no CONFIG_PRINTK_TIME); nothing else differs from an A/B.
    spec = MachineSpec(kernel=kernel, initrd=img.initrd, append=f"{DEFAULT_APPEND} printk.time=1 {append}".strip(),
                       accel="kvm", pv_eoi=True, smp=2, memory_mb=256, paused=True, name=f"boot-{index}",
                       cpu_flags=cpu_flags)
    started = time.monotonic()
    with Machine(spec, READY_PATTERN, artifacts=logs) as machine:
        machine.pv_eoi_readback()
        paused = time.monotonic()
        machine.resume()
        ready_line = machine.wait_ready(180.0)
        ready = time.monotonic()
        ssh = machine.ssh(img.identity.private_key, img.host_key_line, timeout=60)
        up = time.monotonic()
        dmesg = ssh.run(["dmesg"], timeout=60).check().stdout
    (logs / f"boot-{index}-dmesg.txt").write_text(dmesg)
    uptime = float(re.search(r"uptime=(\S+)", ready_line).group(1))  # type: ignore[union-attr]
    marks = parse_dmesg(dmesg)
    stages = {"qemu_start": paused - started, "to_ready": ready - paused,
              "before_kernel_clock": (ready - paused) - uptime, "uptime_at_ready": uptime,
              "kernel_to_init": marks.get("init"),
              "initramfs_unpack": (marks["unpack_end"] - marks["unpack_start"]
                                   if {"unpack_start", "unpack_end"} <= set(marks) else None),
              "init_to_ready": uptime - marks["init"] if "init" in marks else None, "ssh": up - ready}
    return {k: (round(v, 3) if v is not None else None) for k, v in stages.items()}


def inner(args: argparse.Namespace) -> int:
    """Inside the virtual host: boot ``--boots`` times, one JSON line each, then the medians."""
    rows = []
    for i in range(args.boots):
        row = boot_once(args.kernel, args.image, args.logs, i, args.append, tuple(args.cpu_flag))
        rows.append(row)
        print(json.dumps({"boot": i + 1, **row}), flush=True)
    summary = {k: round(statistics.median(r[k] for r in rows if r[k] is not None), 3)
               for k in rows[0] if any(r[k] is not None for r in rows)}
    print(json.dumps({"phase": "median", "boots": len(rows), **summary}), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boots", type=int, default=5)
    p.add_argument("--base", help="the guest kernel's base (default pveoi's default)")
    p.add_argument("--kernel", type=Path, help="a guest bzImage (default: pveoi's build of --base)")
    p.add_argument("--image", type=Path, help="a guest image entry (default: pveoi's)")
    p.add_argument("--logs", type=Path, default=Path("/tmp/pveoi-bench-boot"),
                   help="where each boot's console, QEMU log and dmesg are kept (shared into the virtual host)")
    p.add_argument("--append", default="", help="extra guest kernel parameters (e.g. initcall_debug)")
    p.add_argument("--cpu-flag", action="append", default=[],
                   help="an extra -cpu property of the guest, after pveoi's own, e.g. svm=on (repeatable)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inner:
        return inner(args)
    from e2e.build import image, kernel
    from e2e.util import spawn

    spawn.exit_on_sigterm()
    bz = args.kernel or kernel.build_kernel(kernel.default_spec("guest", base=args.base)).file("bzImage")
    img = args.image or image.build_image(bz).path
    print(json.dumps({"phase": "inputs", "kernel": str(bz), "image": str(img),
                      "initrd_bytes": (Path(img) / image.INITRD_NAME).stat().st_size,
                      "kernel_bytes": Path(bz).stat().st_size}), flush=True)
    started = time.monotonic()
    logs = args.logs.absolute()
    logs.mkdir(parents=True, exist_ok=True)
    inner_argv = [sys.executable, str(Path(__file__).resolve()), "--inner", "--boots", str(args.boots), "--kernel",
                  str(bz), "--image", str(img), "--logs", str(logs), "--append", args.append,
                  *(f"--cpu-flag={flag}" for flag in args.cpu_flag)]
    proc = spawn.run([sys.executable, "-m", "e2e.cli", "-q", "vhost", "--timeout", "1800", "--results", str(logs),
                      "--", *inner_argv], cwd=REPO, env=dict(os.environ), text=True)
    sys.stdout.write(proc.stdout)
    print(json.dumps({"phase": "total", "seconds": round(time.monotonic() - started, 1), "exit": proc.returncode}),
          flush=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
