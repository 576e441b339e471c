"""``realms gc``: it frees what it says (the real run exactly what the dry run listed), never
a pinned, current or used version, never removed/, never a blob a version's manifest names,
never a leftover whose command still runs (its lock held here), and a gc killed half-way
leaves a store the next command cleans up."""

from __future__ import annotations

import fcntl
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from realms.store import Layout, locks
from tests.helpers import Realms
from tests.registry_server import RunningRegistry

MIB = 1 << 20
DAY = 86400


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def _record_build_key(realms: Realms, version: int, key: str) -> None:
    """Make version ``version`` of base say it was built with ``key`` (as a build records)."""
    path = realms.store / "appimg/base/appimg.toml"
    record = tomllib.loads(path.read_text())
    for entry in record["versions"]:
        if entry["version"] == version:
            entry["build_key"] = key
    path.write_text(tomli_w.dumps(record))


def _versions(realms: Realms) -> list[int]:
    return [v["version"] for v in realms.json("appimg", "versions", "base")]


def _store_with_garbage(realms: Realms, tmp_path: Path) -> dict[str, Path]:
    """Versions 1 (pinned), 2 (block, a realm runs on it), 3 and 4 (old), 5 (current), with
    keep-versions = 1; garbage of every kind beside what must stay."""
    store = realms.store
    config = store / "config.toml"
    config.write_text(config.read_text() + "\nkeep-versions = 1\n")
    realms("appimg", "pin", "base", "1")
    realms("appimg", "seal", "base", "--no-verity")
    realms("new", "onblock")
    realms("appimg", "rollback", "base", "1")
    for number in (3, 4, 5):
        realms("update-appimg", "base", "--", "sh", "-c", f"echo {number} > /etc/v{number}")
    assert _versions(realms) == [1, 2, 3, 4, 5]
    realms("new", "gone")
    (store / "realms/gone/home/notes").write_text("keep me\n")
    realms("remove", "--keep-home", "gone")

    paths: dict[str, Path] = {}
    killed = paths["leftover"] = store / "realms/.new.killed.0badf00d"
    busy = paths["busy leftover"] = store / "realms/.new.busy.0badf00d"
    for tree in (killed, busy):
        tree.mkdir()
        (tree / "data").write_bytes(os.urandom(MIB))
    # Finished builds: one a version records, one nothing records.
    builds = store / "cache/builds"
    builds.mkdir(parents=True)
    kept_key, loose_key = "aa" * 32, "bb" * 32
    _record_build_key(realms, 5, kept_key)
    for key in (kept_key, loose_key):
        (builds / key / "var/lib/dpkg").mkdir(parents=True)
        (builds / f"{key}.used").touch()
    status = "Package: bar\nVersion: 2.0\nArchitecture: amd64\nStatus: install ok installed\n"
    (builds / kept_key / "var/lib/dpkg/status").write_text(status)
    paths["kept build"], paths["loose build"] = builds / kept_key, builds / loose_key
    paths["loose build marker"] = builds / f"{loose_key}.used"
    debs = store / "cache/packages/trixie"
    debs.mkdir(parents=True)
    for name in ("bar_2.0_amd64.deb", "foo_1.0_all.deb"):
        (debs / name).write_bytes(os.urandom(64 << 10))
    paths["needed deb"], paths["loose deb"] = debs / "bar_2.0_amd64.deb", debs / "foo_1.0_all.deb"
    # Blobs: an old one nothing names, a young one; partial files, old, young and in use.
    blobs = store / "cache/blobs/sha256"
    blobs.mkdir(parents=True)
    for name, age in (("old blob", 2 * 3600), ("young blob", 60)):
        path = paths[name] = blobs / (("cd" if name == "old blob" else "ef") * 32)
        path.write_bytes(os.urandom(MIB))
        _age(path, age)
    partial = store / "cache/blobs/partial"
    partial.mkdir()
    for name, file, age in (
        ("stale partial", "sha256-" + "12" * 32, 2 * DAY),
        ("young partial", "sha256-" + "34" * 32, 3600),
        ("stale push", ".push.0badf00d", 2 * DAY),
        ("written partial", "sha256-" + "56" * 32, 2 * DAY),
    ):
        path = paths[name] = partial / file
        path.write_bytes(os.urandom(256 << 10))
        _age(path, age)
    return paths


LISTED = {"leftover", "loose build", "loose deb", "old blob", "stale partial", "stale push"}
FREED = LISTED | {"loose build marker"}  # freed with its build


