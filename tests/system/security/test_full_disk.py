"""Issue 10, item 9: a full disk never strands the store.

A small pool-backed store is filled until the kernel says ENOSPC, for data and for metadata; then
the commands that free space (``remove``, ``appimg remove``, ``appimg prune``) must work, and the
space must be free when they return. A command that fails for want of space gives its space back
at once (btrfs would otherwise return a deleted subvolume's space 16-30 s later), and its error
names the filesystem that is full.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from realms.store import locks
from tests.helpers import Realms, run
from tests.system.security.test_store_access import open_directory, pool_backed_store

MIB = 1 << 20


def free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def fill(directory: Path) -> None:
    """Write until the filesystem refuses: big files for the data, then small files (inline,
    in btrfs's metadata) until even a new empty file cannot be made."""
    directory.mkdir(parents=True, exist_ok=True)
    chunk = b"\xa5" * MIB
    try:
        with open(directory / "big", "wb") as handle:
            while True:
                handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    small = b"\x5a" * 2000
    for number in range(1_000_000):
        try:
            (directory / f"s{number}").write_bytes(small)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
            break
    for number in range(10_000):
        try:
            (directory / f"e{number}").touch()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
            break


def lock_files(store: Path) -> dict[str, tuple[int, int]]:
    return {
        entry.name: (entry.stat().st_size, entry.stat().st_mtime_ns)
        for entry in (store / "locks").iterdir()
    }


def test_removal_works_on_a_full_store(busybox_tree: Path) -> None:
    with open_directory() as directory, pool_backed_store(directory, "400M") as realms:
        store = realms.store
        realms("appimg", "import", "base", str(busybox_tree))
        for _ in range(2):
            realms("appimg", "import", "base", str(busybox_tree), "--new-version")
        realms("appimg", "import", "other", str(busybox_tree))
        for name in ("filler", "spare", "third"):
            realms("new", name, "--appimg", "base")
        locks_before = lock_files(store)
        assert all(size == 0 for size, _ in locks_before.values())

        fill(store / "realms/filler/home/fill")
        assert free_bytes(store) < 8 * MIB
        # The store is full: making something fails with a one-line error naming the pool.
        error = realms.fails("appimg", "import", "more", str(busybox_tree))
        stderr = realms("appimg", "import", "more", str(busybox_tree), check=False).stderr
        assert "full" in error or "space" in error, error
        assert "store.pool.img" in stderr, stderr

        # Every command that frees space works, with no write before its deletion.
        realms("remove", "spare")
        realms("appimg", "prune", "base", "--keep", "1")
        realms("appimg", "remove", "other")
        before = free_bytes(store)
        realms("remove", "filler")
        freed = free_bytes(store) - before
        # The filler's ~350 MB are free when the command returns, not 30 s later.
        assert freed > 250 * MIB, f"only {freed // MIB} MiB free after removing the filler"

        listing = realms.json("list")
        assert [r["name"] for r in listing] == ["third"]
        assert [a["name"] for a in realms.json("appimg", "list")] == ["base"]
        assert len(realms.json("appimg", "versions", "base")) == 1
        # Lock files are never written: the same (empty) files as before.
        after = lock_files(store)
        for name, (size, mtime) in locks_before.items():
            if name in after:
                assert after[name] == (size, mtime), name
        assert realms.json("status")["leftovers"] == 0
        realms("new", "again")
        assert realms("run", "again", "--", "true").returncode == 0


def test_a_failed_command_returns_its_space_at_once(busybox_tree: Path) -> None:
    with open_directory() as directory, pool_backed_store(directory, "400M") as realms:
        store = realms.store
        realms("appimg", "import", "base", str(busybox_tree))
        realms("new", "filler")
        # A source larger than what is left in the store.
        source = directory / "source"
        shutil.copytree(busybox_tree, source, symlinks=True)
        with open(source / "large", "wb") as handle:
            for _ in range(300):
                handle.write(os.urandom(MIB))
        with open(store / "realms/filler/home/ballast", "wb") as handle:
            for _ in range(150):
                handle.write(b"\x01" * MIB)
        os.sync()
        before = free_bytes(store)
        assert before < 300 * MIB

        error = realms.fails("appimg", "import", "big", str(source))
        assert "space" in error or "full" in error, error
        after = free_bytes(store)
        # Right after the failure, the space the import took is back (a few MiB of metadata
        # aside), with nothing of the import left behind.
        assert after > before - 8 * MIB, f"{(before - after) // MIB} MiB still taken"
        assert realms.json("status")["leftovers"] == 0
        assert "big" not in [a["name"] for a in realms.json("appimg", "list")]


def test_a_full_output_file_system_is_not_called_the_store(busybox_tree: Path) -> None:
    """ENOSPC while writing outside the store (an export to a full disk) blames that disk."""
    with open_directory() as directory, pool_backed_store(directory, "400M") as realms:
        realms("appimg", "import", "base", str(busybox_tree))
        small = directory / "small"
        small.mkdir()
        run("mount", "-t", "tmpfs", "-o", "size=256k", "realms-test", small)
        stderr = realms("appimg", "export", "base", str(small / "base.tar"), check=False).stderr
        lines = [line for line in stderr.splitlines() if line.startswith("realms: error:")]
        assert len(lines) == 1, stderr
        assert "store.pool.img" not in stderr, stderr
        assert str(small) in stderr, stderr
        assert not list(small.iterdir()), "a partial export was left behind"


def test_status_counts_and_init_sweeps_every_kind_of_leftover(
    realms: Realms, busybox_tree: Path
) -> None:
    store = realms.store
    realms("appimg", "import", "base", str(busybox_tree))
    realms("new", "kept", "--appimg", "base")
    planted = [
        store / ".tmp.config.toml.0badf00d",
        store / "realms/kept/.tmp.origin.toml.0badf00d",
        store / "appimg/base/.tmp.appimg.toml.0badf00d",
        store / "realms/.new.gone.0badf00d",
    ]
    for path in planted:
        path.write_text("left by a killed command\n")
    old = 1_000_000_000
    os.utime(planted[0], (old, old))
    assert realms.json("status")["leftovers"] == len(planted)
    realms("init")
    assert [path for path in planted if path.exists()] == []
    assert realms.json("status")["leftovers"] == 0


def test_a_busy_lock_names_its_holder_and_is_never_written(
    realms: Realms, busybox_tree: Path
) -> None:
    """Who holds a lock comes from /proc/locks; the lock file stays empty (no write needed)."""
    realms("appimg", "import", "base", str(busybox_tree))
    lock = realms.store / "locks" / "appimg.base.update.lock"
    lock.touch()
    holder = subprocess.Popen(["flock", lock, "sleep", "60"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not locks.holders(lock) and time.monotonic() < deadline:
            time.sleep(0.02)
        error = realms.fails("update-appimg", "base", "--", "true")
        assert "is being updated" in error, error
        assert f"held by pid {holder.pid}" in error, error
        assert "flock" in error, error
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and its sleep, which has the lock too
        holder.wait()
    assert lock.stat().st_size == 0
    realms("update-appimg", "base", "--", "true")
    assert all(p.stat().st_size == 0 for p in (realms.store / "locks").iterdir())
