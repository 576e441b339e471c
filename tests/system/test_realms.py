"""Realms: made by snapshot from an appimg, listed, run with systemd-nspawn, removed."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pexpect

from realms.system import btrfs
from tests.helpers import Realms, run


def test_new_realm_is_a_writable_snapshot_with_home(realms: Realms, base: str) -> None:
    realms("new", "work")
    directory = realms.store / "realms/work"
    assert btrfs.is_subvolume(directory / "rootfs")
    assert not btrfs.is_readonly(directory / "rootfs")
    home = os.lstat(directory / "home")
    assert (home.st_uid, home.st_gid) == (1000, 1000)
    assert stat.S_IMODE(home.st_mode) == 0o700
    assert all(os.lstat(p).st_uid == 1000 for p in (directory / "home").iterdir())
    config = (directory / "config").read_text()
    assert 'realmfs = "base"' in config and "use-network" in config

    shown = realms.json("show", "work")
    assert shown["name"] == "work"
    assert shown["appimg"] == base and shown["appimg_version"] == 1
    assert shown["outdated"] is False and shown["default"] is True
    assert [r["name"] for r in realms.json("list")] == ["work"]
    assert realms.json("appimg", "show", "base")["realms"] == ["work"]


def test_realm_is_independent_of_its_appimg(realms: Realms, base: str, tmp_path: Path) -> None:
    realms("new", "one")
    realms("run", "one", "--root", "--", "sh", "-c", "echo changed > /etc/marker")
    realms("new", "two")
    assert (realms.store / "realms/one/rootfs/etc/marker").exists()
    assert not (realms.store / "realms/two/rootfs/etc/marker").exists()
    assert not (realms.store / "appimg/base/v1/etc/marker").exists()


def test_new_version_marks_older_realms_outdated(
    realms: Realms, base: str, busybox_tree: Path, tmp_path: Path
) -> None:
    realms("new", "old")
    newer = tmp_path / "newer"
    run("cp", "-a", busybox_tree, newer)
    (newer / "etc/added-in-v2").write_text("v2\n")
    realms("appimg", "import", "base", str(newer), "--new-version")
    realms("new", "fresh")
    listed = {r["name"]: r for r in realms.json("list")}
    assert listed["old"]["outdated"] is True and listed["old"]["appimg_version"] == 1
    assert listed["old"]["appimg_current_version"] == 2
    assert listed["fresh"]["outdated"] is False and listed["fresh"]["appimg_version"] == 2
    assert realms("run", "fresh", "--", "cat", "/etc/added-in-v2").stdout == "v2\n"
    assert realms("run", "old", "--", "test", "-e", "/etc/added-in-v2", check=False).returncode == 1
    table = realms("list").stdout
    assert "outdated (appimg is at version 2)" in table


def test_run_as_user_in_home_with_hostname_and_exit_status(realms: Realms, base: str) -> None:
    realms("new", "box")
    result = realms(
        "run",
        "box",
        "--",
        "sh",
        "-c",
        "id -u; id -g; hostname; pwd; echo $HOME; exit 7",
        check=False,
    )
    assert result.returncode == 7
    assert result.stdout.split() == ["1000", "1000", "box", "/home/user", "/home/user"]
    assert "propagate" not in result.stderr
    assert realms("run", "box", "--root", "--", "id", "-u").stdout.strip() == "0"


def test_run_passes_stdin_and_writes_home(realms: Realms, base: str) -> None:
    realms("new", "pipe")
    out = realms("run", "pipe", "--", "sh", "-c", "cat > note; wc -c < note", input="hello\n")
    assert out.stdout.strip() == "6"
    note = realms.store / "realms/pipe/home/note"
    assert note.read_text() == "hello\n"
    assert os.lstat(note).st_uid == 1000


def test_shell_is_interactive(realms: Realms, base: str) -> None:
    realms("new", "term")
    shell = realms.interactive("shell", "term")
    shell.sendline("echo result=$((6*7)) uid=$(id -u) host=$(hostname)")
    shell.expect("result=42 uid=1000 host=term")
    shell.sendline("exit 5")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 5

    root = realms.interactive("shell", "--root")  # no name: the default realm
    root.sendline("echo uid=$(id -u)")
    root.expect("uid=0")
    root.sendline("exit")
    root.expect(pexpect.EOF)
    root.close()
    assert root.exitstatus == 0


def test_remove_realm_and_keep_home(realms: Realms, base: str) -> None:
    realms("new", "a")
    realms("new", "b")
    (realms.store / "realms/b/home/precious").write_text("keep me\n")
    realms("remove", "a")
    assert not (realms.store / "realms/a").exists()
    assert "no default realm" in realms.fails("default")
    result = realms("remove", "b", "--keep-home")
    kept = list((realms.store / "removed").iterdir())
    assert len(kept) == 1 and (kept[0] / "precious").read_text() == "keep me\n"
    assert str(kept[0]) in result.stderr
    assert realms.json("list") == []
    assert "no realm named 'a'" in realms.fails("remove", "a")


def test_default_realm(realms: Realms, base: str) -> None:
    assert "no default realm" in realms.fails("default")
    realms("new", "first")
    realms("new", "second")
    assert realms("default").stdout.strip() == "first"
    realms("default", "second")
    assert realms("default").stdout.strip() == "second"
    assert [r["name"] for r in realms.json("list") if r["default"]] == ["second"]
    assert "no realm named 'third'" in realms.fails("default", "third")
    realms("remove", "second")
    assert "no default realm" in realms.fails("default")


def test_remove_is_refused_while_running(realms: Realms, base: str) -> None:
    realms("new", "busy")
    running = realms.spawn("run", "busy", "--", "sleep", "30")
    try:
        deadline = time.monotonic() + 30
        while not realms.json("show", "busy")["running"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert realms.json("show", "busy")["running"] is True
        assert "realm 'busy' is running" in realms.fails("remove", "busy")
        assert "realm 'busy' is running" in realms.fails("run", "busy", "--", "true")
    finally:
        running.terminate()
        running.wait(timeout=30)
    realms("remove", "busy")


def test_realm_settings_are_applied(realms: Realms, base: str) -> None:
    realms("new", "cfg")
    config = realms.store / "realms/cfg/config"
    config.write_text(
        config.read_text()
        + "\nuse-shared-dir = true\nuse-ephemeral-home = true\nuse-network = false\n"
        + f'extra-bindmounts-ro = ["{realms.store}/skel:/mnt/skel"]\n'
    )
    (realms.store / "Shared/hello").write_text("shared\n")
    out = realms(
        "run",
        "cfg",
        "--",
        "sh",
        "-c",
        "cat Shared/hello; ls /mnt/skel | wc -l; touch /mnt/skel/x 2>/dev/null || echo ro; "
        "ls /sys/class/net",
    ).stdout.split()
    assert out[0] == "shared" and out[2] == "ro"
    assert out[3:] == ["lo"]
    # The home was a throwaway tmpfs: nothing written there reached the store.
    realms("run", "cfg", "--", "touch", "ephemeral-file")
    assert not (realms.store / "realms/cfg/home/ephemeral-file").exists()

    config.write_text('use-network = "yes"\n')
    error = realms.fails("run", "cfg", "--", "true")
    assert "use-network: expected true or false" in error and str(config) in error
    config.write_text("bogus-key = 1\n")
    assert "unknown key 'bogus-key'" in realms.fails("run", "cfg", "--", "true")