def test_gc_frees_exactly_what_the_dry_run_lists(realms: Realms, base: str, tmp_path: Path) -> None:
    paths = _store_with_garbage(realms, tmp_path)
    store = realms.store
    removed_home = next((store / "removed").iterdir())
    layout = Layout(store)
    versions = {n: store / f"appimg/base/v{n}" for n in (1, 3, 4, 5)} | {
        2: store / "appimg/base/v2.img"
    }
    expected = {str(paths[name]) for name in LISTED} | {str(versions[3]), str(versions[4])}
    # A command that runs holds the lock of the busy leftover; a pull writes one partial file.
    with (
        locks.hold(layout.realm_lock_path("busy"), what="realm busy"),
        open(paths["written partial"], "rb") as writing,
    ):
        fcntl.flock(writing.fileno(), fcntl.LOCK_EX)
        dry = realms.json("gc", "--dry-run")
        assert {entry["path"] for entry in dry["freed"]} == expected
        assert all(path.exists() for path in [*paths.values(), *versions.values()])
        skipped = {entry["path"]: entry["reason"] for entry in dry["skipped"]}
        assert "its command runs" in skipped[str(paths["busy leftover"])]
        assert "in the last hour" in skipped[str(paths["young blob"])]
        assert "writing it" in skipped[str(paths["written partial"])]
        assert dry["removed"]["entries"] == 1
        assert dry["total"] == sum(entry["bytes"] for entry in dry["freed"]) >= 2 * MIB

        real = realms.json("gc")
    assert real["dry_run"] is False
    assert real["freed"] == dry["freed"]
    assert real["skipped"] == dry["skipped"]
    assert not any(os.path.lexists(path) for path in expected)
    assert not os.path.lexists(paths["loose build marker"])
    kept = set(paths) - FREED
    assert all(paths[name].exists() for name in kept), [n for n in kept if not paths[n].exists()]
    # Never the pinned (1), the used (2: a block realm runs on it) or the current (5).
    assert _versions(realms) == [1, 2, 5]
    assert realms("run", "onblock", "--", "true").returncode == 0
    assert (removed_home / "notes").read_text() == "keep me\n"
    # The busy leftover and the partial file go once their commands ended (the leftover, by
    # gc or by the sweep of the run above); then nothing is left to free.
    after = {e["path"] for e in realms.json("gc")["freed"]}
    ended = {str(paths["busy leftover"]), str(paths["written partial"])}
    assert str(paths["written partial"]) in after and after <= ended
    assert not any(os.path.lexists(path) for path in ended)
    again = realms.json("gc", "--dry-run")
    assert again["freed"] == [] and again["total"] == 0
    text = realms("gc", "--dry-run").stderr
    assert "nothing to free" in text and "removed/ holds 1 homes" in text


def test_gc_killed_half_way_leaves_a_consistent_store(realms: Realms, base: str) -> None:
    config = realms.store / "config.toml"
    config.write_text(config.read_text() + "\nkeep-versions = 1\n")
    for number in (2, 3):
        realms("update-appimg", "base", "--", "sh", "-c", f"echo {number} > /etc/v{number}")
    realms("new", "dev")
    # Killed when the first version was renamed away but not yet deleted.
    result = realms("gc", check=False, env={"REALMS_KILL_AT": "discard:renamed"})
    assert result.returncode == -9
    assert _versions(realms) == [2, 3]  # the record was written before the tree went
    assert realms.json("status")["leftovers"] == 1
    dry = realms.json("gc", "--dry-run")
    (leftover, version) = dry["freed"]
    assert leftover["what"] == "leftover" and Path(leftover["path"]).name.startswith(".del.v1.")
    assert version["what"] == "version" and version["path"].endswith("/appimg/base/v2")
    realms("gc")
    assert _versions(realms) == [3]
    assert realms.json("status")["leftovers"] == 0
    assert sorted(os.listdir(realms.store / "appimg/base")) == ["appimg.toml", "v3"]
    assert realms("run", "dev", "--", "true").returncode == 0


# Registry blobs: a pushed version's manifest, and what it names, stay.


def test_gc_keeps_the_blobs_of_a_pushed_version(
    realms: Realms, base: str, registry: RunningRegistry, tmp_path: Path
) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    env = {"CONTAINERS_REGISTRIES_CONF": str(conf)}
    realms("appimg", "push", "base", f"{registry.host}/base:1", env=env)
    blobs = realms.store / "cache/blobs/sha256"
    pushed = sorted(blobs.iterdir())
    assert len(pushed) >= 2  # its layer and its manifest (and its config)
    loose = blobs / ("cd" * 32)
    loose.write_bytes(b"nothing names me\n")
    for path in [*pushed, loose]:
        _age(path, 2 * 3600)
    result: dict[str, Any] = realms.json("gc")
    assert [e["path"] for e in result["freed"] if e["what"] == "blob"] == [str(loose)]
    assert sorted(blobs.iterdir()) == pushed
