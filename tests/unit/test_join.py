"""What realms reads of a running realm before it joins it (:mod:`realms.lifecycle.join`): the
realm's passwd and group, and its init's cgroup, are the realm's to write, so they are hostile.
No root needed: the files are made in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from realms.errors import RealmsError
from realms.lifecycle.join import environment, identity, leader_cgroup


def _tree(root: Path, passwd: str, group: str = "") -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(passwd)
    (root / "etc/group").write_text(group)
    return root


USERS = "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/zsh\n"
GROUP = "root:x:0:\nsudo:x:27:user\naudio:x:29:other,user\nuser:x:1000:\nbad:x:notanumber:user\n"


def test_user_and_root_from_the_realm_files(tmp_path: Path) -> None:
    root = _tree(tmp_path, USERS, GROUP)
    user = identity(root, "r", as_root=False)
    assert (user.name, user.uid, user.gid, user.groups) == ("user", 1000, 1000, (27, 29, 1000))
    assert (user.home, user.shell, user.workdir) == ("/home/user", "/bin/zsh", "/home/user")
    admin = identity(root, "r", as_root=True)
    assert (admin.name, admin.uid, admin.gid, admin.workdir) == ("root", 0, 0, "/root")
    env = environment(user, "C.UTF-8")
    assert env["USER"] == env["LOGNAME"] == "user" and env["HOME"] == "/home/user"
    assert env["SHELL"] == "/bin/zsh" and env["LANG"] == "C.UTF-8"


def test_no_user_is_a_clear_error_and_root_has_defaults(tmp_path: Path) -> None:
    root = _tree(tmp_path, "daemon:x:1:1::/:/usr/sbin/nologin\n")
    with pytest.raises(RealmsError, match="no user with uid 1000"):
        identity(root, "r", as_root=False)
    admin = identity(root, "r", as_root=True)
    assert (admin.uid, admin.home, admin.shell) == (0, "/root", "/bin/sh")


def test_odd_lines_and_values_are_refused_not_trusted(tmp_path: Path) -> None:
    users = (
        "broken line\n"
        "user:x:1000:notanumber::relative/home:\x1b[2Jshell\n"
        "other:x:1000:1000::/elsewhere:/bin/sh\n"
    )
    user = identity(_tree(tmp_path, users), "r", as_root=False)
    # The first entry with uid 1000 wins; what is not a sane value falls back to the defaults.
    assert (user.name, user.gid, user.home, user.shell) == ("user", 1000, "/home/user", "/bin/sh")


def test_passwd_is_read_inside_the_realm(tmp_path: Path) -> None:
    """A realm whose /etc/passwd is a link to an absolute path reads its own file there, never
    the host's."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "inside").mkdir()
    (root / "inside/passwd").write_text("user:x:1000:1000::/home/user:/bin/inside\n")
    host = tmp_path / "host-passwd"
    host.write_text("user:x:1000:1000::/home/user:/bin/host\n")
    os.symlink("/inside/passwd", root / "etc/passwd")
    assert identity(root, "r", as_root=False).shell == "/bin/inside"
    os.remove(root / "etc/passwd")
    os.symlink(f"../../../../../../../../{host}", root / "etc/passwd")
    with pytest.raises(RealmsError, match="no user with uid 1000"):
        identity(root, "r", as_root=False)


@pytest.mark.parametrize(
    ("text", "joined"),
    [
        ("0::/realms/k-r/payload/init.scope\n", "realms/k-r/payload/init.scope"),
        ("0::/realms/k-r\n", "realms/k-r"),
        ("9:name=systemd:/x\n0::/realms/k-r/payload/init.scope\n", "realms/k-r/payload/init.scope"),
        ("0::/realms/k-r/../../host.slice\n", None),
        ("0::/realms/k-rr/payload\n", None),
        ("0::/elsewhere\n", None),
        ("0::/realms/k-r/pay\x07load\n", None),
        ("", None),
    ],
)
def test_the_leader_cgroup_must_be_inside_the_realm(
    tmp_path: Path, text: str, joined: str | None
) -> None:
    (tmp_path / "cgroup").write_text(text)
    proc = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if joined is None:
            with pytest.raises(RealmsError, match="not in the realm's cgroup"):
                leader_cgroup(proc, "realms/k-r")
        else:
            assert leader_cgroup(proc, "realms/k-r") == joined
    finally:
        os.close(proc)
