"""``realms``'s entry point: parse, check root, run the command's handler, report errors.

Errors from the API are printed as one line (``realms: error: ...``, then ``hint: ...`` where
there is one) with exit status 1; usage errors exit 2; ``run`` passes the command's exit status
through. The API is imported only when a command runs (through its handler), so ``--help`` and
``--version`` stay fast.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from realms import log
from realms.cli.call import Call, UsageError
from realms.cli.parser import build_parser, with_default_commands
from realms.cli.table import Command, trailing_words
from realms.errors import Interrupted, RealmsError, readable

Handler = Callable[[Call], int]


def handler_of(entry: Command) -> Handler:
    """The handler the table names, imported now (it imports the API)."""
    module, function = entry.handler.split(".")
    found: Handler = getattr(importlib.import_module(f"realms.cli.{module}"), function)
    return found


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


def _split_trailing(words: list[str]) -> tuple[list[str], list[str] | None]:
    """For the commands that run one, everything after the first "--" is a command to run,
    never options of realms (argparse would take "realms run r -- cmd --root" as realms')."""
    if "--" in words and trailing_words() & set(words[: words.index("--")]):
        split = words.index("--")
        return words[:split], words[split + 1 :]
    return words, None


def run() -> NoReturn:
    """The ``realms`` program (its console script and ``python -m realms``): :func:`main`, then
    exit without tearing the interpreter down, which takes 5 to 15 ms and does nothing realms
    needs: its files are closed and its locks are released by the kernel when the process
    ends. What is buffered for stdout and stderr is written first, as Python's exit does."""
    try:
        status = main()
    except SystemExit as done:  # argparse: --help, --version, usage errors
        status = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
        if not isinstance(done.code, int | None):
            print(done.code, file=sys.stderr)
    if "logging" in sys.modules:
        import logging

        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            # As Python's own exit: a reader that went away makes a clean run's status 120.
            status = status or 120
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    words, trailing = _split_trailing(list(sys.argv[1:] if argv is None else argv))
    words = with_default_commands(words)
    parser = build_parser(words)
    args = parser.parse_args(words)
    call = Call(args, trailing)
    entry: Command = args.entry
    verbose = call.flag("verbose")
    log.setup(log.VERBOSE if verbose else log.QUIET if call.flag("quiet") else log.NORMAL)
    # A terminated command unwinds like an exception, so that temporary names are removed.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        if os.geteuid() != 0 and entry.needs_root_with(vars(args)):
            raise RealmsError(
                "realms needs root: it makes btrfs subvolumes, mounts and containers",
                hint="run it with sudo",
            )
        return handler_of(entry)(call)
    except UsageError as error:
        parser.error(str(error))
    except RealmsError as error:
        _print_error(error.message, error.hint, error.details)
        return 1
    except KeyboardInterrupt:
        _print_error("interrupted", None)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (realms list | head): nothing left to say.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as error:
        detail = f": {error.filename}" if error.filename else ""
        hint = None
        if error.errno == errno.ENOSPC:
            from realms.store import out_of_space_hint

            hint = out_of_space_hint(call.location, error.filename)
        _print_error(f"{error.strerror or error}{detail}", hint)
        if verbose:
            import traceback

            traceback.print_exc()
        return 1
    except Exception as error:
        _print_error(
            f"internal error: {type(error).__name__}: {error}",
            "this is a bug in realms; run again with -v for the traceback",
        )
        if verbose:
            import traceback

            traceback.print_exc()
        return 1


def _print_error(message: str, hint: str | None, details: list[str] | None = None) -> None:
    log.end_line()
    # RealmsErrors are readable already; an OSError's file name or an internal error is not.
    print(f"realms: error: {readable(message)}", file=sys.stderr)
    for line in details or []:
        print(f"  | {readable(line)}", file=sys.stderr)
    if hint:
        print(f"hint: {readable(hint)}", file=sys.stderr)
