"""Fixtures of the unit tests: no root, no mounts, no loop devices, no containers.

- ``owners``: ``os.chown`` and ``os.lchown`` record what realms would own instead of changing
  it (an unprivileged user cannot give a file to uid 1000); tests assert on the record.
- ``store``: a store in the test's temporary directory, made by :func:`realms.store.init` with
  the copy backend and opened with :class:`tests.unit.fakes.DirectoryBackend`; at the end every
  tree the store froze is checked to be unchanged.
- ``tree``: a tiny OS tree (``/usr``, ``/etc/os-release``, users root and user) for imports.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from realms.store import Store
from realms.store.init import init
from tests.unit.fakes import DirectoryBackend

Owners = dict[str, tuple[int, int]]


@pytest.fixture
def owners(monkeypatch: pytest.MonkeyPatch) -> Owners:
    recorded: Owners = {}

    def chown(path: str | os.PathLike[str] | int, uid: int, gid: int, **_: object) -> None:
        recorded[os.fspath(path) if not isinstance(path, int) else f"fd:{path}"] = (uid, gid)

    monkeypatch.setattr(os, "chown", chown)
    monkeypatch.setattr(os, "lchown", chown)
    return recorded


@pytest.fixture
def backend() -> DirectoryBackend:
    return DirectoryBackend()


@pytest.fixture
def store(tmp_path: Path, owners: Owners, backend: DirectoryBackend) -> Iterator[Store]:
    root = tmp_path / "store"
    made = init(root, backend="copy")
    assert made.created and made.pool_image is None
    opened = Store(root, backend=backend)
    yield opened
    backend.check_frozen(root)


def write_os_tree(root: Path, release: str = "ID=unit\n") -> Path:
    for directory in ("usr/bin", "etc", "root", "tmp", "home", "var/tmp"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/sh").write_text("#!/bin/false\n")
    (root / "usr/bin/sh").chmod(0o755)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
    )
    (root / "etc/group").write_text("root:x:0:\nuser:x:1000:\n")
    (root / "etc/os-release").write_text(release)
    (root / "tmp").chmod(0o1777)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_os_tree(tmp_path / "tree")
