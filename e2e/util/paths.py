"""
Where pveoi's own files are: the package (:data:`PACKAGE`), its data files
(:data:`DATA`: thresholds, the report template, the virtual host's init), and the
checkout around it (:data:`REPO_ROOT`: guest_patches/, images/, host_config/).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
DATA = PACKAGE / "data"
REPO_ROOT = PACKAGE.parent
