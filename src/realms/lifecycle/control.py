"""Starting, stopping and restarting booted realms; the current realm (interface fixed, bodies
being written)."""

from __future__ import annotations

from dataclasses import dataclass

from realms.store import Store


@dataclass(frozen=True)
class Started:
    name: str
    leader_pid: int
    """The realm's init, as the host sees it."""
    seconds: float
    """From the command's start to READY."""
    address: str | None = None
    """Its address in its zone (private network), else None."""
    already: bool = False
    """It was running already: nothing was done."""

    def message(self) -> str:
        if self.already:
            return f"Realm {self.name} is running already (init {self.leader_pid})"
        where = f", address {self.address}" if self.address else ""
        return f"Started realm {self.name} in {self.seconds:.1f}s (init {self.leader_pid}{where})"


def start(
    store: Store, name: str | None, *, autostart: bool = False, timeout: int | None = None
) -> list[Started]:
    raise NotImplementedError


def stop(store: Store, name: str, *, timeout: int | None = None, force: bool = False) -> list[str]:
    raise NotImplementedError


def restart(store: Store, name: str) -> Started:
    raise NotImplementedError


def current(store: Store, name: str | None = None) -> str | None:
    raise NotImplementedError
