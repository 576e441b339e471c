"""Build configs: what ``realms appimg build`` makes, declared in TOML.

Every key is declared once in :data:`KEYS` (type, default, what it does); that declaration
checks a config file (errors name the file, the key and what was expected), fills in defaults,
and writes the commented template of ``realms appimg build --new``. With no file, the defaults
are the default appimg ``base``: Debian trixie, a user ``user`` (uid 1000, in sudo), locale
en_US.UTF-8, no recommended packages, apt sources written into the image, and Citadel's base
packages.

The build's *inputs* are the checked config with the mirror resolved, plus the contents of every
file and script it names; their digest (:func:`inputs_digest`) keys the build cache.

A build config is untrusted data (it may come from anyone, with the files it names): every value
is checked here, at load, before any tool runs. Values that reach a command line, a path or a
generated script are plain names, absolute image paths or http(s)/file URIs, never free text.
The files and scripts a config names are its *build context*: relative paths inside the config's
own directory, opened once (``openat2`` with ``RESOLVE_BENEATH``, so no symlink leads out of the
directory) and read into memory; the build uses those bytes, never the path again.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from realms.errors import InvalidInput, InvalidName
from realms.names import check_appimg_name
from realms.system import apt

# Bump when what a given config builds changes (built-in modules, stages), so that old cached
# results are not taken for new ones.
BUILDER_VERSION = 1

BUILTIN_MODULES = {
    "no-install-recommends": "apt installs no recommended or suggested packages",
    "write-apt-sources": "write the mirror and release as the image's apt sources (deb822)",
    "configure-locale": "generate the locale and make it the default (needs package locales)",
    "create-user": "create the user of [user], with a home, in its groups",
    "set-hostname": "write /etc/hostname and /etc/hosts",
    "sudo-nopasswd": "let the user use sudo without a password",
}
DEFAULT_BEFORE = [
    "no-install-recommends",
    "write-apt-sources",
    "configure-locale",
    "create-user",
    "set-hostname",
]
DEFAULT_AFTER = ["sudo-nopasswd"]
# Modules that only work with a package installed (configure-locale's package, locales, is
# installed by the bootstrapper already, since it runs before the packages).
NEEDS_PACKAGE = {"sudo-nopasswd": "sudo"}
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
    "xz-utils",
]
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
# The characters of RFC 3986 (unreserved, reserved and '%'): no space, quote, backslash or
# control character can reach a command line, a sources file or a script through a URI.
_URI_CHARS = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+")
_URI_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]+")
MAX_UID = 65533  # a realm maps uids 0..65535; 65534 is nobody
MAX_CONTEXT_FILE = 64 << 20
"""The largest file or script a build config may name (they are read into memory once)."""


@dataclass(frozen=True)
class Key:
    name: str
    kind: str
    default: Any
    doc: str


KEYS = [
    Key("name", "appimg", "base", "the appimg this builds (--name overrides it)"),
    Key("release", "suite", "trixie", "Debian release to build (trixie, bookworm, sid, ...)"),
    Key("mirror", "uri", "", "Debian mirror URI; empty: the mirror in the host's apt sources"),
    Key(
        "security-mirror",
        "uri",
        "",
        "Debian security mirror URI for write-apt-sources; empty: the host's, if it has one",
    ),
    Key("components", "components", ["main"], "archive components for the apt sources"),
    Key(
        "variant",
        "choice:minbase|required|important|standard",
        "minbase",
        "how much the bootstrapper installs before the package list",
    ),
    Key(
        "bootstrapper",
        "choice:mmdebstrap|debootstrap",
        "mmdebstrap",
        "the tool that makes the first root filesystem",
    ),
    Key("packages", "packages", DEFAULT_PACKAGES, "packages installed with apt after bootstrap"),
    Key("hostname", "hostname", "", "written by set-hostname; empty: the appimg's name"),
    Key("locale", "locale", "en_US.UTF-8", "generated and made the default by configure-locale"),
]
USER_KEYS = [
    Key("name", "user", "user", "the user's name"),
    Key("uid", "int", 1000, "uid and gid (realms bind the home of uid 1000)"),
    Key("groups", "groups", ["sudo"], "extra groups (they must exist in the image)"),
    Key("shell", "shell", "/bin/bash", "login shell"),
]
MODULE_KEYS = [
    Key(
        "before",
        "modules",
        DEFAULT_BEFORE,
        "run after bootstrap, before the packages: built-in names or scripts (paths relative to "
        "this file, run as root inside the image)",
    ),
    Key("after", "modules", DEFAULT_AFTER, "run after the packages and files"),
]
FILE_KEYS = [
    Key("source", "context", None, "a file next to this config (a path relative to its directory)"),
    Key("path", "imagepath", None, "where it goes in the image (absolute)"),
    Key("mode", "mode", "0644", "octal mode"),
    Key("owner", "owner", "root:root", "user[:group] of the image, names or numbers"),
]


@dataclass(frozen=True)
class FileSpec:
    source: str
    """The path the config gave, relative to its directory (for messages)."""
    data: bytes
    """The file's contents, read once at load: the build installs these bytes."""
    path: str
    mode: int
    owner: str


