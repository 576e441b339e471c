"""Realm snapshots: take (realms snapshot NAME [LABEL]), list, remove, restore; read-only and
instant on btrfs, keep-snapshots, labels checked, image realms' layers, kills."""

from __future__ import annotations

import os
import re
import signal

from realms.system import btrfs
from tests.helpers import Realms


def _labels(realms: Realms, name: str) -> list[str]:
    return [s["label"] for s in realms.json("snapshot", "list", name)]


def test_take_list_restore_remove(realms: Realms, base: str) -> None:
    realms("new", "r1")
    realms("run", "r1", "--root", "--", "sh", "-c", "echo one > /etc/state")
    realms("run", "r1", "--", "sh", "-c", "echo mine > ~/note")
    taken = realms("snapshot", "r1", "first").stderr  # the default command: snapshot take
    assert "Took snapshot first of realm r1" in taken and "not instant" not in taken
    root = realms.store / "realms/r1/rootfs"
    kept = realms.store / "realms/r1/snapshots/first/rootfs"
    assert btrfs.is_subvolume(kept) and btrfs.is_readonly(kept)
    assert (kept / "etc/state").read_text() == "one\n"

    realms("run", "r1", "--root", "--", "sh", "-c", "echo two > /etc/state")
    realms("snapshot", "take", "r1")  # default label: the UTC date and time
    (first, dated) = realms.json("snapshot", "list", "r1")
    assert first["label"] == "first" and first["appimg_version"] == 1
    assert first["layer"] == "rootfs" and first["kind"] == "tree"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d{6}Z", dated["label"]), dated
    assert "first" in realms("snapshot", "list", "r1").stdout

    realms("run", "r1", "--", "sh", "-c", "echo changed > ~/note")
    restored = realms("restore", "r1", "first").stderr
    assert "the root it had is snapshot pre-restore" in restored
    assert realms("run", "r1", "--", "cat", "/etc/state").stdout == "one\n"
    # The home is not in the root: a restore leaves it as it is.
    assert realms("run", "r1", "--", "cat", "note").stdout == "changed\n"
    assert (realms.store / "realms/r1/snapshots/pre-restore/rootfs/etc/state").read_text() == (
        "two\n"
    )
    assert not btrfs.is_readonly(root) and (kept / "etc/state").read_text() == "one\n"
    assert _labels(realms, "r1") == ["first", dated["label"], "pre-restore"]

    realms("snapshot", "remove", "r1", "first")
    assert _labels(realms, "r1") == [dated["label"], "pre-restore"]
    assert "no snapshot 'first'" in realms.fails("snapshot", "remove", "r1", "first")
    assert "no snapshot 'first'" in realms.fails("restore", "r1", "first")


def test_labels_and_keep_snapshots(realms: Realms, base: str) -> None:
    realms("new", "r1")
    assert "invalid snapshot label" in realms.fails("snapshot", "r1", "../up")
    assert "invalid snapshot label" in realms.fails("snapshot", "r1", ".hidden")
    assert "'pre-rebase' is the one realms gives" in realms.fails("snapshot", "r1", "pre-rebase")
    realms("snapshot", "r1", "a")
    assert "has a snapshot 'a' already" in realms.fails("snapshot", "r1", "a")
    assert "no realm named 'nope'" in realms.fails("snapshot", "nope")

    config = realms.store / "realms/r1/config"
    config.write_text(config.read_text() + "keep-snapshots = 2\n")
    realms("snapshot", "r1", "b")
    dropped = realms("snapshot", "r1", "c").stderr
    assert "Removing snapshot a of realm r1 (keep-snapshots = 2)" in dropped
    assert _labels(realms, "r1") == ["b", "c"]
    # The roots realms keeps itself are not counted.
    realms("restore", "r1", "b")
    realms("snapshot", "r1", "d")
    assert sorted(_labels(realms, "r1")) == ["c", "d", "pre-restore"]
    config.write_text(config.read_text().replace("keep-snapshots = 2", "keep-snapshots = 0"))
    assert "keeps no snapshots" in realms.fails("snapshot", "r1", "e")


def test_a_realm_named_like_a_command(realms: Realms, base: str) -> None:
    realms("new", "list")
    realms("snapshot", "take", "list", "mine")
    assert _labels(realms, "list") == ["mine"]
    realms("snapshot", "remove", "list", "mine")
    assert _labels(realms, "list") == []


def test_image_realm_snapshot(realms: Realms, base: str) -> None:
    realms("key", "generate", "realmfs-user")
    realms("appimg", "seal", "base")
    realms("new", "r1")
    realms("run", "r1", "--root", "--", "sh", "-c", "echo one > /etc/state")
    taken = realms("snapshot", "r1", "one").stderr
    assert "not instant" in taken  # the layer is a directory: a reflink copy, said once
    (found,) = realms.json("snapshot", "list", "r1")
    assert (found["layer"], found["appimg_version"], found["kind"]) == ("upper", 2, "sealed")
    realms("run", "r1", "--root", "--", "sh", "-c", "echo two > /etc/state")
    realms("restore", "r1", "one")
    assert realms("run", "r1", "--", "cat", "/etc/state").stdout == "one\n"
    # The version below a snapshot's layer stays while the snapshot does.
    realms("update-appimg", "base", "--", "touch", "/etc/v3")
    realms("rebase", "r1")
    realms("snapshot", "remove", "r1", "pre-restore")
    pruned = realms("appimg", "prune", "base", "--keep", "1").stderr
    assert "r1 (snapshot one)" in pruned and "r1 (snapshot pre-rebase)" in pruned
    assert 2 in [v["version"] for v in realms.json("appimg", "versions", "base")]
    realms("snapshot", "remove", "r1", "one")
    realms("snapshot", "remove", "r1", "pre-rebase")
    realms("appimg", "prune", "base", "--keep", "1")
    assert [v["version"] for v in realms.json("appimg", "versions", "base")] == [3]
    realms("remove", "r1")  # its activation (a loop device) goes with it


def test_kills_while_taking_and_restoring(realms: Realms, base: str) -> None:
    realms("new", "r1")
    realms("run", "r1", "--root", "--", "sh", "-c", "echo one > /etc/state")
    result = realms(
        "snapshot", "r1", "half", check=False, env={"REALMS_KILL_AT": "snapshot:staged"}
    )
    assert result.returncode == -signal.SIGKILL
    assert _labels(realms, "r1") == []  # what the kill left is gone
    assert os.listdir(realms.store / "realms/r1/snapshots") == []
    realms("snapshot", "r1", "one")
    realms("run", "r1", "--root", "--", "sh", "-c", "echo two > /etc/state")
    for checkpoint, state in (("restore:recorded", "two"), ("restore:swapped", "one")):
        result = realms("restore", "r1", "one", check=False, env={"REALMS_KILL_AT": checkpoint})
        assert result.returncode == -signal.SIGKILL
        assert realms("run", "r1", "--", "cat", "/etc/state").stdout == f"{state}\n"
        labels = _labels(realms, "r1")
        assert labels == (["one"] if state == "two" else ["one", "pre-restore"]), checkpoint
        assert [e for e in os.listdir(realms.store / "realms/r1") if e.startswith(".")] == []
