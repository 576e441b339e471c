"""The SGOS image header and its metainfo: byte layout, round trips, every refusal, and fuzzing
that proves parse_header never fails with anything but InvalidInput.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realms.errors import InvalidInput
from realms.image.header import (
    FLAG_COMPRESSED,
    FLAG_HASH_TREE,
    FLAG_PREFER_BOOT,
    HEADER_SIZE,
    MAX_METAINFO,
    UNSIGNED,
    Header,
    build_header,
    parse_header,
    parse_metainfo,
    render_metainfo,
)

SALT = bytes(range(32))
ROOT = bytes(range(100, 132))


def full_metainfo() -> bytes:
    return render_metainfo(
        image_type="realmfs",
        realmfs_name="base",
        nblocks=262144,
        channel="realmfs-user",
        version=7,
        timestamp="2019-08-31T16:35:10Z",
        shasum="ab" * 32,
        verity_salt=SALT,
        verity_root=ROOT,
        realmfs_owner="user",
    )


def raw_header(
    metainfo: bytes,
    *,
    magic: bytes = b"SGOS",
    length: int | None = None,
    signature: bytes = UNSIGNED,
    status: int = 0,
    flags: int = 0,
) -> bytes:
    """A header built by hand, without build_header's checks."""
    block = bytearray(HEADER_SIZE)
    struct.pack_into(
        ">4sBBH", block, 0, magic, status, flags, len(metainfo) if length is None else length
    )
    block[8 : 8 + len(metainfo)] = metainfo
    block[8 + len(metainfo) : 8 + len(metainfo) + len(signature)] = signature
    return bytes(block)


def refused(block: bytes) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_header(block)
    message = str(caught.value)
    assert "\n" not in message
    return message


# Round trips and layout


def test_render_writes_keys_in_citadels_order_with_hex() -> None:
    text = full_metainfo().decode()
    keys = [line.split(" = ")[0] for line in text.splitlines()]
    assert keys == [
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
    ]
    assert f'verity-salt = "{SALT.hex()}"' in text
    assert f'verity-root = "{ROOT.hex()}"' in text
    assert "nblocks = 262144\n" in text


def test_render_leaves_out_unset_fields() -> None:
    assert (
        render_metainfo(image_type="realmfs", nblocks=3) == b'image-type = "realmfs"\nnblocks = 3\n'
    )


def test_round_trip_of_every_field() -> None:
    raw = full_metainfo()
    signature = os.urandom(64)
    block = build_header(raw, signature=signature, flags=FLAG_HASH_TREE, status=3)
    assert len(block) == HEADER_SIZE
    header = parse_header(block)
    assert header.status == 3
    assert header.flags == FLAG_HASH_TREE
    assert header.signature == signature
    assert header.signed
    meta = header.metainfo
    assert meta.raw == raw
    assert meta.image_type == "realmfs"
    assert meta.realmfs_name == "base"
    assert meta.nblocks == 262144
    assert meta.channel == "realmfs-user"
    assert meta.version == 7
    assert meta.timestamp == "2019-08-31T16:35:10Z"
    assert meta.shasum == "ab" * 32
    assert meta.verity_salt == SALT
    assert meta.verity_root == ROOT
    assert meta.realmfs_owner == "user"
    assert meta.sealed
    assert header.to_bytes() == block
    assert parse_header(header.to_bytes()) == header


def test_minimal_unsigned_unsealed_header() -> None:
    header = parse_header(build_header(b'image-type = "realmfs"\n'))
    assert header.metainfo.image_type == "realmfs"
    assert header.metainfo.nblocks is None
    assert not header.metainfo.sealed
    assert not header.signed
    assert header.signature == UNSIGNED
    assert (header.status, header.flags) == (0, 0)


def test_header_dataclass_builds_its_bytes() -> None:
    meta = parse_metainfo(full_metainfo())
    header = Header(status=1, flags=FLAG_PREFER_BOOT | FLAG_COMPRESSED, metainfo=meta)
    assert parse_header(header.to_bytes()) == header
    assert header.to_bytes()[5] == 0x05


def test_byte_layout() -> None:
    raw = full_metainfo()
    signature = bytes(range(1, 65))
    block = build_header(raw, signature=signature, flags=0x07, status=0x42)
    assert block[0:4] == b"SGOS"
    assert block[4] == 0x42
    assert block[5] == 0x07
    assert block[6:8] == len(raw).to_bytes(2, "big")
    assert block[8 : 8 + len(raw)] == raw
    assert block[8 + len(raw) : 8 + len(raw) + 64] == signature
    assert block[8 + len(raw) + 64 :] == bytes(HEADER_SIZE - 8 - len(raw) - 64)