@dataclass(frozen=True)
class Module:
    name: str
    script: str | None = None
    """The script's path relative to the config's directory; None for a built-in module."""
    text: str = ""
    """The script, read once at load (the build runs this text, never the path again)."""


@dataclass(frozen=True)
class BuildConfig:
    origin: str
    """The config file, or "default config"."""
    name: str
    release: str
    mirror: str
    security_mirror: str | None
    components: list[str]
    variant: str
    bootstrapper: str
    packages: list[str]
    hostname: str
    locale: str
    user: dict[str, Any]
    before: list[Module]
    after: list[Module]
    files: list[FileSpec] = field(default_factory=list)

    def uses(self, module: str) -> bool:
        return any(m.name == module and m.script is None for m in self.before + self.after)


def _expected(key: Key) -> str:
    if key.kind.startswith("choice:"):
        return "one of " + ", ".join(f'"{c}"' for c in key.kind[7:].split("|"))
    return {
        "str": "a string",
        "int": f"a whole number from 0 to {MAX_UID}",
        "packages": "a list of Debian package names",
        "modules": "a list of module names or script paths",
        "appimg": "an appimg name",
        "user": "a user name (lower case letters, digits, _ and -)",
        "hostname": "a host name (letters, digits and -)",
        "suite": "a Debian release name (lower case letters, digits, '.', '+' and '-')",
        "components": "a list of archive component names (lower case letters, digits, . + -)",
        "uri": "an http://, https:// or file:/// URI (or empty: the host's mirror)",
        "locale": 'a locale name like "en_US.UTF-8"',
        "groups": "a list of group names (lower case letters, digits, _ and -)",
        "shell": "an absolute path without '..'",
        "context": "a path relative to the config's directory, without '..'",
        "imagepath": "an absolute path without '..'",
        "mode": 'an octal mode like "0644"',
        "owner": "user[:group] of the image, as names or numbers",
    }[key.kind]


def _is_uri(value: str) -> bool:
    """An http(s):// URI with a host, or a file: URI of an absolute path; nothing that a tool
    could take for an option, a file of sources lines or more than one word."""
    if not _URI_CHARS.fullmatch(value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return False
    if parts.scheme in ("http", "https"):
        return bool(parts.hostname and _URI_HOST.fullmatch(parts.hostname))
    if parts.scheme == "file":
        return parts.netloc == "" and parts.path.startswith("/") and _plain_path(parts.path)
    return False


def _plain_path(value: str) -> bool:
    """An absolute path without '..' components."""
    return value.startswith("/") and ".." not in value.split("/")


def _strings(value: Any, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) and pattern.fullmatch(v) for v in value
    )


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_UID,
    "packages": lambda v: _strings(v, _PACKAGE),
    "modules": lambda v: isinstance(v, list) and all(isinstance(e, str) and e for e in v),
    "appimg": lambda v: isinstance(v, str),
    "user": lambda v: isinstance(v, str) and bool(_USER.fullmatch(v)),
    "hostname": lambda v: isinstance(v, str) and (v == "" or bool(_HOSTNAME.fullmatch(v))),
    "suite": lambda v: isinstance(v, str) and bool(_SUITE.fullmatch(v)),
    "components": lambda v: bool(v) and _strings(v, _SUITE),
    "uri": lambda v: isinstance(v, str) and (v == "" or _is_uri(v)),
    "locale": lambda v: isinstance(v, str) and bool(_LOCALE.fullmatch(v)),
    "groups": lambda v: _strings(v, _USER),
    "shell": lambda v: isinstance(v, str) and bool(_SHELL.fullmatch(v)) and _plain_path(v),
    # Only the shape here: _context_file opens it inside the config's directory.
    "context": lambda v: isinstance(v, str),
    "imagepath": lambda v: isinstance(v, str) and _plain_path(v) and v.isprintable(),
    "mode": lambda v: isinstance(v, str) and bool(re.fullmatch(r"[0-7]{3,4}", v)),
    "owner": lambda v: isinstance(v, str) and bool(_OWNER.fullmatch(v)),
}


