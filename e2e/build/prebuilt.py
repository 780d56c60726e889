"""
Kernels pveoi does not build, put into the kernel cache: a local bzImage, a download verified by
its sha256, or Debian's packaged kernel (its bzImage, modules and config, fetched with apt).
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..util import command
from ..util.tmpdirs import tempdir
from .bzimage import read_setup_header
from .cache import Built, Cache, CacheEntry, sha256_file, sha256_tree
from .kentry import KERNEL_KIND, SCHEMA


def fetch_path(path: Path, cache: Cache | None = None) -> CacheEntry:
    """Put a local bzImage into the cache.

    :raises ConfigError: if ``path`` is not a kernel image.
    """
    cache = cache or Cache()
    path = path.expanduser().absolute()
    if not path.is_file():
        raise ConfigError(f"kernel {path} not found", fix="pass the path of a bzImage/vmlinuz")
    read_setup_header(path)
    digest = sha256_file(path)
    key = f"file-{digest[:24]}"
    return _publish_file(cache, key, path, {"kind": "path", "origin": str(path), "sha256": digest})


def fetch_url(url: str, sha256: str, cache: Cache | None = None) -> CacheEntry:
    """Download a kernel image, verify its sha256, cache it.

    :raises ConfigError: if the digest does not match or the download fails.
    """
    cache = cache or Cache()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256 or ""):
        raise ConfigError("a URL kernel needs --sha256 with 64 hex digits", fix="pass --sha256 of the image")
    key = f"url-{sha256.lower()[:24]}"
    if hit := cache.lookup(KERNEL_KIND, key):
        return hit
    if os.environ.get("PVEOI_NO_DOWNLOAD"):
        raise ConfigError(f"{url} is not cached and PVEOI_NO_DOWNLOAD is set", fix="unset it or fetch online once")
    with tempdir("fetch") as tmp:
        target = Path(tmp) / "download"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(target, "xb") as out:
                shutil.copyfileobj(resp, out)
        except OSError as err:
            raise ConfigError(f"download of {url} failed: {err}", fix="check the URL and the network") from err
        got = sha256_file(target)
        if got != sha256.lower():
            raise ConfigError(f"{url} has sha256 {got}, expected {sha256.lower()}", fix="check --sha256 or the URL")
        read_setup_header(target)
        return _publish_file(cache, key, target, {"kind": "url", "origin": url, "sha256": got})


def _publish_file(cache: Cache, key: str, src: Path, origin: Mapping[str, Any]) -> CacheEntry:
    def build(staged: Path) -> Built:
        shutil.copy(src, staged / "bzImage")
        manifest = {"schema": SCHEMA, "kind": "fetch", "hash": key,
                    "release": read_setup_header(staged / "bzImage").release, "source": dict(origin),
                    "patches": [], "config": {}}
        return Built(("bzImage",), manifest)

    return cache.get_or_build(KERNEL_KIND, key, build)


def fetch_debian(package: str | None = None, cache: Cache | None = None) -> CacheEntry:
    """Download Debian's packaged kernel with apt, extract bzImage and modules, cache them.

    :param package: e.g. ``linux-image-6.1.0-27-cloud-amd64``, or a metapackage such as
        ``linux-image-amd64`` (the kernel it depends on); default: ``linux-image-cloud-amd64``'s.
    :raises ConfigError: if apt cannot find or download the package.
    """
    cache = cache or Cache()
    package = _resolve_meta(package or "linux-image-cloud-amd64", concrete_ok=package is not None)
    with tempdir("apt") as tmp:
        proc = command.run(["apt-get", "download", package], cwd=Path(tmp), timeout=1800, check=False,
                           fix="run apt-get update, or name an available package with --package")
        debs = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not debs:
            raise ConfigError(f"apt-get download {package} failed: {proc.stderr.strip()[-200:]}",
                              fix="run apt-get update, or name an available package with --package")
        deb = debs[0]
        digest = sha256_file(deb)
        key = f"deb-{digest[:24]}"

        def build(staged: Path) -> Built:
            root = Path(tmp) / "root"
            command.run(["dpkg-deb", "-x", str(deb), str(root)], what="dpkg-deb -x")
            vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
            if not vmlinuz:
                raise ConfigError(f"{package} holds no /boot/vmlinuz-*", fix="pick a linux-image-* package")
            release = vmlinuz[0].name.removeprefix("vmlinuz-")
            shutil.copy(vmlinuz[0], staged / "bzImage")
            files = ["bzImage"]
            mods = root / "lib" / "modules" / release
            if mods.is_dir():
                command.run(["tar", "-cf", str(staged / "modules.tar"), "-C", str(root / "lib" / "modules"),
                             release], what="packing the modules")
                files.append("modules.tar")
            config = root / "boot" / f"config-{release}"
            if config.is_file():
                shutil.copy(config, staged / "config")
                files.append("config")
            manifest = {"schema": SCHEMA, "kind": "debian", "hash": key, "release": release,
                        "source": {"kind": "debian-package", "package": package, "deb_sha256": digest,
                                   "modules_tree": sha256_tree(mods) if mods.is_dir() else None},
                        "patches": [], "config": {}}
            return Built(tuple(files), manifest)

        return cache.get_or_build(KERNEL_KIND, key, build)


def _resolve_meta(meta: str, concrete_ok: bool = False) -> str:
    """The kernel package a metapackage (``linux-image-amd64``) depends on; with ``concrete_ok``, a package
    that depends on no kernel package is taken as the kernel's own."""
    out = command.run(["apt-cache", "depends", meta], check=False, fix="run apt-get update or pass --package").stdout
    for line in out.splitlines():
        dep = line.strip().removeprefix("Depends: ")
        if dep.startswith("linux-image-") and dep != meta:
            return dep
    if concrete_ok:
        return meta
    raise ConfigError(f"cannot resolve {meta} to a kernel package", fix="run apt-get update or pass --package")
