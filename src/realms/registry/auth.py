"""Registry credentials (to be written)."""

from __future__ import annotations

from pathlib import Path


def login(host: str, username: str, password: str, *, tls_verify: bool | None = None) -> Path:
    raise NotImplementedError


def logout(host: str) -> list[Path]:
    raise NotImplementedError
