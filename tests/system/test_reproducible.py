"""Reproducible builds (issue 14): two builds of the same config against the same archive state,
every stage made again, give the same file tree (``realms appimg diff`` finds nothing), and
sealed with the same salt, the same image. ``SOURCE_DATE_EPOCH`` is the archive's date, or the
user's. Against a local signed archive whose state the test controls (:mod:`tests.apt_repo`)."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from realms.image.header import HEADER_SIZE
from tests.apt_repo import AptRepo
from tests.helpers import Realms

MODULES = '["no-install-recommends", "write-apt-sources", "create-user", "set-hostname"]'
SALT = "5a" * 32
USER_EPOCH = 1700000000  # 2023-11-14: older than most files of trixie's packages


def _config(directory: Path, repo: AptRepo) -> Path:
    shutil.copyfile(repo.key, directory / "archive.asc")
    (directory / "motd").write_text("reproducible\n")
    (directory / "mark.sh").write_text('echo "$SOURCE_DATE_EPOCH" > /etc/built-at\n')
    path = directory / "repro.toml"
    path.write_text(
        f'name = "repro"\nmirror = "{repo.mirror}"\nsecurity-mirror = "{repo.security}"\n'
        'packages = ["realms-probe"]\nkeyring = ["archive.asc"]\n'
        f'[user]\ngroups = []\n[modules]\nbefore = {MODULES}\nafter = ["mark.sh"]\n'
        '[[files]]\nsource = "motd"\npath = "/etc/motd"\n'
    )
    return path


def _archive_epoch(repo: AptRepo) -> int:
    """The newest Date of the suites the build reads."""
    dates = []
    for suite in ("trixie", "trixie-updates", "trixie-security"):
        release = (repo.dists(suite) / "Release").read_text()
        line = next(line for line in release.splitlines() if line.startswith("Date: "))
        dates.append(parsedate_to_datetime(line.removeprefix("Date: ")).astimezone(UTC))
    return int(max(dates).timestamp())


def _newest_mtime(tree: Path) -> int:
    newest = int(os.lstat(tree).st_mtime)
    for _path, directories, files, fd in os.fwalk(tree, follow_symlinks=False):
        for name in (*directories, *files):
            newest = max(newest, int(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime))
    return newest


def _check_clean(tree: Path, epoch: int) -> None:
    """What a build may not leave behind: times after the epoch, per-build files."""
    assert _newest_mtime(tree) == epoch, datetime.fromtimestamp(_newest_mtime(tree), UTC)
    user = next(line for line in (tree / "etc/shadow").read_text().splitlines() if "user:" in line)
    assert user.split(":")[2] == str(epoch // 86400)
    assert list((tree / "var/lib/apt/lists").iterdir()) == []
    logs = [p for p in (tree / "var/log").rglob("*") if p.is_file() and p.stat().st_size]
    assert logs == []
    assert not (tree / "var/cache/ldconfig/aux-cache").exists()
    # Every step in the image has the epoch in its environment.
    assert (tree / "etc/built-at").read_text() == f"{epoch}\n"


def _image_body(realms: Realms, version: int) -> bytes:
    """A sealed version's image after its header (the header holds its version number)."""
    return (realms.store / f"appimg/repro/v{version}.img").read_bytes()[HEADER_SIZE:]


@pytest.mark.slow
def test_two_builds_of_one_archive_state_are_the_same_tree(
    realms: Realms, apt_repo: AptRepo, tmp_path: Path
) -> None:
    config = _config(tmp_path, apt_repo)
    realms("appimg", "build", str(config))
    again = realms("appimg", "build", str(config), "--rebuild", "--explain")
    assert again.stdout.splitlines() == [
        "bootstrap: miss: --rebuild builds every stage again",
        "packages: miss: --rebuild builds every stage again",
    ]
    assert "Bootstrapping Debian trixie" in again.stderr
    assert realms.json("appimg", "diff", "repro", "1", "2") == {
        "added": [],
        "removed": [],
        "changed": [],
    }
    store = realms.store / "appimg/repro"
    epoch = _archive_epoch(apt_repo)
    for version in (1, 2):
        _check_clean(store / f"v{version}", epoch)

    # Sealed with the same salt, both builds are the same image.
    realms("key", "generate", "test")
    realms("appimg", "seal", "repro", "--channel", "test", "--salt", SALT)  # v3, of v2
    realms("appimg", "rollback", "repro", "1")
    realms("appimg", "seal", "repro", "--channel", "test", "--salt", SALT)  # v4, of v1
    assert _image_body(realms, 3) == _image_body(realms, 4)

    # The user's SOURCE_DATE_EPOCH: another key, and every time clamped to it.
    env = {"SOURCE_DATE_EPOCH": str(USER_EPOCH)}
    dated = realms("appimg", "build", str(config), "--explain", env=env)
    assert dated.stdout.splitlines() == [
        f"bootstrap: miss: SOURCE_DATE_EPOCH changed: none → {USER_EPOCH}",
        f"packages: miss: the bootstrap changed; SOURCE_DATE_EPOCH changed: none → {USER_EPOCH}",
    ]
    _check_clean(store / "v5", USER_EPOCH)
    up_to_date = realms("appimg", "build", str(config), "--explain", env=env)
    assert "packages: hit: version 5 was built from these inputs" in up_to_date.stdout

    for bad in ("yesterday", "-5", "1e9", "99999999999999"):
        error = realms.fails("appimg", "build", str(config), env={"SOURCE_DATE_EPOCH": bad})
        assert "SOURCE_DATE_EPOCH: expected whole seconds since 1970" in error
