"""The naming rule for realms and appimgs: Citadel's (an ASCII letter, then ASCII letters,
digits or ``-``), narrowed so that every machine name realms derives from a name is valid for
systemd-nspawn.

systemd accepts a machine name when it is a valid host name (``hostname_is_valid``): at most 64
characters (``HOST_NAME_MAX``), and no label that starts or ends with ``-``. Realms run as
machine ``NAME``; appimg updates and builds run as ``NAME-appimg-update`` and
``NAME-appimg-build``. So a name never ends with ``-``, a realm name has at most 64 characters,
and an appimg name at most 40 (Citadel's limit, which leaves room for the longest suffix).
Checking this when a name is made means nspawn never refuses a realm or an update later.

The rule also keeps names safe as path components, machine names and lock file names: no
``/``, no ``.``, nothing a shell or a path could misread.
"""

from __future__ import annotations

import re

from realms.errors import InvalidName

MACHINE_NAME_MAX = 64
"""systemd's limit for a machine name (HOST_NAME_MAX on Linux)."""
APPIMG_MACHINE_SUFFIXES = ("-appimg-update", "-appimg-build")
"""What realms appends to an appimg's name for the machines that change it."""
REALM_NAME_MAX = MACHINE_NAME_MAX
APPIMG_NAME_MAX = 40
assert APPIMG_NAME_MAX + max(map(len, APPIMG_MACHINE_SUFFIXES)) <= MACHINE_NAME_MAX

_PATTERN = re.compile(r"[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_HINT = "a name starts with a letter, has only letters, digits and '-', and does not end with '-'"


def _check(kind: str, name: str, limit: int) -> str:
    if not name:
        raise InvalidName(f"{kind} name is empty")
    if len(name) > limit:
        raise InvalidName(
            f"{kind} name {name!r} is longer than {limit} characters",
            hint=f"a {kind} name is also the container's machine name, which systemd limits",
        )
    if not _PATTERN.fullmatch(name):
        raise InvalidName(f"invalid {kind} name {name!r}", hint=_HINT)
    return name


def check_realm_name(name: str) -> str:
    return _check("realm", name, REALM_NAME_MAX)


def check_appimg_name(name: str) -> str:
    return _check("appimg", name, APPIMG_NAME_MAX)


_OLD_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,127}")


def check_existing_realm_name(name: str) -> str:
    """A name to look up a realm that may have been made under the older, wider rule (up to
    128 characters, a trailing '-'): such a realm cannot run, but it can be shown and removed.
    Still safe as a path component."""
    if _OLD_PATTERN.fullmatch(name):
        return name
    return check_realm_name(name)


def is_existing_realm_name(name: str) -> bool:
    """Whether :func:`check_existing_realm_name` takes ``name`` (a directory entry may be
    anything)."""
    try:
        check_existing_realm_name(name)
    except InvalidName:
        return False
    return True


def check_lock_name(kind: str, name: str) -> str:
    """Any name a lock file may be named after: one safe path component, whatever the caller
    checked before (the last line of defence against ``../`` in a name)."""
    if _OLD_PATTERN.fullmatch(name):
        return name
    raise InvalidName(f"invalid {kind} name {name!r}", hint=_HINT)


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_snapshot_label(label: str) -> str:
    """A realm snapshot's label: a path component of its own (letters, digits, '-', '_', '.',
    starting with a letter or digit, at most 64 characters)."""
    if not _LABEL.fullmatch(label):
        raise InvalidName(
            f"invalid snapshot label {label!r}",
            hint="a label starts with a letter or digit and has only letters, digits, '-', '_' "
            "and '.' (at most 64 characters)",
        )
    return label
