"""``realms run`` and ``realms shell`` on a booted realm join it (issue 13, item 2).

One realm is booted from ``bootable_tree`` (systemd as its init) for each test that needs it
and stopped afterwards, whatever happened. A joined command must be a process of the realm:
in all the namespaces of its init and in its cgroup, as its user or its root, with the
realm's environment; and it must not be more than a process the realm started itself: no
host descriptor, no capability the realm's init lacks, no host keyring, no host mount, no host
terminal. A stopped realm still runs a command in a container of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from tests.helpers import Realms

# As realm root: a block device node of a loop device, read (see security/test_userns.py).
MKNOD_ATTACK = "mknod /tmp/pool b 7 0 && head -c 512 /tmp/pool >/dev/null && echo GOT-DEVICE"

NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "user", "cgroup")


@pytest.fixture
def booted(realms: Realms, bootable_tree: Path) -> Iterator[str]:
    """Realm ``joined`` from the bootable tree, started; stopped at the end."""
    realms("appimg", "import", "boot", str(bootable_tree))
    realms("new", "joined", "--appimg", "boot")
    realms("start", "joined")
    try:
        yield "joined"
    finally:
        realms("stop", "joined", check=False)


def test_run_joins_the_running_realm(realms: Realms, booted: str) -> None:
    out = realms("run", booted, "--", "sh", "-c", "echo $$; cat /proc/1/comm").stdout.split()
    # Its pid is one of the realm's (small, not 1), and PID 1 is the realm's systemd.
    assert out[1] == "systemd" and 1 < int(out[0]) < 100000
    failed = realms("run", booted, "--", "sh", "-c", "exit 7", check=False)
    assert failed.returncode == 7
    killed = realms("run", booted, "--", "sh", "-c", "kill -TERM $$", check=False)
    assert killed.returncode == 128 + 15
    missing = realms.fails("run", booted, "--", "no-such-command")
    assert "no-such-command" in missing
    # The same namespaces as the realm's init, every one.
    links = " ".join(f"/proc/self/ns/{n} /proc/1/ns/{n}" for n in NAMESPACES)
    seen = realms("run", booted, "--root", "--", "sh", "-c", f"readlink {links}").stdout.split()
    assert len(seen) == 2 * len(NAMESPACES)
    assert seen[0::2] == seen[1::2]


def test_user_root_environment_and_directory(realms: Realms, booted: str) -> None:
    script = 'id -u; id -g; pwd; echo "$HOME $USER $LOGNAME $PATH"'
    user = realms("run", booted, "--", "sh", "-c", script).stdout.splitlines()
    assert user[:3] == ["1000", "1000", "/home/user"]
    assert user[3].split()[:3] == ["/home/user", "user", "user"]
    assert "/usr/bin" in user[3].split()[3].split(":")
    root = realms("run", booted, "--root", "--", "sh", "-c", script).stdout.splitlines()
    assert root[:3] == ["0", "0", "/root"]
    assert root[3].split()[:3] == ["/root", "root", "root"]
    # Nothing of realms' own environment leaks in.
    env = realms("run", booted, "--", "env", env={"REALMS_TEST_SECRET": "leak"}).stdout
    assert "REALMS_TEST_SECRET" not in env and "REALMS_STORE" not in env


def _live_in_cgroup(cgroup: Path, comm: str) -> list[int]:
    """The live (not zombie) processes named ``comm`` in a realm's cgroup, as the host sees
    them."""
    from realms.lifecycle import cgroups

    found = []
    for pid in cgroups.pids(cgroup):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, _, rest = stat.partition("(")[2].rpartition(")")
        if name == comm and rest.split()[0] != "Z":
            found.append(pid)
    return found


def _wait_for(check: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"still not so after 30 s: {what}")


def _cgroup(realms: Realms, name: str) -> Path:
    from realms.lifecycle import state
    from realms.store import Store

    runtime = state.running(Store.open(realms.store), name)
    assert runtime is not None
    return Path(runtime.cgroup)


def test_joined_process_is_in_the_realm_cgroup(realms: Realms, booted: str) -> None:
    inside = realms("run", booted, "--", "cat", "/proc/self/cgroup").stdout
    assert "0::/init.scope" in inside.splitlines()
    cgroup = _cgroup(realms, booted)
    sleeper = realms.spawn("run", booted, "--", "sleep", "300")
    try:
        _wait_for(lambda: bool(_live_in_cgroup(cgroup, "sleep")), "sleep in the realm's cgroup")
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_the_joined_command_goes_with_realms(
    realms: Realms, booted: str, signum: signal.Signals
) -> None:
    """realms told to stop (SIGTERM) hangs the command up; realms killed (SIGKILL) leaves it
    to the kernel, which sends it SIGHUP: nothing it started stays in the realm."""
    cgroup = _cgroup(realms, booted)
    sleeper = realms.spawn("run", booted, "--", "sleep", "300")
    try:
        _wait_for(lambda: bool(_live_in_cgroup(cgroup, "sleep")), "sleep in the realm's cgroup")
        sleeper.send_signal(signum)
        sleeper.wait(timeout=60)
        _wait_for(lambda: not _live_in_cgroup(cgroup, "sleep"), "the joined sleep gone")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_files_written_joined_have_the_realm_owners(realms: Realms, booted: str) -> None:
    realms("run", booted, "--", "touch", "/home/user/joined")
    realms("run", booted, "--root", "--", "touch", "/joined-root")
    realms("stop", booted)
    realms("run", booted, "--", "touch", "/home/user/one-shot")
    realms("run", booted, "--root", "--", "touch", "/one-shot-root")
    realm = realms.store / "realms" / booted
    # On disk, as a one-shot run of the same realm writes them (never a host uid below the
    # realm's range, never host root's files from realm root's hands but in its own view).
    assert os.lstat(realm / "home/joined").st_uid == os.lstat(realm / "home/one-shot").st_uid
    assert os.lstat(realm / "rootfs/joined-root").st_uid == (
        os.lstat(realm / "rootfs/one-shot-root").st_uid
    )
    owners = realms("run", booted, "--", "stat", "-c", "%u", "joined", "/joined-root").stdout
    assert owners.split() == ["1000", "0"]


def test_joined_root_has_no_more_than_the_realm(realms: Realms, booted: str) -> None:
    status = realms(
        "run", booted, "--root", "--", "grep", "-h", "^Cap", "/proc/self/status", "/proc/1/status"
    ).stdout.splitlines()
    joined = dict(line.split(":") for line in status[:5])
    init = dict(line.split(":") for line in status[5:])
    assert joined["CapEff"] == init["CapEff"] and joined["CapBnd"] == init["CapBnd"]
    assert int(joined["CapEff"], 16) != (1 << 41) - 1  # not every capability there is
    attack = realms("run", booted, "--root", "--", "sh", "-c", MKNOD_ATTACK, check=False)
    assert "GOT-DEVICE" not in attack.stdout and attack.returncode != 0
    uid_map = realms("run", booted, "--root", "--", "cat", "/proc/self/uid_map").stdout.split()
    assert uid_map[0] == "0" and int(uid_map[1]) >= 0x80000
    # No descriptor of the host's but 0, 1 and 2 (ls's own directory is the 4th).
    fds = realms("run", booted, "--root", "--", "ls", "/proc/self/fd").stdout.split()
    assert sorted(fds) == ["0", "1", "2", "3"]
    # No host mount: the store's filesystem is mounted nowhere in the realm but at its root.
    mounts = realms("run", booted, "--root", "--", "cat", "/proc/self/mountinfo").stdout
    points = [line.split()[4] for line in mounts.splitlines()]
    assert str(realms.store) not in " ".join(points)


def test_the_host_keyring_stays_outside(realms: Realms, booted: str) -> None:
    """A key in the caller's session keyring is its possession, readable whoever one is: a
    joined process must get a session keyring of its own (as nspawn gives its containers)."""
    numbers = {"x86_64": (250, 248), "aarch64": (219, 217)}.get(os.uname().machine)
    if numbers is None:
        pytest.skip("keyctl's system call number is not known here")
    keyctl = numbers[0]
    # In the realm, perl-base (essential in Debian) makes the calls: the session keyring's id
    # (KEYCTL_GET_KEYRING_ID of @s) and a read of the host's key (KEYCTL_READ).
    probe = (
        'my $b = "\\0" x 64; my $n = syscall(KEYCTL, 11, KEY, $b, 64); '
        'print "session=", syscall(KEYCTL, 0, -3, 0), " read=$n\\n"'
    ).replace("KEYCTL", str(keyctl))
    script = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
keyctl, add_key = {numbers!r}
assert libc.syscall(keyctl, 1, None) >= 0  # a fresh session keyring for this process
key = libc.syscall(add_key, b"user", b"realms-test-secret", b"x", 1, -3)
session = libc.syscall(keyctl, 0, -3, 0)
assert key > 0 and session > 0
print(f"host-session={{session}}", flush=True)
probe = {probe!r}.replace("KEY", str(key))
os.execv(sys.executable, [sys.executable, "-m", "realms", "run", {booted!r}, "--root", "--",
         "perl", "-e", probe])
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=realms.env(),
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    host, inside = result.stdout.split("\n")[:2]
    fields = dict(word.split("=") for word in inside.split())
    assert int(fields["session"]) > 0 and f"host-session={fields['session']}" != host
    assert int(fields["read"]) < 0  # the key is not the realm's to read


def test_shell_is_a_login_shell_on_a_terminal_of_the_realm(realms: Realms, booted: str) -> None:
    realms(
        "run",
        booted,
        "--root",
        "--",
        "sh",
        "-c",
        "echo 'export REALMS_LOGIN=yes' > /etc/profile.d/realms-test.sh",
    )
    shell = realms.interactive("shell", booted)
    shell.sendline("echo login=$REALMS_LOGIN uid=$(id -u) tty=$(tty)")
    shell.expect(r"login=yes uid=1000 tty=(/dev/pts/\d+)")
    terminal = shell.match.group(1)
    # The terminal is one of the realm's own, owned by the user: no host terminal inside.
    shell.sendline(f"stat -c owner=%u {terminal}; readlink /proc/self/fd/0")
    shell.expect("owner=1000")
    shell.expect(terminal)
    # Ctrl-C stops the foreground job, not the shell; the size follows realms' terminal.
    shell.sendline("sleep 300")
    shell.expect("sleep 300")
    shell.sendcontrol("c")
    shell.setwinsize(30, 100)
    shell.sendline("echo size=$(stty size)")
    shell.expect("size=30 100")
    shell.sendline("exit 3")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 3

    root = realms.interactive("shell", booted, "--root")
    root.sendline("echo uid=$(id -u) init=$(cat /proc/1/comm)")
    root.expect("uid=0 init=systemd")
    root.sendline("exit")
    root.expect(pexpect.EOF)
    root.close()
    assert root.exitstatus == 0


def test_a_stopped_realm_runs_one_shot(realms: Realms, booted: str) -> None:
    assert realms("run", booted, "--", "cat", "/proc/1/comm").stdout.strip() == "systemd"
    realms("stop", booted)
    one_shot = realms("run", booted, "--", "cat", "/proc/1/comm").stdout.strip()
    assert one_shot != "systemd"
    assert realms("run", booted, "--", "sh", "-c", "exit 4", check=False).returncode == 4
