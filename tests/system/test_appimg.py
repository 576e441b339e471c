"""Tree appimgs: import from a directory, list, show, versions, remove."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from realms.system import btrfs
from tests.helpers import Realms, run


def test_import_directory(realms: Realms, busybox_tree: Path) -> None:
    result = realms("appimg", "import", "base", str(busybox_tree))
    assert "version 1" in result.stderr
    tree = realms.store / "appimg/base/v1"
    assert btrfs.is_subvolume(tree) and btrfs.is_readonly(tree)
    assert os.readlink(tree / "bin") == "usr/bin"
    assert stat.S_IMODE(os.lstat(tree / "tmp").st_mode) == 0o1777

    listed = realms.json("appimg", "list")
    assert [a["name"] for a in listed] == ["base"]
    entry = listed[0]
    assert entry["kind"] == "tree" and entry["version"] == 1 and entry["realms"] == []
    (version,) = entry["versions"]
    assert version["version"] == 1 and version["kind"] == "tree" and version["pinned"] is False
    assert version["created"].endswith("Z") and version["origin"] == "import"
    assert version["detail"] == str(busybox_tree)
    table = realms("appimg", "list").stdout
    assert table.splitlines()[0].split() == ["NAME", "KIND", "VERSION", "VERSIONS", "REALMS"]
    assert "base" in realms("appimg", "show", "base").stdout


def test_import_existing_name(realms: Realms, base: str, busybox_tree: Path) -> None:
    error = realms.fails("appimg", "import", "base", str(busybox_tree))
    assert "already exists" in error
    realms("appimg", "import", "base", str(busybox_tree), "--new-version")
    shown = realms.json("appimg", "show", "base")
    assert shown["version"] == 2 and [v["version"] for v in shown["versions"]] == [1, 2]
    assert btrfs.is_readonly(realms.store / "appimg/base/v2")
    missing = realms.fails("appimg", "import", "other", str(busybox_tree), "--new-version")
    assert "no appimg named 'other'" in missing


def test_remove_appimg_keeps_realms_working(realms: Realms, base: str) -> None:
    realms("new", "survivor")
    result = realms("appimg", "remove", "base")
    assert "survivor" in result.stderr
    assert realms.json("appimg", "list") == []
    assert not (realms.store / "appimg/base").exists()
    (listed,) = realms.json("list")
    assert listed["appimg"] == "base" and listed["outdated"] is False
    assert "appimg removed" in realms("list").stdout
    assert realms("run", "survivor", "--", "hostname").stdout.strip() == "survivor"
    assert "no appimg named 'base'" in realms.fails("new", "another")
    assert "no appimg named 'base'" in realms.fails("appimg", "remove", "base")


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "-x", "a/b", "..", ".hidden", "a.b", "a b", "naïve", "a_b", "x" * 41, "a\nb"],
)
def test_bad_appimg_names(realms: Realms, busybox_tree: Path, name: str) -> None:
    error = realms.fails("appimg", "import", "--", name, str(busybox_tree))
    assert "appimg name" in error
    assert os.listdir(realms.store / "appimg") == []


def test_longest_names(realms: Realms, busybox_tree: Path) -> None:
    appimg = "A" + "b-9" * 13  # 40 characters
    realms("appimg", "import", appimg, str(busybox_tree))
    realm = "r" * 64  # systemd's limit for a machine name (issue 10)
    realms("new", realm, "--appimg", appimg)
    assert realms.json("show", realm)["appimg"] == appimg
    assert "longer than 64" in realms.fails("new", realm + "x", "--appimg", appimg)


def test_import_tree_without_os_warns(realms: Realms, tmp_path: Path) -> None:
    (tmp_path / "just-files").mkdir()
    (tmp_path / "just-files/readme").write_text("hi\n")
    result = realms("appimg", "import", "odd", str(tmp_path / "just-files"))
    assert "warning" in result.stderr and "may not start" in result.stderr
    realms("new", "odd-realm", "--appimg", "odd")
    assert "does not look like an OS tree" in realms.fails("run", "odd-realm", "--", "true")


def test_import_directory_keeps_special_files(
    realms: Realms, busybox_tree: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    run("cp", "-a", f"{busybox_tree}/.", f"{tree}/")
    os.mknod(tree / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(tree / "fifo")
    (tree / "owned").write_text("x")
    os.chown(tree / "owned", 4242, 4343)
    os.setxattr(tree / "owned", "user.realms", b"yes")
    result = realms("appimg", "import", "special", str(tree))
    imported = realms.store / "appimg/special/v1"
    # Device nodes from outside are not stored (issue 10, item 3); FIFOs are.
    assert not os.path.lexists(imported / "null") and "skipped 1 device node" in result.stderr
    assert stat.S_ISFIFO(os.lstat(imported / "fifo").st_mode)
    owned = os.lstat(imported / "owned")
    assert (owned.st_uid, owned.st_gid) == (4242, 4343)
    assert os.getxattr(imported / "owned", "user.realms") == b"yes"
