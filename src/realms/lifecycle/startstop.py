"""Starting and stopping ONE booted realm (the order of several is :mod:`realms.lifecycle.order`'s,
the commands are :mod:`realms.lifecycle.control`).

Both hold the realm's lock (``realm.NAME``) for their whole work, so that two starts, or a start
and a stop, of one realm take turns; the realm's supervisor holds its run lock for as long as the
realm runs (:mod:`realms.lifecycle.supervisor`), and ``realms remove`` refuses it meanwhile.

:func:`start_one` forks the supervisor and waits for its report: READY (a :class:`Started`), an
error (the realm is stopped, the error says why, with the end of its console log), or nothing
within the timeout (the realm is killed: it never was ready, nothing in it is worth a clean
shutdown). :func:`stop_one` sends SIGTERM to the supervisor (nspawn asks init to power off),
waits for the realm's cgroup to empty, kills what is left after the timeout (``cgroup.kill``),
and cleans up what a dead supervisor could not. Both begin by clearing what an earlier realm
left (a killed supervisor, a host reboot): a stale state file, orphaned processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import time
from typing import Any, NamedTuple

from realms.errors import NotFound, RealmsError
from realms.faults import checkpoint
from realms.kinds import RealmState
from realms.lifecycle import cgroups, state
from realms.names import check_existing_realm_name
from realms.store import Store


class Started(NamedTuple):
    name: str
    leader_pid: int
    """The realm's init, as the host sees it."""
    seconds: float
    """From the command's start to READY."""
    address: str | None = None
    """Its address in its zone (private network), else None."""
    already: bool = False
    """It was running already: nothing was done."""

    def message(self) -> str:
        if self.already:
            return f"Realm {self.name} is running already (init {self.leader_pid})"
        where = f", address {self.address}" if self.address else ""
        return f"Started realm {self.name} in {self.seconds:.1f}s (init {self.leader_pid}{where})"


START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
KILL_WAIT = 10.0
"""How long processes get to die after ``cgroup.kill`` (they cannot refuse, but may take a
moment to release their memory)."""
SUPERVISOR_WAIT = 30.0
"""How long a supervisor gets to clean up (network, state) after its realm stopped."""
LOG_TAIL = 12


def _require(store: Store, name: str) -> None:
    check_existing_realm_name(name)
    if not store.realm(name).origin.exists():
        raise NotFound(f"no realm named {name!r}", hint="'realms list' shows the realms")


def start_one(store: Store, name: str, timeout: float | None = None) -> Started:
    """Boot realm ``name`` and return once it is READY (or running already)."""
    began = time.monotonic()
    timeout = START_TIMEOUT if timeout is None else float(timeout)
    _require(store, name)
    with store.realm_lock(name):
        runtime = state.running(store, name)
        if runtime is not None and runtime.state == RealmState.STARTING and runtime.supervisor_pid:
            # Its `realms start` was killed before READY: the supervisor goes on; wait for it.
            runtime = _wait_started(store, name, began + timeout)
        if runtime is not None and runtime.state == RealmState.RUNNING:
            assert runtime.leader_pid is not None
            return Started(name, runtime.leader_pid, 0.0, runtime.address, already=True)
        if runtime is not None:
            _halt(store, name, runtime, STOP_TIMEOUT)
        _forget(store, name)
        from realms.lifecycle.systemd import is_pid1

        if is_pid1():
            # SYSTEMD: where systemd is PID 1 the realm is a transient unit (realm-NAME.service)
            # instead of a supervisor of ours (realms.lifecycle.systemd).
            return _start_with_systemd(store, name, timeout, began)
        return _launch_and_wait(store, name, timeout, began)


def _start_with_systemd(store: Store, name: str, timeout: float, began: float) -> Started:
    from realms.lifecycle import systemd

    left = max(1.0, began + timeout - time.monotonic())
    found = systemd.start(store.root, name, timeout=left)
    if found.leader_pid is None:
        raise RealmsError(f"realm {name!r} is not registered with systemd-machined")
    from realms.network import address_of

    return Started(name, found.leader_pid, time.monotonic() - began, address_of(store, name))


