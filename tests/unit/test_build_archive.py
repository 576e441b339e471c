"""The archive state and its parsers (realms.builder.archive and .release): Release and
InRelease files as mirrors send them, good and hostile; OpenPGP key files; the state's digest,
age and offline choice."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from realms.builder.archive import ArchiveState, SuiteState, age, build_key, newest_cached
from realms.builder.release import MAX_RELEASE, binary_keys, parse_release
from realms.errors import InvalidInput

RELEASE = b"""\
Origin: Debian
Label: Debian
Suite: stable
Codename: trixie
Date: Sat, 14 Jun 2025 09:06:27 UTC
Valid-Until: Sat, 21 Jun 2025 09:06:27 UTC
Components: main contrib non-free-firmware non-free
Description: Debian 13 (trixie)
SHA256:
 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef  1484 main/binary-all/Packages
 fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210 92512 main/binary-amd64/Packages
"""
SIGNED = (
    b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"
    + RELEASE
    + b"-----BEGIN PGP SIGNATURE-----\n\niHUEARYKAB0WIQ\n=abcd\n-----END PGP SIGNATURE-----\n"
)


def test_a_release_file_gives_its_fields_and_date() -> None:
    release = parse_release(RELEASE, "Release")
    assert release.date == datetime(2025, 6, 14, 9, 6, 27, tzinfo=UTC)
    assert release.names == {"stable", "trixie"}
    assert release.components == ["main", "contrib", "non-free-firmware", "non-free"]
    assert not release.signed
    assert release.fields["SHA256"].count("\n") == 2


def test_an_inrelease_file_gives_its_signed_text() -> None:
    release = parse_release(SIGNED, "InRelease")
    assert release.signed and release.fields["Codename"] == "trixie"
    assert release.date.year == 2025
    # Dash-escaped lines of the cleartext are read unescaped.
    escaped = SIGNED.replace(b"Origin: Debian", b"- Origin: Debian")
    assert parse_release(escaped, "InRelease").fields["Origin"] == "Debian"


def test_numeric_time_zones_are_read_as_utc() -> None:
    text = RELEASE.replace(b"Sat, 14 Jun 2025 09:06:27 UTC", b"Sat, 14 Jun 2025 11:06:27 +0200")
    assert parse_release(text, "Release").date == datetime(2025, 6, 14, 9, 6, 27, tzinfo=UTC)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (RELEASE[:-30], "truncated"),
        (RELEASE[: RELEASE.index(b"SHA256:") + 30] + b"\n", "broken SHA256 line"),
        (RELEASE.replace(b"Date: Sat, 14 Jun 2025 09:06:27 UTC\n", b""), "no Date"),
        (RELEASE.replace(b"Sat, 14 Jun 2025 09:06:27 UTC", b"yesterday"), "not a date"),
        (RELEASE + b"Date: Sun, 15 Jun 2025 09:06:27 UTC\n", "not a Release field"),
        (b"<html>not found</html>\n", "not a Release field"),
        (b"\xff\xfe" + RELEASE, "not UTF-8"),
        (SIGNED[: len(SIGNED) // 2], "truncated or malformed"),
        (SIGNED[: SIGNED.index(b"-----END")], "truncated or malformed"),
        (SIGNED + b"Origin: Evil\n", "outside the signed part"),
        (b"Origin: Evil\n" + SIGNED, "not a Release field"),
        (b"x" * (MAX_RELEASE + 1), "larger than 8 MiB"),
    ],
)
def test_hostile_release_files_are_refused(data: bytes, words: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_release(data, "http://mirror/dists/trixie/InRelease")
    assert words in raised.value.message
    assert raised.value.message.startswith("http://mirror/dists/trixie/InRelease: ")
    assert "\n" not in raised.value.message


# A minimal public-key packet (new format, tag 6): only the header matters to the check.
KEY = bytes([0xC6, 0x33, 0x04]) + bytes(50)


def test_key_files_armored_or_binary() -> None:
    assert binary_keys(KEY, "k") == KEY
    old_format = bytes([0x99, 0x00, 0x33]) + bytes(51)
    assert binary_keys(old_format, "k") == old_format
    body = base64.b64encode(KEY).decode()
    armored = f"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n{body}\n=AbCd\n"
    armored += "-----END PGP PUBLIC KEY BLOCK-----\n"
    assert binary_keys(armored.encode(), "k") == KEY
    with_header = armored.replace("BLOCK-----\n\n", "BLOCK-----\nComment: test\n\n", 1)
    assert binary_keys(with_header.encode(), "k") == KEY


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"hello\n", "not an OpenPGP public key"),
        (bytes([0xC5, 0x10]) + bytes(16), "not an OpenPGP public key"),  # a secret key
        (b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nAAAA\n", "not an OpenPGP public key block"),
        (
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n-----END PGP PUBLIC KEY BLOCK-----\n",
            "broken OpenPGP armor",
        ),
        (b"", "not an OpenPGP public key"),
    ],
)
def test_what_is_no_public_key_is_refused(data: bytes, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        binary_keys(data, "keys/archive.asc")


def _state(*dates: datetime, digest: str = "a") -> ArchiveState:
    return ArchiveState(
        tuple(
            SuiteState("http://m/debian", f"s{i}", "InRelease", "sha256:" + digest * 64, date)
            for i, date in enumerate(dates)
        )
    )


def test_the_state_digest_date_and_changes() -> None:
    old = datetime(2026, 12, 1, 14, 2, tzinfo=UTC)
    new = old + timedelta(days=1)
    state = _state(old, new)
    assert state.date == new
    assert _state(old, new).digest == state.digest != _state(old, new, digest="b").digest
    assert build_key("inputs", state) != build_key("inputs", _state(old, new, digest="b"))
    assert ArchiveState.from_json(state.to_json()) == state
    assert ArchiveState.from_json({"suites": [{"uri": 1}]}) is None
    assert ArchiveState.from_json("damaged") is None
    moved = _state(old, new, digest="b")
    assert moved.changes(state) == [
        "http://m/debian s0 moved from 2026-12-01 14:02 to 2026-12-01 14:02",
        "http://m/debian s1 moved from 2026-12-02 14:02 to 2026-12-02 14:02",
    ]
    assert state.changes(state) == []
    source = state.source()
    assert source["archive"] == "http://m/debian s0" and source["date"] == "2026-12-01T14:02:00Z"
    now = new + timedelta(days=2, hours=3)
    assert state.describe(now) == "mirror state of 2026-12-02 14:02 (2 days old)"


def test_age_in_words() -> None:
    now = datetime(2026, 12, 3, tzinfo=UTC)
    assert age(now - timedelta(seconds=30), now) == "less than a minute old"
    assert age(now - timedelta(minutes=1), now) == "1 minute old"
    assert age(now - timedelta(hours=5, minutes=59), now) == "5 hours old"
    assert age(now + timedelta(hours=1), now) == "dated in the future"


def test_offline_takes_the_newest_mirror_state_of_the_config() -> None:
    old, new = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    records = [
        ("k-old", {"config": "c", "archive": _state(old).to_json()}),
        ("k-new", {"config": "c", "archive": _state(new, digest="b").to_json()}),
        ("k-other", {"config": "d", "archive": _state(new + timedelta(1)).to_json()}),
        ("k-damaged", {"config": "c", "archive": {"suites": "x"}}),
    ]
    found = newest_cached(records, "c")
    assert found is not None and found[0] == "k-new" and found[1].date == new
    assert newest_cached(records, "e") is None
