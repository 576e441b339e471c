"""``realms check [--repair]``: each kind of damage made for real (a version deleted, a record
corrupted, a command killed at a checkpoint, a mode changed, a loop device left attached...),
reported in one line, repaired, and the store checks clean afterwards; homes are never lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from realms.system import btrfs, mounts
from tests.helpers import Realms, run


def _check(realms: Realms, *extra: str) -> tuple[int, dict[str, Any]]:
    result = realms("check", "--json", *extra, check=False)
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["ok"] == (result.returncode == 0)
    return result.returncode, report


def _kinds(report: dict[str, Any]) -> list[str]:
    return sorted(problem["kind"] for problem in report["problems"])


def _repaired(realms: Realms, *kinds: str) -> dict[str, Any]:
    """Check finds exactly ``kinds``, --repair repairs each, and the store is clean then."""
    code, report = _check(realms)
    assert code == 1 and _kinds(report) == sorted(kinds), report
    human = realms("check", check=False)
    lines = [line for line in human.stdout.splitlines() if "--repair:" in line]
    assert len(lines) == len(kinds), human.stdout
    code, repaired = _check(realms, "--repair")
    assert code == 0, repaired
    assert all(problem["repaired"] for problem in repaired["problems"]), repaired
    code, again = _check(realms)
    assert code == 0 and again["problems"] == [], again
    return repaired


def _killed_at(realms: Realms, checkpoint: str, *args: str) -> None:
    result = realms(*args, check=False, env={"REALMS_KILL_AT": checkpoint})
    assert result.returncode == -signal.SIGKILL, (checkpoint, result.stderr)


@pytest.fixture
def two_realms(realms: Realms, base: str) -> Iterator[Realms]:
    for name in ("one", "two"):
        realms("new", name)
        (realms.store / f"realms/{name}/home/marker").write_text(name)
    yield realms
    for name in ("one", "two"):
        markers = [
            realms.store / f"realms/{name}/home/marker",
            *(realms.store / "removed").rglob("marker"),
        ]
        assert any(m.exists() and m.read_text() == name for m in markers), f"{name}'s home lost"


def test_a_clean_store_checks_ok(two_realms: Realms) -> None:
    code, report = _check(two_realms)
    assert code == 0 and report["problems"] == [] and report["checked"]["realms"] == 2
    assert two_realms("check").stdout.startswith("store ok (1 appimgs, 2 realms checked")


def test_versions_missing_writable_and_unrecorded(realms: Realms, busybox_tree: Path) -> None:
    realms("appimg", "import", "base", str(busybox_tree))
    realms("appimg", "import", "base", str(busybox_tree), "--new-version")
    # Killed between the rename of v3 and the write of the record: v3 is unrecorded.
    _killed_at(
        realms, "appimg-version:renamed", "appimg", "import", "base", str(busybox_tree),
        "--new-version",
    )  # fmt: skip
    v2 = realms.store / "appimg/base/v2"
    run("btrfs", "subvolume", "delete", v2)
    btrfs.set_readonly(realms.store / "appimg/base/v1", False)
    repaired = _repaired(realms, "version-missing", "version-unrecorded", "version-writable")
    assert any("version 1 becomes current" in p["repair"] for p in repaired["problems"])
    shown = realms.json("appimg", "show", "base")
    assert shown["version"] == 1 and [v["version"] for v in shown["versions"]] == [1]
    assert btrfs.is_readonly(realms.store / "appimg/base/v1")
    assert sorted(os.listdir(realms.store / "appimg/base")) == ["appimg.toml", "v1"]
    realms("new", "after")  # the appimg works, and the next version gets a new number
    realms("appimg", "import", "base", str(busybox_tree), "--new-version")
    assert realms.json("appimg", "show", "base")["version"] == 3


def test_the_only_version_missing_is_reported_not_repaired(realms: Realms, base: str) -> None:
    run("btrfs", "subvolume", "delete", realms.store / "appimg/base/v1")
    code, report = _check(realms, "--repair")
    assert code == 1 and _kinds(report) == ["version-missing"]
    (problem,) = report["problems"]
    assert problem["repaired"] is False and problem["repair"].startswith("none: ")
    assert (realms.store / "appimg/base/appimg.toml").exists()  # never deleted blindly
    assert "version-missing:" in realms("check", check=False).stdout


def test_damaged_origin_moves_the_realm_to_removed(two_realms: Realms) -> None:
    realms = two_realms
    (realms.store / "realms/two/origin.toml").write_text("appimg = [\n")
    repaired = _repaired(realms, "realm-orphan")
    assert repaired["problems"][0]["repair"].startswith("moved to removed/realm-two-")
    assert [r["name"] for r in realms.json("list")] == ["one"]
    (kept,) = (realms.store / "removed").iterdir()
    assert (kept / "home/marker").read_text() == "two" and btrfs.is_subvolume(kept / "rootfs")
    realms("new", "two")  # the name is free again


def test_missing_home_root_and_config_are_made_again(two_realms: Realms) -> None:
    realms = two_realms
    store = realms.store
    (store / "realms/one/home/marker").rename(store / "one-marker")
    run("rm", "-rf", store / "realms/one/home")
    run("btrfs", "subvolume", "delete", store / "realms/two/rootfs")
    (store / "realms/two/config").write_text("use-network = maybe\n")
    _repaired(realms, "realm-home", "realm-root", "realm-config")
    assert realms("run", "two", "--", "cat", "/etc/os-release").returncode == 0
    assert realms("run", "one", "--", "true").returncode == 0
    assert any(p.name.startswith("two-config-") for p in (store / "removed").iterdir())
    # The fixture looks for the homes: give one its marker back where it was.
    (store / "one-marker").rename(store / "realms/one/home/marker")


def test_leftovers_of_killed_commands(two_realms: Realms) -> None:
    realms = two_realms
    _killed_at(realms, "discard:renamed", "remove", "two", "--keep-home")
    # What a write of realm one's config killed before its rename leaves (every command sweeps
    # first, so a second killed command would have swept the first one's leftover).
    (realms.store / "realms/one/.tmp.config.0badc0de").write_text("half")
    repaired = _repaired(realms, "leftover", "leftover")
    assert all(p["repair"] == "deleted" for p in repaired["problems"])
    assert realms.json("status")["leftovers"] == 0


def test_modes_keys_locks_and_default_link(two_realms: Realms) -> None:
    realms = two_realms
    store = realms.store
    realms("key", "generate", "test")
    (store / "keys/signing/test.key").chmod(0o644)
    store.chmod(0o755)
    (store / "locks/realm.one.lock").unlink(missing_ok=True)
    (store / "locks/realm.one.lock").mkdir()
    realms("remove", "two", "--keep-home")
    (store / "default.realm").unlink(missing_ok=True)
    (store / "default.realm").symlink_to("realms/two")
    _repaired(realms, "mode", "mode", "lock-file", "default-link")
    assert (store / "keys/signing/test.key").stat().st_mode & 0o777 == 0o600
    assert store.stat().st_mode & 0o777 == 0o700
    assert not (store / "default.realm").exists()
    assert realms("run", "one", "--", "true").returncode == 0  # its lock works again
    realms("default", "one")


def test_damaged_trust_store_is_reported(two_realms: Realms) -> None:
    realms = two_realms
    realms("key", "generate", "test")
    (realms.store / "keys/trust.toml").write_text('[[key]]\npublic = "nope"\n')
    code, report = _check(realms, "--repair")
    assert code == 1 and _kinds(report) == ["trust"]
    assert report["problems"][0]["repair"].startswith("none: ")


def test_stale_activation_loop_device_and_mount(realms: Realms, base: str) -> None:
    realms("appimg", "seal", "base", "--no-verity")
    # Killed after the activation, before the realm was made: an activation with no user.
    _killed_at(realms, "realm-new:activated", "new", "img")
    realms("appimg", "rollback", "base")
    realms("new", "tree")
    image = realms.store / "appimg/base/v2.img"
    loop = run("losetup", "--find", "--show", "--read-only", image).strip()
    mountpoint = realms.store / "realms/tree/rootfs/mnt"
    mountpoint.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", mountpoint], check=True)
    try:
        _repaired(realms, "activation-unused", "loop-stale", "mount-stale")
    finally:
        subprocess.run(["umount", mountpoint], check=False)
        subprocess.run(["losetup", "--detach", loop], check=False, capture_output=True)
    assert realms.json("status")["activations"] == []
    assert mounts.wait_until_detached(image)


def test_stale_runtime_record(two_realms: Realms) -> None:
    from realms.store import Layout

    layout = Layout(two_realms.store)
    layout.runtime_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "format": 1,
        "name": "one",
        "state": "running",
        "boot_id": "0" * 32,
        "supervisor": {"pid": 1, "start": 1},
        "started": "2025-01-01T00:00:00Z",
        "cgroup": layout.cgroup_name("one"),
    }
    path = layout.runtime_state_path("one")
    path.write_text(json.dumps(record))
    try:
        _repaired(two_realms, "runtime-stale")
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)
        if not any(layout.runtime_dir.iterdir()):
            layout.runtime_dir.rmdir()
