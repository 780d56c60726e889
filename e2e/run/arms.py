"""
Arms files: the TOML ``[[arm]]`` tables of an experiment (``pveoi ab --arms FILE``)
read into :class:`~e2e.model.plan.Arm` objects, every value checked and every
kernel built from source (through the caller's builder) before anything boots.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..model.plan import Arm, validate_arms

ARM_KEYS = {"name", "pv_eoi", "cpu_flags", "append", "kernel", "smp", "host_kernel", "replica_of"}

#: Builds an arm's kernel and returns its bzImage: (source tree or None for Debian's, patches dir or
#: None, role: ``guest`` or ``host``, base or None). The CLI passes pveoi's cached build; a test may
#: pass anything that returns a path.
KernelBuilder = Callable[[Path | None, Path | None, str, str | None], Path]


def _arm_kernel(raw: Any, where: str, base: Path, role: str,
                build: KernelBuilder | None) -> tuple[Path | None, dict[str, str]]:
    """An arm's ``kernel``/``host_kernel`` value: a bzImage path, or a table of ``source`` (a tree),
    ``patches`` (a series dir) and ``base`` (a kernel base: Debian's source of it, or with ``source``
    the series to apply), at least one of ``source`` and ``base``."""
    if raw is None:
        return None, {}
    if isinstance(raw, str):
        path = (base / Path(raw).expanduser()).resolve()  # one spelling per file: same kernel, same arm
        if role == "guest":
            from ..build.kentry import check_kernel_file

            try:
                check_kernel_file(path)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err.message}", fix=err.fix) from err
        elif not path.is_file():
            raise ConfigError(f"{where}: {path} not found", fix="build it first (pveoi kernel build --role host)")
        return path, {f"{role}_kernel": str(path)}
    if (isinstance(raw, dict) and raw and set(raw) <= {"source", "patches", "base"}
            and all(isinstance(v, str) for v in raw.values()) and ("source" in raw or "base" in raw)):
        source = (base / Path(raw["source"]).expanduser()).resolve() if raw.get("source") else None
        patches = (base / Path(raw["patches"]).expanduser()).resolve() if raw.get("patches") else None
        for d in (source, patches):
            if d is not None and not d.is_dir():
                raise ConfigError(f"{where}: {d} is not a directory", fix="point source/patches at directories")
        kbase = raw.get("base")
        if kbase is not None:
            from ..build.bases import base_named

            try:
                base_named(kbase)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err.message}", fix=err.fix) from err
        if build is None:
            raise ConfigError(f"{where}: a kernel built from source is not available here",
                              fix="pass a bzImage path")
        origin = {f"{role}_{k}": str(v) for k, v in (("source", source), ("patches", patches), ("base", kbase))
                  if v is not None}
        return build(source, patches, role, kbase), origin
    raise ConfigError(f"{where}: expected a bzImage path or {{source = DIR, patches = DIR, base = BASE}}, "
                      f"got {raw!r}",
                      fix='write e.g. kernel = "/path/bzImage", kernel = { source = "~/linux" } or '
                          'kernel = { base = "6.12" }')


def load_arms(path: Path, build: KernelBuilder | None = None) -> tuple[Arm, ...]:
    """Arms from a TOML file: two or more ``[[arm]]`` tables with ``name`` and any of ``pv_eoi``,
    ``cpu_flags``, ``smp``, ``append``, ``kernel``, ``host_kernel`` (paths relative to the file).

    :param build: builds ``{source, patches}`` kernels (before anything boots).
    :raises ConfigError: on a bad file, key or value (before any boot).
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read arms file {path}: {err}", fix="write [[arm]] tables in TOML") from err
    raws = data.get("arm", [])
    if not isinstance(raws, list) or set(data) - {"arm"}:
        raise ConfigError(f"{path}: expected only [[arm]] tables, got {sorted(data)}", fix="write [[arm]] tables")
    base = path.expanduser().absolute().parent
    arms = []
    for i, raw in enumerate(raws):
        unknown = set(raw) - ARM_KEYS
        if unknown or not isinstance(raw.get("name"), str):
            raise ConfigError(f"{path}: arm #{i + 1} has unknown keys {sorted(unknown)} or no name",
                              fix=f"use {', '.join(sorted(ARM_KEYS))}")
        where = f"{path}: arm {raw['name']}"
        flags, smp = raw.get("cpu_flags", []), raw.get("smp")
        if not isinstance(raw.get("pv_eoi", True), bool) or not (
                isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
            raise ConfigError(f"{where}: pv_eoi must be true or false and cpu_flags a list of strings",
                              fix='write e.g. pv_eoi = false, cpu_flags = ["-x2apic"]')
        if smp is not None and (not isinstance(smp, int) or isinstance(smp, bool)):
            raise ConfigError(f"{where}: smp must be an integer", fix="write e.g. smp = 4")
        if not isinstance(raw.get("append", ""), str):
            raise ConfigError(f"{where}: append must be a string", fix='write e.g. append = "no-kvm-pv-eoi"')
        kernel, origin = _arm_kernel(raw.get("kernel"), f"{where}: kernel", base, "guest", build)
        host, host_origin = _arm_kernel(raw.get("host_kernel"), f"{where}: host_kernel", base, "host", build)
        replica = raw.get("replica_of")
        if replica is not None and not isinstance(replica, str):
            raise ConfigError(f"{where}: replica_of must be an arm's name", fix='write e.g. replica_of = "on"')
        arms.append(Arm(raw["name"], raw.get("pv_eoi", True), tuple(flags), raw.get("append", ""), kernel,
                        smp, host, {**origin, **host_origin}, replica))
    validate_arms(arms)
    return tuple(arms)
