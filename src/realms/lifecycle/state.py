"""The runtime state of a booted realm, and the truth about it.

Its supervisor (:mod:`realms.lifecycle.supervisor`) writes ``/run/realms/KEY/NAME.json``
(atomically, the only writer while it lives): the state (starting, running, stopping), the
supervisor's, nspawn's and the realm init's pids, each with its start time (field 22 of
``/proc/PID/stat``, so that a reused pid is never taken for the one recorded), the boot id,
when it started, its cgroup and address.

The file is never believed on its own: :func:`running` checks it against the machine every
time. After a host reboot (another boot id: /run may not be a tmpfs) or once the supervisor is
gone and the realm's cgroup is empty, the realm is stopped, whatever the file says; the file is
removed by the next command that holds the realm's lock (:func:`forget`). A realm whose
supervisor died while processes remain in its cgroup is ``stopping``: nspawn got SIGTERM when
its supervisor died, and the next start or stop kills what is left.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, NamedTuple

from realms.kinds import RealmState
from realms.lifecycle import cgroups
from realms.store import Store
from realms.system.fs import temporary_name

FORMAT = 1

POWEROFF = signal.SIGRTMIN + 4
"""systemd's signal for "power off" (SIGTERM to systemd as PID 1 means re-execute)."""


class Process(NamedTuple):
    pid: int
    start: int
    """Start time in clock ticks after boot (/proc/PID/stat field 22)."""

    @classmethod
    def of(cls, pid: int) -> Process | None:
        start = start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        return start_time(self.pid) == self.start


class Record(NamedTuple):
    """What the supervisor writes."""

    name: str
    state: RealmState
    boot_id: str
    supervisor: Process
    started: str
    """ISO time of the start (the first boot of this start, not of a reboot from inside)."""
    cgroup: str
    """Relative to the cgroup2 root (:meth:`realms.store.Layout.cgroup_name`)."""
    nspawn: Process | None = None
    leader: Process | None = None
    address: str | None = None
    boots: int = 1
    """How often init was started by this supervisor (a reboot from inside adds one)."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": FORMAT, **self._asdict()}
        for key in ("supervisor", "nspawn", "leader"):
            if data[key] is not None:
                data[key] = data[key]._asdict()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        def process(value: Any) -> Process | None:
            return None if value is None else Process(int(value["pid"]), int(value["start"]))

        supervisor = process(data["supervisor"])
        assert supervisor is not None
        return cls(
            name=str(data["name"]),
            state=RealmState(data["state"]),
            boot_id=str(data["boot_id"]),
            supervisor=supervisor,
            started=str(data["started"]),
            cgroup=str(data["cgroup"]),
            nspawn=process(data.get("nspawn")),
            leader=process(data.get("leader")),
            address=data.get("address"),
            boots=int(data.get("boots", 1)),
        )

    def but(self, **changes: Any) -> Record:
        return self._replace(**changes)


class RealmRuntime(NamedTuple):
    """A realm that is not stopped, as it is now (see :func:`running`)."""

    name: str
    state: RealmState
    leader_pid: int | None
    """The realm's init as the host sees it (None before READY, or once it is gone)."""
    supervisor_pid: int | None
    """None when the supervisor is gone (an orphaned realm, being stopped)."""
    nspawn_pid: int | None
    started: str
    cgroup: Path
    """The realm's cgroup directory: every process of the realm is in it or below."""
    address: str | None
    record: Record | None
    """What the supervisor wrote (None: nothing readable, yet processes in its cgroup)."""


