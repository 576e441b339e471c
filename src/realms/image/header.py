"""Citadel's 4096-byte image header (offset 0 of an image file) and the metainfo it carries.

Layout, byte for byte::

    offset 0            magic b"SGOS"
    offset 4            status (1 byte; only meaningful for A/B root partitions)
    offset 5            flags (1 byte): FLAG_PREFER_BOOT, FLAG_HASH_TREE, FLAG_COMPRESSED
    offset 6            metainfo length, 16-bit big-endian, less than 4096 - (8 + 64)
    offset 8            metainfo: UTF-8 TOML
    offset 8 + length   signature: 64 bytes, Ed25519 over exactly the metainfo bytes
                        (64 zero bytes: unsigned)
    the rest            zero

:class:`Metainfo` keeps the metainfo bytes exactly as stored (``raw``) next to the parsed, typed
fields: a signature is always checked against ``raw``, never against re-serialized TOML. Every
malformed header or metainfo is refused with :class:`~realms.errors.InvalidInput` and a one-line
message that names what is wrong; nothing else escapes :func:`parse_header`.
"""

from __future__ import annotations

import re
import struct
import tomllib
from dataclasses import dataclass
from typing import Any

import tomli_w

from realms.errors import InvalidInput

HEADER_SIZE = 4096
BLOCK_SIZE = 4096
"""The block of an image's data (its filesystem) and of its dm-verity hash tree."""
MAGIC = b"SGOS"
SIGNATURE_SIZE = 64
#: Bytes before the metainfo: magic, status, flags, length.
PREFIX_SIZE = 8
#: The longest metainfo a header holds (the length must be < 4096 - (8 + 64)).
MAX_METAINFO = HEADER_SIZE - (PREFIX_SIZE + SIGNATURE_SIZE) - 1

FLAG_PREFER_BOOT = 0x01
FLAG_HASH_TREE = 0x02
FLAG_COMPRESSED = 0x04

UNSIGNED = bytes(SIGNATURE_SIZE)


def data_size(nblocks: int) -> int:
    """The bytes of an image's data (its filesystem) of ``nblocks`` blocks, which follow the
    header; the hash area, if any, follows them."""
    return nblocks * BLOCK_SIZE


# The order in which render_metainfo writes the keys (Citadel's order).
METAINFO_KEYS = (
    "image-type",
    "realmfs-name",
    "nblocks",
    "channel",
    "version",
    "timestamp",
    "shasum",
    "verity-salt",
    "verity-root",
    "realmfs-owner",
)

_PREFIX = struct.Struct(">4sBBH")
_HEX32 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Metainfo:
    """An image's metainfo: the bytes as stored and the fields parsed from them."""

    raw: bytes
    image_type: str
    realmfs_name: str | None = None
    nblocks: int | None = None
    channel: str | None = None
    version: int | None = None
    timestamp: str | None = None
    shasum: str | None = None
    verity_salt: bytes | None = None
    verity_root: bytes | None = None
    realmfs_owner: str | None = None

    @property
    def sealed(self) -> bool:
        """Whether the image is sealed: its metainfo names a dm-verity root hash."""
        return self.verity_root is not None


def render_metainfo(
    *,
    image_type: str,
    realmfs_name: str | None = None,
    nblocks: int | None = None,
    channel: str | None = None,
    version: int | None = None,
    timestamp: str | None = None,
    shasum: str | None = None,
    verity_salt: bytes | None = None,
    verity_root: bytes | None = None,
    realmfs_owner: str | None = None,
) -> bytes:
    """Metainfo TOML for these fields, keys in Citadel's order, salt and root in hex.

    The result is checked with :func:`parse_metainfo`, so an ill-typed field (``nblocks=0``, a
    salt that is not 32 bytes) is refused with InvalidInput here rather than in a reader later.
    """
    values: dict[str, Any] = {
        "image-type": image_type,
        "realmfs-name": realmfs_name,
        "nblocks": nblocks,
        "channel": channel,
        "version": version,
        "timestamp": timestamp,
        "shasum": shasum,
        "verity-salt": verity_salt.hex() if verity_salt is not None else None,
        "verity-root": verity_root.hex() if verity_root is not None else None,
        "realmfs-owner": realmfs_owner,
    }
    table = {key: values[key] for key in METAINFO_KEYS if values[key] is not None}
    raw = tomli_w.dumps(table).encode()
    parse_metainfo(raw)
    return raw


