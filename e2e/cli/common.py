"""What several ``pveoi`` commands share: resolving the guest kernel and image and the virtual host's
kernel, choosing the host, threshold overrides, and writing a child's output through."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..build.image import GuestImage

#: What ``add_parser(sub)`` of each command module is given: the top-level parser's subcommands.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def bases_help() -> str:
    from ..build.bases import BASES, DEFAULT_BASE

    return f"{', '.join(BASES)} (default {DEFAULT_BASE}; Debian's linux-source-<base>)"


def guest_kernel(kernel: Path | None = None, *, source: Path | None = None, patches: Path | None = None,
                 no_patches: bool = False, base: str | None = None) -> Path:
    """The guest bzImage: ``kernel`` (--kernel PATH), else built from ``source`` (with ``patches``, or none),
    else the default guest build of ``base`` (a cache hit when built)."""
    from ..build import kernel as kernels

    if kernel:
        from ..build.kentry import check_kernel_file

        return check_kernel_file(Path(kernel).expanduser().absolute())
    if source:
        patches_dir = patches.expanduser().resolve() if patches else None
        spec = kernels.default_spec("guest", source=source.expanduser().resolve(), patches_dir=patches_dir,
                                    base=base, with_patches=False if no_patches else None)
        return kernels.build_kernel(spec).file("bzImage")
    return kernels.build_kernel(kernels.default_spec("guest", base=base)).file("bzImage")


def host_kernel(base: str | None = None) -> Path:
    """The virtual KVM host's own kernel (pveoi's kernel of ``base``, the one its guests run)."""
    from ..run.runner import stock_host_kernel

    return stock_host_kernel(base)


def guest_image(kernel: Path | None, image: Path | None, workloads: Iterable[str] | None = None) -> GuestImage:
    """The guest image: ``image`` (--image DIR, a built entry, used read-only), else build or hit the cache;
    for an A/B (``workloads`` given), only the tools its workloads run."""
    from ..build import image as images

    tools = images.TOOLS
    if workloads is not None:
        from ..model.workloads import get_workloads

        tools = images.tools_for(n for w in get_workloads(list(workloads)) for n in w.needs)
    return images.guest_image(Path(kernel) if kernel else None, image, tools)


def stdout_sink(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def choose_host(requested: str) -> tuple[str, str, dict[str, Any] | None]:
    """Resolve --host auto|direct|virtual to (direct|virtual|not-measurable, why, doctor report);
    inside the virtual host the answer is always direct (that is what it is for; the caller
    outside records the doctor's report)."""
    from ..run import hostsel

    if os.environ.get("PVEOI_IN_VHOST"):
        return "direct", "running inside the virtual KVM host", None
    return hostsel.choose(requested)


def strip_dashdash(cmd: Sequence[str]) -> tuple[str, ...]:
    """A REMAINDER argument without the ``--`` that separates it."""
    return tuple(cmd[1:] if cmd and cmd[0] == "--" else cmd)


def parse_thresholds(items: Sequence[str]) -> dict[str, float]:
    """``--threshold KEY=VALUE`` overrides as a dict.

    :raises ConfigError: an item that is not KEY=NUMBER.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"bad --threshold {item!r}", fix="write KEY=NUMBER, e.g. min_eoi_saved_per_interrupt=0.8")
    return out
