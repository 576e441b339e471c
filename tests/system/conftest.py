"""Fixtures: real btrfs in loopback files, stores on them, small and real root filesystems.

- ``btrfs_pool`` (session): a 16 GiB sparse file with a btrfs filesystem, loop-mounted under the
  session's temporary directory; each test's store is a fresh directory on it.
- ``realms``: the real command line, bound to a fresh, initialized store.
- ``busybox_tree`` / ``base``: a tiny root filesystem (busybox-static), imported as appimg base.
- ``debian_tarball`` (session, slow): a Debian trixie minbase made with mmdebstrap from the
  mirror in the host's apt sources.
- ``bootable_tree`` (session, slow): a trixie minbase directory with systemd as /sbin/init, dbus
  and iproute2, which ``systemd-nspawn --boot`` boots (booted realms, issue 13).
- ``apt_repo`` (with ``apt_debs``, session): a local signed Debian archive served on 127.0.0.1
  whose state the test changes (:mod:`tests.apt_repo`).
- ``registry`` (with ``registry_binary``, session): Debian's ``docker-registry`` on 127.0.0.1
  with a random port, stopped with the test (:mod:`tests.registry_server`).

Every mount and loop device made here is undone at teardown, also when a test fails, and only
those: the checks look under the fixture's own directories.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from realms.store.layout import Layout
from tests.apt_repo import apt_debs, apt_repo  # noqa: F401 (fixtures: a local Debian archive)
from tests.helpers import (
    Realms,
    loops_backed_below,
    make_btrfs,
    make_busybox_tree,
    mounts_below,
    unmount_below,
)
from tests.registry_server import RunningRegistry, start_registry, unpack_registry

if os.geteuid() != 0:
    pytest.exit("the tests need root: they mount btrfs and run systemd-nspawn", returncode=2)

_counter = itertools.count()


@pytest.fixture(scope="session")
def btrfs_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("btrfs")
    mountpoint = base / "mnt"
    try:
        make_btrfs(base / "pool.img", mountpoint, "16G")
        yield mountpoint
        for store in mountpoint.iterdir():
            _forget_runtime(store)
    finally:
        unmount_below(base)
        # The kernel lets a loop device go (autoclear) only when the filesystem on it is fully
        # released, which can come a moment after umount returns (a busy machine, a dying
        # mount namespace that still held it): wait a little before calling it leaked.
        deadline = time.monotonic() + 10
        while loops_backed_below(base) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not loops_backed_below(base), "a loop device outlived its pool"


def _forget_runtime(store: Path) -> None:
    """A test store's directory under /run/realms, once nothing of it runs: a stopped store
    leaves only its current realm there (the stores of a test run would leave hundreds)."""
    runtime = Layout(store).runtime_dir
    with contextlib.suppress(FileNotFoundError):
        (runtime / "current").unlink()
    with contextlib.suppress(OSError):
        runtime.rmdir()


@pytest.fixture
def mount_guard(tmp_path: Path) -> Iterator[Path]:
    """A temporary directory whose mounts and loop devices are undone after the test."""
    try:
        yield tmp_path
    finally:
        unmount_below(tmp_path)
        assert not mounts_below(tmp_path), "a mount under the test's directory is stuck"
        assert not loops_backed_below(tmp_path), "a loop device was left attached"


@pytest.fixture
def store_dir(btrfs_pool: Path, request: pytest.FixtureRequest) -> Path:
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    path = btrfs_pool / f"{name}-{next(_counter)}"
    path.mkdir()
    return path


@pytest.fixture
def realms(store_dir: Path) -> Realms:
    cli = Realms(store_dir)
    cli("init")
    return cli


@pytest.fixture(scope="session")
def busybox_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_tree(tmp_path_factory.mktemp("busybox") / "root")


@pytest.fixture
def base(realms: Realms, busybox_tree: Path) -> str:
    realms("appimg", "import", "base", str(busybox_tree))
    return "base"


@pytest.fixture(scope="session")
def debian_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Debian trixie minbase root filesystem with user 'user' (uid 1000), as .tar.zst."""
    from realms.system.apt import host_debian_mirror

    if not shutil.which("mmdebstrap"):
        pytest.fail("mmdebstrap is not installed (./setup.sh installs it)")
    target = tmp_path_factory.mktemp("debian") / "trixie-minbase.tar.zst"
    subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            '--customize-hook=chroot "$1" useradd --create-home --uid 1000 --user-group user',
            "trixie",
            str(target),
            host_debian_mirror(),
        ],
        check=True,
    )
    return target


@pytest.fixture(scope="session")
def bootable_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Debian trixie minbase root directory that boots: systemd, systemd-sysv (/sbin/init),
    dbus, iproute2, user 'user' (uid 1000). Read-only for tests: import it, or copy it first."""
    from realms.system.apt import host_debian_mirror

    if not shutil.which("mmdebstrap"):
        pytest.fail("mmdebstrap is not installed (./setup.sh installs it)")
    target = tmp_path_factory.mktemp("bootable") / "root"
    subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus,iproute2",
            '--customize-hook=chroot "$1" useradd --create-home --uid 1000 --user-group user',
            # No login prompt on the console: a booted realm is entered with run/shell, and a
            # getty only adds to the boot time and the console log.
            '--customize-hook=chroot "$1" systemctl mask console-getty.service getty.target',
            "trixie",
            str(target),
            host_debian_mirror(),
        ],
        check=True,
    )
    return target


@pytest.fixture(scope="session")
def registry_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked ``docker-registry`` program (:mod:`tests.registry_server`)."""
    return unpack_registry(tmp_path_factory.mktemp("docker-registry"))


@pytest.fixture
def registry(registry_binary: Path, tmp_path: Path) -> Iterator[RunningRegistry]:
    """A plain-http registry on 127.0.0.1 with deletes enabled, stopped with the test."""
    with start_registry(registry_binary, tmp_path / "registry") as running:
        yield running
