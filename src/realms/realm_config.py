"""``realms config``: a realm's settings, read and set through their declarations.

A realm's settings are its config file (``realms/NAME/config``, TOML) over the global config's
``[realm-defaults]`` over the declared defaults (:mod:`realms.config`). Reading shows every
setting with where its value comes from. Setting or unsetting one key checks the value with the
same declaration the file is read with (:data:`realms.config.REALM_SETTINGS`) and then checks
the whole file as it will be, so that ``realms config`` never writes a config that realms would
refuse; a key that was set wrongly by hand can be set right or unset this way.

The file stays a file for people: it is edited, never rewritten from a dict. Setting a key
replaces the lines of its value where it is set, or the commented-out line of the template
``realms new`` wrote (under its description), or else adds a line after the other top-level
keys; unsetting one removes its lines. Every other line (comments, other keys, their order)
stays as it was. The edit is checked by parsing the result: it must hold exactly the old keys
with the one change, or nothing is written. The new file replaces the old one atomically
(:func:`realms.system.fs.atomic_write`) under the realm's lock.
"""

from __future__ import annotations

import datetime
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from realms import config, settings
from realms.errors import InvalidInput, NotFound, RealmsError
from realms.names import check_existing_realm_name
from realms.store import Store
from realms.system.fs import atomic_write

REALM = "realm"
REALM_DEFAULTS = "realm-defaults"
DEFAULT = "default"


