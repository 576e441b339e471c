"""Attacks on import through crafted archives and directories (issue 10, items 3 and 6).

Each test is the attack: a tarball or directory made to get something past the checks (an
entry GNU tar would extract but Python's tarfile never showed, a device node, data after the
end of the archive, a path out of the tree); each asserts the import is refused or the thing
left out, that nothing landed anywhere, and that the store is as it was.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.helpers import Realms
from tests.unit.archives import (
    END,
    _archive,
    _dir,
    _file,
    _header,
    _link,
    _node,
    _outside_cases,
)


def _state(store: Path) -> list[tuple[str, int, int]]:
    """Every path under the store's appimg directory with its mode and size: what an import
    could have changed."""
    found = []
    for directory, names, files in os.walk(store / "appimg"):
        for name in [*names, *files]:
            path = Path(directory, name)
            info = os.lstat(path)
            found.append((str(path.relative_to(store)), info.st_mode, info.st_size))
    return sorted(found)


def _with_garbage_devmajor(block: bytes) -> bytes:
    """A header block whose devmajor field is garbage, with a correct checksum: Python's
    tarfile calls it invalid (and used to stop there), GNU tar ignores the field for a file."""
    header = bytearray(block[:512])
    header[329:337] = b"garbage!"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + block[512:]


def test_garbage_devmajor_does_not_hide_entries(realms: Realms, base: str, tmp_path: Path) -> None:
    """Entry 2's header is bad; after it come a setuid root shell and a file at /../escape.
    Before: Python's check stopped at entry 2 and saw nothing wrong, GNU tar extracted all."""
    archive = _archive(
        tmp_path / "devmajor.tar",
        _dir("usr/"),
        _with_garbage_devmajor(_file("usr/readme", b"hello\n")),
        _file("usr/bin/rootshell", b"#!/bin/sh\n", mode=0o4755),
        _file("../escape", b"out of the tree\n"),
        END,
    )
    # The attack is real: GNU tar on its own goes past the bad header.
    listed = subprocess.run(["tar", "-tvf", archive], check=False, capture_output=True, text=True)
    assert "usr/bin/rootshell" in listed.stdout
    before = _state(realms.store)

    for args in (["evil", str(archive)], [base, str(archive), "--new-version"]):
        error = realms.fails("appimg", "import", *args)
        assert "devmajor.tar: damaged tar archive" in error and "after entry" in error, error
        assert "nothing was imported" in error

    assert _state(realms.store) == before
    assert [a["name"] for a in realms.json("appimg", "list")] == [base]
    # Nothing of the archive landed anywhere: not in the store, not beside it.
    for root in (realms.store, realms.store.parent):
        for _, _, files in os.walk(root):
            assert "rootshell" not in files and "escape" not in files


def test_device_nodes_in_a_tarball_are_not_stored(realms: Realms, tmp_path: Path) -> None:
    archive = _archive(
        tmp_path / "devices.tar",
        _dir("usr/"),
        _dir("dev/"),
        _node("dev/mem", tarfile.CHRTYPE, 1, 1),
        _node("dev/loop0", tarfile.BLKTYPE, 7, 0),
        _file("usr/kept", b"kept\n"),
        END,
    )
    imported = realms("appimg", "import", "img", str(archive))
    warnings = [line for line in imported.stderr.splitlines() if "device node" in line]
    assert warnings == [
        "realms: warning: devices.tar: skipped 2 device nodes "
        "(not stored: systemd-nspawn gives every realm its own /dev)"
    ]
    tree = realms.store / "appimg/img/v1"
    assert (tree / "usr/kept").read_text() == "kept\n"
    assert os.listdir(tree / "dev") == []
    for directory, _, files in os.walk(tree):
        for name in files:
            mode = os.lstat(Path(directory, name)).st_mode
            assert not stat.S_ISCHR(mode) and not stat.S_ISBLK(mode)


