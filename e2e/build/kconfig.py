"""
Kconfig fragments: parse, merge and render them, name the requested options a built ``.config``
dropped, and the repo's fragments of pveoi's kernel (``images/kernel/``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import ConfigError
from ..util.paths import REPO_ROOT

#: The two jobs a kernel pveoi builds can do: a guest, or the virtual KVM host (L1). One config serves
#: both, so Debian's source of a base is one build (:func:`pveoi_fragments`); the job only decides which
#: patches a kernel from the user's own tree or series gets (:func:`e2e.build.kernel.default_spec`).
ROLES = ("guest", "host")

_CONFIG_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_CONFIG_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config_fragment(text: str, origin: str = "<fragment>") -> dict[str, str]:
    """Parse a Kconfig fragment into ``{symbol: value}`` (``"n"`` for "is not set").

    :raises ConfigError: on a line that is neither an assignment, an unset
        marker, a comment nor blank (e.g. ``CONFIG_MODULES=n`` is accepted,
        ``MODULES=y`` is not).
    """
    options: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if m := _CONFIG_SET.match(line):
            options[m.group(1)] = m.group(2)
        elif m := _CONFIG_UNSET.match(line):
            options[m.group(1)] = "n"
        elif line.startswith("#"):
            continue
        else:
            raise ConfigError(
                f"{origin}:{lineno}: not a Kconfig line: {line!r}",
                fix="write CONFIG_FOO=y or '# CONFIG_FOO is not set'",
            )
    return options


def merge_fragments(fragments: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """Merge fragments in order; a later fragment overrides an earlier one."""
    merged: dict[str, str] = {}
    for frag in fragments:
        merged.update(frag)
    return merged


def render_fragment(options: Mapping[str, str]) -> str:
    """Render options back to Kconfig syntax, sorted for stable hashing."""
    lines = []
    for sym in sorted(options):
        val = options[sym]
        lines.append(f"# {sym} is not set" if val == "n" else f"{sym}={val}")
    return "\n".join(lines) + "\n"


def missing_options(requested: Mapping[str, str], final: Mapping[str, str]) -> list[str]:
    """Options whose final value differs from the requested one.

    A requested ``n`` is satisfied by absence; quoting of strings is ignored.
    """
    dropped = []
    for sym, want in requested.items():
        have = final.get(sym, "n")
        if want.strip('"') != have.strip('"'):
            dropped.append(f"{sym}={want} (got {have})")
    return dropped


def pveoi_fragments() -> list[Path]:
    """The repo's config fragments, in merge order: what a guest needs, then what the virtual host
    adds (KVM, 9p, tracing). Every kernel pveoi builds gets both, so one build of a base serves as
    guest and as virtual host: a fresh machine compiles one kernel, not two (docs/measurements.md,
    eighth session: one cold build is 10 minutes here, and the host config's kernel boots as a guest
    as fast as the guest-only one did)."""
    return [REPO_ROOT / "images" / "kernel" / "guest.config", REPO_ROOT / "images" / "kernel" / "host.config"]


def read_config(path: Path) -> dict[str, str]:
    opts: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if m := _CONFIG_SET.match(line):
            opts[m.group(1)] = m.group(2)
    return opts
