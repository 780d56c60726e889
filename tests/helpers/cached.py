"""What the machine's pveoi cache already holds: read, never built here (a test that needs it
skips when it is missing)."""

from __future__ import annotations

import json
from pathlib import Path


def is_cloud_kernel(manifest: Path) -> bool:
    """Whether the kernel entry of ``manifest`` is Debian's cloud flavour (``pveoi kernel fetch --debian``'s
    default: virtio as modules, no 9p), not another package fetched beside it (the generic
    ``linux-image-amd64`` a virtual-host test fetches)."""
    try:
        source = json.loads(manifest.read_text()).get("source") or {}
    except (OSError, ValueError):
        return False
    return "-cloud-" in str(source.get("package", ""))


def fetched_debian_bzimage() -> Path | None:
    """A fetched Debian cloud kernel's bzImage in the default cache (an entry holding ``modules.tar``), if any."""
    from e2e.build.cache import cache_root

    for manifest in sorted((cache_root() / "kernels").glob("deb-*/manifest.json")):
        if (manifest.parent / "modules.tar").is_file() and is_cloud_kernel(manifest):
            return manifest.parent / "bzImage"
    return None
