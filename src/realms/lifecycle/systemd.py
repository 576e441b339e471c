"""Booted realms where systemd is PID 1: each started realm is a transient service
``realm-NAME.service``, registered with systemd-machined.

There is nothing of realms' own to supervise here: systemd is the supervisor. ``realms start``
runs ``systemd-run --unit=realm-NAME`` (a transient unit rather than a template unit that realms
would have to install: the unit's properties come from the realm as it is at each start, and
nothing stays on the host after it stops, ``--collect``). The unit is what
``systemd-nspawn@.service`` is: ``Type=notify`` (nspawn ``--notify-ready=yes`` passes on init's
READY, so ``systemd-run`` returns once the realm is up, or fails after ``TimeoutStartSec``),
``KillMode=mixed`` (SIGTERM to nspawn, which asks init to power off, then SIGKILL to what is
left), ``Delegate=yes`` (the realm's systemd manages its own cgroups), ``machine.slice``, exit
status 133 (a reboot from inside) restarts it. So ``systemctl status realm-NAME``, ``journalctl
-u realm-NAME`` (the realm's console), ``machinectl list`` and resource limits (``properties``)
work as for any machine.

The unit's main process is :mod:`realms.lifecycle.systemd_unit` (``python3 -m
realms.lifecycle.systemd_unit STORE NAME``):
it builds the realm's container as every boot does (:func:`realms.realm.realm_container`),
prepares its root filesystem in a mount namespace of its own and *execs* nspawn, which thereby
becomes the unit's main process (READY is only accepted from it). nspawn runs with
``--register=yes --keep-unit``: the machine registered with machined is this unit itself, not a
scope of its own beside it, so the unit's cgroup holds the whole realm and its limits apply to
it (systemd-nspawn(1)). The realm's run lock is held in the unit as well, for as long as it
runs (:func:`realms.lifecycle.systemd_unit.hold_run_lock`), so that ``realms remove`` refuses a
running realm on this path too.

The realm's network (:mod:`realms.network`) is the unit's as well: its main process prepares it
(the address, nspawn's arguments), ``ExecStartPost=`` configures it after READY (at every start
of the unit, so also after a reboot from inside, and before ``systemd-run`` returns) and
``ExecStopPost=`` releases it however the realm stopped; :func:`stop` releases it once more
(harmless) in case that one was killed, and what is still left the next prepare reconciles.

State is systemd's (:func:`unit_state`, from ``systemctl show``; the init's pid from
machined): nothing is written under /run/realms on this path, and a host reboot or a killed
``realms`` command cannot leave a realm marked running that is not.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from realms.errors import RealmsError
from realms.kinds import RealmState

UNIT_PREFIX = "realm-"
STORE_VARIABLE = "REALMS_STORE"
"""In the unit's environment: whose realm it is (two stores may both have a realm NAME)."""
CGROUP_ROOT = Path("/sys/fs/cgroup")
LOCK_CGROUP = "realms-run-lock"
"""The cgroup below the unit's of the process that holds the realm's run lock."""
NSPAWN_OPTIONS = ("--register=yes", "--keep-unit")
"""What nspawn needs in the unit: register with machined, as this unit."""
# The properties of systemd-nspawn@.service that make sense for a realm.
BASE_PROPERTIES = (
    "Type=notify",
    "KillMode=mixed",
    "Delegate=yes",
    "Slice=machine.slice",
    "TasksMax=16384",
    "RestartForceExitStatus=133",
    "SuccessExitStatus=133",
)
_STATES = {
    "active": RealmState.RUNNING,
    "reloading": RealmState.RUNNING,
    "activating": RealmState.STARTING,
    "deactivating": RealmState.STOPPING,
}


def is_pid1() -> bool:
    """Whether systemd runs this machine: sd_booted() (``/run/systemd/system``), and PID 1 is
    systemd itself (a container's /run may be shared with a host that runs systemd)."""
    if not Path("/run/systemd/system").is_dir():
        return False
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def unit_name(name: str) -> str:
    # Realm names ([A-Za-z][A-Za-z0-9-]*, realms.names) need no escaping in a unit name.
    return f"{UNIT_PREFIX}{name}.service"


