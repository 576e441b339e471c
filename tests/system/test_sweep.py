"""The one sweep (realms.store.txn): every kind of leftover a killed command can leave is counted
by ``realms status``, deleted by the next command that changes the store, and never while its
owner still holds the lock that covers it."""

from __future__ import annotations

import os
from pathlib import Path

from realms.store import Layout, locks
from tests.helpers import Realms


def _plant(store: Path) -> dict[str, Path]:
    """One leftover of every kind, as killed commands leave them (trees as directories)."""
    planted = {
        "new realm": store / "realms/.new.gone.0badf00d",
        "deleted realm": store / "realms/.del.old.0badf00d",
        "realm config write": store / "realms/kept/.tmp.config.0badf00d",
        "new appimg": store / "appimg/.new.other.0badf00d",
        "new version": store / "appimg/base/.new.v7.0badf00d",
        "deleted version": store / "appimg/base/.del.v1.0badf00d",
        "update working copy": store / "appimg/base/.update.0badf00d",
        "seal work": store / "appimg/base/.update.seal-0badf00d",
        "record write": store / "appimg/base/.tmp.appimg.toml.0badf00d",
        "build": store / "build/.new.base.0badf00d",
        "cached build": store / "cache/builds/.new.{}.0badf00d".format("ab" * 32),
        "trust write": store / "keys/.tmp.trust.toml.0badf00d",
        "signing key write": store / "keys/signing/.tmp.test.key.0badf00d",
    }
    for path in planted.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.startswith(".tmp."):
            path.write_text("left by a killed command\n")
        else:
            (path / "usr").mkdir(parents=True)
    return planted


def test_every_leftover_is_counted_and_swept(realms: Realms, base: str) -> None:
    realms("new", "kept")
    planted = _plant(realms.store)
    assert realms.json("status")["leftovers"] == len(planted)
    realms.json("list")  # reading changes nothing: the leftovers stay for status to show
    assert realms.json("status")["leftovers"] == len(planted)
    realms("new", "next")  # any command that changes the store sweeps first
    assert {what: path for what, path in planted.items() if os.path.lexists(path)} == {}
    assert realms.json("status")["leftovers"] == 0


def test_a_leftover_whose_owner_runs_stays(realms: Realms, base: str) -> None:
    planted = _plant(realms.store)
    layout = Layout(realms.store)
    # The owners of two of them still run: a build of base, an update session of base.
    with (
        locks.hold(layout.build_lock_path("base"), what="build"),
        locks.hold(layout.update_lock_path("base"), what="update"),
    ):
        realms("new", "next")
        left = sorted(what for what, path in planted.items() if os.path.lexists(path))
        assert left == ["build", "seal work", "update working copy"]
        assert realms.json("status")["leftovers"] == 3
    realms("remove", "next")
    assert realms.json("status")["leftovers"] == 0
