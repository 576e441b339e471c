"""How a benchmark measures: the checks at start-up and the common options, the realms command line
and its source, timing whole processes (and the steps a realms command prints), and the rounds of
:class:`Measurement` (warm-up, then one run of each method a round, so that slow drift spreads
over all methods, btrfs settled before each)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import selectors
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from bench.base import log, missing_tools, run
from bench.system import MIN_SCRATCH_GIB, settle

if TYPE_CHECKING:
    from realms.builder.config import BuildConfig


def timed(argv: Sequence[str | Path], env: dict[str, str] | None = None) -> float:
    """Wall time of a whole process, in milliseconds; it must succeed."""
    command = [str(arg) for arg in argv]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return elapsed


@contextmanager
def piped(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], IO[bytes]]]:
    """Start a process with stdin from /dev/null and its stdout and stderr in one pipe; yield the
    process and the pipe. If the block is left by an exception (Ctrl-C, or SIGTERM after
    :func:`stop_on_signals`), the process is killed and waited for, as subprocess.run would (a
    container of realms gets SIGTERM from the kernel), so that the scratch filesystem can be
    unmounted. The pipe is always closed."""
    process = subprocess.Popen(
        list(argv),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        yield process, process.stdout
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        process.stdout.close()


def timeline(
    argv: Sequence[str | Path], env: dict[str, str] | None = None
) -> tuple[float, list[tuple[float, str]]]:
    """Run a process with its stdout and stderr in one pipe; return its wall time and each line
    it printed with when the line arrived, both in milliseconds from its start. It must exit 0."""
    command = [str(arg) for arg in argv]
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    pending = b""
    with piped(command, env) as (process, pipe), selectors.DefaultSelector() as selector:
        fd = pipe.fileno()
        selector.register(fd, selectors.EVENT_READ)
        while True:
            selector.select()
            chunk = os.read(fd, 1 << 16)
            arrived = (time.perf_counter() - start) * 1000
            if not chunk:
                break
            *complete, pending = (pending + chunk).split(b"\n")
            lines.extend((arrived, line.decode(errors="replace")) for line in complete)
        returncode = process.wait()
        elapsed = (time.perf_counter() - start) * 1000
    if pending:
        lines.append((elapsed, pending.decode(errors="replace")))
    if returncode != 0:
        output = "\n".join(line for _, line in lines)
        raise RuntimeError(f"{' '.join(command)} failed ({returncode}):\n{output}")
    return elapsed, lines


STEP_PREFIX = "[+]: "


_STEP_DONE = re.compile(r"(.*): done \([0-9.]+s\)")


def step_times(lines: list[tuple[float, str]]) -> dict[str, float]:
    """How long each step of a realms command took, in milliseconds, from the lines of
    :func:`timeline`. Where stderr is not a terminal, a step prints ``[+]: TITLE`` when it starts
    and ``[+]: TITLE: done (N.Ns)`` when it ends; the time between the two lines' arrivals is
    finer than the tenths of a second that realms prints."""
    started: dict[str, float] = {}
    durations: dict[str, float] = {}
    for arrived, line in lines:
        if not line.startswith(STEP_PREFIX):
            continue
        text = line.removeprefix(STEP_PREFIX)
        done = _STEP_DONE.fullmatch(text)
        if done and done[1] in started:
            durations[done[1]] = arrived - started.pop(done[1])
        else:
            started[text] = arrived
    return durations


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """Make SIGTERM and SIGHUP unwind like Ctrl-C, so that the scratch filesystem is cleaned."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)


def prepare_run(tools: Sequence[str]) -> bool:
    """Whether the benchmark can run: as root, with every tool in ``tools`` installed; where it
    cannot, say why on stderr (the first missing tool only). Where it can, make SIGTERM and SIGHUP
    unwind like Ctrl-C (:func:`stop_on_signals`) and byte-compile realms (:func:`compile_realms`).
    """
    if os.geteuid() != 0:
        log("this benchmark needs root: it makes and mounts a btrfs filesystem")
        return False
    missing = missing_tools(tools)
    if missing:
        log(f"{missing[0]} is not installed")
        return False
    stop_on_signals()
    compile_realms()
    return True


def add_image_option(
    parser: argparse.ArgumentParser, default_gb: int | None = None, *, holds: str = "the trees"
) -> None:
    """Add ``--image-gb``, the size of the scratch filesystem's sparse image: by default
    ``default_gb`` GiB or, where that is None, 0: enough for what it ``holds`` (see
    :func:`scratch_size`)."""
    if default_gb is None:
        parser.add_argument(
            "--image-gb",
            type=int,
            default=0,
            help=f"size of the sparse btrfs image, GiB (default: enough for {holds}, "
            f"at least {MIN_SCRATCH_GIB})",
        )
    else:
        parser.add_argument(
            "--image-gb",
            type=int,
            default=default_gb,
            help=f"size of the sparse btrfs image, GiB ({default_gb})",
        )