def parse_metainfo(raw: bytes, *, source: str = "metainfo") -> Metainfo:
    """Parse metainfo bytes; InvalidInput (prefixed with ``source``) when they are malformed.

    Unknown keys are ignored, as Citadel's reader ignored them.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(f"{source}: not UTF-8 (byte {error.start})") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput(f"{source}: not valid TOML: {error}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively: "a=[[[[..." 4000 deep.
        raise InvalidInput(f"{source}: not valid TOML: nested too deeply") from None
    if "image-type" not in table:
        raise InvalidInput(f"{source}: image-type is missing")
    image_type = _string(table, "image-type", source)
    if not image_type:
        raise InvalidInput(f"{source}: image-type is empty")
    return Metainfo(
        raw=bytes(raw),
        image_type=image_type,
        realmfs_name=_optional_string(table, "realmfs-name", source),
        nblocks=_integer(table, "nblocks", source, minimum=1, what="a positive integer"),
        channel=_optional_string(table, "channel", source),
        version=_integer(table, "version", source, minimum=0, what="a non-negative integer"),
        timestamp=_optional_string(table, "timestamp", source),
        shasum=_optional_sha256(table, "shasum", source),
        verity_salt=_hex32_bytes(table, "verity-salt", source),
        verity_root=_hex32_bytes(table, "verity-root", source),
        realmfs_owner=_optional_string(table, "realmfs-owner", source),
    )


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _string(table: dict[str, Any], key: str, source: str) -> str:
    value = table[key]
    if not isinstance(value, str):
        raise InvalidInput(f"{source}: {key} must be a string, not {_describe(value)}")
    return value


def _optional_string(table: dict[str, Any], key: str, source: str) -> str | None:
    return _string(table, key, source) if key in table else None


def _integer(
    table: dict[str, Any], key: str, source: str, *, minimum: int, what: str
) -> int | None:
    if key not in table:
        return None
    value = table[key]
    # TOML booleans are Python bools, which are ints: refuse them explicitly.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{source}: {key} must be {what}, not {_describe(value)}")
    return value


def _hex32(table: dict[str, Any], key: str, source: str, what: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise InvalidInput(f"{source}: {key} must be {what}, not {_describe(value)}")
    return value


def _optional_sha256(table: dict[str, Any], key: str, source: str) -> str | None:
    if key not in table:
        return None
    return _hex32(table, key, source, "a sha256 in hex (64 hex digits)").lower()


def _hex32_bytes(table: dict[str, Any], key: str, source: str) -> bytes | None:
    if key not in table:
        return None
    return bytes.fromhex(_hex32(table, key, source, "32 bytes in hex (64 hex digits)"))


@dataclass(frozen=True)
class Header:
    """A parsed image header."""

    status: int
    flags: int
    metainfo: Metainfo
    signature: bytes = UNSIGNED

    def __post_init__(self) -> None:
        _check_byte("status", self.status)
        _check_byte("flags", self.flags)
        _check_signature(self.signature)

    @property
    def signed(self) -> bool:
        """Whether the signature slot holds a signature (anything but 64 zero bytes)."""
        return self.signature != UNSIGNED

    def to_bytes(self) -> bytes:
        """The 4096 bytes of this header."""
        return build_header(
            self.metainfo.raw, signature=self.signature, flags=self.flags, status=self.status
        )


def build_header(
    metainfo_raw: bytes, signature: bytes | None = None, flags: int = 0, status: int = 0
) -> bytes:
    """The 4096-byte header for these metainfo bytes (stored exactly as given).

    InvalidInput when the metainfo is too long for the header or does not parse, or when the
    signature is not 64 bytes: a header that :func:`parse_header` would refuse is never written.
    """
    if len(metainfo_raw) > MAX_METAINFO:
        raise InvalidInput(
            f"metainfo is {len(metainfo_raw)} bytes, a header holds at most {MAX_METAINFO}"
        )
    parse_metainfo(metainfo_raw)
    signature = UNSIGNED if signature is None else signature
    _check_signature(signature)
    _check_byte("status", status)
    _check_byte("flags", flags)
    block = bytearray(HEADER_SIZE)
    _PREFIX.pack_into(block, 0, MAGIC, status, flags, len(metainfo_raw))
    end = PREFIX_SIZE + len(metainfo_raw)
    block[PREFIX_SIZE:end] = metainfo_raw
    block[end : end + SIGNATURE_SIZE] = signature
    return bytes(block)


def parse_header(block: bytes, *, source: str = "image header") -> Header:
    """Parse the first 4096 bytes of an image; InvalidInput (prefixed with ``source``) when the
    header or its metainfo is malformed.
    """
    if len(block) < HEADER_SIZE:
        raise InvalidInput(
            f"{source}: {len(block)} bytes, shorter than a {HEADER_SIZE}-byte header"
        )
    magic, status, flags, length = _PREFIX.unpack_from(block, 0)
    if magic != MAGIC:
        raise InvalidInput(f"{source}: wrong magic {magic!r} (expected {MAGIC!r})")
    if length > MAX_METAINFO:
        raise InvalidInput(
            f"{source}: metainfo length {length} runs past the header (at most {MAX_METAINFO})"
        )
    end = PREFIX_SIZE + length
    metainfo = parse_metainfo(bytes(block[PREFIX_SIZE:end]), source=f"{source}: metainfo")
    signature = bytes(block[end : end + SIGNATURE_SIZE])
    return Header(status=status, flags=flags, metainfo=metainfo, signature=signature)


def _check_byte(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise InvalidInput(f"header {name} must be a byte (0-255), not {_describe(value)}")


def _check_signature(signature: bytes) -> None:
    if len(signature) != SIGNATURE_SIZE:
        raise InvalidInput(f"a header signature is {SIGNATURE_SIZE} bytes, not {len(signature)}")
