"""Names and DNS inside a realm: the names and addresses of its zone's running realms in its
``/etc/hosts`` (realms' lines between two markers, the rest of the file left as it is), and the
host's upstream name servers in its ``/etc/resolv.conf``.

The host's resolv.conf often names a resolver on loopback (systemd-resolved's 127.0.0.53, a
local dnsmasq) that a realm with its own network cannot reach: the upstream servers are taken
from systemd-resolved's ``/run/systemd/resolve/resolv.conf`` when it exists, else from
``/etc/resolv.conf`` without its loopback entries.

Files are written from inside the realm (:func:`edit_in_realm`): a child of realms joins the
realm's user and mount namespaces and writes as the realm's root, so the realm's own tree
(symlinks and all) is seen as the realm sees it and no path of the host is ever followed. No
program of the realm runs for it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from realms.errors import RealmsError
from realms.system.fs import atomic_write
from realms.system.libc import checked, libc

BEGIN = "# realms: the running realms of this realm's zone (rewritten by realms)"
END = "# realms: end"
UPLINK_RESOLV = Path("/run/systemd/resolve/resolv.conf")
HOST_RESOLV = Path("/etc/resolv.conf")
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
READ_MAX = 1 << 20
"""A realm's /etc/hosts longer than this is not read (it is the realm's to fill)."""


def with_zone(text: str, entries: Sequence[tuple[str, str]]) -> str:
    """``text`` (an /etc/hosts) with realms' block replaced by ``entries`` (name, address);
    lines outside the block stay as they are."""
    kept: list[str] = []
    inside = False
    for line in text.splitlines():
        if line == BEGIN:
            inside = True
            while kept and not kept[-1].strip():
                kept.pop()  # the blank line realms put before its block
        elif line == END and inside:
            inside = False
        elif not inside:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    if entries:
        if kept:
            kept.append("")
        kept += [BEGIN, *(f"{address}\t{name}" for name, address in entries), END]
    return "\n".join(kept) + "\n" if kept else ""


def upstream_resolv() -> str:
    """A resolv.conf for a realm with its own network: the host's upstream name servers, its
    search and options lines."""
    source = UPLINK_RESOLV if UPLINK_RESOLV.exists() else HOST_RESOLV
    try:
        text = source.read_text(errors="replace")
    except OSError:
        text = ""
    return resolv_without_loopback(text, str(source))


def resolv_without_loopback(text: str, source: str) -> str:
    lines = [f"# from the host's {source} (written by realms)"]
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] not in ("nameserver", "search", "domain", "options"):
            continue
        if words[0] == "nameserver":
            try:
                if len(words) < 2 or ipaddress.ip_address(words[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                continue
        lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


def edit_in_realm(leader: int, path: str, edit: Callable[[str], str]) -> None:
    """Replace the file ``path`` of the realm whose init is ``leader`` with ``edit`` of its
    content (empty when it is missing or not a regular file), atomically, as the realm's root.
    """
    namespaces = f"/proc/{leader}/ns"
    own_user = os.stat(f"{namespaces}/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    user_fd = os.open(f"{namespaces}/user", os.O_RDONLY | os.O_CLOEXEC) if own_user else -1
    mount_fd = os.open(f"{namespaces}/mnt", os.O_RDONLY | os.O_CLOEXEC)
    read_end, write_end = os.pipe()
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover (a child: only exits)
            _child(user_fd, mount_fd, write_end, path, edit)
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as reader:
            read_end = -1
            why = reader.read(2000).decode(errors="replace")
        _, status = os.waitpid(child, 0)
    finally:
        for fd in (user_fd, mount_fd, read_end, write_end):
            if fd >= 0:
                os.close(fd)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RealmsError(f"cannot write {path} in the realm: {why or 'the writer failed'}")


def _child(user_fd: int, mount_fd: int, report: int, path: str, edit: Callable[[str], str]) -> None:
    """In the forked child: join the realm, write, exit (never return into the caller)."""
    try:
        if user_fd >= 0:
            checked(libc.setns(user_fd, CLONE_NEWUSER), "setns user")
            # Root of the realm's user namespace: the files written are its root's.
            # setgroups may be denied in the namespace: then its groups are the realm's anyway.
            with contextlib.suppress(PermissionError):
                os.setgroups([])
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        checked(libc.setns(mount_fd, CLONE_NEWNS), "setns mount")
        os.chdir("/")
        atomic_write(Path(path), edit(_read_plain(path)), 0o644)
    except BaseException as error:  # anything: told to the parent
        os.write(report, str(error).encode(errors="replace")[:2000])
        os._exit(1)
    os._exit(0)


def _read_plain(path: str) -> str:
    """The file's text if it is a regular file (a symlink is not followed: its target may be
    anything the realm chose)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return ""
        return handle.read(READ_MAX).decode(errors="replace")
