"""Running a command or a shell in a root filesystem with systemd-nspawn.

nspawn is told what it needs to know about the host rather than left to guess: where systemd is
PID 1 it registers the container with systemd-machined as usual; elsewhere (containers, CI
machines, these VMs) it must not try (``--register=no --keep-unit``). The console is interactive
(a pseudo-terminal, job control, Ctrl-C reaching the shell) when realms runs on a terminal, and a
plain pipe otherwise so that scripts can feed stdin and read stdout. The command runs as PID 2
under nspawn's stub init, so that signals and zombie reaping behave as on a normal system, and
its exit status is passed through.

A booted realm (:mod:`realms.lifecycle`) is the same container with ``boot`` set: the tree's
own init runs as PID 1 (``--boot``), nspawn reports READY on ``NOTIFY_SOCKET`` once init is up,
the console is read-only output (to the realm's console log), and :func:`launch` returns at
once, leaving the waiting to the supervisor. SIGTERM to that nspawn asks init to shut down.

Every container runs in a user namespace unless told otherwise (see :mod:`realms.system.idmap`):
its root is an unprivileged host uid, and it cannot make device nodes. Its root filesystem is
prepared in a mount namespace of the container's own, made between fork and exec of nspawn, so
that nothing of it is visible on the host and all of it vanishes with the container, even when
realms is killed: the tree bound onto itself *without* the store's ``nosuid`` (so that sudo works
inside while no host user can run a realm's setuid files), or for an image realm the overlay
(an idmapped clone of the activation below, the realm's layer above).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO, NamedTuple

from realms.errors import Interrupted, RealmsError
from realms.system import idmap
from realms.system.run import popen

REALM_HOME = "/home/user"


class Bind(NamedTuple):
    source: Path
    target: str
    readonly: bool = False
    idmap: bool = False
    """Show the source's owners as they are on the host (host uid 1000 as the realm's 1000):
    for trees realms owns (a home, Shared/, a build's scratch). Host paths a user chose are
    bound as they are: in a user namespace their owners appear as nobody."""

    def option(self, userns: bool = False) -> str:
        suffix = ":idmap" if self.idmap and userns else ""
        return f"--bind{'-ro' if self.readonly else ''}={self.source}:{self.target}{suffix}"


class Overlay(NamedTuple):
    """A root filesystem made of a read-only image and a writable layer: ``upper`` and
    ``work`` in the store, or, with ``tmpfs`` set, in a tmpfs mounted there (thrown away).
    In a user namespace an idmapped clone of ``lower`` is attached at ``lower_view`` (an empty
    directory of the realm's) and used as the lower layer."""

    lower: Path
    upper: Path
    work: Path
    tmpfs: Path | None = None
    lower_view: Path | None = None


PICK = "pick"
"""A fresh uid range chosen by nspawn for each run (update and build containers: their files
keep their on-disk owners through an idmapped root)."""


class Container(NamedTuple):
    rootfs: Path
    machine: str
    """Machine name, also the hostname inside."""
    command: Sequence[str] = ()
    """What to run; empty for a login shell."""
    user: str | None = None
    """Run as this user of the container; None for root."""
    binds: Sequence[Bind] = ()
    tmpfs: Sequence[str] = ()
    private_network: bool = False
    workdir: str | None = None
    environment: Mapping[str, str] = MappingProxyType({})
    pristine: bool = False
    """Change nothing in the tree but what the command changes: the host's resolv.conf is bound,
    not copied, and the timezone is left alone (for appimg update sessions)."""
    overlay: Overlay | None = None
    """Mount this overlay on ``rootfs`` for the run (realms on block and sealed images)."""
    read_only: bool = False
    scratch: Sequence[tuple[Path, str]] = ()
    """tmpfs mounts (directory, options) that prepare_root makes in the container's mount
    namespace, for binds whose owner nspawn must not change (an ephemeral home)."""
    private_users: int | str | None = PICK
    """The user namespace: the first host uid of the realm's own range, :data:`PICK`, or None
    to run as host root (a realm with ``isolation = "privileged"``)."""
    boot: bool = False
    """Run the tree's init as PID 1 instead of ``command`` (a booted realm)."""
    extra_args: Sequence[str] = ()
    """More nspawn options (a booted realm's network)."""


def systemd_is_pid1() -> bool:
    """sd_booted(): whether systemd runs this machine (and machined can register containers)."""
    return Path("/run/systemd/system").is_dir()


def nspawn_argv(
    container: Container, interactive: bool, systemd_pid1: bool | None = None
) -> list[str]:
    """The command line that runs ``container``; ``systemd_pid1`` (default: detected) says
    whether nspawn may register the container with systemd-machined. Its root filesystem is
    prepared by :func:`prepare_root` in the child before nspawn starts."""
    argv = [
        "systemd-nspawn",
        "--quiet",
        f"--directory={container.rootfs}",
        f"--machine={container.machine}",
        "--link-journal=no",
    ]
    if container.boot:
        # The console's output goes to the realm's log; nothing is typed at it.
        argv += ["--boot", "--notify-ready=yes", "--console=read-only"]
    else:
        argv += ["--as-pid2", f"--console={'interactive' if interactive else 'pipe'}"]
    if not (systemd_is_pid1() if systemd_pid1 is None else systemd_pid1):
        argv += ["--register=no", "--keep-unit"]
    userns = container.private_users is not None
    if userns:
        users = container.private_users
        if isinstance(users, int):
            users = f"{users}:{idmap.RANGE_SIZE}"
        # The overlay's layers are idmapped below it by prepare_root; nspawn cannot idmap an
        # overlayfs mount itself.
        ownership = "off" if container.overlay is not None else "map"
        argv += [f"--private-users={users}", f"--private-users-ownership={ownership}"]
    if container.user and not container.boot:
        argv.append(f"--user={container.user}")
    if container.workdir and not container.boot:
        argv.append(f"--chdir={container.workdir}")
    if container.private_network:
        argv.append("--private-network")
    if container.read_only:
        argv.append("--read-only")
    argv += [bind.option(userns) for bind in container.binds]
    argv += [f"--tmpfs={path}" for path in container.tmpfs]
    if container.pristine:
        argv += ["--resolv-conf=bind-host", "--timezone=off"]
    argv += [f"--setenv={key}={value}" for key, value in container.environment.items()]
    argv += container.extra_args
    if container.boot:
        # systemd would name the machine after the tree's /etc/hostname (the appimg's).
        argv += ["--", f"systemd.hostname={container.machine}"]
    elif container.command:
        argv += ["--", *container.command]
    return argv


def _check_layer_paths(overlay: Overlay) -> None:
    paths = [overlay.lower, overlay.upper, overlay.work, overlay.lower_view, overlay.tmpfs]
    if any(path is not None and set(str(path)) & set(",:\\") for path in paths):
        raise RealmsError(
            "the store's path has a ',', ':' or '\\', which overlayfs cannot take in a layer"
        )


def _userns_for(container: Container) -> idmap.UserNamespace | None:
    """The user namespace whose mapping an overlay's idmapped lower layer takes, checked to
    work here; None for a tree, which nspawn idmaps itself (the check runs once per
    filesystem and boot, so that a refusal is one clear line rather than nspawn's)."""
    users = container.private_users
    if users is None:
        return None
    below = container.overlay.lower if container.overlay else container.rootfs
    if container.overlay is None and idmap.known_to_idmap(below):
        return None
    base = users if isinstance(users, int) else idmap.LAST_BASE
    namespace = idmap.make_user_namespace(base)
    try:
        idmap.require_idmap(below, namespace, f"container {container.machine}")
    except BaseException:
        namespace.close()
        raise
    if container.overlay is None:
        namespace.close()
        return None
    return namespace


def _paths_used(container: Container) -> list[Path]:
    """The host paths a container's mounts come from."""
    paths = [container.rootfs, *(bind.source for bind in container.binds)]
    paths += [directory for directory, _options in container.scratch]
    if container.overlay is not None:
        layers = container.overlay
        paths += [layers.lower, layers.upper, layers.work]
        paths += [p for p in (layers.tmpfs, layers.lower_view) if p is not None]
    return paths


def prepare_root(container: Container, userns: idmap.UserNamespace | None) -> None:
    """Run in the child, before nspawn: a private mount namespace, then the root filesystem.

    A tree is bound onto itself with setuid allowed (the store is mounted nosuid for the host's
    sake). An image realm gets its overlay: the activation (idmapped in a user namespace) below,
    the realm's layer, or a fresh tmpfs, above.
    """
    idmap.enter_private_mount_namespace(_paths_used(container))
    if container.boot:
        # nspawn's cleanup refuses to remove its propagation directory from a /run that is not
        # a tmpfs (machines without systemd) and says so on every exit; a tmpfs of this mount
        # namespace's own keeps the message out of the console log and nothing on the host.
        os.makedirs(_PROPAGATE_PARENT, mode=0o755, exist_ok=True)
        idmap.mount("realms-nspawn", Path(_PROPAGATE_PARENT), "tmpfs", "mode=0755")
    for directory, options in container.scratch:
        idmap.mount("realms-scratch", directory, "tmpfs", options)
    overlay = container.overlay
    if overlay is None:
        idmap.bind_allowing_suid(container.rootfs)
        return
    lower = overlay.lower
    if userns is not None and overlay.lower_view is not None:
        idmap.mount_idmapped(overlay.lower, overlay.lower_view, userns)
        lower = overlay.lower_view
    upper, work = overlay.upper, overlay.work
    if overlay.tmpfs is not None:
        owner = userns.base if userns is not None else 0
        idmap.mount("realms-overlay", overlay.tmpfs, "tmpfs", f"mode=0755,uid={owner},gid={owner}")
        upper, work = overlay.tmpfs / "upper", overlay.tmpfs / "work"
        for layer in (upper, work):
            layer.mkdir(mode=0o755)
            os.chown(layer, owner, owner)
    idmap.mount(
        "realms-overlay",
        container.rootfs,
        "overlay",
        f"lowerdir={lower},upperdir={upper},workdir={work}",
    )


_PROPAGATE_PARENT = "/run/systemd/nspawn"

# nspawn's cleanup refuses to remove its propagation directory when /run is not a tmpfs (as on
# machines without systemd) and says so on every exit; the message is noise to realms' users.
_NOISE = re.compile(rb'^Attempted to remove disk file system under "/run/systemd/nspawn/propagate/')


LineFilter = Callable[[bytes], bool]


def _copy_stderr(source: IO[bytes], target: IO[bytes], consume: LineFilter | None) -> None:
    for line in iter(source.readline, b""):
        if _NOISE.match(line) or (consume is not None and consume(line)):
            continue
        target.write(line)
        target.flush()


def launch(
    container: Container,
    argv: list[str],
    *,
    stdin: int | IO[bytes] | None,
    stdout: int | IO[bytes] | None,
    stderr: int | IO[bytes] | None,
    env: dict[str, str] | None = None,
    cgroup: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start nspawn (``argv``, from :func:`nspawn_argv`) with the container's root prepared in
    its own mount namespace, and return the process; it gets SIGTERM (stops its container) if
    the caller dies. With ``cgroup`` (a cgroup2 directory) nspawn is moved there before exec,
    so that everything of the container is in it."""
    if container.overlay is not None:
        _check_layer_paths(container.overlay)
    userns = _userns_for(container)
    # What went wrong in the child before exec comes back through this pipe.
    failure_read, failure_write = os.pipe2(os.O_CLOEXEC)
    procs = os.fsencode(cgroup / "cgroup.procs") if cgroup is not None else None

    def prepare() -> None:
        try:
            if procs is not None:
                _join_cgroup(procs)
            prepare_root(container, userns)
        except BaseException as error:
            os.write(failure_write, str(error).encode(errors="replace")[:4000])
            raise

    try:
        return popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            die_with_parent=True,
            setup=prepare,
        )
    except subprocess.SubprocessError:
        os.close(failure_write)
        failure_write = -1
        detail = os.read(failure_read, 4096).decode(errors="replace") or "unknown error"
        raise RealmsError(
            f"preparing the root filesystem of {container.machine} failed: {detail}"
        ) from None
    finally:
        os.close(failure_read)
        if failure_write >= 0:
            os.close(failure_write)
        if userns is not None:
            userns.close()


def _join_cgroup(procs: bytes) -> None:
    """Move the calling process into the cgroup whose ``cgroup.procs`` is ``procs`` ("0" is the
    writer itself)."""
    fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def run(
    container: Container, *, log: IO[bytes] | None = None, consume: LineFilter | None = None
) -> int:
    """Run the container to completion and return its exit status.

    Output goes to realms' own stdout and stderr, or with ``log`` to that file (stdin is then
    empty). ``consume`` sees every line of stderr first and keeps those it returns True for out
    of the output (progress reports).

    If realms is told to stop (SIGTERM, SIGHUP), the container is stopped first and then the
    Interrupted error goes on, so that callers never take a stopped run for a finished one. If
    realms is killed outright, nspawn gets SIGTERM from the kernel and stops the container.
    """
    interactive = log is None and sys.stdin.isatty() and sys.stdout.isatty()
    process = launch(
        container,
        nspawn_argv(container, interactive),
        stdin=subprocess.DEVNULL if log is not None else None,
        stdout=log,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    target = log if log is not None else sys.stderr.buffer
    copier = threading.Thread(
        target=_copy_stderr, args=(process.stderr, target, consume), daemon=True
    )
    copier.start()
    # Ctrl-C belongs to what runs in the container (nspawn passes it on); realms waits.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupted: Interrupted | None = None
    try:
        while True:
            try:
                returncode = process.wait()
                break
            except Interrupted as error:
                interrupted = error
                process.terminate()
    finally:
        signal.signal(signal.SIGINT, previous)
        copier.join()
        process.stderr.close()
    if interrupted is not None:
        raise interrupted
    return returncode
