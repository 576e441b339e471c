"""Where an appimg lives in the store, how to load its record, and how its leftovers go.

``appimg/NAME/`` holds ``appimg.toml`` and one tree (``vN``) or image file (``vN.img``) per
version. Beside them, while a command works, are temporary names: ``.new.vN.RANDOM`` (a version
being made) and ``.update.RANDOM`` (the working copy of an update session, or the work directory
of a seal: both are made under the appimg's update lock). ``kept-update`` is the tree of an
update that was refused because another version became current while it ran; the record's
``kept`` names it. Whatever the record does not name is a leftover of a killed command;
:func:`clean_versions` deletes it under the appimg's lock, but a working snapshot only while no
update session holds the appimg's update lock.
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager
from pathlib import Path

from realms import locks
from realms.appimg.record import RECORD_NAME, AppimgRecord, Version, load
from realms.errors import Busy, NotFound
from realms.names import check_appimg_name
from realms.store import DELETED_PREFIX, NEW_PREFIX, WORKING_PREFIX, Store

LOCK_WAIT = 30.0
KEPT_NAME = "kept-update"


def appimg_dir(store: Store, name: str) -> Path:
    return store.appimgs_dir / name


def version_path(store: Store, name: str, version: Version) -> Path:
    return appimg_dir(store, name) / version.tree_name()


def kept_path(store: Store, name: str) -> Path:
    """Where the tree of an update that could not be committed is kept."""
    return appimg_dir(store, name) / KEPT_NAME


def update_lock_path(store: Store, name: str) -> Path:
    return store.locks_dir / f"appimg.{name}.update.lock"


def no_update_running(store: Store, name: str) -> AbstractContextManager[None]:
    """Hold the appimg's update lock for the block; Busy, naming the session, if one runs."""
    return locks.hold(
        update_lock_path(store, name),
        what=f"appimg {name}",
        wait=0,
        busy=f"appimg {name!r} is being updated",
        hint="wait for that update to finish (one update at a time per appimg)",
    )


def load_record(store: Store, name: str) -> AppimgRecord:
    """The record of an existing appimg, or NotFound with a hint."""
    check_appimg_name(name)
    directory = appimg_dir(store, name)
    if not (directory / RECORD_NAME).exists():
        raise NotFound(
            f"no appimg named {name!r}",
            hint="'realms appimg list' shows the appimgs; 'realms appimg import' adds one",
        )
    return load(directory)


def exists(store: Store, name: str) -> bool:
    return (appimg_dir(store, name) / RECORD_NAME).exists()


def clean_versions(
    store: Store, name: str, record: AppimgRecord, *, update_lock_held: bool = False
) -> int:
    """Delete what the record does not name in the appimg's directory; return how many.
    The caller holds the appimg's lock (and says whether it holds the update lock too)."""
    directory = appimg_dir(store, name)
    known = {v.tree_name() for v in record.versions}
    removed = 0
    for entry in sorted(os.listdir(directory)):
        if entry == RECORD_NAME or entry in known or (entry == KEPT_NAME and record.kept):
            continue
        path = directory / entry
        if entry.startswith(WORKING_PREFIX) and not update_lock_held:
            try:
                with locks.hold(update_lock_path(store, name), what="update", wait=0):
                    store.backend.remove(path)
            except Busy:
                continue  # a live update session's working snapshot
        elif (
            entry.startswith((NEW_PREFIX, DELETED_PREFIX, WORKING_PREFIX))
            or entry == KEPT_NAME  # kept by an update killed before the record said so
            or re.fullmatch(r"v\d+(\.img)?", entry)
        ):
            store.backend.remove(path)
        else:
            continue
        removed += 1
    return removed
