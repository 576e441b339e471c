"""Start order of booted realms (``requires``), ``realms start --autostart`` and the current realm
(issue 13, items 4 and 5), with real realms booted from ``bootable_tree``.

Every test makes its realms in its own store and stops all of them at the end, whatever
happened (dependents first, with --force), then removes the store's runtime directory under
/run/realms (the current realm), and only that store's.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from realms.lifecycle.state import boot_id
from realms.store.layout import Layout
from tests.helpers import Realms


class Booted:
    """Realms of one test: made from the bootable tree (appimg ``boot``) or from busybox
    (appimg ``noinit``, which has no init), with their settings in their configs."""

    def __init__(self, realms: Realms) -> None:
        self.realms = realms
        self.made: list[str] = []

    def new(
        self,
        name: str,
        *,
        requires: tuple[str, ...] = (),
        autostart: bool = False,
        boots: bool = True,
    ) -> None:
        self.realms("new", name, "--appimg", "boot" if boots else "noinit")
        self.made.append(name)
        quoted = ", ".join(f'"{each}"' for each in requires)
        lines = f"requires = [{quoted}]\nautostart = {'true' if autostart else 'false'}\n"
        config = self.realms.store / "realms" / name / "config"
        config.write_text(config.read_text() + lines)
        # A file in its home that says which realm a command ran in.
        marker = self.realms.store / "realms" / name / "home" / "which"
        marker.write_text(f"{name}\n")
        marker.chmod(0o644)

    def running(self) -> set[str]:
        return {realm["name"] for realm in self.realms.json("list") if realm["running"]}

    def stop_all(self) -> None:
        # Dependents go first with --force; a realm stopped that way is skipped later.
        for name in reversed(self.made):
            self.realms("stop", "--force", name, check=False)


@pytest.fixture
def booted(realms: Realms, bootable_tree: Path, busybox_tree: Path) -> Iterator[Booted]:
    realms("appimg", "import", "boot", str(bootable_tree))
    realms("appimg", "import", "noinit", str(busybox_tree))
    made = Booted(realms)
    try:
        yield made
    finally:
        made.stop_all()
        left = made.running()
        runtime = Layout(realms.store).runtime_dir
        if not left:
            shutil.rmtree(runtime, ignore_errors=True)
        assert not left, f"realms left running: {left}"


def started(stderr: str) -> list[str]:
    """The realms a start said it started (not those running already), in its order."""
    return re.findall(r"Started realm (\S+) in", stderr)


def stopped(stderr: str) -> list[str]:
    return re.findall(r"Stopped realm (\S+)", stderr)


def test_requires_start_first_and_stop_after(booted: Booted) -> None:
    realms = booted.realms
    booted.new("low")
    booted.new("mid", requires=("low",))
    booted.new("top", requires=("mid",))
    booted.new("alone")

    assert started(realms("start", "top").stderr) == ["low", "mid", "top"]
    assert booted.running() == {"low", "mid", "top"}
    # A realm running already is left as it is (and said so).
    result = realms("start", "mid")
    assert started(result.stderr) == [] and "Realm low is running already" in result.stderr

    # Stopping a realm that running realms require is refused, naming them, dependents first.
    assert realms.fails("stop", "mid") == "realm 'mid' is required by running realms: top"
    assert realms.fails("stop", "low") == "realm 'low' is required by running realms: top, mid"
    assert booted.running() == {"low", "mid", "top"}
    # --force stops them first, each before what it requires.
    assert stopped(realms("stop", "--force", "low").stderr) == ["top", "mid", "low"]
    assert booted.running() == set()

    # The top of a chain stops alone; a realm nothing requires stops without --force.
    realms("start", "top")
    realms("start", "alone")
    assert stopped(realms("stop", "top").stderr) == ["top"]
    assert stopped(realms("stop", "alone").stderr) == ["alone"]
    assert booted.running() == {"low", "mid"}


def test_a_cycle_or_a_missing_realm_starts_nothing(booted: Booted) -> None:
    realms = booted.realms
    booted.new("a", requires=("b",))
    booted.new("b", requires=("c",))
    booted.new("c", requires=("a",))
    booted.new("lonely", requires=("ghost",))

    error = realms.fails("start", "a")
    assert error == "the realms' requires form a cycle: a -> b -> c -> a"
    assert realms.fails("start", "b") == "the realms' requires form a cycle: b -> c -> a -> b"
    error = realms.fails("start", "lonely")
    assert error == "realm 'lonely' requires realm 'ghost', which does not exist"
    assert booted.running() == set()


def test_a_failure_ends_the_chain_and_names_what_started(booted: Booted) -> None:
    realms = booted.realms
    booted.new("low")
    booted.new("mid", requires=("low",), boots=False)
    booted.new("top", requires=("mid",))

    error = realms.fails("start", "top")
    assert error.startswith("realm 'mid', which 'top' requires, did not start: ")
    assert "cannot boot: its root filesystem has no systemd" in error
    assert error.endswith("(started before it, still running: low)")
    assert booted.running() == {"low"}
    # The realm itself, with nothing started before it: its own error, as it is.
    error = realms.fails("start", "mid")
    assert error.startswith("realm 'mid' cannot boot")


def test_autostart_starts_exactly_the_autostart_realms(booted: Booted) -> None:
    realms = booted.realms
    assert "No realm has autostart = true" in realms("start", "--autostart").stderr
    booted.new("db")
    booted.new("web", requires=("db",), autostart=True)
    booted.new("mail", autostart=True)
    booted.new("idle")

    # In the order of their names, each after what it requires (db is not autostart itself).
    result = realms("start", "--autostart")
    assert started(result.stderr) == ["mail", "db", "web"]
    assert booted.running() == {"db", "web", "mail"}
    # Again: all running already, nothing started.
    assert started(realms("start", "--autostart").stderr) == []
    booted.stop_all()

    # One that cannot boot does not keep the others from starting, only what requires it.
    booted.new("broken", autostart=True, boots=False)
    booted.new("needy", requires=("broken",), autostart=True)
    result = realms("start", "--autostart", check=False)
    assert result.returncode == 1
    assert "2 of 5 autostart realms did not start: broken, needy" in result.stderr
    assert started(result.stderr) == ["mail", "db", "web"]
    assert booted.running() == {"db", "web", "mail"}


def test_current_starts_its_realm_and_shell_and_run_use_it(booted: Booted) -> None:
    realms = booted.realms
    booted.new("home")  # the first realm made: the default realm
    booted.new("work", requires=("home",))
    booted.new("plain", boots=False)
    assert realms("current").stdout == "home\n"
    assert realms.fails("current", "ghost") == "no realm named 'ghost'"

    result = realms("current", "work")
    assert started(result.stderr) == ["home", "work"]
    assert "Realm work is current" in result.stderr
    assert realms("current").stdout == "work\n"
    # run and shell without a name join the current realm (its init is PID 1 there).
    out = realms("run", "--", "sh", "-c", "cat which /proc/1/comm").stdout.split()
    assert out == ["work", "systemd"]
    assert realms("run", "home", "--", "cat", "which").stdout == "home\n"
    shell = realms.interactive("shell")
    shell.sendline("echo in=$(cat ~/which) init=$(cat /proc/1/comm); exit 7")
    shell.expect("in=work init=systemd")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 7

    # A realm without an init becomes current without booting; run uses it one-shot.
    realms("current", "plain")
    assert "plain" not in booted.running()
    assert realms("run", "--", "cat", "which").stdout == "plain\n"

    # A host reboot: /run is empty again (or holds the file of another boot), and the
    # default realm is current again.
    realms("default", "work")
    current = Layout(realms.store).current_realm_path
    assert current.read_text() == f"plain {boot_id()}\n"
    current.write_text("plain 00000000-0000-0000-0000-000000000000\n")
    assert realms("current").stdout == "work\n"
    realms("current", "plain")
    booted.stop_all()
    shutil.rmtree(Layout(realms.store).runtime_dir)
    assert realms("current").stdout == "work\n"
    assert realms("run", "--", "cat", "which").stdout == "work\n"


@pytest.mark.slow
def test_the_default_base_boots_without_a_login_prompt(booted: Booted) -> None:
    """The default appimg, built for real from the host's mirror, boots to READY with no
    failed unit and no getty, and keeps its user (uid 1000, sudo)."""
    realms = booted.realms
    realms("appimg", "build")
    realms("new", "plainbase", "--appimg", "base")
    booted.made.append("plainbase")
    assert started(realms("start", "plainbase").stderr) == ["plainbase"]
    assert realms("run", "plainbase", "--", "systemctl", "is-system-running").stdout == "running\n"
    assert realms("run", "plainbase", "--", "systemctl", "--failed", "--no-legend").stdout == ""
    who = realms("run", "plainbase", "--", "sh", "-c", "id -u; sudo -n id -u").stdout.split()
    assert who == ["1000", "0"]
    console = (realms.store / "logs" / "realm-plainbase.console").read_text(errors="replace")
    assert "Reached target" in console and "login:" not in console
