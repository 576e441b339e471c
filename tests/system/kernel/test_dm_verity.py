"""A sealed image against the real kernel's dm-verity, opened exactly as Citadel opened it.

The image is ``[4096-byte SGOS header][ext4, nblocks x 4096][dm-verity hash area]``, made here
with mkfs.ext4, :mod:`realms.image.header` and :mod:`realms.image.verity`. In the guest:
``losetup -o 4096 -r``, ``veritysetup open`` with the root hash and ``--hash-offset`` read from
the header (the salt comes from the verity superblock), ``mount -o ro``, then read files. A good
image reads back; one flipped byte makes the read fail with an I/O error and dm-verity name the
block in the kernel log.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from realms.image.header import FLAG_HASH_TREE, Header, build_header, parse_header, render_metainfo
from realms.image.verity import BLOCK_SIZE, format_hash_tree, hash_levels
from tests.system.kernel.vm import Guest

B = BLOCK_SIZE
# 16385 data blocks: the tree has three levels (129, 2 and 1 hash blocks), so every read
# walks all of them.
NBLOCKS = 128 * 128 + 1


@dataclass(frozen=True)
class SealedImage:
    path: Path
    header: Header
    token: bytes  # unique bytes inside the data of /hello.txt
    big_sha256: str  # of /big.bin, 1 MiB of random bytes


def make_sealed_image(directory: Path, nblocks: int = NBLOCKS) -> SealedImage:
    if not shutil.which("mkfs.ext4"):
        pytest.fail("mkfs.ext4 is not installed: apt-get install e2fsprogs", pytrace=False)
    token = os.urandom(16).hex().encode()
    big = os.urandom(1 << 20)
    source = directory / "rootfs"
    (source / "etc").mkdir(parents=True)
    (source / "hello.txt").write_bytes(b"hello from a sealed image " + token + b"\n")
    (source / "big.bin").write_bytes(big)
    (source / "etc/os-release").write_text("ID=sealed\n")
    data = directory / "data.ext4"
    with data.open("wb") as file:
        file.truncate(nblocks * B)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", str(B), "-d", str(source), str(data)],
        check=True,
        capture_output=True,
    )
    image = directory / "sealed-realmfs.img"
    with image.open("wb") as out, data.open("rb") as ext4:
        out.write(bytes(B))
        shutil.copyfileobj(ext4, out)
    data.unlink()
    salt = os.urandom(32)
    root = format_hash_tree(
        image, data_offset=B, data_blocks=nblocks, hash_offset=(nblocks + 1) * B, salt=salt
    )
    metainfo = render_metainfo(
        image_type="realmfs",
        realmfs_name="sealed",
        nblocks=nblocks,
        verity_salt=salt,
        verity_root=root,
    )
    with image.open("r+b") as out:
        out.write(build_header(metainfo, flags=FLAG_HASH_TREE))
    header = read_header(image)
    assert header.metainfo.sealed and not header.signed
    return SealedImage(image, header, token, hashlib.sha256(big).hexdigest())


def read_header(image: Path) -> Header:
    with image.open("rb") as file:
        return parse_header(file.read(B), source=str(image))


def open_and_read(image: Path, *commands: str) -> str:
    """The guest script: open the image as Citadel did, then run ``commands``.

    Everything comes from the image's own header: nblocks for the hash offset, the root hash.
    """
    meta = read_header(image).metainfo
    assert meta.nblocks is not None and meta.verity_root is not None
    lines = [
        "dev=$(losetup -f)",
        'losetup -o 4096 -r "$dev" /dev/vda || exit 10',
        f'veritysetup open "$dev" sealed "$dev" {meta.verity_root.hex()} '
        f"--hash-offset={meta.nblocks * B} || exit 11",
        "mount -t ext4 -o ro /dev/mapper/sealed /mnt || exit 12",
        "echo '@@ mounted'",
        *commands,
        "echo '@@ kernel log'",
        "dmesg | grep -i verity",
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> SealedImage:
    return make_sealed_image(tmp_path_factory.mktemp("sealed"))


@pytest.fixture
def damaged(sealed: SealedImage, tmp_path: Path) -> SealedImage:
    """A copy of the sealed image, for a test to damage."""
    path = tmp_path / sealed.path.name
    shutil.copyfile(sealed.path, path)
    return SealedImage(path, sealed.header, sealed.token, sealed.big_sha256)


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ 0x20]))


def token_offset(image: SealedImage) -> int:
    content = image.path.read_bytes()
    assert content.count(image.token) == 1
    return content.find(image.token)


def test_a_sealed_image_opens_and_reads(guest: Guest, sealed: SealedImage) -> None:
    script = open_and_read(
        sealed.path,
        "cat /mnt/hello.txt",
        "sha256sum /mnt/big.bin",
        "veritysetup status sealed",
    )
    run = guest.run(script, [sealed.path])
    assert run.status == 0, run.console
    assert "@@ mounted" in run.output
    assert f"hello from a sealed image {sealed.token.decode()}\n" in run.output
    assert f"{sealed.big_sha256}  /mnt/big.bin" in run.output
    # veritysetup took the salt from the superblock; the kernel maps all the data blocks.
    meta = sealed.header.metainfo
    assert meta.verity_salt is not None and meta.verity_root is not None
    assert re.search(r"status:\s+verified\n", run.output), run.output
    assert re.search(rf"salt:\s+{meta.verity_salt.hex()}\n", run.output), run.output
    assert re.search(rf"root hash:\s+{meta.verity_root.hex()}\n", run.output), run.output
    assert re.search(rf"size:\s+{NBLOCKS * 8} sectors\n", run.output), run.output
    assert "is corrupted" not in run.output


def test_one_flipped_data_byte_is_an_io_error(guest: Guest, damaged: SealedImage) -> None:
    offset = token_offset(damaged) + 3
    block = (offset - B) // B  # dm-verity counts data blocks from the start of the loop device
    flip_byte(damaged.path, offset)
    script = open_and_read(
        damaged.path,
        "cat /mnt/hello.txt",
        'echo "@@ cat exit $?"',
        "sha256sum /mnt/big.bin",
    )
    run = guest.run(script, [damaged.path])
    assert run.status == 0, run.console
    assert "@@ mounted" in run.output, run.output
    assert "hello from a sealed image" not in run.output
    assert "cat: read error: Input/output error" in run.output, run.output
    assert "@@ cat exit 1" in run.output
    # The rest of the image still reads.
    assert f"{damaged.big_sha256}  /mnt/big.bin" in run.output
    assert f"data block {block} is corrupted" in run.output, run.output


def test_one_flipped_hash_byte_is_an_io_error(guest: Guest, damaged: SealedImage) -> None:
    # Damage the level-0 hash block that holds the digest of /hello.txt's data block.
    block = (token_offset(damaged) - B) // B
    levels = hash_levels(NBLOCKS)
    hash_area = (NBLOCKS + 1) * B
    level0 = hash_area + B * (1 + sum(levels[1:]))
    hash_block = level0 + (block // 128) * B
    flip_byte(damaged.path, hash_block + (block % 128) * 32)
    script = open_and_read(damaged.path, "cat /mnt/hello.txt", 'echo "@@ cat exit $?"')
    run = guest.run(script, [damaged.path])
    assert run.status == 0, run.console
    assert "cat: read error: Input/output error" in run.output, run.output
    assert "@@ cat exit 1" in run.output
    # The kernel counts hash blocks from the start of the hash device (the loop device).
    metadata_block = (hash_block - B) // B
    assert f"metadata block {metadata_block} is corrupted" in run.output, run.output
