"""``realms config``: a realm's settings read, set and unset through the command line, checked
by their declarations, with the config file edited line by line (comments and order kept)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.helpers import Realms


@pytest.fixture
def box(realms: Realms, base: str) -> Path:
    realms("new", "box")
    return realms.store / "realms/box/config"


def test_read_every_setting_and_one(realms: Realms, box: Path) -> None:
    (realms.store / "config.toml").write_text("[realm-defaults]\nuse-gpu = true\n")
    values = realms.json("config", "box")
    assert values["realmfs"] == "base" and values["network"] == "host"
    assert values["use-gpu"] is True and values["keep-snapshots"] == 5
    assert values["keep"] == ["/etc/machine-id", "/etc/ssh/ssh_host_*"]
    rows = {
        line.split()[0]: line.split()[1:] for line in realms("config", "box").stdout.splitlines()
    }
    assert rows["KEY"] == ["VALUE", "FROM"]
    assert rows["realmfs"] == ['"base"', "realm", "config"]
    assert rows["use-gpu"] == ["true", "[realm-defaults]"]
    assert rows["use-kvm"] == ["false", "default"]
    assert realms("config", "box", "network").stdout == "host\n"  # a string as it is
    assert realms("config", "box", "keep").stdout == '["/etc/machine-id", "/etc/ssh/ssh_host_*"]\n'
    assert realms.json("config", "box", "use-gpu") is True


def test_set_and_unset_edit_only_their_lines(realms: Realms, box: Path) -> None:
    box.write_text(box.read_text() + "# my own note, kept\n")
    before = box.read_text().splitlines()
    box.chmod(0o640)

    result = realms("config", "box", "network", "private")  # a bare word is a string
    assert 'Set network of realm box: it is "private" (realm config)' in result.stderr
    after = box.read_text().splitlines()
    # The template's commented-out line became the setting, under its description.
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [('# network = "host"', 'network = "private"')]
    assert box.stat().st_mode & 0o777 == 0o640

    realms("config", "box", "keep-snapshots", "3")
    realms("config", "box", "use-kvm", "true")
    realms("config", "box", "requires", '["db", "cache"]')
    many = '["/a", "/b", "/c", "/d", "/e"]'  # written over several lines
    realms("config", "box", "extra-bindmounts-ro", many)
    realms("config", "box", "extra-bindmounts-ro", '["/f"]')  # replaces all of them
    values = realms.json("config", "box")
    assert values["network"] == "private" and values["keep-snapshots"] == 3
    assert values["use-kvm"] is True and values["requires"] == ["db", "cache"]
    assert values["extra-bindmounts-ro"] == ["/f"]
    assert realms.json("config", "box", "keep-snapshots", "4") == 4

    realms("config", "box", "--unset", "network")
    assert realms("config", "box", "network").stdout == "host\n"
    text = box.read_text()
    assert "# my own note, kept" in text and '# network = "host"' in text  # as realms new wrote
    table = tomllib.loads(text)
    assert table == {
        "realmfs": "base",
        "use-kvm": True,
        "extra-bindmounts-ro": ["/f"],
        "requires": ["db", "cache"],
        "keep-snapshots": 4,
    }
    # Unsetting a key that is not set changes nothing.
    realms("config", "box", "--unset", "use-gpu")
    assert box.read_text() == text


def test_values_are_checked_as_the_file_is(realms: Realms, box: Path) -> None:
    text = box.read_text()
    assert "unknown setting 'bogus'" in realms.fails("config", "box", "bogus", "1")
    assert "unknown setting 'bogus'" in realms.fails("config", "box", "bogus")
    assert "use-kvm: expected true or false, got 'maybe'" in realms.fails(
        "config", "box", "use-kvm", "maybe"
    )
    assert 'network: expected one of "host", "private", "none"' in realms.fails(
        "config", "box", "network", "3"
    )
    assert "keep-snapshots: expected at least 0, got -1" in realms.fails(
        "config", "box", "keep-snapshots", "-1"
    )
    assert "requires: expected a list of strings" in realms.fails(
        "config", "box", "requires", "[1, 2]"
    )
    assert "no realm named 'nope'" in realms.fails("config", "nope")
    assert "no realm named 'nope'" in realms.fails("config", "nope", "use-kvm", "true")
    assert "--unset" in realms.fails("config", "box", "use-kvm", "--unset", "use-gpu")
    assert box.read_text() == text  # nothing written by a refused change

    # A value is one value: what looks like another key is part of the string.
    sneaky = 'base"\nuse-kvm = true\n"'
    realms("config", "box", "realmfs", sneaky)
    assert realms.json("config", "box", "realmfs") == sneaky
    assert realms.json("config", "box", "use-kvm") is False

    # A key set wrongly by hand: reading names it; setting it right (or unsetting it) works.
    box.write_text(box.read_text() + 'use-x11 = "yes"\n')
    assert "use-x11: expected true or false" in realms.fails("config", "box")
    realms("config", "box", "use-x11", "false")
    assert realms.json("config", "box", "use-x11") is False
    assert box.read_text().count("\nuse-x11 =") == 1
