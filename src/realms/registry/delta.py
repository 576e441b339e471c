"""Binary deltas between two image files of an appimg: made on push, applied on pull.

A sealed image's hash tree changes completely with every seal (a fresh random salt), so a delta
of the whole file costs about 1 % of the image for any change; a delta of the *data area*
alone costs about 0.25 %. A delta therefore carries the new image's header and the verity
superblock's uuid, and a zstd patch (``--patch-from``, the base image file as the reference)
of the new data area; whoever applies it recomputes the hash tree from the salt in the new
header (:mod:`realms.image.verity`) and puts the image together.

The delta blob, media type ``application/vnd.realms.delta.v1``::

    offset 0      magic b"realms-delta-v1\\0" (16 bytes)
    offset 16     sha256 of the base image file (32 bytes)
    offset 48     sha256 of the image the delta makes (32 bytes)
    offset 80     size of that image (8 bytes, big-endian)
    offset 88     uuid of its verity superblock (16 bytes; zeros for a block image)
    offset 104    its 4096-byte RealmFS header
    offset 4200   zstd frame(s): the new data area, with the base image file as the dictionary

Nothing in a delta is trusted: the result must have the digest the artifact names, and then it
is checked as any pulled image is (signature, every block). Applying is bounded: the output can
never grow past the size the new header implies (RLIMIT_FSIZE on zstd), and zstd gets a memory
limit.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import signal
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from realms.errors import CommandFailed, InvalidInput
from realms.image.header import HEADER_SIZE, data_size, parse_header
from realms.image.verity import format_hash_tree, hash_area_size
from realms.system.run import check_exit, popen

MAGIC = b"realms-delta-v1\0"
_PREFIX = struct.Struct(">16s32s32sQ16s")
PREFIX_SIZE = _PREFIX.size + HEADER_SIZE
"""Bytes of a delta before its zstd patch."""
LEVEL = 9
"""zstd's level for patches: measured on a 200 MB image with a 256 KiB change, -3 and -9 give
the same 285 KB patch (in 0.6 s and 2 s), -19 a larger one (424 KB, its optimal parser misses
long matches) in 62 s."""
WINDOW_LIMIT = 1 << 31
"""zstd's longest window (``--long=31``): the base image and the new data area must fit in it
together for the patch to reach every byte of the base."""
_UUID_OFFSET = 16
"""Where the uuid is in a verity superblock (after signature, version and hash type)."""
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DeltaInfo:
    """The fixed part of a delta (its first PREFIX_SIZE bytes), parsed."""

    base_digest: str
    target_digest: str
    target_size: int
    uuid: bytes
    header: bytes


def image_digest(path: Path) -> str:
    """``sha256:HEX`` of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _raw(digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64:
        raise InvalidInput(f"not a sha256 digest: {digest!r}")
    return bytes.fromhex(hexdigest)


def _layout(header_block: bytes, source: str) -> tuple[int, int, bool]:
    """Data blocks, image size and sealedness the header says (InvalidInput if it is bad)."""
    header = parse_header(header_block, source=source)
    nblocks = header.metainfo.nblocks
    if nblocks is None:
        raise InvalidInput(f"{source}: the metainfo has no nblocks")
    size = HEADER_SIZE + data_size(nblocks)
    if header.metainfo.sealed:
        size += hash_area_size(nblocks)
    return nblocks, size, header.metainfo.sealed


def fits(base_size: int, target_size: int) -> bool:
    """Whether a delta between images of these sizes fits zstd's longest window."""
    return base_size + target_size <= WINDOW_LIMIT


def make_delta(
    base: Path, target: Path, out: Path, *, scratch: Path, base_digest: str, target_digest: str
) -> int:
    """Write the delta that makes image file ``target`` from image file ``base`` to ``out``;
    return its size. ``scratch`` (on the same filesystem as ``target``, for reflinks) holds a
    copy of the target's data area while zstd reads it."""
    with open(target, "rb") as handle:
        header = handle.read(HEADER_SIZE)
        nblocks, size, sealed = _layout(header, str(target))
        uuid = bytes(16)
        if sealed:
            handle.seek(HEADER_SIZE + data_size(nblocks) + _UUID_OFFSET)
            uuid = handle.read(16)
    data = scratch / "delta-data"
    _copy_range(target, data, HEADER_SIZE, data_size(nblocks))
    try:
        prefix = _PREFIX.pack(MAGIC, _raw(base_digest), _raw(target_digest), size, uuid)
        argv: list[str | Path] = ["zstd", "-q", "-c", f"-{LEVEL}", "--long=31"]
        argv += [f"--patch-from={base}", "--", data]
        with open(out, "wb") as handle:
            handle.write(prefix + header)
            handle.flush()
            # zstd writes the patch after the prefix: the file is its stdout.
            process = popen(argv, stdout=handle, stderr=subprocess.PIPE)
            _, stderr = process.communicate()
        check_exit(argv, process.returncode, stderr)
    finally:
        data.unlink(missing_ok=True)
    return out.stat().st_size


def _copy_range(source: Path, target: Path, offset: int, length: int) -> None:
    """Copy ``length`` bytes of ``source`` from ``offset`` into a new file: reflinked on the
    same btrfs, copied across filesystems."""
    with open(source, "rb") as reader, open(target, "xb") as writer:
        done = 0
        while done < length:
            try:
                count = os.copy_file_range(
                    reader.fileno(), writer.fileno(), length - done, offset + done, done
                )
            except OSError as error:
                if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                chunk = os.pread(reader.fileno(), min(_CHUNK, length - done), offset + done)
                count = os.pwrite(writer.fileno(), chunk, done) if chunk else 0
            if count == 0:
                raise InvalidInput(f"{source}: ends before its data area does")
            done += count


def read_info(delta: Path) -> DeltaInfo:
    """The fixed part of a delta; InvalidInput when it is not one."""
    with open(delta, "rb") as handle:
        raw = handle.read(PREFIX_SIZE)
    if len(raw) < PREFIX_SIZE or not raw.startswith(MAGIC):
        raise InvalidInput("not a realms delta (no magic, or shorter than its header)")
    _magic, base, target, size, uuid = _PREFIX.unpack_from(raw)
    return DeltaInfo(
        f"sha256:{base.hex()}", f"sha256:{target.hex()}", size, uuid, raw[_PREFIX.size :]
    )


def apply_delta(
    delta: Path, base: Path, out: Path, *, base_digest: str, target_digest: str
) -> None:
    """Make the image file ``out`` (new) from ``delta`` and ``base``, whose digest is
    ``base_digest``; InvalidInput (or CommandFailed) when the delta is not for this base, is
    damaged, or does not make an image with digest ``target_digest``. The caller still checks
    the result as any pulled image (signature, every block)."""
    info = read_info(delta)
    if info.base_digest != base_digest:
        raise InvalidInput(f"the delta applies to {info.base_digest}, not to {base_digest}")
    if info.target_digest != target_digest:
        raise InvalidInput(f"the delta makes {info.target_digest}, not {target_digest}")
    nblocks, size, sealed = _layout(info.header, "the delta's image header")
    if size != info.target_size:
        raise InvalidInput(f"the delta says {info.target_size} bytes, its header {size}")
    data_end = HEADER_SIZE + data_size(nblocks)
    base_size = base.stat().st_size
    if not fits(base_size, data_end):
        raise InvalidInput(f"the delta needs a window over {WINDOW_LIMIT} bytes")
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.lseek(fd, HEADER_SIZE, os.SEEK_SET)
        try:
            _unpatch(delta, base, fd, limit=data_end, memory=base_size + data_end)
        except InvalidInput as error:
            raise InvalidInput(f"the delta does not apply: {error.message}") from None
        if os.fstat(fd).st_size != data_end:
            raise InvalidInput("the delta's data area is shorter than its header says")
        header = parse_header(info.header)
        if sealed:
            meta = header.metainfo
            assert meta.verity_salt is not None  # a sealed header has both (parse_header)
            root = format_hash_tree(
                out,
                data_offset=HEADER_SIZE,
                data_blocks=nblocks,
                hash_offset=data_end,
                salt=meta.verity_salt,
                uuid=info.uuid,
            )
            if root != meta.verity_root:
                raise InvalidInput("the delta's data does not match its image's root hash")
        os.pwrite(fd, info.header, 0)
    finally:
        os.close(fd)
    if (made := image_digest(out)) != target_digest:
        raise InvalidInput(f"the delta made {made}, not {target_digest}")


def _unpatch(delta: Path, base: Path, fd: int, *, limit: int, memory: int) -> None:
    """Write the data area the patch in ``delta`` makes from ``base`` to ``fd``."""
    megabytes = min(memory, WINDOW_LIMIT) // (1 << 20) + 1
    options = ["--long=31", f"--memory={megabytes}MB", f"--patch-from={base}"]
    unzstd(delta, fd, limit=limit, options=options, skip=PREFIX_SIZE)


def unzstd(source: Path, fd: int, *, limit: int, options: Sequence[str], skip: int = 0) -> None:
    """Decompress ``source`` (from byte ``skip``) with zstd into the open file ``fd`` at its
    position; InvalidInput when zstd fails, or would make the file larger than ``limit``
    (RLIMIT_FSIZE: zstd dies of SIGXFSZ before a zstd bomb fills the disk)."""

    def bound() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    argv = ["zstd", "-q", "-d", "-c", *options]
    with open(source, "rb") as compressed:
        compressed.seek(skip)
        process = popen(argv, stdin=compressed, stdout=fd, stderr=subprocess.PIPE, setup=bound)
        _, stderr = process.communicate()
    if process.returncode == -signal.SIGXFSZ:
        raise InvalidInput(f"it decompresses to more than the {limit} bytes it should")
    try:
        check_exit(argv, process.returncode, stderr)
    except CommandFailed as error:
        raise InvalidInput(f"it does not decompress: {error.message}") from None
