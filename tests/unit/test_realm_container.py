"""How a realm's settings become the container it runs in, and nspawn's command line for it:
``run_in_realm`` in-process on a store with the fake backend, with the one step that needs root
(starting nspawn, :func:`realms.container.run`) replaced by a recorder."""

from __future__ import annotations

from pathlib import Path

import pytest

from realms import api, container
from realms.container import REALM_HOME, Container, nspawn_argv
from realms.errors import InvalidInput, RealmsError
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
