"""The dm-verity hash tree of a sealed image, computed and checked in Python.

What :func:`format_hash_tree` writes is byte for byte what ``veritysetup format`` (cryptsetup,
format 1) writes for the same salt and uuid, so the kernel's dm-verity target, ``veritysetup
open`` and ``veritysetup verify`` all accept it. The fixed parameters are Citadel's (and
veritysetup's defaults): sha256, 4096-byte data and hash blocks, a salt prepended to every
hashed block (each digest is ``sha256(salt || block)``), a 512-byte superblock.

The hash area, at ``hash_offset`` in the file::

    block 0            the superblock (512 bytes, then zeros up to 4096)
    level top          one hash block: the digests of the blocks of the level below
    ...
    level 1            digests of the blocks of level 0
    level 0            digests of the data blocks

Levels are numbered as the kernel numbers them, 0 being the digests of the data blocks, but
stored top level first. A hash block holds 128 digests; the last block of a level is padded with
zeros. Levels are added while the level below has more than one block, so a single data block
has no hash blocks at all and the root hash is that block's own digest. Otherwise the root hash
is ``sha256(salt || top hash block)``.

``data_offset`` and ``hash_offset`` are absolute offsets in the file, both multiples of 4096:
an image has a 4096-byte header before its data, and dm-verity sees the file through a loop
device that starts after that header, where the hash area must be block-aligned as well.

Hashing streams: data is read in chunks of 1024 blocks into per-thread buffers, each chunk's
digests are written (or compared) at once, and only a few chunks are in flight, so memory does
not grow with the image. Chunks are hashed on several threads: hashlib releases the GIL while it
hashes a 4096-byte block.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import struct
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from realms.errors import InvalidInput, RealmsError
from realms.image import header

BLOCK_SIZE = header.BLOCK_SIZE

DIGEST_SIZE = 32
HASHES_PER_BLOCK = BLOCK_SIZE // DIGEST_SIZE
SUPERBLOCK_SIZE = 512
MAX_SALT_SIZE = 256
ALGORITHM = "sha256"
SIGNATURE = b"verity\0\0"
HASH_TYPE = 1  # format 1: the salt is prepended, digests padded to a power of two

# Blocks hashed per task: large enough that Python's per-task cost vanishes, a multiple of
# HASHES_PER_BLOCK so that every task writes whole hash blocks.
_CHUNK_BLOCKS = 1024
assert _CHUNK_BLOCKS % HASHES_PER_BLOCK == 0

# signature, version, hash type, uuid, algorithm, data block size, hash block size,
# data blocks, salt size, padding, salt, padding: 512 bytes, little-endian.
_SUPERBLOCK = struct.Struct("<8sII16s32sIIQH6s256s168s")
assert _SUPERBLOCK.size == SUPERBLOCK_SIZE

T = TypeVar("T")
R = TypeVar("R")

Area = Literal["file", "superblock", "hash", "data"]


def hash_levels(data_blocks: int) -> list[int]:
    """The number of hash blocks of each level, level 0 (over the data) first."""
    levels = []
    count = data_blocks
    while count > 1:
        count = -(-count // HASHES_PER_BLOCK)
        levels.append(count)
    return levels


def hash_area_size(data_blocks: int) -> int:
    """Bytes of the hash area (superblock block and all hash levels) for ``data_blocks``."""
    return BLOCK_SIZE * (1 + sum(hash_levels(data_blocks)))


def superblock(*, data_blocks: int, salt: bytes, uuid: bytes) -> bytes:
    """The 512-byte verity superblock veritysetup writes for these parameters."""
    return _SUPERBLOCK.pack(
        SIGNATURE,
        1,
        HASH_TYPE,
        uuid,
        ALGORITHM.encode(),
        BLOCK_SIZE,
        BLOCK_SIZE,
        data_blocks,
        len(salt),
        b"",
        salt,
        b"",
    )


@dataclass(frozen=True)
class VerityCheck:
    """The outcome of :func:`verify_hash_tree`: ok, or the first bad area and block.

    ``level`` is set for hash blocks (0 = the digests of the data blocks); ``block`` is the
    block's index in its level or in the data area; ``offset`` its byte offset in the file.
    """

    ok: bool
    message: str
    area: Area | None = None
    level: int | None = None
    block: int | None = None
    offset: int | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class _Layout:
    data_offset: int
    data_blocks: int
    hash_offset: int
    levels: tuple[int, ...]

    @property
    def data_end(self) -> int:
        return self.data_offset + self.data_blocks * BLOCK_SIZE

    @property
    def hash_end(self) -> int:
        return self.hash_offset + BLOCK_SIZE * (1 + sum(self.levels))

    def level_offset(self, level: int) -> int:
        """Where a level starts: after the superblock block and every level above it."""
        return self.hash_offset + BLOCK_SIZE * (1 + sum(self.levels[level + 1 :]))

    def entries(self, level: int) -> int:
        """How many digests a level holds: one per block of the level below (or the data)."""
        return self.data_blocks if level == 0 else self.levels[level - 1]

    def below(self, level: int) -> tuple[int, int]:
        """Offset and block count of what a level's digests cover."""
        if level == 0:
            return self.data_offset, self.data_blocks
        return self.level_offset(level - 1), self.levels[level - 1]


