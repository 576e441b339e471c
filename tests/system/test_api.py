"""The importable API, used the way a Python program would: the same store the CLI uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from realms import api
from realms.errors import AlreadyExists, InvalidName, NotFound


def test_api_round_trip(store_dir: Path, busybox_tree: Path) -> None:
    result = api.init(store_dir)
    assert result.created and result.backend == "btrfs"
    store = api.open_store(store_dir)
    info, version = api.import_appimg(store, "base", busybox_tree)
    assert info.name == "base" and version.version == 1 and info.kind == "tree"
    realm = api.new_realm(store, "lib")
    assert realm.origin.appimg == "base" and realm.default and not realm.outdated
    assert [r.name for r in api.list_realms(store)] == ["lib"]
    assert api.show_appimg(store, "base").realms == ["lib"]
    assert api.status(store).to_json()["realms"] == 1
    with pytest.raises(AlreadyExists):
        api.new_realm(store, "lib")
    with pytest.raises(InvalidName):
        api.new_realm(store, "../escape")
    with pytest.raises(NotFound) as missing:
        api.new_realm(store, "other", "nothing")
    assert missing.value.hint and "appimg" in missing.value.hint
    api.remove_realm(store, "lib")
    assert api.list_realms(store) == []
