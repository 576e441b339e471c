"""Small pieces on their own: names, sizes, config validation, the host's apt mirror, reading
inside an untrusted root, private files that are never readable while written, the module entry
point and the nspawn command line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from realms import config
from realms.errors import InvalidInput, InvalidName
from realms.names import check_appimg_name, check_realm_name
from realms.system.apt import host_debian_mirror
from realms.system.fs import atomic_write, read_in_root, rename_noreplace
from realms.units import parse_size


def test_names() -> None:
    assert check_realm_name("a") == "a"
    assert check_realm_name("Work-2") == "Work-2"
    for bad in ("", "2a", "a_b", "a.b", "a/b", "-a", "é", "a\n"):
        with pytest.raises(InvalidName):
            check_realm_name(bad)
    check_realm_name("a" * 64)  # systemd's limit for machine names
    with pytest.raises(InvalidName):
        check_realm_name("a" * 65)
    check_appimg_name("a" * 40)
    with pytest.raises(InvalidName):
        check_appimg_name("a" * 41)


def test_sizes() -> None:
    assert parse_size("32G") == 32 << 30
    assert parse_size("512m") == 512 << 20
    assert parse_size("1TiB") == 1 << 40
    assert parse_size("4096") == 4096
    for bad in ("", "G", "1.5G", "-1G", "12Q"):
        with pytest.raises(InvalidInput):
            parse_size(bad)


def test_global_config_validation(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert config.load_global(path).default_appimg == "base"
    path.write_text(
        'default-appimg = "desk"\nkeep-versions = 5\n[realm-defaults]\nuse-gpu = true\n'
    )
    loaded = config.load_global(path)
    assert loaded.default_appimg == "desk" and loaded.keep_versions == 5
    assert loaded.realm_defaults["use-gpu"] is True
    cases = {
        'verity = "sometimes"': 'verity: expected one of "auto", "kernel", "userspace"',
        "require-sealed = 1": "require-sealed: expected true or false",
        "keep-versions = true": "keep-versions: expected a whole number",
        "keep-versions = 0": "keep-versions: expected at least 1",
        "colour = 1": "unknown key 'colour'",
        "[realm-defaults]\nuse-kvm = []": "use-kvm: expected true or false",
        "= broken": "not valid TOML",
    }
    for text, message in cases.items():
        path.write_text(text + "\n")
        with pytest.raises(InvalidInput) as raised:
            config.load_global(path)
        assert message in raised.value.message and str(path) in raised.value.message
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidInput, match="not UTF-8"):
        config.load_global(path)


def test_host_mirror(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert host_debian_mirror(apt) == "http://mirror.example/debian"
    (apt / "sources.list.d/debian.sources").unlink()
    (apt / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n"
    )
    assert host_debian_mirror(apt) == "http://other.example/debian"
    (apt / "sources.list").unlink()
    with pytest.raises(Exception, match="no Debian mirror"):
        host_debian_mirror(apt)


def test_read_in_root_never_leaves_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "host-secret"
    outside.write_text("host\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/real").write_text("inside\n")
    (root / "etc/abs").symlink_to("/etc/real")  # absolute: means the root's /etc/real
    (root / "etc/escape").symlink_to("../../../../host-secret")
    (root / "etc/host").symlink_to(str(outside))
    (root / "etc/loop").symlink_to("loop")
    os.mkfifo(root / "etc/fifo")
    assert read_in_root(root, "etc/abs") == b"inside\n"
    assert read_in_root(root, "/etc/../etc/./real") == b"inside\n"
    for path in ("etc/escape", "etc/host"):
        with pytest.raises(FileNotFoundError):
            read_in_root(root, path)
    with pytest.raises(OSError):
        read_in_root(root, "etc/loop")
    with pytest.raises(OSError):
        read_in_root(root, "etc/fifo")  # and it does not hang


def test_rename_noreplace(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # empty: plain rename(2) would replace it
    with pytest.raises(OSError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    rename_noreplace(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c").is_dir() and not (tmp_path / "a").exists()


def test_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "realms", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("realms ")


def test_nspawn_command_line_follows_the_host(tmp_path: Path) -> None:
    from realms.container import Bind, Container, Overlay, nspawn_argv

    container = Container(
        rootfs=tmp_path / "root",
        machine="work",
        command=["id"],
        user="user",
        binds=[Bind(tmp_path / "home", "/home/user")],
        workdir="/home/user",
    )
    without = nspawn_argv(container, interactive=False, systemd_pid1=False)
    assert "--register=no" in without and "--keep-unit" in without
    assert "--console=pipe" in without and without[-2:] == ["--", "id"]
    assert f"--bind={tmp_path}/home:/home/user" in without and "--user=user" in without
    with_systemd = nspawn_argv(container, interactive=True, systemd_pid1=True)
    assert "--register=no" not in with_systemd and "--console=interactive" in with_systemd
    layered = Container(
        rootfs=tmp_path / "root",
        machine="img",
        overlay=Overlay(tmp_path / "lower", tmp_path / "upper", tmp_path / "work"),
    )
    # Every container is in a user namespace unless it is privileged; nspawn idmaps a tree
    # itself, an overlay's layers are idmapped below it by realms (prepare_root).
    assert "--private-users=pick" in without and "--private-users-ownership=map" in without
    assert f"--bind={tmp_path}/home:/home/user" in without  # a user's bind: not idmapped
    wrapped = nspawn_argv(
        layered._replace(private_users=0x10000 * 20), interactive=False, systemd_pid1=False
    )
    assert wrapped[0] == "systemd-nspawn"
    assert "--private-users=1310720:65536" in wrapped
    assert "--private-users-ownership=off" in wrapped
    privileged = nspawn_argv(
        layered._replace(private_users=None), interactive=False, systemd_pid1=False
    )
    assert not [arg for arg in privileged if arg.startswith("--private-users")]
    home = Bind(tmp_path / "home", "/home/user", idmap=True)
    assert home.option(userns=True).endswith(":/home/user:idmap")
    assert home.option(userns=False).endswith(":/home/user")


def test_a_private_file_is_never_readable_while_written(tmp_path: Path) -> None:
    """atomic_write creates its temporary file with the final mode (open with the mode, even
    with umask 0) and ends with exactly that mode (even with umask 077)."""
    created: list[int] = []
    real_open = os.open

    def observing_open(path: str | Path, flags: int, mode: int = 0o777, **kw: object) -> int:
        fd = real_open(path, flags, mode, **kw)  # type: ignore[arg-type]
        if flags & os.O_CREAT:
            assert flags & os.O_EXCL, "a temporary file must be new (O_EXCL)"
            created.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    old_umask = os.umask(0)
    os.open = observing_open  # type: ignore[assignment]
    try:
        atomic_write(tmp_path / "secret.key", "seed\n", mode=0o600)
        os.umask(0o077)
        atomic_write(tmp_path / "hostname", "realm\n", mode=0o644)
    finally:
        os.open = real_open
        os.umask(old_umask)
    assert created == [0o600, 0o600], "the first byte of the key was written to a wider file"
    assert stat.S_IMODE(os.stat(tmp_path / "secret.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "hostname").st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp.")]