def _layout(data_offset: int, data_blocks: int, hash_offset: int, salt: bytes) -> _Layout:
    if isinstance(data_blocks, bool) or not isinstance(data_blocks, int) or data_blocks < 1:
        raise InvalidInput(f"dm-verity: data blocks must be a positive integer, not {data_blocks}")
    for name, offset in (("data offset", data_offset), ("hash offset", hash_offset)):
        if offset < 0 or offset % BLOCK_SIZE:
            raise InvalidInput(
                f"dm-verity: {name} {offset} is not a non-negative multiple of {BLOCK_SIZE}"
            )
    if len(salt) > MAX_SALT_SIZE:
        raise InvalidInput(f"dm-verity: salt is {len(salt)} bytes, at most {MAX_SALT_SIZE}")
    layout = _Layout(data_offset, data_blocks, hash_offset, tuple(hash_levels(data_blocks)))
    if layout.hash_offset < layout.data_end and layout.data_offset < layout.hash_end:
        raise InvalidInput(
            f"dm-verity: the hash area ({layout.hash_offset}-{layout.hash_end}) overlaps "
            f"the data ({layout.data_offset}-{layout.data_end})"
        )
    return layout


class _Hasher:
    """Salted sha256 of runs of blocks, a chunk per task, on a pool of threads."""

    def __init__(
        self, path: Path, fd: int, salt: bytes, pool: ThreadPoolExecutor, threads: int
    ) -> None:
        self.path = path
        self.fd = fd
        self.salt = salt
        # The hash state after the salt: each block's digest starts from a copy of it.
        self.salted = hashlib.sha256(salt)
        self.pool = pool
        self.window = 2 * threads
        self.local = threading.local()

    def read(self, offset: int, size: int) -> memoryview:
        """``size`` bytes at ``offset`` into this thread's buffer (valid until its next read)."""
        buffer: bytearray | None = getattr(self.local, "buffer", None)
        if buffer is None or len(buffer) < size:
            buffer = self.local.buffer = bytearray(size)
        view = memoryview(buffer)[:size]
        done = 0
        while done < size:
            count = os.preadv(self.fd, [view[done:]], offset + done)
            if count == 0:
                raise InvalidInput(f"{self.path}: the file ends at {offset + done}, too early")
            done += count
        return view

    def digests(self, offset: int, count: int) -> bytes:
        """The salted digests of ``count`` blocks at ``offset``, concatenated."""
        view = self.read(offset, count * BLOCK_SIZE)
        # A copy of the salted state, updated with the block in place, costs about 15 % less
        # CPU than sha256(salt + block): no new OpenSSL context and no 4 KiB copy per block.
        # update() releases the GIL while it hashes the 4096 bytes.
        start_from = self.salted.copy
        digests = []
        for start in range(0, len(view), BLOCK_SIZE):
            block = start_from()
            block.update(view[start : start + BLOCK_SIZE])
            digests.append(block.digest())
        return b"".join(digests)

    def run(
        self, task: Callable[[T], R], items: Iterable[T], stop: Callable[[R], bool]
    ) -> R | None:
        """Run ``task`` over ``items`` in order, a few at a time; the first result for which
        ``stop`` is true ends the run early (later items are not started) and is returned.
        """
        pending: collections.deque[Future[R]] = collections.deque()
        try:
            for item in items:
                if len(pending) >= self.window:
                    result = pending.popleft().result()
                    if stop(result):
                        return result
                pending.append(self.pool.submit(task, item))
            while pending:
                result = pending.popleft().result()
                if stop(result):
                    return result
            return None
        finally:
            for future in pending:
                future.cancel()