def _shown(value: Any) -> str:
    """A value for an error line: cut when long (a config may hold anything)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _check(key: Key, value: Any, where: str) -> Any:
    kind = key.kind
    check = _CHECKS.get(kind)
    good = check(value) if check else kind.startswith("choice:") and value in kind[7:].split("|")
    if not good:
        raise InvalidInput(f"{where}: {key.name}: expected {_expected(key)}, got {_shown(value)}")
    if kind == "appimg":
        try:
            check_appimg_name(value)
        except InvalidName as error:
            raise InvalidInput(f"{where}: {key.name}: {error.message}") from None
    return value


def _table(data: dict[str, Any], keys: list[Key], where: str) -> dict[str, Any]:
    known = {k.name: k for k in keys}
    for name in data:
        if name not in known:
            raise InvalidInput(
                f"{where}: unknown key {_shown(name)}", hint="known keys: " + ", ".join(known)
            )
    return {k.name: _check(k, data[k.name], where) if k.name in data else k.default for k in keys}


_SYS_OPENAT2 = 437  # the same number on every architecture (a syscall added after 5.1)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


# O_NONBLOCK: a FIFO in the context must not hang the build; O_NOCTTY: nor a terminal adopt us.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


def _open_beneath(directory_fd: int, relative: str) -> int:
    """Open ``relative`` below ``directory_fd``: symlinks are followed only while they stay
    below it (EXDEV otherwise). The kernel resolves and opens in one step, so nothing can be
    swapped in between a check and the open."""
    how = _OpenHow(_OPEN_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = int(
        _libc.syscall(
            _SYS_OPENAT2,
            directory_fd,
            os.fsencode(relative),
            ctypes.byref(how),
            ctypes.sizeof(how),
        )
    )
    if fd >= 0:
        return fd
    number = ctypes.get_errno()
    if number != errno.ENOSYS:
        raise OSError(number, os.strerror(number), relative)
    # A kernel without openat2 (before 5.6): no symlink at all, component by component.
    fd = os.dup(directory_fd)
    parts = relative.split("/")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        flags = (_OPEN_FLAGS if last else os.O_RDONLY | os.O_DIRECTORY) | os.O_NOFOLLOW
        try:
            following = os.open(part, flags, dir_fd=fd)
        finally:
            os.close(fd)
        fd = following
    return fd


@dataclass(frozen=True)
class _Context:
    """The config's directory, opened once: every file it names is opened below this."""

    path: Path
    fd: int


