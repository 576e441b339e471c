"""Settings: the one way realms declares, checks and documents a key of a TOML file.

Every config realms reads (the store's ``config.toml``, a realm's ``config``, a build config) is
a set of tables of :class:`Setting` declarations: name, value type, default and what it does,
declared once (see :mod:`realms.config` and :mod:`realms.builder.schema`). The declarations are
the only source of

- checking: :func:`parse` refuses an unknown key or a value of the wrong type with one line,
  ``FILE: KEY: expected WHAT, got VALUE`` (the value cut when long: a config may hold anything),
  and fills in the defaults;
- typed access: ``SETTING.of(values)`` is the value with the setting's type;
- the commented files that ``realms init``, ``realms new`` and ``realms appimg build --new``
  write (:func:`render`), and the reference in the documentation (:func:`reference`).

A :class:`Type` says what a value must be and turns it into the setting's type (a choice from a
``StrEnum`` of :mod:`realms.kinds` becomes its member). Checks that guard a command line, a path
or a script (the build config's) are types too, so that no value skips them.

A new setting goes into its table, with a type from here or a new one next to its users.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar, cast

from realms.errors import InvalidInput

T = TypeVar("T")
C = TypeVar("C", bound=str)

SHOWN_MAX = 80
"""A value longer than this (as written in an error line) is cut."""


class Rejected(Exception):
    """A value does not fit its type. ``reason`` completes ``FILE: KEY: ...``; without one the
    line says what was expected and what was found."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason


class Type(NamedTuple, Generic[T]):
    """What a setting's value must be: ``expected`` says it in words (for errors and the
    reference), ``parse`` checks a value read from TOML and gives it its type, or raises
    :class:`Rejected`."""

    expected: str
    parse: Callable[[object], T]


class Setting(NamedTuple, Generic[T]):
    """One key of a config file, declared once."""

    name: str
    type: Type[T]
    default: T
    doc: str
    required: bool = False
    """A key that must be given (its default is never used)."""
    example: T | None = None
    """What templates show instead of the default (for a required key, say)."""

    def parse(self, value: object, where: str) -> T:
        try:
            return self.type.parse(value)
        except Rejected as rejected:
            reason = rejected.reason or f"expected {self.type.expected}, got {shown(value)}"
            raise InvalidInput(f"{where}: {self.name}: {reason}") from None

    def of(self, values: Mapping[str, Any]) -> T:
        """This setting's value in ``values`` (as :func:`parse` made them)."""
        return cast(T, values[self.name])


def shown(value: object) -> str:
    """A value for an error line: cut when long (a config may hold anything)."""
    text = repr(value)
    return text if len(text) <= SHOWN_MAX else f"{text[:60]}... ({len(text)} characters)"


# Types


def _always(_value: Any) -> bool:
    return True


def value(kind: type[T], expected: str, accept: Callable[[T], bool] = _always) -> Type[T]:
    """A value of TOML type ``kind`` that ``accept`` accepts (a bool is no whole number)."""

    def parse(raw: object) -> T:
        if isinstance(raw, kind) and (kind is bool or not isinstance(raw, bool)) and accept(raw):
            return raw
        raise Rejected

    return Type(expected, parse)


def strings(
    expected: str, accept: Callable[[str], bool] = _always, *, nonempty: bool = False
) -> Type[list[str]]:
    """A list of strings that ``accept`` accepts each (and at least one if ``nonempty``)."""

    def parse(raw: object) -> list[str]:
        if (
            isinstance(raw, list)
            and (raw or not nonempty)
            and all(isinstance(item, str) and accept(item) for item in raw)
        ):
            return cast(list[str], raw)
        raise Rejected

    return Type(expected, parse)


def choice(*choices: C) -> Type[C]:
    """One of ``choices`` (strings, or members of a ``StrEnum``: the value becomes the member)."""

    def parse(raw: object) -> C:
        for option in choices:
            if raw == option and isinstance(raw, str):
                return option
        raise Rejected

    return Type("one of " + ", ".join(f'"{option}"' for option in choices), parse)