def test_hard_link_to_a_device_node_is_not_stored(realms: Realms, tmp_path: Path) -> None:
    """A hard link is another name for the node it links to: it goes with it."""
    archive = _archive(
        tmp_path / "linked.tar",
        _dir("usr/"),
        _node("usr/mem", tarfile.CHRTYPE, 1, 1),
        _link("usr/innocent", "usr/mem", tarfile.LNKTYPE),
        END,
    )
    imported = realms("appimg", "import", "img", str(archive))
    assert "skipped 2 device nodes" in imported.stderr
    assert os.listdir(realms.store / "appimg/img/v1/usr") == []


def test_device_nodes_in_a_directory_are_not_stored(
    realms: Realms, busybox_tree: Path, tmp_path: Path
) -> None:
    source = tmp_path / "root"
    subprocess.run(["cp", "-a", f"{busybox_tree}/.", f"{source}/"], check=True)
    os.mknod(source / "dev/mem", stat.S_IFCHR | 0o666, os.makedev(1, 1))
    os.mknod(source / "dev/loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mkfifo(source / "dev/fifo")  # FIFOs are harmless and kept

    imported = realms("appimg", "import", "img", str(source))
    warnings = [line for line in imported.stderr.splitlines() if "device node" in line]
    assert len(warnings) == 1 and "skipped 2 device nodes" in warnings[0], imported.stderr
    dev = realms.store / "appimg/img/v1/dev"
    assert not os.path.lexists(dev / "mem") and not os.path.lexists(dev / "loop0")
    assert stat.S_ISFIFO(os.lstat(dev / "fifo").st_mode)
    assert (realms.store / "appimg/img/v1/bin/sh").exists()


@pytest.mark.parametrize(
    "trailer",
    [
        pytest.param(b"garbage", id="garbage"),
        pytest.param(_file("usr/bin/rootshell", b"#!/bin/sh\n", mode=0o4755) + END, id="tar"),
    ],
)
def test_data_after_the_end_of_the_archive_is_refused(
    realms: Realms, tmp_path: Path, trailer: bytes
) -> None:
    """Two archives one after the other (or junk after one): tar -i would read the second."""
    archive = _archive(tmp_path / "trailer.tar", _dir("usr/"), _file("usr/ok"), END, trailer)
    before = _state(realms.store)
    error = realms.fails("appimg", "import", "img", str(archive))
    assert "data after the end of the archive" in error and "nothing was imported" in error
    assert _state(realms.store) == before == []


@pytest.mark.parametrize(
    "case",
    [
        "absolute path",
        "dot-dot",
        "hard link outside",
        "write through symlink",
        "hard link through symlink",
        "NUL in a name",
    ],
)
def test_entries_that_leave_the_tree_are_refused(realms: Realms, tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    parts, reason = _outside_cases(outside)[case]
    archive = _archive(tmp_path / "evil.tar", *parts, END)
    error = realms.fails("appimg", "import", "evil", str(archive))
    assert reason in error and "nothing was imported" in error, error
    assert os.listdir(outside) == []
    assert _state(realms.store) == []


def test_a_huge_pax_header_is_refused_quickly(realms: Realms, tmp_path: Path) -> None:
    """Crafted pax records that take tarfile's parser quadratic time (CVE-2024-6232)."""
    records = b"2 " * 200_000 + b"=\n"
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(records)
    archive = _archive(
        tmp_path / "slow.tar",
        _header(info) + records + bytes(-len(records) % 512),
        _file("usr/ok"),
        END,
    )
    error = realms.fails("appimg", "import", "slow", str(archive))
    assert "malformed pax header record" in error
    assert _state(realms.store) == []


def test_wording_of_a_damaged_plain_tar(realms: Realms, tmp_path: Path) -> None:
    """The error names what the file was taken for, in words ("not a valid none tar...")."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("usr/big")
        info.size = 100_000
        archive.addfile(info, io.BytesIO(bytes(100_000)))
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data.getvalue()[:20_000])
    error = realms.fails("appimg", "import", "img", str(truncated))
    assert error.startswith("truncated.tar: not a valid tar archive (")
    assert "none" not in error
