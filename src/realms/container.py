"""Running a command or a shell in a root filesystem with systemd-nspawn.

nspawn is told what it needs to know about the host rather than left to guess: where systemd is
PID 1 it registers the container with systemd-machined as usual; elsewhere (containers, CI
machines, these VMs) it must not try (``--register=no --keep-unit``). The console is interactive
(a pseudo-terminal, job control, Ctrl-C reaching the shell) when realms runs on a terminal, and a
plain pipe otherwise so that scripts can feed stdin and read stdout. The command runs as PID 2
under nspawn's stub init, so that signals and zombie reaping behave as on a normal system, and
its exit status is passed through.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from realms.errors import Interrupted, RealmsError
from realms.system.fs import read_in_root
from realms.system.mounts import in_own_mount_namespace
from realms.system.run import popen

REALM_HOME = "/home/user"


@dataclass(frozen=True)
class Bind:
    source: Path
    target: str
    readonly: bool = False

    def option(self) -> str:
        return f"--bind{'-ro' if self.readonly else ''}={self.source}:{self.target}"


@dataclass(frozen=True)
class Overlay:
    """A root filesystem made of a read-only image and a writable layer: ``upper`` and
    ``work`` in the store, or, with ``tmpfs`` set, in a tmpfs mounted there (thrown away)."""

    lower: Path
    upper: Path
    work: Path
    tmpfs: Path | None = None


# Runs as the container's wrapper, in a mount namespace of its own: the overlay (and tmpfs)
# exist only for this run and vanish with it, even if realms is killed; nothing is left mounted.
_OVERLAY_SCRIPT = """set -e
lower=$1 upper=$2 work=$3 root=$4 tmp=$5
shift 5
if [ -n "$tmp" ]; then
    mount -t tmpfs -o mode=0755 realms-overlay "$tmp"
    mkdir "$tmp/upper" "$tmp/work"
    upper=$tmp/upper work=$tmp/work
fi
mount -t overlay realms-overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
exec "$@"
"""


def _overlay_wrapper(container: Container) -> list[str]:
    overlay = container.overlay
    if overlay is None:
        return []
    paths = [overlay.lower, overlay.upper, overlay.work, container.rootfs]
    if any(set(str(path)) & set(",:\\") for path in paths):
        raise RealmsError(
            "the store's path has a ',', ':' or '\\', which overlayfs cannot take in a layer"
        )
    return in_own_mount_namespace(_OVERLAY_SCRIPT, *paths, overlay.tmpfs or "")


@dataclass
class Container:
    rootfs: Path
    machine: str
    """Machine name, also the hostname inside."""
    command: list[str] = field(default_factory=list)
    """What to run; empty for a login shell."""
    user: str | None = None
    """Run as this user of the container; None for root."""
    binds: list[Bind] = field(default_factory=list)
    tmpfs: list[str] = field(default_factory=list)
    private_network: bool = False
    workdir: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    pristine: bool = False
    """Change nothing in the tree but what the command changes: the host's resolv.conf is bound,
    not copied, and the timezone is left alone (for appimg update sessions)."""
    overlay: Overlay | None = None
    """Mount this overlay on ``rootfs`` for the run (realms on block and sealed images)."""
    read_only: bool = False


def systemd_is_pid1() -> bool:
    """sd_booted(): whether systemd runs this machine (and machined can register containers)."""
    return Path("/run/systemd/system").is_dir()


def user_of_uid(rootfs: Path, uid: int) -> str | None:
    """The name of ``uid`` in the container's /etc/passwd, read without leaving the tree."""
    try:
        text = read_in_root(rootfs, "etc/passwd").decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2] == str(uid):
            return fields[0]
    return None


def default_locale(rootfs: Path) -> str | None:
    """LANG as the image sets it (/etc/default/locale or /etc/locale.conf), for commands that
    do not go through a login (which would read it with PAM)."""
    for relative in ("etc/default/locale", "etc/locale.conf"):
        try:
            text = read_in_root(rootfs, relative, limit=4096).decode(errors="replace")
        except OSError:
            continue
        match = re.search(r"^\s*LANG=\"?([A-Za-z0-9_.@-]+)\"?\s*$", text, re.MULTILINE)
        if match:
            return match[1]
    return None


def check_os_tree(rootfs: Path, what: str) -> None:
    """nspawn refuses trees without /usr and os-release; say so before it does."""
    has_release = any(os.path.lexists(rootfs / p) for p in ("etc/os-release", "usr/lib/os-release"))
    if not (rootfs / "usr").is_dir() or not has_release:
        raise RealmsError(
            f"{what} does not look like an OS tree (it needs /usr and /etc/os-release or "
            "/usr/lib/os-release)",
            hint="import a complete root filesystem",
        )


def nspawn_argv(
    container: Container, interactive: bool, systemd_pid1: bool | None = None
) -> list[str]:
    """The command line that runs ``container``; ``systemd_pid1`` (default: detected) says
    whether nspawn may register the container with systemd-machined."""
    argv = [
        *_overlay_wrapper(container),
        "systemd-nspawn",
        "--quiet",
        f"--directory={container.rootfs}",
        f"--machine={container.machine}",
        "--as-pid2",
        "--link-journal=no",
        f"--console={'interactive' if interactive else 'pipe'}",
    ]
    if not (systemd_is_pid1() if systemd_pid1 is None else systemd_pid1):
        argv += ["--register=no", "--keep-unit"]
    if container.user:
        argv.append(f"--user={container.user}")
    if container.workdir:
        argv.append(f"--chdir={container.workdir}")
    if container.private_network:
        argv.append("--private-network")
    if container.read_only:
        argv.append("--read-only")
    argv += [bind.option() for bind in container.binds]
    argv += [f"--tmpfs={path}" for path in container.tmpfs]
    if container.pristine:
        argv += ["--resolv-conf=bind-host", "--timezone=off"]
    argv += [f"--setenv={key}={value}" for key, value in container.environment.items()]
    if container.command:
        argv += ["--", *container.command]
    return argv


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
    process = popen(
        nspawn_argv(container, interactive),
        stdin=subprocess.DEVNULL if log is not None else None,
        stdout=log,
        stderr=subprocess.PIPE,
        die_with_parent=True,
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
