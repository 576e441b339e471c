"""The parser built for the one command that runs parses exactly as the whole parser does: the
same values, the same errors, the same help. Fast: no store, no devices."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest

from realms.cli.parser import build_parser, command_path
from realms.cli.table import Arg, Command, commands


def _value(arg: Arg) -> str:
    if arg.choices:
        return arg.choices[-1]
    return "7" if arg.type is int else "x"


def _invocations(entry: Command) -> list[list[str]]:
    """Valid command lines of ``entry``: its positionals, then with global options before, in
    between and after its words, then with each option that takes a value."""
    positionals = [_value(arg) for arg in entry.args if arg.positional and not arg.optional]
    words = [*entry.path, *positionals]
    found = [
        words,
        ["-q", *words],
        ["--store", "/s", "-v", *words, "--quiet"],
        ["--store=/s", *entry.path[:1], "-v", *entry.path[1:], *positionals],
    ]
    for arg in entry.args:
        if arg.positional:
            continue
        option = [arg.name] if arg.flag else [arg.name, _value(arg)]
        found.append([*words, *option])
    return found


def _outcome(words: list[str], reduced: bool) -> tuple[Any, ...]:
    parser = build_parser(words if reduced else None)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            parsed = vars(parser.parse_args(words))
        except SystemExit as done:
            return ("exit", done.code, out.getvalue(), err.getvalue())
    return ("parsed", sorted(parsed.items(), key=lambda item: item[0]), out.getvalue())


@pytest.mark.parametrize("entry", commands(), ids=lambda entry: entry.name)
def test_each_command_parses_the_same_with_its_own_parser(entry: Command) -> None:
    for words in _invocations(entry):
        assert command_path(words) == entry.path, words
        assert _outcome(words, reduced=True) == _outcome(words, reduced=False), words


@pytest.mark.parametrize(
    "words",
    [
        ["new", "--help"],
        ["appimg", "verify", "--help"],
        ["new"],
        ["new", "a", "--bogus"],
        ["appimg", "seal", "x", "--fs", "xfs"],
        ["status", "extra"],
    ],
)
def test_help_and_errors_of_a_command_are_the_same(words: list[str]) -> None:
    assert command_path(words) is not None
    assert _outcome(words, reduced=True) == _outcome(words, reduced=False)


@pytest.mark.parametrize(
    "words",
    [
        [],
        ["--help"],
        ["--version"],
        ["appimg"],
        ["newx"],
        ["-qv", "new", "a"],
        ["--sto", "/s", "new", "a"],
        ["--store"],
    ],
)
def test_anything_unclear_gets_the_whole_parser(words: list[str]) -> None:
    assert command_path(words) is None
    assert _outcome(words, reduced=True) == _outcome(words, reduced=False)


@pytest.mark.parametrize(
    ("words", "expanded"),
    [
        (["snapshot", "r1"], ["snapshot", "take", "r1"]),
        (["snapshot", "r1", "before-upgrade"], ["snapshot", "take", "r1", "before-upgrade"]),
        (["-v", "snapshot", "--quiet", "r1"], ["-v", "snapshot", "--quiet", "take", "r1"]),
        (["--store", "/s", "snapshot", "r1"], ["--store", "/s", "snapshot", "take", "r1"]),
        # A realm named like a command of the group: through the command's own word.
        (["snapshot", "take", "list"], ["snapshot", "take", "list"]),
        (["snapshot", "list", "r1"], ["snapshot", "list", "r1"]),
        (["snapshot", "remove", "r1", "x"], ["snapshot", "remove", "r1", "x"]),
        # The group alone or with an option: argparse says what the group has.
        (["snapshot"], ["snapshot"]),
        (["snapshot", "--help"], ["snapshot", "--help"]),
        # Groups without a default command, and commands, are left alone.
        (["appimg", "r1"], ["appimg", "r1"]),
        (["new", "snapshot"], ["new", "snapshot"]),
    ],
)
def test_a_group_default_command(words: list[str], expanded: list[str]) -> None:
    from realms.cli.parser import with_default_commands

    assert with_default_commands(words) == expanded


def test_snapshot_name_parses_as_snapshot_take() -> None:
    from realms.cli.parser import with_default_commands

    words = with_default_commands(["snapshot", "r1", "mine"])
    parsed = build_parser(words).parse_args(words)
    assert parsed.entry.path == ("snapshot", "take")
    assert (parsed.name, parsed.label) == ("r1", "mine")
    words = with_default_commands(["snapshot", "take", "list"])
    assert build_parser(words).parse_args(words).name == "list"
