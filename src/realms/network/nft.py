"""The nftables table ``inet realms``, which realms owns entirely: made from the zones in use
by :func:`ruleset` and loaded with ``nft -f`` in one transaction (the old table and the new one
are swapped atomically: no moment without rules), deleted when no zone is in use.

What it says:

- a zone's realms reach each other, and the outside (masqueraded behind the host's address);
- zone A's realms open connections to zone B's only if A's ``allow`` names B (answers come
  back: established connections pass); any other packet from one zone to another is refused at
  once (an ICMP "administratively prohibited", so a realm is not left waiting for a timeout);
- nothing from outside opens a connection into a zone; a realm sending with an address not of
  its zone's subnet is dropped (it cannot pass for another zone's realm).

Forwarding (``net.ipv4.ip_forward``) must be on while a zone is in use. Its value before
realms turned it on is kept in the table's comment: the table lives exactly as long as realms
needs forwarding, in the same network namespace, so the value to restore is always found with
it, also after a killed command.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from realms.errors import RealmsError
from realms.network.zones import BRIDGE_PREFIX
from realms.system.run import run

TABLE = "realms"
FORWARD_SYSCTL = Path("/proc/sys/net/ipv4/ip_forward")
_NOTE = re.compile(r"ip_forward was ([01])")


@dataclass(frozen=True)
class ZoneRules:
    """A zone in use, as the rules need it."""

    name: str
    subnet: IPv4Network
    allow: tuple[str, ...] = ()


def ruleset(zones: Sequence[ZoneRules], forward_was: str) -> str:
    """The ``nft -f`` input that replaces the table with the rules of ``zones`` (in one
    transaction: the empty ``table`` line makes the ``delete`` valid when there is none)."""
    in_use = {zone.name for zone in zones}
    every = f'"{BRIDGE_PREFIX}*"'
    forward = ["ct state established,related accept"]
    for zone in zones:
        bridge = f'"{BRIDGE_PREFIX}{zone.name}"'
        forward.append(f"iifname {bridge} ip saddr != {zone.subnet} drop")
        forward.append(f"iifname {bridge} oifname {bridge} accept")
        forward += [
            f'iifname {bridge} oifname "{BRIDGE_PREFIX}{target}" accept'
            for target in zone.allow
            if target in in_use and target != zone.name
        ]
    forward += [
        f"iifname {every} oifname {every} reject with icmpx type admin-prohibited",
        f"oifname {every} drop",
        f"iifname {every} accept",
    ]
    postrouting = [f"ip saddr {zone.subnet} oifname != {every} masquerade" for zone in zones]
    lines = [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        f'\tcomment "made by realms for the private networks of its zones; '
        f'ip_forward was {forward_was}"',
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        *(f"\t\t{rule}" for rule in forward),
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        *(f"\t\t{rule}" for rule in postrouting),
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def forward_was() -> str | None:
    """The ip_forward value the table's comment keeps, None when there is no table (or no
    comment in it: then realms did not make it, and nothing is restored)."""
    result = run(["nft", "list", "table", "inet", TABLE], check=False)
    if result.returncode != 0:
        if "No such file or directory" in result.stderr:
            return None
        raise RealmsError(f"nft cannot list table inet {TABLE}: {result.stderr.strip()}")
    # nft's JSON leaves the table's comment out (1.0.6): its text has it on the second line.
    lines = result.stdout.splitlines()
    found = _NOTE.search(lines[1]) if len(lines) > 1 and "comment" in lines[1] else None
    return found.group(1) if found else "1"


def ip_forward() -> str:
    return FORWARD_SYSCTL.read_text().strip()


def set_ip_forward(value: str) -> None:
    if ip_forward() != value:
        FORWARD_SYSCTL.write_text(value + "\n")


def load(zones: Sequence[ZoneRules]) -> None:
    """Make the table say what ``zones`` need, and turn forwarding on (table first: its comment
    keeps what forwarding was before, for :func:`unload`)."""
    before = forward_was()
    if before is None:
        before = ip_forward()
    run(["nft", "-f", "-"], input=ruleset(zones, before))
    set_ip_forward("1")


def unload() -> None:
    """No zone in use: forwarding back to what it was, then the table goes."""
    before = forward_was()
    if before is None:
        return
    set_ip_forward(before)
    run(["nft", "-f", "-"], input=f"table inet {TABLE}\ndelete table inet {TABLE}\n")
