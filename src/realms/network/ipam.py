"""Addresses: each realm with a private network has one address of its zone's subnet, kept in
its own directory (``realms/NAME/network.toml``), so that it stays the realm's across restarts
and goes with the realm when it is removed. The same file says, while the realm runs, which
veth and init it has (``leader``, with the init's start time and the boot, so that a record a
killed command left behind is seen to be stale: the pid alone may be reused).

Giving out an address reads every realm's record (the used ones) and the automatic subnets
kept in ``network/zones.toml``, so it runs under the store's network lock
(:meth:`realms.store.layout.Layout.network_lock`); reading one realm's address needs no lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, NamedTuple

from realms import config
from realms.errors import InvalidInput, RealmsError
from realms.network import zones
from realms.store import Store
from realms.store.core import write_toml

ZONES_FILE = "zones.toml"


class Record(NamedTuple):
    """A realm's ``network.toml``."""

    zone: str
    address: str
    interface: str = ""
    """The host side of its veth, while it runs."""
    leader: int = 0
    """Its init's pid while it runs (0: not running)."""
    started: int = 0
    """The init's start time (clock ticks after boot, /proc/PID/stat field 22)."""
    boot: str = ""
    """The boot id of the boot it runs in."""

    def running(self) -> bool:
        """Whether the init this record names still runs (in this boot: a pid is reused)."""
        return (
            bool(self.leader) and self.boot == boot_id() and start_time(self.leader) == self.started
        )

    def stopped(self) -> Record:
        return self._replace(interface="", leader=0, started=0, boot="")


class Assignment(NamedTuple):
    """Where a realm is in its zone."""

    zone: str
    subnet: IPv4Network
    address: IPv4Address

    @property
    def gateway(self) -> IPv4Address:
        return zones.gateway(self.subnet)


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count after the last ")".
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 else None


def read(store: Store, name: str) -> Record | None:
    """Realm ``name``'s record, None when it has none (or a damaged one: it is given anew)."""
    path = store.realm(name).network
    try:
        data = config.read_toml(path)
        fields: dict[str, Any] = {key: data[key] for key in Record._fields if key in data}
        record = Record(**fields)
        zones.check_zone_name(record.zone)
        IPv4Address(record.address)
    except (InvalidInput, TypeError, KeyError, ValueError):
        return None
    return record


def write(store: Store, name: str, record: Record) -> None:
    write_toml(store.realm(name).network, record._asdict())


def forget(store: Store, name: str) -> None:
    """Drop realm ``name``'s address (it is no longer on a private network)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(store.realm(name).network)


def records(store: Store) -> Iterator[tuple[str, Record]]:
    """Every realm's record (realms being made or removed have temporary names: skipped)."""
    for name in store.realm_names():
        record = read(store, name)
        if record is not None:
            yield name, record


def running(store: Store, zone: str | None = None) -> list[tuple[str, Record]]:
    """The realms whose record says they run now (in ``zone``, or in any)."""
    return [
        (name, record)
        for name, record in records(store)
        if (zone is None or record.zone == zone) and record.running()
    ]


def automatic_subnets(store: Store, wanted: list[str]) -> dict[str, str]:
    """The subnets of zones without a configured one, those of ``wanted`` given now if they
    have none yet (and kept in the store). Call under the network lock."""
    path = store.network_dir / ZONES_FILE
    kept = {key: value for key, value in config.read_toml(path).items() if isinstance(value, str)}
    automatic = zones.subnets(store.config.zones, kept, wanted)
    if automatic != kept:
        store.network_dir.mkdir(mode=0o755, exist_ok=True)
        write_toml(path, automatic)
    return automatic


def assign(store: Store, name: str, zone: str) -> Assignment:
    """Realm ``name``'s address in ``zone``: the one it has if it is still of the zone's
    subnet and no other realm's, else the lowest free one (written to its record). Call under
    the network lock."""
    subnet = zones.subnet_of(store.config.zones, automatic_subnets(store, [zone]), zone)
    own = read(store, name)
    used = {
        int(IPv4Address(record.address))
        for other, record in records(store)
        if other != name and IPv4Address(record.address) in subnet
    }
    if own is not None and own.zone == zone:
        mine = int(IPv4Address(own.address))
        if mine in zones.hosts(subnet) and mine not in used:
            return Assignment(zone, subnet, IPv4Address(mine))
    free = next((value for value in zones.hosts(subnet) if value not in used), None)
    if free is None:
        raise RealmsError(
            f"zone {zone} has no free address left in {subnet} for realm {name}",
            hint=f"give zone {zone} a larger subnet in the global config ([zones.{zone}] subnet)",
        )
    write(store, name, Record(zone, str(IPv4Address(free))))
    return Assignment(zone, subnet, IPv4Address(free))
