"""
One logging set-up for every entry point (``pveoi``, the inner runner in the
virtual KVM host, a bisect step): the terminal gets pveoi's own records, one
line each; the run's log file, when the caller names a directory for it,
everything, with tracebacks.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("pveoi")

#: Loggers whose records may reach the terminal at default verbosity; everything else
#: (paramiko, qemu.qmp, asyncio, py.warnings, ...) goes only to the run's log file, or shows with -vv.
OWN_LOGGERS = ("pveoi", "e2e")

#: Other libraries' loggers: quiet on the terminal unless -vv, their debug records only at -vvv.
LIBRARIES = ("paramiko", "qemu.qmp", "asyncio", "py.warnings")

_FILE_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (a caller or test may swap and close it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class OneLineFormatter(logging.Formatter):
    """The terminal's format at default verbosity: the message, never a traceback (those go to the log file)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                            "stack_info": None})
        return super().format(record)


class RunLogHandler(logging.FileHandler):
    """The run's log file: everything, with tracebacks.

    A write that fails (a full disk) silences the file for the rest of the run
    instead of printing logging's own "--- Logging error ---" traceback.
    """

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.broken = True


def own_records(record: logging.LogRecord) -> bool:
    """Filter for the terminal: only pveoi's own loggers."""
    return record.name.split(".", 1)[0] in OWN_LOGGERS


def run_log_file() -> Path | None:
    """This run's log file (``<dir>/pveoi-<time>-<pid>.log``), None if it has none."""
    handler = next((h for h in logging.getLogger().handlers if isinstance(h, RunLogHandler)), None)
    return Path(handler.baseFilename) if handler is not None else None


def log_note() -> str:
    """`` (log: FILE)`` for a one-line error, or nothing when this run has no log file."""
    path = run_log_file()
    return f" (log: {path})" if path is not None else ""


def _open_run_log(directory: Path) -> RunLogHandler | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handler = RunLogHandler(directory / f"pveoi-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log",
                                encoding="utf-8")
    except OSError:  # a read-only or unusable directory: no log file, the run goes on
        return None
    handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    handler.setLevel(logging.DEBUG)
    return handler


def _thread_excepthook(args: Any) -> None:
    """An exception that ends a thread: one line on the terminal, the traceback in the log file."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.error("unexpected error in thread %s: %s: %s", name, args.exc_type.__name__, args.exc_value,
              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _unraisable_hook(unraisable: Any) -> None:
    """An exception Python cannot raise (in __del__, a finalizer): to the log file, not the terminal."""
    logging.getLogger("pveoi.unraisable").debug(
        "exception ignored in %r: %s", unraisable.object, unraisable.exc_value,
        exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
        if unraisable.exc_value is not None else None)


def setup_logging(verbose: int, *, prefix: str = "pveoi", run_logs: Path | None = None) -> None:
    """Route all logging: the terminal gets pveoi's own records, one line each; the run's log file everything.

    At ``-vv`` and above the terminal also gets other libraries' records and
    tracebacks (``-vvv``: their debug records too). Exceptions that end a
    thread, and unraisable ones, are logged instead of printed. Safe to call
    more than once in a process (tests, the soak): the previous log file is closed.

    :param verbose: 0 quiet, 1 default, 2 ``-vv``, 3 ``-vvv``.
    :param prefix: what starts each terminal line at default verbosity (``pveoi: message``).
    :param run_logs: the directory of the run's log file; None, or one that cannot be written: no log file.
    """
    level = logging.DEBUG if verbose > 1 else logging.INFO
    handler = StderrHandler()
    handler.setLevel(level)
    if verbose < 2:
        handler.setFormatter(OneLineFormatter(f"{prefix}: %(message)s"))
        handler.addFilter(own_records)
    else:
        handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    root = logging.getLogger()
    for old in root.handlers:  # no leaked files
        if isinstance(old, RunLogHandler):
            old.close()
    root.handlers[:] = [handler]
    run_log = _open_run_log(run_logs) if run_logs is not None else None
    if run_log is not None:
        root.handlers.append(run_log)
    root.setLevel(logging.DEBUG if run_log is not None else level)
    for library in LIBRARIES:
        library_logger = logging.getLogger(library)
        library_logger.setLevel(logging.INFO if verbose < 3 else logging.DEBUG)
        library_logger.handlers[:] = []  # nothing of theirs writes to the terminal by itself
        library_logger.propagate = True
    logging.captureWarnings(True)
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisable_hook
