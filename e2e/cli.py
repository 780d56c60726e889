"""
The ``pveoi`` command line: a thin layer over the library.

``make_parser()`` builds the parser; ``main(argv)`` runs it and returns the
exit code. Only this module prints; errors become one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import PveoiError

log = logging.getLogger("pveoi")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pveoi: %(message)s" if verbose < 2 else
                                           "%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("paramiko", "qemu.qmp", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 3 else logging.DEBUG)


# ---------------------------------------------------------------- kernel


def _add_kernel(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("kernel", help="build or fetch a guest/host kernel (cached by content hash)")
    ks = p.add_subparsers(dest="kernel_cmd", required=True)
    b = ks.add_parser("build", help="build a bzImage out of tree (Debian linux-source-6.1 or your tree)",
                      description="Build tinyconfig + kvm_guest.config + pveoi's fragments (+ --config), "
                                  "with guest_patches/ applied to a private copy. Cached by content hash.")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--source", type=Path, metavar="DIR", help="your kernel tree (never modified)")
    src.add_argument("--debian", action="store_true", help="Debian's linux-source-6.1 (the default)")
    b.add_argument("--patches", type=Path, metavar="DIR", help="a quilt-style patch dir (default: guest_patches/ "
                   "for the guest flavour, none for host)")
    b.add_argument("--no-patches", action="store_true", help="build without any patches")
    b.add_argument("--config", type=Path, action="append", default=[], metavar="FRAGMENT",
                   help="extra Kconfig fragment, applied last (repeatable)")
    b.add_argument("--flavour", choices=["guest", "host"], default="guest")
    b.add_argument("-j", "--jobs", type=int, default=None, help="make jobs (default: CPU count)")
    b.add_argument("--force", action="store_true", help="rebuild even on a cache hit")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON")
    b.set_defaults(func=_cmd_kernel_build)

    f = ks.add_parser("fetch", help="get a prebuilt kernel: Debian's package, a path or a URL",
                      description="Fetch a kernel without building it; cached like builds.")
    g = f.add_mutually_exclusive_group(required=True)
    g.add_argument("--debian", action="store_true", help="Debian's packaged kernel via apt (with modules)")
    g.add_argument("--path", type=Path, help="a local bzImage")
    g.add_argument("--url", help="a URL; needs --sha256")
    f.add_argument("--package", help="with --debian: the exact package (default: linux-image-cloud-amd64's)")
    f.add_argument("--sha256", help="with --url: the expected sha256")
    f.add_argument("--json", action="store_true", help="print the manifest as JSON")
    f.set_defaults(func=_cmd_kernel_fetch)


def _print_entry(entry_path: Path, manifest: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"path": str(entry_path), **manifest}, indent=2, sort_keys=True))
    else:
        print(entry_path / "bzImage")


def _cmd_kernel_build(args: argparse.Namespace) -> int:
    from . import kernel

    spec = kernel.default_spec(
        flavour=args.flavour, source=args.source, patches_dir=args.patches, fragments=args.config,
        jobs=args.jobs, with_patches=False if args.no_patches else None,
    )
    entry = kernel.build_kernel(spec, force=args.force)
    _print_entry(entry.path, kernel.load_manifest(entry), args.json)
    return 0


def _cmd_kernel_fetch(args: argparse.Namespace) -> int:
    from . import kernel

    if args.debian:
        entry = kernel.fetch_debian(args.package)
    elif args.path:
        entry = kernel.fetch_path(args.path)
    else:
        entry = kernel.fetch_url(args.url, args.sha256 or "")
    _print_entry(entry.path, kernel.load_manifest(entry), args.json)
    return 0


# ---------------------------------------------------------------- main


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pveoi",
        description="End-to-end tests for KVM's paravirtual End-Of-Interrupt (PV EOI): build a guest, "
                    "boot it with kvm-pv-eoi=on and =off, count kvm:* exits with perf, assert the saving.",
    )
    parser.add_argument("--version", action="version", version=f"pveoi {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more output (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_kernel(sub)
    for adder in _EXTRA_COMMANDS:
        adder(sub)
    return parser


_EXTRA_COMMANDS: list = []  # type: ignore[type-arg]


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    _setup_logging(0 if args.quiet else args.verbose)
    try:
        return int(args.func(args))
    except PveoiError as err:
        print(f"pveoi: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("pveoi: interrupted; everything started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "make_parser", "os"]
