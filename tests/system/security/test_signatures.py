"""Attacks on the signatures of sealed images and on the store's keys (issue 10, items 5, 7 and
two of the small ones), each asserting that the attack fails and the store is unchanged:

- an image whose key was revoked is still used (new realms, runs on an active version);
- a crafted image without a verity-salt, or unsigned, or signed by a stranger, with a data area
  of 1 GiB that must not be read before the refusal (proved by the bytes the process read);
- a key rotation killed at each of its steps, a tampered signing key, and the temporary files
  that hold a private key.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from realms.image.header import (
    FLAG_HASH_TREE,
    HEADER_SIZE,
    build_header,
    parse_header,
    render_metainfo,
)
from realms.image.verity import format_hash_tree, hash_area_size
from tests.helpers import Realms, loops_backed_by, mounts_below, unmount_below

B = 4096


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _snapshot(realms: Realms) -> dict[str, Any]:
    """What an attack must leave unchanged: the appimgs and their records, the realms."""
    return {
        "appimgs": realms.json("appimg", "list"),
        "versions": realms.json("appimg", "versions", "base"),
        "realms": [(r["name"], r["appimg_version"]) for r in realms.json("list")],
        "leftovers": realms.json("status")["leftovers"],
    }


def _seed(realms: Realms, channel: str) -> bytes:
    return bytes.fromhex((realms.store / f"keys/signing/{channel}.key").read_text().strip())


# Item 5: revocation takes effect at use


@pytest.fixture
def sealed_base(realms: Realms, base: str) -> Iterator[Path]:
    """The base appimg sealed; its activations (and their loop devices) are undone after the
    test, also when it fails."""
    realms("key", "generate", "realmfs-user")
    realms("appimg", "seal", "base")
    image = realms.store / "appimg/base/v2.img"
    try:
        yield image
    finally:
        unmount_below(realms.store / "active")
        deadline = time.monotonic() + 10
        while loops_backed_by(image) and time.monotonic() < deadline:
            time.sleep(0.1)  # a loop device is freed a moment after its last unmount
        assert not loops_backed_by(image), "a loop device of the image was left attached"


def test_revoked_key_stops_every_use(realms: Realms, sealed_base: Path) -> None:
    realms("new", "victim")  # activates version 2: the image is mounted under active/
    active = realms.store / "active/base.v2"
    assert mounts_below(active) and loops_backed_by(sealed_base)
    public = realms("key", "export", "realmfs-user").stdout.strip()
    image_sum = _sha256(sealed_base)
    before = _snapshot(realms)

    realms("key", "revoke", public)
    # No realm ran on it: the activation went with the revocation.
    assert not mounts_below(active) and not loops_backed_by(sealed_base)
    assert realms.json("status")["activations"] == []

    error = realms.fails("run", "victim", "--root", "--", "true")
    assert f"signed by the revoked key {public}" in error and "base version 2" in error
    error = realms.fails("shell", "victim", "--root")
    assert f"revoked key {public}" in error
    error = realms.fails("new", "second")
    assert f"signed by the revoked key {public}" in error
    # Refused before anything was mounted or made.
    assert not mounts_below(active) and not loops_backed_by(sealed_base)
    assert not (realms.store / "realms/second").exists()
    assert _snapshot(realms) == before
    assert _sha256(sealed_base) == image_sum
    # The realm can still be removed (its home kept), and nothing of the image stays behind.
    realms("remove", "victim")
    assert realms.json("list") == []


def test_trust_is_checked_at_every_use_of_an_active_version(
    realms: Realms, sealed_base: Path
) -> None:
    """The activation stays (nothing released it) while the trust changes under it: trust.toml
    rewritten by hand with the key revoked. Every use checks the header again anyway."""
    realms("new", "victim")
    public = realms("key", "export", "realmfs-user").stdout.strip()
    trust = realms.store / "keys/trust.toml"
    trust.write_text(trust.read_text().replace('revoked = ""', 'revoked = "2026-01-01T00:00:00Z"'))
    assert mounts_below(realms.store / "active/base.v2")
    error = realms.fails("run", "victim", "--root", "--", "true")
    assert f"signed by the revoked key {public}" in error
    assert f"signed by the revoked key {public}" in realms.fails("new", "second")
    assert [r["name"] for r in realms.json("list")] == ["victim"]


# Item 10: a crafted header is refused cleanly, and before the data is read


def _header_bytes(nblocks: int, **fields: Any) -> bytes:
    """A header for made-up metainfo (fields replaced), signed with ``seed`` if given."""
    seed: bytes | None = fields.pop("seed", None)
    values: dict[str, Any] = {
        "image_type": "realmfs",
        "realmfs_name": "crafted",
        "nblocks": nblocks,
        "channel": "test",
        "version": 1,
        "timestamp": "2026-01-01T00:00:00Z",
        "verity_salt": os.urandom(32),
        "verity_root": os.urandom(32),
    }
    values.update(fields)
    metainfo = render_metainfo(**values)
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(metainfo) if seed else None
    flags = FLAG_HASH_TREE if values["verity_root"] is not None else 0
    return build_header(metainfo, signature, flags=flags)


def _crafted(path: Path, nblocks: int, **fields: Any) -> Path:
    """A sparse image file of exactly the size its metainfo asks for: header, then holes."""
    header = _header_bytes(nblocks, **fields)
    sealed = parse_header(header).metainfo.sealed
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(HEADER_SIZE + nblocks * B + (hash_area_size(nblocks) if sealed else 0))
    return path


def test_missing_verity_salt_is_a_clean_refusal(realms: Realms, base: str, tmp_path: Path) -> None:
    realms("key", "generate", "test")
    before = _snapshot(realms)
    # Signed with the store's own trusted key: only the missing salt is wrong.
    image = _crafted(tmp_path / "nosalt.img", 16, seed=_seed(realms, "test"), verity_salt=None)
    assert parse_header(image.read_bytes()[:HEADER_SIZE]).metainfo.verity_salt is None
    error = realms.fails("appimg", "import", "evil", str(image))
    assert str(image) in error and "verity-salt" in error
    result = realms("appimg", "verify", "base", "--version", "1", check=False)
    assert result.returncode == 0
    assert _snapshot(realms) == before


# A process that runs realms in itself and reports, at its exit, how many bytes it read.
_MEASURED = """
import atexit, sys
def report() -> None:
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            sys.stderr.write("MEASURED-" + line)
atexit.register(report)
from realms.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _bytes_read(realms: Realms, *args: str) -> tuple[int, str]:
    completed = subprocess.run(
        [sys.executable, "-c", _MEASURED, *args],
        capture_output=True,
        text=True,
        env=realms.env(),
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=600,
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    assert completed.returncode == 1, completed.stderr
    (line,) = [x for x in completed.stderr.splitlines() if x.startswith("MEASURED-rchar:")]
    (error,) = [x for x in completed.stderr.splitlines() if x.startswith("realms: error:")]
    return int(line.split()[1]), error


def _with_header(source: Path, target: Path, **fields: Any) -> Path:
    """A sparse copy of the image ``source`` with a new header (fields replaced)."""
    subprocess.run(["cp", "--sparse=always", "--", str(source), str(target)], check=True)
    nblocks = parse_header(source.read_bytes()[:HEADER_SIZE]).metainfo.nblocks
    assert nblocks is not None
    with target.open("r+b") as handle:
        handle.write(_header_bytes(nblocks, **fields))
    return target


def test_bad_signatures_are_refused_before_the_data_is_read(
    realms: Realms, base: str, tmp_path: Path
) -> None:
    realms("key", "generate", "test")
    before = _snapshot(realms)
    # 1 GiB of data (a hole) with its real hash tree: the images below differ from a good one
    # only in their signature.
    nblocks = (1 << 30) // B
    template = _crafted(tmp_path / "template.img", nblocks)
    salt = os.urandom(32)
    root = format_hash_tree(
        template,
        data_offset=HEADER_SIZE,
        data_blocks=nblocks,
        hash_offset=HEADER_SIZE + nblocks * B,
        salt=salt,
    )
    tree = {"verity_salt": salt, "verity_root": root}
    stranger = Ed25519PrivateKey.generate().private_bytes_raw()
    cases = {
        "unsigned": (
            _with_header(template, tmp_path / "unsigned.img", **tree),
            "sealed but not signed",
        ),
        "stranger": (
            _with_header(template, tmp_path / "stranger.img", seed=stranger, **tree),
            "not from a trusted key of channel 'test'",
        ),
        "other channel": (
            _with_header(
                template, tmp_path / "channel.img", seed=stranger, channel="nobody", **tree
            ),
            "no trusted key for channel 'nobody'",
        ),
    }
    for case, (image, expected) in cases.items():
        read, error = _bytes_read(realms, "appimg", "import", "evil", str(image))
        assert expected in error and str(image) in error, (case, error)
        # Start-up reads a few MiB of Python modules; hashing the data would read 1 GiB.
        assert read < 64 << 20, (case, read)
        image.unlink()
    assert _snapshot(realms) == before

    # The control: the same file signed by the trusted key is hashed, all of it (and then
    # refused: there is no filesystem in the hole), so the measure above does see reads.
    signed = _with_header(template, tmp_path / "signed.img", seed=_seed(realms, "test"), **tree)
    read, error = _bytes_read(realms, "appimg", "import", "evil", str(signed))
    assert "no ext4 or erofs filesystem" in error and read > 1 << 30, (read, error)
    assert _snapshot(realms) == before


# Item 7: key rotation is atomic, a seal never commits what the store would refuse


def _signing_key_is_trusted(realms: Realms, channel: str) -> str:
    keys = [k for k in realms.json("key", "list") if k["channel"] == channel]
    (signing,) = [k for k in keys if k["signing"]]
    assert signing["revoked"] is False
    return str(signing["public"])


def _seal_and_verify(realms: Realms) -> None:
    realms("appimg", "seal", "base", "--channel", "test")
    assert realms.json("appimg", "verify", "base")["ok"] is True
    realms("appimg", "rollback", "base", "1")  # back to the tree, for the next seal


def test_key_rotation_killed_at_each_step(realms: Realms, base: str) -> None:
    first = realms("key", "generate", "test").stdout.strip()
    for checkpoint in ("key-generate:trusted", "key-generate:installed"):
        result = realms(
            "key", "generate", "test", "--replace", check=False, env={"REALMS_KILL_AT": checkpoint}
        )
        assert result.returncode == -signal.SIGKILL, (checkpoint, result.stderr)
        # Whatever key signs is trusted: seal works, and its image verifies.
        signing = _signing_key_is_trusted(realms, "test")
        assert (signing == first) == (checkpoint == "key-generate:trusted"), checkpoint
        _seal_and_verify(realms)
        first = signing
    # Every key trusted along the way is still trusted (none was lost), none revoked.
    listed = realms.json("key", "list")
    assert len(listed) == 3 and not any(k["revoked"] for k in listed)
    assert not [p for p in (realms.store / "keys").rglob(".tmp.*")]


def test_key_rotation_killed_at_random_moments(realms: Realms, base: str) -> None:
    import random

    realms("key", "generate", "test")
    rng = random.Random(7)
    for _ in range(12):
        process = realms.spawn("key", "generate", "test", "--replace")
        time.sleep(rng.uniform(0.05, 0.6))
        process.kill()
        process.communicate()
        _signing_key_is_trusted(realms, "test")
    _seal_and_verify(realms)
    assert not [p for p in (realms.store / "keys").rglob(".tmp.*")]


def test_seal_refuses_a_signing_key_the_store_does_not_trust(realms: Realms, base: str) -> None:
    """The state an interrupted rotation left before it trusted first, or a key file put in
    place by hand: the store would sign images it refuses. The seal checks its own output."""
    realms("key", "generate", "test")
    before = _snapshot(realms)
    key = realms.store / "keys/signing/test.key"
    key.write_text(os.urandom(32).hex() + "\n")
    error = realms.fails("appimg", "seal", "base", "--channel", "test")
    assert "new sealed image of appimg 'base'" in error
    assert "not from a trusted key of channel 'test'" in error
    after = _snapshot(realms)
    # The reserved version number is used up; no version was added, nothing left behind.
    assert after["appimgs"][0]["version"] == before["appimgs"][0]["version"]
    assert after["versions"] == before["versions"]
    assert after["leftovers"] == 0
    assert sorted(p.name for p in (realms.store / "appimg/base").iterdir()) == ["appimg.toml", "v1"]


def test_private_key_temporary_files(realms: Realms, tmp_path: Path) -> None:
    """A private key is never in a file any other user could open, not even for a moment: the
    temporary file is created 0600 (its open(2), traced), and a killed command's temporary
    files are removed by the next key command."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    trace = tmp_path / "trace"
    subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=openat",
            "-o",
            str(trace),
            *realms.argv("key", "generate", "test"),
        ],
        env=realms.env({"PYTHONDONTWRITEBYTECODE": "1"}),
        check=True,
        capture_output=True,
    )
    signing = realms.store / "keys/signing"
    created = [
        line
        for line in trace.read_text().splitlines()
        if f"{signing}/.tmp.test.key." in line and "O_CREAT" in line
    ]
    assert created, trace.read_text()[-2000:]
    assert all(line.split(", ")[-1].startswith("0600)") for line in created), created
    assert stat.S_IMODE((signing / "test.key").stat().st_mode) == 0o600

    # What a command killed between creating and renaming the file leaves behind.
    leftover = signing / ".tmp.test.key.deadbeef"
    leftover.write_text(os.urandom(32).hex() + "\n")
    leftover.chmod(0o600)
    trust_leftover = realms.store / "keys/.tmp.trust.toml.deadbeef"
    trust_leftover.write_text("")
    listed = realms.json("key", "list")
    assert not leftover.exists() and not trust_leftover.exists()
    assert [k["channel"] for k in listed] == ["test"]
