"""Output for people: step lines with their time, progress bars, notes and warnings.

Everything here writes to stderr, so that stdout carries only a command's result (a table, JSON,
the output of a command run in a realm). ``-q`` silences steps and notes; ``-v`` adds the debug
log, which names every external command that runs (see :mod:`realms.system.run`).

Long work shows a progress bar when stderr is a terminal and the amount of work is known, and
otherwise one line when a step starts and one with its elapsed time when it ends.
"""

from __future__ import annotations

import _thread
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress

QUIET = -1
NORMAL = 0
VERBOSE = 1

_verbosity = NORMAL


def setup(verbosity: int) -> None:
    """Configure output: QUIET, NORMAL or VERBOSE."""
    global _verbosity
    _verbosity = verbosity


# On a terminal a step's line stays open until the step ends, which then adds its time to it;
# anything printed meanwhile first closes the line.
_open_step: str | None = None


def end_line() -> None:
    """End a step line left open on the terminal, before printing elsewhere (an error)."""
    _close_open_step()


def _close_open_step() -> None:
    global _open_step
    if _open_step is not None:
        print(file=sys.stderr, flush=True)
        _open_step = None


def _say(line: str) -> None:
    if _verbosity > QUIET:
        _close_open_step()
        print(line, file=sys.stderr, flush=True)


def note(message: str) -> None:
    """A line the user should see once (skipped with -q)."""
    _say(f"[+]: {message}")


def warn(message: str) -> None:
    """A warning, shown even with -q."""
    _close_open_step()
    print(f"realms: warning: {message}", file=sys.stderr, flush=True)


def debug(message: str) -> None:
    """A line shown with -v only (the commands realms runs). Not Python's logging, whose import
    alone costs every command several milliseconds of start-up."""
    if _verbosity >= VERBOSE:
        _close_open_step()
        print(f"realms: {message}", file=sys.stderr, flush=True)


@contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a step, and when it ends say how long it took."""
    global _open_step
    started = time.monotonic()
    if _verbosity > QUIET and sys.stderr.isatty():
        _close_open_step()
        print(f"[+]: {title} ...", end="", file=sys.stderr, flush=True)
        _open_step = title
        try:
            yield
        except BaseException:
            _close_open_step()
            raise
        elapsed = f"({time.monotonic() - started:.1f}s)"
        if _open_step == title:
            print(f" {elapsed}", file=sys.stderr, flush=True)
            _open_step = None
        else:
            _say(f"[+]: {title}: done {elapsed}")
        return
    _say(f"[+]: {title}")
    yield
    _say(f"[+]: {title}: done ({time.monotonic() - started:.1f}s)")


class ProgressBar(Protocol):
    def advance(self, amount: int) -> None: ...

    def show(self, completed: float, phase: str) -> None:
        """Set the amount done so far, and name the phase of the work it belongs to."""


class _NoBar:
    def advance(self, amount: int) -> None:
        pass

    def show(self, completed: float, phase: str) -> None:
        pass


NO_BAR: ProgressBar = _NoBar()


class _RichBar:
    def __init__(self, progress: Progress, task: int, title: str) -> None:
        self._progress = progress
        self._task = task
        self._title = title

    def advance(self, amount: int) -> None:
        self._progress.update(self._task, advance=amount)  # type: ignore[arg-type]

    def show(self, completed: float, phase: str) -> None:
        description = f"{self._title}: {phase}" if phase else self._title
        self._progress.update(
            self._task,  # type: ignore[arg-type]
            completed=completed,
            description=description,
        )


@contextmanager
def progress(title: str, total: int, unit: str = "bytes") -> Iterator[ProgressBar]:
    """A step whose amount of work is known: a bar on a terminal, step lines elsewhere.
    ``unit``: "bytes", "percent" (a total of 100) or anything else counted as items."""
    if _verbosity <= QUIET or not sys.stderr.isatty() or total <= 0:
        with step(title):
            yield _NoBar()
        return
    # rich costs tens of milliseconds to import: only pay for it when a bar is shown.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    _close_open_step()
    amount_column: ProgressColumn = {
        "bytes": DownloadColumn(),
        "percent": TaskProgressColumn(),
    }.get(unit, MofNCompleteColumn())
    started = time.monotonic()
    with Progress(
        TextColumn("[+]: {task.description}"),
        BarColumn(),
        amount_column,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(title, total=total)
        yield _RichBar(bar, task, title)
    _say(f"[+]: {title}: done ({time.monotonic() - started:.1f}s)")


# Several transfers at once (registry blobs): one bar each on a terminal, a line each elsewhere.

# _thread is what threading's Lock is; threading itself would add to every command's start.
_lines = _thread.allocate_lock()


class Transfer(Protocol):
    def advance(self, amount: int) -> None: ...

    def done(self, ok: bool) -> None:
        """The transfer ended (``ok``: completely); its bar goes, and a finished one leaves a
        line with its time and rate."""


class Transfers(Protocol):
    def start(self, title: str, total: int, completed: int = 0) -> Transfer:
        """A transfer of ``total`` bytes, ``completed`` of them already there (a resume)."""


def _rate(amount: int, seconds: float) -> str:
    from realms.units import format_size

    return f"{format_size(amount)}, {format_size(int(amount / max(seconds, 0.001)))}/s"


class _LineTransfer:
    def __init__(self, title: str) -> None:
        self._title = title
        self._started = time.monotonic()
        self._amount = 0

    def advance(self, amount: int) -> None:
        self._amount += amount

    def done(self, ok: bool) -> None:
        if ok:
            elapsed = time.monotonic() - self._started
            with _lines:
                _say(f"[+]: {self._title}: done ({elapsed:.1f}s, {_rate(self._amount, elapsed)})")


class _LineTransfers:
    def start(self, title: str, total: int, completed: int = 0) -> Transfer:
        return _LineTransfer(title)


class _RichTransfer(_LineTransfer):
    def __init__(self, progress: Progress, title: str, total: int, completed: int) -> None:
        super().__init__(title)
        self._progress = progress
        self._task = progress.add_task(title, total=total, completed=completed)

    def advance(self, amount: int) -> None:
        super().advance(amount)
        self._progress.update(self._task, advance=amount)

    def done(self, ok: bool) -> None:
        self._progress.remove_task(self._task)
        if ok and _verbosity > QUIET:
            elapsed = time.monotonic() - self._started
            line = f"[+]: {self._title}: done ({elapsed:.1f}s, {_rate(self._amount, elapsed)})"
            self._progress.console.print(line, markup=False, highlight=False)


class _RichTransfers:
    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def start(self, title: str, total: int, completed: int = 0) -> Transfer:
        return _RichTransfer(self._progress, title, total, completed)


@contextmanager
def transfers() -> Iterator[Transfers]:
    """Bars for transfers that run at once, from several threads: one bar each (bytes, rate)
    on a terminal, a line each with its time and rate when it ends elsewhere."""
    if _verbosity <= QUIET or not sys.stderr.isatty():
        yield _LineTransfers()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    _close_open_step()
    with Progress(
        TextColumn("[+]: {task.description}"),
        BarColumn(bar_width=20),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        yield _RichTransfers(bar)
