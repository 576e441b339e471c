"""Fuzzing the SGOS image header and metainfo parser, and the checks of an image file built on it:
whatever the bytes (random, or a valid header mutated, or metainfo TOML of any shape), the
result is a parsed header or :class:`~realms.errors.InvalidInput`, never another exception, and a
header that parses is written back to the same header.

The default run makes about five thousand cases in about 30 seconds; ``-m fuzz`` runs the long
variant (hundreds of thousands of cases).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realms.errors import InvalidInput, RealmsError
from realms.image import keys, realmfs
from realms.image.header import (
    FLAG_HASH_TREE,
    HEADER_SIZE,
    MAGIC,
    METAINFO_KEYS,
    SIGNATURE_SIZE,
    Header,
    build_header,
    parse_header,
    parse_metainfo,
    render_metainfo,
)
from realms.image.verity import hash_area_size
from realms.store import Store

_VALID = render_metainfo(
    image_type="realmfs",
    realmfs_name="base",
    nblocks=1234,
    channel="realmfs-user",
    version=3,
    timestamp="2026-01-01T00:00:00Z",
    verity_salt=bytes(range(32)),
    verity_root=bytes(range(32, 64)),
)
_VALID_HEADER = build_header(_VALID, os.urandom(SIGNATURE_SIZE), flags=FLAG_HASH_TREE)


def _parse_or_refuse(block: bytes) -> Header | None:
    """The property: a Header or InvalidInput; a Header survives a round trip."""
    try:
        header = parse_header(block)
    except InvalidInput as error:
        assert error.message and "\n" not in error.message
        return None
    assert parse_header(header.to_bytes()) == header
    return header


# Strategies: bytes from nothing, a valid header mutated, metainfo TOML of any shape.

_HEADERS = st.one_of(
    st.binary(min_size=0, max_size=HEADER_SIZE + 16),
    st.binary(min_size=0, max_size=HEADER_SIZE - 8).map(lambda b: MAGIC + b"\0\0" + b),
)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    block = bytearray(_VALID_HEADER)
    for _ in range(draw(st.integers(1, 8))):
        what = draw(st.sampled_from(["set", "flip", "length", "insert", "delete", "cut"]))
        where = draw(st.integers(0, max(len(block) - 1, 0)))
        if what == "set" and block:
            block[where] = draw(st.integers(0, 255))
        elif what == "flip" and block:
            block[where] ^= 1 << draw(st.integers(0, 7))
        elif what == "length" and len(block) >= 8:
            struct.pack_into(">H", block, 6, draw(st.integers(0, 0xFFFF)))
        elif what == "insert":
            block[where:where] = draw(st.binary(min_size=1, max_size=64))
        elif what == "delete":
            del block[where : where + draw(st.integers(1, 64))]
        elif what == "cut":
            del block[draw(st.integers(0, HEADER_SIZE)) :]
    return bytes(block)


_SCALARS = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(),
    st.datetimes(),
    st.dates(),
    st.sampled_from(["realmfs", "", "0" * 64, "f" * 64, "g" * 64, "0" * 63]),
)
# Nested a level (tables and arrays of them): deeper nesting is the random-bytes tests' job.
_VALUES = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=3),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), _SCALARS, max_size=3),
)
_KEYS = st.one_of(st.sampled_from(METAINFO_KEYS), st.text(max_size=8))


@st.composite
def _toml(draw: st.DrawFn) -> bytes:
    table: dict[str, Any] = draw(st.dictionaries(_KEYS, _VALUES, max_size=10))
    try:
        return tomli_w.dumps(table).encode()
    except (TypeError, ValueError):  # a value TOML cannot hold: use the text as it comes
        return repr(table).encode()


def _header_property(block: bytes) -> None:
    _parse_or_refuse(block)


def _metainfo_block(raw: bytes) -> bytes:
    """The metainfo in an otherwise valid header (its length field as long as it is)."""
    block = bytearray(HEADER_SIZE)
    block[:4] = MAGIC
    block[5] = FLAG_HASH_TREE
    struct.pack_into(">H", block, 6, min(len(raw), 0xFFFF))
    block[8 : 8 + len(raw)] = raw[: HEADER_SIZE - 8]
    return bytes(block[:HEADER_SIZE])


def _check_metainfo(raw: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        parse_metainfo(raw)
    _parse_or_refuse(_metainfo_block(raw))


def _quick(count: int) -> Callable[[Any], Any]:
    return settings(max_examples=count, deadline=None, database=None)


@_quick(2000)
@given(_HEADERS)
def test_random_bytes(block: bytes) -> None:
    _parse_or_refuse(block)


@_quick(1000)
@given(_mutated())
def test_mutated_header(block: bytes) -> None:
    _parse_or_refuse(block)


@_quick(600)
@given(_toml())
def test_metainfo_of_any_shape(raw: bytes) -> None:
    _check_metainfo(raw)


@_quick(1000)
@given(st.binary(max_size=600))
def test_metainfo_random_bytes(raw: bytes) -> None:
    _check_metainfo(raw)


# The checks of an image file on top of the parser (header, size, signature, filesystem, data),
# as `realms appimg import` and every use of an image run them: only failed checks or InvalidInput.


def _image_checks(store: Store, directory: Path, block: bytes, tail: int) -> None:
    path = directory / "fuzzed.img"
    with path.open("wb") as handle:
        handle.write(block)
        handle.truncate(len(block) + tail)
    keyring = keys.Keyring(store)
    try:
        checks = realmfs.verify_image(path, keyring)
        trust = realmfs.check_trust(path, keyring)
    except RealmsError as error:
        assert isinstance(error, InvalidInput), error
        return
    assert checks and trust and checks[: len(trust)] == trust
    # A made-up image never passes: at least its signature or its data fails.
    assert not all(check.ok for check in checks), checks


@pytest.fixture
def fuzz_store(store: Store) -> Store:
    from realms.api import generate_key

    generate_key(store, "realmfs-user")
    return store


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.one_of(_mutated(), _HEADERS), st.integers(0, 3 * 4096))
def test_image_checks(fuzz_store: Store, tmp_path: Path, block: bytes, tail: int) -> None:
    _image_checks(fuzz_store, tmp_path, block, tail)


@st.composite
def _signable(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """Metainfo that parses, with any of its fields there or not, right or wrong in what they
    say (a small nblocks, so that the size is often right and the data is really checked);
    the header's flags; extra bytes after the size the metainfo asks for."""
    optional: dict[str, st.SearchStrategy[Any]] = {
        "realmfs-name": st.sampled_from(["base", "x", ""]),
        "nblocks": st.integers(1, 8),
        "channel": st.just("realmfs-user"),
        "version": st.integers(0, 3),
        "shasum": st.sampled_from(["0" * 64, "e3b0c44298fc1c149afbf4c8996fb924" * 2]),
        "verity-salt": st.binary(min_size=32, max_size=32).map(bytes.hex),
        "verity-root": st.binary(min_size=32, max_size=32).map(bytes.hex),
    }
    table: dict[str, Any] = {"image-type": draw(st.sampled_from(["realmfs", "other"]))}
    for key, values in optional.items():
        if draw(st.booleans()):
            table[key] = draw(values)
    flags = draw(st.sampled_from([0, FLAG_HASH_TREE, 0xFF]))
    return tomli_w.dumps(table).encode(), flags, draw(st.sampled_from([0, 0, 1, 4096]))


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(_signable())
def test_signed_image_checks(
    fuzz_store: Store, tmp_path: Path, case: tuple[bytes, int, int]
) -> None:
    """Past the signature: metainfo signed by the store's own trusted key, so that the checks
    after it (size, filesystem, hash tree or checksum) meet every combination of fields."""
    raw, flags, extra = case
    seed = keys.Keyring(fuzz_store).signing_seed("realmfs-user")
    block = build_header(raw, keys.sign(seed, raw), flags=flags)
    meta = parse_metainfo(raw)
    size = (meta.nblocks or 0) * 4096
    if meta.verity_root is not None:
        size += hash_area_size(meta.nblocks or 1)
    _image_checks(fuzz_store, tmp_path, block, size + extra)


# The long run: `pytest -m fuzz tests/unit/test_fuzz_header.py`


def _selected(request: pytest.FixtureRequest) -> None:
    expression = str(request.config.getoption("-m") or "")
    if "fuzz" not in expression or "not fuzz" in expression:
        pytest.skip("the long fuzz run: select it with -m fuzz")


@pytest.mark.fuzz
def test_long_fuzz_run(request: pytest.FixtureRequest) -> None:
    _selected(request)
    _quick(100_000)(given(_HEADERS)(_header_property))()
    _quick(100_000)(given(_mutated())(_header_property))()
    _quick(100_000)(given(_toml())(_check_metainfo))()
    _quick(50_000)(given(st.binary(max_size=4000))(_check_metainfo))()
