"""The naming rule for realms and appimgs (Citadel's): an ASCII letter, then ASCII letters,
digits or ``-``; at most 128 characters for a realm, 40 for an appimg.

The rule also keeps names safe as path components, machine names and lock file names: no
``/``, no ``.``, nothing a shell or a path could misread.
"""

from __future__ import annotations

import re

from realms.errors import InvalidName

REALM_NAME_MAX = 128
APPIMG_NAME_MAX = 40
_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


def _check(kind: str, name: str, limit: int) -> str:
    if not name:
        raise InvalidName(f"{kind} name is empty")
    if len(name) > limit:
        raise InvalidName(f"{kind} name is longer than {limit} characters: {name[:limit]}...")
    if not _PATTERN.fullmatch(name):
        raise InvalidName(
            f"invalid {kind} name {name!r}",
            hint="a name starts with a letter and has only letters, digits and '-'",
        )
    return name


def check_realm_name(name: str) -> str:
    return _check("realm", name, REALM_NAME_MAX)


def check_appimg_name(name: str) -> str:
    return _check("appimg", name, APPIMG_NAME_MAX)
