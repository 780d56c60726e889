"""What the machine's pveoi cache already holds: read, never built here (a test that needs it
skips when it is missing)."""

from __future__ import annotations

from pathlib import Path


def fetched_debian_bzimage() -> Path | None:
    """A fetched Debian kernel's bzImage in the default cache (an entry holding ``modules.tar``), if any."""
    from e2e.build.cache import cache_root

    for manifest in sorted((cache_root() / "kernels").glob("deb-*/manifest.json")):
        if (manifest.parent / "modules.tar").is_file():
            return manifest.parent / "bzImage"
    return None
