"""The build config's settings, each declared once (see :mod:`realms.settings`), with the types
that check their values, and the commented template of ``realms appimg build --new``.

A build config is untrusted data: values that reach a command line, a path or a generated
script are plain names, absolute image paths or http(s)/file URIs, never free text. Each such
check is the type of its setting, so no value can skip it. (The files and scripts a config
names are read by :mod:`realms.builder.context`.)

The defaults are the default appimg ``base``: Debian trixie, a user ``user`` (uid 1000, in
sudo), locale en_US.UTF-8, no recommended packages, apt sources written into the image,
Citadel's base packages, and systemd as init (``realms start`` boots it; no getty).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from realms import settings
from realms.builder.modules import BUILTINS
from realms.errors import InvalidName
from realms.names import check_appimg_name
from realms.settings import Rejected, Setting, Type, choice, strings, value

BUILTIN_MODULES = {name: module.doc for name, module in BUILTINS.items()}
"""The built-in modules (declared in :mod:`realms.builder.modules`) and what they do."""
DEFAULT_BEFORE = [
    "no-install-recommends",
    "write-apt-sources",
    "configure-locale",
    "create-user",
    "set-hostname",
]
DEFAULT_AFTER = ["sudo-nopasswd", "boot-in-container"]
NEEDS_PACKAGE = {name: module.needs for name, module in BUILTINS.items() if module.needs}
"""Modules that only work with a package installed."""
DEFAULT_PACKAGES = [
    "bash-completion",
    "ca-certificates",
    "dbus",
    "iproute2",
    "iputils-ping",
    "less",
    "libnss-myhostname",
    "locales",
    "openssh-client",
    "procps",
    "sudo",
    "systemd",
    "systemd-sysv",
    "xz-utils",
]
MAX_UID = 65533  # a realm maps uids 0..65535; 65534 is nobody

_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{1,99}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Debian suite and component names (trixie, bookworm-backports, non-free-firmware): they become
# path components (the package cache, dists/SUITE/COMPONENT) and bootstrapper arguments, so no
# '/', no leading '.' or '-'.
_SUITE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")
_LOCALE = re.compile(r"[A-Za-z0-9_]{1,32}(\.[A-Za-z0-9-]{1,32})?(@[A-Za-z0-9_]{1,32})?")
_SHELL = re.compile(r"(/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)+")
_ID = r"(?:[a-z_][a-z0-9_-]{0,31}|[0-9]{1,9})"
_OWNER = re.compile(rf"{_ID}(?::{_ID})?")
_MODE = re.compile(r"[0-7]{3,4}")
# The characters of RFC 3986 (unreserved, reserved and '%'): no space, quote, backslash or
# control character can reach a command line, a sources file or a script through a URI.
_URI_CHARS = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+")
_URI_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]+")


def is_uri(text: str) -> bool:
    """An http(s):// URI with a host, or a file: URI of an absolute path; nothing that a tool
    could take for an option, a file of sources lines or more than one word."""
    if not _URI_CHARS.fullmatch(text):
        return False
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return False
    if parts.scheme in ("http", "https"):
        return bool(parts.hostname and _URI_HOST.fullmatch(parts.hostname))
    if parts.scheme == "file":
        return parts.netloc == "" and parts.path.startswith("/") and plain_path(parts.path)
    return False


def plain_path(text: str) -> bool:
    """An absolute path without '..' components."""
    return text.startswith("/") and ".." not in text.split("/")


def _matching(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda text: bool(pattern.fullmatch(text))


def _appimg(raw: object) -> str:
    if not isinstance(raw, str):
        raise Rejected
    try:
        return check_appimg_name(raw)
    except InvalidName as error:
        raise Rejected(error.message) from None


URI_EXPECTED = "an http://, https:// or file:/// URI"

APPIMG = Type("an appimg name", _appimg)
SUITE = value(
    str,
    "a Debian release name (lower case letters, digits, '.', '+' and '-')",
    _matching(_SUITE),
)
URI = value(str, f"{URI_EXPECTED} (or empty: the host's mirror)", lambda v: v == "" or is_uri(v))
COMPONENTS = strings(
    "a list of archive component names (lower case letters, digits, . + -)",
    _matching(_SUITE),
    nonempty=True,
)
PACKAGES = strings("a list of Debian package names", _matching(_PACKAGE))
HOSTNAME = value(
    str, "a host name (letters, digits and -)", lambda v: v == "" or bool(_HOSTNAME.fullmatch(v))
)
LOCALE = value(str, 'a locale name like "en_US.UTF-8"', _matching(_LOCALE))
USER = value(str, "a user name (lower case letters, digits, _ and -)", _matching(_USER))
UID = value(int, f"a whole number from 0 to {MAX_UID}", lambda v: 0 <= v <= MAX_UID)
GROUPS = strings("a list of group names (lower case letters, digits, _ and -)", _matching(_USER))
SHELL = value(
    str, "an absolute path without '..'", lambda v: bool(_SHELL.fullmatch(v)) and plain_path(v)
)
MODULES = strings("a list of module names or script paths", bool)
# Only the shape here: realms.builder.context opens it inside the config's directory.
CONTEXT_PATH = value(str, "a path relative to the config's directory, without '..'")
IMAGE_PATH = value(
    str, "an absolute path without '..'", lambda v: plain_path(v) and v.isprintable()
)
MODE = value(str, 'an octal mode like "0644"', _matching(_MODE))
_SNAPSHOT = re.compile(r"[0-9]{8}T[0-9]{6}Z")


def _snapshot_date(text: str) -> bool:
    if text == "":
        return True
    if not _SNAPSHOT.fullmatch(text):
        return False
    try:
        datetime.strptime(text, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return False
    return True


SNAPSHOT = value(
    str, 'a snapshot time like "20261201T000000Z" (UTC), or empty: none', _snapshot_date
)
SNAPSHOT_MIRROR = value(str, URI_EXPECTED, is_uri)
KEY_FILES = strings("a list of key file paths relative to the config's directory", bool)
DEFAULT_SNAPSHOT_MIRROR = "https://snapshot.debian.org"
"""Where ``snapshot`` builds read from: SNAPSHOT-MIRROR/archive/debian/DATE/ (and
debian-security), the layout of snapshot.debian.org."""

OWNER = value(str, "user[:group] of the image, as names or numbers", _matching(_OWNER))

KEYS: list[Setting[Any]] = [
    Setting("name", APPIMG, "base", "the appimg this builds (--name overrides it)"),
    Setting("release", SUITE, "trixie", "Debian release to build (trixie, bookworm, sid, ...)"),
    Setting("mirror", URI, "", "Debian mirror URI; empty: the mirror in the host's apt sources"),
    Setting(
        "security-mirror",
        URI,
        "",
        "Debian security mirror URI for write-apt-sources; empty: the host's, if it has one",
    ),
    Setting("components", COMPONENTS, ["main"], "archive components for the apt sources"),
    Setting(
        "variant",
        choice("minbase", "required", "important", "standard"),
        "minbase",
        "how much the bootstrapper installs before the package list",
    ),
    Setting(
        "bootstrapper",
        choice("mmdebstrap", "debootstrap"),
        "mmdebstrap",
        "the tool that makes the first root filesystem",
    ),
    Setting("packages", PACKAGES, DEFAULT_PACKAGES, "packages installed with apt after bootstrap"),
    Setting("hostname", HOSTNAME, "", "written by set-hostname; empty: the appimg's name"),
    Setting("locale", LOCALE, "en_US.UTF-8", "generated and made the default by configure-locale"),
    Setting(
        "snapshot",
        SNAPSHOT,
        "",
        "build against the Debian archive as it was at this time (UTC), read from "
        "snapshot-mirror instead of mirror and security-mirror; empty: the mirrors of today",
    ),
    Setting(
        "snapshot-mirror",
        SNAPSHOT_MIRROR,
        DEFAULT_SNAPSHOT_MIRROR,
        "where snapshot builds read from: URI/archive/debian/SNAPSHOT/ and "
        "URI/archive/debian-security/SNAPSHOT/ (the layout of snapshot.debian.org)",
    ),
    Setting(
        "keyring",
        KEY_FILES,
        [],
        "OpenPGP public key files (paths relative to this file) that sign the mirrors, instead "
        "of Debian's archive keys; the image's apt trusts them too",
    ),
]
USER_KEYS: list[Setting[Any]] = [
    Setting("name", USER, "user", "the user's name"),
    Setting("uid", UID, 1000, "uid and gid (realms bind the home of uid 1000)"),
    Setting("groups", GROUPS, ["sudo"], "extra groups (they must exist in the image)"),
    Setting("shell", SHELL, "/bin/bash", "login shell"),
]
MODULE_KEYS: list[Setting[Any]] = [
    Setting(
        "before",
        MODULES,
        DEFAULT_BEFORE,
        "run after bootstrap, before the packages: built-in names or scripts (paths relative to "
        "this file, run as root inside the image)",
    ),
    Setting("after", MODULES, DEFAULT_AFTER, "run after the packages and files"),
]
FILE_KEYS: list[Setting[Any]] = [
    Setting(
        "source",
        CONTEXT_PATH,
        "",
        "a file next to this config (a path relative to its directory)",
        required=True,
        example="files/motd",
    ),
    Setting(
        "path",
        IMAGE_PATH,
        "",
        "where it goes in the image (absolute)",
        required=True,
        example="/etc/motd",
    ),
    Setting("mode", MODE, "0644", "octal mode"),
    Setting("owner", OWNER, "root:root", "user[:group] of the image, names or numbers"),
]
SECTIONS = {"user": USER_KEYS, "modules": MODULE_KEYS}
"""The tables of a build config besides its top level and its [[files]]."""


def template() -> str:
    """A commented config that documents every key, set to the defaults (the base appimg)."""
    lines = [
        "# realms appimg build config (TOML). Build it with: realms appimg build FILE",
        "# Every key is optional; the values below are the defaults.",
        "",
        *settings.render(KEYS, set_all=True),
        "[user]",
        *settings.render(USER_KEYS, set_all=True),
        "[modules]",
        "# Built-in modules:",
        *(f"#   {name}: {doc}" for name, doc in BUILTIN_MODULES.items()),
        *settings.render(MODULE_KEYS, set_all=True),
        "# Files to install into the image, one [[files]] table each:",
        "# [[files]]",
        *settings.commented(settings.render(FILE_KEYS, set_all=True)),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def reference() -> str:
    """The build config's settings, as Markdown tables."""
    return "\n".join(
        [
            settings.reference(KEYS, "Build config (`realms appimg build FILE`)"),
            settings.reference(USER_KEYS, "Build config, `[user]`"),
            settings.reference(MODULE_KEYS, "Build config, `[modules]`"),
            "Built-in modules:\n",
            *(f"- `{name}`: {doc}" for name, doc in BUILTIN_MODULES.items()),
            "",
            settings.reference(FILE_KEYS, "Build config, `[[files]]` (one table per file)"),
        ]
    )
