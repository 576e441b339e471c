"""What a handler gets: the parsed arguments, typed, and the store they name.

Opening the store is the one thing every handler needs before its API call; it is done here,
once, so that a handler is only: arguments -> one :mod:`realms.api` function -> a printer.
"""

from __future__ import annotations

import argparse
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from realms.store import Store


class UsageError(Exception):
    """Arguments that parse but do not go together: reported like argparse's errors (exit 2)."""


class Call:
    """One invocation of a command: typed access to its arguments."""

    def __init__(self, namespace: argparse.Namespace, trailing: list[str] | None) -> None:
        self._namespace = namespace
        self.trailing = trailing
        """The words after ``--`` for commands that run one, None without ``--``."""
        self.store_path: str | None = getattr(namespace, "store", None)

    def text(self, name: str) -> str:
        value = getattr(self._namespace, name)
        assert isinstance(value, str), name
        return value

    def maybe_text(self, name: str) -> str | None:
        value = getattr(self._namespace, name)
        assert value is None or isinstance(value, str), name
        return value

    def path(self, name: str) -> Path:
        return Path(self.text(name))

    def maybe_path(self, name: str) -> Path | None:
        value = self.maybe_text(name)
        return Path(value) if value else None

    def number(self, name: str) -> int:
        value = getattr(self._namespace, name)
        assert isinstance(value, int), name
        return value

    def maybe_number(self, name: str) -> int | None:
        value = getattr(self._namespace, name)
        assert value is None or isinstance(value, int), name
        return value

    def flag(self, name: str) -> bool:
        return bool(getattr(self._namespace, name, False))

    @property
    def json(self) -> bool:
        return self.flag("json")

    @cached_property
    def location(self) -> Path:
        """The store's directory: --store, $REALMS_STORE or /var/lib/realms."""
        from realms import api

        return api.locate(self.store_path)

    @cached_property
    def store(self) -> Store:
        from realms import api

        return api.open_store(self.store_path)
