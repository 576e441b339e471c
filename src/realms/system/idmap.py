"""User namespaces and idmapped mounts: how a realm's root is kept from being host root.

A realm runs in a user namespace of its own: its uids 0..65535 are the host's ``base ..
base+65535``, a range kept in the realm's record (:mod:`realms.origin`) so that every run of the
realm gets the same one. Its files stay owned by 0..65535 on disk: the kernel shows them through
an *idmapped mount* (a mount whose owners are shifted by a user namespace). For tree realms
systemd-nspawn makes that mount itself (``--private-users-ownership=map``). For realms on block
and sealed images nspawn cannot idmap the overlay it would be given, so realms builds the layers
itself in the container's own mount namespace: an idmapped clone of the shared read-only
activation as the lower layer, the realm's writable layer (owned by the realm's host range) as
the upper, the overlay on top; then nspawn runs with ``--private-users-ownership=off``.

The syscalls (open_tree, mount_setattr, move_mount) have no wrapper in Python's standard library;
ctypes calls them by number, which is the same on every architecture for these new syscalls.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from realms.errors import RealmsError
from realms.system import mounts
from realms.system.libc import checked, libc

RANGE_SIZE = 65536
# systemd's range for container uids (UIDS-GIDS.md): 0x00080000 .. 0x6FFFFFFF. Ranges are
# aligned to 65536 as nspawn's own are.
FIRST_BASE = 0x00080000
LAST_BASE = 0x6FFF0000

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def pick_base(taken: Iterable[int]) -> int:
    """A random free range for a new realm (random, so that the realms of two stores on one
    host are unlikely to share one; never one of ``taken``, the store's own)."""
    used = set(taken)
    count = (LAST_BASE - FIRST_BASE) // RANGE_SIZE + 1
    for _attempt in range(1000):
        # A 64-bit draw modulo a few thousand ranges is uniform enough, and does not import
        # secrets (hmac, random) at every start-up.
        base = FIRST_BASE + (int.from_bytes(os.urandom(8), "big") % count) * RANGE_SIZE
        if base not in used:
            return base
    raise RealmsError("no free uid range for a new realm")


def check_base(base: int) -> int:
    if base % RANGE_SIZE or not FIRST_BASE <= base <= LAST_BASE:
        raise RealmsError(f"uid range {base} is not an aligned container range")
    return base


class UserNamespace(NamedTuple):
    """A user namespace that maps 0..65535 to the host's ``base``.., held open by a file
    descriptor (the namespace lives as long as the descriptor)."""

    base: int
    fd: int

    def close(self) -> None:
        os.close(self.fd)


def make_user_namespace(base: int) -> UserNamespace:
    """Create the namespace: a short-lived child unshares it, realms writes its maps and keeps
    a descriptor to it, then the child goes."""

    def unshare() -> None:
        checked(libc.unshare(_CLONE_NEWUSER), "unshare")

    child = subprocess.Popen(  # not through system/run: nothing is run, sleep only holds it
        ["sleep", "60"],
        preexec_fn=unshare,  # noqa: PLW1509 (one syscall, before exec)
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{child.pid}/{name}", "w") as handle:
                handle.write(f"0 {base} {RANGE_SIZE}\n")
        fd = os.open(f"/proc/{child.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise RealmsError(
            f"cannot make a user namespace for uid range {base}: {error.strerror}",
            hint="the kernel must allow user namespaces (user.max_user_namespaces > 0); "
            'or set isolation = "privileged" in the realm\'s config',
        ) from None
    finally:
        child.kill()
        child.wait()
    return UserNamespace(base, fd)


def _clone(source: Path) -> int:
    """A detached copy of the mount tree at ``source`` (a descriptor; gone when closed unless
    attached with :func:`_attach`)."""
    return checked(
        libc.syscall(
            _SYS_OPEN_TREE,
            _AT_FDCWD,
            os.fsencode(source),
            _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE,
        ),
        f"open_tree {source}",
    )


def _set_attributes(
    tree: int, what: str, *, set_: int = 0, clear: int = 0, userns: int = 0
) -> None:
    attributes = _MountAttr(set_, clear, 0, userns)
    checked(
        libc.syscall(
            _SYS_MOUNT_SETATTR,
            tree,
            b"",
            _AT_EMPTY_PATH | _AT_RECURSIVE,
            ctypes.byref(attributes),
            ctypes.sizeof(attributes),
        ),
        what,
    )


def _attach(tree: int, target: Path) -> None:
    checked(
        libc.syscall(
            _SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH
        ),
        f"attaching {target}",
    )


def _idmapped_clone(source: Path, userns: UserNamespace) -> int:
    tree = _clone(source)
    try:
        _set_attributes(tree, f"idmapping {source}", set_=_MOUNT_ATTR_IDMAP, userns=userns.fd)
    except BaseException:
        os.close(tree)
        raise
    return tree


def idmap_supported(path: Path, userns: UserNamespace) -> bool:
    """Whether the filesystem at ``path`` can be idmapped (the clone is never attached)."""
    try:
        os.close(_idmapped_clone(path, userns))
    except OSError:
        return False
    return True


_KNOWN_DIR = Path("/run/realms")


def _known_marker(path: Path) -> Path | None:
    """The marker that says the filesystem of ``path`` took an idmapped mount since boot: by
    its type and device number (a device number alone is reused, say by an overlay mounted
    where a btrfs pool was)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        device = os.stat(path).st_dev
    except OSError:
        return None
    fstype = mounts.mount_of(path).fstype
    return _KNOWN_DIR / f"idmap-ok.{boot}.{fstype}.{device}"


def known_to_idmap(path: Path) -> bool:
    marker = _known_marker(path)
    return marker is not None and marker.exists()


def require_idmap(path: Path, userns: UserNamespace, what: str) -> None:
    if not idmap_supported(path, userns):
        raise RealmsError(
            f"{what} cannot run in a user namespace: the kernel or the filesystem of {path} "
            "has no idmapped mounts",
            hint="use a kernel >= 5.19 with the store on btrfs, ext4 or xfs; or set isolation = "
            '"privileged" in the realm\'s config (its root is then host root)',
        )
    marker = _known_marker(path)
    if marker is not None:
        try:
            _KNOWN_DIR.mkdir(mode=0o700, exist_ok=True)
            boot = marker.name.split(".")[1]
            for old in _KNOWN_DIR.glob("idmap-ok.*"):
                if old.name.split(".")[1] != boot:  # /run need not be a tmpfs
                    old.unlink(missing_ok=True)
            marker.touch()
        except OSError:
            pass  # only a shortcut for the next run


def mount_idmapped(source: Path, target: Path, userns: UserNamespace) -> None:
    """Attach an idmapped clone of ``source`` at ``target`` (in the caller's mount namespace)."""
    tree = _idmapped_clone(source, userns)
    try:
        _attach(tree, target)
    finally:
        os.close(tree)


def enter_private_mount_namespace(needed: Iterable[Path]) -> None:
    """Give the calling process a mount namespace of its own, whose mounts propagate nowhere
    and vanish with it, holding only the mounts that the ``needed`` paths use.

    A new mount namespace starts as a copy of every mount of the host; where the host's mounts
    are private (no systemd), an unmount on the host does not reach the copy, so the copy would
    keep other people's filesystems (and their loop devices) busy for as long as the container
    runs. So every mount that is neither on the way to a needed path nor below one, nor part of
    the system (/proc, /sys, /dev, /run, and where programs and their libraries live: a
    separate /usr, say, which nspawn needs to start), is detached from the copy.
    """
    checked(libc.unshare(_CLONE_NEWNS), "unshare")
    checked(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
    keep = [os.path.realpath(path) for path in needed]
    targets = {str(mount.target) for mount in mounts.mounts()}
    for target in sorted(targets, key=lambda t: t.count("/"), reverse=True):
        if target in _SYSTEM_POINTS or any(_within(target, tree) for tree in _SYSTEM_TREES):
            continue
        if any(_within(path, target) or _within(target, path) for path in keep):
            continue
        libc.umount2(os.fsencode(target), _MNT_DETACH)  # gone already: nothing to do


_SYSTEM_TREES = (
    *("/proc", "/sys", "/dev", "/run"),
    *("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/nix"),
)
"""Kept with every mount below them: the kernel's, and the system's programs and libraries."""
_SYSTEM_POINTS = ("/", "/var", "/tmp", "/home", "/root", "/srv", "/mnt", "/media")
"""Kept themselves (a separate /var holds /var/lib), not what is mounted below them: that is
where other people's filesystems are mounted."""
_MNT_DETACH = 2


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def mount(source: str, target: Path, fstype: str, options: str) -> None:
    checked(
        libc.mount(source.encode(), os.fsencode(target), fstype.encode(), 0, options.encode()),
        f"mounting {fstype} at {target}",
    )


def shift_owners(tree: Path, old_base: int, new_base: int) -> None:
    """Move the owners of every file below ``tree`` from the range at ``old_base`` to the one
    at ``new_base`` (0 is host root's range): a realm's writable layer that was written in
    another mode (before realms used user namespaces, or with ``isolation`` changed)."""

    def shifted(value: int) -> int:
        if old_base <= value < old_base + RANGE_SIZE:
            return value - old_base + new_base
        return value

    for directory, subdirectories, files in os.walk(tree):
        for entry in (directory, *(os.path.join(directory, n) for n in subdirectories + files)):
            info = os.lstat(entry)
            os.lchown(entry, shifted(info.st_uid), shifted(info.st_gid))
            if not os.path.islink(entry):
                os.chmod(entry, info.st_mode & 0o7777)  # chown dropped setuid and setgid


_MOUNT_ATTR_NOSUID = 0x00000002


def bind_allowing_suid(tree: Path) -> None:
    """Bind ``tree`` onto itself without the ``nosuid`` of the mount it lives on (the store's
    pool): in the container's own mount namespace only, where its setuid programs (sudo) must
    work, while on the host they never do."""
    clone = _clone(tree)
    try:
        _set_attributes(clone, f"allowing setuid programs in {tree}", clear=_MOUNT_ATTR_NOSUID)
        _attach(clone, tree)
    finally:
        os.close(clone)
