"""The one way realms runs external programs.

Every subprocess goes through :func:`run` or :func:`popen`: the command line is logged (visible
with ``-v``), a program that is not installed becomes an error that names the Debian package to
install, and a failing command becomes :class:`~realms.errors.CommandFailed`, which names the
command and the last lines of its stderr.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from realms import log
from realms.errors import CommandFailed, RealmsError
from realms.system.libc import libc

# Where a tool we call comes from, for the hint when it is missing.
PACKAGE_OF = {
    "btrfs": "btrfs-progs",
    "mkfs.btrfs": "btrfs-progs",
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "debootstrap": "debootstrap",
    "veritysetup": "cryptsetup-bin",
    "mkfs.erofs": "erofs-utils",
    "zstd": "zstd",
    "xz": "xz-utils",
    "tar": "tar",
    "losetup": "mount",
    "mount": "mount",
    "umount": "mount",
    "nft": "nftables",
    "ip": "iproute2",
    "nsenter": "util-linux",
}

Argv = Sequence[str | Path]


def _strings(argv: Argv) -> list[str]:
    return [str(arg) for arg in argv]


def _missing(program: str) -> RealmsError:
    package = PACKAGE_OF.get(program)
    hint = f"install it: apt-get install {package}" if package else None
    return RealmsError(f"{program} is not installed (needed for this command)", hint=hint)


def run(
    argv: Argv,
    *,
    input: str | bytes | None = None,
    check: bool = True,
    capture: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """Run a command to completion; raise CommandFailed when it fails and ``check`` is set.

    With ``capture`` (the default) stdout and stderr are collected; otherwise they are inherited.
    """
    args = _strings(argv)
    log.debug("+ " + shlex.join(args))
    try:
        result = subprocess.run(
            args,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            stdin=subprocess.DEVNULL if input is None else None,
            env=env,
            cwd=cwd,
            text=text,
            check=False,
        )
    except FileNotFoundError as error:
        if error.filename == args[0]:
            raise _missing(args[0]) from None
        raise
    if check and result.returncode != 0:
        stderr = result.stderr if capture else ""
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        raise CommandFailed(args, result.returncode, stderr or "")
    return result


def popen(
    argv: Argv,
    *,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    start_new_session: bool = False,
    die_with_parent: bool | signal.Signals = False,
    setup: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a command and return the process; the caller waits for it.

    With ``die_with_parent`` the kernel sends the command SIGTERM (or the signal given) if
    realms dies first, even by SIGKILL, so that no container outlives the command that started
    it. ``setup`` runs in the child between fork and exec (after the death signal is asked
    for); if it raises, :class:`subprocess.SubprocessError` is raised here.
    """
    args = _strings(argv)
    log.debug("+ " + shlex.join(args))
    try:
        return subprocess.Popen(
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=start_new_session,
            preexec_fn=_child_setup(die_with_parent, setup),  # noqa: PLW1509
        )
    except FileNotFoundError as error:
        if error.filename == args[0]:
            raise _missing(args[0]) from None
        raise


_PR_SET_PDEATHSIG = 1


def _child_setup(
    die_with_parent: bool | signal.Signals, setup: Callable[[], None] | None
) -> Callable[[], None] | None:
    ask = _death_signal(die_with_parent) if die_with_parent else None
    if setup is None:
        return ask

    def both() -> None:
        if ask is not None:
            ask()
        setup()

    return both


def _death_signal(which: bool | signal.Signals) -> Callable[[], None]:
    """A function for the child (between fork and exec) that asks for a signal when realms
    dies; libc is looked up here, in the parent, so the child only makes one call."""
    prctl = libc.prctl
    number = int(which) if isinstance(which, signal.Signals) else int(signal.SIGTERM)

    def ask() -> None:
        prctl(_PR_SET_PDEATHSIG, number)

    return ask


def check_exit(argv: Argv, returncode: int, stderr: bytes | str) -> None:
    """Raise CommandFailed for a process started with :func:`popen` that failed."""
    if returncode != 0:
        text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        raise CommandFailed(_strings(argv), returncode, text)
