"""How a realm's settings become the container it runs in, and nspawn's command line for it, and
how an appimg update's session becomes a version (or is kept): ``run_in_realm`` and
``update_appimg`` in-process on a store with the fake backend, with the one step that needs root
(starting nspawn, :func:`realms.container.run`) replaced by a recorder or a function that
changes the working tree as a session would."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from realms import api, container
from realms.appimg import update
from realms.container import REALM_HOME, Container, nspawn_argv
from realms.errors import Conflict, InvalidInput, RealmsError
from realms.kinds import VersionOrigin
from realms.store import Store
from tests.unit.conftest import Owners


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Container]:
    containers: list[Container] = []

    def record(found: Container, **_: object) -> int:
        containers.append(found)
        return 7

    monkeypatch.setattr(container, "run", record)
    return containers


@pytest.fixture
def realm(store: Store, tree: Path, owners: Owners) -> Path:
    api.import_appimg(store, "base", tree)
    return api.new_realm(store, "work").path


def _configure(realm: Path, text: str) -> None:
    with (realm / "config").open("a") as handle:
        handle.write(text)


def test_a_realm_runs_as_its_user_in_its_own_user_namespace(
    store: Store, realm: Path, started: list[Container]
) -> None:
    assert api.run_in_realm(store, "work", ["id", "-u"]) == 7
    (found,) = started
    assert found.rootfs == realm / "rootfs" and found.machine == "work"
    assert found.command == ["id", "-u"] and found.user == "user" and found.workdir == REALM_HOME
    uid_base = api.show_realm(store, "work").origin.uid_base
    assert uid_base is not None and found.private_users == uid_base
    assert not found.private_network  # use-network is on by default
    homes = [b for b in found.binds if b.target == REALM_HOME]
    assert len(homes) == 1 and homes[0].source == realm / "home" and homes[0].idmap
    argv = nspawn_argv(found, interactive=False, systemd_pid1=False)
    assert argv[0] == "systemd-nspawn" and f"--directory={realm / 'rootfs'}" in argv
    assert "--machine=work" in argv and "--user=user" in argv
    assert f"--private-users={uid_base}:65536" in argv and "--register=no" in argv
    assert f"--bind={realm / 'home'}:{REALM_HOME}:idmap" in argv
    assert "--private-network" not in argv and argv[-3:] == ["--", "id", "-u"]


def test_root_and_settings_change_the_container(
    store: Store, realm: Path, started: list[Container], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _configure(
        realm,
        f'use-network = false\nuse-shared-dir = true\nextra-bindmounts-ro = ["{data}:/srv/data"]\n',
    )
    api.run_in_realm(store, "work", [], root=True)
    (found,) = started
    assert found.user is None and found.command == [] and found.private_network
    assert "--private-network" in nspawn_argv(found, interactive=True, systemd_pid1=False)
    targets = {b.target: b for b in found.binds}
    assert targets[f"{REALM_HOME}/Shared"].source == store.shared_dir
    assert targets["/srv/data"].source == data and targets["/srv/data"].readonly


def test_ephemeral_home_and_privileged_isolation(
    store: Store, realm: Path, started: list[Container]
) -> None:
    _configure(realm, 'use-ephemeral-home = true\nisolation = "privileged"\n')
    api.shell(store, "work")
    (found,) = started
    assert found.private_users is None  # host root: no user namespace
    (scratch,) = found.scratch
    assert scratch[1] == "mode=0700,uid=1000,gid=1000"
    assert [b.source for b in found.binds if b.target == REALM_HOME] == [scratch[0]]


def test_bad_settings_are_refused_before_anything_starts(
    store: Store, realm: Path, started: list[Container]
) -> None:
    _configure(realm, 'extra-bindmounts = ["relative:/x"]\n')
    with pytest.raises(InvalidInput, match="is not an absolute path"):
        api.run_in_realm(store, "work", ["true"])
    (realm / "config").write_text('isolation = "none"\n')
    with pytest.raises(InvalidInput, match="isolation"):
        api.run_in_realm(store, "work", ["true"])
    (realm / "rootfs/etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (realm / "config").write_text("")
    with pytest.raises(RealmsError, match="has no user with uid 1000"):
        api.run_in_realm(store, "work", ["true"])
    assert started == []


# appimg updates: the session's container is replaced by a function that changes its tree.

Session = Callable[[Path], int]


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[Session]:
    """The sessions to run, in order: each gets the working tree and returns an exit status."""
    planned: list[Session] = []

    def run(found: Container, **_: object) -> int:
        assert found.pristine and found.user is None and found.machine == "base-appimg-update"
        return planned.pop(0)(found.rootfs)

    monkeypatch.setattr(update, "run_container", run)
    return planned


def _write_motd(text: str, status: int = 0) -> Session:
    def session(tree: Path) -> int:
        (tree / "etc/motd").write_text(text)
        return status

    return session


def test_update_commits_a_session_that_exits_0(
    store: Store, realm: Path, sessions: list[Session]
) -> None:
    sessions.append(_write_motd("hello\n"))
    result = api.update_appimg(store, "base", ["apt-get", "upgrade"])
    assert result.status == 0 and result.base == 1 and not result.discarded
    committed = result.committed
    assert committed is not None and committed.version == 2 and committed.parent == 1
    assert committed.origin == VersionOrigin.UPDATE and committed.detail == "apt-get upgrade"
    assert (committed.written, committed.files_changed) == (6, 1)  # the fake backend counted
    assert (store.version_path("base", committed) / "etc/motd").read_text() == "hello\n"
    first = api.appimg_versions(store, "base").versions[0]
    assert not (store.version_path("base", first) / "etc/motd").exists()
    assert api.show_realm(store, "work").outdated
    assert api.status(store).leftovers == 0  # the working copy is gone

    sessions.append(_write_motd("failed\n", status=3))
    failed = api.update_appimg(store, "base", ["false"])
    assert failed.status == 3 and failed.committed is None
    sessions.append(_write_motd("discarded\n"))
    assert api.update_appimg(store, "base", [], discard=True).discarded
    assert [v.version for v in api.appimg_versions(store, "base").versions] == [1, 2]
    assert api.status(store).leftovers == 0


def test_an_update_overtaken_by_a_rollback_is_kept(
    store: Store, realm: Path, sessions: list[Session]
) -> None:
    api.import_appimg(store, "base", realm / "rootfs", new_version=True)

    def overtaken(tree: Path) -> int:
        (tree / "etc/motd").write_text("kept\n")
        api.rollback_appimg(store, "base", 1)  # another command, while the session runs
        return 0

    sessions.append(overtaken)
    with pytest.raises(Conflict, match="not committed: version 1 became current"):
        api.update_appimg(store, "base", ["edit"])
    record = api.appimg_versions(store, "base")
    assert record.kept is not None and record.kept.base == 2 and record.current == 1
    assert (store.kept_path("base") / "etc/motd").read_text() == "kept\n"
    with pytest.raises(Conflict, match="has an update of version 2 that was not committed"):
        api.update_appimg(store, "base", ["again"])
    committed = api.update_appimg(store, "base", [], commit_kept=True).committed
    assert committed is not None and committed.version == 3 and committed.parent == 2
    assert api.appimg_versions(store, "base").kept is None
    assert (store.version_path("base", committed) / "etc/motd").read_text() == "kept\n"
