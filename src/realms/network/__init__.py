"""Realms' networks: ``host`` (the host's), ``none`` (loopback only) and ``private`` (a veth
into its zone's bridge ``realms-ZONE``, an address of the zone's subnet kept with the realm,
the zone's gateway as default route, DNS from the host, masquerade to the outside and no
traffic between zones unless the zone config allows it).

The supervisor (:mod:`realms.lifecycle`) calls, for a booted realm:

1. :func:`prepare` before systemd-nspawn starts: the address, and nspawn's extra arguments;
2. :func:`configure` once the realm reports READY: the veth into the bridge, the address,
   route, resolv.conf and /etc/hosts of the zone's running realms;
3. :func:`release` once the realm stopped: the other realms' /etc/hosts, and the zone's bridge
   and rules go when no realm of it runs any more.

Only objects realms made are touched: bridges ``realms-ZONE``, veths ``vb-...``, the nftables
table ``inet realms``. What a killed command leaves behind, :func:`reconcile` (run by prepare
and release) removes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realms.kinds import NetworkMode
from realms.store import Store


@dataclass(frozen=True)
class NetworkPlan:
    """What :func:`prepare` decided for one start of a realm."""

    store: Store = field(repr=False)
    realm: str
    mode: NetworkMode
    nspawn_args: tuple[str, ...]
    """Extra systemd-nspawn arguments (none for ``host``, ``--private-network`` for ``none``)."""
    zone: str | None = None
    """The realm's zone (private network only)."""
    address: str | None = None
    """The realm's IPv4 address in its zone, e.g. ``10.89.0.2`` (private network only)."""
    prefix_length: int | None = None
    gateway: str | None = None
    """The zone bridge's address: the realm's default route."""
    host_interface: str | None = None
    """The host side of the realm's veth (``vb-...``), attached to the bridge by configure."""


def prepare(store: Store, name: str, settings: dict[str, Any]) -> NetworkPlan:
    """Before nspawn starts realm ``name`` (``settings``: its parsed realm config): make sure
    its zone's bridge and rules exist, allocate (or find) its address, and say what nspawn
    needs. Errors (a bad zone config, a full subnet, nft missing) come here, before the boot."""
    raise NotImplementedError


def configure(plan: NetworkPlan, leader_pid: int) -> None:
    """After the realm (init ``leader_pid``, as the host sees it) reported READY: attach its
    veth to the zone's bridge, give it its address and default route, write its resolv.conf
    and the /etc/hosts entries of the zone's running realms (in each of them). Nothing for
    host and none networks."""
    raise NotImplementedError


def release(store: Store, name: str) -> None:
    """After realm ``name`` stopped (its veth went with its network namespace): drop it from
    the other running realms' /etc/hosts; remove its zone's bridge and rules when no realm of
    the zone runs any more. Harmless when the realm had no private network or ran nowhere."""
    raise NotImplementedError


def address_of(store: Store, name: str) -> str | None:
    """Realm ``name``'s address in its zone (kept across restarts), or None (no private
    network, or never started with one). Reads one small file; takes no lock."""
    raise NotImplementedError


def reconcile(store: Store) -> None:
    """Remove the bridges and rules of zones with no running realm (what a killed command
    left), and restore ip_forward when no zone is left."""
    raise NotImplementedError
