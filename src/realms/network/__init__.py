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

from ipaddress import IPv4Address, IPv4Interface
from typing import TYPE_CHECKING, Any, NamedTuple

from realms import log
from realms.errors import RealmsError
from realms.kinds import NetworkMode

if TYPE_CHECKING:
    from realms.store import Store

# The submodules are imported where they are used: realms.config imports realms.network.zones,
# and this package must not import the store (which imports the config) when it loads.


class NetworkPlan(NamedTuple):
    """What :func:`prepare` decided for one start of a realm."""

    store: Store
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


def mode_of(settings: dict[str, Any]) -> NetworkMode:
    """A realm's network from its settings (``use-network = false`` is ``none``)."""
    if not settings["use-network"]:
        return NetworkMode.NONE
    return NetworkMode(settings["network"])


def prepare(store: Store, name: str, settings: dict[str, Any]) -> NetworkPlan:
    """Before nspawn starts realm ``name`` (``settings``: its parsed realm config): make sure
    its zone's bridge and rules exist, allocate (or find) its address, and say what nspawn
    needs. Errors (a bad zone config, a full subnet, nft missing) come here, before the boot."""
    from realms.network import ipam

    mode = mode_of(settings)
    if mode != NetworkMode.PRIVATE:
        if ipam.read(store, name) is not None:
            with store.network_lock():
                ipam.forget(store, name)
                _sync(store)
        args = ("--private-network",) if mode == NetworkMode.NONE else ()
        return NetworkPlan(store, name, mode, args)
    from realms.network import bridge

    zone = str(settings["network-zone"])
    interface = bridge.veth_name(store.root, name)
    with store.network_lock():
        assignment = ipam.assign(store, name, zone)
        if interface in _interfaces():
            # Left by a run of this realm whose network namespace something still holds; the
            # realm is not running (its supervisor starts it), so the link is stale.
            bridge.delete(interface)
        _sync(store, starting=zone)
    return NetworkPlan(
        store,
        name,
        mode,
        (f"--network-veth-extra={interface}:{bridge.INSIDE}", "--resolv-conf=off"),
        zone=zone,
        address=str(assignment.address),
        prefix_length=assignment.subnet.prefixlen,
        gateway=str(assignment.gateway),
        host_interface=interface,
    )


def configure(plan: NetworkPlan, leader_pid: int) -> None:
    """After the realm (init ``leader_pid``, as the host sees it) reported READY: attach its
    veth to the zone's bridge, give it its address and default route, write its resolv.conf
    and the /etc/hosts entries of the zone's running realms (in each of them). Nothing for
    host and none networks."""
    if plan.mode != NetworkMode.PRIVATE:
        return
    from realms.network import bridge, hosts, ipam

    assert plan.zone and plan.address and plan.gateway and plan.host_interface
    store, name = plan.store, plan.realm
    started = ipam.start_time(leader_pid)
    if started is None:
        raise RealmsError(f"realm {name} stopped before its network was set up")
    with store.network_lock():
        if bridge.bridge_name(plan.zone) not in _interfaces():
            # A command that found no running realm of the zone removed it since prepare (it
            # removes the zone's rules with it, and makes both only together).
            _sync(store, starting=plan.zone)
        bridge.attach(plan.host_interface, plan.zone)
        bridge.configure_inside(
            leader_pid,
            IPv4Interface(f"{plan.address}/{plan.prefix_length}"),
            IPv4Address(plan.gateway),
        )
        record = ipam.Record(
            plan.zone, plan.address, plan.host_interface, leader_pid, started, ipam.boot_id()
        )
        ipam.write(store, name, record)
        resolv = hosts.upstream_resolv()
        _write(name, leader_pid, "/etc/resolv.conf", lambda _old: resolv)
        _update_hosts(store, plan.zone)


def release(store: Store, name: str) -> None:
    """After realm ``name`` stopped (its veth went with its network namespace): drop it from
    the other running realms' /etc/hosts; remove its zone's bridge and rules when no realm of
    the zone runs any more. Harmless when the realm had no private network or ran nowhere."""
    from realms.network import bridge, ipam, zones

    record = ipam.read(store, name)
    if record is None and not any(n.startswith(zones.BRIDGE_PREFIX) for n in _interfaces()):
        return  # no private network here: nothing to undo (and no tool needed)
    with store.network_lock():
        record = ipam.read(store, name)
        if record is not None:
            if record.interface:
                ipam.write(store, name, record.stopped())
            interface = bridge.veth_name(store.root, name)
            if interface in _interfaces():
                bridge.delete(interface)  # something still holds its network namespace
            _update_hosts(store, record.zone)
        _sync(store)


def address_of(store: Store, name: str) -> str | None:
    """Realm ``name``'s address in its zone (kept across restarts), or None (no private
    network, or never started with one). Reads one small file; takes no lock."""
    from realms.network import ipam

    record = ipam.read(store, name)
    return record.address if record else None


def reconcile(store: Store) -> None:
    """Remove the bridges and rules of zones with no running realm (what a killed command
    left), and restore ip_forward when no zone is left."""
    with store.network_lock():
        _sync(store)


def _interfaces() -> set[str]:
    """The network interfaces of this process's network namespace (not /sys's: a namespace
    entered without mounting its own sysfs shows another's there)."""
    import socket

    return {interface for _, interface in socket.if_nameindex()}


def _sync(store: Store, starting: str | None = None) -> None:
    """Under the network lock: the bridges and the table as the zones in use need them. A
    zone is in use when one of its realms runs (its record says so, and its init lives), when
    its bridge has a port (a realm of another command, or of another store), or when a realm
    of it is ``starting``; bridges of other zones are removed, and the table with the last."""
    from realms.network import bridge, ipam, nft, zones

    links = bridge.links()
    found = bridge.bridges(links)
    live = {record.zone for _, record in ipam.running(store)}
    ported = {zone for zone, ports in found.items() if ports}
    mine = live | ({starting} if starting else set())
    in_use = mine | ported
    for zone in sorted(set(found) - in_use):
        bridge.remove(zone)
    if not in_use:
        import shutil

        if shutil.which("nft"):
            nft.unload()
        return
    automatic = ipam.automatic_subnets(store, sorted(in_use))
    configured = store.config.zones
    rules = []
    for zone in sorted(in_use):
        subnet = zones.subnet_of(configured, automatic, zone)
        if zone in mine:
            gateway = IPv4Interface(f"{zones.gateway(subnet)}/{subnet.prefixlen}")
            bridge.ensure(zone, gateway, links)
        rules.append(nft.ZoneRules(zone, subnet, zones.zone(configured, zone).allow))
    nft.load(rules)


def _update_hosts(store: Store, zone: str) -> None:
    """Each running realm of ``zone``: its /etc/hosts names them all."""
    from realms.network import hosts, ipam

    members = ipam.running(store, zone)
    entries = [(name, record.address) for name, record in members]
    for name, record in members:
        _write(name, record.leader, "/etc/hosts", lambda old: hosts.with_zone(old, entries))


def _write(realm: str, leader: int, path: str, edit: Any) -> None:
    """Edit a file in a running realm; a realm whose root is read-only (an image without an
    overlay) or that just stopped is told about, not failed."""
    from realms.network import hosts

    try:
        hosts.edit_in_realm(leader, path, edit)
    except (RealmsError, OSError) as error:
        log.warn(f"realm {realm}: {error}")
