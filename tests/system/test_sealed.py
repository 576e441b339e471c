"""Sealed and block images: keys, seal, verify, export and import (a Citadel-made image
included), and every kind of bad image refused with one line and nothing imported."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from realms.image.header import (
    FLAG_HASH_TREE,
    HEADER_SIZE,
    PREFIX_SIZE,
    Header,
    build_header,
    parse_header,
    render_metainfo,
)
from realms.image.verity import hash_area_size
from tests.helpers import Realms

B = 4096


def _header(path: Path) -> tuple[bytes, Header]:
    raw = path.read_bytes()[:HEADER_SIZE]
    return raw, parse_header(raw)


@pytest.fixture
def sealed(realms: Realms, base: str, tmp_path: Path) -> Path:
    """The base appimg sealed (ext4, channel test) and exported."""
    realms("key", "generate", "test")
    realms("appimg", "seal", "base", "--channel", "test")
    image = tmp_path / "base.img"
    realms("appimg", "export", "base", str(image))
    return image


def test_keys(realms: Realms, tmp_path: Path) -> None:
    public = realms("key", "generate", "work").stdout.strip()
    assert len(public) == 64 and int(public, 16) >= 0
    key_file = realms.store / "keys/signing/work.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    seed = key_file.read_text().strip()
    assert seed not in realms("key", "list").stdout  # the private key is never printed
    assert realms("key", "export", "work").stdout.strip() == public
    (listed,) = realms.json("key", "list")
    assert listed == {
        "channel": "work",
        "public": public,
        "added": listed["added"],
        "revoked": False,
        "signing": True,
    }
    assert "already has a signing key" in realms.fails("key", "generate", "work")
    rotated = realms("key", "generate", "work", "--replace").stdout.strip()
    assert rotated != public
    states = {k["public"]: k for k in realms.json("key", "list")}
    assert states[public]["signing"] is False and states[public]["revoked"] is False
    assert states[rotated]["signing"] is True

    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    pub_file = tmp_path / "other.pub"
    pub_file.write_text(other.hex() + "\n")
    realms("key", "trust", "work", str(pub_file))
    assert "Already trusted" in realms("key", "trust", "work", other.hex()).stderr
    realms("key", "revoke", other.hex())
    assert "never trusted again" in realms.fails("key", "trust", "work", other.hex())
    assert "not a public key" in realms.fails("key", "trust", "work", "abc")
    assert "invalid channel name" in realms.fails("key", "generate", "../x")
    assert "no signing key" in realms.fails("key", "export", "nothing")


def test_seal_ext4_and_erofs(realms: Realms, base: str, tmp_path: Path) -> None:
    assert (
        "realms key generate realmfs-user" in realms("appimg", "seal", "base", check=False).stderr
    )
    public = realms("key", "generate", "realmfs-user").stdout.strip()
    realms("appimg", "seal", "base")
    versions = realms.json("appimg", "versions", "base")
    assert [v["kind"] for v in versions] == ["tree", "sealed"]
    assert versions[1]["origin"] == "seal" and versions[1]["parent"] == 1
    assert "only a tree version can be sealed" in realms.fails("appimg", "seal", "base")
    image = realms.store / "appimg/base/v2.img"
    raw, header = _header(image)
    meta = header.metainfo
    assert raw[:4] == b"SGOS" and raw[5] == FLAG_HASH_TREE
    assert meta.nblocks and meta.verity_salt and meta.verity_root
    assert struct.unpack(">H", raw[6:8])[0] == len(meta.raw)
    assert meta.image_type == "realmfs" and meta.realmfs_name == "base"
    assert meta.channel == "realmfs-user" and meta.version == 2 and meta.timestamp
    assert len(meta.verity_salt) == 32 and len(meta.verity_root) == 32
    assert image.stat().st_size == B + meta.nblocks * B + hash_area_size(meta.nblocks)
    # veritysetup agrees with our hash tree (it has no data offset: give it the image
    # without its header).
    plain = tmp_path / "plain.img"
    with image.open("rb") as source, plain.open("wb") as target:
        source.seek(B)
        target.write(source.read())
    subprocess.run(
        [
            "veritysetup",
            "verify",
            str(plain),
            str(plain),
            meta.verity_root.hex(),
            f"--hash-offset={meta.nblocks * B}",
        ],
        check=True,
        capture_output=True,
    )
    report = realms.json("appimg", "verify", "base")
    assert report["ok"] is True and report["kind"] == "sealed"
    assert [c["name"] for c in report["checks"]] == [
        "header",
        "size",
        "signature",
        "filesystem",
        "verity",
    ]
    assert public in report["checks"][2]["detail"]

    realms("appimg", "rollback", "base", "1")
    realms("appimg", "seal", "base", "--fs", "erofs")
    erofs = realms.store / "appimg/base/v3.img"
    assert erofs.stat().st_size < image.stat().st_size
    assert realms.json("appimg", "verify", "base")["checks"][3]["detail"] == "erofs"

    realms("appimg", "rollback", "base", "1")
    realms("appimg", "seal", "base", "--no-verity")
    block = realms.json("appimg", "verify", "base")
    assert block["kind"] == "block" and block["ok"] is True
    assert [c["name"] for c in block["checks"]][-1] == "checksum"
    _, block_header = _header(realms.store / "appimg/base/v4.img")
    assert not block_header.signed and block_header.metainfo.shasum
    assert realms.json("appimg", "verify", "base", "--version", "1")["checks"][0]["name"] == "tree"


def test_revoked_key_fails_verification(realms: Realms, sealed: Path) -> None:
    public = realms("key", "export", "test").stdout.strip()
    realms("key", "revoke", public)
    result = realms("appimg", "verify", "base", check=False)
    assert result.returncode == 1
    assert f"signed by the revoked key {public}" in result.stderr
    assert "FAIL  signature" in result.stdout
    # The revoked signing key is kept, but no longer signs: sealing needs a new one.
    realms("appimg", "rollback", "base", "1")
    assert "no signing key for channel 'test'" in realms.fails(
        "appimg", "seal", "base", "--channel", "test"
    )


def test_export_and_import_into_another_store(
    realms: Realms, sealed: Path, btrfs_pool: Path
) -> None:
    other_dir = btrfs_pool / "other-store-import"
    other_dir.mkdir()
    other = Realms(other_dir)
    other("init")
    error = other.fails("appimg", "import", "copy", str(sealed))
    assert "no trusted key for channel 'test'" in error
    assert other.json("appimg", "list") == []
    public = realms("key", "export", "test").stdout.strip()
    other("key", "trust", "test", public)
    other("appimg", "import", "copy", str(sealed))
    (version,) = other.json("appimg", "versions", "copy")
    assert version["kind"] == "sealed" and version["origin"] == "import"
    stored = other_dir / "appimg/copy/v1.img"
    assert stored.read_bytes() == sealed.read_bytes()
    assert other.json("appimg", "verify", "copy")["ok"] is True
    other("key", "revoke", public)
    assert "revoked key" in other.fails("appimg", "import", "again", str(sealed))
    # A tree version exports as a tarball.
    tarball = sealed.parent / "tree.tar.zst"
    realms("appimg", "export", "base", str(tarball), "--version", "1")
    assert tarball.stat().st_size > 100_000
    assert ".tar" in realms.fails(
        "appimg", "export", "base", str(sealed.parent / "t.zip"), "--version", "1"
    )


def _damage(source: Path, target: Path, offset: int, value: bytes | None = None) -> Path:
    data = bytearray(source.read_bytes())
    if value is None:
        data[offset] ^= 0x01
    else:
        data[offset : offset + len(value)] = value
    target.write_bytes(bytes(data))
    return target


def _resign(source: Path, target: Path, seed: bytes, **fields: Any) -> Path:
    """The image with a new metainfo (fields replaced), signed with ``seed``."""
    _raw, header = _header(source)
    meta = header.metainfo
    values: dict[str, Any] = {
        "image_type": meta.image_type,
        "realmfs_name": meta.realmfs_name,
        "nblocks": meta.nblocks,
        "channel": meta.channel,
        "version": meta.version,
        "timestamp": meta.timestamp,
        "verity_salt": meta.verity_salt,
        "verity_root": meta.verity_root,
    }
    values.update(fields)
    metainfo = render_metainfo(**values)
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(metainfo)
    data = bytearray(source.read_bytes())
    data[:HEADER_SIZE] = build_header(metainfo, signature, flags=FLAG_HASH_TREE)
    target.write_bytes(bytes(data))
    return target


def _tiny(path: Path) -> Path:
    path.write_bytes(b"SGOS" + bytes(96))
    return path


def test_bad_images_are_refused(realms: Realms, sealed: Path, tmp_path: Path) -> None:
    raw, header = _header(sealed)
    meta = header.metainfo
    assert meta.nblocks is not None
    length = len(meta.raw)
    signature_at = PREFIX_SIZE + length
    data_at = HEADER_SIZE + 5 * B + 123
    hash_at = HEADER_SIZE + meta.nblocks * B + B + 17
    seed = bytes.fromhex((realms.store / "keys/signing/test.key").read_text().strip())
    stranger = Ed25519PrivateKey.generate().private_bytes_raw()

    def metainfo_bytes(text: bytes) -> Path:
        data = bytearray(sealed.read_bytes())
        block = bytearray(HEADER_SIZE)
        block[:4] = b"SGOS"
        block[5] = FLAG_HASH_TREE
        block[6:8] = struct.pack(">H", len(text))
        block[8 : 8 + len(text)] = text
        data[:HEADER_SIZE] = block
        path = tmp_path / f"meta-{len(os.listdir(tmp_path))}.img"
        path.write_bytes(bytes(data))
        return path

    truncated = tmp_path / "truncated.img"
    truncated.write_bytes(sealed.read_bytes()[: HEADER_SIZE + 10 * B])
    cases: dict[str, tuple[Path, str]] = {
        "truncated": (truncated, "size: the file is"),
        "tiny": (_tiny(tmp_path / "tiny.img"), "shorter than a 4096-byte header"),
        "length past header": (
            _damage(sealed, tmp_path / "length.img", 6, struct.pack(">H", 4090)),
            "runs past the header",
        ),
        "not utf-8": (metainfo_bytes(b'image-type = "\xff\xfe"'), "not UTF-8"),
        "not toml": (metainfo_bytes(b"image-type = [unclosed"), "not valid TOML"),
        "missing field": (metainfo_bytes(b'realmfs-name = "x"\n'), "image-type is missing"),
        "ill-typed": (metainfo_bytes(b'image-type = "realmfs"\nnblocks = "many"\n'), "nblocks"),
        "bad hex": (
            metainfo_bytes(b'image-type = "realmfs"\nnblocks = 3\nverity-root = "zz"\n'),
            "verity-root",
        ),
        "nblocks disagrees": (
            _resign(sealed, tmp_path / "nblocks.img", seed, nblocks=meta.nblocks - 1),
            "nblocks",
        ),
        "wrong signature": (
            _damage(sealed, tmp_path / "signature.img", signature_at + 7),
            "signature",
        ),
        "untrusted key": (
            _resign(sealed, tmp_path / "stranger.img", stranger),
            "not from a trusted key of channel 'test'",
        ),
        "metainfo changed": (  # realmfs-name "base" becomes "case": still valid TOML
            _damage(sealed, tmp_path / "meta.img", raw.index(b'"base"') + 1),
            "signature",
        ),
        "data byte": (_damage(sealed, tmp_path / "data.img", data_at), "verity: data block 5"),
        "hash byte": (_damage(sealed, tmp_path / "hash.img", hash_at), "verity"),
        "header padding": (
            _damage(sealed, tmp_path / "padding.img", signature_at + 64 + 100),
            "bytes after the signature are not zero",
        ),
        "flags": (_damage(sealed, tmp_path / "flags.img", 5), "flags"),
        "status": (_damage(sealed, tmp_path / "status.img", 4), "status byte"),
    }
    for case, (path, expected) in cases.items():
        error = realms.fails("appimg", "import", "bad", str(path))
        assert expected in error, (case, error)
        assert str(path) in error or "neither" in error, (case, error)
    wrong_magic = _damage(sealed, tmp_path / "magic.img", 0, b"XGOS")
    assert "neither a directory" in realms.fails("appimg", "import", "bad", str(wrong_magic))
    assert [a["name"] for a in realms.json("appimg", "list")] == ["base"]
    assert realms.json("status")["leftovers"] == 0


def test_citadel_image_imports(realms: Realms, busybox_tree: Path, tmp_path: Path) -> None:
    """An image made the way Citadel's tools made one (mkfs.ext4 -d, veritysetup format, a
    header signed with a libsodium-style seed), with nothing from realms but the header code."""
    seed = os.urandom(32)
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    nblocks = 4096
    data = tmp_path / "data.ext4"
    with data.open("wb") as handle:
        handle.truncate(nblocks * B)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(busybox_tree), str(data)],
        check=True,
        capture_output=True,
    )
    salt = os.urandom(32)
    formatted = subprocess.run(
        [
            "veritysetup",
            "format",
            str(data),
            str(data),
            f"--hash-offset={nblocks * B}",
            f"--data-blocks={nblocks}",
            f"--salt={salt.hex()}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    root = next(
        line.split(":", 1)[1].strip()
        for line in formatted.splitlines()
        if line.startswith("Root hash:")
    )
    metainfo = (
        f'image-type = "realmfs"\nrealmfs-name = "citadel"\nnblocks = {nblocks}\n'
        f'channel = "realmfs-user"\nversion = 1\ntimestamp = "1553000000"\n'
        f'verity-salt = "{salt.hex()}"\nverity-root = "{root}"\n'
    ).encode()
    image = tmp_path / "citadel-realmfs.img"
    with image.open("wb") as out:
        out.write(build_header(metainfo, private.sign(metainfo), flags=FLAG_HASH_TREE))
        out.write(data.read_bytes())
    assert "no trusted key for channel 'realmfs-user'" in realms.fails(
        "appimg", "import", "citadel", str(image)
    )
    realms("key", "trust", "realmfs-user", public)
    realms("appimg", "import", "citadel", str(image))
    report = realms.json("appimg", "verify", "citadel")
    assert report["ok"] is True and public in report["checks"][2]["detail"]
