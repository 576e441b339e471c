"""``realms appimg diff`` between trees, block and sealed images, and reproducible seals
(``seal --salt``): the same tree and salt give the same image."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

from realms.image.header import HEADER_SIZE, parse_header
from tests.helpers import Realms, loops_backed_below, mounts_below

SALT = "5a" * 32


def _copy(tree: Path, target: Path) -> Path:
    subprocess.run(["cp", "-a", "--", str(tree), str(target)], check=True)
    return target


def _changed(result: dict[str, object]) -> dict[str, list[str]]:
    changed = result["changed"]
    assert isinstance(changed, list)
    return {c["path"]: c["what"] for c in changed}


def _nothing_mounted(realms: Realms) -> None:
    assert not mounts_below(realms.store), "an activation outlived the diff"
    assert not loops_backed_below(realms.store), "a loop device outlived the diff"


def test_diff_of_two_trees(realms: Realms, base: str, busybox_tree: Path, tmp_path: Path) -> None:
    second = _copy(busybox_tree, tmp_path / "second")
    (second / "etc/motd").write_text("added\n")
    os.unlink(second / "usr/bin/getent")
    passwd = second / "etc/passwd"
    text, mtime = passwd.read_text(), passwd.stat().st_mtime_ns
    passwd.write_text(text.replace("root", "ROOT"))  # the same size: the bytes decide
    os.utime(passwd, ns=(0, mtime))  # the mtime as it was
    os.chmod(second / "tmp", 0o1700)
    os.chown(second / "home", 1000, 1000)
    os.utime(second / "root", (1_000_000, 1_000_000))
    os.setxattr(second / "usr/bin/busybox", "user.note", b"x")
    os.unlink(second / "sbin")
    os.symlink("bin", second / "sbin")  # another target
    shutil.rmtree(second / "var/tmp")
    (second / "var/tmp").write_text("a file where a directory was\n")
    (second / "run/deep/er").mkdir(parents=True)
    (second / "run/deep/er/new\nline").write_text("")
    os.symlink("/", second / "escape")  # compared as a symlink, never followed
    realms("appimg", "import", "--new-version", "base", str(second))

    result = realms.json("appimg", "diff", "base", "1", "2")
    assert result["added"] == [
        "/escape",
        "/etc/motd",
        "/run/deep",
        "/run/deep/er",
        "/run/deep/er/new\nline",
    ]
    assert result["removed"] == ["/usr/bin/getent"]
    changed = _changed(result)
    assert changed.pop("/etc/passwd") == ["content"]
    assert changed.pop("/tmp") == ["mode"]
    assert changed.pop("/home") == ["owner"]
    assert changed.pop("/root") == ["mtime"]
    assert changed.pop("/usr/bin/busybox") == ["xattrs"]
    assert changed.pop("/sbin") == ["mtime", "target"]  # a new symlink: its own mtime
    assert "type" in changed.pop("/var/tmp")
    # What the edits did to the directories that hold them: their mtimes, nothing else.
    assert set(changed) <= {"/", "/etc", "/usr/bin", "/var", "/run", "/run/deep"}
    assert all(what == ["mtime"] for what in changed.values()), changed

    # The other way round: added and removed swap.
    back = realms.json("appimg", "diff", "base", "2", "1")
    assert back["added"] == result["removed"] and back["removed"] == result["added"]
    assert realms.json("appimg", "diff", "base", "1", "1") == {
        "added": [],
        "removed": [],
        "changed": [],
    }

    shown = realms("appimg", "diff", "base", "1", "2").stdout.splitlines()
    assert "+ /etc/motd" in shown and "- /usr/bin/getent" in shown
    assert "~ /etc/passwd (content)" in shown and "~ /sbin (mtime, target)" in shown
    assert any(line.startswith("~ /var/tmp (type, ") for line in shown)
    assert "+ /run/deep/er/new\\nline" in shown  # one line per path, whatever the name holds
    assert shown[-1].startswith("5 added, 1 removed, ")

    assert "has no version 7 (its versions: 1, 2)" in realms.fails(
        "appimg", "diff", "base", "1", "7"
    )
    assert "no appimg named 'other'" in realms.fails("appimg", "diff", "other", "1", "2")


def test_diff_of_an_update_reads_only_what_changed(realms: Realms, base: str) -> None:
    """An update's tree is a clone of its parent: files that share every extent are equal
    without being read, and a file rewritten in place with the same size is still found."""
    realms(
        "update-appimg",
        "base",
        "--",
        "sh",
        "-c",
        "sed -i s/root/ROOT/ /etc/passwd && touch -r /etc/group /etc/passwd && echo x > /etc/new",
    )
    result = realms.json("appimg", "diff", "base", "1", "2")
    assert result["added"] == ["/etc/new"] and result["removed"] == []
    changed = _changed(result)
    assert changed.pop("/etc/passwd") == ["content", "mtime"]
    assert set(changed) <= {"/etc"}  # and its mtime; the busybox binary is shared
    human = realms("appimg", "diff", "base", "2", "2").stdout
    assert human.startswith("no differences")

    # One block rewritten in place in a file whose other blocks stay shared.
    realms("update-appimg", "base", "--", "dd", "if=/dev/zero", "of=/big", "bs=64k", "count=16")
    realms(
        "update-appimg",
        "base",
        "--",
        "sh",
        "-c",
        "printf x | dd of=/big bs=1 seek=500000 conv=notrunc && touch -r /etc/group /big",
    )
    assert _changed(realms.json("appimg", "diff", "base", "3", "4")).get("/big") == [
        "content",
        "mtime",
    ]


def test_diff_of_tree_and_images(realms: Realms, base: str) -> None:
    realms("key", "generate", "test")
    realms("appimg", "seal", "base", "--channel", "test")  # v2: sealed ext4
    realms("appimg", "rollback", "base", "1")
    realms("appimg", "seal", "base", "--fs", "erofs", "--no-verity")  # v3: block erofs
    empty: dict[str, list[object]] = {"added": [], "removed": [], "changed": []}
    for first, second in (("1", "2"), ("1", "3"), ("3", "2")):
        assert realms.json("appimg", "diff", "base", first, second) == empty, (first, second)
        _nothing_mounted(realms)

    # An activation a realm uses stays; one the diff made goes.
    realms("appimg", "rollback", "base", "2")
    realms("new", "box")
    assert realms.json("appimg", "diff", "base", "2", "3") == empty
    assert os.path.ismount(realms.store / "active/base.v2")
    assert not (realms.store / "active/base.v3").exists()
    realms("remove", "box")
    _nothing_mounted(realms)

    # A sealed image whose data was changed is refused before anything is read from it.
    image = realms.store / "appimg/base/v2.img"
    with open(image, "r+b") as handle:
        handle.seek(HEADER_SIZE + 4096 * 3)
        byte = handle.read(1)
        handle.seek(HEADER_SIZE + 4096 * 3)
        handle.write(bytes([byte[0] ^ 1]))
    assert "verity" in realms.fails("appimg", "diff", "base", "1", "2")
    _nothing_mounted(realms)


def _areas(image: Path) -> tuple[dict[str, object], bytes]:
    raw = image.read_bytes()
    header = parse_header(raw[:HEADER_SIZE])
    return tomllib.loads(header.metainfo.raw.decode()), raw[HEADER_SIZE:]


def test_seal_with_a_salt_is_reproducible(
    realms: Realms, base: str, busybox_tree: Path, tmp_path: Path
) -> None:
    realms("key", "generate", "test")
    for bad in ("abc", "zz" * 32, "5a" * 33):
        assert "is not 64 hex digits" in realms.fails(
            "appimg", "seal", "base", "--channel", "test", "--salt", bad
        )
    seals = {}
    for fs in ("ext4", "erofs"):
        made = []
        for salt in (SALT, SALT, "a5" * 32):
            realms("appimg", "seal", "base", "--channel", "test", "--fs", fs, "--salt", salt)
            current = realms.json("appimg", "versions", "base")[-1]["version"]
            made.append(_areas(realms.store / f"appimg/base/v{current}.img"))
            realms("appimg", "rollback", "base", "1")
        (meta1, body1), (meta2, body2), (meta3, body3) = made
        # The same tree and salt: data and hash tree byte for byte; the metainfo differs
        # only in the version number (so does the signature over it).
        assert body1 == body2, fs
        assert meta1.pop("version") != meta2.pop("version")
        assert meta1 == meta2 and meta1["verity-salt"] == SALT
        nblocks = meta1["nblocks"]
        assert isinstance(nblocks, int)
        # Another salt: the same filesystem only where no UUID is derived from it.
        assert body3 != body1 and meta3["verity-root"] != meta1["verity-root"]
        assert len(body3) == len(body1)
        seals[fs] = body1

    # Another store (the copy backend) and another copy of the same files, read and written
    # at other times (atimes and ctimes differ): the same image.
    other = Realms(tmp_path / "other")
    other("init", "--backend", "copy")
    copy = _copy(busybox_tree, tmp_path / "copy")
    os.utime(copy / "etc/passwd", (1, (copy / "etc/passwd").stat().st_mtime))
    other("appimg", "import", "base", str(copy))
    other("key", "generate", "test")
    for fs in ("ext4", "erofs"):
        other("appimg", "seal", "base", "--channel", "test", "--fs", fs, "--salt", SALT)
        current = other.json("appimg", "versions", "base")[-1]["version"]
        assert _areas(other.store / f"appimg/base/v{current}.img")[1] == seals[fs], fs
        other("appimg", "rollback", "base", "1")

    # Without a salt, two seals differ (a random salt).
    realms("appimg", "seal", "base", "--channel", "test")
    realms("appimg", "rollback", "base", "1")
    realms("appimg", "seal", "base", "--channel", "test")
    numbers = [v["version"] for v in realms.json("appimg", "versions", "base")][-2:]
    first, second = (_areas(realms.store / f"appimg/base/v{n}.img") for n in numbers)
    assert first[1] != second[1]
