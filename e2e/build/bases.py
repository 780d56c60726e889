"""
The kernel bases pveoi ships a guest series for, and applying a patch series to a tree.

A *base* is a kernel line pveoi ships a guest series for (:data:`BASES`: 6.1
and 6.12). Debian's source of a base is ``/usr/src/linux-source-<base>.tar.xz``;
a user's tree gets the series of the newest base not above its version
(:func:`base_for_version`). A series is a quilt ``series`` file naming ``-p1``
patches, applied in order with ``patch --fuzz=0`` to a private copy of the tree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError, ConfigError
from ..util import command
from ..util.paths import REPO_ROOT


@dataclass(frozen=True)
class Base:
    """A kernel line pveoi ships a guest series for, with Debian's source package of it.

    :param name: ``"6.1"``, ``"6.12"``: what ``--base`` and ``kernel = { base = ... }`` take.
    :param apt: how to install its source (the suite it comes from).
    """

    name: str
    apt: str

    @property
    def version(self) -> tuple[int, int]:
        major, minor = self.name.split(".")
        return int(major), int(minor)

    @property
    def package(self) -> str:
        return f"linux-source-{self.name}"

    @property
    def tarball(self) -> Path:
        return Path("/usr/src") / f"{self.package}.tar.xz"

    @property
    def series_dir(self) -> Path:
        """pveoi's guest series for this base."""
        return REPO_ROOT / "guest_patches" / self.name


#: The bases, oldest first. 6.1: Debian 12's own kernel line, the base every soak so far ran on;
#: 6.12: the current LTS (bookworm-backports), whose APIC callbacks changed (apic_update_callback).
BASES: dict[str, Base] = {
    "6.1": Base("6.1", "apt-get install linux-source-6.1"),
    "6.12": Base("6.12", "apt-get install -t bookworm-backports linux-source-6.12"),
}
#: The base of the quick start (why: README.md, "Kernel bases and QEMU").
DEFAULT_BASE = "6.1"

_VERSION_LINE = re.compile(r"^(VERSION|PATCHLEVEL|SUBLEVEL)\s*=\s*(\d*)\s*$", re.M)


def base_named(name: str | None) -> Base:
    """The base called ``name`` (None: :data:`DEFAULT_BASE`).

    :raises ConfigError: for a base pveoi has no series for, naming the ones it has.
    """
    name = DEFAULT_BASE if name is None else str(name).strip()
    if name not in BASES:
        raise ConfigError(f"unknown kernel base {name!r}: pveoi has series for {', '.join(BASES)}",
                          fix=f"pass --base {' or --base '.join(BASES)}, or your own series with --patches DIR")
    return BASES[name]


def tree_version(tree: Path) -> str:
    """``VERSION.PATCHLEVEL.SUBLEVEL`` of a source tree, from its top Makefile (what ``make
    kernelversion`` prints, less EXTRAVERSION; reading three lines costs no make start-up).

    :raises ConfigError: if the Makefile has no version.
    """
    try:
        head = (tree / "Makefile").read_text(errors="replace")[:4096]
    except OSError as err:
        raise ConfigError(f"cannot read {tree / 'Makefile'}: {err.strerror}", fix="pass a Linux source tree") from err
    fields = {k: v for k, v in _VERSION_LINE.findall(head)}
    if not fields.get("VERSION") or not fields.get("PATCHLEVEL"):
        raise ConfigError(f"{tree / 'Makefile'} names no kernel version", fix="pass a Linux source tree")
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields.get('SUBLEVEL') or 0}"


def base_for_version(version: str) -> Base:
    """The newest base not above ``version`` (``"6.13.2"`` -> 6.12).

    :raises ConfigError: for a kernel older than every base.
    """
    try:
        have = tuple(int(x) for x in version.split(".")[:2])
    except ValueError as err:
        raise ConfigError(f"cannot read kernel version {version!r}", fix="pass a Linux source tree") from err
    fitting = [b for b in BASES.values() if b.version <= have]
    if not fitting:
        raise ConfigError(f"Linux {version} is older than every base pveoi has a series for ({', '.join(BASES)})",
                          fix="pass your own series with --patches DIR, or --no-patches (loose agreement)")
    return max(fitting, key=lambda b: b.version)


@dataclass(frozen=True)
class Patch:
    name: str
    path: Path


def patched_paths(patches: Sequence[Patch]) -> set[str]:
    """The files a series touches, as ``patch -p1`` names them (both sides of each ``---``/``+++`` pair,
    so a rename's old name too; ``/dev/null`` left out)."""
    paths: set[str] = set()
    for patch in patches:
        for line in patch.path.read_text(errors="replace").splitlines():
            if line.startswith(("--- ", "+++ ")):
                name = line[4:].split("\t", 1)[0].strip()
                if name != "/dev/null" and "/" in name:
                    paths.add(name.split("/", 1)[1])
    return paths


def parse_series(text: str) -> list[str]:
    """Patch names from a quilt ``series`` file (comments, blanks and ``-p`` opts dropped).

    :raises ConfigError: on a patch option other than ``-p1``.
    """
    names = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        for opt in parts[1:]:
            if opt != "-p1":
                raise ConfigError(f"series: unsupported option {opt!r} for {parts[0]}", fix="use -p1 patches")
        names.append(parts[0])
    return names


def load_series(directory: Path) -> list[Patch]:
    """Read ``directory/series`` and check every patch exists.

    :raises ConfigError: if the series or a listed patch is missing.
    """
    series = directory / "series"
    if not series.is_file():
        raise ConfigError(f"no series file in {directory}", fix="list the patches, one per line, in series")
    patches = []
    for name in parse_series(series.read_text()):
        path = directory / name
        if not path.is_file():
            raise ConfigError(f"series names {name}, which is not in {directory}", fix="add it or drop it from series")
        patches.append(Patch(name, path))
    return patches


def apply_patches(tree: Path, patches: Sequence[Patch], what: str | None = None) -> None:
    """Apply ``patches`` in order to ``tree`` (a private copy).

    :param what: the series when it is pveoi's own (e.g. "pveoi's 6.12 series"): then the
        error names it and the ways out, not a rebase of pveoi's patch.
    :raises BuildError: naming the first patch that fails and its failing hunk.
    """
    for patch in patches:
        proc = command.run(
            ["patch", "-p1", "--fuzz=0", "--forward", "--batch", "--no-backup-if-mismatch", "-r", "-", "-i",
             str(patch.path)],
            what=f"patch {patch.name}", cwd=tree, check=False,
        )
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).splitlines()
            failed = [ln for ln in out if "FAILED" in ln or "malformed" in ln or "can't find file" in ln.lower()
                      or "Reversed" in ln]
            current = next((ln for ln in reversed(out) if ln.startswith("patching file")), "")
            detail = "; ".join(([current] if current else []) + failed[:3]) or (out[-1] if out else "no output")
            if what is not None:
                raise BuildError(f"{what} does not apply to this tree: {patch.name}: {detail}",
                                 fix="pass your own series with --patches DIR (or kernel = { source, patches }), "
                                     "or --no-patches to build without pveoi's patches (loose agreement)")
            raise BuildError(
                f"patch {patch.name} does not apply: {detail}",
                fix=f"rebase {patch.path} onto this kernel tree or drop it from the series",
            )
