"""One build: its log file, its stages, and the two ways it runs things.

Everything a build runs writes to the build log (``STORE/logs/build-NAME-TIME.log``); the
terminal shows one line per stage with its time, and a bar where the amount of work is known.
A stage that fails raises an error that names the stage, shows the last lines of the log and
gives the log's path.

Host tools (the bootstrapper) run on the host with the image's directory as their target; every
other step runs *inside* the image, in a systemd-nspawn container with the host's network, so
that package scripts and modules never touch the host.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from realms import log
from realms.builder.config import BuildConfig
from realms.container import Bind, Container
from realms.container import run as run_container
from realms.errors import Interrupted, RealmsError
from realms.system.run import popen

LOG_TAIL = 15
LOGS_KEPT = 10


class StageFailed(RealmsError):
    """A build stage failed; the message names it, the details are the end of the log."""


@dataclass
class BuildJob:
    config: BuildConfig
    tree: Path
    """The root filesystem being built."""
    log_path: Path
    package_cache: Path
    scratch: Path
    """A host directory bound read-only into the image at /run/realms-build."""
    environment: dict[str, str] = field(default_factory=dict)
    """For the bootstrapper and every step in the image (SOURCE_DATE_EPOCH)."""
    _log: IO[bytes] | None = field(default=None, repr=False)
    stage_name: str = ""

    @property
    def log(self) -> IO[bytes]:
        assert self._log is not None, "the job's log is open while it runs"
        return self._log

    def open(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in close())
        self.note(f"build of appimg {self.config.name} from {self.config.origin}")

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def note(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.log.write(f"\n==> {stamp} {text}\n".encode())
        self.log.flush()

    def tail(self, count: int = LOG_TAIL) -> list[str]:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in lines if line.strip()][-count:]

    @contextmanager
    def stage(self, name: str, title: str, *, show: bool = True) -> Iterator[None]:
        """A stage: a step line with its time (unless it shows a bar of its own: ``show``
        False); a failure names the stage and shows the end of the log."""
        self.stage_name = name
        self.note(f"stage {name}: {title}")
        with log.step(title) if show else nullcontext():
            try:
                yield
            except StageFailed:
                raise
            except (Interrupted, KeyboardInterrupt):
                self.note(f"stage {name}: interrupted")
                raise
            except RealmsError as error:
                self.note(f"stage {name} failed: {error.message}")
                raise self.failure(error.message) from None

    def failure(self, reason: str) -> StageFailed:
        return StageFailed(
            f"building appimg {self.config.name} failed in stage '{self.stage_name}': {reason}",
            hint=f"the full build log is {self.log_path}",
            details=self.tail(),
        )

    def run_on_host(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Run a host tool (a bootstrapper) with its output in the log.

        It runs in new PID and mount namespaces of its own: the mounts it makes in the new root
        (/proc, /dev, ...) are never seen on the host, and when the build stops (an error,
        Ctrl-C, SIGTERM, or realms killed outright) the whole namespace goes at once, leaving
        no process behind and nothing mounted.

        With ``progress``, the tool's stderr is a pseudo-terminal, so that a tool that draws a
        progress display only on a terminal does: ``progress`` sees each piece of it (the
        text between carriage returns), and every whole line goes to the log.
        """
        self.note("$ " + " ".join(argv))
        isolated = [
            "unshare",
            "--mount",
            "--propagation=private",
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--mount-proc",
            "--",
            *argv,
        ]
        terminal = _Terminal(self.log, progress) if progress is not None else None
        process = popen(
            isolated,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=terminal.fd if terminal else subprocess.STDOUT,
            env={**os.environ, **self.environment, **(env or {})},
            # unshare ignores SIGTERM while it waits for its child: only SIGKILL stops it.
            die_with_parent=signal.SIGKILL,
        )
        try:
            if terminal:
                terminal.follow()
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            if terminal:
                terminal.close()
        if code != 0:
            raise RealmsError(f"{argv[0]} exited with status {code}")

    def run_in_image(
        self,
        command: list[str],
        *,
        binds: list[Bind] | None = None,
        env: Mapping[str, str] | None = None,
        consume: Callable[[bytes], bool] | None = None,
        what: str = "",
    ) -> None:
        """Run a command as root inside the image (systemd-nspawn, the host's network)."""
        self.note("# " + " ".join(command))
        container = Container(
            rootfs=self.tree,
            machine=f"{self.config.name}-appimg-build",
            command=command,
            binds=[
                Bind(self.scratch, "/run/realms-build", readonly=True, idmap=True),
                *(binds or []),
            ],
            pristine=True,
            environment={
                "DEBIAN_FRONTEND": "noninteractive",
                "LC_ALL": "C.UTF-8",
                **self.environment,
                **(env or {}),
            },
        )
        code = run_container(container, log=self.log, consume=consume)
        if code != 0:
            raise RealmsError(f"{what or command[0]} exited with status {code}")

    def run_script(self, name: str, script: str, env: Mapping[str, str] | None = None) -> None:
        """Run a shell script inside the image."""
        path = self.scratch / f"{name}.sh"
        path.write_text(script)
        self.run_in_image(["/bin/sh", f"/run/realms-build/{path.name}"], env=env, what=name)


class _Terminal:
    """A pseudo-terminal for a tool's stderr: its progress pieces go to a callback, its lines
    to the log."""

    _ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")

    def __init__(self, log_file: IO[bytes], progress: Callable[[str], None]) -> None:
        self._master, self.fd = pty.openpty()
        # A terminal of no size gets no progress display: make it as wide as a usual one.
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        self._log = log_file
        self._progress = progress
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._child_side_open = True

    def follow(self) -> None:
        self._close_child_side()  # the child has its own copy: EOF comes when it exits
        self._reader.start()

    def _close_child_side(self) -> None:
        if self._child_side_open:
            os.close(self.fd)
            self._child_side_open = False

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                data = os.read(self._master, 4096)
            except OSError:  # EIO: every copy of the terminal's other side is closed
                data = b""
            if not data:
                break
            pending += data
            *pieces, pending = re.split(rb"(\r\n|\n|\r)", pending)
            for piece, end in zip(pieces[::2], pieces[1::2], strict=True):
                text = self._ANSI.sub(b"", piece)
                if end == b"\r":
                    self._progress(text.decode(errors="replace"))
                elif text.strip() not in (b"", b"done"):  # "done": the end of a display
                    self._log.write(text + b"\n")
        if pending.strip():
            self._log.write(self._ANSI.sub(b"", pending) + b"\n")
        self._log.flush()

    def close(self) -> None:
        self._close_child_side()
        if self._reader.is_alive():
            self._reader.join(timeout=5)
        os.close(self._master)


def prune_logs(directory: Path, name: str, keep: int = LOGS_KEPT) -> None:
    logs = sorted(directory.glob(f"build-{name}-*.log"))
    for old in logs[:-keep]:
        old.unlink(missing_ok=True)
