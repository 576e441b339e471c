"""Marks every test by its directory: ``unit`` (tests/unit: no root, no devices) or ``system``
(tests/system: as root, real btrfs, loop devices, nspawn, QEMU), so that ``-m unit`` selects
the same tests as the path. The fixtures are in each directory's own conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.resolve().relative_to(HERE).parts
        if parts and parts[0] in ("unit", "system"):
            item.add_marker(parts[0])
