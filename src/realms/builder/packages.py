"""The package stage: apt inside the image, with the store's package cache bound in.

apt reports its progress on a status file descriptor (``APT::Status-Fd``): ``dlstatus`` lines
while downloading and ``pmstatus`` lines while installing, each with a percentage. The status
goes to a file of its own (descriptor 9 inside the container: stderr would confuse debconf in
maintainer scripts), which realms follows to draw one progress bar (downloads weigh 30 %,
installation 70 %). Everything apt and dpkg print goes to the build log.
"""

from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from realms import log
from realms.builder.job import BuildJob
from realms.container import Bind

ARCHIVES = "/var/cache/apt/archives"
STATUS_DIR = "/run/realms-status"
_STATUS = re.compile(r"^(dlstatus|pmstatus):[^:]*:([0-9.]+):")
_APT = ["apt-get", "-y", "-o", "Dpkg::Use-Pty=0"]
_DOWNLOAD_SHARE = 30
_POLL = 0.2


class _AptProgress:
    """Maps apt's status lines onto a bar of 100 steps."""

    def __init__(self, bar: log.ProgressBar) -> None:
        self._bar = bar
        self._shown = 0

    def line(self, text: str) -> None:
        match = _STATUS.match(text)
        if not match:
            return
        percent = float(match[2])
        if match[1] == "dlstatus":
            done = percent * _DOWNLOAD_SHARE / 100
        else:
            done = _DOWNLOAD_SHARE + percent * (100 - _DOWNLOAD_SHARE) / 100
        if int(done) > self._shown:
            self._bar.advance(int(done) - self._shown)
            self._shown = int(done)


@contextmanager
def _following(path: Path, progress: _AptProgress) -> Iterator[None]:
    """Feed the lines appended to ``path`` to ``progress`` while the block runs."""
    stop = threading.Event()

    def follow() -> None:
        position = 0
        pending = ""
        while True:
            stopping = stop.wait(_POLL)
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    handle.seek(position)
                    pending += handle.read()
                    position = handle.tell()
            except FileNotFoundError:
                pass
            *lines, pending = pending.split("\n")
            for text in lines:
                progress.line(text)
            if stopping:
                return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        yield
    finally:
        stop.set()
        follower.join()


def _apt(job: BuildJob, runs: list[list[str]], what: str, progress: _AptProgress | None) -> None:
    """apt-get with each of ``runs`` in turn, in one container; stops at the first failure."""
    status_dir = job.scratch / "status"
    status_dir.mkdir(exist_ok=True)
    status = status_dir / "apt"
    status.write_text("")
    commands = [shlex.join([*_APT, "-o", "APT::Status-Fd=9", *arguments]) for arguments in runs]
    script = f"exec 9>{STATUS_DIR}/apt; " + " && ".join(commands)
    binds = [
        Bind(job.package_cache, ARCHIVES, idmap=True),
        Bind(status_dir, STATUS_DIR, idmap=True),
    ]
    if progress is None:
        job.run_in_image(["/bin/sh", "-c", script], binds=binds, what=what)
        return
    with _following(status, progress):
        job.run_in_image(["/bin/sh", "-c", script], binds=binds, what=what)


def update_and_upgrade(job: BuildJob) -> None:
    _apt(job, [["update"], ["upgrade"]], "apt-get update/upgrade", None)


def install(job: BuildJob, packages: list[str]) -> None:
    """Install ``packages`` (with a progress bar); apt names any it cannot find in the log."""
    if not packages:
        return
    title = f"Installing {len(packages)} packages and what they need"
    with log.progress(title, 100, unit="percent") as bar:
        _apt(job, [["install", *packages]], "apt-get install", _AptProgress(bar))
