"""The errors that realms raises for users to read.

Every failure a user can cause or meet (bad input, a busy lock, a missing tool, a full disk) is a
:class:`RealmsError` with a one-line message and, where it helps, a hint. The CLI prints them as
``realms: error: MESSAGE`` and ``hint: HINT`` and exits 1; nothing else should reach the user as a
traceback.

An error line stays readable whatever it quotes: :func:`readable` cuts every long value (an
entry name from a crafted tarball, a key's value from a config, a name of 10,000 characters)
to its start and end and says how long it was. Messages are cut where errors are made, so
every error gets this, also when it is caught and quoted by another one.
"""

from __future__ import annotations

import re

VALUE_MAX = 200
"""Longer runs of non-blank characters are cut (far above any path realms makes)."""
VALUE_KEPT = (60, 12)
"""How much of a cut value stays: its start and its end (a closing quote, say)."""
LINE_MAX = 1000
"""A longer message (many long values with blanks between them) is cut at the end."""

_LONG_VALUE = re.compile(rf"\S{{{VALUE_MAX + 1},}}")


def readable(text: str) -> str:
    """``text`` with each run of more than VALUE_MAX non-blank characters cut to
    ``start...end (N characters)``, control characters shown escaped, and at most about LINE_MAX
    characters in all."""
    # A value from a file may hold newlines or terminal escapes: one line, nothing hidden.
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)

    def cut(match: re.Match[str]) -> str:
        value = match[0]
        head, tail = VALUE_KEPT
        return f"{value[:head]}...{value[-tail:]} ({len(value)} characters)"

    text = _LONG_VALUE.sub(cut, text)
    if len(text) > LINE_MAX:
        text = f"{text[:LINE_MAX]}... ({len(text)} characters in all)"
    return text


class RealmsError(Exception):
    """An error with a one-line message for the user, an optional hint, and optional detail
    lines (the end of a build log, say) shown below them."""

    def __init__(
        self, message: str, hint: str | None = None, details: list[str] | None = None
    ) -> None:
        message = readable(message)
        super().__init__(message)
        self.message = message
        self.hint = readable(hint) if hint is not None else None
        self.details = [readable(line) for line in details or []]

    def __str__(self) -> str:
        return self.message


class NotFound(RealmsError):
    """A named realm, appimg or version does not exist."""


class AlreadyExists(RealmsError):
    """A name is taken."""


class Busy(RealmsError):
    """Another process holds a lock this command needs."""


class Conflict(RealmsError):
    """Something changed while a command worked (another version became current during an
    update), so that finishing it would silently undo that change."""


class InvalidName(RealmsError):
    """A realm or appimg name breaks the naming rule."""


class InvalidInput(RealmsError):
    """A file or argument that realms was given is malformed or unsafe."""


class CommandFailed(RealmsError):
    """An external command exited non-zero; the message names it and its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        last = _last_lines(stderr, 3)
        detail = f": {last}" if last else ""
        super().__init__(f"{command_name(argv)} failed (exit status {returncode}){detail}")


class StoreFull(RealmsError):
    """The store's filesystem ran out of space."""


class Interrupted(RealmsError):
    """The command was interrupted by a signal (Ctrl-C, SIGTERM, SIGHUP)."""


def command_name(argv: list[str]) -> str:
    """The program and its subcommand words, e.g. ``btrfs subvolume snapshot``."""
    words = [argv[0].rsplit("/", 1)[-1]]
    for arg in argv[1:3]:
        if not arg.isalpha():
            break
        words.append(arg)
    return " ".join(words)


def _last_lines(text: str, count: int) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:])
