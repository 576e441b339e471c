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
import struct
import subprocess
import termios
import tty
from collections.abc import Iterator

from realms.errors import Interrupted

_CHUNK = 1 << 16


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """realms' terminal in raw mode for the block, restored afterwards whatever happens."""
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
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
            process.send_signal(signal.SIGHUP)
            process.wait()
            raise
    return process.wait()


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


def wait_or_hang_up(process: subprocess.Popen[bytes]) -> int:
    """Wait for a command without a terminal; if realms is told to stop, the command is hung
    up first and then the Interrupted error goes on."""
    interrupted: Interrupted | None = None
    while True:
        try:
            returncode = process.wait()
            break
        except Interrupted as error:
            interrupted = error
            process.send_signal(signal.SIGHUP)
    if interrupted is not None:
        raise interrupted
    return returncode
