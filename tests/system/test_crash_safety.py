"""Concurrency and kills, for real: many processes at once, and SIGKILL at exact checkpoints
(realms.faults) and at random moments. The store must never show a half-made realm or appimg, and
the next command that takes the same lock must clean up what a killed one left."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from realms.system import btrfs
from tests.helpers import Realms, run


def _assert_consistent(realms: Realms) -> list[str]:
    """Every listed realm is complete; return their names."""
    names = []
    for realm in realms.json("list"):
        directory = realms.store / "realms" / realm["name"]
        assert btrfs.is_subvolume(directory / "rootfs")
        assert (directory / "home").is_dir() and (directory / "config").is_file()
        names.append(realm["name"])
    for appimg in realms.json("appimg", "list"):
        for version in appimg["versions"]:
            assert btrfs.is_readonly(
                realms.store / "appimg" / appimg["name"] / f"v{version['version']}"
            )
    return names


def _leftovers(realms: Realms) -> int:
    count: int = realms.json("status")["leftovers"]
    return count


def test_twenty_concurrent_new_realms(realms: Realms, base: str) -> None:
    processes = [realms.spawn("new", f"r{i}") for i in range(20)]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in processes]
    assert all(code == 0 for code, _ in results), results
    names = _assert_consistent(realms)
    assert sorted(names) == sorted(f"r{i}" for i in range(20))
    assert sum(1 for r in realms.json("list") if r["default"]) == 1
    assert _leftovers(realms) == 0


def test_same_name_exactly_one_wins(realms: Realms, base: str) -> None:
    for attempt in range(3):
        name = f"contested{attempt}"
        processes = [realms.spawn("new", name) for _ in range(4)]
        outcomes = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in processes]
        winners = [err for code, err in outcomes if code == 0]
        losers = [err for code, err in outcomes if code != 0]
        assert len(winners) == 1, outcomes
        assert all(f"realm '{name}' already exists" in err for err in losers), losers
        assert all(err.count("realms: error:") == 1 for err in losers)
    assert len(_assert_consistent(realms)) == 3


def _killed_at(realms: Realms, checkpoint: str, *args: str) -> None:
    result = realms(*args, check=False, env={"REALMS_KILL_AT": checkpoint})
    assert result.returncode == -signal.SIGKILL, (checkpoint, result.stderr)


def test_kill_while_making_a_realm(realms: Realms, base: str) -> None:
    _killed_at(realms, "realm-new:staged", "new", "half")
    assert "half" not in _assert_consistent(realms)
    assert _leftovers(realms) == 1
    realms("new", "other")  # sweeps what the killed command left
    assert _leftovers(realms) == 0
    realms("new", "half")
    assert realms("run", "half", "--", "hostname").stdout.strip() == "half"

    _killed_at(realms, "realm-new:renamed", "new", "whole")
    assert "whole" in _assert_consistent(realms)
    assert realms("run", "whole", "--", "true").returncode == 0


def test_kill_while_removing(realms: Realms, base: str) -> None:
    realms("new", "doomed")
    _killed_at(realms, "discard:renamed", "remove", "doomed")
    assert "doomed" not in _assert_consistent(realms)
    assert _leftovers(realms) == 1
    realms("new", "doomed")  # the same name's lock: its leftover goes first
    assert _leftovers(realms) == 0

    (realms.store / "realms/doomed/home/file").write_text("mine\n")
    _killed_at(realms, "realm-remove:home-kept", "remove", "doomed", "--keep-home")
    (kept,) = (realms.store / "removed").iterdir()
    assert (kept / "file").read_text() == "mine\n"
    realms("remove", "doomed", "--keep-home")  # finishes the job, the home stays where it went
    assert list((realms.store / "removed").iterdir()) == [kept]
    assert realms.json("list") == []

    _killed_at(realms, "discard:renamed", "appimg", "remove", "base")
    assert realms.json("appimg", "list") == []
    assert _leftovers(realms) == 1


def test_kill_while_importing(realms: Realms, busybox_tree: Path) -> None:
    for checkpoint in ("appimg-import:extracted", "appimg-import:staged"):
        _killed_at(realms, checkpoint, "appimg", "import", "base", str(busybox_tree))
        assert realms.json("appimg", "list") == []
        assert _leftovers(realms) == 1
        realms("appimg", "import", "base", str(busybox_tree))
        assert _leftovers(realms) == 0
        realms("appimg", "remove", "base")

    realms("appimg", "import", "base", str(busybox_tree))
    _killed_at(
        realms,
        "appimg-version:renamed",
        "appimg",
        "import",
        "base",
        str(busybox_tree),
        "--new-version",
    )
    # The new tree is in place, but the record was not updated: version 1 is still current.
    shown = realms.json("appimg", "show", "base")
    assert shown["version"] == 1 and len(shown["versions"]) == 1
    realms("new", "from-v1")
    assert realms.json("show", "from-v1")["appimg_version"] == 1
    realms("appimg", "import", "base", str(busybox_tree), "--new-version")
    shown = realms.json("appimg", "show", "base")
    assert shown["version"] == 2 and [v["version"] for v in shown["versions"]] == [1, 2]
    assert sorted(os.listdir(realms.store / "appimg/base")) == ["appimg.toml", "v1", "v2"]


def test_random_kills_while_making_realms(realms: Realms, base: str) -> None:
    rng = random.Random(1234)
    for i in range(15):
        process = realms.spawn("new", f"k{i}")
        time.sleep(rng.uniform(0.0, 0.12))
        process.kill()
        process.wait(timeout=30)
    names = _assert_consistent(realms)
    realms("new", "after-kills")
    assert _leftovers(realms) == 0
    # Every name that did not make it can be made now.
    for i in range(15):
        if f"k{i}" not in names:
            realms("new", f"k{i}")
    assert len(_assert_consistent(realms)) == 16


@pytest.fixture(scope="module")
def bulky_tarball(tmp_path_factory: pytest.TempPathFactory, busybox_tree: Path) -> Path:
    """A tarball that takes a while to extract, so that kills land mid-extraction."""
    root = tmp_path_factory.mktemp("bulky") / "root"
    run("cp", "-a", f"{busybox_tree}/.", f"{root}/")
    for directory in range(40):
        folder = root / "usr/share/bulk" / str(directory)
        folder.mkdir(parents=True)
        for number in range(50):
            (folder / f"f{number}").write_bytes(os.urandom(8192))
    target = root.parent / "bulky.tar.gz"
    run("tar", "--create", "--gzip", "--file", target, "--directory", root, ".")
    return target


def test_random_kills_while_importing(realms: Realms, bulky_tarball: Path) -> None:
    rng = random.Random(99)
    for _ in range(8):
        process = realms.spawn("appimg", "import", "bulky", str(bulky_tarball))
        time.sleep(rng.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        listed = realms.json("appimg", "list")
        assert listed == [] or [a["name"] for a in listed] == ["bulky"]
        _assert_consistent(realms)
        if listed:
            realms("appimg", "remove", "bulky")
    realms("appimg", "import", "bulky", str(bulky_tarball))
    assert _leftovers(realms) == 0
    assert (realms.store / "appimg/bulky/v1/usr/share/bulk/39/f49").stat().st_size == 8192


def test_sigterm_cleans_up_at_once(realms: Realms, bulky_tarball: Path) -> None:
    """A terminated (not killed) command stops its helpers (tar), removes its own temporary
    names and exits, whatever it was doing when the signal came."""
    interrupted = 0
    for delay in (0.05, 0.2, 0.35, 0.5, 0.8):
        process = realms.spawn("appimg", "import", "bulky", str(bulky_tarball))
        time.sleep(delay)
        process.terminate()
        code = process.wait(timeout=60)
        stderr = process.stderr.read() if process.stderr else ""
        # Signalled before its handler is in place (starting) or after it is gone (exiting),
        # realms simply dies: before, nothing was made; after, the import was complete.
        finished = code in (0, -signal.SIGTERM)
        if not finished:
            interrupted += 1
            assert code == 1 and "interrupted by SIGTERM" in stderr, stderr
        assert _leftovers(realms) == 0
        listed = [a["name"] for a in realms.json("appimg", "list")]
        assert listed in ([], ["bulky"]) and (finished or not listed)
        if listed:
            realms("appimg", "remove", "bulky")
    assert interrupted >= 2, "SIGTERM should have landed during most imports"
    assert subprocess.run(["pgrep", "-f", "tar --extract"], check=False).returncode == 1
