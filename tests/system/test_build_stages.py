"""The stage cache (issue 14): a build whose package list changed on an unchanged mirror starts
from the cached bootstrap and runs one apt transaction; ``--explain`` says per stage whether it
hit or missed and why, in words; a build killed while keeping a stage leaves nothing the next
command does not clean. Against a local signed archive whose state the test controls
(:mod:`tests.apt_repo`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from realms.faults import KILL_AT
from tests.apt_repo import AptRepo
from tests.helpers import Realms, Result

MODULES = '["no-install-recommends", "write-apt-sources", "create-user", "set-hostname"]'


def _config(directory: Path, repo: AptRepo, packages: list[str], hostname: str = "stages") -> Path:
    shutil.copyfile(repo.key, directory / "archive.asc")
    path = directory / "stages.toml"
    path.write_text(
        f'name = "stages"\nhostname = "{hostname}"\nmirror = "{repo.mirror}"\n'
        f'security-mirror = "{repo.security}"\npackages = {json.dumps(packages)}\n'
        'keyring = ["archive.asc"]\n'
        f"[user]\ngroups = []\n[modules]\nbefore = {MODULES}\nafter = []\n"
    )
    return path


def _explained(result: Result) -> list[str]:
    """The lines --explain printed (stdout), one per stage."""
    return result.stdout.splitlines()


def _installed(tree: Path) -> set[str]:
    status = (tree / "var/lib/dpkg/status").read_text()
    return {
        stanza.split("\n", 1)[0].removeprefix("Package: ")
        for stanza in status.split("\n\n")
        if "Status: install ok installed" in stanza
    }


def _newest_log(realms: Realms) -> str:
    logs = sorted((realms.store / "logs").glob("build-stages-*.log"))
    return logs[-1].read_text()


def _stage_entries(realms: Realms) -> list[Path]:
    directory = realms.store / "cache/stages"
    return sorted(p for p in directory.iterdir() if len(p.name) == 64 and p.is_dir())


@pytest.mark.slow
def test_a_changed_package_list_starts_from_the_cached_bootstrap(
    realms: Realms, apt_repo: AptRepo, tmp_path: Path
) -> None:
    apt_repo.add_package("realms-extra", "1.0")
    config = _config(tmp_path, apt_repo, ["realms-probe"])

    # Killed after the bootstrap's snapshot is made, before it is renamed into the cache: the
    # next command sweeps it, and the next build bootstraps again.
    killed = realms(
        "appimg", "build", str(config), env={KILL_AT: "build-cache:staged"}, check=False
    )
    assert killed.returncode == -9
    stages = realms.store / "cache/stages"
    assert [p.name for p in stages.iterdir() if p.name.startswith(".new.")]
    assert realms.json("status")["leftovers"] >= 2  # the build's tree and the stage's snapshot

    first = realms("appimg", "build", str(config), "--explain")
    assert _explained(first) == [
        "bootstrap: miss: nothing kept yet",
        "packages: miss: nothing kept yet",
    ]
    assert realms.json("status")["leftovers"] == 0
    assert "Bootstrapping Debian trixie" in first.stderr
    (entry,) = _stage_entries(realms)
    record = json.loads((stages / f"{entry.name}.json").read_text())
    assert record["stage"] == "bootstrap" and record["release"] == "trixie"
    readonly = subprocess.run(
        ["btrfs", "property", "get", "-ts", str(entry), "ro"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert readonly.stdout.strip() == "ro=true"

    # A package more on the same mirror: the bootstrap is reused, one apt transaction runs.
    config = _config(tmp_path, apt_repo, ["realms-probe", "realms-extra"])
    added = realms("appimg", "build", str(config), "--explain")
    assert _explained(added) == [
        "bootstrap: hit",
        "packages: miss: package list changed: +realms-extra",
    ]
    assert "Bootstrapping" not in added.stderr
    assert "Starting from the cached bootstrap" in added.stderr
    log = _newest_log(realms)
    assert "mmdebstrap" not in log
    # The log's command lines: "==> 13:15:44 # /bin/sh -c ... apt-get ... install ...".
    apt_runs = [line for line in log.splitlines() if line.startswith("==> ") and "apt-get" in line]
    assert len(apt_runs) == 1 and "install realms-extra realms-probe" in apt_runs[0]
    assert "update" not in apt_runs[0]
    tree = realms.store / "appimg/stages"
    assert {"realms-probe", "realms-extra"} <= _installed(tree / "v2")
    assert "realms-extra" not in _installed(tree / "v1")

    # A package less: the same bootstrap again.
    config = _config(tmp_path, apt_repo, ["realms-extra"])
    removed = realms("appimg", "build", str(config), "--explain")
    assert _explained(removed) == [
        "bootstrap: hit",
        "packages: miss: package list changed: -realms-probe",
    ]
    assert "realms-probe" not in _installed(tree / "v3")
    assert (tree / "v3/usr/share/realms-extra/version").read_text().strip() == "1.0"

    # Nothing changed: up to date, no stage runs.
    same = realms("appimg", "build", str(config), "--explain")
    assert _explained(same) == [
        "bootstrap: not needed",
        "packages: hit: version 3 was built from these inputs",
    ]
    assert len(realms.json("appimg", "versions", "stages")) == 3

    # A module before the packages changed (the host name it writes): the bootstrap again.
    config = _config(tmp_path, apt_repo, ["realms-extra"], hostname="elsewhere")
    renamed = realms("appimg", "build", str(config), "--explain")
    assert _explained(renamed) == [
        "bootstrap: miss: modules before the packages changed: set-hostname",
        "packages: miss: the bootstrap changed",
    ]
    assert (tree / "v4/etc/hostname").read_text() == "elsewhere\n"

    # The mirror moved: the bootstrap again, and the explanation says which suite and when.
    apt_repo.add_package("realms-extra", "1.1")
    moved = realms("appimg", "build", str(config), "--explain")
    bootstrap, packages = _explained(moved)
    moved_from = f"bootstrap: miss: the mirror moved: {apt_repo.mirror} trixie moved from "
    assert bootstrap.startswith(moved_from), bootstrap
    assert packages == "packages: miss: the bootstrap changed"
    assert (tree / "v5/usr/share/realms-extra/version").read_text().strip() == "1.1"

    # Three bootstraps were made; the stage cache keeps the two used last, each with its record.
    entries = _stage_entries(realms)
    assert len(entries) == 2
    for entry in entries:
        assert (stages / f"{entry.name}.json").is_file()
        assert (stages / f"{entry.name}.used").is_file()
    assert sorted(p.name for p in stages.iterdir() if p.name.startswith(".")) == []
