"""Importing root filesystem tarballs and directories: fidelity (ownership, modes, xattrs,
capabilities, ACLs, links, long and non-UTF-8 names) in every compression, device nodes left out,
and refusal of unsafe or damaged archives with nothing imported."""

from __future__ import annotations

import io
import os
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.helpers import Realms, run

COMPRESSIONS = {
    "tar": [],
    "tar.gz": ["--gzip"],
    "tar.xz": ["--xz"],
    "tar.zst": ["--zstd"],
    "tar.bz2": ["--bzip2"],
}


def _rich_tree(root: Path, busybox_tree: Path) -> Path:
    """A busybox tree plus every kind of entry a root filesystem has."""
    run("cp", "-a", f"{busybox_tree}/.", f"{root}/")
    data = root / "data"
    data.mkdir()
    setuid = data / "setuid-tool"
    setuid.write_bytes(b"#!/bin/sh\n")
    os.chown(setuid, 1234, 5678)
    os.chmod(setuid, 0o4755)
    (data / "hard-a").write_text("shared inode\n")
    os.link(data / "hard-a", data / "hard-b")
    (data / "abs-link").symlink_to("/etc/os-release")
    os.mknod(data / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(data / "fifo")
    os.setxattr(data / "hard-a", "user.realms-test", b"kept")
    os.setxattr(data / "setuid-tool", "trusted.realms-test", b"trusted too")
    sticky = data / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    run("setcap", "cap_net_raw+ep", data / "hard-a")
    (data / "acl").write_text("with an access ACL\n")
    os.setxattr(data / "acl", "system.posix_acl_access", POSIX_ACL)
    deep = data / ("long-directory-name-" * 6) / ("long-file-name-" * 8)
    deep.parent.mkdir()
    deep.write_text("long\n")
    (data / os.fsdecode(b"caf\xe9-latin1")).write_text("not UTF-8\n")
    return root


# user::rw- user:1234:r-- group::r-- mask::r-- other::--- as the kernel stores it
POSIX_ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, uid)
    for tag, perm, uid in [
        (1, 6, 0xFFFFFFFF),
        (2, 4, 1234),
        (4, 4, 0xFFFFFFFF),
        (0x10, 4, 0xFFFFFFFF),
        (0x20, 0, 0xFFFFFFFF),
    ]
)


def _tarball(tree: Path, target: Path, options: list[str]) -> Path:
    run(
        "tar",
        "--create",
        "--file",
        target,
        "--directory",
        tree,
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
        *options,
        ".",
    )
    return target


@pytest.fixture(scope="module")
def rich_tree(tmp_path_factory: pytest.TempPathFactory, busybox_tree: Path) -> Path:
    return _rich_tree(tmp_path_factory.mktemp("rich") / "root", busybox_tree)


@pytest.mark.parametrize("suffix", [*COMPRESSIONS, "directory"])
def test_tarball_import_keeps_everything(
    realms: Realms, rich_tree: Path, tmp_path: Path, suffix: str
) -> None:
    if suffix == "directory":
        source = rich_tree
    else:
        source = _tarball(rich_tree, tmp_path / f"root.{suffix}", COMPRESSIONS[suffix])
    imported = realms("appimg", "import", "img", str(source))
    tree = realms.store / "appimg/img/v1"
    data = tree / "data"

    tool = os.lstat(data / "setuid-tool")
    assert (tool.st_uid, tool.st_gid) == (1234, 5678)
    assert stat.S_IMODE(tool.st_mode) == 0o4755
    assert os.getxattr(data / "setuid-tool", "trusted.realms-test") == b"trusted too"
    assert os.getxattr(data / "hard-a", "user.realms-test") == b"kept"
    assert os.lstat(data / "hard-a").st_ino == os.lstat(data / "hard-b").st_ino
    assert os.readlink(data / "abs-link") == "/etc/os-release"
    assert os.getxattr(data / "hard-a", "security.capability") == os.getxattr(
        rich_tree / "data/hard-a", "security.capability"
    )
    assert os.getxattr(data / "acl", "system.posix_acl_access") == POSIX_ACL
    long_name = data / ("long-directory-name-" * 6) / ("long-file-name-" * 8)
    assert long_name.read_text() == "long\n"
    assert (data / os.fsdecode(b"caf\xe9-latin1")).read_text() == "not UTF-8\n"
    # Device nodes are not stored, and one warning says so.
    assert not os.path.lexists(data / "null")
    warnings = [line for line in imported.stderr.splitlines() if "device node" in line]
    assert len(warnings) == 1 and "skipped 1 device node" in warnings[0], imported.stderr
    assert stat.S_ISFIFO(os.lstat(data / "fifo").st_mode)
    assert stat.S_IMODE(os.lstat(data / "sticky").st_mode) == 0o1777
    assert (tree / "usr/bin/busybox").read_bytes() == (rich_tree / "usr/bin/busybox").read_bytes()

    shown = realms.json("appimg", "show", "img")
    assert shown["kind"] == "tree" and shown["version"] == 1
    assert shown["versions"][0]["origin"] == "import"
    assert shown["versions"][0]["size"] > 1_000_000
    # The version is read-only: nothing can change it in place.
    with pytest.raises(OSError):
        (tree / "new-file").write_text("x")


