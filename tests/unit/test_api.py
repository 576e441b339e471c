"""The importable API, called in-process on a store in a temporary directory with the fake
backend (tests/unit/fakes.py): the store, appimgs and their records and versions, realms, keys,
sealed images, status and the sweep. What needs root (running a realm, an update's shell,
mounting an image, a build's bootstrap) is in tests/system/.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import tempfile
import tomllib
from pathlib import Path

import pytest

from realms import api
from realms.errors import AlreadyExists, InvalidInput, InvalidName, NotFound, RealmsError
from realms.kinds import ImageKind, VersionOrigin
from realms.store import Store
from tests.unit.archives import END, _archive, _outside_cases
from tests.unit.conftest import Owners, write_os_tree
from tests.unit.fakes import DirectoryBackend


def _versions(store: Store, name: str) -> list[int]:
    return [v.version for v in api.appimg_versions(store, name).versions]


def _tarball(tree: Path, target: Path) -> Path:
    with tarfile.open(target, "w:gz") as archive:
        for entry in sorted(tree.iterdir()):
            archive.add(entry, arcname=entry.name)
    return target


# The store


def test_init_makes_a_private_store_and_is_idempotent(tmp_path: Path, owners: Owners) -> None:
    root = tmp_path / "store"
    made = api.init(root, backend="copy")
    assert made.created and made.backend == "copy" and made.pool_image is None
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    for name in ("store.toml", "config.toml", "skel", "appimg", "realms", "locks"):
        assert (root / name).exists(), name
    assert stat.S_IMODE(os.stat(root / "locks").st_mode) == 0o700
    # The shared directory belongs to the realms' user (recorded: only root can give it away).
    assert owners[str(root / "Shared")] == (1000, 1000)
    again = api.init(root)
    assert not again.created and again.backend == "copy"
    with pytest.raises(RealmsError, match="already uses the copy backend"):
        api.init(root, backend="btrfs")
    with pytest.raises(InvalidInput, match="unknown backend"):
        api.init(root, backend="zfs")
    with pytest.raises(InvalidInput, match="too small"):
        api.init(tmp_path / "other", pool_size=1 << 20)
    assert not (tmp_path / "other").exists()


def test_open_store(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    assert api.open_store(store.root).backend.name == "copy"
    monkeypatch.setenv("REALMS_STORE", str(store.root))
    assert api.locate() == store.root
    assert api.open_store().root == store.root
    with pytest.raises(RealmsError, match="no realms store at") as missing:
        api.open_store(tmp_path / "nothing")
    assert missing.value.hint and "realms init" in missing.value.hint
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake/store.toml").write_text('format = 99\nbackend = "copy"\n')
    with pytest.raises(InvalidInput, match="not a realms store of format 1"):
        api.open_store(tmp_path / "fake")
    # The marker realms init wrote is known without TOML; one edited by hand is parsed.
    marker = store.marker_path.read_text()
    assert tomllib.loads(marker) == {"format": 1, "backend": "copy"}
    (tmp_path / "fake/store.toml").write_text('# edited\nbackend = "copy"\nformat = 1\n')
    assert api.open_store(tmp_path / "fake").backend.name == "copy"
    for bad in ("backend = [", 'format = 1\nbackend = "zfs"\n', "\xff"):
        (tmp_path / "fake/store.toml").write_text(bad, encoding="latin-1")
        with pytest.raises(InvalidInput, match="not a realms store of format 1"):
            api.open_store(tmp_path / "fake")


def test_status_of_an_empty_and_a_used_store(store: Store, tree: Path, owners: Owners) -> None:
    status = api.status(store).to_json()
    assert status["store"] == str(store.root) and status["backend"] == "directories"
    assert status["appimgs"] == 0 and status["realms"] == 0 and status["leftovers"] == 0
    assert status["pool"] is None and status["default_realm"] is None
    assert status["policy"]["keep-versions"] == 3
    json.dumps(status)  # everything in it can be printed with --json
    api.import_appimg(store, "base", tree)
    api.new_realm(store, "work")
    status = api.status(store).to_json()
    assert status["appimgs"] == 1 and status["realms"] == 1 and status["default_realm"] == "work"


def test_status_counts_leftovers_and_the_next_change_sweeps_them(
    store: Store, tree: Path, owners: Owners
) -> None:
    api.import_appimg(store, "base", tree)
    leftovers = [
        store.realms_dir / ".new.dead.0123abcd",
        store.appimgs_dir / ".del.gone.0123abcd",
        store.appimg_dir("base") / ".update.0123abcd",
    ]
    for path in leftovers:
        write_os_tree(path)
    assert api.status(store).leftovers == len(leftovers)
    api.new_realm(store, "work")  # a changing command sweeps first
    assert not any(path.exists() for path in leftovers)
    assert api.status(store).leftovers == 0
    assert ("remove", leftovers[0]) in store.backend.calls  # type: ignore[attr-defined]


# Appimgs and their versions


def test_import_a_directory(store: Store, tree: Path, backend: DirectoryBackend) -> None:
    info, version = api.import_appimg(store, "base", tree)
    assert info.name == "base" and info.kind == ImageKind.TREE and info.realms == []
    assert version.version == 1 and version.origin == VersionOrigin.IMPORT
    assert version.detail == str(tree) and version.size and version.size > 0
    stored = store.version_path("base", version)
    assert (stored / "etc/os-release").read_text() == "ID=unit\n"
    assert os.readlink(stored / "bin") == "usr/bin"
    assert stat.S_IMODE(os.stat(stored / "tmp").st_mode) == 0o1777
    # The version was made as a tree of the backend and frozen before it was renamed in place.
    assert [call for call, _ in backend.calls] == ["create_tree", "freeze"]
    assert backend.check_frozen(store.root) == 1
    assert [a.name for a in api.list_appimgs(store)] == ["base"]
    record = api.appimg_versions(store, "base")
    assert record.current == 1 and [c.action for c in record.history] == ["import"]
    with pytest.raises(AlreadyExists):
        api.import_appimg(store, "base", tree)
    with pytest.raises(InvalidName):
        api.import_appimg(store, "../up", tree)


def test_import_a_tarball_as_a_new_version(store: Store, tree: Path, tmp_path: Path) -> None:
    api.import_appimg(store, "base", tree)
    (tree / "etc/os-release").write_text("ID=unit\nVERSION_ID=2\n")
    tarball = _tarball(tree, tmp_path / "root.tar.gz")
    info, version = api.import_appimg(store, "base", tarball, new_version=True)
    assert version.version == 2 and info.version == 2 and version.parent == 1
    assert "VERSION_ID=2" in (store.version_path("base", version) / "etc/os-release").read_text()
    assert _versions(store, "base") == [1, 2]


def test_import_refuses_what_is_not_a_root_filesystem(store: Store, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(InvalidInput, match="neither a directory, a tarball"):
        api.import_appimg(store, "base", junk)
    with pytest.raises(NotFound):
        api.import_appimg(store, "base", tmp_path / "missing")
    with pytest.raises(NotFound):
        api.import_appimg(store, "base", junk.parent, new_version=True)
    assert api.list_appimgs(store) == [] and api.status(store).leftovers == 0


def test_rollback_pin_and_prune(store: Store, tree: Path, backend: DirectoryBackend) -> None:
    api.import_appimg(store, "base", tree)
    for _ in range(4):
        api.import_appimg(store, "base", tree, new_version=True)
    assert _versions(store, "base") == [1, 2, 3, 4, 5]
    assert api.rollback_appimg(store, "base") == (5, 4)
    assert api.rollback_appimg(store, "base", 2) == (4, 2)
    with pytest.raises(InvalidInput, match="already current"):
        api.rollback_appimg(store, "base", 2)
    with pytest.raises(NotFound, match="has no version 9"):
        api.rollback_appimg(store, "base", 9)
    assert api.pin_version(store, "base", 1).pinned
    with pytest.raises(InvalidInput, match="at least 1"):
        api.prune_appimg(store, "base", 0)
    third = api.appimg_versions(store, "base").version(3)
    assert third is not None and store.version_path("base", third).is_dir()
    # Keep the 2 newest (4 and 5), the current (2) and the pinned (1): 3 goes.
    pruned = api.prune_appimg(store, "base", 2)
    assert pruned.removed == [3] and pruned.kept == [1, 2, 4, 5] and pruned.in_use == {}
    assert not store.version_path("base", third).exists()
    assert backend.check_frozen(store.root) == 4
    assert not api.pin_version(store, "base", 1, pinned=False).pinned
    # Keep the newest (5) and the current (2).
    assert api.prune_appimg(store, "base", 1).removed == [1, 4]
    record = api.appimg_versions(store, "base")
    assert record.current == 2 and _versions(store, "base") == [2, 5]
    assert [c.action for c in record.history][:2] == ["import", "import"]
    assert "rollback" in [c.action for c in record.history]
    assert api.rollback_appimg(store, "base", 5) == (2, 5)
    assert api.prune_appimg(store, "base", 1).removed == [2]
    with pytest.raises(RealmsError, match="no version older"):
        api.rollback_appimg(store, "base")


def test_prune_keeps_the_configured_number(store: Store, tree: Path) -> None:
    store.config_path.write_text("keep-versions = 2\n")
    api.import_appimg(store, "base", tree)
    for _ in range(3):
        api.import_appimg(store, "base", tree, new_version=True)
    assert api.prune_appimg(Store(store.root, backend=store.backend), "base").removed == [1, 2]


def test_remove_an_appimg(store: Store, tree: Path, owners: Owners) -> None:
    api.import_appimg(store, "base", tree)
    api.new_realm(store, "work")
    assert api.show_appimg(store, "base").realms == ["work"]
    assert api.remove_appimg(store, "base") == ["work"]
    assert api.list_appimgs(store) == [] and not store.appimg_dir("base").exists()
    # A realm on a tree version is a copy: it stays, and shows where it came from.
    assert api.show_realm(store, "work").origin.appimg == "base"
    with pytest.raises(NotFound):
        api.remove_appimg(store, "base")


# Realms


def test_realm_lifecycle(store: Store, tree: Path, owners: Owners) -> None:
    api.import_appimg(store, "base", tree)
    realm = api.new_realm(store, "work")
    assert realm.origin.appimg == "base" and realm.origin.appimg_version == 1
    assert realm.default and not realm.outdated and not realm.running
    assert (realm.path / "rootfs/etc/os-release").read_text() == "ID=unit\n"
    home = realm.path / "home"
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    # Home and everything copied into it from skel are the realm user's (recorded).
    staged_homes = [
        p for p in owners if Path(p).name == "home" and Path(p).parent.parent == store.realms_dir
    ]
    assert staged_homes and all(owners[p] == (1000, 1000) for p in staged_homes)
    config = (realm.path / "config").read_text()
    assert 'realmfs = "base"' in config and "realm work" in config
    assert realm.to_json()["name"] == "work"

    with pytest.raises(AlreadyExists):
        api.new_realm(store, "work")
    with pytest.raises(InvalidName):
        api.new_realm(store, "../escape")
    with pytest.raises(NotFound) as missing:
        api.new_realm(store, "other", "nothing")
    assert missing.value.hint and "appimg" in missing.value.hint

    api.import_appimg(store, "base", tree, new_version=True)
    assert api.show_realm(store, "work").outdated
    second = api.new_realm(store, "play")
    assert second.origin.appimg_version == 2 and not second.default
    assert [r.name for r in api.list_realms(store)] == ["play", "work"]
    assert api.default(store) == "work"
    assert api.default(store, "play") == "play" and api.default_realm(store) == "play"
    assert {r.origin.uid_base for r in api.list_realms(store)} != {None}
    assert len({r.origin.uid_base for r in api.list_realms(store)}) == 2

    kept = api.remove_realm(store, "play", keep_home=True)
    assert kept is not None and kept.is_dir() and kept.parent == store.removed_dir
    assert api.remove_realm(store, "work") is None
    assert api.list_realms(store) == []
    with pytest.raises(RealmsError, match="no default realm"):
        api.default(store)
    with pytest.raises(RealmsError, match="no realm named, and no current or default realm"):
        api.shell(store)
    with pytest.raises(NotFound):
        api.remove_realm(store, "work")


def test_require_sealed_refuses_a_tree_realm(store: Store, tree: Path) -> None:
    store.config_path.write_text("require-sealed = true\n")
    opened = Store(store.root, backend=store.backend)
    api.import_appimg(opened, "base", tree)
    with pytest.raises(RealmsError, match="require-sealed is on"):
        api.new_realm(opened, "work")
    assert api.list_realms(opened) == []


def test_bad_global_config_is_one_error(store: Store) -> None:
    store.config_path.write_text('verity = "sometimes"\n')
    with pytest.raises(InvalidInput, match='verity: expected one of "auto"'):
        Store(store.root, backend=store.backend).config  # noqa: B018 (loading is the test)


# Keys


def test_keys_generate_trust_export_revoke(store: Store, tmp_path: Path) -> None:
    public = api.generate_key(store, "realmfs-user")
    assert len(public) == 64 and int(public, 16) >= 0
    with pytest.raises(AlreadyExists):
        api.generate_key(store, "realmfs-user")
    assert api.generate_key(store, "realmfs-user", replace=True) != public
    signing = api.export_key(store, "realmfs-user")
    keys = {(k.channel, k.public): k for k in api.list_keys(store)}
    assert keys["realmfs-user", signing].signing and not keys["realmfs-user", signing].revoked
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in store.signing_dir.iterdir())

    other = "ab" * 32
    (tmp_path / "other.pub").write_text(other + "\n")
    assert api.trust_key(store, "vendor", str(tmp_path / "other.pub")) == api.KeyTrusted(
        other, True
    )
    assert not api.trust_key(store, "vendor", other).added
    assert api.export_key(store, "vendor") == other  # the one trusted key of a channel
    with pytest.raises(InvalidInput):
        api.trust_key(store, "vendor", "not-a-key")
    with pytest.raises(RealmsError, match="no signing key for channel 'nobody'"):
        api.export_key(store, "nobody")

    revoked = api.revoke_key(store, other)
    assert revoked == api.Revocation(other, ["vendor"])
    assert [k.revoked for k in api.list_keys(store) if k.public == other] == [True]
    with pytest.raises(RealmsError):
        api.trust_key(store, "vendor", other)  # revoked for good
    with pytest.raises(RealmsError):
        api.export_key(store, "vendor")


# Sealed images, made and checked without mounting them


def test_seal_verify_export_and_import_an_image(
    store: Store, tree: Path, tmp_path: Path, owners: Owners
) -> None:
    api.import_appimg(store, "base", tree)
    with pytest.raises(RealmsError):
        api.seal_appimg(store, "base", channel="realmfs-user")  # no signing key yet
    api.generate_key(store, "realmfs-user")
    sealed = api.seal_appimg(store, "base", channel="realmfs-user")
    assert sealed.kind == ImageKind.SEALED and sealed.version == 2 and sealed.parent == 1
    assert sealed.origin == VersionOrigin.SEAL and "channel realmfs-user" in sealed.detail
    image = store.version_path("base", sealed)
    assert stat.S_IMODE(os.stat(image).st_mode) == 0o444
    checks = api.verify_appimg(store, "base")
    assert [c.name for c in checks.checks] == [
        "header",
        "size",
        "signature",
        "filesystem",
        "verity",
    ]
    assert all(c.ok for c in checks.checks), checks
    assert api.verify_appimg(store, "base", 1).kind == ImageKind.TREE

    exported = tmp_path / "base.img"
    assert api.export_appimg(store, "base", exported).version == 2
    assert exported.read_bytes() == image.read_bytes()
    info, version = api.import_appimg(store, "copy", exported)
    assert version.kind == ImageKind.SEALED and info.kind == ImageKind.SEALED

    # One flipped byte in the data: verification names the failing check.
    with exported.open("r+b") as handle:
        handle.seek(4096 + 2048)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(RealmsError):
        api.import_appimg(store, "broken", exported)
    assert [a.name for a in api.list_appimgs(store)] == ["base", "copy"]

    with pytest.raises(RealmsError, match="only a tree version can be sealed"):
        api.seal_appimg(store, "base", channel="realmfs-user")
    api.rollback_appimg(store, "base", 1)
    block = api.seal_appimg(store, "base", verity=False, channel="realmfs-user")
    assert block.version == 3 and block.kind == ImageKind.BLOCK and block.parent == 1


def test_build_template_is_written_once(tmp_path: Path) -> None:
    target = tmp_path / "build.toml"
    api.write_build_template(target)
    assert "packages" in target.read_text()
    with pytest.raises(AlreadyExists):
        api.write_build_template(target)


def test_update_of_a_missing_appimg_is_refused_before_anything_runs(store: Store) -> None:
    with pytest.raises(NotFound):
        api.update_appimg(store, "nothing", ["true"])
    assert api.status(store).leftovers == 0


@pytest.mark.parametrize(
    "case",
    [
        "absolute path",
        "dot-dot",
        "hard link outside",
        "write through symlink",
        "hard link through symlink",
        "NUL in a name",
    ],
)
def test_import_refuses_entries_that_leave_the_tree(
    store: Store, tmp_path: Path, case: str
) -> None:
    # A short absolute name (a ustar header holds 100 characters without its prefix field).
    outside = Path(tempfile.mkdtemp(prefix="outside-"))
    try:
        _refused_and_nothing_written(store, tmp_path, outside, case)
    finally:
        shutil.rmtree(outside)


def _refused_and_nothing_written(store: Store, tmp_path: Path, outside: Path, case: str) -> None:
    parts, reason = _outside_cases(outside)[case]
    archive = _archive(tmp_path / "evil.tar", *parts, END)
    with pytest.raises(InvalidInput) as refused:
        api.import_appimg(store, "evil", archive)
    assert reason in refused.value.message and "nothing was imported" in refused.value.message
    assert os.listdir(outside) == []
    assert os.listdir(store.appimgs_dir) == [] and api.status(store).leftovers == 0


def test_realm_names_skip_what_is_no_realm(store: Store) -> None:
    for entry in ("work", "old-name-", ".tmp.new.x", "not a realm"):
        (store.realms_dir / entry).mkdir()
    assert store.realm_names() == ["old-name-", "work"]
