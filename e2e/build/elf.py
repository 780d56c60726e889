"""
Host binaries for the guest image: which dynamic loader and shared libraries
an x86-64 ELF binary needs (its ``PT_INTERP`` and ``ldd``'s answer), and the
set of host files a list of tools brings into the image.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError, ConfigError
from ..util import command
from .cache import sha256_file


@dataclass(frozen=True)
class Tool:
    """A host binary the image needs.

    :param name: its command name (looked up on ``PATH`` if ``path`` is missing).
    :param path: where Debian installs it.
    :param package: the Debian package(s) that provide it (for the fix).
    :param dest: its path in the image, or None for a build-time-only tool.
    """

    name: str
    path: str
    package: str
    dest: str | None


LDD = Tool("ldd", "/usr/bin/ldd", "libc-bin", None)


def elf_interpreter(path: Path) -> str | None:
    """The ELF ``PT_INTERP`` (dynamic loader) of an x86-64 binary; None if static.

    :raises BuildError: if ``path`` is not a 64-bit little-endian ELF file.
    """
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise BuildError(f"{path} is not a 64-bit little-endian ELF binary",
                             fix="install the x86-64 Debian package")
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(phnum):
            p_type, = struct.unpack_from("<I", table, i * phentsize)
            if p_type == 3:  # PT_INTERP
                offset, = struct.unpack_from("<Q", table, i * phentsize + 8)
                size, = struct.unpack_from("<Q", table, i * phentsize + 32)
                f.seek(offset)
                return f.read(size).rstrip(b"\0").decode()
    return None


_LDD_ARROW = re.compile(r"^\s*(\S+)\s+=>\s+(.*?)\s*(?:\(0x[0-9a-fA-F]+\))?\s*$")
_LDD_BARE = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-fA-F]+\)\s*$")


def parse_ldd(output: str, binary: str = "<binary>") -> list[str]:
    """The absolute paths of the libraries (and loader) in ``ldd`` output, in order.

    The vDSO has no file and is skipped.

    :raises BuildError: if a library is ``not found``.
    """
    paths: list[str] = []
    for line in output.splitlines():
        if m := _LDD_ARROW.match(line):
            name, where = m.group(1), m.group(2)
            if where == "not found":
                raise BuildError(f"{binary} needs {name}, which is not installed",
                                 fix=f"apt-get install --reinstall the package of {binary}")
            if where.startswith("/"):
                paths.append(where)
        elif m := _LDD_BARE.match(line):
            paths.append(m.group(1))
    return list(dict.fromkeys(paths))


def shared_libraries(binary: Path) -> list[str]:
    """Every shared object ``binary`` loads, the dynamic loader included; [] if static.

    :raises BuildError: if ``ldd`` fails or a library is missing.
    """
    interp = elf_interpreter(binary)
    if interp is None:
        return []
    ldd = shutil.which("ldd") or LDD.path
    proc = command.run([ldd, str(binary)], check=False)
    if proc.returncode != 0:
        raise BuildError(f"ldd {binary} failed: {(proc.stderr or proc.stdout).strip()[-200:]}",
                         fix=f"check that {binary} runs on this machine")
    libs = parse_ldd(proc.stdout, str(binary))
    if interp not in libs:
        libs.append(interp)
    return libs


@dataclass(frozen=True)
class HostFile:
    """A host file copied into the image.

    :param dest: its path in the image (relative).
    :param source: the real file on the host (symlinks resolved).
    """

    dest: str
    source: Path
    sha256: str
    mode: int


def find_tool(tool: Tool) -> Path:
    """The host path of ``tool``.

    :raises ConfigError: naming the Debian package to install if it is missing.
    """
    path = Path(tool.path)
    if path.is_file() and os.access(path, os.X_OK):
        return path
    found = shutil.which(tool.name)
    if found:
        return Path(found)
    raise ConfigError(f"{tool.name} not found", fix=f"apt-get install {tool.package}")


def collect_host_files(tools: Sequence[Tool]) -> list[HostFile]:
    """The binaries ``tools`` puts in the image and all their libraries, sorted by ``dest``.

    :raises ConfigError: if a tool is missing (naming its package).
    :raises BuildError: if a library cannot be resolved.
    """
    files: dict[str, HostFile] = {}

    def add(dest: str, host: Path) -> None:
        dest = dest.lstrip("/")
        if dest in files:
            return
        real = host.resolve()
        files[dest] = HostFile(dest, real, sha256_file(real), stat.S_IMODE(real.stat().st_mode))

    for tool in tools:
        path = find_tool(tool)
        if tool.dest is None:
            continue
        add(tool.dest, path)
        for lib in shared_libraries(path):
            add(lib, Path(lib))
    return [files[d] for d in sorted(files)]


