"""``realms df``: the numbers add up (a realm shares its version's files until it writes its
own), each method says what it is (btrfs filesystem du, qgroups on a pool with quotas, du on
the copy backend), and caches, leftovers, removed homes and what gc would free are counted.
Snapshots measured from what changed in them agree with a full ``btrfs filesystem du``."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from tests.helpers import Realms, make_btrfs, run

MIB = 1 << 20


def _row(report: dict[str, Any], name: str, kind: str) -> dict[str, Any]:
    rows = [r for r in report["objects"] if r["object"] == name and r["kind"] == kind]
    assert len(rows) == 1, (name, kind, report["objects"])
    row: dict[str, Any] = rows[0]
    return row


def _write(realms: Realms, realm: str, path: str, mib: int) -> None:
    script = f"head -c {mib * MIB} /dev/urandom > {path} && sync"
    realms("run", "--root", realm, "--", "sh", "-c", script)


def _assert_sharing(realms: Realms) -> None:
    """A realm made from a version shares its files; 10 MiB written in it are its own."""
    realms("new", "dev")
    report = realms.json("df")
    version = _row(report, "base v1", "version")
    assert version["note"] == "current"
    root = _row(report, "dev", "root")
    # The version's files are shared by the realm, nothing of them is exclusive to either.
    assert version["shared"] > MIB and version["exclusive"] < 64 << 10
    assert abs(root["shared"] - version["shared"]) < 64 << 10
    assert root["exclusive"] < 64 << 10
    assert _row(report, "dev", "home")["shared"] == 0

    _write(realms, "dev", "/big", 10)
    after = realms.json("df")
    root = _row(after, "dev", "root")
    assert 10 * MIB <= root["exclusive"] < 10 * MIB + (256 << 10)
    # qgroups count metadata too: the realm's copied tree blocks are its own after a write.
    assert abs(root["shared"] - version["shared"]) < 256 << 10
    assert _row(after, "base v1", "version")["exclusive"] < 256 << 10
    assert after["exclusive"] >= 10 * MIB
    assert after["filesystem"]["used"] <= after["filesystem"]["size"]


def test_a_realm_shares_its_version_until_it_writes(realms: Realms, base: str) -> None:
    _assert_sharing(realms)
    report = realms.json("df")
    assert report["method"] == "filesystem du"
    # The realm's root is a snapshot of its version: measured from what it changed.
    assert _row(report, "dev", "root")["shared_estimated"] is True
    assert _row(report, "base v1", "version")["shared_estimated"] is False
    text = realms("df").stdout
    assert "measured with: btrfs filesystem du" in text
    assert "1 snapshots (realm roots, updated versions) from what changed" in text
    assert (
        "dev" in text
        and "MiB" in text
        and text.splitlines()[0].split()[:2]
        == [
            "OBJECT",
            "KIND",
        ]
    )
    total = [line for line in text.splitlines() if line.startswith("total")]
    assert len(total) == 1 and "MiB" in total[0]


def test_qgroups_where_quotas_are_enabled(
    mount_guard: Path, busybox_tree: Path, tmp_path: Path
) -> None:
    pool = mount_guard / "mnt"
    make_btrfs(mount_guard / "pool.img", pool, "2G")
    # Quotas on a pool of the test's own: realms never enables them itself.
    run("btrfs", "quota", "enable", str(pool))
    realms = Realms(pool / "store")
    realms("init")
    realms("appimg", "import", "base", str(busybox_tree))
    run("btrfs", "quota", "rescan", "-w", str(pool))
    _assert_sharing(realms)
    report = realms.json("df")
    assert report["method"] == "qgroups"
    assert "btrfs qgroups" in realms("df").stdout


def test_copy_backend_uses_du(store_dir: Path, busybox_tree: Path) -> None:
    realms = Realms(store_dir)
    realms("init", "--backend", "copy")
    realms("appimg", "import", "base", str(busybox_tree))
    realms("new", "plain")
    report = realms.json("df")
    assert report["method"] == "du"
    version, root = _row(report, "base v1", "version"), _row(report, "plain", "root")
    # Plain copies: nothing is known to be shared, each holds its own bytes.
    assert version["shared"] == root["shared"] == 0
    assert version["exclusive"] > MIB and abs(root["exclusive"] - version["exclusive"]) < MIB
    assert "du (copy backend" in realms("df").stdout


def test_caches_leftovers_removed_homes_and_what_gc_frees(realms: Realms, base: str) -> None:
    realms("new", "gone")
    (realms.store / "realms/gone/home/notes").write_bytes(os.urandom(2 * MIB))
    realms("remove", "--keep-home", "gone")
    # A killed `realms new` left its tree; a blob no version refers to, two hours old.
    leftover = realms.store / "realms/.new.killed.0badf00d"
    leftover.mkdir()
    (leftover / "data").write_bytes(os.urandom(3 * MIB))
    blobs = realms.store / "cache/blobs/sha256"
    blobs.mkdir(parents=True)
    blob = blobs / ("ab" * 32)
    blob.write_bytes(os.urandom(MIB))
    old = time.time() - 7200
    os.utime(blob, (old, old))

    report = realms.json("df")
    temporary, removed = report["leftovers"]["temporary"], report["leftovers"]["removed"]
    assert temporary["entries"] == 1 and 3 * MIB <= temporary["exclusive"] < 4 * MIB
    assert removed["entries"] == 1 and 2 * MIB <= removed["exclusive"] < 3 * MIB
    assert report["caches"]["blobs"]["entries"] == 1
    assert MIB <= report["caches"]["blobs"]["exclusive"] < 2 * MIB
    dry = realms.json("gc", "--dry-run")
    assert report["gc_would_free"] == dry["total"] >= 4 * MIB
    assert {entry["path"] for entry in dry["freed"]} == {str(leftover), str(blob)}
    text = realms("df").stdout
    assert "removed/ holds 1 homes" in text and "realms gc never frees them" in text
    assert "would free 4.0 MiB" in text


def _truth(paths: list[str]) -> dict[str, tuple[int, int]]:
    """Exclusive and shared bytes of each path by a full ``btrfs filesystem du`` walk."""
    found = {}
    for line in run("btrfs", "filesystem", "du", "--raw", "-s", *paths).splitlines()[1:]:
        _total, exclusive, shared, name = line.split(maxsplit=3)
        found[name] = (int(exclusive), int(shared))
    return found


def test_snapshots_measured_from_their_changes_agree_with_a_full_walk(
    realms: Realms, busybox_tree: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(busybox_tree, tree, symlinks=True)
    (tree / "data/docs").mkdir(parents=True)
    for name, size in (("a", 3 * MIB), ("b", MIB), ("c", 2 * MIB)):
        (tree / "data" / name).write_bytes(os.urandom(size))
    for index in range(10):
        (tree / f"data/docs/{index}").write_bytes(os.urandom(100_000))
    realms("appimg", "import", "base", str(tree))
    realms("new", "old")
    # Like a package upgrade: a tree deleted, a file replaced by a new one, one rewritten in place.
    script = (
        "rm -r /data/docs && head -c 500000 /dev/urandom > /data/b.new && mv /data/b.new /data/b"
        " && head -c 65536 /dev/urandom | dd of=/data/a bs=65536 seek=4 conv=notrunc"
    )
    realms("update-appimg", "base", "--", "sh", "-c", script)
    realms("new", "fresh")
    _write(realms, "old", "/big", 10)
    old = realms.store / "realms/old/rootfs"
    (old / "data/c").unlink()
    with (old / "data/a").open("r+b") as file:
        file.seek(MIB)
        file.write(os.urandom(128 << 10))
    # A reflinked copy of a file of the version shares its bytes, it does not add any.
    run("cp", "--reflink=always", old / "data/b", old / "data/b-copy")
    _write(realms, "fresh", "/mine", 2)
    realms("snapshot", "fresh", "one")
    _write(realms, "fresh", "/later", 1)

    report = realms.json("df")
    measured = [r for r in report["objects"] if r["kind"] in ("version", "root")]
    truth = _truth([r["path"] for r in measured])
    estimated = {(r["object"], r["kind"]) for r in measured if r["shared_estimated"]}
    assert estimated == {("base v2", "version"), ("old", "root"), ("fresh", "root")}
    for row in measured:
        exclusive, shared = truth[row["path"]]
        assert row["exclusive"] == exclusive, (row, truth[row["path"]])
        assert abs(row["shared"] - shared) <= 64 << 10, (row, truth[row["path"]])
    assert 10 * MIB <= _row(report, "old", "root")["exclusive"] < 11 * MIB
    # /mine is shared with the snapshot taken after it, /later is the root's alone.
    fresh = _row(report, "fresh", "root")
    assert MIB <= fresh["exclusive"] < MIB + (256 << 10)
    assert _row(report, "fresh", "snapshots")["exclusive"] < 256 << 10
