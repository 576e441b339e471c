"""Zones: the global config's ``[zones.NAME]`` tables (declared here, parsed with the global
config by :mod:`realms.config`), and which subnet each zone has.

A zone is named by realms' ``network-zone``; it needs no table. A zone with a ``subnet`` has
that one; any other (``clear``, the default zone, among them) gets the next /24 of
:data:`POOL` that no other zone has, given once and kept in the store (``network/zones.toml``)
so that a realm's address stays its own. The first address of a subnet is the gateway (the
zone's bridge ``realms-NAME``), the last its broadcast; realms get the ones between.

This module reads and computes only (no lock, no system change): :mod:`realms.network.ipam`
calls it under the network lock.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any, NamedTuple

from realms import settings
from realms.errors import InvalidInput, RealmsError
from realms.settings import Rejected, Setting, Type

ZONES = "zones"
"""The global config's table of zone tables."""
DEFAULT_ZONE = "clear"
POOL = IPv4Network("10.89.0.0/16")
"""Where zones without a configured subnet get theirs, a /24 each."""
AUTO_PREFIX = 24
BRIDGE_PREFIX = "realms-"
ZONE_NAME_MAX = 15 - len(BRIDGE_PREFIX)
"""The bridge ``realms-NAME`` is a network interface: its name has at most 15 bytes."""
SMALLEST_PREFIX, LARGEST_PREFIX = 8, 30
"""A /30 has a gateway and one realm; anything wider than a /8 is a mistake."""

_ZONE_NAME = re.compile(r"[a-z](?:[a-z0-9-]*[a-z0-9])?")


def zone_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a zone's name (it becomes a network interface's), or None."""
    if not _ZONE_NAME.fullmatch(name):
        return (
            f"invalid zone name {settings.shown(name)}: lowercase letters, digits and '-', "
            "starting with a letter"
        )
    if len(name) > ZONE_NAME_MAX:
        return (
            f"zone name {name!r} is longer than {ZONE_NAME_MAX} characters "
            f"(its bridge {BRIDGE_PREFIX}{name} would be a longer interface name than Linux takes)"
        )
    return None


def check_zone_name(name: str) -> str:
    problem = zone_name_problem(name)
    if problem:
        raise InvalidInput(problem)
    return name


def _subnet(raw: object) -> str:
    if not isinstance(raw, str):
        raise Rejected
    if raw == "":
        return raw
    try:
        network = IPv4Network(raw, strict=True)
    except ValueError:
        raise Rejected(
            f'expected an IPv4 subnet like "10.89.5.0/24" (no host bits), got {settings.shown(raw)}'
        ) from None
    if not SMALLEST_PREFIX <= network.prefixlen <= LARGEST_PREFIX:
        raise Rejected(
            f"expected a prefix length from /{SMALLEST_PREFIX} to /{LARGEST_PREFIX}, got {raw}"
        )
    return str(network)


def _zone_names(raw: object) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise Rejected
    for item in raw:
        problem = zone_name_problem(item)
        if problem:
            raise Rejected(problem)
    return list(raw)


def _zone_name(raw: object) -> str:
    if not isinstance(raw, str):
        raise Rejected
    problem = zone_name_problem(raw)
    if problem:
        raise Rejected(problem)
    return raw


ZONE_NAME = Type(f"a zone name (a-z, 0-9, '-', at most {ZONE_NAME_MAX})", _zone_name)
"""A realm's ``network-zone``."""

SUBNET = Setting(
    "subnet",
    Type('an IPv4 subnet ("10.89.5.0/24")', _subnet),
    "",
    "the zone's subnet: its first address is the gateway (the bridge realms-NAME), realms get "
    'the others; "": the next free /24 of 10.89.0.0/16, kept for the zone in the store',
)
ALLOW: Setting[list[str]] = Setting(
    "allow",
    Type("a list of zone names", _zone_names),
    [],
    "zones whose realms this zone's realms may connect to (the answers come back); realms of "
    "one zone always reach each other, other zones never unless allowed",
)
ZONE_SETTINGS: list[Setting[Any]] = [SUBNET, ALLOW]


