"""How ``realms start`` starts a realm's supervisor (:mod:`realms.lifecycle.supervisor`): forked
twice, in a session of its own, its output to the realm's console log, with a pipe back to the
command for one report (ready, or an error).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from realms.errors import RealmsError
from realms.store import Store


class Report:
    """The pipe back to ``realms start``: one JSON line, then closed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, data: dict[str, Any]) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, json.dumps(data).encode() + b"\n")
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def launch(store: Store, name: str, program: Callable[[Report], int]) -> tuple[int, int]:
    """Fork the realm's supervisor, detached, to run ``program`` (its exit status); return its
    pid and the pipe it reports on (read end; the caller closes it). The caller holds the
    realm's lock and checked it is stopped."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid_read, pid_write = os.pipe2(os.O_CLOEXEC)
    console = _open_console(store, name)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    child = os.fork()
    if child == 0:
        # Forked twice, so that the supervisor is nobody's child here (no zombie in a caller
        # that lives on, as an API user may) and in a session of its own.
        status = 1
        try:
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.write(pid_write, str(os.getpid()).encode())
                _detach(console, keep=[write_end])
                status = program(Report(write_end))
            else:
                status = 0
        except BaseException as error:
            with contextlib.suppress(BaseException):
                Report(write_end).send({"error": f"the supervisor failed: {error}"})
        finally:
            os._exit(status)
    os.close(write_end)
    os.close(pid_write)
    os.close(console)
    os.waitpid(child, 0)
    try:
        text = os.read(pid_read, 32)
    finally:
        os.close(pid_read)
    if not text:
        os.close(read_end)
        raise RealmsError(f"the supervisor of realm {name!r} could not be started")
    return int(text), read_end


CONSOLE_LIMIT = 1 << 20
"""A console log longer than this is moved to ``.old`` when the realm starts again; a shorter
one goes on (each boot begins with the supervisor's "booting" line): no rename, and no delete
of the last ``.old``, in the way of every start."""


def _open_console(store: Store, name: str) -> int:
    """The console log to append to; the previous one kept beside it as ``.old`` once it is
    long (:data:`CONSOLE_LIMIT`)."""
    path = store.console_log_path(name)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    if os.fstat(fd).st_size <= CONSOLE_LIMIT:
        return fd
    os.close(fd)
    os.replace(path, path.with_name(path.name + ".old"))
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


def _detach(console: int, keep: list[int]) -> None:
    """stdin from /dev/null, stdout and stderr to the console log, no other descriptor of the
    command that forked it (its locks above all: a lock belongs to every copy of its file)."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(console, 1)
    os.dup2(console, 2)
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
