"""Build configs as they are loaded: the template, errors that name the file and the key, good
values that pass and are quoted in the scripts, and the bytes checked once at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from realms.builder import config as build_config
from realms.builder import modules
from realms.errors import InvalidInput
from tests.helpers import Realms


def _context(directory: Path) -> Path:
    """A build context: the config's directory with a file and a script in it, and a secret
    next to it (outside the context)."""
    (directory / "ctx/files").mkdir(parents=True)
    (directory / "ctx/scripts").mkdir()
    (directory / "ctx/files/motd").write_text("hello\n")
    (directory / "ctx/scripts/ok.sh").write_text("true\n")
    (directory / "secret").write_text("host secret\n")
    (directory / "evil.sh").write_text(f"touch {directory}/PWNED-script\n")
    return directory / "ctx"


def test_template_documents_every_key_and_parses(tmp_path: Path) -> None:
    realms = Realms(tmp_path / "no-store")
    target = tmp_path / "build.toml"
    realms("appimg", "build", "--new", str(target))
    text = target.read_text()
    for key in build_config.KEYS + build_config.USER_KEYS + build_config.MODULE_KEYS:
        assert f"{key.name} = " in text
    for module in build_config.BUILTIN_MODULES:
        assert module in text
    parsed = build_config.load(target)
    default = build_config.load(None)
    assert build_config.inputs_digest(parsed) == build_config.inputs_digest(default)
    assert "exists already" in realms.fails("appimg", "build", "--new", str(target))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "unknown key 'colour'"),
        ('packages = "vim"', "packages: expected a list of Debian package names"),
        ('packages = ["Bad Name"]', "packages: expected a list of Debian package names"),
        ('variant = "huge"', 'variant: expected one of "minbase"'),
        ('bootstrapper = "debootstrap"\nvariant = "standard"', "debootstrap has no variant"),
        ('mirror = "--setup-hook=true"', "mirror: expected an http://"),
        ('release = "../.."', "release: expected a Debian release name"),
        ('name = "no/slash"', "name: invalid appimg name"),
        ("[user]\nuid = -1", "uid: expected a whole number"),
        ('[user]\nname = "Root Beer"', "name: expected a user name"),
        ('[modules]\nbefore = ["teleport"]', "unknown module 'teleport'"),
        ('[modules]\nafter = ["missing.sh"]', "module script 'missing.sh' not found"),
        ('[[files]]\nsource = "nope"\npath = "/etc/x"', "source: 'nope' not found"),
        ('[[files]]\nsource = "build.toml"\npath = "etc/x"', "path: expected an absolute path"),
        ('[[files]]\nsource = "build.toml"\npath = "/x"\nmode = "rwx"', "mode: expected"),
        ("user = 3", "user: expected a table"),
        ('packages = ["less"]', "the module sudo-nopasswd needs the package sudo"),
        ("= broken", "not valid TOML"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "build.toml"
    path.write_text(text + "\n")
    with pytest.raises(InvalidInput) as raised:
        build_config.load(path)
    assert message in raised.value.message and str(path) in raised.value.message


def test_good_values_pass_and_scripts_quote_them(tmp_path: Path) -> None:
    """A file:/// mirror, https mirrors, names with every allowed character: accepted; and the
    scripts made from them hold them quoted."""
    context = _context(tmp_path)
    (context / "files/alias").symlink_to("motd")  # a symlink that stays inside is fine
    config = context / "good.toml"
    config.write_text(
        'mirror = "file:///srv/mirror/debian"\n'
        'security-mirror = "https://user@security.debian.org:443/debian-security/"\n'
        'release = "bookworm-backports"\n'
        'components = ["main", "non-free-firmware"]\n'
        'locale = "sr_RS.UTF-8@latin"\n'
        'hostname = "my-host"\n'
        '[user]\nname = "dev_1"\ngroups = ["sudo", "plugdev"]\nshell = "/usr/bin/zsh"\n'
        '[modules]\nafter = ["sudo-nopasswd", "./scripts/ok.sh"]\n'
        '[[files]]\nsource = "files/alias"\npath = "/etc/motd"\nowner = "1000:user"\n'
    )
    loaded = build_config.load(config)
    assert loaded.mirror == "file:///srv/mirror/debian"
    assert loaded.security_mirror == "https://user@security.debian.org:443/debian-security/"
    assert loaded.files[0].data == b"hello\n"
    assert loaded.after[1].name == "ok.sh" and loaded.after[1].text == "true\n"
    hosts = modules.builtin_script("set-hostname", loaded)
    assert "<<'EOF'" in hosts  # a quoted here-document: nothing in it is expanded
    assert "useradd" in modules.builtin_script("create-user", loaded)
    assert "-- dev_1" in modules.builtin_script("create-user", loaded)


def test_build_uses_the_bytes_it_checked(tmp_path: Path) -> None:
    """The files and scripts are read once, at load: swapping them for symlinks to host
    secrets afterwards (the time-of-check-to-time-of-use race) changes nothing."""
    context = _context(tmp_path)
    config = context / "race.toml"
    config.write_text(
        '[modules]\nafter = ["sudo-nopasswd", "scripts/ok.sh"]\n'
        '[[files]]\nsource = "files/motd"\npath = "/etc/motd"\n'
    )
    loaded = build_config.load(config)
    digest = build_config.inputs_digest(loaded)
    for name in ("files/motd", "scripts/ok.sh"):
        (context / name).unlink()
        (context / name).symlink_to("/etc/shadow")
    assert loaded.files[0].data == b"hello\n" and loaded.after[1].text == "true\n"
    assert build_config.inputs_digest(loaded) == digest
    assert not any(isinstance(v, Path) for v in vars(loaded.files[0]).values())
