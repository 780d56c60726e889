"""Host binaries for the image: ELF interpreter, ldd output, tools (e2e.build.elf)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from e2e.build import elf
from e2e.build.elf import Tool, elf_interpreter, parse_ldd
from e2e.build.image import TOOLS
from e2e.errors import BuildError, ConfigError

HAVE_BUSYBOX = Path("/bin/busybox").is_file()


LDD_SAMPLE = """\
\tlinux-vdso.so.1 (0x00007ffd3a1f2000)
\tlibtomcrypt.so.1 => /lib/x86_64-linux-gnu/libtomcrypt.so.1 (0x00007f0e4c8e5000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e4c703000)
\tlibceph-common.so.2 => /usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2 (0x00007f0e40000000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e4ca07000)
"""


def test_parse_ldd() -> None:
    assert parse_ldd(LDD_SAMPLE) == [
        "/lib/x86_64-linux-gnu/libtomcrypt.so.1",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2",
        "/lib64/ld-linux-x86-64.so.2",
    ]


def test_parse_ldd_missing_library_is_an_error() -> None:
    with pytest.raises(BuildError, match=r"libgone\.so\.3"):
        parse_ldd("\tlibgone.so.3 => not found\n", "/usr/bin/thing")


@pytest.mark.skipif(not Path("/usr/sbin/dropbear").is_file() or not HAVE_BUSYBOX,
                    reason="needs dropbear-bin and busybox-static")
def test_elf_interpreter() -> None:
    assert elf_interpreter(Path("/usr/sbin/dropbear")) == "/lib64/ld-linux-x86-64.so.2"
    assert elf_interpreter(Path("/bin/busybox")) is None


def test_elf_interpreter_rejects_non_elf(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n" + "#" * 80 + "\n")
    with pytest.raises(BuildError, match="not a 64-bit"):
        elf_interpreter(script)


def test_missing_tool_names_the_package() -> None:
    tool = Tool("pveoi-no-such-tool", "/nonexistent/pveoi-no-such-tool", "pveoi-pkg", None)
    with pytest.raises(ConfigError) as err:
        elf.find_tool(tool)
    assert str(err.value) == "pveoi-no-such-tool not found; fix: apt-get install pveoi-pkg"


def test_dropbear_missing_message(monkeypatch: pytest.MonkeyPatch) -> None:
    tool = next(t for t in TOOLS if t.name == "dropbear")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"^dropbear not found; fix: apt-get install dropbear-bin$"):
        elf.find_tool(replace(tool, path="/nonexistent/dropbear"))
