"""The command table is the one source of the command line: the parser, the help, the README's
command table, completion and the man page all come from it, and every handler calls one API
function. Fast: no store, no devices."""

from __future__ import annotations

import ast
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

from realms import api
from realms.cli import generate
from realms.cli.entry import handler_of
from realms.cli.parser import build_parser
from realms.cli.table import COMMANDS, Command, commands

ROOT = Path(__file__).resolve().parents[2]


def test_committed_documents_match_the_table() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "realms.cli.generate", "--check"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_check_fails_with_a_diff_when_a_document_was_edited_by_hand(tmp_path: Path) -> None:
    for path in generate.documents(ROOT):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    readme = tmp_path / generate.README
    readme.write_text(readme.read_text().replace("| show a realm |", "| show a realm, edited |"))
    (tmp_path / generate.MAN).unlink()
    diffs = generate.check(tmp_path)
    assert len(diffs) == 2
    assert "-| `realms show NAME [--json]` | show a realm, edited |" in diffs[0]
    assert "+| `realms show NAME [--json]` | show a realm |" in diffs[0]
    assert "+.TH REALMS 1" in diffs[1]
    assert generate.write(tmp_path) == [generate.README, generate.MAN]
    assert generate.check(tmp_path) == []


def test_every_command_of_the_table_is_in_the_help_and_every_help_line_in_the_table() -> None:
    parser = build_parser()
    top = parser.format_help()
    for entry in COMMANDS:
        if len(entry.path) == 1:
            assert entry.help in " ".join(top.split())
    for entry in commands():
        values = [
            "1" if arg.type is int else "x"
            for arg in entry.args
            if arg.positional and not arg.optional
        ]
        namespace = parser.parse_args([*entry.path, *values])
        assert namespace.entry is entry


def test_every_handler_exists_and_calls_exactly_one_api_function() -> None:
    exported = set(api.__all__)
    for entry in commands():
        handler = handler_of(entry)
        tree = ast.parse(inspect.getsource(handler))
        calls = [
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "api"
        ]
        # build --new writes a template instead of building: one call on each path.
        expected = 2 if entry.root_free_flag else 1
        assert len(calls) == expected, (entry.name, calls)
        assert set(calls) <= exported, (entry.name, calls)


def test_root_is_a_property_of_the_entry() -> None:
    build = next(e for e in commands() if e.path == ("appimg", "build"))
    assert build.needs_root_with({"new": False})
    assert not build.needs_root_with({"new": True})
    assert all(isinstance(e, Command) and e.needs_root for e in commands())
