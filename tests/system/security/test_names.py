"""Names that reach paths: a name from the command line never leaves the store, and a realm
made under the older, wider naming rule can still be shown and removed."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Realms


def _files_below(directory: Path) -> set[Path]:
    return set(directory.rglob("*"))


def test_names_with_path_parts_touch_nothing(realms: Realms, base: str) -> None:
    outside = realms.store.parent
    before = _files_below(outside) - _files_below(realms.store)
    for name in ("../../escape", "a/b", ".hidden", "x" * 300):
        for command in (("remove", name), ("show", name), ("appimg", "remove", name)):
            error = realms.fails(*command)
            assert "invalid" in error or "longer than" in error, error
    after = _files_below(outside) - _files_below(realms.store)
    assert after == before


def test_a_realm_named_under_the_old_rule_can_be_removed(realms: Realms, base: str) -> None:
    realms("new", "legacy")
    old_name = "legacy-" + "x" * 70 + "-"  # 78 characters and a trailing '-': the old rule
    (realms.store / "realms/legacy").rename(realms.store / "realms" / old_name)
    assert realms.json("show", old_name)["name"] == old_name
    realms("remove", old_name)
    assert not (realms.store / "realms" / old_name).exists()
    assert "invalid" in realms.fails("new", old_name) or "longer" in realms.fails("new", old_name)