def test_length_is_big_endian() -> None:
    raw = b'image-type = "realmfs"\n' + b"#" * (0x0123 - 24) + b"\n"
    assert len(raw) == 0x0123
    block = build_header(raw)
    assert block[6:8] == b"\x01\x23"
    assert parse_header(block).metainfo.raw == raw
    # The same length read little-endian (0x2301) would run past the header.
    little = block[:6] + b"\x23\x01" + block[8:]
    assert "metainfo length 8961 runs past the header" in refused(little)


def test_metainfo_bytes_are_kept_exactly_as_stored() -> None:
    # Comments, another key order, odd spacing and unknown keys: raw is what was stored.
    raw = (
        b"# made by hand\n"
        b'nblocks=12\n\nimage-type =   "realmfs"  # trailing comment\n'
        b'future-key = { nested = [1, 2] }\nrealmfs-name = "caf\xc3\xa9"\n'
    )
    header = parse_header(build_header(raw))
    assert header.metainfo.raw == raw
    assert header.metainfo.nblocks == 12
    assert header.metainfo.realmfs_name == "café"


def test_longest_metainfo_fits() -> None:
    assert MAX_METAINFO == 4096 - (8 + 64) - 1
    raw = b'image-type = "realmfs"\n#' + b"x" * (MAX_METAINFO - 24)
    assert len(raw) == MAX_METAINFO
    block = build_header(raw, signature=b"\xff" * 64)
    # The signature ends one byte before the end of the header: "< 4096 - (8 + 64)".
    assert block[-65:] == b"\xff" * 64 + b"\0"
    assert parse_header(block).metainfo.raw == raw


def test_longer_input_is_read_as_its_first_4096_bytes() -> None:
    block = build_header(full_metainfo())
    assert parse_header(block + os.urandom(100)) == parse_header(block)


# Refusals


def test_refuses_a_short_block() -> None:
    block = build_header(full_metainfo())
    assert "4095 bytes, shorter than a 4096-byte header" in refused(block[:4095])
    assert "0 bytes" in refused(b"")


def test_refuses_wrong_magic() -> None:
    message = refused(raw_header(full_metainfo(), magic=b"SGOX"))
    assert message == "image header: wrong magic b'SGOX' (expected b'SGOS')"


def test_refuses_a_length_past_the_header() -> None:
    raw = full_metainfo()
    assert "metainfo length 4024 runs past the header (at most 4023)" in refused(
        raw_header(raw, length=MAX_METAINFO + 1)
    )
    assert "metainfo length 65535 runs past" in refused(raw_header(raw, length=0xFFFF))


def test_source_names_the_file_in_messages() -> None:
    with pytest.raises(InvalidInput, match=r"^base-realmfs\.img: wrong magic"):
        parse_header(bytes(HEADER_SIZE), source="base-realmfs.img")
    with pytest.raises(InvalidInput, match=r"^base-realmfs\.img: metainfo: image-type is missing"):
        parse_header(raw_header(b"nblocks = 1\n"), source="base-realmfs.img")


@pytest.mark.parametrize(
    ("metainfo", "expected"),
    [
        (b'image-type = "caf\xe9"\n', "metainfo: not UTF-8 (byte 17)"),
        (
            b"image-type = realmfs\n",
            "metainfo: not valid TOML: Invalid value (at line 1, column 14)",
        ),
        (b'image-type = "a"\nimage-type = "b"\n', "metainfo: not valid TOML: Cannot overwrite"),
        (b"a = " + b"[" * 2000, "metainfo: not valid TOML: nested too deeply"),
        (b"", "metainfo: image-type is missing"),
        (b'nblocks = 1\nchannel = "dev"\n', "metainfo: image-type is missing"),
        (b"image-type = 3\n", "metainfo: image-type must be a string, not 3"),
        (b'image-type = ""\n', "metainfo: image-type is empty"),
        (b'image-type = "r"\nnblocks = 0\n', "nblocks must be a positive integer, not 0"),
        (b'image-type = "r"\nnblocks = -5\n', "nblocks must be a positive integer, not -5"),
        (b'image-type = "r"\nnblocks = "12"\n', "nblocks must be a positive integer, not '12'"),
        (b'image-type = "r"\nnblocks = true\n', "nblocks must be a positive integer, not True"),
        (b'image-type = "r"\nnblocks = 1.5\n', "nblocks must be a positive integer, not 1.5"),
        (b'image-type = "r"\nversion = "3"\n', "version must be a non-negative integer, not '3'"),
        (b'image-type = "r"\nversion = -1\n', "version must be a non-negative integer, not -1"),
        (b'image-type = "r"\nchannel = 5\n', "channel must be a string, not 5"),
        (b'image-type = "r"\nrealmfs-name = ["a"]\n', "realmfs-name must be a string, not ['a']"),
        (b'image-type = "r"\nrealmfs-owner = false\n', "realmfs-owner must be a string"),
        (b'image-type = "r"\ntimestamp = 2019-08-31\n', "timestamp must be a string"),
        (b'image-type = "r"\nshasum = "abc"\n', "shasum must be a sha256 in hex"),
        (
            b'image-type = "r"\nverity-salt = "' + b"zz" * 32 + b'"\n',
            "verity-salt must be 32 bytes in hex (64 hex digits), not 'zzzz",
        ),
        (
            b'image-type = "r"\nverity-salt = "' + b"ab" * 31 + b'"\n',
            "verity-salt must be 32 bytes in hex",
        ),
        (
            b'image-type = "r"\nverity-root = "' + b"ab" * 33 + b'"\n',
            "verity-root must be 32 bytes in hex",
        ),
        (
            b'image-type = "r"\nverity-root = "' + b"ab " * 32 + b'"\n',
            "verity-root must be 32 bytes in hex",
        ),
        (
            b'image-type = "r"\nverity-root = 12\n',
            "verity-root must be 32 bytes in hex (64 hex digits), not 12",
        ),
    ],
)
def test_refuses_bad_metainfo(metainfo: bytes, expected: str) -> None:
    message = refused(raw_header(metainfo))
    assert message.startswith("image header: metainfo: ")
    assert expected in message
    # The same refusal from parse_metainfo alone, and from build_header before writing.
    with pytest.raises(InvalidInput, match=r"^metainfo: "):
        parse_metainfo(metainfo)
    with pytest.raises(InvalidInput):
        build_header(metainfo)