class UnitState(NamedTuple):
    """Realm ``name``'s unit as systemd sees it now."""

    name: str
    state: RealmState
    main_pid: int | None
    """nspawn."""
    leader_pid: int | None
    """The realm's init, as the host sees it (from machined; None until it is registered)."""
    started_monotonic: float | None
    """When the unit became active, in CLOCK_MONOTONIC seconds (as ``time.monotonic()``)."""
    cgroup: Path | None
    store: Path | None
    """The store whose realm it runs (REALMS_STORE in the unit's environment)."""

    @property
    def uptime(self) -> float | None:
        if self.started_monotonic is None:
            return None
        return max(0.0, time.monotonic() - self.started_monotonic)

    @property
    def started(self) -> str:
        """When it became active, as ISO 8601 UTC ("" while it starts)."""
        if self.uptime is None:
            return ""
        from datetime import UTC, datetime

        moment = datetime.fromtimestamp(time.time() - self.uptime, UTC).replace(microsecond=0)
        return moment.isoformat().replace("+00:00", "Z")


def _show(unit: str, properties: Sequence[str]) -> dict[str, str]:
    from realms.system.run import run

    result = run(["systemctl", "show", unit, f"--property={','.join(properties)}"], check=False)
    values = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        values[key] = value
    return values


def _positive(value: str | None) -> int | None:
    try:
        number = int(value or "0")
    except ValueError:
        return None
    return number if number > 0 else None


def leader_pid(name: str) -> int | None:
    """The init of machine ``name`` (machined's Leader), if it is registered."""
    from realms.system.run import run

    result = run(["machinectl", "show", name, "--property=Leader", "--value"], check=False)
    return _positive(result.stdout.strip()) if result.returncode == 0 else None


def unit_state(name: str) -> UnitState | None:
    """Realm ``name``'s unit now; None when it is not loaded or inactive (stopped)."""
    values = _show(
        unit_name(name),
        (
            "LoadState",
            "ActiveState",
            "MainPID",
            "ActiveEnterTimestampMonotonic",
            "ControlGroup",
            "Environment",
        ),
    )
    state = _STATES.get(values.get("ActiveState", ""))
    if values.get("LoadState") != "loaded" or state is None:
        return None
    entered = _positive(values.get("ActiveEnterTimestampMonotonic"))
    group = values.get("ControlGroup")
    return UnitState(
        name=name,
        state=state,
        main_pid=_positive(values.get("MainPID")),
        leader_pid=leader_pid(name) if state != RealmState.STOPPING else None,
        started_monotonic=entered / 1e6 if entered else None,
        cgroup=CGROUP_ROOT / group.lstrip("/") if group else None,
        store=_store_of(values.get("Environment", "")),
    )


def _store_of(environment: str) -> Path | None:
    # systemctl show quotes an assignment with spaces as a whole: "REALMS_STORE=/a b".
    for item in shlex.split(environment):
        key, _, value = item.partition("=")
        if key == STORE_VARIABLE and value:
            return Path(value)
    return None


def unit_of(store: Path, name: str) -> UnitState | None:
    """Realm ``name`` of the store at ``store`` as its unit runs it (what
    :func:`realms.lifecycle.state.running` gives on this path); None when it is stopped, or
    when the unit runs the realm of the same name of another store (its start says so)."""
    found = unit_state(name)
    if found is None or found.store is None:
        return None
    if os.path.realpath(found.store) != os.path.realpath(store):
        return None
    return found