def _evil(path: Path, build: list[tuple[str, tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for _, info, payload in build:
            archive.addfile(info, io.BytesIO(payload) if payload else None)
    return path


def _file(name: str, payload: bytes = b"x") -> tuple[str, tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return ("file", info, payload)


def _link(
    name: str, target: str, kind: bytes = tarfile.SYMTYPE
) -> tuple[str, tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return ("link", info, b"")


UNSAFE = {
    "absolute path": ([_file("usr/ok"), _file("/etc/evil")], "absolute path"),
    "dot-dot": ([_file("usr/../../evil")], "'..'"),
    "write through symlink": (
        [_link("etc", "/etc"), _file("etc/evil-passwd")],
        "symbolic link",
    ),
    "write through relative symlink": (
        [_link("up", "../../.."), _file("up/tmp/evil")],
        "symbolic link",
    ),
    "hard link outside": ([_link("evil", "../../etc/shadow", tarfile.LNKTYPE)], "'..'"),
    "hard link absolute": ([_link("evil", "/etc/shadow", tarfile.LNKTYPE)], "absolute"),
    "hard link to nothing": ([_link("evil", "missing", tarfile.LNKTYPE)], "not earlier"),
    "hard link through symlink": (
        [_link("etc", "/etc"), _link("evil", "etc/shadow", tarfile.LNKTYPE)],
        "symbolic link",
    ),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_tarball_is_refused_and_nothing_imported(
    realms: Realms, tmp_path: Path, case: str
) -> None:
    entries, reason = UNSAFE[case]
    archive = _evil(tmp_path / "evil.tar", entries)
    error = realms.fails("appimg", "import", "evil", str(archive))
    assert reason in error and "nothing was imported" in error
    assert realms.json("appimg", "list") == []
    assert os.listdir(realms.store / "appimg") == []


def test_damaged_archives_are_refused(realms: Realms, rich_tree: Path, tmp_path: Path) -> None:
    for suffix in ("tar.gz", "tar.xz", "tar.zst", "tar"):
        good = _tarball(rich_tree, tmp_path / f"good.{suffix}", COMPRESSIONS[suffix])
        truncated = tmp_path / f"truncated.{suffix}"
        data = good.read_bytes()
        truncated.write_bytes(data[: len(data) // 2])
        error = realms.fails("appimg", "import", "broken", str(truncated))
        assert truncated.name in error
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(4096))
    assert "not a valid gzip tar archive" in realms.fails("appimg", "import", "x", str(garbage))
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    assert "neither a directory, a tarball" in realms.fails("appimg", "import", "x", str(empty))
    assert realms.json("appimg", "list") == []
    assert os.listdir(realms.store / "appimg") == []


def test_not_a_tarball_or_directory(realms: Realms, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 200)
    assert "neither a directory, a tarball" in realms.fails("appimg", "import", "x", str(text))
    assert "no such file" in realms.fails("appimg", "import", "x", str(tmp_path / "missing"))


def test_full_disk_leaves_store_as_it_was(
    mount_guard: Path, busybox_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A tarball bigger than the store's free space: a clear error, nothing half-imported."""
    from tests.helpers import make_btrfs

    store = mount_guard / "small"
    make_btrfs(mount_guard / "small.img", store, "300M")
    realms = Realms(store)
    realms("init")
    realms("appimg", "import", "base", str(busybox_tree))
    big = tmp_path_factory.mktemp("big") / "root"
    run("cp", "-a", f"{busybox_tree}/.", f"{big}/")
    with open(big / "blob", "wb") as handle:
        for _ in range(400):
            handle.write(os.urandom(1 << 20))
    archive = _tarball(big, mount_guard / "big.tar.zst", ["--zstd"])
    error = realms.fails("appimg", "import", "big", str(archive))
    assert "full" in error or "space" in error
    assert [a["name"] for a in realms.json("appimg", "list")] == ["base"]
    assert sorted(os.listdir(store / "appimg")) == ["base"]
    # The store still works after the failure.
    realms("new", "after")
    assert realms("run", "after", "--", "cat", "/etc/os-release").stdout.startswith("ID=busybox")
    subprocess.run(["sync"], check=True)