def whole_number(minimum: int | None = None) -> Type[int]:
    """A whole number; below ``minimum`` it is refused with its own reason."""

    def parse(raw: object) -> int:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise Rejected
        if minimum is not None and raw < minimum:
            raise Rejected(f"expected at least {minimum}, got {raw}")
        return raw

    return Type("a whole number", parse)


BOOL = value(bool, "true or false")
STRING = value(str, "a string")
WHOLE_NUMBER = whole_number()
STRINGS = strings("a list of strings")


# Tables


def defaults(settings: Iterable[Setting[Any]]) -> dict[str, Any]:
    return {setting.name: setting.default for setting in settings}


def parse(
    settings: Sequence[Setting[Any]],
    table: Mapping[str, object],
    where: str,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Check ``table`` (from the file ``where`` names) against ``settings`` and lay it over
    ``base`` (the defaults if None). An unknown key is refused before any value is checked;
    values are checked in the order of the declarations."""
    known = {setting.name: setting for setting in settings}
    for key in table:
        if key not in known:
            raise InvalidInput(
                f"{where}: unknown key {shown(key)}", hint="known keys: " + ", ".join(known)
            )
    result = dict(defaults(settings) if base is None else base)
    for setting in settings:
        if setting.name in table:
            result[setting.name] = setting.parse(table[setting.name], where)
        elif setting.required:
            raise InvalidInput(f"{where}: {setting.name}: missing")
    return result


def section(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """Take the table ``[name]`` out of ``data`` (empty when absent)."""
    table = data.pop(name, {})
    if not isinstance(table, dict):
        raise InvalidInput(f"{where}: {name}: expected a table [{name}]")
    return table


def parse_toml(data: bytes, where: Path | str) -> dict[str, Any]:
    """Parse TOML text read from ``where``; an error names it."""
    try:
        return tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise InvalidInput(f"{where}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput(f"{where}: not valid TOML: {error}") from None


# Templates and documentation


def toml_value(value: object) -> str:
    """``value`` as TOML (a long list one item a line). JSON's strings, numbers and booleans
    are TOML's."""
    if isinstance(value, list):
        if len(value) > 4:
            return "[" + "".join(f"\n    {toml_value(item)}," for item in value) + "\n]"
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)


def render(
    settings: Iterable[Setting[Any]],
    values: Mapping[str, Any] | None = None,
    *,
    set_all: bool = False,
) -> list[str]:
    """Lines documenting each setting: its doc as a comment, then the key, set to its value in
    ``values`` (or, with ``set_all``, its example or default), else commented out."""
    values = values or {}
    lines = []
    for setting in settings:
        lines.append(f"# {setting.doc}")
        if setting.name in values:
            entry = f"{setting.name} = {toml_value(values[setting.name])}".split("\n")
        else:
            shown_value = setting.default if setting.example is None else setting.example
            entry = f"{setting.name} = {toml_value(shown_value)}".split("\n")
            if not set_all:
                entry = [f"# {line}" for line in entry]
        lines += [*entry, ""]
    return lines


def commented(lines: Iterable[str]) -> list[str]:
    """``lines`` commented out (comments stay as they are), for a table to uncomment."""
    return [f"# {line}" if line and not line.startswith("#") else line for line in lines]


def reference(settings: Iterable[Setting[Any]], title: str) -> str:
    """A Markdown table of ``settings``: key, what it takes, default, what it does."""
    lines = [f"### {title}", "", "| Key | Value | Default | What it does |", "|---|---|---|---|"]
    for setting in settings:
        # JSON's one-line lists are TOML's too.
        default = "(required)" if setting.required else f"`{json.dumps(setting.default)}`"
        lines.append(
            f"| `{setting.name}` | {setting.type.expected} | {default} | "
            + setting.doc.replace("|", "\\|")
            + " |"
        )
    return "\n".join(lines) + "\n"
