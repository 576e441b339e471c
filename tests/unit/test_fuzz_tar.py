"""Fuzzing the tar reader (:func:`realms.appimg.tarcheck.rewrite`), in process: whatever the bytes
(a small valid archive with mutated headers, truncated or with bytes appended, or random bytes),
the result is a rewritten archive or :class:`~realms.errors.InvalidInput`, never another
exception; and a rewritten archive holds no entry that leaves the tree, no device node, no hard
link to anything not before it, nothing written through a symbolic link, and GNU tar reads in it
exactly the entries Python wrote.

The default run makes several thousand cases in well under a minute; ``-m fuzz`` runs the long
variant (about a hundred thousand).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realms.appimg.tarcheck import Summary, rewrite
from realms.errors import InvalidInput

BLOCK = 512


def _seed(format: int) -> bytes:
    """A small archive with every kind of entry the reader handles."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=format) as archive:

        def add(
            name: str, kind: bytes = tarfile.REGTYPE, payload: bytes = b"", **fields: Any
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode = kind, len(payload), 0o644
            for key, value in fields.items():
                setattr(info, key, value)
            archive.addfile(info, io.BytesIO(payload) if payload else None)

        add("usr", tarfile.DIRTYPE)
        add("usr/file", payload=b"hello\n" * 30, mode=0o4755, uid=1000, gid=1000)
        add("usr/link", tarfile.SYMTYPE, linkname="/etc/os-release")
        add("usr/hard", tarfile.LNKTYPE, linkname="usr/file")
        add("usr/fifo", tarfile.FIFOTYPE)
        add("usr/mem", tarfile.CHRTYPE, devmajor=1, devminor=1)
        add("usr/long-directory-name-long/" + "long-name-" * 8, payload=b"long\n")
        if format == tarfile.PAX_FORMAT:
            add(
                "usr/caps",
                payload=b"x",
                pax_headers={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02 \x00"},
            )
    return data.getvalue()


SEEDS = [_seed(tarfile.PAX_FORMAT), _seed(tarfile.GNU_FORMAT), _seed(tarfile.USTAR_FORMAT)]
# Bytes that mean something in a header: octal digits, separators, NUL, type letters.
_HEADER_BYTES = st.sampled_from(list(b"012345679 ./\0\xff-ASLKxgDV5\n="))


def _fix_checksums(data: bytearray) -> None:
    """Make every block that looks like a header carry a correct checksum, so that mutations
    reach the fields behind the checksum test."""
    for start in range(0, len(data) - BLOCK + 1, BLOCK):
        block = data[start : start + BLOCK]
        if block[257:262] != b"ustar" or not any(block):
            continue
        block[148:156] = b" " * 8
        data[start + 148 : start + 156] = b"%06o\0 " % sum(block)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[position] = draw(_HEADER_BYTES)
        else:
            data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        _fix_checksums(data)
    # Mostly whole archives (so that mutations are what is tested), sometimes cut or extended.
    if draw(st.integers(0, 3)) == 0:
        del data[draw(st.integers(0, len(data))) :]
    if draw(st.integers(0, 3)) == 0:
        data += draw(st.binary(max_size=64))
    return bytes(data)


def _normal(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and ".." not in parts and "\0" not in name


def _check_rewritten(out: bytes, summary: Summary) -> list[str]:
    """The property of an accepted archive; returns its names."""
    names: list[str] = []
    symlinks: set[str] = set()
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:") as archive:
        for member in archive:
            assert _normal(member.name), member.name
            assert member.type in (
                tarfile.REGTYPE,
                tarfile.DIRTYPE,
                tarfile.SYMTYPE,
                tarfile.LNKTYPE,
                tarfile.FIFOTYPE,
            ), member.type
            parts = member.name.split("/")
            for depth in range(1, len(parts)):
                assert "/".join(parts[:depth]) not in symlinks, member.name
            if member.islnk():
                assert _normal(member.linkname) and member.linkname in names, member.linkname
            if member.issym():
                symlinks.add(member.name)
            elif member.isreg() or member.isfifo():
                symlinks.discard(member.name)  # extracting it replaces the symlink
            names.append(member.name)
    assert len(names) == summary.entries
    return names


def _property(data: bytes) -> tuple[bytes, list[str]] | None:
    out = io.BytesIO()
    try:
        summary = rewrite(io.BytesIO(data), out, "fuzzed.tar")
    except InvalidInput as error:
        assert error.message and "\n" not in error.message
        assert len(error.message) < 1000, error.message
        return None
    return out.getvalue(), _check_rewritten(out.getvalue(), summary)


def _accepted_or_refused(data: bytes) -> None:
    _property(data)


def _gnu_tar_agrees(data: bytes) -> None:
    """GNU tar lists exactly the entries Python wrote."""
    result = _property(data)
    if result is None:
        return
    out, names = result
    listed = subprocess.run(
        ["tar", "--list", "--file=-", "--quoting-style=literal"],
        input=out,
        capture_output=True,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    gnu = [line.rstrip(b"/") for line in listed.stdout.split(b"\n")[:-1]]
    expected = [name.encode("utf-8", "surrogateescape") for name in names]
    if all(b"\n" not in name for name in expected):
        assert gnu == expected


def _quick(count: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def test_seeds_are_accepted() -> None:
    """The fuzzing starts from archives that are accepted (so mutations reach deep)."""
    for seed in SEEDS:
        result = _property(seed)
        assert result is not None and len(result[1]) >= 6


@_quick(3000)
@given(_mutated())
def test_mutated_archives(data: bytes) -> None:
    _property(data)


@_quick(1000)
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _property(data)


@_quick(1000)
@given(st.binary(min_size=BLOCK, max_size=BLOCK), st.integers(0, 4))
def test_random_header_in_a_valid_archive(block: bytes, where: int) -> None:
    """A random block where an entry's header would be (with a correct checksum, sometimes)."""
    seed = bytearray(SEEDS[2])
    data = bytearray(block)
    if where % 2:
        data[257:263] = b"ustar\0"
        _fix_checksums(data)
    offset = where * BLOCK
    _property(bytes(seed[:offset] + data + seed[offset:]))


@_quick(300)
@given(_mutated())
def test_gnu_tar_reads_what_python_wrote(data: bytes) -> None:
    _gnu_tar_agrees(data)


# The long run: `pytest -m fuzz tests/unit/test_fuzz_tar.py`


@pytest.mark.fuzz
def test_long_fuzz_run(request: pytest.FixtureRequest) -> None:
    expression = str(request.config.getoption("-m") or "")
    if "fuzz" not in expression or "not fuzz" in expression:
        pytest.skip("the long fuzz run: select it with -m fuzz")
    _quick(100_000)(given(_mutated())(_accepted_or_refused))()
    _quick(20_000)(given(st.binary(max_size=8192))(_accepted_or_refused))()
    _quick(10_000)(given(_mutated())(_gnu_tar_agrees))()
