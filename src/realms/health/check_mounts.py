"""``realms check``: what the store has mounted and attached on the machine, against its records.

Only what is under the store (or named after it) is looked at, and only that is ever touched:

- activations (``active/APPIMG.vN`` mounts): their users are derived from the realms' origins
  (:mod:`realms.activation`); one that no realm uses is what a killed command left, and is
  released under the appimg's activation lock, taken without waiting (a command activating it
  now holds that lock); an ``active/`` directory with nothing mounted is removed when empty;
- other mounts below the store: inside a realm that runs (its run lock is taken) or a build that
  runs (its build lock) they are that command's; otherwise a killed command left them, and they
  are unmounted;
- loop devices backed by a file below the store that nothing mounts and no activation under
  way holds (the kernel detaches ours once unused: one that stays was attached by hand);
- dm-verity devices named after the store (``realms-INODE-APPIMG.vN``) that nothing mounts.

It reads /proc/self/mountinfo and /sys/block once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from realms.errors import Busy, RealmsError
from realms.health.findings import Finding, finding, relative
from realms.store import Store
from realms.system import mounts
from realms.system.run import run

_ACTIVATION = re.compile(r"(?P<appimg>[A-Za-z][A-Za-z0-9-]*)\.v(?P<version>\d+)")


def check_mounts(store: Store, image_users: dict[tuple[str, int], list[str]]) -> list[Finding]:
    found: list[Finding] = []
    root = Path(os.path.realpath(store.root))
    active = Path(os.path.realpath(store.active_dir))
    every = mounts.mounts()
    below = [m for m in every if root in m.target.parents]
    sources = {m.source for m in every}
    mounted_active: set[str] = set()
    for mount in below:
        if mount.target.parent == active and (match := _ACTIVATION.fullmatch(mount.target.name)):
            mounted_active.add(mount.target.name)
            key = (match["appimg"], int(match["version"]))
            if not image_users.get(key):
                found.append(_unused_activation(store, *key, mount.target))
        elif active not in mount.target.parents and mount.target != active:
            owner = _owner(store, root, mount.target)
            if owner is not None:
                found.append(_stale_mount(store, mount.target, owner))
    found += _empty_activation_directories(store, mounted_active)
    found += _loops(store, root, sources)
    found += _verity_devices(store, sources)
    return found


def _unused_activation(store: Store, appimg: str, version: int, target: Path) -> Finding:
    def fix() -> str:
        from realms import activation

        with store.activation_lock(appimg, wait=0):
            if activation.users(store, appimg, version):
                return "nothing to do (a realm uses it now)"
            activation.release(store, appimg, version)
        return "released"

    return finding(
        "activation-unused",
        f"appimg {appimg}",
        target,
        f"version {version} is active but no realm runs on it",
        "release it (unmount; its loop device goes with it)",
        fix,
    )


def _owner(store: Store, root: Path, target: Path) -> tuple[str, str] | None:
    """Who may have mounted ``target``: ("realm", NAME) or ("build", NAME) when that one runs
    now is None (the mount is theirs); otherwise what owns the place, for the repair's lock."""
    parts = target.relative_to(root).parts
    if len(parts) >= 2 and parts[0] == "realms" and not parts[1].startswith("."):
        name = parts[1]
        try:
            if store.is_running(name):
                return None
        except RealmsError:
            pass
        return ("realm", name)
    if len(parts) >= 2 and parts[0] == "build":
        return ("build", parts[1])  # a leftover: the sweep unmounts it with its tree
    return ("store", "")


def _stale_mount(store: Store, target: Path, owner: tuple[str, str]) -> Finding:
    kind, name = owner

    def fix() -> str:
        if kind == "realm":
            with store.realm_lock(name, wait=0), store.run_lock(name):
                mounts.unmount_below(target)
        elif kind == "build":
            store.sweep()
            if mounts.is_mountpoint(target):
                mounts.unmount_below(target)
        else:
            mounts.unmount_below(target)
        return "unmounted"

    where = f"in realm {name}, which does not run" if kind == "realm" else "left by a command"
    return finding(
        "mount-stale",
        f"realm {name}" if kind == "realm" else "store",
        target,
        f"mounted at {relative(store, target)} {where}",
        "unmount it",
        fix,
    )


def _empty_activation_directories(store: Store, mounted: set[str]) -> list[Finding]:
    found = []
    try:
        entries = sorted(os.listdir(store.active_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        path = store.active_dir / entry
        if entry in mounted or not path.is_dir() or path.is_symlink():
            continue
        try:
            empty = not os.listdir(path)
        except OSError:
            continue
        if not empty:
            continue
        match = _ACTIVATION.fullmatch(entry)
        appimg = match["appimg"] if match else None

        def fix(path: Path = path, appimg: str | None = appimg) -> str:
            try:
                if appimg is not None:
                    with store.activation_lock(appimg, wait=0):
                        if not mounts.is_mountpoint(path):
                            path.rmdir()
                else:
                    path.rmdir()
            except Busy:
                return "left alone (its appimg is being activated now)"
            return "removed"

        found.append(
            finding(
                "activation-stale",
                f"appimg {appimg}" if appimg else "store",
                path,
                "an activation's mount point with nothing mounted",
                "remove the empty directory",
                fix,
            )
        )
    return found


def _loop_devices() -> list[tuple[str, str]]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().rstrip("\n").removesuffix(" (deleted)")
        except OSError:
            continue
        found.append((backing.parent.parent.name, name))
    return found


def _holders(device: str) -> list[str]:
    try:
        return os.listdir(f"/sys/block/{device}/holders")
    except OSError:
        return []


def _loops(store: Store, root: Path, sources: set[str]) -> list[Finding]:
    found = []
    prefix = str(root).rstrip("/") + "/"
    for device, backing in _loop_devices():
        if not backing.startswith(prefix):
            continue
        path = f"/dev/{device}"
        if path in sources or _holders(device):
            continue  # mounted, or under a dm-verity device
        appimg = Path(backing).parent.name
        try:
            # An activation under way holds its loop device before it mounts it.
            with store.activation_lock(appimg, wait=0):
                pass
        except (Busy, RealmsError):
            continue

        def fix(path: str = path) -> str:
            run(["losetup", "--detach", path])
            return "detached"

        found.append(
            finding(
                "loop-stale",
                "store",
                path,
                f"attached to {relative(store, Path(backing))} but nothing uses it",
                "detach it",
                fix,
            )
        )
    return found


def _verity_devices(store: Store, sources: set[str]) -> list[Finding]:
    try:
        names = os.listdir("/dev/mapper")
    except OSError:
        return []
    prefix = f"realms-{os.stat(store.root).st_ino}-"
    found = []
    for name in sorted(names):
        path = f"/dev/mapper/{name}"
        if not name.startswith(prefix) or path in sources:
            continue
        appimg = name[len(prefix) :].rpartition(".v")[0]

        def fix(name: str = name, appimg: str = appimg) -> str:
            with store.activation_lock(appimg, wait=0):
                run(["veritysetup", "close", name])
            return "closed"

        found.append(
            finding(
                "verity-stale",
                f"appimg {appimg}",
                path,
                "a dm-verity device of this store that nothing mounts",
                "close it",
                fix,
            )
        )
    return found
