"""The stage cache's keys and explanations, the stage shelf's records and eviction, and what
makes a build reproducible (the epoch, the clamp of times), without root."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from realms.builder import cache, stages
from realms.builder.archive import ArchiveState, SuiteState
from realms.builder.config import load
from realms.builder.reproducible import Epoch, clamp_mtimes, parse_epoch, source_date_epoch
from realms.builder.spec import BuildConfig
from realms.errors import InvalidInput
from realms.store import Store

MIRROR = "http://deb.example.org/debian"


def _config(tmp_path: Path, extra: str = "") -> BuildConfig:
    path = tmp_path / "build.toml"
    path.write_text(
        f'name = "x"\nmirror = "{MIRROR}"\nsecurity-mirror = ""\n{extra}\n[modules]\nafter = []\n'
    )
    return load(path)


def _state(day: int, digest: str = "1") -> ArchiveState:
    date = datetime(2026, 12, day, 14, 2, tzinfo=UTC)
    return ArchiveState((SuiteState(MIRROR, "trixie", "InRelease", f"sha256:{digest * 64}", date),))


def test_a_package_list_change_is_a_package_stage_miss(tmp_path: Path) -> None:
    old = _config(tmp_path, 'packages = ["nano", "less"]\n')
    new = _config(tmp_path, 'packages = ["curl", "less"]\n')
    before = stages.plan(old, _state(1), None)
    after = stages.plan(new, _state(1), None)
    assert before.bootstrap_key == after.bootstrap_key
    assert stages.explain_miss(after.packages, [before.packages]) == (
        "package list changed: +curl -nano"
    )
    assert stages.explain_miss(after.packages, []) == "nothing kept yet"
    # Records of another stage are no comparison.
    assert stages.explain_miss(after.packages, [before.bootstrap]) == "nothing kept yet"


def test_the_mirror_moving_is_a_bootstrap_miss_in_words(tmp_path: Path) -> None:
    config = _config(tmp_path)
    before = stages.plan(config, _state(1, "1"), None)
    after = stages.plan(config, _state(3, "2"), None)
    assert before.bootstrap_key != after.bootstrap_key
    assert stages.explain_miss(after.bootstrap, [before.bootstrap]) == (
        f"the mirror moved: {MIRROR} trixie moved from 2026-12-01 14:02 to 2026-12-03 14:02"
    )
    assert stages.explain_miss(after.packages, [before.packages]) == "the bootstrap changed"


def test_a_changed_value_of_a_module_before_the_packages_names_the_module(tmp_path: Path) -> None:
    before = stages.plan(_config(tmp_path), _state(1), None)
    after = stages.plan(_config(tmp_path, "[user]\nuid = 1001\n"), _state(1), None)
    assert stages.explain_miss(after.bootstrap, [before.bootstrap]) == (
        "modules before the packages changed: create-user"
    )
    other = stages.plan(_config(tmp_path, 'variant = "required"\n'), _state(1), None)
    # The nearest kept record explains: here the one that differs in the variant only.
    assert stages.explain_miss(other.bootstrap, [after.bootstrap, before.bootstrap]) == (
        "variant changed: minbase → required"
    )


def test_a_user_epoch_is_an_input_and_an_archive_epoch_is_not(tmp_path: Path) -> None:
    config = _config(tmp_path)
    archive = stages.plan(config, _state(1), Epoch(1764597720, "the archive's Release date"))
    assert archive.bootstrap == stages.plan(config, _state(1), None).bootstrap
    user = stages.plan(config, _state(1), Epoch(1700000000, "SOURCE_DATE_EPOCH"))
    assert stages.explain_miss(user.bootstrap, [archive.bootstrap]) == (
        "SOURCE_DATE_EPOCH changed: none → 1700000000"
    )


def test_decisions_read_as_lines() -> None:
    assert str(stages.Decision("bootstrap", stages.HIT)) == "bootstrap: hit"
    miss = stages.Decision("packages", stages.MISS, "package list changed: +curl")
    assert str(miss) == "packages: miss: package list changed: +curl"


def test_the_shelf_keeps_the_most_recently_used_with_records(store: Store, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("x\n")
    shelf = cache.stages(store)
    keys = [f"{n:064x}" for n in range(1, 5)]
    for number, key in enumerate(keys):
        shelf.keep(store, key, tree, {"stage": "bootstrap", "number": number})
        # Marks a second apart: the order of use does not hang on the clock's resolution.
        os.utime(store.stage_cache_dir / f"{key}.used", (1000 + number, 1000 + number))
    kept = [key for key, _record in shelf.records()]
    assert kept == [keys[3], keys[2]]
    assert [record["number"] for _key, record in shelf.records()] == [3, 2]
    assert not (store.stage_cache_dir / f"{keys[0]}.json").exists()
    assert shelf.lookup(keys[0]) is None
    assert shelf.lookup(keys[2]) == store.stage_cache_dir / keys[2]
    # A damaged record is skipped, not trusted.
    (store.stage_cache_dir / f"{keys[3]}.json").write_text("{not json")
    assert [key for key, _record in shelf.records()] == [keys[2]]


@pytest.mark.parametrize("text", ["0", "1700000000", "253402300799"])
def test_an_epoch_is_whole_seconds(text: str) -> None:
    assert parse_epoch(text) == int(text)


@pytest.mark.parametrize("text", ["", "-1", "1e9", "1700000000.5", " 17", "٣", "253402300800"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="expected whole seconds since 1970"):
        parse_epoch(text)


def test_the_epoch_is_the_users_or_the_archives(monkeypatch: pytest.MonkeyPatch) -> None:
    date = datetime(2026, 12, 1, tzinfo=UTC)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch(date) == Epoch(int(date.timestamp()), "the archive's Release date")
    assert source_date_epoch(None) is None
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch(date) == Epoch(1700000000, "SOURCE_DATE_EPOCH")


def test_times_are_clamped_without_following_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("host file\n")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/new").write_text("new\n")
    (tree / "old").write_text("old\n")
    os.utime(tree / "old", (100, 100))
    os.symlink(outside, tree / "etc/link")
    os.symlink(tmp_path, tree / "dirlink")
    epoch = 1000
    clamp_mtimes(tree, epoch)
    for path in (tree, tree / "etc", tree / "etc/new", tree / "etc/link", tree / "dirlink"):
        assert os.lstat(path).st_mtime == epoch, path
    assert os.lstat(tree / "old").st_mtime == 100
    # What the links name, out of the tree, is untouched.
    assert os.stat(outside).st_mtime > epoch
    assert os.stat(tmp_path).st_mtime > epoch
