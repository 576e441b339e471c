"""The argparse parser, built from the command table (:mod:`realms.cli.table`).

Help texts, usage lines and choices all come from the table; this module only knows how argparse
is driven. The parsed namespace carries the command's entry as ``entry``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from realms import __version__
from realms.cli.table import COMMANDS, GLOBAL_OPTIONS, PROGRAM_DESCRIPTION, Arg, Command, Group
from realms.errors import readable


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size finds it ($COLUMNS, then stdout's
    terminal, else 80), without importing shutil (and bz2, lzma, zlib with it) at every start."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Formatter(argparse.HelpFormatter):
    """argparse's own, told the width (argparse would import shutil to find it)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _columns() - 2)


class Parser(argparse.ArgumentParser):
    """Usage errors as one line, ``realms: error: ...``, exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"realms: error: {readable(message)}", file=sys.stderr)
        raise SystemExit(2)


def _common() -> Parser:
    """Global options, accepted before or after the command."""
    common = Parser(add_help=False)
    group = common.add_argument_group("global options")
    for option in GLOBAL_OPTIONS:
        _add(group, option, default=argparse.SUPPRESS)
    return common


def _add(target: Any, arg: Arg, **extra: Any) -> None:
    """Add one argument of the table to a parser, group or mutually exclusive group."""
    names = [arg.short, arg.name] if arg.short else [arg.name]
    options: dict[str, Any] = {"help": arg.help}
    if arg.flag:
        options["action"] = "store_true"
    else:
        if arg.type is int:
            options["type"] = int
        if arg.choices:
            options["choices"] = list(arg.choices)
        if arg.default is not None:
            options["default"] = arg.default
        if arg.metavar:
            options["metavar"] = arg.metavar
        if arg.optional:
            options["nargs"] = "?"
    options.update(extra)
    target.add_argument(*names, **options)


def _dest(path: tuple[str, ...]) -> str:
    """Where argparse keeps the command word chosen below ``path``."""
    return "_".join([*path, "command"])


def build_parser(words: Sequence[str] | None = None) -> Parser:
    """The parser of every command or, where ``words`` name one command (with global options
    only before and among its words), of that command alone: argparse parses the same, and
    a command does not pay for building the parsers of the thirty others at every start-up.
    Help, a group alone and anything unclear get the whole parser."""
    chosen = None if words is None else command_path(words)
    common = _common()
    parser = Parser(prog="realms", description=PROGRAM_DESCRIPTION, parents=[common])
    parser.add_argument("--version", action="version", version=f"realms {__version__}")
    groups: dict[tuple[str, ...], Any] = {
        (): parser.add_subparsers(dest=_dest(()), metavar="COMMAND", required=True)
    }
    for entry in COMMANDS:
        if chosen is not None and entry.path != chosen[: len(entry.path)]:
            continue
        sub: Parser = groups[entry.path[:-1]].add_parser(
            entry.path[-1],
            help=entry.help,
            description=entry.description or entry.help,
            parents=[common],
        )
        if isinstance(entry, Group):
            groups[entry.path] = sub.add_subparsers(
                dest=_dest(entry.path), metavar="COMMAND", required=True
            )
            continue
        _add_command(sub, entry)
    return parser


def with_default_commands(words: Sequence[str]) -> list[str]:
    """``words`` with the default command of a group put in where the word after the group is
    none of its commands (``snapshot r1`` is ``snapshot take r1``). An option there (``--help``)
    or nothing at all leaves the group to argparse; a realm named like one of the group's
    commands is reached through the command's own word (``snapshot take list``)."""
    flags = {name for arg in GLOBAL_OPTIONS if arg.flag for name in (arg.name, arg.short) if name}
    valued = {arg.name for arg in GLOBAL_OPTIONS if not arg.flag}
    paths = {entry.path: entry for entry in COMMANDS}
    path: tuple[str, ...] = ()
    result = list(words)
    position = 0
    while position < len(result):
        word = result[position]
        if word in flags or (word.partition("=")[0] in valued and "=" in word):
            position += 1
            continue
        if word in valued:
            position += 2
            continue
        group = paths.get(path)
        entry = paths.get((*path, word))
        if entry is None:
            if isinstance(group, Group) and group.default_command and not word.startswith("-"):
                result.insert(position, group.default_command)
            return result
        path = entry.path
        if isinstance(entry, Command):
            return result
        position += 1
    return result


def command_path(words: Sequence[str]) -> tuple[str, ...] | None:
    """The words of the command that ``words`` run (``("appimg", "verify")``), or None where
    they name none for sure: a group alone, an unknown word, or an option that is not exactly
    a global one (``--help``, ``--version``, an abbreviation) before the command's last word."""
    flags = {name for arg in GLOBAL_OPTIONS if arg.flag for name in (arg.name, arg.short) if name}
    valued = {arg.name for arg in GLOBAL_OPTIONS if not arg.flag}
    paths = {entry.path: entry for entry in COMMANDS}
    path: tuple[str, ...] = ()
    position = 0
    while position < len(words):
        word = words[position]
        position += 1
        if word in flags or (word.partition("=")[0] in valued and "=" in word):
            continue
        if word in valued:
            position += 1
            continue
        entry = paths.get((*path, word))
        if entry is None:
            return None
        path = entry.path
        if isinstance(entry, Command):
            return path
    return None


def _add_command(sub: Parser, entry: Command) -> None:
    exclusive: dict[str, Any] = {}
    for arg in entry.args:
        if arg.exclusive is None:
            _add(sub, arg)
            continue
        if arg.exclusive not in exclusive:
            exclusive[arg.exclusive] = sub.add_mutually_exclusive_group()
        _add(exclusive[arg.exclusive], arg)
    sub.set_defaults(entry=entry, **dict(entry.constants))
    if entry.usage:
        sub.usage = entry.usage
