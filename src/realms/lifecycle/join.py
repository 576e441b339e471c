"""Joining a running realm: what ``realms run`` and ``realms shell`` do when the realm is booted.

A joined command is a process in every namespace of the realm's init (its leader, PID 1 inside),
in the leader's cgroup, with the realm's environment, as the realm's user (uid 1000, in
/home/user) or its root, and its exit status is passed through. A stopped realm is not joined:
:func:`join_realm` returns None and the caller runs a one-shot container as before.

realms makes the process itself, between fork and exec, rather than through ``nsenter``:
nsenter gives realm root every capability of the realm's user namespace (nspawn's bounding set
drops some), keeps the caller's session keyring and terminal, and cannot be told which cgroup
to use. In order:

- realms' own thread enters the realm's pid namespace before the fork (this changes only where
  its children are born) and leaves it right after, so that the command is a process of the
  realm (``echo $$`` is its pid inside, /proc/self works) and realms' child all the same;
- the child, still host root, makes itself undumpable (realm root cannot ptrace it or open its
  /proc/PID/fd while it holds host descriptors), moves into the leader's cgroup (a file the
  parent opened), enters the namespaces that differ from realms' own through the leader's pidfd
  (the user namespace last: a realm on the host's network shares a namespace that the realm's
  root has no rights over), and chroots into the leader's root (a directory the parent opened);
- it drops from its capability bounding set what the leader's lacks: realm root joined has the
  capabilities realm root booted has, no more; it joins a new session keyring (the host's keys
  would otherwise be its possessions), takes the groups, gid and uid it runs as, and its working
  directory;
- when realms runs on a terminal, the child opens a pseudo-terminal of the realm's own devpts
  (in its mount namespace, owned by the user it runs as), makes it its controlling terminal and
  hands the master to realms, which relays (:mod:`realms.lifecycle.terminal`): no host terminal
  ever reaches the realm (TIOCSTI, keystrokes read after realms exited). Without one it starts
  a session of its own, away from realms' terminal;
- exec, with every descriptor but 0, 1 and 2 closed.

The realm's files are hostile: its passwd and group are read inside its root
(:func:`realms.system.fs.read_in_root`) with a plain ``:`` split, and nothing of them is ever
run on the host side; the login shell is exec'd inside, as the user.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from realms.errors import Busy, Interrupted, RealmsError
from realms.kinds import RealmState
from realms.lifecycle import cgroups, state
from realms.store import Store
from realms.system.fs import read_in_root
from realms.system.libc import checked, libc
from realms.system.run import popen

if TYPE_CHECKING:
    from realms.lifecycle.terminal import Pty

REALM_UID = 1000
REALM_HOME = "/home/user"

# nspawn's PATH for what runs in a container (its init's environment shows the same).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_CLONE_NEWNS = 0x00020000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWTIME = 0x00000080

# The namespaces a joined process enters besides pid and user, by their name in /proc/PID/ns.
_NAMESPACES = {
    "mnt": _CLONE_NEWNS,
    "cgroup": _CLONE_NEWCGROUP,
    "uts": _CLONE_NEWUTS,
    "ipc": _CLONE_NEWIPC,
    "net": _CLONE_NEWNET,
    "time": _CLONE_NEWTIME,
}

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}

libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def _setns(fd: int, flags: int, what: str) -> None:
    checked(libc.setns(fd, flags), f"entering the {what} namespaces")


class Identity(NamedTuple):
    """Who the joined process is, from the realm's passwd and group."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str
    workdir: str


class Plan(NamedTuple):
    """Everything the child needs, found by the parent before the fork (the child only makes
    system calls with it)."""

    leader: int
    pidfd: int
    root_fd: int
    cgroup_fd: int
    namespaces: int
    """The CLONE_NEW* flags of the namespaces (not pid, not user) that differ from realms'."""
    user_namespace: bool
    drop: tuple[int, ...]
    """Capabilities the leader's bounding set lacks."""
    identity: Identity


# The realm's files


def _fields(text: str, width: int) -> Iterator[list[str]]:
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) == width:
            yield parts


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 11 else None


def _clean_path(text: str) -> str | None:
    """An absolute path from the realm's passwd, or None when it is not a sane one."""
    if text.startswith("/") and text.isprintable() and len(text) < 256:
        return text
    return None


def identity(root: Path, name: str, *, as_root: bool) -> Identity:
    """Who to run as in the realm whose root directory is ``root``: its root, or the user with
    uid 1000 (an error when there is none, as for a one-shot run)."""
    uid = 0 if as_root else REALM_UID
    try:
        passwd = read_in_root(root, "etc/passwd").decode(errors="replace")
    except OSError:
        passwd = ""
    entry = next((f for f in _fields(passwd, 7) if _number(f[2]) == uid), None)
    if entry is None:
        if not as_root:
            raise RealmsError(
                f"realm {name!r} has no user with uid {REALM_UID} in its /etc/passwd",
                hint="run as root with --root, or make the appimg with a user",
            )
        entry = ["root", "x", "0", "0", "", "/root", "/bin/sh"]
    user, gid = entry[0], _number(entry[3])
    gid = uid if gid is None else gid
    try:
        group = read_in_root(root, "etc/group").decode(errors="replace")
    except OSError:
        group = ""
    groups = {gid}
    for fields in _fields(group, 4):
        number = _number(fields[2])
        if number is not None and user in fields[3].split(","):
            groups.add(number)
    home = _clean_path(entry[5]) or ("/root" if as_root else REALM_HOME)
    shell = _clean_path(entry[6]) or "/bin/sh"
    workdir = home if as_root else REALM_HOME
    return Identity(user, uid, gid, tuple(sorted(groups))[:64], home, shell, workdir)


