"""realms rebase: a fresh root from the appimg, the realm's state (keep paths, home, config)
carried byte for byte, the old root kept as snapshot pre-rebase and --undo going back; tree,
block and sealed realms; refusals; kills at every step of the swap."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from realms.system import btrfs
from tests.helpers import Realms

MACHINE_ID = "0123456789abcdef0123456789abcdef"
STATE = (
    f"echo {MACHINE_ID} > /etc/machine-id; mkdir -p /etc/ssh /var/lib/db; "
    "echo secret > /etc/ssh/ssh_host_ed25519_key; chmod 600 /etc/ssh/ssh_host_ed25519_key; "
    "echo pub > /etc/ssh/ssh_host_ed25519_key.pub; echo rows > /var/lib/db/table; "
    "chown 1000:1000 /var/lib/db/table; ln -s /etc/shadow /var/lib/db/link; "
    "echo junk > /etc/junk"
)
KEEP = 'keep = ["/etc/machine-id", "/etc/ssh/ssh_host_*", "/var/lib/db"]\n'
KEPT = ("etc/machine-id", "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub")
KEPT_DB = ("var/lib/db", "var/lib/db/table", "var/lib/db/link")


def _state(path: Path) -> tuple[Any, ...]:
    """What must survive byte for byte: contents, owner, mode, mtime, extended attributes."""
    info = os.lstat(path)
    if stat.S_ISREG(info.st_mode):
        content: str | None = hashlib.sha256(path.read_bytes()).hexdigest()
    elif stat.S_ISLNK(info.st_mode):
        content = os.readlink(path)
    else:
        content = None
    xattrs = {}
    if not stat.S_ISLNK(info.st_mode):
        xattrs = {n: os.getxattr(path, n) for n in os.listxattr(path)}
    mtime = None if stat.S_ISDIR(info.st_mode) else info.st_mtime_ns
    return (content, info.st_uid, info.st_gid, info.st_mode, mtime, xattrs)


def _states(root: Path, paths: tuple[str, ...]) -> dict[str, tuple[Any, ...]]:
    return {path: _state(root / path) for path in paths}


def _listed(realms: Realms, name: str) -> dict[str, Any]:
    found: dict[str, Any] = realms.json("show", name)
    return found


def _snapshots(realms: Realms, name: str) -> dict[str, int]:
    return {s["label"]: s["appimg_version"] for s in realms.json("snapshot", "list", name)}


def _no_leftovers(realms: Realms, name: str) -> None:
    directory = realms.store / "realms" / name
    hidden = [e for e in os.listdir(directory) if e.startswith(".")]
    snapshots = directory / "snapshots"
    if snapshots.exists():
        hidden += [e for e in os.listdir(snapshots) if e.startswith(".")]
    assert hidden == [] and not (directory / "root-swap.toml").exists()


def test_tree_rebase_keeps_state_and_undo_goes_back(realms: Realms, base: str) -> None:
    realms("new", "r1")
    realms("run", "r1", "--root", "--", "sh", "-c", STATE)
    realms("run", "r1", "--", "sh", "-c", "echo mine > ~/note")
    config = realms.store / "realms/r1/config"
    config.write_text(config.read_text() + KEEP)
    root = realms.store / "realms/r1/rootfs"
    os.setxattr(root / KEPT[1], "user.realms-test", b"kept")
    home = realms.store / "realms/r1/home/note"
    before = _states(root, KEPT + KEPT_DB)
    home_before, config_before = _state(home), config.read_bytes()
    realms("update-appimg", "base", "--", "sh", "-c", "echo v2 > /etc/version")
    assert _listed(realms, "r1")["outdated"] is True

    (result,) = realms.json("rebase", "r1")
    assert (result["from_version"], result["to_version"], result["error"]) == (1, 2, None)
    assert result["kept"] == sorted(f"/{p}" for p in (*KEPT, "var/lib/db"))
    assert _states(root, KEPT + KEPT_DB) == before
    assert (_state(home), config.read_bytes()) == (home_before, config_before)
    assert (root / "etc/version").read_text() == "v2\n" and not (root / "etc/junk").exists()
    shown = _listed(realms, "r1")
    assert shown["appimg_version"] == 2 and shown["outdated"] is False
    assert _snapshots(realms, "r1") == {"pre-rebase": 1}
    old = realms.store / "realms/r1/snapshots/pre-rebase/rootfs"
    assert btrfs.is_readonly(old) and (old / "etc/junk").exists()
    # It runs, in its user namespace, with the same machine-id and the home it had.
    assert realms("run", "r1", "--", "cat", "/etc/machine-id").stdout.strip() == MACHINE_ID
    assert realms("run", "r1", "--", "cat", "note").stdout == "mine\n"
    assert realms("run", "r1", "--", "cat", "/var/lib/db/table").stdout == "rows\n"
    _no_leftovers(realms, "r1")

    (undone,) = realms.json("rebase", "r1", "--undo")
    assert undone["undone"] is True and undone["to_version"] == 1
    assert (root / "etc/junk").exists() and not (root / "etc/version").exists()
    assert _listed(realms, "r1")["appimg_version"] == 1
    assert _snapshots(realms, "r1") == {"pre-restore": 2}
    assert realms("run", "r1", "--", "cat", "/etc/machine-id").stdout.strip() == MACHINE_ID
    assert "no rebase to undo" in realms.fails("rebase", "r1", "--undo")


def test_refusals(realms: Realms, base: str) -> None:
    realms("new", "r1")
    assert "already on version 1 of appimg 'base'" in realms.fails("rebase", "r1")
    assert "has no version 9" in realms.fails("rebase", "r1", "--to", "9")
    assert "no realm named 'nope'" in realms.fails("rebase", "nope")
    assert "no realm name" in realms.fails("rebase", "r1", "--all-outdated")
    assert "name the realm" in realms.fails("rebase")
    config = realms.store / "realms/r1/config"
    realms("update-appimg", "base", "--", "touch", "/etc/v2")
    config.write_text(config.read_text() + 'keep = ["etc/relative"]\n')
    assert "keep: 'etc/relative' is not an absolute path" in realms.fails("rebase", "r1")
    config.write_text(config.read_text().replace('keep = ["etc/relative"]\n', ""))

    # A run in progress holds the realm: every change of its root is refused.
    running = realms.spawn("run", "r1", "--", "sleep", "60")
    try:
        lock = realms.store / "locks/realm.r1.run.lock"
        deadline = time.monotonic() + 30
        while not _held(lock) and time.monotonic() < deadline:
            time.sleep(0.1)
        result = realms("rebase", "r1", check=False)
        assert result.returncode == 1 and "is running" in result.stderr
        assert "--restart" in result.stderr
        assert "is running" in realms.fails("snapshot", "r1")
        assert "is running" in realms.fails("restore", "r1", "x")
    finally:
        running.send_signal(signal.SIGTERM)
        running.communicate(timeout=30)
    assert _listed(realms, "r1")["appimg_version"] == 1

    # A tree realm cannot move onto an image version (nor back).
    realms("key", "generate", "realmfs-user")
    realms("appimg", "seal", "base")
    error = realms.fails("rebase", "r1")
    assert "version 3 of appimg 'base' is sealed" in error and "kind of its root" in error
    assert realms.json("rebase", "r1", "--to", "2")[0]["to_version"] == 2


def _held(lock: Path) -> bool:
    from realms.store import locks

    return lock.exists() and not locks.is_free(lock)


def test_all_outdated_reports_each(realms: Realms, base: str) -> None:
    for name in ("a", "b"):
        realms("new", name)
    realms("update-appimg", "base", "--", "touch", "/etc/v2")
    realms("new", "c")
    config = realms.store / "realms/b/config"
    config.write_text(config.read_text() + 'keep = ["../up"]\n')
    result = realms("rebase", "--all-outdated", "--json", check=False)
    assert result.returncode == 1
    by_name = {r["realm"]: r for r in result.json()}
    assert set(by_name) == {"a", "b"}
    assert by_name["a"]["error"] is None and by_name["a"]["to_version"] == 2
    assert "keep" in by_name["b"]["error"]
    listed = {r["name"]: r["appimg_version"] for r in realms.json("list")}
    assert listed == {"a": 2, "b": 1, "c": 2}
    config.write_text(config.read_text().replace('keep = ["../up"]\n', ""))
    text = realms("rebase", "--all-outdated")
    assert "Rebased realm b (appimg base) from version 1 to 2" in text.stderr
    assert "No realm is outdated" in realms("rebase", "--all-outdated").stderr


@pytest.mark.parametrize("kind", ["sealed", "block"])
def test_image_realm_rebase(realms: Realms, base: str, kind: str) -> None:
    if kind == "sealed":
        realms("key", "generate", "realmfs-user")
        realms("appimg", "seal", "base")
    else:
        realms("appimg", "seal", "base", "--no-verity")
    realms("new", "r1")
    realms("run", "r1", "--root", "--", "sh", "-c", STATE)
    config = realms.store / "realms/r1/config"
    config.write_text(config.read_text() + KEEP)
    upper = realms.store / "realms/r1/upper"
    before = _states(upper, KEPT + KEPT_DB)
    realms("update-appimg", "base", "--", "sh", "-c", "echo v3 > /etc/version")

    (result,) = realms.json("rebase", "r1")
    assert (result["from_version"], result["to_version"]) == (2, 3)
    assert _states(upper, KEPT + KEPT_DB) == before
    # The fresh layer holds the kept paths only; the rest of the old one is the snapshot.
    assert sorted(os.listdir(upper / "etc")) == ["machine-id", "ssh"]
    assert (realms.store / "realms/r1/snapshots/pre-rebase/upper/etc/junk").exists()
    out = realms("run", "r1", "--", "sh", "-c", "cat /etc/machine-id /etc/version").stdout
    assert out.split() == [MACHINE_ID, "v3"]
    assert realms("run", "r1", "--", "test", "-e", "/etc/junk", check=False).returncode == 1
    active = [(a["version"], a["users"]) for a in realms.json("status")["activations"]]
    assert active == [(3, ["r1"])]
    # The snapshot needs version 2: prune keeps it, naming the snapshot.
    pruned = realms("appimg", "prune", "base", "--keep", "1").stderr
    assert "r1 (snapshot pre-rebase)" in pruned
    assert [v["version"] for v in realms.json("appimg", "versions", "base")] == [2, 3]

    realms("rebase", "r1", "--undo")
    assert _listed(realms, "r1")["appimg_version"] == 2
    out = realms("run", "r1", "--", "sh", "-c", "cat /etc/junk /etc/machine-id").stdout
    assert out.split() == ["junk", MACHINE_ID]
    assert realms("run", "r1", "--", "test", "-e", "/etc/version", check=False).returncode == 1
    active = [(a["version"], a["users"]) for a in realms.json("status")["activations"]]
    assert active == [(2, ["r1"])]

    # Killed right after the exchange: the realm is on the new version at once.
    result = realms("rebase", "r1", check=False, env={"REALMS_KILL_AT": "rebase:swapped"})
    assert result.returncode == -signal.SIGKILL
    assert _listed(realms, "r1")["appimg_version"] == 3
    assert realms("run", "r1", "--", "cat", "/etc/version").stdout == "v3\n"
    assert _snapshots(realms, "r1") == {"pre-rebase": 2, "pre-restore": 3}
    _no_leftovers(realms, "r1")
    realms("remove", "r1")  # its activation (a loop device) goes with it
    assert realms.json("status")["activations"] == []


BEFORE_EXCHANGE = ("rebase:staged", "rebase:recorded")
AFTER_EXCHANGE = ("rebase:swapped", "rebase:origin", "rebase:snapshot")


def test_kills_mid_rebase_leave_one_root(realms: Realms, base: str) -> None:
    for version in (2, 3):
        realms("update-appimg", "base", "--", "sh", "-c", f"echo v{version} > /etc/version")
    realms("new", "r1")
    realms("run", "r1", "--root", "--", "sh", "-c", STATE)
    realms("run", "r1", "--", "sh", "-c", "echo mine > ~/note")
    root = realms.store / "realms/r1/rootfs"
    home = realms.store / "realms/r1/home/note"
    kept = _states(root, KEPT)
    for checkpoint in (*BEFORE_EXCHANGE, *AFTER_EXCHANGE, "rebase-undo:swapped"):
        current = _listed(realms, "r1")["appimg_version"]
        other = 5 - current  # between versions 2 and 3
        args = ["rebase", "r1", "--undo"] if "undo" in checkpoint else ["rebase", "r1"]
        if "undo" not in checkpoint:
            args += ["--to", str(other)]
        result = realms(*args, check=False, env={"REALMS_KILL_AT": checkpoint})
        assert result.returncode == -signal.SIGKILL, (checkpoint, result.stderr)
        now = _listed(realms, "r1")["appimg_version"]
        assert now == (current if checkpoint in BEFORE_EXCHANGE else other), checkpoint
        # The root in place is the one the origin names, never none.
        assert (root / "etc/version").read_text() == f"v{now}\n", checkpoint
        assert home.read_text() == "mine\n" and _states(root, KEPT) == kept
        snapshots = _snapshots(realms, "r1")  # finishes what the kill left
        _no_leftovers(realms, "r1")
        if checkpoint in AFTER_EXCHANGE:
            assert snapshots["pre-rebase"] == current, checkpoint
        assert realms("run", "r1", "--", "cat", "/etc/machine-id").stdout.strip() == MACHINE_ID
    for version in (2, 3):
        if _listed(realms, "r1")["appimg_version"] != version:
            realms("rebase", "r1", "--to", str(version))
        assert (root / "etc/version").read_text() == f"v{version}\n"


def test_restart_is_refused_for_a_one_shot_run(realms: Realms, base: str) -> None:
    """--restart stops booted realms only; a run in progress is not realms' to stop."""
    realms("new", "r1")
    realms("update-appimg", "base", "--", "touch", "/etc/v2")
    running = realms.spawn("run", "r1", "--", "sleep", "60")
    try:
        lock = realms.store / "locks/realm.r1.run.lock"
        deadline = time.monotonic() + 30
        while not _held(lock) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "is running" in realms.fails("rebase", "r1", "--restart")
    finally:
        running.send_signal(signal.SIGTERM)
        running.communicate(timeout=30)
    assert _listed(realms, "r1")["appimg_version"] == 1


def test_restart_rebases_a_booted_realm(btrfs_pool: Path, bootable_tree: Path) -> None:
    from tests.system.booted import assert_stopped_clean, show, store_with_boot_image

    realms = store_with_boot_image(btrfs_pool, bootable_tree, "rebase")
    realms("new", "booted", "--appimg", "boot")
    (realms.store / "realms/booted/rootfs/etc/machine-id").write_text(MACHINE_ID + "\n")
    realms("update-appimg", "boot", "--", "touch", "/etc/v2")
    realms("start", "booted")
    try:
        leader = show(realms, "booted")["leader_pid"]
        error = realms.fails("rebase", "booted")
        assert "is running" in error
        (result,) = realms.json("rebase", "booted", "--restart")
        assert result["restarted"] is True and result["to_version"] == 2
        shown = show(realms, "booted")
        assert shown["state"] == "running" and shown["leader_pid"] != leader
        assert shown["appimg_version"] == 2
        out = realms("run", "booted", "--", "sh", "-c", "cat /etc/machine-id; ls /etc/v2")
        assert out.stdout.split() == [MACHINE_ID, "/etc/v2"]
    finally:
        realms("stop", "booted")
    assert_stopped_clean(realms, "booted")
