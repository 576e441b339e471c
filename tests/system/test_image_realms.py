"""Realms on block and sealed appimgs: one shared activation per version (loop device and
read-only mount), an overlay per realm, the verity policy, updates that reseal, and no stale
loop device or mount after failures and kills."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Realms, loops_backed_by


def _overlay_mounts() -> list[str]:
    output = Path("/proc/self/mountinfo").read_text()
    return [line for line in output.splitlines() if "realms-overlay" in line]


def _activations(realms: Realms) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = realms.json("status")["activations"]
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def sealed_base(realms: Realms, base: str) -> Path:
    realms("key", "generate", "realmfs-user")
    realms("appimg", "seal", "base")
    return realms.store / "appimg/base/v2.img"


def test_realms_share_one_activation(realms: Realms, sealed_base: Path) -> None:
    before = _sha256(sealed_base)
    result = realms("new", "one")
    assert "Checking appimg base version 2 (every block)" in result.stderr
    realms("new", "two")
    realms("new", "three")
    (active,) = _activations(realms)
    assert active["appimg"] == "base" and active["version"] == 2
    assert active["users"] == ["one", "three", "two"]
    assert active["verity"] == realms.json("status")["verity"] == "userspace"
    assert loops_backed_by(sealed_base) == [active["device"]]
    assert realms.json("appimg", "show", "base")["verity"] == "userspace"
    assert "userspace (checked at activation)" in realms("status").stdout

    out = realms("run", "one", "--", "sh", "-c", "id -u; hostname; cat /etc/os-release").stdout
    assert out.split()[:2] == ["1000", "one"] and "BusyBox" in out
    realms("run", "one", "--root", "--", "sh", "-c", "echo mine > /etc/realm-one")
    upper = realms.store / "realms/one/upper/etc/realm-one"
    assert upper.read_text() == "mine\n"
    assert realms("run", "one", "--", "cat", "/etc/realm-one").stdout == "mine\n"
    assert realms("run", "two", "--", "test", "-e", "/etc/realm-one", check=False).returncode == 1
    assert _sha256(sealed_base) == before
    assert _overlay_mounts() == [], "each overlay lives only as long as its run"

    realms("remove", "one")
    realms("remove", "two")
    assert _activations(realms)[0]["users"] == ["three"]
    assert loops_backed_by(sealed_base)
    realms("remove", "three")
    assert _activations(realms) == []
    assert loops_backed_by(sealed_base) == []
    assert not (realms.store / "active/base.v2").exists()


def test_overlay_settings(realms: Realms, sealed_base: Path) -> None:
    realms("new", "scratch")
    config = realms.store / "realms/scratch/config"
    config.write_text('overlay = "tmpfs"\n')
    realms("run", "scratch", "--root", "--", "sh", "-c", "echo gone > /etc/gone; cat /etc/gone")
    assert realms("run", "scratch", "--", "test", "-e", "/etc/gone", check=False).returncode == 1
    assert not (realms.store / "realms/scratch/upper/etc/gone").exists()
    config.write_text('overlay = "none"\n')
    result = realms("run", "scratch", "--root", "--", "touch", "/etc/x", check=False)
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    assert _overlay_mounts() == []


def test_block_version_realm(realms: Realms, base: str) -> None:
    realms("appimg", "seal", "base", "--no-verity")
    assert realms.json("appimg", "show", "base")["verity"] == "none"
    result = realms("new", "plain")
    assert "every block" not in result.stderr
    (active,) = _activations(realms)
    assert active["verity"] == "none"
    assert realms("run", "plain", "--", "hostname").stdout.strip() == "plain"


def test_flipped_byte_is_caught_at_activation(realms: Realms, sealed_base: Path) -> None:
    realms("new", "fine")
    assert realms("run", "fine", "--", "true").returncode == 0
    # As after a reboot: nothing is active, and meanwhile a byte of the image changed.
    subprocess.run(["umount", str(realms.store / "active/base.v2")], check=True)
    os.chmod(sealed_base, 0o644)
    with sealed_base.open("r+b") as image:
        image.seek(4096 + 7 * 4096 + 99)
        byte = image.read(1)[0]
        image.seek(4096 + 7 * 4096 + 99)
        image.write(bytes([byte ^ 0x01]))
    error = realms.fails("run", "fine", "--", "true")
    assert "verity" in error and "data block 7" in error
    error = realms.fails("new", "another")
    assert "data block 7" in error
    assert [r["name"] for r in realms.json("list")] == ["fine"]
    assert _activations(realms) == []
    assert loops_backed_by(sealed_base) == []


def test_policies(realms: Realms, sealed_base: Path) -> None:
    config = realms.store / "config.toml"
    original = config.read_text()
    config.write_text(original + '\nverity = "kernel"\n')
    status = realms.json("status")
    if status["kernel"]["dm_verity"]:
        pytest.skip("this kernel has dm-verity: the refusal cannot happen here")
    assert status["verity"] == "none"
    error = realms.fails("new", "strict")
    assert "the verity policy is 'kernel', but this kernel has no dm-verity" in error
    assert realms.json("list") == [] and _activations(realms) == []

    config.write_text(original + "\nrequire-sealed = true\n")
    realms("new", "sealed-ok")
    realms("appimg", "rollback", "base", "1")
    assert "require-sealed" in realms.fails("new", "tree-refused")
    realms("appimg", "seal", "base", "--no-verity")
    assert "require-sealed" in realms.fails("new", "block-refused")


def test_remove_and_prune_keep_versions_in_use(realms: Realms, sealed_base: Path) -> None:
    realms("new", "user-of-v2")
    error = realms.fails("appimg", "remove", "base")
    assert "user-of-v2" in error
    for _ in range(3):
        realms("appimg", "rollback", "base", "1")
        realms("appimg", "seal", "base", "--no-verity")
    result = realms("appimg", "prune", "base", "--keep", "1")
    assert "Keeping version 2: realms run on it (user-of-v2)" in result.stderr
    assert [v["version"] for v in realms.json("appimg", "versions", "base")] == [2, 5]
    assert realms("run", "user-of-v2", "--", "true").returncode == 0
    realms("remove", "user-of-v2")
    realms("appimg", "remove", "base")
    assert _activations(realms) == []


def test_update_of_a_sealed_appimg_reseals(realms: Realms, sealed_base: Path) -> None:
    realms("new", "old")
    old_salt = realms.json("appimg", "verify", "base")
    made = realms("update-appimg", "base", "--", "sh", "-c", "echo v3 > /etc/updated")
    assert "Committed appimg base version 3" in made.stderr
    versions = realms.json("appimg", "versions", "base")
    assert versions[-1]["kind"] == "sealed" and versions[-1]["parent"] == 2
    report = realms.json("appimg", "verify", "base")
    assert report["ok"] is True and report != old_salt
    realms("new", "new")
    assert realms("run", "new", "--", "cat", "/etc/updated").stdout == "v3\n"
    assert realms("run", "old", "--", "test", "-e", "/etc/updated", check=False).returncode == 1
    listed = {r["name"]: r for r in realms.json("list")}
    assert listed["old"]["outdated"] is True and listed["new"]["outdated"] is False
    assert len(_activations(realms)) == 2

    failed = realms("update-appimg", "base", "--", "sh", "-c", "touch /etc/no; exit 3", check=False)
    assert failed.returncode == 3
    assert len(realms.json("appimg", "versions", "base")) == 3
    assert realms.json("status")["leftovers"] == 0

    # Without the channel's private key there is no way to reseal: refused before the shell.
    key = realms.store / "keys/signing/realmfs-user.key"
    key.rename(key.with_name("elsewhere"))
    error = realms.fails("update-appimg", "base", "--", "touch", "/etc/x")
    assert "no signing key" in error
    assert len(realms.json("appimg", "versions", "base")) == 3


def test_update_of_an_erofs_block_appimg(realms: Realms, base: str) -> None:
    realms("appimg", "seal", "base", "--no-verity", "--fs", "erofs")
    realms("update-appimg", "base", "--", "touch", "/etc/erofs-updated")
    report = realms.json("appimg", "verify", "base")
    assert report["kind"] == "block" and report["ok"] is True
    assert report["checks"][3]["detail"] == "erofs"
    realms("new", "e")
    assert realms("run", "e", "--", "test", "-e", "/etc/erofs-updated").returncode == 0


def test_killed_activation_is_cleaned_up(realms: Realms, sealed_base: Path) -> None:
    killed = realms("new", "half", check=False, env={"REALMS_KILL_AT": "realm-new:activated"})
    assert killed.returncode == -signal.SIGKILL
    (orphan,) = _activations(realms)
    assert orphan["users"] == []
    assert "released by the next realm command" in realms("status").stdout
    realms("new", "whole")
    (active,) = _activations(realms)
    assert active["users"] == ["whole"]

    # A run killed outright leaves no overlay behind (its mount namespace dies with it).
    running = realms.spawn("run", "whole", "--", "sleep", "30")
    deadline = 100
    while not realms.json("show", "whole")["running"] and deadline:
        deadline -= 1
        subprocess.run(["sleep", "0.1"], check=True)
    running.send_signal(signal.SIGKILL)
    running.wait(timeout=30)
    subprocess.run(["sleep", "1"], check=True)
    assert _overlay_mounts() == []
    assert realms("run", "whole", "--", "true").returncode == 0
    realms("remove", "whole")
    assert loops_backed_by(sealed_base) == []