def journal_tail(name: str, lines: int = 15) -> str:
    """The end of the unit's journal (the realm's console, nspawn's messages)."""
    from realms.system.run import run

    result = run(
        ["journalctl", f"--unit={unit_name(name)}", f"--lines={lines}", "--no-pager", "-o", "cat"],
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def launcher_argv(store: Path, name: str) -> list[str]:
    """The unit's command: this module, run by the Python that runs realms now."""
    return [sys.executable, "-m", "realms.lifecycle.systemd_unit", str(store), name]


def _network_properties(name: str) -> list[str]:
    """ExecStartPost= and ExecStopPost= (see :mod:`realms.lifecycle.systemd_unit`). The store
    is the unit's REALMS_STORE, expanded by systemd at exec time as one word (no quoting of a
    path in a command line); a failed release ("-") does not fail the unit, a failed configure
    fails its start."""
    python = '"' + sys.executable.replace("\\", "\\\\").replace('"', '\\"') + '"'
    command = f"{python} -m realms.lifecycle.systemd_unit"
    store_word = "${" + STORE_VARIABLE + "}"
    return [
        f"ExecStartPost={command} configure {store_word} {name}",
        f"ExecStopPost=-{command} release {store_word} {name}",
    ]


def start(
    store: Path,
    name: str,
    *,
    timeout: float,
    properties: Sequence[str] = (),
    environment: Mapping[str, str] | None = None,
) -> UnitState:
    """Start realm ``name`` of the store at ``store`` as ``realm-NAME.service`` and return once
    it is READY; RealmsError with the end of its journal when it fails or is not ready within
    ``timeout`` seconds (systemd stops it then). ``properties`` are more unit properties
    (``MemoryMax=2G``, ...)."""
    from realms.system.run import run

    unit = unit_name(name)
    # A failed unit of an earlier start would stay loaded under the name (with --collect it
    # should not, but one made by hand might): clear it, or systemd-run refuses the name.
    run(["systemctl", "reset-failed", unit], check=False)
    # The package's parent directory, so that the unit runs this very realms.
    package = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": str(package), STORE_VARIABLE: str(store), **(environment or {})}
    argv: list[str | Path] = ["systemd-run", "--quiet", "--collect", f"--unit={unit}"]
    argv.append(f"--description=realm {name}")
    # The journal names the realm's console lines after it, not after the launcher (python3).
    argv.append(f"--property=SyslogIdentifier={unit_name(name).removesuffix('.service')}")
    unit_properties = (*BASE_PROPERTIES, *_network_properties(name), *properties)
    argv += [f"--property={item}" for item in unit_properties]
    argv.append(f"--property=TimeoutStartSec={max(1, round(timeout))}s")
    argv += [f"--setenv={key}={value}" for key, value in env.items()]
    argv += ["--", *launcher_argv(store, name)]
    result = run(argv, check=False)
    if result.returncode != 0:
        already = "already" in result.stderr or "exists" in result.stderr
        if already and unit_state(name) is not None:
            raise RealmsError(
                f"{unit} is running already (a realm {name!r} of another store?)",
                hint=f"systemctl status {unit}",
            )
        tail = journal_tail(name)
        detail = f":\n{tail}" if tail else f": {result.stderr.strip()}"
        raise RealmsError(
            f"realm {name!r} did not start (unit {unit}){detail}",
            hint=f"journalctl -u {unit}",
        )
    found = unit_state(name)
    if found is None:
        raise RealmsError(f"realm {name!r} stopped right after it started{_tail_of(name)}")
    return found


def _tail_of(name: str) -> str:
    tail = journal_tail(name)
    return f":\n{tail}" if tail else ""


def stop(name: str, *, timeout: float) -> bool:
    """Stop realm ``name``'s unit: SIGTERM to nspawn (init powers off), SIGKILL to all of it
    after ``timeout`` seconds; False if it was not running. Its network is released (by its
    ExecStopPost=, and here again once the unit is gone)."""
    from realms.system.run import run

    found = unit_state(name)
    if found is None:
        return False
    unit = unit_name(name)
    run(["systemctl", "stop", "--no-block", unit], check=False)
    if not _wait_stopped(name, timeout):
        run(["systemctl", "kill", "--signal=SIGKILL", unit], check=False)
        if not _wait_stopped(name, 10):
            raise RealmsError(f"{unit} did not stop", hint=f"systemctl status {unit}")
    if found.store is not None:
        _release(found.store, name)
    return True


def _release(root: Path, name: str) -> None:
    """What the unit's ExecStopPost= does, in case it was killed (SIGKILL to the unit reaches
    it too); nothing is left to do when it ran."""
    from realms import log, network
    from realms.store import Store

    try:
        network.release(Store.open(root), name)
    except RealmsError as error:
        log.warn(f"realm {name}: its network was not released: {error.message}")


def _wait_stopped(name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while unit_state(name) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    return True
