"""Booted realms where systemd is not PID 1: realms start, stop, restart, list and show, with the
realm's own supervisor, runtime state under /run/realms and a cgroup per realm (issue 13).

The trixie tree with systemd (``bootable_tree``) is imported once per module; each test makes
its realms by snapshot and leaves nothing running (booted.made_realm)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from realms.lifecycle import cgroups
from tests.helpers import Realms
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
    return store_with_boot_image(btrfs_pool, bootable_tree, "lifecycle")


@pytest.fixture
def realm(boot_store: Realms) -> Iterator[str]:
    yield from made_realm(boot_store)


def test_start_list_run_stop(boot_store: Realms, realm: str) -> None:
    realms = boot_store
    assert show(realms, realm)["state"] == "stopped"
    result = realms("start", realm)
    assert f"Started realm {realm} in" in result.stderr
    shown = show(realms, realm)
    assert shown["state"] == "running" and shown["running"] is True
    leader = shown["leader_pid"]
    assert isinstance(leader, int) and alive(leader)
    assert shown["started"] and shown["address"] is None and shown["isolation"] == "userns"
    listed = {r["name"]: r for r in realms.json("list")}
    assert listed[realm]["state"] == "running" and listed[realm]["leader_pid"] == leader
    table = realms("list").stdout
    assert "STATE" in table and str(leader) in table

    # Every process of the realm is in its cgroup: its init, and what runs in it.
    group = cgroup_of(realms, realm)
    assert leader in cgroups.pids(group)
    assert realms("run", realm, "--root", "--", "cat", "/proc/1/comm").stdout.strip() == "systemd"
    # Named after the realm, not after its appimg's /etc/hostname.
    assert realms("run", realm, "--", "cat", "/proc/sys/kernel/hostname").stdout.strip() == realm

    # A second start does nothing; remove refuses a running realm and says how to stop it.
    again = realms("start", realm)
    assert "running already" in again.stderr and show(realms, realm)["leader_pid"] == leader
    error = realms.fails("remove", realm)
    assert "is running" in error
    assert f"realms stop {realm}" in realms("remove", realm, check=False).stderr

    stopped = realms("stop", realm)
    assert f"Stopped realm {realm}" in stopped.stderr
    assert not alive(leader)
    assert_stopped_clean(realms, realm)
    assert "is not running" in realms("stop", realm).stderr
    # The console log kept what init said.
    console = realms.store / "logs" / f"realm-{realm}.console"
    assert "is ready" in console.read_text()


def test_restart_and_reboot_from_inside(boot_store: Realms, realm: str) -> None:
    realms = boot_store
    realms("start", realm)
    first = show(realms, realm)["leader_pid"]
    result = realms("restart", realm)
    assert f"Started realm {realm}" in result.stderr
    second = show(realms, realm)["leader_pid"]
    assert second != first and not alive(first) and alive(second)

    # systemctl reboot inside: nspawn exits 133, the supervisor boots the realm again.
    supervisor = _record(realms, realm)["supervisor"]["pid"]
    realms("run", realm, "--root", "--", "systemctl", "reboot", check=False)
    wait_for(
        "the realm to come back after its reboot",
        lambda: (s := show(realms, realm))["state"] == "running" and s["leader_pid"] != second,
    )
    record = _record(realms, realm)
    assert record["boots"] == 2 and record["supervisor"]["pid"] == supervisor
    assert not alive(second)
    realms("stop", realm)
    assert_stopped_clean(realms, realm)


def _record(realms: Realms, name: str) -> dict[str, Any]:
    import json

    found: dict[str, Any] = json.loads(state_file(realms, name).read_text())
    return found


def test_block_image_realm_boots_on_its_overlay(boot_store: Realms) -> None:
    realms = boot_store
    realms("appimg", "seal", "boot", "--no-verity")
    try:
        for name in made_realm(realms, "img"):
            realms("start", name)
            leader = show(realms, name)["leader_pid"]
            realms("run", name, "--root", "--", "sh", "-c", "echo booted > /etc/marker")
            upper = realms.store / "realms" / name / "upper"
            assert (upper / "etc/marker").read_text() == "booted\n"
            assert alive(leader)
            realms("stop", name)
            assert_stopped_clean(realms, name)
    finally:
        realms("appimg", "rollback", "boot", check=False)


def _fake_systemd_tree(busybox_tree: Path, target: Path, script: str) -> Path:
    shutil.copytree(busybox_tree, target, symlinks=True)
    init = target / "usr/lib/systemd/systemd"
    init.parent.mkdir(parents=True)
    init.write_text(script)
    init.chmod(0o755)
    return target


def test_start_timeout_stops_the_realm_and_shows_its_log(
    realms: Realms, busybox_tree: Path, tmp_path: Path
) -> None:
    # An init that never reports READY (and, as PID 1, ignores nspawn's shutdown signal).
    tree = _fake_systemd_tree(
        busybox_tree,
        tmp_path / "hang",
        "#!/bin/sh\necho fake init waiting forever\nexec sleep 1000\n",
    )
    realms("appimg", "import", "hang", str(tree))
    realms("new", "hung", "--appimg", "hang")
    try:
        result = realms("start", "hung", "--timeout", "2", check=False)
        assert result.returncode == 1
        lines = result.stderr.splitlines()
        errors = [line for line in lines if line.startswith("realms: error:")]
        assert len(errors) == 1 and "did not report READY within 2s" in errors[0]
        assert any("fake init waiting forever" in line for line in lines if line.startswith("  |"))
        assert_stopped_clean(realms, "hung")
        assert not cgroups.populated(cgroup_of(realms, "hung"))
    finally:
        realms("stop", "hung", check=False)


def test_tree_without_init_is_refused(realms: Realms, base: str) -> None:
    realms("new", "plain")
    error = realms.fails("start", "plain")
    assert "cannot boot" in error and "systemd" in error
    assert "hint:" in realms("start", "plain", check=False).stderr
    assert_stopped_clean(realms, "plain")
    # realms run still works on it, as before.
    assert realms("run", "plain", "--", "echo", "one-shot").stdout == "one-shot\n"


def test_stop_kills_what_does_not_stop_in_time(boot_store: Realms, realm: str) -> None:
    realms = boot_store
    realms("start", realm)
    leader = show(realms, realm)["leader_pid"]
    # A service that ignores SIGTERM: the realm's systemd would wait 90 s for it.
    realms(
        "run",
        realm,
        "--root",
        "--",
        "systemd-run",
        "--unit=stubborn",
        "--",
        "sh",
        "-c",
        "trap '' TERM; while :; do sleep 1; done",
    )
    result = realms("stop", realm, "--timeout", "1")
    assert f"Stopped realm {realm}" in result.stderr
    assert not alive(leader)
    assert_stopped_clean(realms, realm)