def add_seed_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--seed``, the seed of :func:`generate_tree`'s layout (1)."""
    parser.add_argument("--seed", type=int, default=1, help="seed of the tree layout (1)")


def add_output_option(parser: argparse.ArgumentParser, results: Path) -> None:
    """Add ``--output``, where the JSON results go (by default ``results``)."""
    parser.add_argument(
        "--output", type=Path, default=results, help=f"JSON results (default: {results})"
    )


def check_counts(
    parser: argparse.ArgumentParser, counts: Sequence[int], warmup: int | None = None
) -> None:
    """Stop with a usage error unless every one of ``counts`` (sizes, runs) is at least 1 and
    ``warmup``, where given, at least 0."""
    if min(counts) < 1 or (warmup is not None and warmup < 0):
        parser.error("sizes and runs must be positive")


def realms_command() -> list[str]:
    script = Path(sys.executable).with_name("realms")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "realms"]


def compile_realms() -> None:
    """Byte-compile the realms package, so that timings do not include compiling it (with
    PYTHONDONTWRITEBYTECODE set nothing else would write the .pyc files)."""
    spec = importlib.util.find_spec("realms")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("realms is not importable from this Python; run it with .venv/bin/python")
    for location in spec.submodule_search_locations:
        run([sys.executable, "-m", "compileall", "-q", location])


def realms_source() -> dict[str, Any]:
    """The git commit of the realms package that runs, and whether its files differ from it
    (None where the package is not in a git checkout)."""
    spec = importlib.util.find_spec("realms")
    if spec is None or not spec.submodule_search_locations:
        return {"commit": None, "modified": None}
    location = next(iter(spec.submodule_search_locations))
    try:
        commit = run(["git", "-C", location, "rev-parse", "HEAD"]).strip()
        modified = bool(run(["git", "-C", location, "status", "--porcelain", "--", "."]).strip())
    except (OSError, RuntimeError):
        return {"commit": None, "modified": None}
    return {"commit": commit, "modified": modified}


def recorded_command(realms: Sequence[str]) -> list[str]:
    """The realms command line as the results record it: its first word without a directory."""
    return [Path(arg).name for arg in realms[:1]] + list(realms[1:])


def mmdebstrap_argv(config: BuildConfig, target: str | Path, mirror: str) -> list[str]:
    """A bare mmdebstrap of a build config's release, variant and packages into ``target``."""
    return [
        "mmdebstrap",
        f"--variant={config.variant}",
        f"--include={','.join(config.packages)}",
        config.release,
        str(target),
        mirror,
    ]


@dataclass
class Measurement:
    """One method on one tree: a command timed ``runs`` times."""

    method: str
    size: str  # "small", "large", or "-" for start-up
    runs: int
    sample: Callable[[int], float]  # run number (-1: warm-up) -> milliseconds (timed part only)
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class BenchBase:
    """What the ``Bench`` of every benchmark has: the scratch filesystem's mount point, the realms
    command line, a counter for fresh names, and what timed runs measured besides their samples.
    """

    mountpoint: Path
    realms: list[str]
    counter: int = field(default=0, kw_only=True)
    details: dict[Any, list[dict[str, Any]]] = field(default_factory=dict, kw_only=True)
    """Per key (a method, or whatever a benchmark chooses): one entry a timed run."""

    def fresh(self, prefix: str) -> str:
        """A name not used before in this run: ``prefix`` and a number."""
        self.counter += 1
        return f"{prefix}{self.counter}"

    def settle(self) -> None:
        settle(self.mountpoint)

    def realms_cmd(self, *args: str, flag: str = "-q") -> list[str]:
        """The realms command line with ``flag`` (quiet by default) and ``args``."""
        return [*self.realms, flag, *args]

    def note(self, key: Any, run_number: int, detail: dict[str, Any]) -> None:
        """Keep what a timed run measured besides its sample (warm-up runs are not kept)."""
        if run_number >= 0:
            self.details.setdefault(key, []).append(detail)


def measure(measurements: list[Measurement], warmup: int, mountpoint: Path) -> None:
    """Warm-up rounds (untimed), then rounds of one run of each measurement still short of its
    runs, so that slow drift spreads over all methods."""
    for round_number in range(warmup):
        for m in measurements:
            log(f"warm-up {round_number + 1}/{warmup}: {m.method} ({m.size})")
            m.sample(-1)
    for round_number in range(max(m.runs for m in measurements)):
        for m in measurements:
            if round_number >= m.runs:
                continue
            elapsed = m.sample(round_number)
            m.samples.append(elapsed)
            log(f"{m.method} ({m.size}) run {round_number + 1}/{m.runs}: {elapsed:.1f} ms")
    settle(mountpoint)
