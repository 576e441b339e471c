"""A local Debian archive whose state the test controls (issue 14: builds against a mirror that
moves, or does not).

- :func:`download_minbase` (session fixture ``apt_debs``): the .deb files of a Debian trixie
  minbase, downloaded once per session from the host's configured mirror (mmdebstrap into
  ``/dev/null``, its package cache synced out).
- :class:`AptRepo` (fixture ``apt_repo``, one per test): an archive with the suites ``trixie``
  (those packages and ``realms-probe`` 1.0, a tiny package made with ``dpkg-deb``),
  ``trixie-updates`` and, at ``/debian-security``, ``trixie-security`` (both empty, so that
  the module write-apt-sources finds every suite it writes), indexed with ``apt-ftparchive``
  and signed (InRelease, Release.gpg) by a throw-away OpenPGP key (``repo.key``: give it as a
  build config's ``keyring``). It is served by ``python -m http.server`` on 127.0.0.1 with a
  random port (``repo.mirror``, ``repo.security``), also as ``file://`` (``repo.file_mirror``),
  and stopped with the test.
- ``repo.add_package(name, version)`` adds (or replaces) a package made with dpkg-deb and
  re-indexes: the suite's InRelease gets a new digest, as when a mirror moves.
  ``repo.snapshot(date)`` copies today's state into a snapshot.debian.org-style tree and
  returns the URI to give as ``snapshot-mirror``. ``repo.requests()`` lists what the server
  was asked (``"GET /debian/dists/trixie/InRelease 304"``).

Needs apt-utils (apt-ftparchive), gnupg and mmdebstrap (setup.sh, EXTRAS=test).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

RELEASE = "trixie"
ARCH = "amd64"
PROBE = "realms-probe"


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def download_minbase(target: Path) -> Path:
    """The .deb files of a trixie minbase, from the host's mirror, into ``target``."""
    from realms.system.apt import host_debian_mirror

    for tool in ("mmdebstrap", "apt-ftparchive", "gpg", "dpkg-deb"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (EXTRAS=test ./setup.sh installs it)")
    target.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "mmdebstrap",
            "--quiet",
            "--mode=root",
            "--variant=minbase",
            "--skip=essential/unlink",
            f"--customize-hook=sync-out /var/cache/apt/archives {target}",
            RELEASE,
            "/dev/null",
            host_debian_mirror(),
        ]
    )
    for leftover in ("lock", "partial"):
        path = target / leftover
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    assert len(list(target.glob("*.deb"))) > 50, "mmdebstrap downloaded too few packages"
    return target


def make_deb(directory: Path, name: str, version: str) -> Path:
    """A tiny package ``name`` ``version`` (Architecture: all) that installs
    /usr/share/NAME/version holding its version."""
    tree = directory / f"{name}_{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: realms tests <tests@realms.invalid>\nPriority: optional\n"
        f"Description: a package of the realms tests ({version})\n"
    )
    (tree / f"usr/share/{name}").mkdir(parents=True)
    (tree / f"usr/share/{name}/version").write_text(f"{version}\n")
    deb = directory / f"{name}_{version}_all.deb"
    _run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)])
    shutil.rmtree(tree)
    return deb


