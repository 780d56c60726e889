"""
Compatibility names for the guest image, which now lives in :mod:`e2e.build.image`.

Only for callers not yet moved (``ab.py`` and ``cli.py``); new code imports
:mod:`e2e.build.image`.
"""

from __future__ import annotations

from .build.image import READY_PATTERN, GuestImage, build_image, guest_image, image_for_kernel, load_image

__all__ = ["READY_PATTERN", "GuestImage", "build_image", "guest_image", "image_for_kernel", "load_image"]
