"""Issue 10, item 4: build configs are data.

Each test is an attack through a crafted build config (and the files it names), run through
the real command line against a fresh store: it must be refused at load, with one error line
naming the file and the key, before any tool runs: no hook's marker file appears, nothing is
created outside the store, and the store is exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Realms
from tests.unit.test_build_config import _context

UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path below ``root`` with its mode and size: what "the store is unchanged" means."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            info = os.lstat(path)
            found[str(path.relative_to(root))] = (info.st_mode, info.st_size)
    return found


def _attack(realms: Realms, context: Path, text: str, expected: str) -> str:
    """Build ``text`` as a config in ``context``; it must fail at load with ``expected``."""
    config = context / "attack.toml"
    config.write_text(text)
    store_before = _snapshot(realms.store)
    outside_before = sorted(os.listdir(realms.store.parent))
    error = realms.fails("appimg", "build", str(config))
    assert expected in error, error
    assert str(config) in error or "host's apt sources" in error, error
    assert "\n" not in error and len(error) < 400, error
    assert _snapshot(realms.store) == store_before
    assert sorted(os.listdir(realms.store.parent)) == outside_before
    assert not list(context.parent.glob("PWNED*")), "a hook or injected command ran"
    return error


MIRROR_ATTACKS = [
    # mmdebstrap takes options anywhere: this used to run on the host, as root.
    ('mirror = "--setup-hook=touch {tmp}/PWNED-mirror"', "mirror: expected an http://"),
    ('mirror = "http://deb.debian.org/debian --setup-hook=touch {tmp}/PWNED-2"', "mirror:"),
    # A path or "-" is a sources file (or stdin) to mmdebstrap; a line with spaces is a sources
    # line; a newline ends the here-document of write-apt-sources.
    ('mirror = "/etc/apt/sources.list"', "mirror: expected"),
    ('mirror = "-"', "mirror: expected"),
    ('mirror = "deb http://deb.debian.org/debian trixie main"', "mirror: expected"),
    ('mirror = "ftp://deb.debian.org/debian"', "mirror: expected"),
    ('mirror = "ssh://-oProxyCommand=touch%20{tmp}/PWNED-3/"', "mirror: expected"),
    ('mirror = "http://-oProxyCommand=x/debian"', "mirror: expected"),
    ('mirror = "http:///debian"', "mirror: expected"),
    ('mirror = "http://deb.debian.org:99999/debian"', "mirror: expected"),
    ('mirror = "file://otherhost/srv/debian"', "mirror: expected"),
    ('mirror = "file:///srv/../etc"', "mirror: expected"),
    ('mirror = "http://deb.debian.org/debian\\nEOF\\ntouch {tmp}/PWNED-4"', "mirror: expected"),
    ("mirror = \"http://x/'$(touch {tmp}/PWNED-5)'\"", "mirror: expected"),
    ('security-mirror = "--customize-hook=touch {tmp}/PWNED-6"', "security-mirror: expected"),
    ('security-mirror = "https://s/debian-security\\nURIs: http://evil/"', "security-mirror:"),
    ("mirror = 7", "mirror: expected"),
]


@pytest.mark.parametrize(("line", "expected"), MIRROR_ATTACKS)
def test_mirror_option_injection_and_bad_uris(
    realms: Realms, tmp_path: Path, line: str, expected: str
) -> None:
    context = _context(tmp_path)
    _attack(realms, context, line.format(tmp=tmp_path) + "\n", expected)


def test_release_cannot_make_directories_outside_the_store(realms: Realms, tmp_path: Path) -> None:
    context = _context(tmp_path)
    # The package cache is STORE/cache/packages/RELEASE: this reached the pool's top directory.
    escape = "../../../PWNED-release"
    _attack(realms, context, f'release = "{escape}"\n', "release: expected a Debian release")
    assert not (realms.store / "cache/packages" / escape).exists()
    assert not (realms.store.parent / "PWNED-release").exists()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('release = "../../.."', "release: expected"),
        ('release = "trixie/../../x"', "release: expected"),
        ('release = "--setup-hook=touch {tmp}/PWNED-release"', "release: expected"),
        ('release = "-"', "release: expected"),
        ('release = ".."', "release: expected"),
        ('release = "trixie sid"', "release: expected"),
        ('release = ""', "release: expected"),
        ('components = ["main", "../../x"]', "components: expected"),
        ('components = ["main,contrib --setup-hook=touch {tmp}/PWNED-c"]', "components: expected"),
        ('components = ["--variant=extract"]', "components: expected"),
        ('components = ["main\\nEOF"]', "components: expected"),
        ("components = []", "components: expected"),
        ('variant = "minbase --setup-hook=x"', "variant: expected"),
        ('packages = ["less", "--setup-hook=touch"]', "packages: expected"),
        ('packages = ["less,sudo"]', "packages: expected"),
        ('bootstrapper = "/bin/sh"', "bootstrapper: expected"),
    ],
)
def test_release_and_components_are_plain_names(
    realms: Realms, tmp_path: Path, line: str, expected: str
) -> None:
    context = _context(tmp_path)
    _attack(realms, context, line.format(tmp=tmp_path) + "\n", expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[files]]\nsource = "/etc/shadow"\npath = "/etc/x"', "source: expected a path relative"),
        ('[[files]]\nsource = "../secret"\npath = "/etc/x"', "source: expected a path relative"),
        ('[[files]]\nsource = "files/../../secret"\npath = "/x"', "source: expected a path"),
        ('[[files]]\nsource = "files"\npath = "/etc/x"', "is not a regular file"),
        ('[[files]]\nsource = ""\npath = "/etc/x"', "source: expected a path relative"),
        ('[[files]]\nsource = "files/motd\\u0000"\npath = "/x"', "source: expected a path"),
        ('[[files]]\nsource = "files/motd"\npath = "/../etc/x"', "path: expected an absolute"),
        ('[[files]]\nsource = "files/motd"\npath = "/etc/x\\u0000"', "path: expected"),
        ('[[files]]\nsource = "files/motd"\npath = "/etc/x\\n"', "path: expected"),
        ('[[files]]\nsource = "files/motd"\npath = "/x"\nowner = "root:root:x"', "owner: expected"),
        ('[[files]]\nsource = "files/motd"\npath = "/x"\nowner = "$(id)"', "owner: expected"),
        ('[[files]]\nsource = "files/motd"\npath = "/x"\nowner = "-o0"', "owner: expected"),
        ('[[files]]\nsource = "files/motd"\npath = "/x"\nmode = "4755 -x"', "mode: expected"),
    ],
)
def test_files_stay_inside_the_config_directory(
    realms: Realms, tmp_path: Path, text: str, expected: str
) -> None:
    _attack(realms, _context(tmp_path), text + "\n", expected)


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory that the unprivileged user (65534) owns and can reach (tmp_path cannot be:
    its parents are root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="realms-h4-"))
    try:
        path.chmod(0o755)
        os.chown(path, 65534, 65534)
        yield path
    finally:
        shutil.rmtree(path)


def _as_nobody(*argv: str) -> None:
    subprocess.run([*UNPRIVILEGED, *argv], check=True, capture_output=True)


def test_a_host_users_symlinks_do_not_lead_out(realms: Realms, reachable_dir: Path) -> None:
    """An unprivileged user hands root a build context whose files are symlinks to root's
    secrets (a file, a directory, the config's own directory's parent)."""
    context = reachable_dir / "ctx"
    _as_nobody("mkdir", "-p", str(context / "scripts"))
    _as_nobody("ln", "-s", "/etc/shadow", str(context / "shadow"))
    _as_nobody("ln", "-s", "/etc", str(context / "etc"))
    _as_nobody("ln", "-s", "..", str(context / "up"))
    _as_nobody("ln", "-s", "/root/.bashrc", str(context / "scripts/run.sh"))
    _as_nobody("mkfifo", str(context / "fifo"))
    os.chown(context, 0, 0)  # the config itself is written by this test
    leaks = [
        ('[[files]]\nsource = "shadow"\npath = "/etc/x"', "leads outside the config's directory"),
        ('[[files]]\nsource = "etc/shadow"\npath = "/x"', "leads outside the config's directory"),
        ('[[files]]\nsource = "up/ctx/shadow"\npath = "/x"', "leads outside"),
        ('[modules]\nbefore = ["scripts/run.sh"]', "leads outside the config's directory"),
        # A FIFO must neither hang the build nor be read.
        ('[[files]]\nsource = "fifo"\npath = "/x"', "is not a regular file"),
    ]
    for text, expected in leaks:
        error = _attack(realms, context, text + "\n", expected)
        assert "root:" not in error


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[modules]\nbefore = ["/tmp/evil.sh"]', "module script expected a path relative"),
        ('[modules]\nbefore = ["../evil.sh"]', "module script expected a path relative"),
        ('[modules]\nafter = ["scripts/../../evil.sh"]', "module script expected a path"),
        ('[modules]\nafter = ["scripts/missing.sh"]', "module script 'scripts/missing.sh' not"),
        ('[modules]\nafter = ["scripts/"]', "is not a regular file"),
        ('[modules]\nbefore = ["--setup-hook=x"]', "unknown module"),
    ],
)
def test_module_scripts_stay_inside_the_config_directory(
    realms: Realms, tmp_path: Path, text: str, expected: str
) -> None:
    _attack(realms, _context(tmp_path), text + "\n", expected)


def test_module_script_symlinked_out_of_the_directory(realms: Realms, tmp_path: Path) -> None:
    context = _context(tmp_path)
    (context / "scripts/link.sh").symlink_to(tmp_path / "evil.sh")
    (context / "outside").symlink_to(tmp_path)
    _attack(realms, context, '[modules]\nbefore = ["scripts/link.sh"]\n', "leads outside")
    _attack(realms, context, '[modules]\nbefore = ["outside/evil.sh"]\n', "leads outside")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('hostname = "h$(touch {tmp}/PWNED-h)"', "hostname: expected a host name"),
        ('hostname = "h\\nEOF\\ntouch {tmp}/PWNED-h"', "hostname: expected a host name"),
        ('hostname = "-h"', "hostname: expected"),
        ("locale = \"en_US.UTF-8'; touch {tmp}/PWNED-l; '\"", "locale: expected a locale"),
        ('locale = "en_US.UTF-8\\nroot ALL"', "locale: expected a locale"),
        ('locale = "../../../etc/shadow"', "locale: expected"),
        ('[user]\nname = "user$(touch {tmp}/PWNED-u)"', "name: expected a user name"),
        ('[user]\nname = "user ALL=(ALL) NOPASSWD: ALL"', "name: expected a user name"),
        ('[user]\nname = "-ouser"', "name: expected a user name"),
        ('[user]\ngroups = ["sudo,root"]', "groups: expected a list of group names"),
        ('[user]\ngroups = ["sudo -G root"]', "groups: expected"),
        ('[user]\ngroups = "sudo"', "groups: expected"),
        ('[user]\nshell = "bash"', "shell: expected an absolute path"),
        ('[user]\nshell = "/bin/bash\\nroot::0:0::/:/bin/sh"', "shell: expected"),
        ('[user]\nshell = "/bin/sh:0"', "shell: expected"),
        ('[user]\nshell = "/bin/../tmp/x"', "shell: expected"),
        ("[user]\nuid = 70000", "uid: expected a whole number from 0 to 65533"),
        ("[user]\nuid = true", "uid: expected"),
    ],
)
def test_no_injection_into_module_scripts(
    realms: Realms, tmp_path: Path, text: str, expected: str
) -> None:
    _attack(realms, _context(tmp_path), text.format(tmp=tmp_path) + "\n", expected)


def test_long_values_are_cut_in_the_error(realms: Realms, tmp_path: Path) -> None:
    error = _attack(realms, _context(tmp_path), f'release = "{"x/" * 5000}"\n', "release:")
    assert "(10002 characters)" in error


def test_a_file_mirror_passes_validation_on_the_command_line(
    realms: Realms, tmp_path: Path
) -> None:
    """Good mirrors get past the checks: the error is about the next bad key ([user] is
    checked after the top-level keys), not the mirrors (no tool runs: the shell is bad)."""
    context = _context(tmp_path)
    for mirror in (f"file://{tmp_path}/mirror", "https://deb.debian.org/debian/"):
        text = (
            f'mirror = "{mirror}"\nsecurity-mirror = "file:/srv/debian-security"\n'
            '[user]\nshell = "nologin"\n'
        )
        error = _attack(realms, context, text, "[user]: shell: expected an absolute path")
        assert "mirror:" not in error