def _context_file(context: _Context, relative: str, what: str) -> bytes:
    """The contents of ``relative``, a regular file inside the config's directory."""
    parts = relative.split("/")
    if (
        not relative
        or relative.startswith("/")
        or ".." in parts
        or not relative.isprintable()
        or "\\" in relative
    ):
        raise InvalidInput(
            f"{what} expected a path relative to the config's directory, without '..', "
            f"got {_shown(relative)}"
        )
    relative = "/".join(part for part in parts if part not in ("", "."))
    try:
        fd = _open_beneath(context.fd, relative)
    except OSError as error:
        reason = {
            errno.ENOENT: "not found",
            errno.ENOTDIR: "not found",
            errno.EXDEV: "leads outside the config's directory (through a symlink)",
            errno.ELOOP: "is a symlink (or has too many)",
        }.get(error.errno or 0, f"cannot be opened: {os.strerror(error.errno or 0)}")
        raise InvalidInput(f"{what} {_shown(relative)} {reason} (in {context.path})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{what} {_shown(relative)} is not a regular file")
        if info.st_size > MAX_CONTEXT_FILE:
            raise InvalidInput(
                f"{what} {_shown(relative)} is larger than {MAX_CONTEXT_FILE >> 20} MiB"
            )
        chunks = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > MAX_CONTEXT_FILE:  # it grew after fstat
                raise InvalidInput(f"{what} {_shown(relative)} changed while it was read")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _modules(entries: list[str], context: _Context, where: str) -> list[Module]:
    modules = []
    for entry in entries:
        if entry in BUILTIN_MODULES:
            modules.append(Module(entry))
            continue
        if "/" not in entry and not entry.endswith(".sh"):
            raise InvalidInput(
                f"{where}: unknown module {_shown(entry)}",
                hint="built-in modules: "
                + ", ".join(BUILTIN_MODULES)
                + "; a script is a path relative to the config file",
            )
        data = _context_file(context, entry, f"{where}: module script")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            message = f"{where}: module script {_shown(entry)} is not UTF-8 text"
            raise InvalidInput(message) from None
        modules.append(Module(entry.rstrip("/").rsplit("/", 1)[-1], entry, text))
    return modules


def _files(entries: Any, context: _Context, where: str) -> list[FileSpec]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidInput(f"{where}: files: expected [[files]] tables")
    result = []
    for index, entry in enumerate(entries, 1):
        here = f"{where} [[files]] #{index}"
        values = _table(entry, FILE_KEYS, here)
        for required in ("source", "path"):
            if values[required] is None:
                raise InvalidInput(f"{here}: {required}: missing")
        data = _context_file(context, values["source"], f"{here}: source:")
        mode = int(values["mode"], 8)
        result.append(FileSpec(values["source"], data, values["path"], mode, values["owner"]))
    return result


