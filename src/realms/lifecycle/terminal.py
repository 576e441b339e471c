"""The terminal of a command that joined a running realm (see :mod:`realms.lifecycle.join`).

The command's terminal is a pseudo-terminal of the realm's own; realms holds its master and
relays between it and realms' terminal, as ``machinectl shell`` and nspawn's console do, so
that no descriptor of the host's terminal is ever in the realm. While it relays, realms'
terminal is in raw mode (keys, Ctrl-C and Ctrl-Z included, reach the realm's terminal, whose
line discipline turns them into signals for the command's foreground job) and the realm's
terminal takes the size of realms' (SIGWINCH). The relay ends when the command exits, once what
it wrote is shown; processes it left in the background lose the terminal (the kernel hangs it up
when the master is closed).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import socket
import struct
import subprocess
import termios
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from realms.errors import Interrupted, RealmsError

_CHUNK = 1 << 16
HANG_UP_WAIT = 5.0


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """realms' terminal in raw mode for the block, restored afterwards whatever happens."""
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        # A terminal that hung up (its window closed: realms got SIGHUP) has nothing to restore.
        with contextlib.suppress(OSError, termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _handling(signum: signal.Signals, handler: signal.Handlers | object) -> Iterator[None]:
    previous = signal.signal(signum, handler)  # type: ignore[arg-type]
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _copy_size(source: int, master: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            selectors.DefaultSelector().select(0.05)


def _read(fd: int) -> bytes | None:
    """What ``fd`` has; None at its end (EOF, or EIO once the pty's other side is closed)."""
    try:
        return os.read(fd, _CHUNK) or None
    except BlockingIOError:
        return b""
    except OSError:
        return None


def _drain(master: int, output: int | None) -> None:
    """Show what the command wrote before it exited (the read waits for the kernel to pass on
    what is in flight; it stops where nothing more is there)."""
    while True:
        data = _read(master)
        if not data:
            return
        if output is not None:
            _write_all(output, data)


def relay(process: subprocess.Popen[bytes], master: int, tty_fds: tuple[int, ...]) -> int:
    """Relay between realms' terminal (the descriptors ``tty_fds`` of 0, 1, 2 that are one) and
    the realm's pty ``master`` until ``process`` exits; return its exit status. The master is
    closed at the end."""
    keyboard = 0 in tty_fds
    output = 1 if 1 in tty_fds else 2 if 2 in tty_fds else None
    os.set_blocking(master, False)
    child = os.pidfd_open(process.pid)

    def interrupt(_signum: int, _frame: object) -> None:
        # Without raw mode, Ctrl-C on realms' terminal reaches realms: pass it on to what runs
        # in the foreground of the realm's terminal.
        with contextlib.suppress(OSError):
            os.killpg(os.tcgetpgrp(master), signal.SIGINT)

    with contextlib.ExitStack() as stack:
        stack.callback(os.close, master)
        stack.callback(os.close, child)
        stack.enter_context(
            _handling(signal.SIGWINCH, lambda _s, _f: _copy_size(tty_fds[0], master))
        )
        stack.enter_context(_handling(signal.SIGINT, signal.SIG_IGN if keyboard else interrupt))
        if keyboard:
            stack.enter_context(_raw(0))
        try:
            _pump(master, child, keyboard, output)
            _drain(master, output)
        except Interrupted:
            hang_up(process)
            raise
    return process.wait()


def hang_up(process: subprocess.Popen[bytes]) -> None:
    """Stop the command because realms was told to stop: SIGHUP, as when a terminal goes away,
    and SIGKILL if it is still there after a while (realms does not outlive it)."""
    process.send_signal(signal.SIGHUP)
    try:
        process.wait(timeout=HANG_UP_WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _pump(master: int, child: int, keyboard: bool, output: int | None) -> None:
    """Copy keys to the master and the master's output to ``output`` until the child exits."""
    pending = bytearray()  # keys the realm's terminal has not taken yet
    with selectors.DefaultSelector() as selector:
        selector.register(child, selectors.EVENT_READ)
        selector.register(master, selectors.EVENT_READ)
        if keyboard:
            selector.register(0, selectors.EVENT_READ)
        reading_master = True
        while True:
            for key, mask in selector.select():
                if key.fd == child:
                    return
                if key.fd == 0:
                    data = _read(0)
                    if data is None:  # realms' terminal is gone: so is the command's
                        selector.unregister(0)
                        with contextlib.suppress(OSError):
                            os.killpg(os.tcgetpgrp(master), signal.SIGHUP)
                    else:
                        pending += data
                elif mask & selectors.EVENT_READ:
                    data = _read(master)
                    if data is None:
                        reading_master = False
                    elif data and output is not None:
                        _write_all(output, data)
                if key.fd == master and mask & selectors.EVENT_WRITE and pending:
                    with contextlib.suppress(BlockingIOError):
                        del pending[: os.write(master, pending)]
            events = (selectors.EVENT_READ if reading_master else 0) | (
                selectors.EVENT_WRITE if pending else 0
            )
            registered = master in selector.get_map()
            if events and registered:
                selector.modify(master, events)
            elif events:
                selector.register(master, events)
            elif registered:
                selector.unregister(master)


@dataclass(frozen=True)
class Pty:
    """The realm's terminal of a joined command: made by the child (:meth:`take`, between fork
    and exec, in the realm), relayed by realms (:meth:`relay`)."""

    tty_fds: tuple[int, ...]
    """realms' descriptors among 0, 1 and 2 that are a terminal: the child's are the pty."""
    attributes: list[Any] | None
    """The termios settings of realms' terminal, which the realm's starts with."""
    size: bytes | None
    parent_end: socket.socket
    child_end: socket.socket

    @classmethod
    def for_this_process(cls) -> Pty:
        """Read realms' terminal before the fork."""
        tty_fds = tuple(fd for fd in (0, 1, 2) if os.isatty(fd))
        attributes = size = None
        with contextlib.suppress(OSError, termios.error):
            attributes = termios.tcgetattr(tty_fds[0])
            size = fcntl.ioctl(tty_fds[0], termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        parent_end, child_end = socket.socketpair()
        return cls(tty_fds, attributes, size, parent_end, child_end)

    def take(self) -> None:
        """In the child, in the realm as the user it runs as: open a pty of the realm's devpts
        (so it is the user's), make it the controlling terminal of a new session, put it on
        the descriptors that were realms' terminal, and send the master to realms."""
        master, slave = os.openpty()
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        if self.attributes is not None:
            termios.tcsetattr(slave, termios.TCSANOW, self.attributes)
        if self.size is not None:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, self.size)
        for fd in self.tty_fds:
            os.dup2(slave, fd)
        socket.send_fds(self.child_end, [b"pty"], [master])
        os.close(master)
        os.close(slave)

    def close(self) -> None:
        self.parent_end.close()
        self.child_end.close()

    def relay(self, process: subprocess.Popen[bytes]) -> int:
        """In realms, once the command runs: relay until it exits; its exit status."""
        self.child_end.close()
        with self.parent_end:
            _message, fds, _flags, _address = socket.recv_fds(self.parent_end, 16, 1)
        if not fds:
            process.kill()
            process.wait()
            raise RealmsError("the joined command's terminal did not come back")
        return relay(process, fds[0], self.tty_fds)
