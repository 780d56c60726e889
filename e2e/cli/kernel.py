"""``pveoi kernel build`` and ``pveoi kernel fetch``: a guest or host kernel into the cache, its path printed."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from ..build.kconfig import ROLES
from .common import SubParsers, bases_help


@dataclass(frozen=True)
class KernelBuildOptions:
    """``pveoi kernel build``'s options."""

    source: Path | None
    base: str | None
    patches: Path | None
    no_patches: bool
    config: tuple[Path, ...]
    role: str
    jobs: int | None
    force: bool
    json: bool

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> KernelBuildOptions:
        return cls(source=ns.source, base=ns.base, patches=ns.patches, no_patches=ns.no_patches,
                   config=tuple(ns.config), role=ns.role, jobs=ns.jobs, force=ns.force, json=ns.json)


@dataclass(frozen=True)
class KernelFetchOptions:
    """``pveoi kernel fetch``'s options: one of ``debian``, ``path``, ``url``."""

    debian: bool
    path: Path | None
    url: str | None
    package: str | None
    sha256: str | None
    json: bool

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> KernelFetchOptions:
        return cls(debian=ns.debian, path=ns.path, url=ns.url, package=ns.package, sha256=ns.sha256, json=ns.json)


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser("kernel", help="build or fetch a guest/host kernel (cached by content hash)")
    ks = p.add_subparsers(dest="kernel_cmd", required=True)
    b = ks.add_parser("build", help="build a bzImage out of tree (Debian's linux-source-<base> or your tree)",
                      description="Build tinyconfig + kvm_guest.config + pveoi's fragments (+ --config), "
                                  "with the base's guest_patches/<base>/ applied to a private copy. Cached by "
                                  "content hash.")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--source", type=Path, metavar="DIR", help="your kernel tree (never modified); its version "
                     "picks the series (the newest base not above it) unless --base says")
    src.add_argument("--debian", action="store_true", help="Debian's linux-source-<base> (the default)")
    b.add_argument("--base", metavar="BASE", help=f"kernel base: {bases_help()}")
    b.add_argument("--patches", type=Path, metavar="DIR", help="a quilt-style patch dir instead of the base's "
                   "series (default: guest_patches/<base>/; none for a host from --source)")
    b.add_argument("--no-patches", action="store_true", help="build without any patches")
    b.add_argument("--config", type=Path, action="append", default=[], metavar="FRAGMENT",
                   help="extra Kconfig fragment, applied last (repeatable)")
    b.add_argument("--role", "--flavour", dest="role", choices=ROLES, default="guest",
                   help="what the kernel will run as; the config is the same, and Debian's source is one build "
                   "for both: the role only decides whether a kernel from --source gets pveoi's series "
                   "(guest: yes; host: no). --flavour is its old name")
    b.add_argument("-j", "--jobs", type=int, default=None, help="make jobs (default: CPU count)")
    b.add_argument("--force", action="store_true", help="rebuild even on a cache hit")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON")
    b.set_defaults(func=cmd_build)

    f = ks.add_parser("fetch", help="get a prebuilt kernel: Debian's package, a path or a URL",
                      description="Fetch a kernel without building it; cached like builds.")
    g = f.add_mutually_exclusive_group(required=True)
    g.add_argument("--debian", action="store_true", help="Debian's packaged kernel via apt (with modules)")
    g.add_argument("--path", type=Path, help="a local bzImage")
    g.add_argument("--url", help="a URL; needs --sha256")
    f.add_argument("--package", help="with --debian: the exact package (default: linux-image-cloud-amd64's)")
    f.add_argument("--sha256", help="with --url: the expected sha256")
    f.add_argument("--json", action="store_true", help="print the manifest as JSON")
    f.set_defaults(func=cmd_fetch)


def _print_entry(entry_path: Path, manifest: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"path": str(entry_path), **manifest}, indent=2, sort_keys=True))
    else:
        print(entry_path / "bzImage")


def cmd_build(args: argparse.Namespace) -> int:
    return build(KernelBuildOptions.from_args(args))


def build(opts: KernelBuildOptions) -> int:
    """Build (or hit the cache), print the entry, cap the cache."""
    from ..build import kernel
    from ..build.kentry import load_manifest

    spec = kernel.default_spec(
        role=opts.role, source=opts.source, patches_dir=opts.patches, fragments=list(opts.config),
        jobs=opts.jobs, with_patches=False if opts.no_patches else None, base=opts.base,
    )
    entry = kernel.build_kernel(spec, force=opts.force)
    _print_entry(entry.path, load_manifest(entry), opts.json)
    from .cache import cap_cache

    cap_cache([])
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    return fetch(KernelFetchOptions.from_args(args))


def fetch(opts: KernelFetchOptions) -> int:
    """Fetch a prebuilt kernel into the cache, print the entry."""
    from ..build import prebuilt
    from ..build.kentry import load_manifest

    if opts.debian:
        entry = prebuilt.fetch_debian(opts.package)
    elif opts.path:
        entry = prebuilt.fetch_path(opts.path)
    else:
        entry = prebuilt.fetch_url(opts.url or "", opts.sha256 or "")
    _print_entry(entry.path, load_manifest(entry), opts.json)
    return 0