def environment(who: Identity, lang: str | None) -> dict[str, str]:
    """The joined command's environment: what nspawn gives a command in the realm."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": who.home,
        "USER": who.name,
        "LOGNAME": who.name,
        "SHELL": who.shell,
        "container": "systemd-nspawn",
    }
    term = os.environ.get("TERM")
    if term:
        env["TERM"] = term
    if lang:
        env["LANG"] = lang
    return env


# What the parent finds out about the leader


def _bounding_set(proc: int) -> int:
    """The leader's capability bounding set, from the kernel's /proc/PID/status (its Name line
    is escaped by the kernel: no line of it can pass for another)."""
    with open(os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc), "rb") as handle:
        for line in handle.read(1 << 16).decode(errors="replace").splitlines():
            if line.startswith("CapBnd:"):
                return int(line.partition(":")[2].strip(), 16)
    raise RealmsError("cannot read the capabilities of the realm's init")


def _last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as handle:
        return int(handle.read().strip())


def _differing_namespaces(proc: int) -> tuple[int, bool]:
    flags = 0
    for name, flag in _NAMESPACES.items():
        try:
            theirs = os.stat(f"ns/{name}", dir_fd=proc)
        except FileNotFoundError:
            continue  # a kernel without that kind of namespace
        ours = os.stat(f"/proc/self/ns/{name}")
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            flags |= flag
    theirs = os.stat("ns/user", dir_fd=proc)
    ours = os.stat("/proc/self/ns/user")
    return flags, (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino)


def leader_cgroup(proc: int, realm_cgroup: str) -> str:
    """The leader's cgroup (relative to the v2 hierarchy's root), which must be inside the
    realm's: the realm's init chose it, so it is checked before realms opens anything there."""
    with open(os.open("cgroup", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc), "rb") as handle:
        text = handle.read(1 << 16).decode(errors="replace")
    for line in text.split("\n"):
        if line.startswith("0::"):
            path = line[3:].strip("/")
            parts = path.split("/")
            inside = parts[: len(realm_cgroup.split("/"))] == realm_cgroup.split("/")
            if inside and not {"", ".", ".."} & set(parts) and path.isprintable():
                return path
    raise RealmsError("the realm's init is not in the realm's cgroup; cannot join it")


def _open_dir(path: str, dir_fd: int | None = None) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)


def make_plan(
    stack: ExitStack, leader: int, realm_cgroup: str, name: str, *, as_root: bool
) -> tuple[Plan, dict[str, str]]:
    """Open what the child needs of the realm whose init is ``leader``; every descriptor is
    closed when ``stack`` ends. Raises ProcessLookupError when the leader is gone."""
    from realms.treeview import TreeView, default_locale

    def keep(fd: int) -> int:
        stack.callback(os.close, fd)
        return fd

    pidfd = keep(os.pidfd_open(leader))
    proc = keep(_open_dir(f"/proc/{leader}"))
    root_fd = keep(_open_dir("root", proc))
    cgroup = leader_cgroup(proc, realm_cgroup)
    procs = cgroups.path(cgroup) / "cgroup.procs"
    cgroup_fd = keep(os.open(procs, os.O_WRONLY | os.O_CLOEXEC))
    namespaces, user_namespace = _differing_namespaces(proc)
    bounding = _bounding_set(proc)
    root = Path(f"/proc/self/fd/{root_fd}")
    who = identity(root, name, as_root=as_root)
    lang = default_locale(TreeView([root]))
    # Everything above was read from /proc/LEADER: it was the leader's only if the leader still
    # lives now (a pid is not reused while its process, or its zombie, is there).
    signal.pidfd_send_signal(pidfd, 0)
    drop = tuple(cap for cap in range(_last_cap() + 1) if not bounding & (1 << cap))
    plan = Plan(leader, pidfd, root_fd, cgroup_fd, namespaces, user_namespace, drop, who)
    return plan, environment(who, lang)


# The child


def _find(command: str, path: str) -> str | None:
    if "/" in command:
        return command if os.access(command, os.X_OK) else None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _new_session_keyring() -> None:
    number = _SYS_KEYCTL.get(os.uname().machine)
    if number is None:
        return
    if libc.syscall(number, _KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        failure = ctypes.get_errno()
        # Where keyctl is refused (a seccomp filter), the host's keyring is out of reach too.
        if failure not in (errno.ENOSYS, errno.EPERM):
            raise OSError(failure, f"a session keyring of its own: {os.strerror(failure)}")


def enter(plan: Plan, command: str, path: str, pty: Pty | None) -> None:
    """In the child, between fork and exec: become a process of the realm (see the module's
    docstring for the order and why)."""
    checked(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl")
    os.write(plan.cgroup_fd, b"0")
    if plan.namespaces:
        _setns(plan.pidfd, plan.namespaces, "realm's")
    if plan.user_namespace:
        _setns(plan.pidfd, _CLONE_NEWUSER, "realm's user")
    os.fchdir(plan.root_fd)
    os.chroot(".")
    for cap in plan.drop:
        checked(libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), "dropping capabilities")
    who = plan.identity
    os.setgroups(list(who.groups))
    os.setresgid(who.gid, who.gid, who.gid)
    os.setresuid(who.uid, who.uid, who.uid)
    _new_session_keyring()
    try:
        os.chdir(who.workdir)
    except OSError:
        os.chdir("/")
    if _find(command, path) is None:
        raise RealmsError(f"no command {command!r} in the realm")
    if pty is not None:
        pty.take()
    else:
        os.setsid()
    # After the changes of credentials, which clear it: the command goes when realms goes.
    checked(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0), "prctl")


# The parent


@contextmanager
def _children_in_pid_namespace(pidfd: int) -> Iterator[None]:
    """Make the children of this thread be born in the leader's pid namespace, for the block."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(pidfd, _CLONE_NEWPID, "realm's pid")
        try:
            yield
        finally:
            _setns(own, _CLONE_NEWPID, "host's pid")
    finally:
        os.close(own)


