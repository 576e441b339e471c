"""The documents made from the command table: the README's command table, bash and zsh
completion, and the man page ``realms.1``.

    python -m realms.cli.generate            # write them
    python -m realms.cli.generate --check    # exit 1 with a diff when a committed one differs

CI runs ``--check``: a command, an argument or a help text is changed in
:mod:`realms.cli.table` only, and the documents follow it.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from pathlib import Path

from realms import __version__
from realms.cli import completion
from realms.cli.table import (
    COMMANDS,
    GLOBAL_OPTIONS,
    PROGRAM_DESCRIPTION,
    Arg,
    Command,
    Group,
    commands,
)

README = Path("README.md")
BASH = Path("completion/realms.bash")
ZSH = Path("completion/_realms")
MAN = Path("man/realms.1")
TABLE_HEADER = "| command | what it does |"


def synopsis(entry: Command, *, options: bool = True) -> str:
    """``realms appimg seal NAME [--channel CHANNEL] [--fs ext4|erofs] [--no-verity]``."""
    words = ["realms", *entry.path]
    groups: dict[str, list[str]] = {}
    for arg in entry.args:
        if arg.positional:
            words.append(f"[{arg.value_name}]" if arg.optional else arg.value_name)
        elif options and arg.exclusive:
            if arg.exclusive not in groups:
                groups[arg.exclusive] = []
                words.append(f"{{{arg.exclusive}}}")
            groups[arg.exclusive].append(_option(arg))
        elif options:
            words.append(f"[{_option(arg)}]")
    if entry.trailing == "required":
        words.append("-- COMMAND ...")
    elif entry.trailing == "optional":
        words.append("[-- COMMAND ...]")
    text = " ".join(words)
    for key, alternatives in groups.items():
        text = text.replace(f"{{{key}}}", f"[{' | '.join(alternatives)}]")
    return text


def _option(arg: Arg) -> str:
    return arg.name if arg.flag else f"{arg.name} {arg.value_name}"


# README


def readme_table() -> str:
    rows = [TABLE_HEADER, "|---|---|"]
    for entry in commands():
        usage = synopsis(entry).replace("|", "\\|")
        rows.append(f"| `{usage}` | {entry.help} |")
    return "\n".join(rows) + "\n"


def readme(current: str) -> str:
    """The README with its command table (the lines from TABLE_HEADER to the next non-table
    line) made again; the rest as it is."""
    lines = current.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(TABLE_HEADER))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join([*lines[:start], readme_table(), *lines[end:]])


# Man page


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in ".'" else line for line in text.split("\n"))


def _man_option(arg: Arg) -> list[str]:
    names = ", ".join(f"\\fB{_roff(name)}\\fR" for name in filter(None, [arg.short, arg.name]))
    if arg.positional:
        names = f"\\fI{_roff(arg.value_name)}\\fR"
    elif not arg.flag:
        names += f" \\fI{_roff(arg.value_name)}\\fR"
    text = arg.help or ""
    if arg.optional:
        text = f"(optional) {text}".strip()
    return [".TP", names, _roff(text) if text else "\\&"]


def man_page() -> str:
    lines = [
        f'.\\" {completion.HEADER}.',
        f'.TH REALMS 1 "" "realms {__version__}" "User Commands"',
        ".SH NAME",
        "realms \\- " + _roff(PROGRAM_DESCRIPTION[0].lower() + PROGRAM_DESCRIPTION[1:-1]),
        ".SH SYNOPSIS",
        ".B realms",
        "[\\fB\\-\\-store\\fR \\fIDIR\\fR] [\\fB\\-v\\fR | \\fB\\-q\\fR] \\fICOMMAND\\fR "
        "[\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
        _roff(PROGRAM_DESCRIPTION),
        "Every listing and \\fBshow\\fR takes \\fB\\-\\-json\\fR (stable keys).",
        ".SH GLOBAL OPTIONS",
        "Accepted before or after the command.",
    ]
    for arg in GLOBAL_OPTIONS:
        lines += _man_option(arg)
    lines += [".SH COMMANDS"]
    for entry in COMMANDS:
        if isinstance(entry, Group):
            lines += [f".SS {_roff(' '.join(['realms', *entry.path]))} \\fICOMMAND\\fR"]
            lines += [_roff(entry.description)]
            continue
        text = entry.description or entry.help[0].upper() + entry.help[1:] + "."
        lines += [f'.SS "{_roff(synopsis(entry))}"', _roff(text)]
        if not entry.needs_root:
            lines += [".PP", "Needs no root."]
        elif entry.root_free_flag:
            flag = _roff(f"--{entry.root_free_flag}")
            lines += [".PP", f"Needs root, except with \\fB{flag}\\fR."]
        for arg in entry.args:
            if arg.help or (arg.positional and arg.optional):
                lines += _man_option(arg)
    lines += [
        ".SH EXIT STATUS",
        "0 on success; 1 on an error, printed as one line (\\fBrealms: error: ...\\fR, with a "
        "\\fBhint:\\fR where one helps); 2 on a usage error. \\fBrealms run\\fR and "
        "\\fBrealms update\\-appimg\\fR pass the command's exit status through.",
        ".SH ENVIRONMENT",
        ".TP",
        ".B REALMS_STORE",
        "The store directory when \\fB\\-\\-store\\fR is not given.",
        ".SH FILES",
        ".TP",
        ".I /var/lib/realms",
        "The store: appimgs, realms, keys, caches and logs.",
        ".SH SEE ALSO",
        ".BR systemd\\-nspawn (1),",
        ".BR veritysetup (8)",
    ]
    return "\n".join(lines) + "\n"


# Writing and checking


def documents(root: Path) -> dict[Path, Callable[[], str]]:
    """Each generated file (relative to the project's root) and how it is made."""
    return {
        README: lambda: readme((root / README).read_text(encoding="utf-8")),
        BASH: completion.bash,
        ZSH: completion.zsh,
        MAN: man_page,
    }


def check(root: Path) -> list[str]:
    """The diffs of every committed document against what the table makes; empty when none
    differs."""
    diffs = []
    for path, make in documents(root).items():
        target = root / path
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        wanted = make()
        if current != wanted:
            diffs.append(
                "".join(
                    difflib.unified_diff(
                        current.splitlines(keepends=True),
                        wanted.splitlines(keepends=True),
                        f"{path} (committed)",
                        f"{path} (generated from src/realms/cli/table.py)",
                    )
                )
            )
    return diffs


def write(root: Path) -> list[Path]:
    written = []
    for path, make in documents(root).items():
        target = root / path
        text = make()
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m realms.cli.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 with a diff if a committed file differs"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[3],
        help="the project's directory (default: the one this module is in)",
    )
    args = parser.parse_args(argv)
    root: Path = args.root
    if args.check:
        diffs = check(root)
        for diff in diffs:
            sys.stdout.write(diff)
        if diffs:
            print(
                "generate: these files differ from the command table; "
                "run: python -m realms.cli.generate",
                file=sys.stderr,
            )
            return 1
        return 0
    for path in write(root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
