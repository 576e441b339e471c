"""What a rebase carries (realms.rootfs.keep): patterns checked, globs one component each, no
symlink followed in the old root, never a write through a symlink of the new root, files copied
byte for byte with mode, times and extended attributes. No root needed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from realms.errors import InvalidInput
from realms.rootfs.keep import carry, check_patterns, matches


def _root(path: Path) -> Path:
    (path / "etc/ssh").mkdir(parents=True)
    (path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    for name in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "sshd_config"):
        (path / "etc/ssh" / name).write_bytes(os.urandom(64))
    os.chmod(path / "etc/ssh/ssh_host_rsa_key", 0o600)
    os.utime(path / "etc/ssh/ssh_host_rsa_key", ns=(10**18, 10**18))
    return path


@pytest.mark.parametrize("pattern", ["etc/x", "/", "/etc/../x", "/./etc", ""])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidInput, match="keep"):
        check_patterns("r1", [pattern])


def test_globs_match_one_component(tmp_path: Path) -> None:
    root = _root(tmp_path / "old")
    assert matches(root, ["etc", "ssh", "ssh_host_*"]) == [
        "etc/ssh/ssh_host_rsa_key",
        "etc/ssh/ssh_host_rsa_key.pub",
    ]
    assert matches(root, ["etc", "*", "sshd_config"]) == ["etc/ssh/sshd_config"]
    assert matches(root, ["*"]) == ["etc"]
    assert matches(root, ["etc", "nothing"]) == []


def test_symlinked_directories_are_not_followed(tmp_path: Path) -> None:
    root = _root(tmp_path / "old")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host\n")
    (root / "var").mkdir()
    (root / "var/lib").symlink_to(outside)
    assert matches(root, ["var", "lib", "secret"]) == []
    # A matched symlink is itself the match (copied as a link, never its target).
    assert matches(root, ["var", "lib"]) == ["var/lib"]


def test_carry_copies_byte_for_byte(tmp_path: Path) -> None:
    old, new = _root(tmp_path / "old"), tmp_path / "new"
    (new / "etc").mkdir(parents=True)
    (new / "etc/machine-id").write_text("\n")
    key = old / "etc/ssh/ssh_host_rsa_key"
    try:
        os.setxattr(key, "user.realms-test", b"kept")
        xattrs = True
    except OSError:
        xattrs = False  # a filesystem without user xattrs
    carried = carry(old, new, "r1", ["/etc/machine-id", "/etc/ssh/ssh_host_*"])
    assert carried == ["etc/machine-id", "etc/ssh/ssh_host_rsa_key", "etc/ssh/ssh_host_rsa_key.pub"]
    for path in carried:
        before, after = os.lstat(old / path), os.lstat(new / path)
        assert hashlib.sha256((old / path).read_bytes()).digest() == (
            hashlib.sha256((new / path).read_bytes()).digest()
        )
        assert (before.st_mode, before.st_mtime_ns) == (after.st_mode, after.st_mtime_ns)
    if xattrs:
        assert os.getxattr(new / "etc/ssh/ssh_host_rsa_key", "user.realms-test") == b"kept"
    assert not (new / "etc/ssh/sshd_config").exists()
    # The directory made on the way is made as the old root has it.
    assert os.stat(new / "etc/ssh").st_mode == os.stat(old / "etc/ssh").st_mode
    assert os.stat(new / "etc/ssh").st_mtime_ns == os.stat(old / "etc/ssh").st_mtime_ns


def test_no_write_through_a_symlink_of_the_new_root(tmp_path: Path) -> None:
    old, new = _root(tmp_path / "old"), tmp_path / "new"
    outside = tmp_path / "outside"
    outside.mkdir()
    (new / "etc").mkdir(parents=True)
    (new / "etc/ssh").symlink_to(outside)
    carried = carry(old, new, "r1", ["/etc/ssh/ssh_host_*", "/etc/machine-id"])
    assert carried == ["etc/machine-id"]
    assert os.listdir(outside) == []
