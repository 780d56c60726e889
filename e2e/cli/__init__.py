"""
The ``pveoi`` command line: a thin layer over the library, one module per command.

``make_parser()`` builds the parser from each command module's ``add_parser``;
``main(argv)`` sets up logging (:mod:`e2e.util.logs`), runs the command and
returns its exit code. Only the command line prints; an error becomes one line
on stderr.

Each command module (:mod:`.kernel`, :mod:`.image`, :mod:`.boot`,
:mod:`.vhost`, :mod:`.ab`, :mod:`.analyze`, :mod:`.bisect`, :mod:`.doctor`,
:mod:`.report`, :mod:`.cache`) defines ``add_parser(sub)`` and a frozen options
dataclass with ``from_args(namespace)``: the namespace becomes typed options
once, at the top of the command. :mod:`.common` holds what they share.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import PveoiError
from ..util.logs import log_note
from . import ab, analyze, bisect, boot, cache, doctor, image, kernel, report, vhost

__all__ = ["Terminated", "main", "make_parser", "setup_logging"]

log = logging.getLogger("pveoi")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pveoi",
        description="End-to-end tests for KVM's paravirtual End-Of-Interrupt (PV EOI): build a guest, "
                    "boot it with kvm-pv-eoi=on and =off, count kvm:* exits with perf, assert the saving.",
    )
    parser.add_argument("--version", action="version", version=f"pveoi {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more output (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (kernel, image, boot, vhost, ab, analyze, doctor, bisect, cache, report):
        command.add_parser(sub)
    return parser


def setup_logging(verbose: int) -> None:
    """The command line's logging (:func:`e2e.util.logs.setup_logging`), the run's log file in
    ``<cache>/logs``.

    :param verbose: 0 quiet, 1 default, 2 ``-vv``, 3 ``-vvv``.
    """
    from ..build.cache import cache_root
    from ..util import logs

    logs.setup_logging(verbose, run_logs=cache_root() / "logs")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job's timeout, systemd): unwinds like Ctrl-C, so everything started is stopped."""


def _on_sigterm(signum: int, frame: object) -> None:
    # Once pveoi is stopping, further SIGTERMs (a supervisor that signals twice) must not cut
    # the unwinding (QMP quit, temp dir removal) short. Not SIG_IGN: an ignored signal stays
    # ignored across exec, and a process started while unwinding must still stop on SIGTERM.
    signal.signal(signal.SIGTERM, _ignore_sigterm)
    raise Terminated()


def _ignore_sigterm(signum: int, frame: object) -> None:
    """SIGTERM again while stopping: ignored (nothing is done here, not even logging), the cleanup goes on."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    setup_logging(0 if args.quiet else args.verbose)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        from ..util.tmpdirs import reap_stale

        reap_stale()  # temp dirs of a pveoi that was SIGKILLed
        return int(args.func(args))  # the command module's: its options from args, then the work
    except PveoiError as err:
        log.debug("stopped on %s", type(err).__name__, exc_info=True)  # the traceback: log file (and -vv)
        print(f"pveoi: error: {err}{log_note()}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # an I/O failure no layer below named: still one line, never a traceback
        log.debug("unexpected OSError", exc_info=True)
        where = f" ({err.filename})" if err.filename else ""
        print(f"pveoi: error: {err.strerror or err}{where}; fix: check that path and its disk (-vv shows where)"
              f"{log_note()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        if isinstance(err, Terminated):
            print("pveoi: terminated (SIGTERM); everything started was stopped", file=sys.stderr)
            return 143
        print("pveoi: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        if signal.getsignal(signal.SIGTERM) is _ignore_sigterm:
            # Stopped after a SIGTERM; the process exits 143 next. SIG_IGN now (nothing is
            # started any more): interpreter shutdown resets Python-level handlers to the
            # default, which would let a further SIGTERM kill it on the way out.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