@dataclass(frozen=True)
class RealmConfig:
    realm: str
    values: dict[str, Any]
    """Every setting's value, in the order of the declarations."""
    sources: dict[str, str]
    """Where each value comes from: "realm" (its config), "realm-defaults" (the global
    config's table) or "default"."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.values)


def configure_realm(
    store: Store,
    name: str,
    key: str | None = None,
    value: str | None = None,
    *,
    unset: str | None = None,
) -> RealmConfig:
    """The realm's settings, after setting ``key`` to ``value`` (TOML; a bare word is a
    string) or unsetting ``unset`` if asked (the handler prints what was asked)."""
    check_existing_realm_name(name)
    if unset is not None and (key is not None or value is not None):
        raise InvalidInput("--unset takes the key itself: give no KEY or VALUE with it")
    files = store.realm(name)
    changing = unset if unset is not None else key if value is not None else None
    if changing is None:
        _require(store, name)
        if key is not None:
            _declared(name, key)
        return _read(store, name)
    setting = _declared(name, changing)
    store.sweep()
    with store.realm_lock(name):
        _require(store, name)
        path = files.config
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as error:
            raise RealmsError(f"cannot read {path}: {error}") from None
        table = settings.parse_toml(text.encode(), path)
        expected = dict(table)
        if unset is not None:
            expected.pop(unset, None)
            # Back to the template's line, so that setting it again puts it there.
            default = f"# {unset} = {settings.toml_value(setting.default)}"
            edited = remove_key(text, unset, default if "\n" not in default else None)
        else:
            assert value is not None
            parsed = setting.parse(parse_value(value), f"realm {name}")
            expected[changing] = parsed
            edited = set_key(text, changing, settings.toml_value(parsed))
        if _loads(edited) != expected:
            raise RealmsError(
                f"{path}: cannot change {changing} without touching other lines",
                hint="edit the file by hand",
            )
        # The whole file as it will be, as realms reads it: nothing it would refuse is written.
        settings.parse(
            config.REALM_SETTINGS, tomllib.loads(edited), str(path), store.config.realm_defaults
        )
        if edited != text:
            mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
            atomic_write(path, edited, mode)
    return _read(store, name)


def _require(store: Store, name: str) -> None:
    if not store.realm(name).origin.exists():
        raise NotFound(f"no realm named {name!r}", hint="'realms list' shows the realms")


def _declared(name: str, key: str) -> settings.Setting[Any]:
    for setting in config.REALM_SETTINGS:
        if setting.name == key:
            return setting
    raise InvalidInput(
        f"realm {name}: unknown setting {settings.shown(key)}",
        hint="'realms config " + name + "' lists them",
    )


def _read(store: Store, name: str) -> RealmConfig:
    path = store.realm(name).config
    own = config.read_toml(path)
    global_table = config.read_toml(store.config_path).get(config.REALM_DEFAULTS, {})
    values = config.load_realm(path, store.config.realm_defaults)
    sources = {
        key: REALM if key in own else REALM_DEFAULTS if key in global_table else DEFAULT
        for key in values
    }
    return RealmConfig(name, values, sources)


def parse_value(text: str) -> object:
    """A value from the command line: TOML (``true``, ``3``, ``"x"``, ``["a", "b"]``), else
    the text itself as a string (a bare word)."""
    try:
        table = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    found = table.get("value")
    # More than one key ("1\nother = 2"), or a date no setting takes: the text as it is.
    if set(table) != {"value"} or isinstance(found, datetime.date | datetime.time):
        return text
    return found


def _loads(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {"": "not TOML"}


# Editing the text


@dataclass(frozen=True)
class _Statement:
    first: int
    last: int
    keys: frozenset[str]


_HEADER = re.compile(r"\s*\[")


def _top_level(lines: list[str]) -> tuple[list[_Statement], int]:
    """The top-level key/value statements (each one or more lines: a long list spans
    several) and the index of the first table header (or the number of lines)."""
    found: list[_Statement] = []
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        if _HEADER.match(lines[index]):
            return found, index
        for last in range(index, len(lines)):
            try:
                table = tomllib.loads("".join(lines[index : last + 1]))
            except tomllib.TOMLDecodeError:
                continue
            found.append(_Statement(index, last, frozenset(table)))
            index = last + 1
            break
        else:
            raise InvalidInput(f"line {index + 1} does not end: not TOML")
    return found, len(lines)


def _commented(lines: list[str], key: str, end: int) -> tuple[int, int] | None:
    """The lines of ``# key = VALUE`` (as ``realms new`` writes it, perhaps over several
    lines) before line ``end``."""
    start = re.compile(rf"#\s*{re.escape(key)}\s*=")
    for index in range(end):
        if not start.match(lines[index]):
            continue
        for last in range(index, end):
            if not lines[last].startswith("#"):
                break
            body = "".join(line.lstrip("#").lstrip() for line in lines[index : last + 1])
            try:
                if key in tomllib.loads(body):
                    return index, last
            except tomllib.TOMLDecodeError:
                continue
        return index, index
    return None


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


def set_key(text: str, key: str, rendered: str) -> str:
    """``text`` (a TOML file) with top-level ``key`` set to ``rendered`` (a TOML value)."""
    lines = _lines(text)
    statements, end = _top_level(lines)
    entry = [f"{line}\n" for line in f"{key} = {rendered}".split("\n")]
    for statement in statements:
        if key in statement.keys:
            lines[statement.first : statement.last + 1] = entry
            return "".join(lines)
    template = _commented(lines, key, end)
    if template is not None:
        lines[template[0] : template[1] + 1] = entry
        return "".join(lines)
    # After the last top-level key (or at the top), before any table.
    at = statements[-1].last + 1 if statements else 0
    if not statements:
        while at < end and (lines[at].startswith("#") or not lines[at].strip()):
            at += 1  # after the file's opening comments
    lines[at:at] = entry
    return "".join(lines)


def remove_key(text: str, key: str, commented: str | None = None) -> str:
    """``text`` without the lines of top-level ``key``; under a comment (its description, as
    ``realms new`` writes it) they become the line ``commented`` instead, if given."""
    lines = _lines(text)
    statements, _ = _top_level(lines)
    for statement in reversed(statements):
        if key in statement.keys:
            described = statement.first > 0 and lines[statement.first - 1].startswith("#")
            instead = [f"{commented}\n"] if commented is not None and described else []
            lines[statement.first : statement.last + 1] = instead
    return "".join(lines)
