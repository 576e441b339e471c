"""RealmFS image files, Citadel's layout: sealing a tree into one, and checking one.

An image file is ``[4096-byte header][filesystem, nblocks x 4096 bytes][dm-verity hash area]``
(see :mod:`realms.image.header` and :mod:`realms.image.verity`). A *block* image has no hash
area and may be unsigned; a *sealed* image has the hash area, its salt and root hash in the
metainfo, and the metainfo signed with the channel's Ed25519 key, so that no byte of it can
change unnoticed: a byte of the data or the hash area fails the hash tree, a byte of the
metainfo or the signature fails the signature, and every other byte of the header is checked
to be what it must be.

Checks return named results (:class:`Check`) rather than raising, so that ``realms appimg
verify`` can show each one; :func:`require` turns a failed one into an error.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from realms import log
from realms.errors import InvalidInput
from realms.image import filesystem, keys
from realms.image.header import (
    FLAG_HASH_TREE,
    HEADER_SIZE,
    PREFIX_SIZE,
    SIGNATURE_SIZE,
    Header,
    build_header,
    data_size,
    parse_header,
    render_metainfo,
)
from realms.image.verity import format_hash_tree, hash_area_size, verify_hash_tree
from realms.kinds import ImageKind
from realms.system.fs import fsync_dir
from realms.units import now

IMAGE_TYPE = "realmfs"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class SealedImage:
    header: Header
    nblocks: int
    filesystem: str
    size: int


def _copy_into(source: Path, target_fd: int, offset: int) -> None:
    """Copy ``source`` into the open file at ``offset``: a reflink where the filesystem can
    share extents (btrfs), a copy otherwise."""
    size = source.stat().st_size
    with open(source, "rb") as handle:
        copied = 0
        while copied < size:
            count = os.copy_file_range(
                handle.fileno(), target_fd, size - copied, copied, offset + copied
            )
            if count == 0:
                raise OSError(f"{source}: copy stopped at {copied} of {size} bytes")
            copied += count


def seal_tree(
    tree: Path,
    target: Path,
    *,
    scratch: Path,
    name: str,
    version: int,
    fs: str,
    channel: str | None,
    seed: bytes | None,
    verity: bool,
    salt: bytes | None = None,
) -> SealedImage:
    """Make the image file ``target`` from ``tree``: the filesystem, then the hash tree (if
    ``verity``), then the header, signed with ``seed`` if given.

    With ``salt`` (32 bytes; default: random) the image is the same for the same tree, name,
    version and key: the filesystem's and the hash tree's UUIDs are derived from the salt, and
    its times (the metainfo's timestamp, the filesystem's) are the newest mtime in the tree.
    """
    fixed = verity_uuid = None
    timestamp = now()
    if salt is not None:
        fixed = filesystem.Fixed(
            uuid=_derived_uuid(salt, b"filesystem"),
            hash_seed=_derived_uuid(salt, b"ext4 hash seed"),
            time=filesystem.newest_mtime(tree),
        )
        verity_uuid = bytes.fromhex(_derived_uuid(salt, b"dm-verity").replace("-", ""))
        timestamp = _iso(fixed.time)
    data_file = scratch / "filesystem.img"
    with log.step(f"Making the {fs} filesystem"):
        nblocks = filesystem.make(fs, tree, data_file, name, fixed)
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, HEADER_SIZE)
        _copy_into(data_file, fd, HEADER_SIZE)
        data_file.unlink()
        hash_offset = HEADER_SIZE + data_size(nblocks)
        root = shasum = None
        if verity:
            salt = salt or os.urandom(32)  # secrets.token_bytes, without importing secrets
            with log.step(f"Computing the dm-verity hash tree of {nblocks} blocks"):
                root = format_hash_tree(
                    target,
                    data_offset=HEADER_SIZE,
                    data_blocks=nblocks,
                    hash_offset=hash_offset,
                    salt=salt,
                    uuid=verity_uuid,
                )
        else:
            with log.step("Computing the checksum of the data"):
                shasum = _sha256(fd, HEADER_SIZE, data_size(nblocks))
        metainfo = render_metainfo(
            image_type=IMAGE_TYPE,
            realmfs_name=name,
            nblocks=nblocks,
            channel=channel,
            version=version,
            timestamp=timestamp,
            shasum=shasum,
            verity_salt=salt if verity else None,
            verity_root=root,
        )
        signature = keys.sign(seed, metainfo) if seed is not None else None
        header = build_header(metainfo, signature, flags=FLAG_HASH_TREE if verity else 0)
        os.pwrite(fd, header, 0)
        os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    fsync_dir(target.parent)
    return SealedImage(parse_header(header), nblocks, fs, size)


def _iso(seconds: int) -> str:
    """``seconds`` since the epoch as :func:`realms.units.now` writes a time."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _derived_uuid(salt: bytes, purpose: bytes) -> str:
    """A UUID (version 4 form) that only ``salt`` and ``purpose`` decide."""
    raw = bytearray(hashlib.sha256(b"realms " + purpose + b"\0" + salt).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _sha256(fd: int, offset: int, length: int) -> str:
    digest = hashlib.sha256()
    done = 0
    while done < length:
        chunk = os.pread(fd, min(_CHUNK, length - done), offset + done)
        if not chunk:
            break
        digest.update(chunk)
        done += len(chunk)
    return digest.hexdigest()


def read_header(path: Path) -> tuple[Header, bytes]:
    """The parsed header of an image file and its raw 4096 bytes (InvalidInput if bad)."""
    with open(path, "rb") as handle:
        raw = handle.read(HEADER_SIZE)
    return parse_header(raw, source=str(path)), raw


def _check_header(header: Header, raw: bytes) -> Check:
    """Every byte of the header that the signature does not cover must be what it must be."""
    meta = header.metainfo
    if meta.image_type != IMAGE_TYPE:
        return Check("header", False, f"image-type is {meta.image_type!r}, not 'realmfs'")
    if meta.nblocks is None:
        return Check("header", False, "the metainfo has no nblocks")
    if meta.sealed and meta.verity_salt is None:
        # Checked here, before anything would hash the data with a salt that is not there.
        return Check("header", False, "the metainfo has a verity-root but no verity-salt")
    if header.status != 0:
        return Check("header", False, f"status byte is {header.status} (0 in a RealmFS image)")
    expected_flags = FLAG_HASH_TREE if meta.sealed else 0
    if header.flags != expected_flags:
        return Check(
            "header",
            False,
            f"flags are {header.flags:#04x}, the metainfo says {expected_flags:#04x}",
        )
    end = PREFIX_SIZE + len(meta.raw) + SIGNATURE_SIZE
    if any(raw[end:]):
        return Check("header", False, "bytes after the signature are not zero")
    kind = ImageKind.SEALED if meta.sealed else ImageKind.BLOCK
    return Check("header", True, f"{kind} image {meta.realmfs_name or '?'} v{meta.version}")


def _check_size(path: Path, header: Header) -> Check:
    nblocks = header.metainfo.nblocks or 0
    expected = HEADER_SIZE + data_size(nblocks)
    if header.metainfo.sealed:
        expected += hash_area_size(nblocks)
    actual = path.stat().st_size
    if actual != expected:
        return Check(
            "size",
            False,
            f"the file is {actual} bytes; nblocks = {nblocks} makes it {expected}",
        )
    return Check("size", True, f"{nblocks} blocks of data")


def _check_signature(header: Header, keyring: keys.Keyring) -> Check:
    meta = header.metainfo
    channel = meta.channel or ""
    if not header.signed:
        if meta.sealed:
            return Check("signature", False, "the image is sealed but not signed")
        return Check("signature", True, "unsigned (a block image)")
    trusted = keyring.trusted(channel)
    signer = keys.signed_by(meta.raw, header.signature, trusted)
    if signer is not None:
        return Check("signature", True, f"signed by {signer} (channel {channel})")
    revoked = keys.signed_by(meta.raw, header.signature, sorted(keyring.revoked()))
    if revoked is not None:
        return Check("signature", False, f"signed by the revoked key {revoked}")
    if not trusted:
        return Check(
            "signature",
            False,
            f"no trusted key for channel {channel!r} (trust one with 'realms key trust')",
        )
    return Check(
        "signature",
        False,
        f"the signature is not from a trusted key of channel {channel!r} (or the metainfo "
        "was changed)",
    )


def _check_data(path: Path, header: Header) -> Check:
    meta = header.metainfo
    nblocks = meta.nblocks or 0
    if meta.verity_root is not None:
        if meta.verity_salt is None:  # refused by _check_header already; never hashed
            return Check("verity", False, "the metainfo has no verity-salt")
        result = verify_hash_tree(
            path,
            data_offset=HEADER_SIZE,
            data_blocks=nblocks,
            hash_offset=HEADER_SIZE + data_size(nblocks),
            root=meta.verity_root,
            salt=meta.verity_salt,
        )
        return Check("verity", result.ok, result.message)
    if meta.shasum is None:
        return Check("checksum", True, "no checksum in the metainfo to compare")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        actual = _sha256(fd, HEADER_SIZE, data_size(nblocks))
    finally:
        os.close(fd)
    if actual != meta.shasum:
        return Check("checksum", False, f"the data's sha256 is {actual}, not {meta.shasum}")
    return Check("checksum", True, "the data's sha256 matches")


def _check_filesystem(path: Path) -> Check:
    found = filesystem.detect(path, HEADER_SIZE)
    if found is None:
        return Check("filesystem", False, "no ext4 or erofs filesystem after the header")
    return Check("filesystem", True, found)


def check_trust(path: Path, keyring: keys.Keyring) -> list[Check]:
    """The cheap checks of an image file, which read its 4096-byte header and nothing else:
    the header, the file's size, the signature against ``keyring``'s current trust. Stops at
    the first failed one. Realms on images run this at every use, so that a revoked key takes
    effect at once (the data is checked at activation)."""
    return _trust_checks(path, keyring)[0]


def _trust_checks(path: Path, keyring: keys.Keyring) -> tuple[list[Check], Header | None]:
    try:
        header, raw = read_header(path)
    except InvalidInput as error:
        return [Check("header", False, error.message.removeprefix(f"{path}: "))], None
    checks = [_check_header(header, raw)]
    if checks[-1].ok:
        checks.append(_check_size(path, header))
    if checks[-1].ok:
        checks.append(_check_signature(header, keyring))
    return checks, header


def verify_image(path: Path, keyring: keys.Keyring, *, data: bool = True) -> list[Check]:
    """Check an image file: header, size, signature, filesystem, and (with ``data``) every
    data and hash block. Stops at the first failed check that makes the rest meaningless: an
    unsigned or wrongly signed image is refused before a byte of its data is read."""
    # The header is read once: the data is checked against the very metainfo whose signature
    # was checked, even if someone rewrites the file meanwhile.
    checks, header = _trust_checks(path, keyring)
    if header is None or not all(check.ok for check in checks):
        return checks
    checks.append(_check_filesystem(path))
    if data:
        checks.append(_check_data(path, header))
    return checks


def require(checks: list[Check], what: str) -> None:
    """InvalidInput naming the first failed check, if any."""
    for check in checks:
        if not check.ok:
            raise InvalidInput(f"{what}: {check.name}: {check.detail}")
