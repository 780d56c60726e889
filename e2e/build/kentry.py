"""
A kernel's cache entry: where kernels live in the cache (:data:`KERNEL_KIND`, their manifest's
:data:`SCHEMA`), the verified entry a kernel file lies in, checking a kernel file the user named,
and an entry's manifest for reports. Both built (:mod:`e2e.build.kernel`) and fetched
(:mod:`e2e.build.prebuilt`) kernels live there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .bzimage import read_setup_header
from .cache import MANIFEST, CacheEntry, corrupt_entry_error, entry_problem

KERNEL_KIND = "kernels"
SCHEMA = 1


def entry_of(bzimage: Path) -> CacheEntry | None:
    """The kernel cache entry ``bzimage`` lives in (verified), or None for a kernel of the user's own.

    A fetched Debian kernel's entry also holds its ``modules.tar`` and
    ``config``; a pveoi build's holds its ``config``.

    :raises ConfigError: the file lies in a kernel cache entry that is damaged (named, with the fix).
    """
    path = bzimage.expanduser().resolve()
    directory = path.parent
    if directory.parent.name != KERNEL_KIND or not (directory / MANIFEST).is_file():
        return None
    manifest, problem = entry_problem(directory)
    if problem is not None or manifest is None:
        raise corrupt_entry_error(directory, problem or "no manifest", "pveoi kernel build --force, or fetch it again")
    if path.name not in manifest.get("files", {}):
        return None
    return CacheEntry(KERNEL_KIND, directory.name, directory, manifest)


def check_kernel_file(path: Path) -> Path:
    """A kernel file the user named (``--kernel``): a bzImage, and an intact cache entry if it lies in one.

    Reads the setup header and the file's size only (the entry's hashes if it
    is in the cache), so a wrong file is refused at once, before any boot.

    :returns: ``path``.
    :raises ConfigError: the file is missing, a directory, not a bzImage (an ELF vmlinux, an empty or
        truncated file, no boot signature or setup header, an insane boot protocol version), or its
        cache entry is damaged; one line naming the fix.
    """
    read_setup_header(path)
    entry_of(path)
    return path


def load_manifest(entry: CacheEntry) -> dict[str, Any]:
    """The manifest without its file list (for reports)."""
    data = json.loads((entry.path / "manifest.json").read_text())
    data.pop("files", None)
    return dict(data)
