"""Helpers shared by the tests: running the real ``realms`` command, building small root
filesystems, and undoing every mount and loop device a test made (only those under its own
temporary directory: other work may share the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realms.system import scratch

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Realms:
    """The real ``realms`` command, run as a separate process against one store."""

    def __init__(self, store: Path) -> None:
        self.store = store

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["REALMS_STORE"] = str(self.store)
        env.pop("REALMS_KILL_AT", None)
        env.update(extra or {})
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "realms", *args]

    def __call__(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> Result:
        argv = self.argv(*args)
        completed = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self.env(env),
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )
        result = Result(argv, completed.returncode, completed.stdout, completed.stderr)
        # Whatever happens, a user never sees a traceback.
        assert "Traceback" not in completed.stderr, completed.stderr
        if check and completed.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {completed.returncode}:\n{completed.stderr}"
            )
        return result

    def fails(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
        """Run a command that must fail with exit status 1 and a one-line error; return it."""
        result = self(*args, check=False, input=input, env=env)
        assert result.returncode == 1, (result.returncode, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.startswith("realms: error:")]
        assert len(lines) == 1, result.stderr
        return lines[0].removeprefix("realms: error: ")

    def json(self, *args: str) -> Any:
        return self(*args, "--json").json()

    def interactive(self, *args: str, timeout: float = 30) -> Any:
        """The command on a pseudo-terminal, driven with pexpect as a person would."""
        import pexpect

        argv = self.argv(*args)
        return pexpect.spawn(argv[0], argv[1:], env=self.env(), encoding="utf-8", timeout=timeout)

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            env=self.env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def run(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True).stdout


# Finding and releasing mounts and loop devices is realms.system.scratch's, shared with bench/.


def mounts_below(directory: Path) -> list[Path]:
    """Mount points at or under ``directory``, deepest first."""
    return scratch.mounts_below(directory)


def unmount_below(directory: Path) -> None:
    """Unmount everything mounted at or under ``directory``, deepest first."""
    scratch.unmount_below(directory)


def loops_backed_below(directory: Path) -> list[str]:
    """Loop devices whose backing file is under ``directory``."""
    return scratch.loops_backed_below(directory)


def loops_backed_by(path: Path) -> list[str]:
    """Loop devices whose backing file is ``path``."""
    return scratch.loops_backed_by(path)


def make_btrfs(image: Path, mountpoint: Path, size: str) -> None:
    scratch.make_btrfs(image, mountpoint, size)


GETENT = """#!/bin/sh
# A stand-in for glibc's getent, which busybox lacks: systemd-nspawn --user= calls it.
case "$1" in
  passwd) grep -E "^$2:|^[^:]*:[^:]*:$2:" /etc/passwd ;;
  group) grep -E "^$2:|^[^:]*:[^:]*:$2:" /etc/group ;;
  initgroups) line=$(grep -E "^$2:" /etc/passwd) || exit 2
              echo "$2 $(echo "$line" | cut -d: -f4)" ;;
  *) exit 1 ;;
esac
"""


def make_busybox_tree(root: Path) -> Path:
    """A tiny root filesystem: busybox-static and its applets, users root and user (1000)."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is not installed"
    for directory in (
        "usr/bin",
        "etc",
        "root",
        "tmp",
        "home",
        "var/tmp",
        "proc",
        "sys",
        "dev",
        "run",
    ):
        (root / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "usr/bin/busybox")
    (root / "bin").symlink_to("usr/bin")
    (root / "sbin").symlink_to("usr/bin")
    applets = run(busybox, "--list").split()
    for applet in applets:
        link = root / "usr/bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (root / "usr/bin/getent").write_text(GETENT)
    (root / "usr/bin/getent").chmod(0o755)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
    )
    (root / "etc/group").write_text("root:x:0:\nsudo:x:27:user\nuser:x:1000:\n")
    (root / "etc/os-release").write_text('ID=busybox\nNAME="BusyBox test tree"\n')
    (root / "tmp").chmod(0o1777)
    return root
