"""A build cache that is never stale (issue 14): the archive state keys builds, against a local
signed archive whose state the test controls (:mod:`tests.apt_repo`).

An unchanged mirror is a hit, a mirror that moved builds again with the new package,
``--offline`` uses the newest cached build and says how old its mirror state is,
``appimg versions --json`` records the archive state, ``snapshot`` builds from a dated tree,
and what a mirror or a config says that is hostile stops the build with one line.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.apt_repo import AptRepo
from tests.helpers import Realms, Result

SNAPSHOT = "20261201T000000Z"
MODULES = '["no-install-recommends", "write-apt-sources", "create-user", "set-hostname"]'


def _config(directory: Path, repo: AptRepo, extra: str = "", *, name: str = "probe") -> Path:
    """A small config that builds from ``repo`` (signed by its key) with realms-probe."""
    shutil.copyfile(repo.key, directory / "archive.asc")
    path = directory / f"{name}.toml"
    mirrors = (
        ""
        if "snapshot" in extra
        else (f'mirror = "{repo.mirror}"\nsecurity-mirror = "{repo.security}"\n')
    )
    path.write_text(
        f'name = "{name}"\nhostname = "probehost"\n{mirrors}packages = ["realms-probe"]\n'
        f'keyring = ["archive.asc"]\n'
        f"{extra}\n[user]\ngroups = []\n[modules]\nbefore = {MODULES}\nafter = []\n"
    )
    return path


def _probe_version(realms: Realms, appimg: str, version: int) -> str:
    tree = realms.store / f"appimg/{appimg}/v{version}"
    return (tree / "usr/share/realms-probe/version").read_text().strip()


def _refused(result: Result, *words: str) -> None:
    """One error line (with an optional hint), naming ``words``; no build started."""
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("realms: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], result.stderr
    assert "Bootstrapping" not in result.stderr


@pytest.mark.slow
def test_mirror_state_keys_the_build_cache(
    realms: Realms, apt_repo: AptRepo, tmp_path: Path
) -> None:
    config = _config(tmp_path, apt_repo)
    first = realms("appimg", "build", str(config))
    assert "Built appimg probe version 1" in first.stderr
    assert _probe_version(realms, "probe", 1) == "1.0"

    (version,) = realms.json("appimg", "versions", "probe")
    inrelease = (apt_repo.dists("trixie") / "InRelease").read_bytes()
    source = version["source"]
    assert source["archive"] == f"{apt_repo.mirror} trixie"
    assert source["release_digest"] == "sha256:" + hashlib.sha256(inrelease).hexdigest()
    assert source["date"].endswith("Z") and len(source["state"]) == 64
    assert "mirror of" in realms("appimg", "versions", "probe").stdout

    # An unchanged mirror: nothing to build, and the mirror only said "not modified".
    asked = len(apt_repo.requests())
    again = realms("appimg", "build", str(config))
    assert "up to date" in again.stderr
    checked = apt_repo.requests()[asked:]
    assert "GET /debian/dists/trixie/InRelease 304" in checked, checked
    assert not [line for line in checked if "/pool/" in line or "Packages" in line]

    # The mirror moves (a new realms-probe in trixie-updates): the same config builds again.
    apt_repo.add_package("realms-probe", "1.1", "trixie-updates")
    moved = realms("appimg", "build", str(config))
    assert "Built appimg probe version 2" in moved.stderr
    assert _probe_version(realms, "probe", 2) == "1.1"
    versions = realms.json("appimg", "versions", "probe")
    assert versions[0]["source"]["state"] != versions[1]["source"]["state"]
    assert "up to date" in realms("appimg", "build", str(config)).stderr

    # Offline, with the mirror gone: the cached build of the newest mirror state, and its age.
    apt_repo.stop()
    failed = realms("appimg", "build", str(config), check=False)
    _refused(failed, "cannot read the mirror")
    assert "--offline" in failed.stderr
    offline = realms("appimg", "build", str(config), "--offline", "--name", "probe-copy")
    assert "Offline: the cached build of the mirror state of " in offline.stderr
    assert " old)" in offline.stderr
    assert "Built appimg probe-copy version 1 from the build cache" in offline.stderr
    assert _probe_version(realms, "probe-copy", 1) == "1.1"
    (copy,) = realms.json("appimg", "versions", "probe-copy")
    assert copy["source"] == versions[-1]["source"]

    # No cached build of a config: offline says so.
    other = _config(tmp_path, apt_repo, 'locale = "C.UTF-8"', name="other")
    _refused(realms("appimg", "build", str(other), "--offline", check=False), "no cached build")


@pytest.mark.slow
def test_snapshot_builds_from_a_dated_archive(
    realms: Realms, apt_repo: AptRepo, tmp_path: Path
) -> None:
    snapshot_mirror = apt_repo.snapshot(SNAPSHOT)
    extra = f'snapshot = "{SNAPSHOT}"\nsnapshot-mirror = "{snapshot_mirror}"'
    config = _config(tmp_path, apt_repo, extra)
    built = realms("appimg", "build", str(config))
    assert "Built appimg probe version 1" in built.stderr
    (version,) = realms.json("appimg", "versions", "probe")
    assert version["source"]["archive"] == f"{snapshot_mirror}/archive/debian/{SNAPSHOT} trixie"
    sources = realms.store / "appimg/probe/v1/etc/apt/sources.list.d/debian.sources"
    assert f"/archive/debian-security/{SNAPSHOT}/" in sources.read_text()
    assert "Check-Valid-Until: no" in sources.read_text()

    # Today's archive moves; the snapshot does not, so its build stays up to date.
    apt_repo.add_package("realms-probe", "1.1")
    assert "up to date" in realms("appimg", "build", str(config)).stderr


def test_hostile_archives_and_configs_are_refused(
    realms: Realms, apt_repo: AptRepo, tmp_path: Path
) -> None:
    def build(extra: str = "", mirror: str | None = None) -> Result:
        config = _config(tmp_path, apt_repo, extra)
        if mirror is not None:
            text = config.read_text().replace(apt_repo.mirror, mirror)
            config.write_text(text)
        return realms("appimg", "build", str(config), check=False)

    dists = apt_repo.dists("trixie")
    inrelease = dists / "InRelease"
    good = inrelease.read_bytes()
    files = apt_repo.file_mirror  # read directly, through the same checks

    # A key that did not sign the archive.
    stranger = AptRepo(tmp_path / "stranger" / "root", tmp_path / "no-debs")
    try:
        (tmp_path / "no-debs").mkdir()
        stranger.make()
        shutil.copyfile(stranger.key, tmp_path / "stranger.asc")
        config = _config(tmp_path, apt_repo)
        config.write_text(config.read_text().replace("archive.asc", "stranger.asc"))
        refused = realms("appimg", "build", str(config), check=False)
        _refused(refused, "InRelease", "not signed by a key of the config's keyring")
    finally:
        stranger.stop()

    apt_repo.write(inrelease, good[: len(good) // 2])
    _refused(build(mirror=files), "InRelease", "truncated or malformed")
    _refused(build(), "InRelease", "truncated or malformed")  # over HTTP too
    apt_repo.write(inrelease, good + b"Date: Mon, 01 Dec 2026 00:00:00 UTC\n")
    _refused(build(mirror=files), "text outside the signed part")
    apt_repo.write(inrelease, bytes(9 << 20))
    _refused(build(mirror=files), "larger than 8 MiB")
    _refused(build(), "larger than 8 MiB")
    # Only Release, cut in a checksum line, with its signature gone as well.
    inrelease.unlink()
    release = (dists / "Release").read_bytes()
    apt_repo.write(dists / "Release", release[: release.index(b"SHA256:") + 20])
    _refused(build(mirror=files), "Release", "truncated")
    apt_repo.write(dists / "Release", release)
    (dists / "Release.gpg").unlink()
    _refused(build(mirror=files), "not signed")

    _refused(build('snapshot = "2026-12-01"'), "snapshot", "20261201T000000Z")
    _refused(build('snapshot = "20261301T000000Z"'), "snapshot")
    config = _config(tmp_path, apt_repo)
    config.write_text(config.read_text().replace('"archive.asc"', '"../archive.asc"'))
    _refused(realms("appimg", "build", str(config), check=False), "keyring")
    (tmp_path / "not-a-key.asc").write_text("hello\n")
    config.write_text(config.read_text().replace('"../archive.asc"', '"not-a-key.asc"'))
    _refused(realms("appimg", "build", str(config), check=False), "not an OpenPGP public key")
    assert not realms.json("appimg", "list")