def run_joined(plan: Plan, argv: list[str], env: dict[str, str], name: str) -> int:
    """Run ``argv`` as a process of the realm that ``plan`` describes; return its exit status
    (128 + N for a signal N, as a shell says)."""
    pty = None
    if any(os.isatty(fd) for fd in (0, 1, 2)):
        from realms.lifecycle.terminal import Pty

        pty = Pty.for_this_process()
    failure_read, failure_write = os.pipe2(os.O_CLOEXEC)

    def setup() -> None:
        try:
            enter(plan, argv[0], env["PATH"], pty)
        except BaseException as error:
            os.write(failure_write, str(error).encode(errors="replace")[:4000])
            raise

    try:
        with _children_in_pid_namespace(plan.pidfd):
            process = popen(argv, env=env, setup=setup)
    except subprocess.SubprocessError:
        os.close(failure_write)
        failure_write = -1
        detail = os.read(failure_read, 4096).decode(errors="replace") or "unknown error"
        if pty is not None:
            pty.close()
        raise RealmsError(f"realm {name!r}: {detail}") from None
    finally:
        os.close(failure_read)
        if failure_write >= 0:
            os.close(failure_write)
    if pty is None:
        return _status(_wait_forwarding(process))
    return _status(pty.relay(process))


def _wait_forwarding(process: subprocess.Popen[bytes]) -> int:
    """Wait for a command without a terminal; Ctrl-C on realms' terminal reaches it (it is in
    a session of its own)."""

    def forward(signum: int, _frame: object) -> None:
        process.send_signal(signum)

    previous = signal.signal(signal.SIGINT, forward)
    try:
        return _wait_or_hang_up(process)
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait_or_hang_up(process: subprocess.Popen[bytes]) -> int:
    """Wait for the command; if realms is told to stop, the command is hung up first and then
    the Interrupted error goes on."""
    try:
        return process.wait()
    except Interrupted:
        from realms.lifecycle.terminal import hang_up

        hang_up(process)
        raise


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def join(
    leader: int, realm_cgroup: str, name: str, command: list[str], *, root: bool = False
) -> int | None:
    """Run ``command`` (a login shell when empty) in realm ``name`` whose init is ``leader``
    and whose cgroup is ``realm_cgroup`` (relative to the cgroup2 hierarchy's root); return its
    exit status, or None when the leader is gone."""
    with ExitStack() as stack:
        try:
            plan, env = make_plan(stack, leader, realm_cgroup, name, as_root=root)
        except (ProcessLookupError, FileNotFoundError):
            return None
        return run_joined(plan, command or [plan.identity.shell, "-l"], env, name)


def join_realm(store: Store, name: str, command: list[str], *, root: bool = False) -> int | None:
    """Run ``command`` in realm ``name`` if it is booted and return its exit status; None when
    it is stopped (the caller runs it in a container of its own, as for any realm)."""
    runtime = state.running(store, name)
    if runtime is None:
        return None
    if runtime.state != RealmState.RUNNING or runtime.leader_pid is None:
        raise Busy(
            f"realm {name!r} is {runtime.state}",
            hint="wait until it has started, or stop it; 'realms list' shows its state",
        )
    status = join(runtime.leader_pid, store.cgroup_name(name), name, command, root=root)
    if status is None:
        raise Busy(f"realm {name!r} stopped while realms was joining it", hint="run it again")
    return status
