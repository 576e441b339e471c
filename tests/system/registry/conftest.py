"""Fixtures of the registry tests (see :mod:`tests.registry_server`).

- ``registry_binary`` (session): the unpacked ``docker-registry`` program.
- ``registry``: a plain-http registry with deletes enabled; ``.host`` is ``127.0.0.1:PORT``,
  ``.storage`` its data directory (tests that play a hostile registry write there behind its
  back).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry_server import RunningRegistry, start_registry, unpack_registry

__all__ = ["RunningRegistry", "start_registry"]


@pytest.fixture(scope="session")
def registry_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack_registry(tmp_path_factory.mktemp("docker-registry"))


@pytest.fixture
def registry(registry_binary: Path, tmp_path: Path) -> Iterator[RunningRegistry]:
    with start_registry(registry_binary, tmp_path / "registry") as running:
        yield running