def start_time(pid: int) -> int | None:
    """A live process's start time, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rfind(b")") + 2 :].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
        return handle.read().strip()


def read(store: Store, name: str) -> Record | None:
    """The recorded state as it is, unchecked; None if there is none or it cannot be read."""
    try:
        data = json.loads(store.runtime_state_path(name).read_bytes())
        return Record.from_json(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        # A damaged file (a host crash mid-write cannot make one, but a person can): the
        # realm's cgroup still tells whether it runs, and forget() removes the file.
        return None


def write(store: Store, record: Record) -> None:
    """Replace the record atomically (readers see the old or the new one). Not synced to disk:
    after a crash of the host the record is worthless anyway (another boot id), and a start
    writes it four times."""
    store.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = store.runtime_state_path(record.name)
    temporary = temporary_name(path)
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(record.to_json(), handle)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def running(store: Store, name: str) -> RealmRuntime | None:
    """Realm ``name`` as it is now, checked against the machine; None when it is stopped."""
    from realms.lifecycle import systemd

    if systemd.is_pid1():
        # The realm is its unit (realm-NAME.service): systemd is its supervisor, and knows.
        unit = systemd.unit_of(store.root, name)
        if unit is None:
            return None
        from realms.network import address_of

        cgroup = unit.cgroup or cgroups.path(store.cgroup_name(name))
        address = address_of(store, name)
        return RealmRuntime(
            name,
            unit.state,
            unit.leader_pid,
            None,
            unit.main_pid,
            unit.started,
            cgroup,
            address,
            None,
        )
    if cgroups.find_unified_root() is None:
        return None  # no cgroup2 here: no realm was booted by a supervisor of ours
    record = read(store, name)
    cgroup = cgroups.path(store.cgroup_name(name))
    if record is None or record.boot_id != boot_id():
        # Nothing recorded (or from another boot) but processes in its cgroup: a supervisor
        # killed before it wrote anything, or a damaged file; they are stopped by the next
        # start or stop.
        if cgroups.populated(cgroup):
            return RealmRuntime(name, RealmState.STOPPING, None, None, None, "", cgroup, None, None)
        return None
    supervisor_alive = record.supervisor.alive()
    has_processes = cgroups.populated(cgroup)
    if not supervisor_alive and not has_processes:
        return None
    state = record.state
    leader = record.leader if record.leader is not None and record.leader.alive() else None
    nspawn = record.nspawn if record.nspawn is not None and record.nspawn.alive() else None
    if not supervisor_alive or (state == RealmState.RUNNING and leader is None):
        state = RealmState.STOPPING
    return RealmRuntime(
        name=name,
        state=state,
        leader_pid=leader.pid if leader else None,
        supervisor_pid=record.supervisor.pid if supervisor_alive else None,
        nspawn_pid=nspawn.pid if nspawn else None,
        started=record.started,
        cgroup=cgroup,
        address=record.address,
        record=record,
    )


def forget(store: Store, name: str) -> None:
    """Remove what a stopped realm left under /run/realms and its empty cgroup; the caller
    holds the realm's lock and checked that it is stopped (:func:`running` is None)."""
    path = store.runtime_state_path(name)
    for file in runtime_files(store, name):
        file.unlink(missing_ok=True)
    # What a writer killed between its temporary file and the rename left.
    for leftover in path.parent.glob(f"{temporary_name(path).name.rsplit('.', 1)[0]}.*"):
        leftover.unlink(missing_ok=True)
    cgroups.remove(store.cgroup_name(name))


def runtime_files(store: Store, name: str) -> list[Path]:
    """The files a started realm has under /run/realms, removed once it stopped."""
    return [store.runtime_state_path(name), store.notify_socket_path(name)]


def uptime_seconds(runtime: RealmRuntime) -> float | None:
    """Seconds since the realm's init started, from its start time in clock ticks."""
    leader = runtime.record.leader if runtime.record else None
    if leader is None or runtime.leader_pid is None:
        return None
    try:
        with open("/proc/uptime", encoding="ascii") as handle:
            now = float(handle.read().split()[0])
    except OSError:
        return None
    return max(0.0, now - leader.start / os.sysconf("SC_CLK_TCK"))


def runtime_fields(store: Store, name: str) -> dict[str, Any] | None:
    """What ``realms list`` and ``show`` say of a booted realm that is not stopped (the fields
    of :class:`realms.realm.RealmInfo`); None when it is stopped."""
    runtime = running(store, name)
    if runtime is None:
        return None
    return {
        "state": runtime.state,
        "leader_pid": runtime.leader_pid,
        "address": runtime.address,
        "started": runtime.started or None,
        "uptime": uptime_seconds(runtime),
    }
