"""Our dm-verity hash tree against the real ``veritysetup`` (cryptsetup-bin): byte-identical
trees and root hashes, each tool accepting the other's, and verification that names the first
bad block.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from realms.errors import InvalidInput
from realms.image.verity import (
    BLOCK_SIZE,
    SUPERBLOCK_SIZE,
    VerityCheck,
    format_hash_tree,
    hash_area_size,
    hash_levels,
    superblock,
    verify_hash_tree,
)

B = BLOCK_SIZE
SALT = bytes.fromhex("9c3f" * 16)

if not shutil.which("veritysetup"):
    pytest.fail("veritysetup is not installed: apt-get install cryptsetup-bin", pytrace=False)


def veritysetup_format(path: Path, blocks: int, salt: bytes) -> tuple[bytes, bytes]:
    """``veritysetup format`` with the hash area right after the data; (root hash, uuid)."""
    output = subprocess.run(
        [
            "veritysetup",
            "format",
            path,
            path,
            f"--hash-offset={blocks * B}",
            f"--data-blocks={blocks}",
            f"--salt={salt.hex()}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"^Root hash:\s*([0-9a-f]{64})$", output, re.MULTILINE)
    assert found, output
    with path.open("rb") as file:
        file.seek(blocks * B + 16)
        uuid = file.read(16)
    return bytes.fromhex(found.group(1)), uuid


def veritysetup_verify(path: Path, blocks: int, root: bytes, hash_offset: int) -> bool:
    return (
        subprocess.run(
            ["veritysetup", "verify", path, path, root.hex(), f"--hash-offset={hash_offset}"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )


def random_data(blocks: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(blocks * B)


def our_image(tmp_path: Path, data: bytes, name: str = "ours.img") -> tuple[Path, int, int]:
    """A file laid out like an image: a 4096-byte prefix (the header), then the data."""
    path = tmp_path / name
    path.write_bytes(b"SGOS" + os.urandom(B - 4) + data)
    blocks = len(data) // B
    return path, blocks, (blocks + 1) * B


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ mask]))


@pytest.mark.parametrize(
    "blocks",
    [1, 2, 128, 129, 128 * 128, 128 * 128 + 1, -1],
    ids=["1", "2", "128", "129", "16384", "16385", "random"],
)
def test_byte_identical_to_veritysetup(tmp_path: Path, blocks: int) -> None:
    if blocks < 0:
        blocks = random.randint(3, 20000)
    data = random_data(blocks, blocks)
    theirs = tmp_path / "theirs.img"
    theirs.write_bytes(data)
    their_root, uuid = veritysetup_format(theirs, blocks, SALT)

    ours, _, hash_offset = our_image(tmp_path, data)
    prefix = ours.read_bytes()[:B]
    root = format_hash_tree(
        ours, data_offset=B, data_blocks=blocks, hash_offset=hash_offset, salt=SALT, uuid=uuid
    )
    assert root == their_root, f"{blocks} blocks"
    their_area = theirs.read_bytes()[blocks * B :]
    our_bytes = ours.read_bytes()
    assert len(their_area) == hash_area_size(blocks)
    assert our_bytes[hash_offset:] == their_area, f"{blocks} blocks"
    assert our_bytes[:B] == prefix, "the header in front of the data was touched"
    assert our_bytes[B:hash_offset] == data, "the data was touched"

    # Each accepts the other's: ours in place on veritysetup's file, veritysetup on a copy of
    # ours with the data at offset 0 (veritysetup has no data offset).
    check = verify_hash_tree(
        theirs, data_offset=0, data_blocks=blocks, hash_offset=blocks * B, root=root, salt=SALT
    )
    assert check.ok, check.message
    plain = tmp_path / "plain.img"
    plain.write_bytes(data)
    plain_root = format_hash_tree(
        plain, data_offset=0, data_blocks=blocks, hash_offset=blocks * B, salt=SALT
    )
    assert plain_root == root
    assert veritysetup_verify(plain, blocks, root, blocks * B)
    assert verify_hash_tree(
        ours, data_offset=B, data_blocks=blocks, hash_offset=hash_offset, root=root, salt=SALT
    ).ok


def test_levels_and_sizes() -> None:
    assert hash_levels(1) == []
    assert hash_levels(2) == [1]
    assert hash_levels(128) == [1]
    assert hash_levels(129) == [2, 1]
    assert hash_levels(128 * 128) == [128, 1]
    assert hash_levels(128 * 128 + 1) == [129, 2, 1]
    assert hash_area_size(1) == B
    assert hash_area_size(129) == 4 * B
    assert hash_area_size(262144) == B * (1 + 2048 + 16 + 1)


def test_superblock_fields() -> None:
    uuid = bytes(range(16))
    block = superblock(data_blocks=0x0102030405, salt=SALT, uuid=uuid)
    assert len(block) == SUPERBLOCK_SIZE
    assert block[0:8] == b"verity\0\0"
    assert block[8:12] == (1).to_bytes(4, "little")
    assert block[12:16] == (1).to_bytes(4, "little")
    assert block[16:32] == uuid
    assert block[32:64] == b"sha256".ljust(32, b"\0")
    assert block[64:68] == block[68:72] == B.to_bytes(4, "little")
    assert block[72:80] == (0x0102030405).to_bytes(8, "little")
    assert block[80:82] == (32).to_bytes(2, "little")
    assert block[82:88] == bytes(6)
    assert block[88:120] == SALT
    assert block[120:] == bytes(SUPERBLOCK_SIZE - 120)


def test_random_uuid_and_unsalted_tree(tmp_path: Path) -> None:
    path, blocks, hash_offset = our_image(tmp_path, random_data(300, 1))
    format_hash_tree(path, data_offset=B, data_blocks=blocks, hash_offset=hash_offset, salt=SALT)
    first = path.read_bytes()[hash_offset + 16 : hash_offset + 32]
    format_hash_tree(path, data_offset=B, data_blocks=blocks, hash_offset=hash_offset, salt=SALT)
    assert path.read_bytes()[hash_offset + 16 : hash_offset + 32] != first
    # No salt at all ("--salt=-" for veritysetup) is a valid tree too.
    theirs = tmp_path / "theirs.img"
    theirs.write_bytes(random_data(300, 1))
    output = subprocess.run(
        ["veritysetup", "format", theirs, theirs, f"--hash-offset={300 * B}", "--salt=-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    root = format_hash_tree(path, data_offset=B, data_blocks=300, hash_offset=hash_offset, salt=b"")
    assert root.hex() in output


THREE_LEVELS = 128 * 128 + 1  # hash levels of 129, 2 and 1 blocks


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """An image with a three-level tree, made once; tests damage copies of it."""
    directory = tmp_path_factory.mktemp("verity")
    path, blocks, hash_offset = our_image(directory, random_data(THREE_LEVELS, 7))
    root = format_hash_tree(
        path, data_offset=B, data_blocks=blocks, hash_offset=hash_offset, salt=SALT
    )
    return path, root


class TestVerify:
    """Our verify names the first bad block; veritysetup verify agrees that it is bad."""

    blocks = THREE_LEVELS

    @pytest.fixture
    def image(self, pristine: tuple[Path, bytes], tmp_path: Path) -> tuple[Path, bytes]:
        """A fresh copy of the image for each test to damage."""
        path = tmp_path / "image.img"
        shutil.copyfile(pristine[0], path)
        return path, pristine[1]

    def verify(self, path: Path, root: bytes, salt: bytes = SALT) -> VerityCheck:
        return verify_hash_tree(
            path,
            data_offset=B,
            data_blocks=self.blocks,
            hash_offset=(self.blocks + 1) * B,
            root=root,
            salt=salt,
        )

    def veritysetup_accepts(self, path: Path, root: bytes) -> bool:
        # veritysetup sees the image as Citadel's loop device did: after the 4096-byte header.
        plain = path.with_suffix(".plain")
        with path.open("rb") as source, plain.open("wb") as target:
            source.seek(B)
            shutil.copyfileobj(source, target)
        return veritysetup_verify(plain, self.blocks, root, self.blocks * B)

    def level_offset(self, level: int) -> int:
        # Top level first: level 2 (1 block), level 1 (2 blocks), level 0 (129 blocks).
        return (self.blocks + 1) * B + B * {2: 1, 1: 2, 0: 4}[level]

    def test_good(self, image: tuple[Path, bytes]) -> None:
        path, root = image
        check = self.verify(path, root)
        assert check.ok
        assert check.message == "16385 data blocks and 132 hash blocks match the root hash"
        assert check.area is None
        assert self.veritysetup_accepts(path, root)

    @pytest.mark.parametrize("block", [0, 1023, 1024, 5000, 16384])
    def test_names_a_corrupt_data_block(self, image: tuple[Path, bytes], block: int) -> None:
        path, root = image
        flip(path, B + block * B + 1234)
        check = self.verify(path, root)
        assert not check.ok
        assert (check.area, check.block, check.level) == ("data", block, None)
        assert check.offset == B + block * B
        assert check.message == (
            f"data block {block} (offset {B + block * B}) does not match its digest in hash level 0"
        )
        assert not self.veritysetup_accepts(path, root)

    def test_names_the_first_of_several_corrupt_data_blocks(
        self, image: tuple[Path, bytes]
    ) -> None:
        path, root = image
        for block in (16000, 3000, 2999, 9000):
            flip(path, B + block * B + 17, 0x80)
        check = self.verify(path, root)
        assert (check.area, check.block) == ("data", 2999)

    @pytest.mark.parametrize(
        ("level", "block", "expected"),
        [
            (
                0,
                0,
                "hash block 0 of level 0 (offset {offset}) does not match its digest in level 1",
            ),
            (0, 128, "hash block 128 of level 0"),
            (
                1,
                1,
                "hash block 1 of level 1 (offset {offset}) does not match its digest in level 2",
            ),
            (2, 0, "hash block 0 of level 2 (the top) (offset {offset}) does not match the root"),
        ],
    )
    def test_names_a_corrupt_hash_block(
        self, image: tuple[Path, bytes], level: int, block: int, expected: str
    ) -> None:
        path, root = image
        offset = self.level_offset(level) + block * B
        flip(path, offset + 5)
        # A corrupt hash block is reported, not the thousands of data blocks below it.
        check = self.verify(path, root)
        assert (check.area, check.level, check.block, check.offset) == (
            "hash",
            level,
            block,
            offset,
        )
        assert expected.format(offset=offset) in check.message
        assert not self.veritysetup_accepts(path, root)

    def test_wrong_root(self, image: tuple[Path, bytes]) -> None:
        path, _ = image
        check = self.verify(path, bytes(32))
        assert (check.area, check.level, check.block) == ("hash", 2, 0)
        assert "does not match the root hash" in check.message

    def test_spare_area_must_be_zero(self, image: tuple[Path, bytes]) -> None:
        # Level 0 holds 16385 digests: its last block uses 32 bytes, the rest must be zero.
        # Rebuild the levels above it by hand so that every digest matches: only the zero
        # check can tell.
        path, _ = image
        image_bytes = bytearray(path.read_bytes())
        image_bytes[self.level_offset(0) + 128 * B + 100] = 1

        def hash_blocks(area: bytes, blocks: int) -> bytes:
            digests = b"".join(
                hashlib.sha256(SALT + area[i : i + B]).digest() for i in range(0, len(area), B)
            )
            return digests.ljust(blocks * B, b"\0")

        level0 = bytes(image_bytes[self.level_offset(0) : self.level_offset(0) + 129 * B])
        level1 = hash_blocks(level0, 2)
        level2 = hash_blocks(level1, 1)
        image_bytes[self.level_offset(1) : self.level_offset(1) + 2 * B] = level1
        image_bytes[self.level_offset(2) : self.level_offset(2) + B] = level2
        path.write_bytes(image_bytes)
        root = hashlib.sha256(SALT + level2).digest()
        check = self.verify(path, root)
        assert (check.area, check.level, check.block) == ("hash", 0, 128)
        assert "has non-zero bytes after its last digest" in check.message
        assert not self.veritysetup_accepts(path, root)

    @pytest.mark.parametrize(
        ("position", "expected"),
        [
            (0, "superblock: wrong signature b'werity\\x00\\x00'"),
            (72, "superblock: data blocks is 16384, expected 16385"),
            (88, "superblock: its salt differs from the expected salt"),
            (32, "superblock: algorithm is rha256, expected sha256"),
        ],
    )
    def test_names_a_bad_superblock(
        self, image: tuple[Path, bytes], position: int, expected: str
    ) -> None:
        path, root = image
        flip(path, (self.blocks + 1) * B + position)
        check = self.verify(path, root)
        assert check.area == "superblock"
        assert check.message.startswith(expected)

    def test_other_salt(self, image: tuple[Path, bytes]) -> None:
        path, root = image
        check = self.verify(path, root, salt=bytes(32))
        assert check.message == "superblock: its salt differs from the expected salt"

    def test_truncated(self, image: tuple[Path, bytes]) -> None:
        path, root = image
        size = path.stat().st_size
        os.truncate(path, size - 1)
        check = self.verify(path, root)
        assert (check.ok, check.area) == (False, "file")
        assert check.message == f"the file is {size - 1} bytes, the data and hash area need {size}"


def test_refuses_impossible_parameters(tmp_path: Path) -> None:
    path, blocks, hash_offset = our_image(tmp_path, random_data(10, 3))

    def refused(**changes: object) -> str:
        arguments: dict[str, object] = {
            "data_offset": B,
            "data_blocks": blocks,
            "hash_offset": hash_offset,
            "salt": SALT,
        }
        arguments.update(changes)
        with pytest.raises(InvalidInput) as caught:
            format_hash_tree(path, **arguments)  # type: ignore[arg-type]
        return str(caught.value)

    assert refused(data_blocks=0) == "dm-verity: data blocks must be a positive integer, not 0"
    assert "data offset 100 is not a non-negative multiple of 4096" in refused(data_offset=100)
    assert "hash offset -4096 is not" in refused(hash_offset=-B)
    assert "salt is 257 bytes, at most 256" in refused(salt=bytes(257))
    assert "a uuid is 16 bytes, not 3" in refused(uuid=b"abc")
    assert "threads must be at least 1" in refused(threads=0)
    assert "hash area (8192-16384) overlaps the data (4096-45056)" in refused(hash_offset=2 * B)
    assert f"{path}: 45056 bytes, too short for 20 data blocks at offset 4096" == refused(
        data_blocks=20, hash_offset=21 * B
    )
    with pytest.raises(InvalidInput, match="a root hash is 32 bytes, not 31"):
        verify_hash_tree(
            path,
            data_offset=B,
            data_blocks=blocks,
            hash_offset=hash_offset,
            root=bytes(31),
            salt=SALT,
        )


def test_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    from realms.errors import RealmsError

    with pytest.raises(RealmsError, match=r"^cannot open .*missing\.img: No such file"):
        format_hash_tree(
            tmp_path / "missing.img", data_offset=0, data_blocks=1, hash_offset=B, salt=SALT
        )


MEMORY_PROBE = """
import resource, sys
from pathlib import Path
from realms.image.verity import format_hash_tree
path, blocks = Path(sys.argv[1]), int(sys.argv[2])
format_hash_tree(path, data_offset=0, data_blocks=blocks, hash_offset=blocks * 4096, salt=bytes(32))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_does_not_grow_with_the_image(tmp_path: Path) -> None:
    def peak_kib(size: int) -> int:
        path = tmp_path / f"sparse-{size}.img"
        with path.open("wb") as file:
            file.truncate(size)  # sparse: zeros read fast
        output = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, path, str(size // B)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return int(output)

    small, large = peak_kib(16 << 20), peak_kib(1 << 30)
    # Holding the data would cost 1 GiB; holding level 0 alone 8 MiB.
    assert large - small < 6 * 1024, (small, large)