class AptRepo:
    """A signed local archive in ``root`` (``debian/`` and ``debian-security/``)."""

    def __init__(self, root: Path, debs: Path) -> None:
        self.root = root
        self.gnupg = root.parent / f"{root.name}.gnupg"
        self.key = root.parent / f"{root.name}.key.asc"
        self.work = root.parent / f"{root.name}.work"
        self._server: subprocess.Popen[str] | None = None
        self._log = root.parent / f"{root.name}.http.log"
        self.port = 0
        self.debs = debs
        for directory in (self.root, self.gnupg, self.work):
            directory.mkdir(parents=True)
        self.gnupg.chmod(0o700)

    def make(self) -> None:
        """Make the key and the archive (apart from __init__: stop() undoes what this
        started, the key's gpg-agent, even when it fails half way)."""
        self._gpg(
            "--quick-gen-key",
            "realms test archive <archive@realms.invalid>",
            "ed25519",
            "sign",
            "never",
        )
        self.key.write_text(self._gpg("--armor", "--export"))
        pool = self.pool(RELEASE)
        pool.mkdir(parents=True)
        for deb in self.debs.glob("*.deb"):
            os.link(deb, pool / deb.name)
        self.pool(f"{RELEASE}-updates").mkdir(parents=True)
        self.pool(f"{RELEASE}-security").mkdir(parents=True)
        self.add_package(PROBE, "1.0", index=False)
        for suite in (RELEASE, f"{RELEASE}-updates", f"{RELEASE}-security"):
            self.index(suite)

    def _gpg(self, *args: str) -> str:
        return _run(
            [
                "gpg",
                "--homedir",
                str(self.gnupg),
                "--batch",
                "--passphrase",
                "",
                "--pinentry-mode",
                "loopback",
                *args,
            ]
        ).stdout

    def archive(self, suite: str) -> Path:
        return self.root / ("debian-security" if suite.endswith("-security") else "debian")

    def pool(self, suite: str) -> Path:
        return self.archive(suite) / "pool" / suite

    def dists(self, suite: str) -> Path:
        return self.archive(suite) / "dists" / suite

    def add_package(
        self, name: str, version: str, suite: str = RELEASE, *, index: bool = True
    ) -> None:
        """Add ``name`` ``version`` to ``suite``, replacing its other versions there, and
        re-index the suite (a new InRelease)."""
        pool = self.pool(suite)
        for old in pool.glob(f"{name}_*.deb"):
            old.unlink()
        deb = make_deb(self.work, name, version)
        deb.rename(pool / deb.name)
        if index:
            self.index(suite)

    def index(self, suite: str) -> None:
        """Write the suite's Packages, Release, InRelease and Release.gpg (signed anew)."""
        archive, dists = self.archive(suite), self.dists(suite)
        binary = dists / "main" / f"binary-{ARCH}"
        binary.mkdir(parents=True, exist_ok=True)
        packages = _run(["apt-ftparchive", "packages", f"pool/{suite}"], cwd=archive).stdout
        (binary / "Packages").write_text(packages)
        options = [
            f"-oAPT::FTPArchive::Release::{field}={value}"
            for field, value in (
                ("Origin", "realms-tests"),
                ("Suite", suite),
                ("Codename", suite),
                ("Components", "main"),
                ("Architectures", ARCH),
            )
        ]
        release = _run(["apt-ftparchive", *options, "release", str(dists)]).stdout
        previous = dists / "InRelease"
        before = previous.stat().st_mtime if previous.exists() else 0.0
        (dists / "Release").write_text(release)
        for name in ("InRelease", "Release.gpg"):
            (dists / name).unlink(missing_ok=True)
        self._gpg("--clearsign", "--output", str(dists / "InRelease"), str(dists / "Release"))
        self._gpg(
            "--armor",
            "--detach-sign",
            "--output",
            str(dists / "Release.gpg"),
            str(dists / "Release"),
        )
        for name in ("Release", "InRelease", "Release.gpg"):
            self.moved(dists / name, before)

    @staticmethod
    def moved(path: Path, before: float) -> None:
        """Give ``path`` a time at least a second after ``before``: HTTP dates have whole
        seconds, and a file changed within the second of its last fetch would still look
        unmodified to If-Modified-Since (a real mirror changes its files minutes apart)."""
        stamp = max(time.time(), before + 1.5)
        os.utime(path, (stamp, stamp))

    def write(self, path: Path, data: bytes) -> None:
        """Replace a file of the archive with ``data`` (a hostile mirror), as a new file."""
        before = path.stat().st_mtime if path.exists() else 0.0
        path.write_bytes(data)
        self.moved(path, before)

    def snapshot(self, date: str) -> str:
        """Copy today's state to a snapshot tree (``snapshot/archive/debian/DATE/`` and
        ``debian-security``); return the URI to give as ``snapshot-mirror``."""
        for archive in ("debian", "debian-security"):
            target = self.root / "snapshot/archive" / archive / date
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self.root / archive, target, copy_function=os.link)
        return f"{self.url}/snapshot"

    @property
    def url(self) -> str:
        assert self.port, "the server runs"
        return f"http://127.0.0.1:{self.port}"

    @property
    def mirror(self) -> str:
        return f"{self.url}/debian"

    @property
    def security(self) -> str:
        return f"{self.url}/debian-security"

    @property
    def file_mirror(self) -> str:
        return (self.root / "debian").as_uri()

    def serve(self) -> None:
        log = open(self._log, "w")  # noqa: SIM115 (the server's stderr; closed with the file)
        with log:
            self._server = subprocess.Popen(
                [
                    sys.executable,
                    "-u",
                    "-m",
                    "http.server",
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(self.root),
                    "0",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        assert self._server.stdout is not None
        line = self._server.stdout.readline()
        match = re.search(r" port ([0-9]+) ", line)
        assert match, f"http.server said {line!r}"
        self.port = int(match[1])

    def requests(self) -> list[str]:
        """What the server answered so far: ``"GET /PATH STATUS"`` each."""
        text = self._log.read_text(errors="replace")
        return [f"{m[1]} {m[2]}" for m in re.finditer(r'"(GET \S+) HTTP/[0-9.]+" ([0-9]+)', text)]

    def stop(self) -> None:
        if self._server is not None:
            self._server.terminate()
            try:
                self._server.wait(10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
            if self._server.stdout is not None:
                self._server.stdout.close()
            self._server = None
        # gpg started an agent for the throw-away key's home: stop it.
        subprocess.run(
            ["gpgconf", "--homedir", str(self.gnupg), "--kill", "all"],
            check=False,
            capture_output=True,
        )


@pytest.fixture(scope="session")
def apt_debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb files of a trixie minbase (downloaded once per session)."""
    return download_minbase(tmp_path_factory.mktemp("apt-debs"))


@pytest.fixture
def apt_repo(apt_debs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AptRepo]:
    """A fresh signed archive served on 127.0.0.1 (see :class:`AptRepo`); stopped after the
    test."""
    repo = AptRepo(tmp_path_factory.mktemp("apt-repo") / "root", apt_debs)
    try:
        repo.make()
        repo.serve()
        yield repo
    finally:
        repo.stop()
