"""Guest kernels with a planted bug from ``tests/fixtures/<fixture>/``: real builds (cached by
content hash), so for tests/e2e only; ``tests/unit/test_test_layout.py`` keeps them out of tests/unit."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def fixture_patches(fixture: str, base: str = "6.1") -> list[Path]:
    """A guest fixture's planted patches for ``base``: for 6.1 (where the fixtures began) the
    ``*.patch`` of ``tests/fixtures/<fixture>/``, for another base those of its ``<base>/``."""
    where = FIXTURES / fixture if base == "6.1" else FIXTURES / fixture / base
    found = sorted(where.glob("*.patch"))
    assert found, f"no {base} patches in {where}"
    return found


def fixture_patch_dir(fixture: str, tmp: Path, base: str = "6.1") -> Path:
    """The base's guest series in order, then the fixture's patches for that base, as one quilt
    dir of symlinks (the cache key hashes names and contents: every build is one key)."""
    from e2e.build.bases import base_named, load_series

    d = tmp / f"{fixture}-{base}-patches"
    d.mkdir()
    names = []
    for path in [p.path for p in load_series(base_named(base).series_dir)] + fixture_patches(fixture, base):
        (d / path.name).symlink_to(path)
        names.append(path.name)
    (d / "series").write_text("\n".join(names) + "\n")
    return d


def fixture_kernel(fixture: str, tmp: Path, base: str = "6.1") -> Path:
    """A guest kernel of ``base`` with a planted bug from ``tests/fixtures/<fixture>/`` (a cache hit
    once built)."""
    from e2e.build import kernel

    spec = kernel.default_spec("guest", patches_dir=fixture_patch_dir(fixture, tmp, base), base=base)
    return kernel.build_kernel(spec).file("bzImage")
