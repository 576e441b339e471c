"""Item 1 of the threat model: a realm's root is not host root.

Each test is the attack as realm root would make it (mknod of the pool's loop device to read the
store, writing host-owned files through a bind, reading the signing key's seed) and checks that
it fails, for tree realms, realms on sealed images and update-appimg containers; and that the
opt-out (``isolation = "privileged"``) is explicit and shown.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import Realms

# As realm root: make a block device node of the loop device behind the store's pool (or any
# loop device) and read from it: with it, the whole store, keys included, is readable.
MKNOD_ATTACK = "mknod /tmp/pool b 7 0 && head -c 512 /tmp/pool >/dev/null && echo GOT-DEVICE"


def _uid_map(realms: Realms, *args: str) -> list[int]:
    out = realms(*args, "--", "cat", "/proc/self/uid_map").stdout.split()
    return [int(field) for field in out[:3]]


def _set(realms: Realms, realm: str, line: str) -> None:
    config = realms.store / "realms" / realm / "config"
    config.write_text(config.read_text() + f"\n{line}\n")


def test_tree_realm_root_is_not_host_root(realms: Realms, base: str) -> None:
    realms("new", "attacker")
    inside, outside, count = _uid_map(realms, "run", "attacker", "--root")
    assert (inside, count) == (0, 65536) and outside >= 0x80000
    info = realms.json("show", "attacker")
    assert info["isolation"] == "userns" and info["uid_base"] == outside

    attack = realms("run", "attacker", "--root", "--", "sh", "-c", MKNOD_ATTACK, check=False)
    assert "GOT-DEVICE" not in attack.stdout
    assert not (realms.store / "realms/attacker/rootfs/tmp/pool").exists()

    # Files keep their on-disk owners: what realm root writes is owned by 0 in the store, what
    # the realm's user writes by 1000; the realm sees them as its own.
    realms("run", "attacker", "--root", "--", "touch", "/root-file")
    realms("run", "attacker", "--", "touch", "/home/user/user-file")
    assert os.lstat(realms.store / "realms/attacker/rootfs/root-file").st_uid == 0
    assert os.lstat(realms.store / "realms/attacker/home/user-file").st_uid == 1000
    owners = realms("run", "attacker", "--", "stat", "-c", "%u", "/root-file", "user-file")
    assert owners.stdout.split() == ["0", "1000"]


def test_two_realms_get_different_ranges(realms: Realms, base: str) -> None:
    realms("new", "one")
    realms("new", "two")
    ranges = {realms.json("show", name)["uid_base"] for name in ("one", "two")}
    assert len(ranges) == 2 and all(isinstance(base, int) for base in ranges)


def test_realm_root_cannot_write_host_files_through_a_bind(
    realms: Realms, base: str, tmp_path: Path
) -> None:
    host_file = tmp_path / "host-owned"
    host_file.write_text("host\n")
    host_file.chmod(0o644)
    realms("new", "binder")
    _set(realms, "binder", f'extra-bindmounts = ["{tmp_path}:/mnt/host"]')
    attack = realms(
        "run",
        "binder",
        "--root",
        "--",
        "sh",
        "-c",
        "echo pwned > /mnt/host/host-owned",
        check=False,
    )
    assert attack.returncode != 0
    assert host_file.read_text() == "host\n"


def test_bind_over_the_realm_root_is_refused(realms: Realms, base: str, tmp_path: Path) -> None:
    realms("new", "rootbind")
    for target in ("/", "/.", "//", "/mnt/../"):
        config = realms.store / "realms/rootbind/config"
        config.write_text(f'extra-bindmounts-ro = ["{tmp_path}:{target}"]\n')
        error = realms.fails("run", "rootbind", "--", "true")
        assert "extra-bindmounts-ro" in error, error


def test_sealed_realm_root_is_not_host_root(realms: Realms, base: str) -> None:
    realms("key", "generate", "realmfs-user")
    realms("appimg", "seal", "base")
    realms("new", "sealed")
    inside, outside, count = _uid_map(realms, "run", "sealed", "--root")
    assert (inside, count) == (0, 65536) and outside >= 0x80000
    attack = realms("run", "sealed", "--root", "--", "sh", "-c", MKNOD_ATTACK, check=False)
    assert "GOT-DEVICE" not in attack.stdout
    # The image's files are root's inside (an idmapped lower layer), and what realm root
    # writes lands in the realm's layer owned by its host range, never by host root.
    realms("run", "sealed", "--root", "--", "sh", "-c", "echo x > /etc/written")
    owner = os.lstat(realms.store / "realms/sealed/upper/etc/written").st_uid
    assert owner == outside
    assert realms("run", "sealed", "--", "stat", "-c", "%u", "/etc/passwd").stdout.strip() == "0"
    # The image itself is untouched; the realm reads back its own change, also after /etc/passwd
    # was edited in its layer (the OS tree check looks at the merged tree).
    realms(
        "run",
        "sealed",
        "--root",
        "--",
        "sh",
        "-c",
        "echo extra:x:1001:1001::/:/bin/sh >> /etc/passwd",
    )
    assert realms("run", "sealed", "--", "cat", "/etc/written").stdout == "x\n"


def test_update_container_root_is_not_host_root(realms: Realms, base: str) -> None:
    attack = realms(
        "update-appimg",
        "base",
        "--",
        "sh",
        "-c",
        "cat /proc/self/uid_map; " + MKNOD_ATTACK,
        check=False,
    )
    assert "GOT-DEVICE" not in attack.stdout
    inside, outside, _count = (int(f) for f in attack.stdout.split()[:3])
    assert inside == 0 and outside != 0
    # The attack failed, so nothing was committed.
    assert attack.returncode != 0
    assert [v["version"] for v in realms.json("appimg", "versions", "base")] == [1]


def test_privileged_is_an_explicit_opt_out(realms: Realms, base: str) -> None:
    realms("new", "trusted")
    _set(realms, "trusted", 'isolation = "privileged"')
    assert realms.json("show", "trusted")["isolation"] == "privileged"
    listed = realms("list").stdout
    assert "privileged" in listed
    assert _uid_map(realms, "run", "trusted", "--root")[:2] == [0, 0]
    (realms.store / "realms/trusted/config").write_text('isolation = "root"\n')
    assert "isolation" in realms.fails("run", "trusted", "--", "true")


@pytest.mark.parametrize("isolation", ["userns", "privileged"])
def test_the_realm_root_allows_setuid_inside_only(
    realms: Realms, base: str, isolation: str
) -> None:
    # The store is mounted nosuid for the host's sake (no host user may run a realm's setuid
    # files); inside the realm its root must allow them (sudo), on a mount of its own.
    realms("new", "suid")
    _set(realms, "suid", f'isolation = "{isolation}"')
    mountinfo = realms("run", "suid", "--", "cat", "/proc/self/mountinfo").stdout
    root = next(line.split() for line in mountinfo.splitlines() if line.split()[4] == "/")
    assert "nosuid" not in root[5].split(","), root
    # And that mount exists only in the container: the host sees nothing new at the rootfs.
    host = Path("/proc/self/mountinfo").read_text()
    assert str(realms.store / "realms/suid/rootfs") not in host


def test_no_idmapped_mounts_is_a_clear_refusal(mount_guard: Path, busybox_tree: Path) -> None:
    # overlayfs cannot be idmapped: a store (copy backend) on an overlay mount is a real
    # filesystem without idmapped mounts. Realms there refuse to run unless privileged.
    layers = mount_guard / "layers"
    for name in ("lower", "upper", "work", "merged"):
        (layers / name).mkdir(parents=True)
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={layers}/lower,upperdir={layers}/upper,workdir={layers}/work",
            str(layers / "merged"),
        ],
        check=True,
    )
    cli = Realms(layers / "merged" / "store")
    cli("init", "--backend", "copy")
    cli("appimg", "import", "base", str(busybox_tree))
    cli("new", "plain")
    error = cli.fails("run", "plain", "--", "true")
    assert "user namespace" in error and "idmapped" in error
    config = cli.store / "realms/plain/config"
    config.write_text(config.read_text() + '\nisolation = "privileged"\n')
    assert cli("run", "plain", "--", "echo", "ran").stdout == "ran\n"


def test_the_container_namespace_holds_only_the_mounts_it_uses(
    realms: Realms, base: str, mount_guard: Path
) -> None:
    # Another user's filesystem, mounted while a realm runs: the realm's mount namespace must
    # not hold a copy of it (else it stays busy, with its loop device, until the realm ends).
    theirs = mount_guard / "theirs"
    theirs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "theirs", str(theirs)], check=True)
    realms("new", "holder")
    running = realms.spawn("run", "holder", "--", "sleep", "5")
    try:
        nspawn = None
        for _attempt in range(100):
            found = subprocess.run(
                ["pgrep", "-f", "systemd-nspawn.*--machine=holder"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            if found:
                nspawn = found[0]
                break
            time.sleep(0.05)
        assert nspawn is not None, "the realm did not start"
        held = Path(f"/proc/{nspawn}/mountinfo").read_text()
        assert str(theirs) not in held
        assert str(realms.store / "realms/holder/rootfs") in held
    finally:
        running.kill()
        running.wait()
    subprocess.run(["umount", str(theirs)], check=True)
