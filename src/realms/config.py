"""Configuration files: the store's global config and each realm's own config (TOML).

Every setting is declared once, below, with its type, default and what it does; the declaration
drives parsing, validation (errors name the file, the key and what was expected) and the
commented files that ``realms init`` and ``realms new`` write.

Realm settings use Citadel's keys, so that a Citadel realm config reads as it is. A realm's
config falls back to the ``[realm-defaults]`` table of the global config, then to the defaults.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realms.errors import InvalidInput


@dataclass(frozen=True)
class Setting:
    key: str
    kind: str  # "bool", "str", "int", "list", or "choice:a|b|c"
    default: Any
    doc: str

    @property
    def choices(self) -> list[str]:
        return self.kind.removeprefix("choice:").split("|") if self.is_choice else []

    @property
    def is_choice(self) -> bool:
        return self.kind.startswith("choice:")


GLOBAL_SETTINGS = [
    Setting(
        "default-appimg",
        "str",
        "base",
        "appimg that `realms new` uses without --appimg, and `update-appimg` without NAME",
    ),
    Setting(
        "default-realm",
        "str",
        "",
        "realm that `realms default` names until one is chosen with `realms default NAME`",
    ),
    Setting(
        "verity",
        "choice:auto|kernel|userspace",
        "auto",
        "how sealed images are checked: kernel dm-verity when present (auto), always "
        "(kernel: refuse without it), or in userspace before a read-only mount",
    ),
    Setting("require-sealed", "bool", False, "only make realms from sealed appimgs"),
    Setting(
        "keep-versions",
        "int",
        3,
        "how many versions `realms appimg prune` keeps when --keep is not given",
    ),
]

REALM_SETTINGS = [
    Setting(
        "realmfs",
        "str",
        "",
        "the appimg this realm was made from (written by `realms new`; changing it does "
        "not change the realm's root filesystem)",
    ),
    Setting(
        "isolation",
        "choice:userns|privileged",
        "userns",
        "userns: the realm's root is an unprivileged host uid (a user namespace with the "
        "realm's own uid range; files keep their owners through idmapped mounts); "
        "privileged: the realm's root is host root (only for realms you trust entirely)",
    ),
    Setting(
        "use-network",
        "bool",
        True,
        "share the host's network; false gives the realm a private network (loopback only)",
    ),
    Setting(
        "network-zone",
        "str",
        "clear",
        "Citadel's network zone; accepted for compatibility, realms shares the host's "
        "network or none (use-network)",
    ),
    Setting(
        "use-shared-dir", "bool", False, "bind the store's Shared/ directory at /home/user/Shared"
    ),
    Setting(
        "use-ephemeral-home",
        "bool",
        False,
        "give the realm an empty tmpfs home instead of its persistent one",
    ),
    Setting("use-kvm", "bool", False, "bind /dev/kvm into the realm"),
    Setting("use-gpu", "bool", False, "bind /dev/dri into the realm"),
    Setting(
        "use-sound",
        "bool",
        False,
        "bind the PulseAudio socket of uid 1000 (/run/user/1000/pulse) into the realm",
    ),
    Setting("use-x11", "bool", False, "bind /tmp/.X11-unix into the realm (read-only)"),
    Setting(
        "use-wayland",
        "bool",
        False,
        "bind the Wayland socket of uid 1000 (/run/user/1000/wayland-0) into the realm",
    ),
    Setting(
        "extra-bindmounts", "list", [], 'host paths to bind read-write: "/src" or "/src:/dest"'
    ),
    Setting(
        "extra-bindmounts-ro", "list", [], 'host paths to bind read-only: "/src" or "/src:/dest"'
    ),
    Setting(
        "overlay",
        "choice:storage|tmpfs|none",
        "storage",
        "for realms on block images: keep the writable layer in the store or in a tmpfs",
    ),
    Setting(
        "autostart",
        "bool",
        False,
        "Citadel's autostart; accepted for compatibility, realms starts nothing at boot",
    ),
]

_TYPE_NAMES = {
    "bool": "true or false",
    "str": "a string",
    "int": "a whole number",
    "list": "a list of strings",
}


def _check_value(setting: Setting, value: Any, source: str) -> Any:
    kind = setting.kind
    good = (
        (kind == "bool" and isinstance(value, bool))
        or (kind == "int" and isinstance(value, int) and not isinstance(value, bool))
        or (kind == "str" and isinstance(value, str))
        or (kind == "list" and isinstance(value, list) and all(isinstance(v, str) for v in value))
        or (setting.is_choice and value in setting.choices)
    )
    if not good:
        expected = (
            "one of " + ", ".join(f'"{c}"' for c in setting.choices)
            if setting.is_choice
            else _TYPE_NAMES[kind]
        )
        raise InvalidInput(f"{source}: {setting.key}: expected {expected}, got {value!r}")
    return value


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file is empty, a malformed one an error naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        return tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput(f"{path}: not valid TOML: {error}") from None


def parse_settings(
    table: dict[str, Any], settings: list[Setting], source: str, base: dict[str, Any]
) -> dict[str, Any]:
    """Validate ``table`` against ``settings`` and lay it over ``base``."""
    known = {setting.key: setting for setting in settings}
    result = dict(base)
    for key, value in table.items():
        setting = known.get(key)
        if setting is None:
            raise InvalidInput(
                f"{source}: unknown key {key!r}",
                hint="known keys: " + ", ".join(sorted(known)),
            )
        result[key] = _check_value(setting, value, source)
    return result


def defaults(settings: list[Setting]) -> dict[str, Any]:
    return {setting.key: setting.default for setting in settings}


@dataclass(frozen=True)
class GlobalConfig:
    values: dict[str, Any]
    realm_defaults: dict[str, Any]

    @property
    def default_appimg(self) -> str:
        return str(self.values["default-appimg"])

    @property
    def default_realm(self) -> str:
        return str(self.values["default-realm"])

    @property
    def verity(self) -> str:
        return str(self.values["verity"])

    @property
    def require_sealed(self) -> bool:
        return bool(self.values["require-sealed"])

    @property
    def keep_versions(self) -> int:
        return int(self.values["keep-versions"])


def load_global(path: Path) -> GlobalConfig:
    data = read_toml(path)
    realm_table = data.pop("realm-defaults", {})
    if not isinstance(realm_table, dict):
        raise InvalidInput(f"{path}: realm-defaults: expected a table")
    values = parse_settings(data, GLOBAL_SETTINGS, str(path), defaults(GLOBAL_SETTINGS))
    if values["keep-versions"] < 1:
        raise InvalidInput(f"{path}: keep-versions: expected at least 1")
    realm_defaults = parse_settings(
        realm_table, REALM_SETTINGS, f"{path} [realm-defaults]", defaults(REALM_SETTINGS)
    )
    return GlobalConfig(values, realm_defaults)


def load_realm(path: Path, fallback: dict[str, Any]) -> dict[str, Any]:
    return parse_settings(read_toml(path), REALM_SETTINGS, str(path), fallback)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def commented_template(
    settings: list[Setting], title: str, values: dict[str, Any] | None = None
) -> str:
    """A config file that documents every setting: set ones as keys, the rest commented out."""
    values = values or {}
    lines = [f"# {title}", ""]
    for setting in settings:
        lines.append(f"# {setting.doc}")
        if setting.key in values:
            lines.append(f"{setting.key} = {_toml_value(values[setting.key])}")
        else:
            lines.append(f"# {setting.key} = {_toml_value(setting.default)}")
        lines.append("")
    return "\n".join(lines)
