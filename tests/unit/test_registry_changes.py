"""The changes between two trees that a pushed layer holds: the btrfs send stream read from
hand-made streams (temporary names renamed into place, deletions, nested and renamed
directories), and the walk that stands in for it without btrfs."""

from __future__ import annotations

import io
import os
import struct
import subprocess
from pathlib import Path

import pytest

from realms.errors import InvalidInput
from realms.registry.changes import (
    A_PATH,
    A_PATH_LINK,
    A_PATH_TO,
    LINK,
    MKDIR,
    MKFILE,
    RENAME,
    RMDIR,
    SNAPSHOT,
    UNLINK,
    find_changes,
    read_stream,
    stream_candidates,
)

CHMOD, UTIMES, UPDATE_EXTENT, END = 18, 20, 22, 21


def _command(cmd: int, *attributes: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HH", kind, len(value)) + value for kind, value in attributes)
    return struct.pack("<IHI", len(body), cmd, 0) + body


def _stream(*commands: bytes, version: int = 1) -> io.BytesIO:
    return io.BytesIO(b"btrfs-stream\0" + struct.pack("<I", version) + b"".join(commands))


def _path(cmd: int, path: str) -> bytes:
    return _command(cmd, (A_PATH, path.encode()))


def _rename(source: str, target: str) -> bytes:
    return _command(RENAME, (A_PATH, source.encode()), (A_PATH_TO, target.encode()))


def test_temporary_names_are_followed_to_where_they_are_renamed() -> None:
    stream = _stream(
        _command(SNAPSHOT, (A_PATH, b"v2"), (1, b"u" * 16)),
        # A new file, made under a temporary name and moved into place.
        _path(MKFILE, "o257-5-0"),
        _rename("o257-5-0", "etc/new.conf"),
        _path(UPDATE_EXTENT, "etc/new.conf"),
        # A new directory with a file made inside it while it still had its temporary name.
        _path(MKDIR, "o258-5-0"),
        _path(MKFILE, "o258-5-0/inner"),
        _rename("o258-5-0", "opt/app"),
        # An existing file replaced: the old one moved aside (orphaned), then deleted.
        _rename("etc/passwd", "o250-3-0"),
        _path(MKFILE, "o259-5-0"),
        _rename("o259-5-0", "etc/passwd"),
        _path(UNLINK, "o250-3-0"),
        # Deletions.
        _path(UNLINK, "var/cache/x/file"),
        _path(RMDIR, "var/cache/x"),
        # A file changed, then its directory renamed: both names count.
        _path(CHMOD, "usr/share/a/doc"),
        _rename("usr/share/a", "usr/share/b"),
        # A new hard link to an existing file.
        _command(LINK, (A_PATH, b"usr/bin/second"), (A_PATH_LINK, b"usr/bin/first")),
        _path(UTIMES, ""),
        _command(END),
        _path(MKFILE, "never/read"),  # after END
    )
    found = stream_candidates(stream)
    expected = {
        "",
        "etc/new.conf",
        "opt/app",
        "opt/app/inner",
        "etc/passwd",
        "var/cache/x",
        "var/cache/x/file",
        "usr/share/a",
        "usr/share/a/doc",
        "usr/share/b",
        "usr/share/b/doc",
        "usr/bin/second",
        "usr/bin/first",
    }
    assert expected <= found
    assert "never/read" not in found
    # Besides those, only the temporary names themselves (not in either tree).
    assert {p for p in found - expected if not p.startswith("o2")} == set()


def test_a_rename_onto_a_path_the_stream_named_keeps_the_old_one_as_a_candidate() -> None:
    found = stream_candidates(
        _stream(
            _path(CHMOD, "etc/old/sub/f"),
            _path(MKDIR, "o300-1-0"),
            _rename("o300-1-0", "etc/old"),
        )
    )
    assert {"etc/old", "etc/old/sub/f"} <= found


def test_version_2_streams_read_their_data_to_the_end_of_the_command() -> None:
    # In v2 the data attribute has no length of its own: it is the rest of the command.
    body = struct.pack("<HH", A_PATH, 1) + b"f" + struct.pack("<HH", 19, 0) + b"\1\2\3\4"
    write = struct.pack("<IHI", len(body), 15, 0) + body
    commands = list(read_stream(_stream(write, _path(MKFILE, "g"), version=2)))
    assert commands[0].attributes[19] == b"\1\2\3\4"
    assert [c.path() for c in commands] == ["f", "g"]


@pytest.mark.parametrize(
    "data",
    [
        b"not a stream at all",
        b"btrfs-stream\0" + struct.pack("<I", 9),
        _stream(_path(MKFILE, "f")).getvalue()[:-3],
        _stream(struct.pack("<IHI", 4, MKFILE, 0) + struct.pack("<HH", A_PATH, 50)).getvalue(),
        _stream(struct.pack("<IHI", 1 << 30, MKFILE, 0)).getvalue(),
    ],
    ids=["magic", "version", "cut", "attribute", "huge"],
)
def test_a_damaged_stream_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        stream_candidates(io.BytesIO(data))


def test_an_unknown_command_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown command 99"):
        stream_candidates(_stream(_path(99, "f")))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_walk_finds_entries_whiteouts_and_whole_hard_link_groups(tmp_path: Path) -> None:
    parent, child = tmp_path / "parent", tmp_path / "child"
    _write(parent / "same", "unchanged\n")
    _write(parent / "edited", "before\n")
    _write(parent / "d/kept", "kept\n")
    _write(parent / "d/deleted", "deleted\n")
    _write(parent / "gone/deep/file", "whole directory deleted\n")
    _write(parent / "becomes-file/inside", "a directory replaced by a file\n")
    _write(parent / "links/one", "linked\n")
    os.link(parent / "links/one", parent / "links/two")
    os.link(parent / "links/one", parent / "other-link")
    (parent / "sym").symlink_to("same")
    os.utime(parent / "edited", ns=(10**18, 10**18))
    subprocess.run(["cp", "-a", f"{parent}/.", str(child)], check=True)

    _write(child / "edited", "after, longer\n")
    (child / "d/deleted").unlink()
    subprocess.run(["rm", "-r", str(child / "gone"), str(child / "becomes-file")], check=True)
    _write(child / "becomes-file", "now a file\n")
    _write(child / "new/dir/file", "new\n")
    with open(child / "links/two", "a") as handle:  # changes all three names' inode
        handle.write("more\n")
    (child / "sym").unlink()
    (child / "sym").symlink_to("edited")
    (child / "d").chmod(0o750)

    changes = find_changes(parent, child, btrfs=False)
    assert changes.method == "walk"
    assert changes.whiteouts == ["becomes-file", "d/deleted", "gone"]
    assert changes.entries == [
        "becomes-file",
        "d",
        "edited",
        "links/one",
        "links/two",
        "new",
        "new/dir",
        "new/dir/file",
        "other-link",
        "sym",
    ]


def test_a_renamed_directory_brings_its_whole_subtree(tmp_path: Path) -> None:
    parent, child = tmp_path / "parent", tmp_path / "child"
    _write(parent / "a/b/c", "moved\n")
    subprocess.run(["cp", "-a", str(parent), str(child)], check=True)
    os.rename(child / "a", child / "z")
    changes = find_changes(parent, child, btrfs=False)
    assert changes.whiteouts == ["a"]
    assert changes.entries == ["z", "z/b", "z/b/c"]


def test_a_name_that_reads_as_a_whiteout_is_refused(tmp_path: Path) -> None:
    parent, child = tmp_path / "parent", tmp_path / "child"
    parent.mkdir()
    _write(child / ".wh.x", "")
    with pytest.raises(InvalidInput, match=r"\.wh\."):
        find_changes(parent, child, btrfs=False)
