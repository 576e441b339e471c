"""The bare systemd-nspawn that ``bench booted`` compares realms with: the same tree booted
with the options realms gives every booted realm (or, with ``realm_options``, exactly those it
gave one realm), READY=1 read from a notify socket of its own, in a cgroup of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from realms.lifecycle import cgroups

MINIMAL_OPTIONS = (
    "--quiet",
    "--boot",
    "--notify-ready=yes",
    "--console=read-only",
    "--register=no",
    "--keep-unit",
    "--private-users-ownership=map",
)
"""The bare nspawn's options that realms gives too (with --directory, --machine,
--private-users=BASE:65536 and --link-journal=no)."""
READY_TIMEOUT = 120.0


@dataclass
class Bare:
    """systemd-nspawn booting a snapshot of the tree, without realms."""

    tree: Path
    uid_base: int
    workdir: Path
    label: str = "bare"
    realm_options: tuple[str, ...] = ()
    """What realms' nspawn had beyond these options: the realm's home bound, its LANG, its
    hostname for init (empty: the issue's bare nspawn)."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def cgroup(self) -> str:
        return f"realms-bench/{self.label}-{os.getpid()}"

    def argv(self) -> list[str]:
        return [
            "systemd-nspawn",
            f"--directory={self.tree}",
            f"--machine={self.label}",
            "--link-journal=no",
            *MINIMAL_OPTIONS,
            f"--private-users={self.uid_base}:65536",
            *self.realm_options,
        ]

    @contextlib.contextmanager
    def _notify_socket(self) -> Iterator[socket.socket]:
        path = self.workdir / f"{self.label}.notify"
        path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            try:
                yield sock
            finally:
                path.unlink(missing_ok=True)

    def start(self) -> float:
        """Boot it; milliseconds from starting nspawn to READY=1."""
        assert self.process is None, "the bare nspawn is running already"
        procs = cgroups.create(self.cgroup) / "cgroup.procs"
        console = open(self.workdir / f"{self.label}.console", "ab")  # noqa: SIM115
        with self._notify_socket() as sock, console:
            env = {
                **os.environ,
                "NOTIFY_SOCKET": sock.getsockname(),
                "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
            }
            began = time.perf_counter()
            self.process = subprocess.Popen(
                self.argv(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: procs.write_text("0"),  # noqa: PLW1509
            )
            deadline = time.monotonic() + READY_TIMEOUT
            while b"READY=1" not in _receive(sock, deadline, self.process):
                pass
            return (time.perf_counter() - began) * 1000

    def stop(self) -> float:
        """SIGTERM to nspawn (it asks init to power off); milliseconds until it exited."""
        assert self.process is not None, "the bare nspawn is not running"
        began = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=READY_TIMEOUT)
        elapsed = (time.perf_counter() - began) * 1000
        self.process = None
        if status != 0:
            raise RuntimeError(f"bare nspawn exited with status {status}")
        return elapsed

    def clean_up(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                cgroups.kill(cgroups.path(self.cgroup))
                self.process.wait()
        self.process = None
        cgroups.remove(self.cgroup)
        cgroups.remove("realms-bench")


def _receive(sock: socket.socket, deadline: float, process: subprocess.Popen[bytes]) -> bytes:
    """One notification (empty after a quiet second); an error if nspawn exits or time runs
    out first."""
    if process.poll() is not None:
        raise RuntimeError(f"bare nspawn exited with status {process.returncode} before READY")
    if time.monotonic() > deadline:
        raise RuntimeError(f"bare nspawn not READY within {READY_TIMEOUT:g} s")
    sock.settimeout(1.0)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return b""
