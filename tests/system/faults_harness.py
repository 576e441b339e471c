"""The fault harness: random SIGKILLs (at random moments and at :mod:`realms.faults`
checkpoints), a full disk (ENOSPC on a small pool of its own) and concurrent commands on the
same few realms and appimgs, across every command that changes the store; after each round,
``realms check`` must be ok or made ok by ``--repair``, and no home may be lost. Every few
rounds, and at the end, every realm must still run.

Homes: a marker file with a random text is written into each realm's home the first time the
realm is seen. A marker is lost when it is nowhere: not in the realm's home, nor anywhere under
``removed/`` (kept homes, realms moved aside by a repair). A realm that a plain ``remove`` (no
``--keep-home``) may have removed is forgotten, whatever the outcome.

Used by tests/system/test_fault_harness.py (a short run in the normal suite, a long one with
``-m stress``); :class:`Counts` is what a run reports.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import Realms, make_btrfs, unmount_below

REALM_NAMES = [f"r{i}" for i in range(6)]
APPIMG = "base"
CHANNEL = "faults"
MARKER = ".realms-fault-marker"

_SWAP = ("staged", "recorded", "swapped", "origin", "snapshot")
CHECKPOINTS: dict[str, list[str]] = {
    "new": ["realm-new:activated", "realm-new:staged", "realm-new:renamed"],
    "remove": ["realm-remove:home-kept", "discard:renamed"],
    "update-appimg": ["appimg-update:renamed", "appimg-update:kept", "appimg-version:renamed"],
    "appimg import": ["appimg-import:extracted", "appimg-import:renamed", "appimg-version:renamed"],
    "appimg seal": ["seal:signed", "appimg-seal:renamed", "appimg-version:renamed"],
    "appimg prune": ["discard:renamed"],
    "key generate": ["key-generate:trusted", "key-generate:installed"],
    "snapshot take": ["snapshot:staged"],
    "snapshot remove": ["discard:renamed"],
    "rebase": [f"rebase:{step}" for step in _SWAP] + [f"rebase-undo:{s}" for s in _SWAP[1:]],
    "restore": [f"restore:{step}" for step in _SWAP],
    "gc": ["discard:renamed"],
}
"""The :mod:`realms.faults` checkpoints each command passes (by its first words)."""


@dataclass
class Counts:
    rounds: int = 0
    commands: int = 0
    kills: int = 0
    """Commands that died of SIGKILL (sent by the harness or at a checkpoint)."""
    checkpoint_kills: int = 0
    enospc: int = 0
    """Commands that failed because the store was full."""
    concurrent: int = 0
    """Commands that ran while another command of the round ran."""
    inconsistencies: int = 0
    """Problems ``realms check`` found (leftovers of killed commands included)."""
    unfixable: int = 0
    """Problems left after ``realms check --repair``."""
    lost_homes: int = 0
    runs: int = 0
    failed_runs: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_command: Counter[str] = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)
    """One line per unfixable problem, lost home or failed run (the first 50)."""

    def note(self, line: str) -> None:
        if len(self.details) < 50:
            self.details.append(line)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["by_kind"] = dict(self.by_kind)
        data["by_command"] = dict(self.by_command)
        return data


@contextlib.contextmanager
def small_pool(directory: Path, size: str = "400M") -> Iterator[Path]:
    """A btrfs filesystem of its own, small enough to fill; unmounted (and its loop device
    freed) afterwards, also on failure."""
    mountpoint = directory / "mnt"
    try:
        make_btrfs(directory / "small.img", mountpoint, size)
        yield mountpoint
    finally:
        unmount_below(directory)


class Harness:
    """Rounds of random commands against one store, checked after each round."""

    def __init__(self, realms: Realms, tree: Path, seed: int, counts: Counts | None = None):
        self.realms = realms
        self.tree = tree
        self.rng = random.Random(seed)
        self.counts = counts or Counts()
        self.markers: dict[str, str] = {}
        self.optional = self._implemented()

    # Setup

    def _implemented(self) -> set[str]:
        """The commands of other issues that this tree has (rebase, snapshots, gc)."""
        found = set()
        for words in (["rebase", "--help"], ["snapshot", "--help"], ["gc", "--help"]):
            if self.realms(*words, check=False).returncode == 0:
                found.add(words[0])
        return found

    def prepare(self) -> None:
        self.realms("key", "generate", CHANNEL)
        self.realms("appimg", "import", APPIMG, str(self.tree))
        for name in REALM_NAMES[:3]:
            self.realms("new", name)
        self.mark_homes()

    # Commands

    def command(self) -> list[str]:
        rng = self.rng
        name = rng.choice(REALM_NAMES)
        choices: list[list[str]] = [
            ["new", name],
            ["new", name],
            ["remove", name, "--keep-home"],
            ["remove", name],
            ["run", name, "--", "true"],
            ["default", name],
            ["update-appimg", APPIMG, "--", "sh", "-c", f"echo {rng.random()} > /etc/fault"],
            ["appimg", "import", APPIMG, str(self.tree), "--new-version"],
            ["appimg", "seal", APPIMG, "--channel", CHANNEL],
            ["appimg", "seal", APPIMG, "--no-verity"],
            ["appimg", "rollback", APPIMG],
            ["appimg", "prune", APPIMG, "--keep", str(rng.randint(1, 3))],
            ["appimg", "pin", APPIMG, str(rng.randint(1, 40))],
            ["appimg", "unpin", APPIMG, str(rng.randint(1, 40))],
            ["key", "generate", CHANNEL, "--replace"],
        ]
        if "rebase" in self.optional:
            choices += [["rebase", name], ["rebase", name, "--undo"]]
        if "snapshot" in self.optional:
            label = rng.choice(["a", "b"])
            choices += [
                ["snapshot", "take", name, label],
                ["snapshot", "remove", name, label],
                ["restore", name, label],
            ]
        if "gc" in self.optional:
            choices.append(["gc"])
        return rng.choice(choices)

    def round(self, *, commands: int = 4, kill_share: float = 0.85, full: bool = False) -> None:
        """Run ``commands`` commands at once; kill most of them (at a random moment, or at a
        checkpoint), then check and repair the store."""
        self.counts.rounds += 1
        spawned = []
        for _ in range(commands):
            argv = self.command()
            env = {}
            kill_after = None
            points = CHECKPOINTS.get(" ".join(argv[:2]), CHECKPOINTS.get(argv[0], []))
            if points and self.rng.random() < 0.5:
                env["REALMS_KILL_AT"] = self.rng.choice(points)
            elif self.rng.random() < kill_share:
                # Most commands take 0.1 to 0.5 s here: a kill within that lands mid-way (on a
                # quiet machine as on a busy one), not after the command ended.
                kill_after = self.rng.uniform(0.02, 0.5)
            spawned.append((argv, kill_after, time.monotonic(), self.realms.spawn(*argv, env=env)))
        self.counts.commands += len(spawned)
        if len(spawned) > 1:
            self.counts.concurrent += len(spawned)
        for argv, kill_after, started, process in spawned:
            self.counts.by_command[" ".join(argv[:2])] += 1
            sent = False
            if kill_after is not None:
                remaining = started + kill_after - time.monotonic()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(remaining, 0))
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    sent = True
            try:
                _, stderr = process.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate()
            if process.returncode == -signal.SIGKILL:
                self.counts.kills += 1
                if not sent:
                    self.counts.checkpoint_kills += 1
            self.forget_removed(argv)
            assert "Traceback" not in stderr, (argv, stderr)
            if process.returncode == 1 and full and _out_of_space(stderr):
                self.counts.enospc += 1
        if not full:
            self.verify()

    # Checks

    def verify(self, *, run_all: bool = False) -> None:
        """The store checks ok, or --repair makes it so; no home is lost; with ``run_all``
        every realm runs."""
        report = self._check()
        if not report["ok"]:
            self.counts.inconsistencies += len(report["problems"])
            self.counts.by_kind.update(problem["kind"] for problem in report["problems"])
            repaired = self._check("--repair")
            again = self._check()
            if not again["ok"]:
                for problem in again["problems"]:
                    self.counts.unfixable += 1
                    self.counts.note(f"round {self.counts.rounds}: unfixable: {problem}")
                    self.counts.note(f"  after repair: {repaired['problems']}")
        self.mark_homes()
        if run_all:
            self.run_all()

    def _check(self, *extra: str) -> dict[str, Any]:
        result = self.realms("check", "--json", *extra, check=False)
        assert result.returncode in (0, 1), result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    def realm_names(self) -> list[str]:
        return [realm["name"] for realm in self.realms.json("list")]

    def mark_homes(self) -> None:
        """Mark the homes of realms not seen before; count the markers that are gone."""
        present = set(self.realm_names())
        store = self.realms.store
        kept = _kept_markers(store / "removed")
        for name, text in list(self.markers.items()):
            home = store / "realms" / name / "home" / MARKER
            if home.exists() and home.read_text() == text:
                continue
            if text in kept:
                del self.markers[name]  # the home went to removed/ whole
                continue
            self.counts.lost_homes += 1
            self.counts.note(f"round {self.counts.rounds}: the home of {name} is lost")
            del self.markers[name]
        for name in present - set(self.markers):
            text = f"{name}-{self.rng.getrandbits(64):016x}"
            home = store / "realms" / name / "home"
            (home / MARKER).write_text(text)
            self.markers[name] = text

    def forget_removed(self, argv: list[str]) -> None:
        if argv[0] == "remove" and "--keep-home" not in argv:
            self.markers.pop(argv[1], None)

    def run_all(self) -> None:
        for name in self.realm_names():
            self.counts.runs += 1
            result = self.realms("run", name, "--", "true", check=False)
            if result.returncode != 0:
                self.counts.failed_runs += 1
                self.counts.note(f"round {self.counts.rounds}: realm {name} does not run: "
                                 f"{result.stderr.strip()[-300:]}")  # fmt: skip


def _kept_markers(removed: Path) -> set[str]:
    """The markers under removed/: in a kept home, or in the home of a realm moved aside."""
    found: set[str] = set()
    try:
        entries = os.listdir(removed)
    except FileNotFoundError:
        return found
    for entry in entries:
        for candidate in (removed / entry / MARKER, removed / entry / "home" / MARKER):
            with contextlib.suppress(OSError):
                found.add(candidate.read_text())
    return found


def _out_of_space(stderr: str) -> bool:
    text = stderr.lower()
    return "is full" in text or "no space" in text or os.strerror(errno.ENOSPC).lower() in text


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` with one file (beside the store, not in it): the
    space it leaves is what btrfs keeps for itself."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    chunk = b"\1" * (1 << 20)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        with contextlib.suppress(OSError):
            os.fsync(fd)
        os.close(fd)
    return filler


def unfill(filler: Path) -> None:
    filler.unlink(missing_ok=True)
    subprocess.run(["btrfs", "filesystem", "sync", str(filler.parent)], check=False)
