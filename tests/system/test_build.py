"""realms appimg build: real Debian builds from the host's mirror, the cache both ways, failing
builds that leave the store as it was, and config checks."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import Realms, loops_backed_below, mounts_below

MIRROR = ""  # the host's, like a user's build


def _write_config(directory: Path, packages: list[str], extra: str = "") -> Path:
    (directory / "files").mkdir(exist_ok=True)
    (directory / "files/motd").write_text("built by realms\n")
    (directory / "scripts").mkdir(exist_ok=True)
    (directory / "scripts/mark.sh").write_text(
        'echo "$REALMS_APPIMG $REALMS_USER" > /etc/realms-marker\n'
    )
    path = directory / "small.toml"
    path.write_text(
        f"""
name = "small"
packages = {packages!r}
hostname = "smallhost"

[user]
groups = ["sudo"]

[modules]
after = ["sudo-nopasswd", "scripts/mark.sh"]

[[files]]
source = "files/motd"
path = "/etc/motd"
mode = "0640"
owner = "root:user"
{extra}
""".replace("'", '"')
    )
    return path


def _running(pattern: str) -> bool:
    found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, check=False)
    return found.returncode == 0


@pytest.fixture(scope="module")
def build_store(btrfs_pool: Path) -> Realms:
    """One store for the module, so that builds share the package and build caches."""
    store = btrfs_pool / "builds"
    store.mkdir()
    realms = Realms(store)
    realms("init")
    return realms


@pytest.mark.slow
def test_build_a_real_image(build_store: Realms, tmp_path: Path) -> None:
    realms = build_store
    config = _write_config(tmp_path, ["less", "sudo", "locales"])
    result = realms("appimg", "build", str(config))
    assert "Built appimg small version 1" in result.stderr
    for stage in ("Bootstrapping Debian trixie", "Running module create-user", "Cleaning up"):
        assert stage in result.stderr
    (version,) = realms.json("appimg", "versions", "small")
    assert version["origin"] == "build" and version["detail"] == str(config)
    assert len(version["build_key"]) == 64

    realms("new", "check", "--appimg", "small")
    out = realms(
        "run",
        "check",
        "--",
        "sh",
        "-c",
        "id; cat /etc/hostname; echo LANG=$LANG; "
        "dpkg -s less | grep ^Status; cat /etc/apt/sources.list.d/debian.sources; "
        "cat /etc/realms-marker; stat -c '%a %U %G' /etc/motd; sudo -n true && echo sudo-ok",
    ).stdout
    assert "uid=1000(user) gid=1000(user) groups=1000(user),27(sudo)" in out
    assert "smallhost" in out
    assert "LANG=en_US.UTF-8" in out
    assert "Status: install ok installed" in out
    assert "Suites: trixie trixie-updates" in out and "Components: main" in out
    assert "small user" in out
    assert "640 root user" in out
    assert "sudo-ok" in out
    tree = realms.store / "appimg/small/v1"
    assert (tree / "usr/lib/locale/locale-archive").exists()
    assert not list((tree / "var/lib/apt/lists").glob("*_Packages"))
    assert not (tree / "etc/resolv.conf").exists()
    logs = list((realms.store / "logs").glob("build-small-*.log"))
    assert len(logs) == 1 and "apt-get" in logs[0].read_text()

    # The same inputs again: nothing to build.
    started = time.monotonic()
    again = realms("appimg", "build", str(config))
    assert time.monotonic() - started < 5
    assert "up to date" in again.stderr
    assert len(realms.json("appimg", "versions", "small")) == 1

    # The same inputs as another appimg: the cached result, in seconds.
    started = time.monotonic()
    copy = realms("appimg", "build", str(config), "--name", "small-copy")
    assert time.monotonic() - started < 10
    assert "from the build cache" in copy.stderr
    realms("new", "copy", "--appimg", "small-copy")
    assert realms("run", "copy", "--", "cat", "/etc/hostname").stdout == "smallhost\n"
    assert realms.json("appimg", "versions", "small-copy")[0]["detail"].endswith("(cached)")

    # And as a tarball, without touching the appimgs.
    tarball = tmp_path / "small.tar.zst"
    realms("appimg", "build", str(config), "--output", str(tarball))
    assert tarball.stat().st_size > 10_000_000
    realms("appimg", "import", "from-tarball", str(tarball))
    realms("new", "untarred", "--appimg", "from-tarball")
    assert realms("run", "untarred", "--", "cat", "/etc/realms-marker").stdout == "small user\n"


@pytest.mark.slow
def test_changed_input_rebuilds(build_store: Realms, tmp_path: Path) -> None:
    realms = build_store
    config = _write_config(tmp_path, ["less", "sudo", "locales"])
    realms("appimg", "build", str(config), "--name", "changing")
    config = _write_config(tmp_path, ["less", "sudo", "locales", "xz-utils"])
    result = realms("appimg", "build", str(config), "--name", "changing")
    assert "Built appimg changing version 2" in result.stderr
    assert "cache" not in result.stderr.split("Built appimg")[-1]
    tree = realms.store / "appimg/changing"
    assert (tree / "v2/usr/bin/xz").exists() and not (tree / "v1/usr/bin/xz").exists()
    # A changed file that the config names is an input too.
    (tmp_path / "files/motd").write_text("changed\n")
    realms("appimg", "build", str(config), "--name", "changing")
    assert (tree / "v3/etc/motd").read_text() == "changed\n"


@pytest.mark.slow
def test_failing_builds_leave_the_store_as_it_was(build_store: Realms, tmp_path: Path) -> None:
    realms = build_store
    failing = tmp_path / "fail.sh"
    failing.write_text("echo about to fail; exit 3\n")
    config = tmp_path / "failing.toml"
    config.write_text('name = "small"\npackages = ["sudo"]\n[modules]\nbefore = ["fail.sh"]\n')
    before = realms.json("appimg", "list")
    result = realms("appimg", "build", str(config), check=False)
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("realms: error:")]
    assert error == [
        "realms: error: building appimg small failed in stage 'script fail.sh': "
        "fail.sh exited with status 3"
    ]
    assert "  | about to fail" in result.stderr
    log_line = next(line for line in result.stderr.splitlines() if line.startswith("hint:"))
    assert Path(log_line.split()[-1]).is_file()
    assert realms.json("appimg", "list") == before
    assert realms.json("status")["leftovers"] == 0
    assert [e.name for e in (realms.store / "build").iterdir()] == []

    config.write_text('name = "small"\npackages = ["sudo", "no-such-package-realms"]\n')
    result = realms("appimg", "build", str(config), check=False)
    assert result.returncode == 1
    # The packages are installed in a stage of their own, after the (cached) bootstrap.
    assert "failed in stage 'packages'" in result.stderr
    assert "Unable to locate package no-such-package-realms" in result.stderr
    assert realms.json("appimg", "list") == before
    assert [e.name for e in (realms.store / "build").iterdir()] == []


@pytest.mark.slow
def test_killed_build_is_cleaned_up_by_the_next(build_store: Realms, tmp_path: Path) -> None:
    realms = build_store
    config = tmp_path / "killed.toml"
    config.write_text('name = "killed"\npackages = ["less", "sudo"]\n')
    process = realms.spawn("appimg", "build", str(config))
    time.sleep(4)  # inside mmdebstrap, with the root's /proc and /dev mounted
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    # The bootstrapper's namespace went with realms: no process is left, nothing mounted.
    deadline = time.monotonic() + 10
    while _running("mmdebstrap.*killed"):
        assert time.monotonic() < deadline, "mmdebstrap outlived the killed build"
        time.sleep(0.2)
    build_dir = realms.store / "build"
    assert not mounts_below(build_dir)
    assert "killed" not in [a["name"] for a in realms.json("appimg", "list")]
    config.write_text(
        'name = "killed"\npackages = ["less", "sudo"]\nbootstrapper = "debootstrap"\n'
    )
    result = realms("appimg", "build", str(config))
    assert "debootstrap" in result.stderr and "Built appimg killed version 1" in result.stderr
    assert list(build_dir.iterdir()) == []
    assert not mounts_below(build_dir) and not loops_backed_below(build_dir)
    realms("new", "deb-boot", "--appimg", "killed")
    assert realms("run", "deb-boot", "--", "less", "--version").returncode == 0


def test_bad_config_on_the_command_line(realms: Realms, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("packages = 7\n")
    error = realms.fails("appimg", "build", str(path))
    assert str(path) in error and "packages" in error
    assert "no such build config" in realms.fails("appimg", "build", str(tmp_path / "nope.toml"))
    assert ".tar" in realms.fails("appimg", "build", "--output", str(tmp_path / "out.zip"))
    assert realms.json("appimg", "list") == []
    assert not os.path.exists(realms.store / "build") or not os.listdir(realms.store / "build")
    assert stat.S_ISDIR(os.stat(realms.store).st_mode)
