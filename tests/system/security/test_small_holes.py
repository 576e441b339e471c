"""Smaller holes of issue 10, each as the attack or the input that found it: names that nspawn
refuses as machine names, error lines of thousands of characters, and the bytes an update
reports as written when it is made in the same btrfs transaction as its parent."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from tests.helpers import Realms


def _listing(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if "locks" not in p.parts)


def test_names_nspawn_would_refuse_are_refused_at_creation(realms: Realms, base: str) -> None:
    before = _listing(realms.store)
    for bad in ("w" * 65, "w" * 128, "work-", "a-b-"):
        error = realms.fails("new", bad)
        assert "name" in error, error
    for bad in ("b" * 41, "base2-"):
        assert "appimg name" in realms.fails("appimg", "import", bad, str(realms.store / "x"))
    assert _listing(realms.store) == before
    # At the limits, the names work as machine names: nspawn runs the realm and the update.
    longest = "w" + "-x" * 31 + "y"
    assert len(longest) == 64
    realms("new", longest)
    assert realms("run", longest, "--", "echo", "ran").stdout.strip() == "ran"
    appimg = "b" * 40
    realms("appimg", "import", appimg, str(realms.store / "appimg/base/v1"))
    made = realms("update-appimg", appimg, "--", "hostname")
    assert f"{appimg}-appimg-update" in made.stdout
    assert realms.json("appimg", "show", appimg)["version"] == 2


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("realms: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_name_of_ten_thousand_characters_gives_a_short_error(realms: Realms) -> None:
    result = realms("new", "r" * 10_000, check=False)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert len(line) < 300 and "(10002 characters)" in line, line  # the repr's quotes count
    assert all(len(line) < 300 for line in result.stderr.splitlines())


def test_a_config_key_of_ten_thousand_characters_gives_a_short_error(realms: Realms) -> None:
    config = realms.store / "config.toml"
    config.write_text(config.read_text() + f'\n{"k" * 10_000} = "v"\n')
    result = realms("status", check=False)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert len(line) < 400 and "characters)" in line, line
    assert "k" * 100 not in result.stderr


def test_a_crafted_tar_entry_name_gives_a_short_error(realms: Realms, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        entry = tarfile.TarInfo("../" + "e" * 4096)
        data = b"owned\n"
        entry.size = len(data)
        tar.addfile(entry, io.BytesIO(data))
    before = _listing(realms.store)
    result = realms("appimg", "import", "evil", str(archive), check=False)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert len(line) < 400 and "characters)" in line, line
    assert _listing(realms.store) == before


def test_written_is_what_the_update_wrote_right_after_its_parent(realms: Realms, base: str) -> None:
    # The import and the update run within one btrfs transaction (no commit in between but the
    # snapshot's own): the update must not count the parent's files as its own.
    size = realms.json("appimg", "versions", "base")[0]["size"]
    realms("update-appimg", "base", "--", "sh", "-c", "head -c 5000 /dev/zero > /etc/five-k")
    (_, v2) = realms.json("appimg", "versions", "base")
    assert v2["files_changed"] >= 1
    assert 5000 <= v2["written"] < 64 * 1024 < size, (v2, size)
    assert os.path.getsize(realms.store / "appimg/base/v2/etc/five-k") == 5000
    # A version made right after that one, likewise.
    realms("update-appimg", "base", "--", "sh", "-c", "echo small > /etc/small")
    (_, _, v3) = realms.json("appimg", "versions", "base")
    assert 0 < v3["written"] < 5000, v3
