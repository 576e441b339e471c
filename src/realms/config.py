"""Configuration files: the store's global config and each realm's own config (TOML).

Every setting is declared once, below, as a :class:`realms.settings.Setting` with its type,
default and what it does; the declaration drives parsing, validation (errors name the file, the
key and what was expected) and the commented files that ``realms init`` and ``realms new``
write.

Realm settings use Citadel's keys, so that a Citadel realm config reads as it is. A realm's
config falls back to the ``[realm-defaults]`` table of the global config, then to the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from realms import settings
from realms.kinds import Isolation, NetworkMode, VerityMode
from realms.network.zones import ZONE_NAME, ZONE_SETTINGS, ZONES, Zone, parse_zones
from realms.settings import BOOL, STRING, STRINGS, Setting, choice, whole_number

DEFAULT_APPIMG = Setting(
    "default-appimg",
    STRING,
    "base",
    "appimg that `realms new` uses without --appimg, and `update-appimg` without NAME",
)
DEFAULT_REALM = Setting(
    "default-realm",
    STRING,
    "",
    "realm that `realms default` names until one is chosen with `realms default NAME`",
)
VERITY = Setting(
    "verity",
    choice(VerityMode.AUTO, VerityMode.KERNEL, VerityMode.USERSPACE),
    VerityMode.AUTO,
    "how sealed images are checked: kernel dm-verity when present (auto), always "
    "(kernel: refuse without it), or in userspace before a read-only mount",
)
REQUIRE_SEALED = Setting("require-sealed", BOOL, False, "only make realms from sealed appimgs")
KEEP_VERSIONS = Setting(
    "keep-versions",
    whole_number(minimum=1),
    3,
    "how many versions `realms appimg prune` keeps when --keep is not given",
)
GLOBAL_SETTINGS: list[Setting[Any]] = [
    DEFAULT_APPIMG,
    DEFAULT_REALM,
    VERITY,
    REQUIRE_SEALED,
    KEEP_VERSIONS,
]
REALM_DEFAULTS = "realm-defaults"
"""The global config's table of realm settings that a realm's own config does not set."""

ISOLATION = Setting(
    "isolation",
    choice(*Isolation),
    Isolation.USERNS,
    "userns: the realm's root is an unprivileged host uid (a user namespace with the "
    "realm's own uid range; files keep their owners through idmapped mounts); "
    "privileged: the realm's root is host root (only for realms you trust entirely)",
)
REALM_SETTINGS: list[Setting[Any]] = [
    Setting(
        "realmfs",
        STRING,
        "",
        "the appimg this realm was made from (written by `realms new`; changing it does "
        "not change the realm's root filesystem)",
    ),
    ISOLATION,
    Setting(
        "use-network",
        BOOL,
        True,
        "false: no network at all (loopback only), whatever network says",
    ),
    Setting(
        "network",
        choice(*NetworkMode),
        NetworkMode.HOST,
        "host: the host's network; private: a network of the realm's zone (a veth into the "
        "zone's bridge, an address of its subnet, NAT to the outside); none: loopback only "
        "(what use-network false means, whatever this says)",
    ),
    Setting(
        "network-zone",
        ZONE_NAME,
        "clear",
        "the zone of a private network: realms of one zone reach each other by name, other "
        "zones only where the global config's [zones.NAME] allow says so",
    ),
    Setting(
        "use-shared-dir", BOOL, False, "bind the store's Shared/ directory at /home/user/Shared"
    ),
    Setting(
        "use-ephemeral-home",
        BOOL,
        False,
        "give the realm an empty tmpfs home instead of its persistent one",
    ),
    Setting("use-kvm", BOOL, False, "bind /dev/kvm into the realm"),
    Setting("use-gpu", BOOL, False, "bind /dev/dri into the realm"),
    Setting(
        "use-sound",
        BOOL,
        False,
        "bind the PulseAudio socket of uid 1000 (/run/user/1000/pulse) into the realm",
    ),
    Setting("use-x11", BOOL, False, "bind /tmp/.X11-unix into the realm (read-only)"),
    Setting(
        "use-wayland",
        BOOL,
        False,
        "bind the Wayland socket of uid 1000 (/run/user/1000/wayland-0) into the realm",
    ),
    Setting(
        "extra-bindmounts", STRINGS, [], 'host paths to bind read-write: "/src" or "/src:/dest"'
    ),
    Setting(
        "extra-bindmounts-ro", STRINGS, [], 'host paths to bind read-only: "/src" or "/src:/dest"'
    ),
    Setting(
        "overlay",
        choice("storage", "tmpfs", "none"),
        "storage",
        "for realms on block images: keep the writable layer in the store or in a tmpfs",
    ),
    Setting(
        "autostart",
        BOOL,
        False,
        "boot the realm with `realms start --autostart` (what the boot-time unit runs)",
    ),
    Setting(
        "requires",
        STRINGS,
        [],
        "realms started before this one and stopped after it",
    ),
    Setting(
        "keep",
        STRINGS,
        ["/etc/machine-id", "/etc/ssh/ssh_host_*"],
        "paths of the root filesystem that `realms rebase` carries over to the new root "
        "(globs; the home is never in the root and always stays)",
    ),
    Setting(
        "keep-snapshots",
        whole_number(minimum=0),
        5,
        "how many snapshots taken with `realms snapshot` the realm keeps (the oldest go "
        "first, never the one just taken; 0: none are taken); the roots that `realms rebase` "
        "and `realms restore` replace are kept as 'pre-rebase' and 'pre-restore', one each, "
        "not counted",
    ),
]


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file is empty, a malformed one an error naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    return settings.parse_toml(data, path)


class GlobalConfig(NamedTuple):
    values: dict[str, Any]
    realm_defaults: dict[str, Any]
    zones: dict[str, Zone]
    """The ``[zones.NAME]`` tables (realms.network.zones)."""

    @property
    def default_appimg(self) -> str:
        return DEFAULT_APPIMG.of(self.values)

    @property
    def default_realm(self) -> str:
        return DEFAULT_REALM.of(self.values)

    @property
    def verity(self) -> VerityMode:
        return VERITY.of(self.values)

    @property
    def require_sealed(self) -> bool:
        return REQUIRE_SEALED.of(self.values)

    @property
    def keep_versions(self) -> int:
        return KEEP_VERSIONS.of(self.values)


def load_global(path: Path) -> GlobalConfig:
    data = read_toml(path)
    realm_table = settings.section(data, REALM_DEFAULTS, str(path))
    zones = parse_zones(settings.section(data, ZONES, str(path)), str(path))
    values = settings.parse(GLOBAL_SETTINGS, data, str(path))
    realm_defaults = settings.parse(REALM_SETTINGS, realm_table, f"{path} [{REALM_DEFAULTS}]")
    return GlobalConfig(values, realm_defaults, zones)


def load_realm(path: Path, fallback: dict[str, Any]) -> dict[str, Any]:
    return settings.parse(REALM_SETTINGS, read_toml(path), str(path), fallback)


def commented_template(
    declared: list[Setting[Any]], title: str, values: dict[str, Any] | None = None
) -> str:
    """A config file that documents every setting: set ones as keys, the rest commented out."""
    return "\n".join([f"# {title}", "", *settings.render(declared, values)])


def global_template() -> str:
    """The global config that ``realms init`` writes: every setting documented, none set."""
    lines = [
        "# realms global configuration (TOML). Unset keys use the default.",
        "",
        *settings.render(GLOBAL_SETTINGS),
        f"# [{ZONES}.work]",
        "# A zone's settings (a zone needs no table: realms name it in network-zone):",
        "",
        *settings.commented(settings.render(ZONE_SETTINGS)),
        f"# [{REALM_DEFAULTS}]",
        "# Realm settings used when a realm's own config does not set them:",
        "",
        *settings.commented(settings.render(REALM_SETTINGS)),
    ]
    return "\n".join(lines) + "\n"


def reference() -> str:
    """The settings of the global config and of realm configs, as Markdown tables."""
    return (
        settings.reference(GLOBAL_SETTINGS, "Global config (`config.toml` of the store)")
        + "\n"
        + settings.reference(
            REALM_SETTINGS,
            f"Realm config (`realms/NAME/config`, defaults in `[{REALM_DEFAULTS}]`)",
        )
        + "\n"
        + settings.reference(
            ZONE_SETTINGS,
            f"Zones (`[{ZONES}.NAME]` tables of the global config; a zone needs none)",
        )
    )