class Zone(NamedTuple):
    """A zone's table, checked. ``subnet`` None: automatic."""

    name: str
    subnet: IPv4Network | None = None
    allow: tuple[str, ...] = ()


def parse_zones(table: Mapping[str, object], where: str) -> dict[str, Zone]:
    """The ``[zones]`` table of the global config ``where``: each zone's table checked, and no
    two configured subnets overlapping."""
    zones: dict[str, Zone] = {}
    for name, body in table.items():
        place = f"{where} [{ZONES}.{settings.shown(name)}]"
        problem = zone_name_problem(name)
        if problem:
            raise InvalidInput(f"{where}: {problem}")
        if not isinstance(body, dict):
            raise InvalidInput(f"{place}: expected a table")
        values = settings.parse(ZONE_SETTINGS, body, place)
        subnet = SUBNET.of(values)
        zones[name] = Zone(
            name, IPv4Network(subnet) if subnet else None, tuple(dict.fromkeys(ALLOW.of(values)))
        )
    configured = [zone for zone in zones.values() if zone.subnet is not None]
    for index, zone in enumerate(configured):
        for other in configured[index + 1 :]:
            assert zone.subnet is not None and other.subnet is not None
            if zone.subnet.overlaps(other.subnet):
                raise InvalidInput(
                    f"{where}: the subnets of zones {zone.name} ({zone.subnet}) and "
                    f"{other.name} ({other.subnet}) overlap"
                )
    return zones


def zone(zones: Mapping[str, Zone], name: str) -> Zone:
    """Zone ``name`` as configured, or with defaults when it has no table."""
    return zones.get(name) or Zone(check_zone_name(name))


def subnets(zones: Mapping[str, Zone], kept: Mapping[str, str], used: list[str]) -> dict[str, str]:
    """The subnet of every zone in ``used``: configured, else the one ``kept`` for it (what
    earlier commands gave it), else the next /24 of :data:`POOL` that overlaps no other zone's.
    Returns the automatic ones (the new ``kept``, to write back); a kept subnet that a zone's
    configured one now overlaps is given anew."""
    configured = {name: z.subnet for name, z in zones.items() if z.subnet is not None}
    taken = list(configured.values())
    automatic: dict[str, str] = {}
    for name, text in kept.items():
        try:
            network = IPv4Network(text)
        except ValueError:
            continue  # a damaged entry is given anew
        if name in configured or any(network.overlaps(other) for other in taken):
            continue
        automatic[name] = text
        taken.append(network)
    for name in used:
        if name in configured or name in automatic:
            continue
        free = next(
            (
                candidate
                for candidate in POOL.subnets(new_prefix=AUTO_PREFIX)
                if not any(candidate.overlaps(other) for other in taken)
            ),
            None,
        )
        if free is None:
            raise RealmsError(
                f"no free /{AUTO_PREFIX} left in {POOL} for zone {name}",
                hint=f"give zone {name} a subnet in the global config: [{ZONES}.{name}] subnet",
            )
        automatic[name] = str(free)
        taken.append(free)
    return automatic


def subnet_of(zones: Mapping[str, Zone], automatic: Mapping[str, str], name: str) -> IPv4Network:
    configured = zone(zones, name).subnet
    return configured if configured is not None else IPv4Network(automatic[name])


def gateway(subnet: IPv4Network) -> IPv4Address:
    return subnet.network_address + 1


def hosts(subnet: IPv4Network) -> range:
    """The integer values of the addresses realms may get in ``subnet`` (gateway and broadcast
    excluded)."""
    return range(int(subnet.network_address) + 2, int(subnet.broadcast_address))


def address(value: int) -> IPv4Address:
    return ipaddress.IPv4Address(value)
