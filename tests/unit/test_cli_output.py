"""What the command line prints for each typed result, from real results of the API on a store
with the fake backend: tables, fields and --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from realms import api
from realms.cli import output
from realms.store import Store
from tests.unit.conftest import Owners


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_every_printer_on_a_used_store(
    store: Store, tree: Path, owners: Owners, capsys: pytest.CaptureFixture[str]
) -> None:
    api.import_appimg(store, "base", tree)
    api.generate_key(store, "realmfs-user")
    api.seal_appimg(store, "base", channel="realmfs-user")
    api.rollback_appimg(store, "base", 1)
    api.new_realm(store, "work")
    api.rollback_appimg(store, "base", 2)
    api.pin_version(store, "base", 1)

    output.status(api.status(store))
    printed = dict(line.split(":", 1) for line in _lines(capsys))
    assert printed["store"].strip() == f"{store.root} (directories backend)"
    assert printed["appimgs"].strip() == "1"
    assert printed["realms"].strip() == "1 (default: work)"
    assert printed["leftovers"].strip().startswith("0 temporary names")

    output.appimgs(api.list_appimgs(store))
    header, row = _lines(capsys)
    assert header.split() == ["NAME", "KIND", "VERSION", "VERSIONS", "REALMS"]
    assert row.split() == ["base", "sealed", "2", "2", "work"]

    output.versions(api.appimg_versions(store, "base"))
    header, first, second = _lines(capsys)
    assert header.split()[:2] == ["VERSION", "KIND"]
    assert first.split()[:2] == ["1", "tree"] and " yes " in first  # pinned
    assert second.split()[:3] == ["*2", "sealed", second.split()[2]] and " no " in second

    output.versions_json(api.appimg_versions(store, "base"))
    data = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["current"], v["pinned"]) for v in data] == [
        (1, False, True),
        (2, True, False),
    ]

    output.appimg(api.show_appimg(store, "base"))
    text = capsys.readouterr().out
    assert "version: 2 (current)" in text and "realms:  work" in text
    assert "recent changes:" in text and "rollback -> version 2  from version 1" in text

    output.verification(api.verify_appimg(store, "base"))
    first, *checks = _lines(capsys)
    assert first == "appimg base version 2 (sealed):"
    assert [line.split()[:2] for line in checks] == [
        ["ok", "header"],
        ["ok", "size"],
        ["ok", "signature"],
        ["ok", "filesystem"],
        ["ok", "verity"],
    ]

    output.keys(api.list_keys(store))
    header, row = _lines(capsys)
    assert row.split()[0] == "realmfs-user" and row.split()[2:4] == ["trusted", "yes"]

    output.realms(api.list_realms(store))
    header, row = _lines(capsys)
    assert row.split()[:4] == ["*work", "base", "1", "outdated"]

    output.realm(api.show_realm(store, "work"))
    printed = dict(line.split(":", 1) for line in _lines(capsys))
    assert printed["name"].strip() == "work (default)"
    assert printed["status"].strip() == "outdated (appimg is at version 2)"
    assert printed["isolation"].strip().startswith("userns (root is host uid ")

    output.print_json(api.status(store).to_json())
    assert json.loads(capsys.readouterr().out)["realms"] == 1
