"""Links: the bridge ``realms-ZONE`` of each zone in use (the zone's gateway address on it),
the host side ``vb-...`` of each realm's veth attached to it, and the realm's side ``host0``
configured from inside its network namespace (address, default route). All through ``ip``.

Only links named ``realms-*`` (bridges) and ``vb-*`` are ever changed or deleted here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

from realms.network.zones import BRIDGE_PREFIX
from realms.system.run import run

VETH_PREFIX = "vb-"
INSIDE = "host0"
"""The realm's side of its veth (systemd-nspawn's name for it)."""
IFNAME_MAX = 15


def bridge_name(zone: str) -> str:
    return f"{BRIDGE_PREFIX}{zone}"


def veth_name(store_root: Path, realm: str) -> str:
    """The host side of realm ``realm``'s veth: ``vb-`` and the start of its name, then a hash
    of the store and the name (interface names have at most 15 bytes, so two long realm names,
    or two stores' realms of one name, would collide without it)."""
    digest = hashlib.sha256(f"{store_root}\0{realm}".encode()).hexdigest()[:5]
    room = IFNAME_MAX - len(VETH_PREFIX) - len(digest) - 1
    return f"{VETH_PREFIX}{realm[:room]}-{digest}"


@dataclass(frozen=True)
class Link:
    name: str
    kind: str
    master: str | None
    up: bool


def links() -> list[Link]:
    """The network interfaces of this network namespace."""
    found: list[dict[str, Any]] = json.loads(run(["ip", "-j", "-d", "link", "show"]).stdout or "[]")
    return [
        Link(
            str(entry.get("ifname", "")),
            str(entry.get("linkinfo", {}).get("info_kind", "")),
            entry.get("master"),
            "UP" in entry.get("flags", []),
        )
        for entry in found
    ]


def bridges(found: list[Link] | None = None) -> dict[str, list[str]]:
    """Realms' bridges (zone name -> names of the links attached to it)."""
    found = links() if found is None else found
    zones: dict[str, list[str]] = {
        link.name[len(BRIDGE_PREFIX) :]: []
        for link in found
        if link.kind == "bridge" and link.name.startswith(BRIDGE_PREFIX)
    }
    for link in found:
        if link.master and link.master.startswith(BRIDGE_PREFIX):
            zones.setdefault(link.master[len(BRIDGE_PREFIX) :], []).append(link.name)
    return zones


def _addresses(name: str) -> list[str]:
    shown: list[dict[str, Any]] = json.loads(
        run(["ip", "-j", "-4", "address", "show", "dev", name]).stdout or "[]"
    )
    return [
        f"{info['local']}/{info['prefixlen']}"
        for entry in shown
        for info in entry.get("addr_info", [])
        if info.get("family") == "inet"
    ]


def ensure(zone: str, gateway: IPv4Interface, found: list[Link]) -> None:
    """Zone ``zone``'s bridge exists, is up and has exactly the gateway address (the zone's
    subnet may have changed in the config since it was made). ``found``: :func:`links`."""
    name = bridge_name(zone)
    existing = next((link for link in found if link.name == name), None)
    commands = []
    if existing is None:
        commands.append(f"link add {name} type bridge")
        addresses: list[str] = []
    else:
        addresses = _addresses(name)
    if addresses != [str(gateway)]:
        if addresses:
            commands.append(f"address flush dev {name}")
        commands.append(f"address add {gateway} dev {name}")
    if existing is None or not existing.up:
        commands.append(f"link set {name} up")
    if commands:
        _batch(commands)


def attach(interface: str, zone: str) -> None:
    _batch([f"link set {interface} master {bridge_name(zone)}", f"link set {interface} up"])


def remove(zone: str) -> None:
    """Delete zone ``zone``'s bridge (its ports, if any, stay as they are, detached)."""
    delete(bridge_name(zone))


def delete(name: str) -> None:
    """Delete the link ``name``, made by realms (``realms-`` or ``vb-``); gone already is fine."""
    assert name.startswith((BRIDGE_PREFIX, VETH_PREFIX)), name
    result = run(["ip", "link", "delete", name], check=False)
    if result.returncode != 0 and "Cannot find device" not in result.stderr:
        run(["ip", "link", "delete", name])  # again, to raise the error with its message


def configure_inside(leader: int, address: IPv4Interface, gateway: IPv4Address) -> None:
    """The realm's side of its veth: up, its address, the default route via the gateway (run
    in the realm's network namespace only: the host's ``ip``, the realm's network)."""
    _batch(
        [
            "link set lo up",
            f"address replace {address} dev {INSIDE}",
            f"link set {INSIDE} up",
            f"route replace default via {gateway} dev {INSIDE}",
        ],
        prefix=["nsenter", f"--net=/proc/{leader}/ns/net", "--"],
    )


def _batch(commands: list[str], prefix: list[str] | None = None) -> None:
    """Run ``ip`` commands in one process (``ip -batch``: it stops at the first that fails)."""
    run([*(prefix or []), "ip", "-batch", "-"], input="".join(f"{line}\n" for line in commands))