def test_build_refuses_a_metainfo_too_long() -> None:
    raw = b'image-type = "realmfs"\n#' + b"x" * (MAX_METAINFO - 23)
    with pytest.raises(InvalidInput, match="metainfo is 4024 bytes, a header holds at most 4023"):
        build_header(raw)


def test_build_refuses_a_bad_signature_status_or_flags() -> None:
    raw = full_metainfo()
    with pytest.raises(InvalidInput, match="signature is 64 bytes, not 63"):
        build_header(raw, signature=bytes(63))
    with pytest.raises(InvalidInput, match="status must be a byte"):
        build_header(raw, status=256)
    with pytest.raises(InvalidInput, match="flags must be a byte"):
        build_header(raw, flags=-1)


def test_render_refuses_ill_typed_fields() -> None:
    with pytest.raises(InvalidInput, match="nblocks must be a positive integer, not 0"):
        render_metainfo(image_type="realmfs", nblocks=0)
    with pytest.raises(InvalidInput, match="verity-salt must be 32 bytes"):
        render_metainfo(image_type="realmfs", verity_salt=bytes(16))
    with pytest.raises(InvalidInput, match="image-type is empty"):
        render_metainfo(image_type="")


# Fuzzing: whatever the bytes, the answer is a Header or InvalidInput.


def parses_or_refuses(block: bytes) -> None:
    try:
        header = parse_header(block)
    except InvalidInput as error:
        assert str(error) and "\n" not in str(error)
        return
    # Whatever parses rebuilds into a header that parses to the same thing.
    assert parse_header(header.to_bytes()) == header


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = [
    build_header(full_metainfo(), signature=bytes(range(64)), flags=FLAG_HASH_TREE),
    build_header(b'image-type = "realmfs"\nnblocks = 1\n'),
]


@FUZZ
@given(st.binary(min_size=0, max_size=HEADER_SIZE + 16))
def test_fuzz_random_bytes(block: bytes) -> None:
    parses_or_refuses(block)


@FUZZ
@given(st.binary(min_size=0, max_size=HEADER_SIZE - 8), st.integers(0, 0xFFFF))
def test_fuzz_random_bytes_with_magic(body: bytes, length: int) -> None:
    block = b"SGOS\0\0" + length.to_bytes(2, "big") + body
    parses_or_refuses(block.ljust(HEADER_SIZE, b"\0"))


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 700), st.integers(1, 255)), min_size=1, max_size=8),
    st.one_of(st.none(), st.integers(0, HEADER_SIZE)),
)
def test_fuzz_mutated_headers(
    valid: bytes, flips: list[tuple[int, int]], truncate: int | None
) -> None:
    block = bytearray(valid)
    for position, mask in flips:
        block[position] ^= mask
    parses_or_refuses(bytes(block if truncate is None else block[:truncate]))


TOMLISH = st.text(alphabet="[]{}=\"'\\\n .,#0123456789abcdefnrtu-_:TZ+\u00e9\x00\x7f", max_size=300)


@FUZZ
@given(TOMLISH)
def test_fuzz_toml_like_metainfo(text: str) -> None:
    raw = ('image-type = "realmfs"\n' + text).encode()[:MAX_METAINFO]
    parses_or_refuses(raw_header(raw))
