"""``pveoi image build``: the guest initramfs into the cache, its path printed."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from .common import SubParsers


@dataclass(frozen=True)
class ImageBuildOptions:
    """``pveoi image build``'s options."""

    force: bool
    json: bool

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> ImageBuildOptions:
        return cls(force=ns.force, json=ns.json)


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser("image", help="build the guest initramfs (busybox, dropbear, iperf3, pveoi-load)")
    s = p.add_subparsers(dest="image_cmd", required=True)
    b = s.add_parser("build", help="build (or find in the cache) the guest image")
    b.add_argument("--force", action="store_true", help="rebuild even on a cache hit")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON")
    b.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    return build(ImageBuildOptions.from_args(args))


def build(opts: ImageBuildOptions) -> int:
    """Build (or hit the cache), print the initrd or the manifest."""
    from ..build import image

    img = image.build_image(force=opts.force)
    if opts.json:
        print(json.dumps({"path": str(img.path), "initrd": str(img.initrd), **dict(img.manifest)}, indent=2,
                         sort_keys=True, default=str))
    else:
        print(img.initrd)
    return 0
