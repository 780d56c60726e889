"""
The inner runner: runs a :class:`e2e.model.plan.Plan` on this KVM host and writes its
typed result, or runs ``pveoi boot``'s :class:`~e2e.model.plan.BootPlan`
(``python -m e2e.run.inner boot PLAN``). The virtual KVM host runs it as
``python -m e2e.run.inner PLAN RESULT`` on the plan the outer pveoi wrote into the
results share: the same plan object in both places, no command line rebuilt for L1.

Exit status: 0 once the raw runs are written (their verdict ``unanalyzed``: the
outer pveoi analyzes every part's runs together, in native Python), else the
error's. An error that stops the whole run is written as a result with verdict
``error`` and the error's kind, message and fix, which the outer pveoi raises
again as the same kind.

After each guest the runs so far are written beside the result (:data:`PARTIAL`),
so that when the virtual host dies the outer pveoi keeps them and resumes the
part in a fresh one after them (:func:`load_partial`).
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, Kind, PveoiError
from ..model.plan import BootPlan, Plan
from ..model.result import Result
from ..util.laps import seconds_since_process_start
from ..util.logs import setup_logging

if TYPE_CHECKING:
    from .ab import Checkpoint

PARTIAL = "partial.json"
"""The runs measured so far: ``{"done": guests of the plan's order done, "result": raw result}``."""
STACKS = "inner-stacks.txt"
"""Every thread's stack, written every :data:`STACKS_EVERY` s while the inner run lasts, and on SIGUSR1."""
STACKS_EVERY = 600.0
"""Longer than any healthy part of a plan takes in the virtual host (6 guests: 3-7 min)."""


def run(plan_path: Path, result_path: Path) -> int:
    """Run the plan at ``plan_path``; write the result to ``result_path``; return the exit status."""
    # What L1's slow Python costs before the first guest (tests/bench_ab.py --breakdown prints it).
    timings = {"python_start": seconds_since_process_start()}
    before = time.monotonic()
    from ..host import conditions
    from ..report import results
    from . import ab

    timings["imports"] = round(time.monotonic() - before, 2)

    plan = Plan.from_json(json.loads(plan_path.read_text()))
    started = conditions.snapshot()
    # Evidence should this process ever hang where no timeout can fire: every thread's stack, every
    # STACKS_EVERY seconds, beside the result (the outer pveoi keeps it with the virtual host's logs).
    with open(result_path.parent / STACKS, "w") as stacks:
        faulthandler.dump_traceback_later(STACKS_EVERY, repeat=True, file=stacks)
        # And on demand: the virtual host's init sends SIGUSR1 when the outer pveoi asks what is stuck.
        faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
        try:
            # The outer pveoi analyzes every part's raw runs.
            result = ab.run_plan(plan, analyzed=False, checkpoint=_checkpoint(result_path.parent / PARTIAL))
        except PveoiError as err:
            results.emit(results.error_result(err, "direct", "inside the virtual KVM host", plan.runs), result_path,
                         None)
            return err.exit_code
        finally:
            faulthandler.cancel_dump_traceback_later()
            faulthandler.register(signal.SIGUSR1, all_threads=True)  # back to stderr: the file closes
    # The virtual host's own conditions (its load, other QEMUs in it) beside the runner's.
    result = result.with_(runner={**result.runner, "conditions": conditions.summarize(started, conditions.snapshot()),
                                  "timings": timings})
    results.emit(result, result_path, None)
    return 0


def _checkpoint(path: Path) -> Checkpoint:
    from ..build.cache import atomic_write

    def write(done: int, result: Result) -> None:
        atomic_write(path, json.dumps({"done": done, "result": result.to_json()}))

    return write


def load_partial(path: Path) -> tuple[int, Result] | None:
    """What a part that did not finish had measured: (guests of its order done, its raw result), or
    None when it measured nothing or left nothing readable."""
    try:
        data = json.loads(path.read_text())
        done, result = int(data["done"]), Result.from_json(data["result"], str(path))
    except (OSError, ValueError, KeyError, TypeError, PveoiError):
        return None
    return (done, result) if done > 0 else None


def raise_inner_error(result: Result) -> None:
    """The error an inner run stopped on, raised here as its own kind (one line, same fix).

    :raises PveoiError: when ``result`` records one.
    """
    err = result.error
    if err:
        kind = Kind(err["kind"]) if err.get("kind") in Kind.__members__.values() else Kind.INFRASTRUCTURE
        # its class: how the inner run's machine ended, if it knew
        raise PveoiError(f"in the virtual KVM host: {err.get('message')}", fix=err.get("fix"), kind=kind,
                         cause=str(err.get("class") or ""))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m e2e.run.inner PLAN.json RESULT.json | boot BOOTPLAN.json", file=sys.stderr)
        return 2
    # paramiko imports invoke only for ssh_config's "Match exec", which pveoi never reads (it passes its
    # keys itself); in L1 that import (invoke, and unittest.mock under it) costs seconds of emulated CPU.
    # paramiko takes a missing invoke in its stride (paramiko/config.py).
    sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
    # When the outer pveoi asks what is stuck, L1's init sends SIGUSR1: every thread's stack, never death
    # (run() sends them to its stacks file while the plan runs).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # pveoi's own records on stderr, one line each; everything (tracebacks of threads too) in a log file
    # beside the guests' logs, which come back to the outer pveoi's logs.
    setup_logging(1, run_logs=Path(args[1]).parent / "logs")
    if args[0] == "boot":
        return run_boot(Path(args[1]))
    return run(Path(args[0]), Path(args[1]))


def run_boot(plan_path: Path) -> int:
    """``pveoi boot``'s :class:`~e2e.model.plan.BootPlan` at ``plan_path``, run here; its command's exit
    status, or the error's (printed as one line, as the outer pveoi would)."""
    from .boot import run_boot_plan

    try:
        try:
            plan = BootPlan.from_json(json.loads(plan_path.read_text()))
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the boot plan {plan_path}: {err}",
                              fix="write boot plans with e2e.model.plan.BootPlan.to_json") from err
        return run_boot_plan(plan)
    except PveoiError as err:
        print(f"pveoi: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # as the pveoi command line says one (a full or gone results share)
        print(f"pveoi: error: {err.strerror or err}; fix: check the disk of the results share", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