def _read_config(path: Path) -> tuple[dict[str, Any], _Context]:
    """The parsed config and its directory, opened so that the directory is the one that
    holds the file that was read (a directory swapped for a symlink in between is refused)."""
    real = path.resolve()
    try:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as error:
        raise InvalidInput(f"{path}: cannot be read: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{path}: no such build config")
        data = handle.read(MAX_CONTEXT_FILE)
    directory = os.open(real.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        seen = os.stat(real.name, dir_fd=directory, follow_symlinks=False)
        if (seen.st_dev, seen.st_ino) != (info.st_dev, info.st_ino):
            raise InvalidInput(f"{path}: changed while it was read")
        parsed = tomllib.loads(data.decode())
    except UnicodeDecodeError:
        os.close(directory)
        raise InvalidInput(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        os.close(directory)
        raise InvalidInput(f"{path}: not valid TOML: {error}") from None
    except BaseException:
        os.close(directory)
        raise
    return parsed, _Context(real.parent, directory)


def _host_mirror(uri: str | None, key: str) -> str | None:
    """A mirror from the host's apt sources, held to the same rule as a config's."""
    if uri is not None and not _is_uri(uri):
        raise InvalidInput(
            f"the host's apt sources ({apt.APT_DIR}): {key}: expected an http://, https:// or "
            f"file:/// URI, got {_shown(uri)}",
            hint=f"name one with the {key} key of the build config",
        )
    return uri


def load(path: Path | None) -> BuildConfig:
    """Read and check a build config (None: the defaults, i.e. the default appimg ``base``)."""
    if path is None:
        data: dict[str, Any] = {}
        where = "default config"
        context = _Context(Path.cwd(), os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    else:
        if not path.is_file():
            raise InvalidInput(f"{path}: no such build config")
        data, context = _read_config(path)
        where = str(path)
    try:
        return _load(data, where, context)
    finally:
        os.close(context.fd)


def _load(data: dict[str, Any], where: str, context: _Context) -> BuildConfig:
    data = dict(data)
    user = data.pop("user", {})
    modules = data.pop("modules", {})
    files = data.pop("files", [])
    for table, value in (("user", user), ("modules", modules)):
        if not isinstance(value, dict):
            raise InvalidInput(f"{where}: {table}: expected a table [{table}]")
    top = _table(data, KEYS, where)
    user_values = _table(user, USER_KEYS, f"{where} [user]")
    module_lists = _table(modules, MODULE_KEYS, f"{where} [modules]")
    for module, package in NEEDS_PACKAGE.items():
        wanted = module in module_lists["before"] + module_lists["after"]
        if wanted and package not in top["packages"]:
            raise InvalidInput(
                f"{where}: packages: the module {module} needs the package {package}",
                hint=f"add {package!r} to packages, or remove {module} from [modules]",
            )
    if top["bootstrapper"] == "debootstrap" and top["variant"] not in ("minbase", "important"):
        raise InvalidInput(
            f"{where}: variant: debootstrap has no variant {top['variant']!r}",
            hint="use minbase or important with debootstrap, or bootstrapper = mmdebstrap",
        )
    before = _modules(module_lists["before"], context, f"{where} [modules] before")
    after = _modules(module_lists["after"], context, f"{where} [modules] after")
    file_specs = _files(files, context, where)
    mirror = top["mirror"] or _host_mirror(apt.host_debian_mirror(), "mirror")
    security = top["security-mirror"] or _host_mirror(apt.host_security_mirror(), "security-mirror")
    return BuildConfig(
        origin=where,
        name=top["name"],
        release=top["release"],
        mirror=str(mirror),
        security_mirror=security,
        components=top["components"],
        variant=top["variant"],
        bootstrapper=top["bootstrapper"],
        packages=sorted(set(top["packages"])),
        hostname=top["hostname"] or top["name"],
        locale=top["locale"],
        user=user_values,
        before=before,
        after=after,
        files=file_specs,
    )


def with_name(config: BuildConfig, name: str) -> BuildConfig:
    """The config building appimg ``name`` instead (--name)."""
    check_appimg_name(name)
    hostname = name if config.hostname == config.name else config.hostname
    return dataclasses.replace(config, name=name, hostname=hostname)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inputs_digest(config: BuildConfig) -> str:
    """A digest of everything the build depends on (except what the mirror serves today)."""
    inputs = {
        "builder": BUILDER_VERSION,
        "release": config.release,
        "mirror": config.mirror,
        "security-mirror": config.security_mirror,
        "components": config.components,
        "variant": config.variant,
        "bootstrapper": config.bootstrapper,
        "packages": config.packages,
        "hostname": config.hostname,
        "locale": config.locale,
        "user": config.user,
        "modules": [
            [[m.name, _digest(m.text.encode()) if m.script else None] for m in stage]
            for stage in (config.before, config.after)
        ],
        "files": [[f.path, f.mode, f.owner, _digest(f.data)] for f in config.files],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _value(value: Any) -> str:
    if isinstance(value, list):
        if len(value) > 4:
            inner = "".join(f"\n    {json.dumps(v)}," for v in value)
            return f"[{inner}\n]"
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


def template() -> str:
    """A commented config that documents every key, set to the defaults (the base appimg)."""
    lines = [
        "# realms appimg build config (TOML). Build it with: realms appimg build FILE",
        "# Every key is optional; the values below are the defaults.",
        "",
    ]
    for key in KEYS:
        lines += [f"# {key.doc}", f"{key.name} = {_value(key.default)}", ""]
    lines += ["[user]"]
    for key in USER_KEYS:
        lines += [f"# {key.doc}", f"{key.name} = {_value(key.default)}"]
    lines += ["", "[modules]", "# Built-in modules:"]
    lines += [f"#   {name}: {doc}" for name, doc in BUILTIN_MODULES.items()]
    for key in MODULE_KEYS:
        lines += [f"# {key.doc}", f"{key.name} = {_value(key.default)}"]
    lines += ["", "# Files to install into the image, one [[files]] table each:"]
    lines += ["# [[files]]"]
    for key in FILE_KEYS:
        example = {"source": '"files/motd"', "path": '"/etc/motd"'}.get(
            key.name, _value(key.default)
        )
        lines += [f"# {key.name} = {example}    # {key.doc}"]
    return "\n".join(lines) + "\n"
