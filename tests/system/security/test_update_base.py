"""Issue 10, item 8: an update commits only on the version it started from. Another version made
current while the update ran (an import --new-version, a rollback) is never hidden behind
"update of N": the commit is refused, the session's tree is kept for inspection, and only an
explicit --commit-kept or --discard-kept decides what becomes of it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from realms.system import btrfs
from tests.helpers import Realms


def _versions(realms: Realms) -> list[int]:
    return [v["version"] for v in realms.json("appimg", "versions", "base")]


def _current(realms: Realms) -> int:
    current: int = realms.json("appimg", "show", "base")["version"]
    return current


def _update_in_background(realms: Realms, marker_glob: str) -> subprocess.Popen[str]:
    """Start an update that writes /marker and sleeps; return once the marker is written."""
    update = realms.spawn("update-appimg", "base", "--", "sh", "-c", "echo kept > /marker; sleep 3")
    deadline = time.monotonic() + 30
    while not list((realms.store / "appimg/base").glob(marker_glob)):
        assert update.poll() is None, update.communicate()
        assert time.monotonic() < deadline, "the update session did not start"
        time.sleep(0.05)
    return update


def _refused(update: subprocess.Popen[str]) -> str:
    _, stderr = update.communicate(timeout=60)
    assert update.returncode == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("realms: error:")]
    assert len(errors) == 1, stderr
    assert "hint: " in stderr and "--commit-kept" in stderr and "--discard-kept" in stderr
    return errors[0]


def test_import_during_update_is_not_lost(realms: Realms, base: str, busybox_tree: Path) -> None:
    update = _update_in_background(realms, ".update.*/marker")
    realms("appimg", "import", "base", str(busybox_tree), "--new-version")
    error = _refused(update)
    assert "not committed" in error and "version 2 became current (import)" in error, error

    # The import's version stays current; the update is kept, frozen, and named.
    store = realms.store
    assert _versions(realms) == [1, 2] and _current(realms) == 2
    kept = store / "appimg/base/kept-update"
    assert (kept / "marker").exists() and btrfs.is_readonly(kept)
    assert not (store / "appimg/base/v2/marker").exists()
    listing = realms("appimg", "versions", "base")
    assert "kept update of version 1" in listing.stderr + listing.stdout
    assert realms.json("status")["leftovers"] == 0
    # Nothing drops it by the way: other commands that clean the appimg keep it, and no other
    # update starts until someone decides.
    realms("appimg", "prune", "base", "--keep", "1")
    assert (kept / "marker").exists()
    assert "not committed" in realms.fails("update-appimg", "base", "--", "true")
    assert _versions(realms) == [2]

    # Committed anyway: the next version, made from version 1 plus the update's changes.
    committed = realms("update-appimg", "base", "--commit-kept")
    assert "Committed appimg base version 3" in committed.stderr
    assert _versions(realms) == [2, 3] and _current(realms) == 3
    v3 = realms.json("appimg", "versions", "base")[1]
    assert v3["parent"] == 1 and v3["origin"] == "update" and v3["files_changed"] >= 1
    assert (store / "appimg/base/v3/marker").exists()
    assert btrfs.is_readonly(store / "appimg/base/v3")
    assert not kept.exists()
    assert realms.json("status")["leftovers"] == 0
    assert "no kept update" in realms.fails("update-appimg", "base", "--commit-kept")
    # And updates work again.
    realms("update-appimg", "base", "--", "true")
    assert _current(realms) == 4


def test_rollback_during_update_is_not_undone(realms: Realms, base: str) -> None:
    realms("update-appimg", "base", "--", "touch", "/etc/second")
    update = _update_in_background(realms, ".update.*/marker")
    realms("appimg", "rollback", "base")
    error = _refused(update)
    assert "version 1 became current (rollback)" in error and "version 2 ran" in error, error
    assert _current(realms) == 1 and _versions(realms) == [1, 2]
    assert (realms.store / "appimg/base/kept-update/marker").exists()

    # Usage errors: the kept options take no command.
    bad = realms("update-appimg", "base", "--discard-kept", "--", "true", check=False)
    assert bad.returncode == 2
    discarded = realms("update-appimg", "base", "--discard-kept")
    assert "Deleted the kept update of version 2" in discarded.stderr
    assert "stays at version 1" in discarded.stderr
    assert not (realms.store / "appimg/base/kept-update").exists()
    assert _current(realms) == 1 and _versions(realms) == [1, 2]
    assert "no kept update" in realms.fails("update-appimg", "base", "--discard-kept")
    assert realms.json("status")["leftovers"] == 0


def test_block_version_update_is_kept_too(realms: Realms, base: str) -> None:
    realms("appimg", "seal", "base", "--no-verity")
    assert realms.json("appimg", "show", "base")["kind"] == "block"
    update = _update_in_background(realms, ".update.*/tree/marker")
    realms("appimg", "rollback", "base")
    error = _refused(update)
    assert "version 1 became current (rollback)" in error, error
    assert _current(realms) == 1 and _versions(realms) == [1, 2]
    assert (realms.store / "appimg/base/kept-update/marker").exists()

    committed = realms("update-appimg", "base", "--commit-kept")
    assert "Committed appimg base version" in committed.stderr
    newest = realms.json("appimg", "versions", "base")[-1]
    assert newest["kind"] == "block" and newest["parent"] == 2 and newest["current"] is True
    assert not (realms.store / "appimg/base/kept-update").exists()
    assert realms.json("status")["leftovers"] == 0
