"""The main process of a realm's unit ``realm-NAME.service`` (see :mod:`realms.lifecycle.systemd`,
which starts it as ``python3 -m realms.lifecycle.systemd_unit STORE NAME``).

It takes the realm's run lock for the unit's lifetime, builds the realm's container as every
boot does (:func:`realms.realm.realm_container`, init as PID 1), prepares its network
(:func:`realms.network.prepare`: the address, nspawn's arguments) and its root filesystem in a
mount namespace of its own, and execs ``systemd-nspawn --register=yes --keep-unit``, which
thereby becomes the unit's main process. It is a module of its own, apart from
:mod:`realms.lifecycle.systemd`, because it needs the realm layer, which needs the state that
asks systemd.

The unit's two other commands are here as well (``python3 -m realms.lifecycle.systemd_unit
configure|release STORE NAME``): ``ExecStartPost=`` configures the realm's private network
once nspawn reported READY (:func:`realms.network.configure`; systemd runs it at every start
of the unit, a reboot from inside included, and ``systemd-run`` returns only after it), and
``ExecStopPost=`` releases it once the realm stopped, whoever stopped it (``realms stop``,
a poweroff inside, a failed start).
"""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from realms.errors import RealmsError
from realms.lifecycle.systemd import CGROUP_ROOT, LOCK_CGROUP, NSPAWN_OPTIONS
from realms.system.run import popen

if TYPE_CHECKING:
    from realms.store import Store

COMMANDS = ("configure", "release")
"""The unit's ExecStartPost= and ExecStopPost= (its network)."""


def main(argv: Sequence[str]) -> int:
    """The unit's main process: build realm ``NAME``'s booted container, prepare its network
    and root here, and exec nspawn (which becomes the main process that reports READY). With
    ``configure`` or ``release`` first: the unit's ``ExecStartPost=`` and ``ExecStopPost=``."""
    if len(argv) == 3 and argv[0] in COMMANDS:
        return _network_command(argv[0], Path(argv[1]), argv[2])
    if len(argv) != 2:
        print(
            "usage: python3 -m realms.lifecycle.systemd_unit [configure|release] STORE NAME",
            file=sys.stderr,
        )
        return 2
    from realms import network
    from realms.container import _userns_for, nspawn_argv, prepare_root
    from realms.lifecycle.order import require_init
    from realms.realm import realm_container, realm_settings
    from realms.store import Store

    name = argv[1]
    try:
        store = Store.open(Path(argv[0]))
        # No realm lock here: the `realms start` that started the unit holds it until READY.
        hold_run_lock(store.run_lock_path(name), name)
        container, view = realm_container(store, name, store.realm_dir(name), [], root=True)
        require_init(view, name)
        # As the supervisor does: the plan decides the network (use-network = false included),
        # nspawn's options are its own, not the one-shot container's switch. What it allocates
        # is released by the unit's ExecStopPost= even if the boot fails from here on.
        plan = network.prepare(store, name, realm_settings(store, name))
        container = container._replace(
            boot=True,
            private_network=False,
            # nspawn's options go before its directory and init's arguments (all after those
            # is init's: systemd.hostname=...), so these too are extra arguments.
            extra_args=[*container.extra_args, *plan.nspawn_args, *NSPAWN_OPTIONS],
        )
        nspawn = nspawn_argv(container, interactive=False, systemd_pid1=True)
        userns = _userns_for(container)
        prepare_root(container, userns)
    except RealmsError as error:
        print(f"realms: error: {error}", file=sys.stderr)
        return 1
    # nspawn inherits nothing it should not: the namespace's descriptor was only needed for
    # the idmapped mounts made above.
    if userns is not None:
        userns.close()
    # An exec, not a child: nspawn must be the unit's main process (the only one whose READY
    # systemd accepts, and the one KillMode=mixed sends SIGTERM). It is logged to the journal
    # as system.run logs what it runs.
    print("+ " + shlex.join(nspawn), file=sys.stderr, flush=True)
    os.execvp(nspawn[0], nspawn)  # noqa: S606


def _network_command(command: str, root: Path, name: str) -> int:
    from realms import network
    from realms.store import Store

    try:
        store = Store.open(root)
        if command == "configure":
            configure_network(store, name)
        else:
            network.release(store, name)
    except RealmsError as error:
        print(f"realms: error: {error}", file=sys.stderr)
        return 1
    return 0


def configure_network(store: Store, name: str) -> None:
    """After READY: set up realm ``name``'s private network as :func:`realms.network.configure`
    does for the supervisor; nothing when it has none. The unit's main process that made the
    plan is nspawn now, so the plan is made again from what prepare left: the veth nspawn made
    (there is one only when the plan said private) and the address kept in the realm's
    ``network.toml`` (:mod:`realms.network.ipam`). Preparing again is no way: it would delete
    the running realm's veth as a stale one."""
    from realms import network
    from realms.kinds import NetworkMode
    from realms.lifecycle.systemd import leader_pid
    from realms.network import bridge, ipam, zones

    interface = bridge.veth_name(store.root, name)
    if interface not in {found for _, found in socket.if_nameindex()}:
        return  # host or none: nspawn was given no veth
    record = ipam.read(store, name)
    if record is None:
        raise RealmsError(f"realm {name!r} has a veth {interface} but no address")
    with store.network_lock():
        automatic = ipam.automatic_subnets(store, [record.zone])
    subnet = zones.subnet_of(store.config.zones, automatic, record.zone)
    leader = leader_pid(name)
    if leader is None:
        raise RealmsError(f"realm {name!r} is not registered with systemd-machined")
    plan = network.NetworkPlan(
        store,
        name,
        NetworkMode.PRIVATE,
        (),
        zone=record.zone,
        address=record.address,
        prefix_length=subnet.prefixlen,
        gateway=str(zones.gateway(subnet)),
        host_interface=interface,
    )
    network.configure(plan, leader)


def hold_run_lock(path: Path, name: str) -> None:
    """Take the realm's run lock for as long as its unit runs, so that ``realms remove`` and
    one-shot runs see the realm as running (as the supervisor of
    :mod:`realms.lifecycle.supervisor` holds it).

    nspawn closes what it inherits (or passes it into the container), so the lock is held by
    a ``sleep`` of the unit's own instead, in a cgroup below the unit's (delegated: nspawn puts
    itself and the realm in two more), killed when nspawn exits (its parent dies) or with the
    rest of the unit (``KillMode=mixed``). nspawn never sees the descriptor.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RealmsError(f"realm {name!r} is running already (its run lock is held)") from None
        group = _own_cgroup() / LOCK_CGROUP
        group.mkdir(exist_ok=True)
        procs = os.fsencode(group / "cgroup.procs")

        def join() -> None:
            handle = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(handle, b"0")
            finally:
                os.close(handle)

        # The lock is the holder's stdin: sleep reads nothing, and popen passes no other fd.
        popen(
            ["sleep", "infinity"],
            stdin=fd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            die_with_parent=signal.SIGKILL,
            setup=join,
        )
    finally:
        os.close(fd)


def _own_cgroup() -> Path:
    """This process's cgroup (v2, the only hierarchy where systemd runs realms)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return CGROUP_ROOT / line[3:].lstrip("/")
    raise RealmsError("this process is in no cgroup v2 (is systemd's hierarchy unified?)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
