"""The fake backend keeps the promises of the Backend protocol that the store relies on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from realms.storage import Backend, Changes
from tests.unit.conftest import write_os_tree
from tests.unit.fakes import DirectoryBackend


def test_clone_is_independent_and_changes_are_counted(tmp_path: Path) -> None:
    fake = DirectoryBackend()
    backend: Backend = fake  # it is a Backend (checked by mypy)
    source = write_os_tree(tmp_path / "source")
    os.mkfifo(source / "tmp/fifo")
    backend.freeze(source)
    backend.clone(source, tmp_path / "clone")
    clone = tmp_path / "clone"
    assert os.readlink(clone / "bin") == "usr/bin" and (clone / "tmp/fifo").is_fifo()
    assert (clone / "tmp").stat().st_mode & 0o7777 == 0o1777
    marker = backend.change_marker(clone)
    assert marker is not None
    (clone / "etc/os-release").write_text("ID=changed-by-an-update\n")
    (clone / "new").write_bytes(b"x" * 100)
    (clone / "etc/group").unlink()  # deletions are not counted
    assert backend.changes_since(clone, marker) == Changes(24 + 100, 2)
    assert fake.check_frozen(tmp_path) == 1
    (source / "etc/os-release").write_text("written to a frozen tree\n")
    with pytest.raises(AssertionError, match="changed after it was frozen"):
        fake.check_frozen(tmp_path)
    backend.remove(source)
    assert not source.exists() and fake.check_frozen(tmp_path) == 0
