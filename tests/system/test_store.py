"""realms init and status: a store on btrfs as it is, a btrfs pool image elsewhere (mounted again
after an unmount, as after a reboot), and the copy backend."""

from __future__ import annotations

import os
from pathlib import Path

from realms.system import kernel, mounts
from tests.helpers import Realms, loops_backed_below, run


def test_store_on_btrfs_is_used_as_it_is(realms: Realms) -> None:
    status = realms.json("status")
    assert status["store"] == str(realms.store)
    assert status["backend"] == "btrfs"
    assert status["pool"] is None
    expected = kernel.verity_enforcement("auto", kernel.features())
    assert status["verity"] == expected
    assert status["appimgs"] == 0 and status["realms"] == 0 and status["leftovers"] == 0
    for name in ("store.toml", "config.toml", "skel", "appimg", "realms", "locks"):
        assert (realms.store / name).exists()
    again = realms("init")
    assert "already set up" in again.stderr
    assert "verity:" in realms("status").stdout


def test_pool_image_when_not_on_btrfs(mount_guard: Path, busybox_tree: Path) -> None:
    store = mount_guard / "store"
    assert mounts.mount_of(mount_guard).fstype != "btrfs"
    realms = Realms(store)
    first = realms("init", "--pool-size", "1G")
    image = mount_guard / "store.pool.img"
    assert image.is_file() and image.stat().st_size == 1 << 30
    assert image.stat().st_blocks * 512 < 64 << 20, "the pool image should be sparse"
    assert mounts.mount_of(store).fstype == "btrfs"
    assert str(image) in first.stderr
    status = realms.json("status")
    assert status["backend"] == "btrfs" and status["pool"] == str(image)

    realms("appimg", "import", "base", str(busybox_tree))
    realms("new", "kept")
    assert "already set up" in realms("init").stderr

    # As after a reboot: the pool is not mounted any more.
    run("umount", store)
    assert not loops_backed_below(mount_guard), "unmounting should free the loop device"
    error = realms.fails("list")
    assert "not mounted" in error
    assert "run 'realms init'" in realms("list", check=False).stderr
    again = realms("init")
    assert "mounted again" in again.stderr
    assert [r["name"] for r in realms.json("list")] == ["kept"]
    assert realms("run", "kept", "--", "hostname").stdout.strip() == "kept"


def test_copy_backend(mount_guard: Path, busybox_tree: Path) -> None:
    store = mount_guard / "plain"
    realms = Realms(store)
    result = realms("init", "--backend", "copy")
    assert "copy backend" in result.stderr
    assert not (mount_guard / "plain.pool.img").exists()
    assert realms.json("status")["backend"] == "copy"
    realms("appimg", "import", "base", str(busybox_tree))
    made = realms("new", "copied")
    assert "not a zero-cost snapshot" in made.stderr
    assert (store / "realms/copied/rootfs/usr/bin/busybox").is_file()
    assert realms("run", "copied", "--", "cat", "/etc/os-release").stdout.startswith("ID=busybox")
    assert "already uses the copy backend" in realms.fails("init", "--backend", "btrfs")


def test_init_refuses_a_non_empty_directory_not_on_btrfs(mount_guard: Path) -> None:
    store = mount_guard / "full"
    store.mkdir()
    (store / "something").write_text("user data\n")
    error = Realms(store).fails("init")
    assert "not empty" in error
    assert (store / "something").read_text() == "user data\n"
    assert not (mount_guard / "full.pool.img").exists()


def test_commands_need_an_initialized_store(tmp_path: Path) -> None:
    realms = Realms(tmp_path / "nothing")
    result = realms("list", check=False)
    assert result.returncode == 1
    assert "no realms store at" in result.stderr and "hint: run 'realms init'" in result.stderr


def test_bad_pool_size(tmp_path: Path) -> None:
    realms = Realms(tmp_path / "s")
    assert "invalid size" in realms.fails("init", "--pool-size", "lots")
    assert "too small" in realms.fails("init", "--pool-size", "1M")
    assert not os.path.exists(tmp_path / "s.pool.img")
