"""A real Debian root filesystem: trixie minbase made with mmdebstrap from the host's mirror,
imported as a tarball, and a realm made from it runs commands as root and as the user."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Realms


@pytest.mark.slow
def test_debian_minbase_realm(realms: Realms, debian_tarball: Path) -> None:
    realms("appimg", "import", "base", str(debian_tarball))
    shown = realms.json("appimg", "show", "base")
    assert shown["versions"][0]["size"] > 50_000_000
    realms("new", "deb")
    release = realms("run", "deb", "--", "cat", "/etc/os-release").stdout
    assert "VERSION_CODENAME=trixie" in release
    who = realms("run", "deb", "--", "sh", "-c", "id -un; id -u; echo $HOME; hostname").stdout
    assert who.split() == ["user", "1000", "/home/user", "deb"]
    status = realms(
        "run", "deb", "--root", "--", "sh", "-c", "dpkg -s apt >/dev/null; exit 42", check=False
    )
    assert status.returncode == 42
    # apt's own sandbox user exists and file ownership came through the tarball intact.
    owners = realms(
        "run", "deb", "--root", "--", "stat", "-c", "%U", "/var/cache/apt/archives/partial"
    ).stdout
    assert owners.strip() == "_apt"