def _launch_and_wait(store: Store, name: str, timeout: float, began: float) -> Started:
    from realms.lifecycle import detach, supervisor

    pid, report = detach.launch(
        store, name, lambda report: supervisor.supervise(store, name, report)
    )
    checkpoint("realm-start:launched")
    try:
        message = _read_report(report, began + timeout)
    except BaseException:
        # Interrupted (SIGTERM, Ctrl-C): nothing of a half-started realm stays.
        _halt_started(store, name, 0)
        raise
    finally:
        os.close(report)
    if message is not None and "ready" in message:
        return Started(
            name, int(message["ready"]), time.monotonic() - began, message.get("address")
        )
    if message is None:
        reason = (
            f"realm {name!r} did not report READY within {timeout:g}s; it was stopped"
            if _alive(pid)
            else f"the supervisor of realm {name!r} died before the realm was ready"
        )
        _halt_started(store, name, 0)
        raise RealmsError(reason, hint=_log_hint(store, name), details=log_tail(store, name))
    # The supervisor stops the realm itself when it reports an error; wait for it to be done.
    _wait_exit(pid, SUPERVISOR_WAIT)
    _halt_started(store, name, 0)
    error = str(message.get("error") or "unknown error")
    hint = message.get("hint")
    details = log_tail(store, name) if "stopped before it was ready" in error else []
    raise RealmsError(error, hint=str(hint) if hint else _log_hint(store, name), details=details)


def _read_report(fd: int, deadline: float) -> dict[str, Any] | None:
    """The supervisor's one line; None on timeout or when it closed the pipe without one."""
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
    try:
        found = json.loads(data)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _wait_started(store: Store, name: str, deadline: float) -> state.RealmRuntime | None:
    while True:
        runtime = state.running(store, name)
        if runtime is None or runtime.state != RealmState.STARTING:
            return runtime
        if time.monotonic() > deadline:
            raise RealmsError(
                f"realm {name!r} is still starting (its start was interrupted)",
                hint=f"wait, or stop it: realms stop {name}",
                details=log_tail(store, name),
            )
        time.sleep(0.05)


def stop_one(store: Store, name: str, timeout: float | None = None) -> bool:
    """Stop realm ``name``: init powers off, everything is killed after ``timeout`` seconds;
    False if it was not running (what an earlier run left is cleaned up all the same)."""
    timeout = STOP_TIMEOUT if timeout is None else float(timeout)
    _require(store, name)
    with store.realm_lock(name):
        runtime = state.running(store, name)
        if runtime is None:
            _forget(store, name)
            return False
        _halt(store, name, runtime, timeout)
        return True


def _halt_started(store: Store, name: str, timeout: float) -> None:
    runtime = state.running(store, name)
    if runtime is not None:
        _halt(store, name, runtime, timeout)
    else:
        _forget(store, name)


def _halt(store: Store, name: str, runtime: state.RealmRuntime, timeout: float) -> None:
    """Stop a realm that is not stopped, whatever is left of it; the caller holds its lock."""
    from realms.lifecycle import systemd

    if runtime.record is None and systemd.is_pid1():
        # SYSTEMD: the realm is its unit (state.running asked systemd): systemd stops it.
        systemd.stop(name, timeout=timeout)
        _forget(store, name)
        return
    if runtime.supervisor_pid is not None:
        _signal(runtime.supervisor_pid, signal.SIGTERM)  # passed on to nspawn
    elif runtime.nspawn_pid is not None:
        _signal(runtime.nspawn_pid, signal.SIGTERM)
    elif runtime.leader_pid is not None:
        _signal(runtime.leader_pid, state.POWEROFF)
    else:
        timeout = 0  # nobody to ask: what is in its cgroup is what a killed start left
    if not cgroups.wait_empty(runtime.cgroup, timeout):
        cgroups.kill(runtime.cgroup)
        if not cgroups.wait_empty(runtime.cgroup, KILL_WAIT):
            raise RealmsError(
                f"realm {name!r} did not stop: processes are left in {runtime.cgroup}",
                hint=f"see them in {runtime.cgroup}/cgroup.procs",
            )
    if runtime.supervisor_pid is not None and not _wait_exit(
        runtime.supervisor_pid, SUPERVISOR_WAIT
    ):
        _signal(runtime.supervisor_pid, signal.SIGKILL)
        _wait_exit(runtime.supervisor_pid, KILL_WAIT)
    _forget(store, name)


def _forget(store: Store, name: str) -> None:
    """Clean up after a realm whose supervisor is gone (it did so itself if it could)."""
    if store.is_running(name):
        return  # a supervisor (or a one-shot run) holds the realm: not ours to clean
    if store.runtime_state_path(name).exists():
        _release_network(store, name)
    state.forget(store, name)


def _release_network(store: Store, name: str) -> None:
    from realms import network

    network.release(store, name)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    return state.start_time(pid) is not None


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` (not a child of ours) is gone; whether it is."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    deadline = time.monotonic() + 0.5
    # A zombie (its parent has not reaped it yet) counts as gone.
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _alive(pid)


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def log_tail(store: Store, name: str, count: int = LOG_TAIL) -> list[str]:
    """The last lines of the realm's console log, without terminal escapes."""
    path = store.console_log_path(name)
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 16384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    lines = [_ESCAPES.sub("", line).rstrip() for line in text.splitlines()]
    return [line for line in lines if line.strip()][-count:]


def _log_hint(store: Store, name: str) -> str:
    return f"its console log: {store.console_log_path(name)}"
