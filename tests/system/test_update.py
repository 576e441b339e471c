"""update-appimg: a root shell (or a command) on a working snapshot, committed as a new version
on exit 0 and never otherwise; versions, rollback, prune, pins; one update at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pexpect

from realms.system import btrfs
from tests.helpers import Realms


def _versions(realms: Realms) -> list[int]:
    return [v["version"] for v in realms.json("appimg", "versions", "base")]


def _current(realms: Realms) -> int:
    current: int = realms.json("appimg", "show", "base")["version"]
    return current


def _nspawn_running(machine: str) -> bool:
    found = subprocess.run(
        ["pgrep", "-f", "--", f"--machine={machine}"], capture_output=True, check=False
    )
    return found.returncode == 0


def test_interactive_shell_commits_on_exit_zero(realms: Realms, base: str) -> None:
    realms("new", "before")
    shell = realms.interactive("update-appimg")  # no name: the default appimg, base
    shell.expect_exact("[+]: Entering root shell on base appimg")
    shell.sendline("echo added > /etc/added-by-update; echo host=$(hostname) uid=$(id -u)")
    shell.expect("host=base-appimg-update uid=0")
    shell.sendline("exit")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 0
    assert "Committed appimg base version 2" in (shell.before or "")

    assert _versions(realms) == [1, 2] and _current(realms) == 2
    (v1, v2) = realms.json("appimg", "versions", "base")
    assert v2["origin"] == "update" and v2["detail"] == "interactive shell"
    assert v2["parent"] == 1 and v2["current"] is True and v1["current"] is False
    assert v2["files_changed"] >= 1 and v2["written"] >= len("added\n")
    store = realms.store
    assert (store / "appimg/base/v2/etc/added-by-update").read_text() == "added\n"
    assert not (store / "appimg/base/v1/etc/added-by-update").exists()
    assert btrfs.is_readonly(store / "appimg/base/v2")
    # Realms are never touched: the old one lacks the file and shows as outdated.
    realms("new", "after")
    assert not (store / "realms/before/rootfs/etc/added-by-update").exists()
    assert (store / "realms/after/rootfs/etc/added-by-update").exists()
    listed = {r["name"]: r for r in realms.json("list")}
    assert listed["before"]["outdated"] is True and listed["before"]["appimg_version"] == 1
    assert listed["after"]["outdated"] is False
    assert realms.json("status")["leftovers"] == 0


def test_interactive_shell_failing_commits_nothing(realms: Realms, base: str) -> None:
    shell = realms.interactive("update-appimg", "base")
    shell.expect_exact("Entering root shell on base appimg")
    shell.sendline("touch /etc/not-committed; exit 9")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 9
    assert "nothing committed" in (shell.before or "")
    assert _versions(realms) == [1]
    assert realms.json("status")["leftovers"] == 0
    assert not (realms.store / "appimg/base/v1/etc/not-committed").exists()


def test_killed_mid_shell_commits_nothing(realms: Realms, base: str) -> None:
    shell = realms.interactive("update-appimg", "base")
    shell.expect_exact("Entering root shell on base appimg")
    shell.sendline("touch /etc/not-committed; echo ready")
    shell.expect("ready")
    os.kill(shell.pid, signal.SIGKILL)
    shell.expect(pexpect.EOF)
    shell.close()
    # The kernel told nspawn that realms died: the container stops too.
    deadline = time.monotonic() + 20
    while _nspawn_running("base-appimg-update") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _nspawn_running("base-appimg-update")
    assert _versions(realms) == [1]
    assert realms.json("status")["leftovers"] == 1  # the working copy, until the next command
    realms("update-appimg", "base", "--", "true")
    assert realms.json("status")["leftovers"] == 0
    assert not (realms.store / "appimg/base/v2/etc/not-committed").exists()


def test_terminal_closed_commits_nothing(realms: Realms, base: str) -> None:
    shell = realms.interactive("update-appimg", "base")
    shell.expect_exact("Entering root shell on base appimg")
    shell.sendline("touch /etc/not-committed; echo ready")
    shell.expect("ready")
    # As when the terminal window closes: SIGHUP to the foreground process group.
    os.killpg(os.getpgid(shell.pid), signal.SIGHUP)
    shell.expect(pexpect.EOF, timeout=60)
    shell.wait()
    assert not _nspawn_running("base-appimg-update")
    assert _versions(realms) == [1]
    assert realms.json("status")["leftovers"] == 0  # removed before realms exited


def test_command_updates_and_passes_exit_status(realms: Realms, base: str) -> None:
    made = realms("update-appimg", "base", "--", "sh", "-c", "echo v2 > /etc/release-note")
    assert "Committed appimg base version 2" in made.stderr
    assert realms.json("appimg", "versions", "base")[1]["detail"] == (
        "sh -c 'echo v2 > /etc/release-note'"
    )
    failed = realms("update-appimg", "base", "--", "sh", "-c", "touch /etc/x; exit 4", check=False)
    assert failed.returncode == 4 and "nothing committed" in failed.stderr
    discarded = realms("update-appimg", "--discard", "base", "--", "touch", "/etc/scratch")
    assert discarded.returncode == 0 and "Discarded" in discarded.stderr
    assert _versions(realms) == [1, 2]
    assert not (realms.store / "appimg/base/v2/etc/x").exists()
    # nspawn bound the host's resolv.conf on an empty file it made: that file is not kept.
    assert not os.path.lexists(realms.store / "appimg/base/v2/etc/resolv.conf")
    assert realms.json("status")["leftovers"] == 0
    assert "no appimg named 'nothing'" in realms.fails("update-appimg", "nothing", "--", "true")


def test_one_update_at_a_time_while_realms_are_made(realms: Realms, base: str) -> None:
    long = realms.spawn("update-appimg", "base", "--", "sh", "-c", "sleep 3; touch /etc/slow")
    try:
        deadline = time.monotonic() + 20
        while not _nspawn_running("base-appimg-update") and time.monotonic() < deadline:
            time.sleep(0.05)
        error = realms.fails("update-appimg", "base", "--", "true")
        assert "appimg 'base' is being updated" in error and "update-appimg base" in error
        assert "being updated" in realms.fails("appimg", "remove", "base")
        started = time.monotonic()
        realms("new", "during")
        assert time.monotonic() - started < 2.5, "realms new must not wait for the update"
        assert realms.json("show", "during")["appimg_version"] == 1
    finally:
        assert long.wait(timeout=60) == 0
    assert _current(realms) == 2
    assert realms.json("show", "during")["outdated"] is True


def test_rollback(realms: Realms, base: str) -> None:
    assert "no version older" in realms.fails("appimg", "rollback", "base")
    realms("update-appimg", "base", "--", "touch", "/etc/two")
    realms("update-appimg", "base", "--", "touch", "/etc/three")
    realms("new", "on-three")
    result = realms("appimg", "rollback", "base")
    assert "back at version 2 (was 3)" in result.stderr
    assert _current(realms) == 2 and _versions(realms) == [1, 2, 3]
    realms("new", "on-two")
    assert not (realms.store / "realms/on-two/rootfs/etc/three").exists()
    assert realms.json("show", "on-three")["outdated"] is True
    realms("appimg", "rollback", "base", "1")
    assert _current(realms) == 1
    assert "already current" in realms.fails("appimg", "rollback", "base", "1")
    assert "has no version 7" in realms.fails("appimg", "rollback", "base", "7")
    # An update after a rollback starts from the current version and gets a new number.
    realms("update-appimg", "base", "--", "touch", "/etc/four")
    (*_, newest) = realms.json("appimg", "versions", "base")
    assert newest["version"] == 4 and newest["parent"] == 1 and newest["current"] is True
    assert not (realms.store / "appimg/base/v4/etc/three").exists()
    history = [
        (c["action"], c["version"]) for c in realms.json("appimg", "show", "base")["history"]
    ]
    assert history[-4:] == [("update", 3), ("rollback", 2), ("rollback", 1), ("update", 4)]


def test_prune_spares_current_and_pinned(realms: Realms, base: str) -> None:
    for number in range(2, 6):
        realms("update-appimg", "base", "--", "touch", f"/etc/v{number}")
    realms("appimg", "pin", "base", "2")
    assert realms.json("appimg", "versions", "base")[1]["pinned"] is True
    result = realms("appimg", "prune", "base", "--keep", "2")
    assert "Removed versions 1, 3" in result.stderr
    assert _versions(realms) == [2, 4, 5]
    assert sorted(os.listdir(realms.store / "appimg/base")) == ["appimg.toml", "v2", "v4", "v5"]
    realms("appimg", "rollback", "base", "4")
    realms("appimg", "unpin", "base", "2")
    realms("appimg", "prune", "base", "--keep", "1")
    assert _versions(realms) == [4, 5]  # 4 is current, 5 the newest
    assert "Nothing to prune" in realms("appimg", "prune", "base", "--keep", "5").stderr
    assert "at least 1" in realms.fails("appimg", "prune", "base", "--keep", "0")
    assert "has no version 9" in realms.fails("appimg", "pin", "base", "9")
    # The default count comes from the global config.
    config = realms.store / "config.toml"
    config.write_text(config.read_text() + "\nkeep-versions = 1\n")
    realms("appimg", "rollback", "base", "5")
    realms("appimg", "prune", "base")
    assert _versions(realms) == [5]


def test_kill_between_rename_and_record(realms: Realms, base: str) -> None:
    killed = realms(
        "update-appimg",
        "base",
        "--",
        "touch",
        "/etc/lost",
        check=False,
        env={"REALMS_KILL_AT": "appimg-update:renamed"},
    )
    assert killed.returncode == -signal.SIGKILL
    assert _versions(realms) == [1]  # the record never named the new tree
    realms("update-appimg", "base", "--", "touch", "/etc/kept")
    assert _versions(realms) == [1, 2]
    v2 = realms.store / "appimg/base/v2"
    assert (v2 / "etc/kept").exists() and not (v2 / "etc/lost").exists()


def test_update_commit_does_not_touch_running_realms(
    realms: Realms, base: str, tmp_path: Path
) -> None:
    realms("new", "busy")
    running = realms.spawn("run", "busy", "--", "sleep", "3")
    try:
        realms("update-appimg", "base", "--", "touch", "/etc/while-running")
    finally:
        assert running.wait(timeout=30) == 0
    assert not (realms.store / "realms/busy/rootfs/etc/while-running").exists()
    assert realms.json("show", "busy")["outdated"] is True
