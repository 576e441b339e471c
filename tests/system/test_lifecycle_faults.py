"""Booted realms under faults: the supervisor, nspawn or the realm's init killed, ``realms
start`` killed halfway, runtime state from another boot. Afterwards ``realms list`` tells the
truth, ``start`` works again and ``stop`` leaves nothing behind (issue 13)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from realms.lifecycle import cgroups
from realms.lifecycle.state import start_time
from realms.store.layout import Layout
from tests.helpers import Realms, mounts_below
from tests.system.booted import (
    alive,
    assert_stopped_clean,
    cgroup_of,
    made_realm,
    show,
    state_file,
    store_with_boot_image,
    wait_for,
)


@pytest.fixture(scope="module")
def boot_store(btrfs_pool: Path, bootable_tree: Path) -> Realms:
    return store_with_boot_image(btrfs_pool, bootable_tree, "faults")


@pytest.fixture
def realm(boot_store: Realms) -> Iterator[str]:
    yield from made_realm(boot_store)


def _record(realms: Realms, name: str) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = json.loads(state_file(realms, name).read_text())
    return found


def _started(realms: Realms, name: str) -> dict[str, dict[str, int]]:
    realms("start", name)
    record = _record(realms, name)
    assert all(alive(record[key]["pid"]) for key in ("supervisor", "nspawn", "leader"))
    return record


def _never_running_with(realms: Realms, name: str, dead: int) -> bool:
    """Stopped at last; until then never 'running' with a leader that is gone."""
    shown = show(realms, name)
    assert shown["state"] in ("running", "stopping", "stopped"), shown
    if shown["state"] == "running":
        assert shown["leader_pid"] == dead and alive(dead), shown
    return bool(shown["state"] == "stopped")


def _starts_again(realms: Realms, name: str, old_leader: int) -> None:
    realms("start", name)
    shown = show(realms, name)
    assert shown["state"] == "running" and shown["leader_pid"] != old_leader
    assert not alive(old_leader)
    realms("stop", name)
    assert_stopped_clean(realms, name)
    assert not mounts_below(realms.store / "realms" / name)


def test_killed_supervisor(boot_store: Realms, realm: str) -> None:
    realms = boot_store
    record = _started(realms, realm)
    leader = record["leader"]["pid"]
    os.kill(record["supervisor"]["pid"], signal.SIGKILL)
    # nspawn gets SIGTERM from the kernel when its supervisor dies: the realm powers off.
    wait_for("the realm to power off", lambda: _never_running_with(realms, realm, leader))
    assert not alive(leader) and not cgroups.populated(cgroup_of(realms, realm))
    # Stale state is cleaned by the next command that holds the realm.
    assert "is not running" in realms("stop", realm).stderr
    assert_stopped_clean(realms, realm)
    _starts_again(realms, realm, leader)


def test_killed_nspawn(boot_store: Realms, realm: str) -> None:
    realms = boot_store
    record = _started(realms, realm)
    leader = record["leader"]["pid"]
    os.kill(record["nspawn"]["pid"], signal.SIGKILL)
    # The realm's init survives nspawn (reparented to the supervisor), which powers it off.
    wait_for("the realm to be stopped", lambda: _never_running_with(realms, realm, leader))
    assert not alive(leader)
    assert not alive(record["supervisor"]["pid"])
    assert_stopped_clean(realms, realm)
    _starts_again(realms, realm, leader)


def test_killed_supervisor_and_nspawn_leave_an_orphan_that_stop_ends(
    boot_store: Realms, realm: str
) -> None:
    realms = boot_store
    record = _started(realms, realm)
    leader = record["leader"]["pid"]
    _kill_both(record)
    # Nobody supervises the realm's init any more: not 'running', and stop ends it.
    shown = show(realms, realm)
    assert alive(leader) and shown["state"] == "stopping", shown
    assert leader in cgroups.pids(cgroup_of(realms, realm))
    assert "Stopped realm" in realms("stop", realm, "--timeout", "5").stderr
    assert not alive(leader)
    assert_stopped_clean(realms, realm)
    _starts_again(realms, realm, leader)


def test_orphan_is_stopped_by_the_next_start(boot_store: Realms, realm: str) -> None:
    realms = boot_store
    record = _started(realms, realm)
    leader = record["leader"]["pid"]
    _kill_both(record)
    assert alive(leader)
    _starts_again(realms, realm, leader)


def _kill_both(record: dict[str, dict[str, int]]) -> None:
    """SIGKILL nspawn and the supervisor, so that the realm's init is left to the host's init
    (the supervisor is stopped first: it would power the init off when nspawn dies)."""
    supervisor, nspawn = record["supervisor"]["pid"], record["nspawn"]["pid"]
    os.kill(supervisor, signal.SIGSTOP)
    os.kill(nspawn, signal.SIGKILL)
    wait_for("nspawn to be gone", lambda: not alive(nspawn))
    os.kill(supervisor, signal.SIGKILL)
    wait_for("the supervisor to be gone", lambda: not alive(supervisor))


def test_killed_init(boot_store: Realms, realm: str) -> None:
    realms = boot_store
    record = _started(realms, realm)
    leader = record["leader"]["pid"]
    os.kill(leader, signal.SIGKILL)
    wait_for("the realm to be stopped", lambda: _never_running_with(realms, realm, leader))
    wait_for("its supervisor to clean up", lambda: not state_file(realms, realm).exists())
    assert_stopped_clean(realms, realm)
    _starts_again(realms, realm, leader)


def test_start_killed_after_the_supervisor_was_launched(boot_store: Realms, realm: str) -> None:
    realms = boot_store
    result = realms("start", realm, check=False, env={"REALMS_KILL_AT": "realm-start:launched"})
    assert result.returncode == -signal.SIGKILL
    # The supervisor goes on without its command: the realm is starting, then running.
    assert show(realms, realm)["state"] in ("starting", "running")
    wait_for("the realm to be ready", lambda: show(realms, realm)["state"] == "running")
    leader = show(realms, realm)["leader_pid"]
    assert "running already" in realms("start", realm).stderr
    realms("stop", realm)
    assert_stopped_clean(realms, realm)
    _starts_again(realms, realm, leader)


def test_state_of_another_boot_is_not_believed(boot_store: Realms, realm: str) -> None:
    realms = boot_store
    layout = Layout(realms.store)
    layout.runtime_dir.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "start": start_time(os.getpid())}
    # A record as a supervisor wrote it before a reboot, with pids that live again now.
    stale = {
        "format": 1,
        "name": realm,
        "state": "running",
        "boot_id": "00000000-0000-0000-0000-000000000000",
        "supervisor": me,
        "nspawn": me,
        "leader": me,
        "started": "2020-01-01T00:00:00Z",
        "cgroup": layout.cgroup_name(realm),
        "address": None,
        "boots": 1,
    }
    state_file(realms, realm).write_text(json.dumps(stale))
    assert show(realms, realm)["state"] == "stopped"
    realms("start", realm)
    assert show(realms, realm)["leader_pid"] != os.getpid()
    realms("stop", realm)
    assert_stopped_clean(realms, realm)
