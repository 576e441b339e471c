"""Issue 10, item 2: the store is closed to host users.

Each test is the attack of an unprivileged host user (``setpriv`` to nobody): listing the store,
reading its config, its signing key or the pool image file, and running a setuid-root binary that
came from an imported tree, from the host path of the appimg or of a realm. The stores live on a
btrfs pool in a sparse file (as on a machine whose /var/lib is not btrfs), in a directory that
nobody *can* reach, so that each refusal is the store's doing and not the test directory's.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from realms.system import mounts
from tests.helpers import Realms, loops_backed_below, mounts_below, run, unmount_below

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

EUID_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("euid=%d\n", (int)geteuid()); return 0; }
"""


def as_nobody(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as nobody. Through a shell: setpriv itself still holds root's capabilities
    while it execs its argument (it drops them at the exec), so it could look up a path in the
    store that the user cannot."""
    return subprocess.run(
        [*NOBODY, "/bin/sh", "-c", 'exec "$@"', "sh", *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@contextmanager
def open_directory() -> Iterator[Path]:
    """A directory under /tmp that every user can reach (pytest's are 0700 for root only);
    whatever is mounted or attached below it is undone at the end, even when the test fails."""
    directory = Path(tempfile.mkdtemp(prefix="realms-security-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        unmount_below(directory)
        # A process of other work that made a mount namespace meanwhile holds a copy of our
        # mounts (and so the loop device) until it ends: wait for it rather than fail.
        deadline = time.monotonic() + 120
        while loops_backed_below(directory) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not mounts_below(directory), "a mount under the test's directory is stuck"
        assert not loops_backed_below(directory), "a loop device was left attached"
        shutil.rmtree(directory)


@contextmanager
def pool_backed_store(directory: Path, size: str = "1G") -> Iterator[Realms]:
    """``realms init`` of a store in ``directory`` (ext4): a btrfs pool in a sparse file."""
    assert mounts.mount_of(directory).fstype != "btrfs"
    cli = Realms(directory / "store")
    cli("init", "--pool-size", size)
    yield cli


def setuid_tree(busybox_tree: Path, root: Path) -> Path:
    """The busybox tree plus ``/usr/bin/euid``: a static setuid-root program printing its euid."""
    shutil.copytree(busybox_tree, root, symlinks=True)
    source = root.parent / "euid.c"
    source.write_text(EUID_C)
    run("gcc", "-static", "-O2", "-o", root / "usr/bin/euid", source)
    os.chmod(root / "usr/bin/euid", 0o4755)
    return root


def fingerprint(store: Path) -> list[tuple[str, int, int, int]]:
    """Every entry of the store (name, mode, size, mtime), realm trees aside, to see it
    unchanged."""
    found = []
    for directory, subdirectories, files in os.walk(store):
        subdirectories[:] = [d for d in subdirectories if d not in ("rootfs",)]
        for name in sorted(subdirectories + files):
            info = os.lstat(Path(directory) / name)
            relative = str((Path(directory) / name).relative_to(store))
            found.append((relative, info.st_mode, info.st_size, info.st_mtime_ns))
    return sorted(found)


def mount_options(path: Path) -> set[str]:
    return set(mounts.mount_of(path).options.split(","))


@pytest.fixture(scope="module")
def have_gcc() -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to make a static setuid test program")


def test_host_user_cannot_reach_the_store(busybox_tree: Path, have_gcc: None) -> None:
    with open_directory() as directory, pool_backed_store(directory) as realms:
        store = realms.store
        image = directory / "store.pool.img"
        tree = setuid_tree(busybox_tree, directory / "source" / "root")
        realms("appimg", "import", "base", str(tree))
        realms("new", "victim")
        realms("key", "generate", "realmfs-user")
        # The control: nobody can reach the test directory and run the setuid program there.
        assert as_nobody("ls", directory).returncode == 0
        assert as_nobody(tree / "usr/bin/euid").stdout.strip() == "euid=0"

        assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(image).st_mode) == 0o600
        before = fingerprint(store)
        attempts = [
            ("ls", store),
            ("ls", store / "appimg"),
            ("cat", store / "config.toml"),
            ("cat", store / "store.toml"),
            ("cat", store / "keys" / "signing" / "realmfs-user.key"),
            ("cat", store / "keys" / "trust.toml"),
            ("head", "-c", "4096", image),
            (store / "appimg/base/v1/usr/bin/euid",),
            (store / "realms/victim/rootfs/usr/bin/euid",),
            ("touch", store / "planted"),
        ]
        for attempt in attempts:
            result = as_nobody(*attempt)
            assert result.returncode != 0, attempt
            assert "euid=0" not in result.stdout, attempt
            assert "Permission denied" in result.stderr, (attempt, result.stderr)
        assert fingerprint(store) == before, "the attempts changed the store"


def test_pool_is_nosuid_and_nodev_on_its_own(busybox_tree: Path, have_gcc: None) -> None:
    """With the store's 0700 out of the way, nosuid alone stops the setuid binary."""
    with open_directory() as directory, pool_backed_store(directory) as realms:
        store = realms.store
        tree = setuid_tree(busybox_tree, directory / "source" / "root")
        realms("appimg", "import", "base", str(tree))
        realms("new", "victim")
        assert {"nosuid", "nodev"} <= mount_options(store)
        copied = store / "realms/victim/rootfs/usr/bin/euid"
        assert os.stat(copied).st_mode & stat.S_ISUID, "the import keeps setuid bits"
        os.chmod(store, 0o711)  # as if the store's mode were wrong
        try:
            for path in (store / "appimg/base/v1/usr/bin/euid", copied):
                result = as_nobody(path)
                assert result.returncode == 0, result.stderr
                assert result.stdout.strip() == "euid=65534", "setuid worked on the pool"
        finally:
            os.chmod(store, 0o700)


def test_setuid_still_works_inside_realms(busybox_tree: Path, have_gcc: None) -> None:
    """sudo-like programs work inside a realm (its own mount of the root allows setuid), for a
    tree realm and for a realm on a block image, whose activation is mounted nosuid,nodev."""
    with open_directory() as directory, pool_backed_store(directory) as realms:
        tree = setuid_tree(busybox_tree, directory / "source" / "root")
        realms("appimg", "import", "base", str(tree))
        realms("new", "tree")
        assert realms("run", "tree", "--", "euid").stdout.strip() == "euid=0"
        assert realms("run", "tree", "--", "id", "-u").stdout.strip() == "1000"

        realms("appimg", "seal", "base", "--no-verity")
        realms("new", "imaged", "--appimg", "base")
        assert realms("run", "imaged", "--", "euid").stdout.strip() == "euid=0"
        activations = [m for m in mounts.mounts() if m.target.parent == realms.store / "active"]
        assert activations, "the block version is not activated"
        for activation in activations:
            assert {"ro", "nosuid", "nodev"} <= set(activation.options.split(","))


def test_init_closes_a_store_made_by_older_realms(busybox_tree: Path) -> None:
    with open_directory() as directory, pool_backed_store(directory) as realms:
        store = realms.store
        image = directory / "store.pool.img"
        realms("key", "generate", "realmfs-user")
        key = store / "keys" / "signing" / "realmfs-user.key"
        # What the older realms left: everything readable, the pool mounted without nosuid.
        os.chmod(store, 0o755)
        os.chmod(image, 0o644)
        os.chmod(store / "keys", 0o755)
        os.chmod(store / "keys" / "signing", 0o755)
        os.chmod(key, 0o644)
        run("mount", "-o", "remount,suid,dev", store)
        assert as_nobody("cat", key).returncode == 0, "the old store is open (the control)"
        assert "open to other users" in realms("list").stderr

        realms("init")
        assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(image).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(store / "keys").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(store / "keys" / "signing").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        assert {"nosuid", "nodev"} <= mount_options(store)
        assert as_nobody("cat", key).returncode != 0
        assert as_nobody("head", "-c", "1", image).returncode != 0
        assert "open to other users" not in realms("list").stderr
