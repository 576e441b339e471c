"""Build configs: what ``realms appimg build`` makes, declared in TOML.

Every key is declared once in :data:`KEYS` (type, default, what it does); that declaration
checks a config file (errors name the file, the key and what was expected), fills in defaults,
and writes the commented template of ``realms appimg build --new``. With no file, the defaults
are the default appimg ``base``: Debian trixie, a user ``user`` (uid 1000, in sudo), locale
en_US.UTF-8, no recommended packages, apt sources written into the image, and Citadel's base
packages.

The build's *inputs* are the checked config with the mirror resolved, plus the contents of every
file and script it names; their digest (:func:`inputs_digest`) keys the build cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realms.config import read_toml
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
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class Key:
    name: str
    kind: str
    default: Any
    doc: str


KEYS = [
    Key("name", "appimg", "base", "the appimg this builds (--name overrides it)"),
    Key("release", "str", "trixie", "Debian release to build (trixie, bookworm, sid, ...)"),
    Key("mirror", "str", "", "Debian mirror URI; empty: the mirror in the host's apt sources"),
    Key(
        "security-mirror",
        "str",
        "",
        "Debian security mirror URI for write-apt-sources; empty: the host's, if it has one",
    ),
    Key("components", "list", ["main"], "archive components for the apt sources"),
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
    Key("locale", "str", "en_US.UTF-8", "generated and made the default by configure-locale"),
]
USER_KEYS = [
    Key("name", "user", "user", "the user's name"),
    Key("uid", "int", 1000, "uid and gid (realms bind the home of uid 1000)"),
    Key("groups", "list", ["sudo"], "extra groups (they must exist in the image)"),
    Key("shell", "str", "/bin/bash", "login shell"),
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
    Key("source", "str", None, "a file next to this config (relative path)"),
    Key("path", "str", None, "where it goes in the image (absolute)"),
    Key("mode", "str", "0644", "octal mode"),
    Key("owner", "str", "root:root", "user[:group] of the image, names or numbers"),
]


@dataclass(frozen=True)
class FileSpec:
    source: Path
    path: str
    mode: int
    owner: str


@dataclass(frozen=True)
class Module:
    name: str
    script: Path | None = None
    """None for a built-in module."""


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
        "int": "a whole number",
        "list": "a list of strings",
        "packages": "a list of Debian package names",
        "modules": "a list of module names or script paths",
        "appimg": "an appimg name",
        "user": "a user name (lower case letters, digits, _ and -)",
        "hostname": "a host name (letters, digits and -)",
    }[key.kind]


def _check(key: Key, value: Any, where: str) -> Any:
    kind = key.kind
    strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
    good = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        "list": strings,
        "packages": strings and all(_PACKAGE.fullmatch(v) for v in value),
        "modules": strings and all(v for v in value),
        "appimg": isinstance(value, str),
        "user": isinstance(value, str) and bool(_USER.fullmatch(value)),
        "hostname": isinstance(value, str) and (value == "" or bool(_HOSTNAME.fullmatch(value))),
    }.get(kind, kind.startswith("choice:") and value in kind[7:].split("|"))
    if not good:
        raise InvalidInput(f"{where}: {key.name}: expected {_expected(key)}, got {value!r}")
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
                f"{where}: unknown key {name!r}", hint="known keys: " + ", ".join(known)
            )
    return {k.name: _check(k, data[k.name], where) if k.name in data else k.default for k in keys}


def _modules(entries: list[str], base: Path, where: str) -> list[Module]:
    modules = []
    for entry in entries:
        if entry in BUILTIN_MODULES:
            modules.append(Module(entry))
            continue
        if "/" not in entry and not entry.endswith(".sh"):
            raise InvalidInput(
                f"{where}: unknown module {entry!r}",
                hint="built-in modules: "
                + ", ".join(BUILTIN_MODULES)
                + "; a script is a path relative to the config file",
            )
        script = (base / entry).resolve()
        if not script.is_file():
            raise InvalidInput(f"{where}: module script {entry!r} not found ({script})")
        modules.append(Module(Path(entry).name, script))
    return modules


def _files(entries: Any, base: Path, where: str) -> list[FileSpec]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidInput(f"{where}: files: expected [[files]] tables")
    result = []
    for index, entry in enumerate(entries, 1):
        here = f"{where} [[files]] #{index}"
        values = _table(entry, FILE_KEYS, here)
        for required in ("source", "path"):
            if values[required] is None:
                raise InvalidInput(f"{here}: {required}: missing")
        if not values["path"].startswith("/") or ".." in values["path"].split("/"):
            raise InvalidInput(f"{here}: path: expected an absolute path without '..'")
        source = (base / values["source"]).resolve()
        if not source.is_file():
            raise InvalidInput(f"{here}: source: {values['source']!r} not found ({source})")
        if not re.fullmatch(r"[0-7]{3,4}", values["mode"]):
            raise InvalidInput(f'{here}: mode: expected an octal mode like "0644"')
        result.append(FileSpec(source, values["path"], int(values["mode"], 8), values["owner"]))
    return result


def load(path: Path | None) -> BuildConfig:
    """Read and check a build config (None: the defaults, i.e. the default appimg ``base``)."""
    if path is None:
        data: dict[str, Any] = {}
        where, base = "default config", Path.cwd()
    else:
        if not path.is_file():
            raise InvalidInput(f"{path}: no such build config")
        data = read_toml(path)
        where, base = str(path), path.resolve().parent
    data = dict(data)
    user = data.pop("user", {})
    modules = data.pop("modules", {})
    files = data.pop("files", [])
    for table, value in (("user", user), ("modules", modules)):
        if not isinstance(value, dict):
            raise InvalidInput(f"{where}: {table}: expected a table [{table}]")
    top = _table(data, KEYS, where)
    module_lists = _table(modules, MODULE_KEYS, f"{where} [modules]")
    for module, package in NEEDS_PACKAGE.items():
        wanted = module in module_lists["before"] + module_lists["after"]
        if wanted and package not in top["packages"]:
            raise InvalidInput(
                f"{where}: packages: the module {module} needs the package {package}",
                hint=f"add {package!r} to packages, or remove {module} from [modules]",
            )
    return BuildConfig(
        origin=where,
        name=top["name"],
        release=top["release"],
        mirror=top["mirror"] or apt.host_debian_mirror(),
        security_mirror=top["security-mirror"] or apt.host_security_mirror(),
        components=top["components"],
        variant=top["variant"],
        bootstrapper=top["bootstrapper"],
        packages=sorted(set(top["packages"])),
        hostname=top["hostname"] or top["name"],
        locale=top["locale"],
        user=_table(user, USER_KEYS, f"{where} [user]"),
        before=_modules(module_lists["before"], base, f"{where} [modules] before"),
        after=_modules(module_lists["after"], base, f"{where} [modules] after"),
        files=_files(files, base, where),
    )


def with_name(config: BuildConfig, name: str) -> BuildConfig:
    """The config building appimg ``name`` instead (--name)."""
    check_appimg_name(name)
    hostname = name if config.hostname == config.name else config.hostname
    return dataclasses.replace(config, name=name, hostname=hostname)


def _digest_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
            [[m.name, _digest_file(m.script) if m.script else None] for m in stage]
            for stage in (config.before, config.after)
        ],
        "files": [[f.path, f.mode, f.owner, _digest_file(f.source)] for f in config.files],
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