def format_hash_tree(
    path: Path,
    *,
    data_offset: int,
    data_blocks: int,
    hash_offset: int,
    salt: bytes,
    uuid: bytes | None = None,
    threads: int = 2,
) -> bytes:
    """Write the superblock and hash tree of the data into ``path`` at ``hash_offset``; return
    the root hash.

    The data is ``data_blocks`` blocks of 4096 bytes at ``data_offset``. ``uuid`` (16 bytes) goes
    into the superblock; a random one is made when it is not given, as veritysetup does. The file
    grows when the hash area ends past its end. Nothing is synced: the caller that completes the
    image (writes its header) syncs the whole file before using it.
    """
    layout = _layout(data_offset, data_blocks, hash_offset, salt)
    if uuid is None:
        import uuid as uuidlib  # here: importing uuid (and platform) costs every start-up

        uuid = uuidlib.uuid4().bytes
    if len(uuid) != 16:
        raise InvalidInput(f"dm-verity: a uuid is 16 bytes, not {len(uuid)}")
    if threads < 1:
        raise InvalidInput(f"dm-verity: threads must be at least 1, not {threads}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        raise _os_error(path, "cannot open", error) from None
    try:
        size = os.fstat(fd).st_size
        if size < layout.data_end:
            raise InvalidInput(
                f"{path}: {size} bytes, too short for {data_blocks} data blocks "
                f"at offset {data_offset}"
            )
        with ThreadPoolExecutor(threads, thread_name_prefix="verity") as pool:
            hasher = _Hasher(path, fd, salt, pool, threads)
            for level in range(len(layout.levels)):
                _write_level(hasher, layout, level)
        if layout.levels:
            top = hasher.read(layout.level_offset(len(layout.levels) - 1), BLOCK_SIZE)
        else:
            top = hasher.read(layout.data_offset, BLOCK_SIZE)
        root = hashlib.sha256(salt + top).digest()
        block = superblock(data_blocks=data_blocks, salt=salt, uuid=uuid)
        _write(fd, block + bytes(BLOCK_SIZE - SUPERBLOCK_SIZE), layout.hash_offset)
        return root
    except OSError as error:
        raise _os_error(path, "cannot write the dm-verity hash tree to", error) from None
    finally:
        os.close(fd)


def _write_level(hasher: _Hasher, layout: _Layout, level: int) -> None:
    source, count = layout.below(level)
    target = layout.level_offset(level)

    def task(first: int) -> bool:
        digests = hasher.digests(source + first * BLOCK_SIZE, min(_CHUNK_BLOCKS, count - first))
        padding = -len(digests) % BLOCK_SIZE
        _write(hasher.fd, digests + bytes(padding), target + first * DIGEST_SIZE)
        return False

    hasher.run(task, range(0, count, _CHUNK_BLOCKS), stop=bool)


def _write(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def verify_hash_tree(
    path: Path,
    *,
    data_offset: int,
    data_blocks: int,
    hash_offset: int,
    root: bytes,
    salt: bytes,
    threads: int = 2,
) -> VerityCheck:
    """Check the superblock, every hash block and every data block against ``root``.

    Checks run top-down (superblock, the top level against the root hash, each level against
    the level above, the data against level 0), so the result names the first bad block: the
    one the kernel would report, not the thousands of blocks below a bad hash block. As
    veritysetup does, the unused tail of each level must be zero. InvalidInput only for
    impossible parameters; a damaged or truncated file is a failed check.
    """
    layout = _layout(data_offset, data_blocks, hash_offset, salt)
    if len(root) != DIGEST_SIZE:
        raise InvalidInput(f"dm-verity: a root hash is {DIGEST_SIZE} bytes, not {len(root)}")
    if threads < 1:
        raise InvalidInput(f"dm-verity: threads must be at least 1, not {threads}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise _os_error(path, "cannot open", error) from None
    try:
        size = os.fstat(fd).st_size
        needed = max(layout.data_end, layout.hash_end)
        if size < needed:
            return VerityCheck(
                False, f"the file is {size} bytes, the data and hash area need {needed}", "file"
            )
        with ThreadPoolExecutor(threads, thread_name_prefix="verity") as pool:
            return _verify(_Hasher(path, fd, salt, pool, threads), layout, root)
    except OSError as error:
        raise _os_error(path, "cannot read", error) from None
    finally:
        os.close(fd)


def _verify(hasher: _Hasher, layout: _Layout, root: bytes) -> VerityCheck:
    problem = _check_superblock(hasher.read(layout.hash_offset, SUPERBLOCK_SIZE), layout, hasher)
    if problem:
        return VerityCheck(False, f"superblock: {problem}", "superblock", offset=layout.hash_offset)
    levels = len(layout.levels)
    # The top: one hash block (or, without hash levels, the only data block) against the root.
    top_offset = layout.level_offset(levels - 1) if levels else layout.data_offset
    if hashlib.sha256(hasher.salt + hasher.read(top_offset, BLOCK_SIZE)).digest() != root:
        if not levels:
            return _bad_data(layout, 0, "the root hash")
        return _bad_hash(layout, levels - 1, 0, "does not match the root hash")
    for level in reversed(range(levels)):
        spare = _check_spare(hasher, layout, level)
        if spare:
            return spare
        bad = _first_mismatch(hasher, layout, level)
        if bad is not None:
            if level == 0:
                return _bad_data(layout, bad, "its digest in hash level 0")
            return _bad_hash(layout, level - 1, bad, f"does not match its digest in level {level}")
    return VerityCheck(
        True,
        f"{_count(layout.data_blocks, 'data block')} and "
        f"{_count(sum(layout.levels), 'hash block')} match the root hash",
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _check_superblock(block: memoryview, layout: _Layout, hasher: _Hasher) -> str | None:
    fields = _SUPERBLOCK.unpack(block)
    signature, version, hash_type, _uuid, algorithm = fields[:5]
    data_block_size, hash_block_size, data_blocks, salt_size, _pad, salt = fields[5:11]
    if signature != SIGNATURE:
        return f"wrong signature {signature!r} (expected {SIGNATURE!r})"
    expected: list[tuple[str, object, object]] = [
        ("version", version, 1),
        ("hash type", hash_type, HASH_TYPE),
        ("algorithm", algorithm.rstrip(b"\0").decode(errors="replace"), ALGORITHM),
        ("data block size", data_block_size, BLOCK_SIZE),
        ("hash block size", hash_block_size, BLOCK_SIZE),
        ("data blocks", data_blocks, layout.data_blocks),
        ("salt size", salt_size, len(hasher.salt)),
    ]
    for name, found, wanted in expected:
        if found != wanted:
            return f"{name} is {found}, expected {wanted}"
    if salt[:salt_size] != hasher.salt:
        return "its salt differs from the expected salt"
    return None


def _check_spare(hasher: _Hasher, layout: _Layout, level: int) -> VerityCheck | None:
    """The unused tail of a level's last hash block must be zero."""
    used = layout.entries(level) * DIGEST_SIZE
    blocks = layout.levels[level]
    tail = blocks * BLOCK_SIZE - used
    if tail and any(hasher.read(layout.level_offset(level) + used, tail)):
        return _bad_hash(layout, level, blocks - 1, "has non-zero bytes after its last digest")
    return None


def _first_mismatch(hasher: _Hasher, layout: _Layout, level: int) -> int | None:
    """The first block below ``level`` whose digest differs from the one stored in it."""
    source, count = layout.below(level)
    stored = layout.level_offset(level)

    def task(first: int) -> int | None:
        blocks = min(_CHUNK_BLOCKS, count - first)
        computed = hasher.digests(source + first * BLOCK_SIZE, blocks)
        expected = bytes(hasher.read(stored + first * DIGEST_SIZE, blocks * DIGEST_SIZE))
        if computed == expected:
            return None
        for index in range(blocks):
            start = index * DIGEST_SIZE
            if computed[start : start + DIGEST_SIZE] != expected[start : start + DIGEST_SIZE]:
                return first + index
        return None  # pragma: no cover - unequal strings differ somewhere

    return hasher.run(task, range(0, count, _CHUNK_BLOCKS), stop=lambda bad: bad is not None)


def _bad_data(layout: _Layout, block: int, against: str) -> VerityCheck:
    offset = layout.data_offset + block * BLOCK_SIZE
    return VerityCheck(
        False,
        f"data block {block} (offset {offset}) does not match {against}",
        "data",
        block=block,
        offset=offset,
    )


def _bad_hash(layout: _Layout, level: int, block: int, problem: str) -> VerityCheck:
    offset = layout.level_offset(level) + block * BLOCK_SIZE
    top = " (the top)" if level == len(layout.levels) - 1 else ""
    return VerityCheck(
        False,
        f"hash block {block} of level {level}{top} (offset {offset}) {problem}",
        "hash",
        level=level,
        block=block,
        offset=offset,
    )


def _os_error(path: Path, doing: str, error: OSError) -> RealmsError:
    hint = "free some space" if error.errno == errno.ENOSPC else None
    return RealmsError(f"{doing} {path}: {error.strerror or error}", hint=hint)
