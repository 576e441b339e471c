"""Helpers of the booted-realm tests (test_lifecycle*.py): a store with the bootable tree
imported once per module, realms made from it per test, and the checks that a stopped realm
left nothing behind (no process in its cgroup, no cgroup, no runtime state)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from realms.lifecycle import cgroups
from realms.store.layout import Layout
from tests.helpers import Realms

_names = itertools.count()


def store_with_boot_image(pool: Path, tree: Path, label: str) -> Realms:
    """A fresh store on the pool with appimg ``boot`` imported from ``tree``."""
    directory = pool / f"{label}-{os.getpid()}-{next(_names)}"
    directory.mkdir()
    realms = Realms(directory)
    realms("init")
    realms("appimg", "import", "boot", str(tree))
    return realms


def cgroup_of(realms: Realms, name: str) -> Path:
    return cgroups.path(Layout(realms.store).cgroup_name(name))


def state_file(realms: Realms, name: str) -> Path:
    return Layout(realms.store).runtime_state_path(name)


def show(realms: Realms, name: str) -> dict[str, Any]:
    found: dict[str, Any] = realms.json("show", name)
    return found


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    from realms.lifecycle.state import start_time

    return start_time(pid) is not None


def assert_stopped_clean(realms: Realms, name: str) -> None:
    """Stopped, and nothing of the booted realm is left."""
    shown = show(realms, name)
    assert shown["state"] == "stopped", shown
    assert shown["leader_pid"] is None
    assert not cgroup_of(realms, name).exists(), "the realm's cgroup outlived it"
    assert not state_file(realms, name).exists(), "the runtime state outlived the realm"
    assert not Layout(realms.store).notify_socket_path(name).exists()


def made_realm(realms: Realms, prefix: str = "r") -> Iterator[str]:
    """A new realm of appimg ``boot``; stopped (killed if need be) and removed afterwards."""
    name = f"{prefix}{next(_names)}"
    realms("new", name, "--appimg", "boot")
    try:
        yield name
    finally:
        realms("stop", name, "--timeout", "5", check=False)
        group = cgroup_of(realms, name)
        leftover = cgroups.pids(group) if group.exists() else []
        if leftover:
            cgroups.kill(group)
            cgroups.wait_empty(group, 10)
            realms("stop", name, check=False)
        realms("remove", name, check=False)
        assert not leftover, f"processes left in the cgroup of realm {name}: {leftover}"
        assert not group.exists(), "the realm's cgroup outlived it"
