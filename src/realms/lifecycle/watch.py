"""The idle supervisor: what a booted realm's supervisor becomes once the realm is ready.

The supervisor (:mod:`realms.lifecycle.supervisor`) is a fork of ``realms start``, with
everything that command imported: about 12 MiB of its own per realm, for a process that then
only waits. Once the realm is READY it executes this module instead, in a fresh interpreter
(``python -I -S``, nothing imported but the standard library's basics and
:mod:`realms.lifecycle.cgroups`: about 5 MiB). The process stays the same: its pid (the runtime
state names it), its children (nspawn), its being the realm's child subreaper, its run lock
(the descriptor is kept open across the exec), its notify socket and console.

It waits for nspawn to exit, passing a SIGTERM on (what ``realms stop`` sends) after recording
the realm as stopping. When nspawn has exited:

- after a clean shutdown of a realm with no network of its zone (nothing left in its cgroup,
  not a reboot from inside), it cleans up itself as the supervisor would (the runtime files and
  the cgroup) and exits: ``realms stop`` costs no second start of realms;
- otherwise (a reboot, processes left in the cgroup, a private network to release) it executes
  the full supervisor again (:func:`realms.lifecycle.supervisor.resume_main`), which boots the
  realm again or cleans up after it, as it does when nothing was ever executed.

The supervisor decides every file's name and content (the spec, JSON in ``argv``): what is
written here is what it would have written.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
from typing import Any

from realms.lifecycle import cgroups

BLOCKED = {signal.SIGTERM, signal.SIGCHLD}
"""Blocked across each exec (a signal that comes meanwhile waits, never kills the process with
its default action) and unblocked once the handlers are in place."""


def command(function: str, spec: dict[str, Any], *, lean: bool) -> tuple[list[str], int]:
    """The argv of a fresh interpreter that calls ``function`` (``module.name`` below
    realms.lifecycle) with ``spec``, and the descriptor it reads the spec from (a pipe, to be
    kept open across the exec; ``ps`` shows the realm's name, not the spec). ``lean``:
    without site, user site or PYTHON* variables."""
    import realms

    top = os.path.dirname(os.path.dirname(os.path.abspath(realms.__file__)))
    module, name = function.split(".")
    bootstrap = (
        f"import sys;sys.path.insert(0,sys.argv[1]);"
        f"from realms.lifecycle import {module};{module}.{name}()"
    )
    data = json.dumps(spec).encode()
    read_end, write_end = os.pipe()
    try:
        if len(data) > 60000 or os.write(write_end, data) != len(data):
            raise OSError("the supervisor's spec does not fit a pipe")
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    os.set_inheritable(read_end, True)
    flags = ["-I", "-S"] if lean else []
    argv = [sys.executable, *flags, "-c", bootstrap, top, str(read_end), "realm", spec["name"]]
    return argv, read_end


def read_spec() -> dict[str, Any]:
    """The spec of :func:`command`, in the program it started."""
    fd = int(sys.argv[2])
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    spec: dict[str, Any] = json.loads(b"".join(chunks))
    return spec


def note(message: str) -> None:
    """A line in the console log, as the supervisor writes them."""
    from time import gmtime, strftime

    print(
        f"realms: {strftime('%Y-%m-%dT%H:%M:%SZ', gmtime())} {message}", file=sys.stderr, flush=True
    )


class Watcher:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.nspawn = int(spec["nspawn"])
        self.stop_requested = False

    def run(self) -> None:
        wake_read, wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda _n, _f: None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED)
        notify = int(self.spec["notify_fd"])
        while True:
            status = self._reap()
            if status is not None:
                break
            readable, _, _ = select.select([notify, wake_read], [], [])
            if notify in readable:
                self._drain(notify)
            if wake_read in readable:
                self._drain(wake_read)
        note(f"nspawn exited with status {status}")
        self._after(status)

    def _on_term(self, _signum: int, _frame: Any) -> None:
        if not self.stop_requested:
            self._write_stopping()
        self.stop_requested = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.nspawn, signal.SIGTERM)

    def _write_stopping(self) -> None:
        path, temporary = self.spec["state_path"], self.spec["temporary_path"]
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(self.spec["stopping_record"], handle)
            os.replace(temporary, path)
        except OSError as error:
            note(f"cannot record the realm as stopping: {error}")

    @staticmethod
    def _drain(fd: int) -> None:
        # nspawn's later notifications (STATUS=, STOPPING=1) change nothing that is recorded.
        with contextlib.suppress(OSError):
            os.read(fd, 4096)

    def _reap(self) -> int | None:
        """Reap every child that exited (nspawn, or orphans of the realm reparented here);
        nspawn's exit status if it was one of them."""
        found = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return found if found is not None else 255
            if pid == 0:
                return found
            if pid == self.nspawn:
                found = os.waitstatus_to_exitcode(status)

    def _after(self, status: int) -> None:
        cgroup = cgroups.path(self.spec["cgroup"])
        rebooting = status == self.spec["reboot_status"] and not self.stop_requested
        if rebooting or not self.spec["lean_cleanup"] or cgroups.populated(cgroup):
            resume = dict(self.spec["resume"], status=status, stop_requested=self.stop_requested)
            argv, _spec = command("supervisor.resume_main", resume, lean=False)
            signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)
            os.execv(argv[0], argv)  # noqa: S606 (the supervisor again, argv made here)
        if not self.stop_requested:
            self._write_stopping()
        cgroups.remove(self.spec["cgroup"])
        for path in self.spec["forget"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        note(f"realm {self.spec['name']} stopped")
        # Out at once: the interpreter's teardown would keep `realms stop` waiting for nothing.
        os._exit(0 if status == 0 else 1)


def main() -> None:
    """The watcher's program (see :func:`command`)."""
    Watcher(read_spec()).run()
