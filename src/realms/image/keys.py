"""Signing keys and trust: which Ed25519 keys may sign images of which channel.

Citadel had one key per channel and no revocation. Here, in the store's ``keys/`` (mode 0700):

- ``keys/signing/CHANNEL.key``: the channel's signing key, if this machine signs for it: the
  32-byte Ed25519 seed in hex, as Citadel stored it, mode 0600, never printed. ``generate`` makes
  it; ``generate --replace`` rotates it, and the old public key stays trusted (images signed with
  it still verify) until it is revoked.
- ``keys/trust.toml``: every trusted public key with its channel, several per channel, and the
  revoked ones. A revoked key is never trusted again: every image it signed fails verification.

Changes keep the store's one promise about keys: it never signs what it would then refuse.
``generate`` trusts the new public key before it installs the private key (killed in between,
the old key still signs and is still trusted); the private key's temporary file is 0600 from
its creation, and a killed command's temporary files are removed by the next key command (the
store's sweep, :mod:`realms.store.txn`). Revoking a key makes every image it signed fail
verification; :func:`realms.activation.release_untrusted` then releases their activations.

Signatures are over the metainfo bytes exactly as stored in the image header (see
:mod:`realms.image.header`). ``cryptography`` is imported only by the functions that sign or
verify, so that commands which do not are not slowed down by it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from realms.config import read_toml
from realms.errors import AlreadyExists, InvalidInput, NotFound
from realms.faults import checkpoint
from realms.store import Store, write_toml
from realms.system.fs import atomic_write
from realms.units import now

_CHANNEL = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass
class TrustedKey:
    channel: str
    public: str
    added: str
    revoked: str = ""
    """When it was revoked ("" while it is not)."""

    @property
    def is_revoked(self) -> bool:
        return bool(self.revoked)


@dataclass(frozen=True)
class KeyInfo:
    channel: str
    public: str
    added: str
    revoked: bool
    signing: bool
    """Whether this store holds the private key (it signs new images of the channel)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_channel(channel: str) -> str:
    if not _CHANNEL.fullmatch(channel):
        raise InvalidInput(
            f"invalid channel name {channel!r}",
            hint="a channel name is a letter, then letters, digits, '-' or '_' (40 at most)",
        )
    return channel


def parse_public_key(text: str) -> str:
    """A public key from 64 hex characters, or from a file holding them; lower-case hex."""
    candidate = text.strip()
    if not _HEX.fullmatch(candidate):
        path = Path(candidate)
        if path.is_file():
            candidate = path.read_text(errors="replace").strip()
    if not _HEX.fullmatch(candidate):
        raise InvalidInput(
            f"not a public key: {text[:80]!r}",
            hint="a public key is 64 hex characters, or a file that holds them",
        )
    return candidate.lower()


class Keyring:
    """The store's keys; every change is made under the keyring's lock and written atomically."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.directory = store.keys_dir

    @property
    def _trust_path(self) -> Path:
        return self._store.trust_path

    def _signing_path(self, channel: str) -> Path:
        return self._store.signing_path(channel)

    @contextmanager
    def _changing(self) -> Iterator[list[TrustedKey]]:
        self._store.sweep()
        with self._store.keyring_lock():
            self.directory.mkdir(mode=0o700, exist_ok=True)
            self._store.signing_dir.mkdir(mode=0o700, exist_ok=True)
            keys = self._load()
            yield keys
            self._save(keys)

    def _save(self, keys: list[TrustedKey]) -> None:
        write_toml(self._trust_path, {"key": [asdict(k) for k in keys]}, mode=0o600)

    def _load(self) -> list[TrustedKey]:
        data = read_toml(self._trust_path)
        try:
            return [TrustedKey(**entry) for entry in data.get("key", [])]
        except TypeError as error:
            raise InvalidInput(f"{self._trust_path}: damaged ({error})") from None

    # Queries

    def keys(self) -> list[KeyInfo]:
        # The sweep removes a killed key command's temporary files (a private key's among them).
        self._store.sweep()
        signing = {ch: self.signing_public(ch) for ch in {k.channel for k in self._load()}}
        return [
            KeyInfo(k.channel, k.public, k.added, k.is_revoked, signing.get(k.channel) == k.public)
            for k in self._load()
        ]

    def trusted(self, channel: str) -> list[str]:
        """Public keys (hex) trusted for ``channel`` and not revoked."""
        return [k.public for k in self._load() if k.channel == channel and not k.is_revoked]

    def revoked(self) -> set[str]:
        return {k.public for k in self._load() if k.is_revoked}

    def signing_public(self, channel: str) -> str | None:
        path = self._signing_path(channel)
        if not path.exists():
            return None
        return public_of(self._seed(path))

    def signing_seed(self, channel: str) -> bytes:
        check_channel(channel)
        self._store.sweep()
        path = self._signing_path(channel)
        if not path.exists():
            raise NotFound(
                f"no signing key for channel {channel!r} in this store",
                hint=f"make one with 'realms key generate {channel}'",
            )
        return self._seed(path)

    def _seed(self, path: Path) -> bytes:
        text = path.read_text(errors="replace").strip()
        if not _HEX.fullmatch(text):
            raise InvalidInput(f"{path}: not an Ed25519 seed in hex")
        return bytes.fromhex(text)

    # Changes

    def generate(self, channel: str, *, replace: bool = False) -> str:
        """Make the channel's signing key and trust its public key; return the public key."""
        check_channel(channel)
        with self._changing() as keys:
            path = self._signing_path(channel)
            if path.exists() and not replace:
                raise AlreadyExists(
                    f"channel {channel!r} already has a signing key "
                    f"({self.signing_public(channel)})",
                    hint="--replace makes a new one; the old public key stays trusted until "
                    "'realms key revoke'",
                )
            seed = os.urandom(32)  # secrets.token_bytes, without importing secrets
            public = public_of(seed)
            # Trusted first: killed before the private key is in place, the store still signs
            # with the old key, which is still trusted; never with a key it does not trust.
            keys.append(TrustedKey(channel, public, now()))
            self._save(keys)
            checkpoint("key-generate:trusted")
            # The temporary file is created 0600, before the seed is written into it.
            atomic_write(path, seed.hex() + "\n", mode=0o600)
            checkpoint("key-generate:installed")
        return public

    def trust(self, channel: str, public: str) -> bool:
        """Trust ``public`` for ``channel``; return False if it already was."""
        check_channel(channel)
        with self._changing() as keys:
            for key in keys:
                if key.public == public and key.is_revoked:
                    raise InvalidInput(
                        f"key {public} was revoked on {key.revoked}: it is never trusted again"
                    )
                if key.public == public and key.channel == channel:
                    return False
            keys.append(TrustedKey(channel, public, now()))
        return True

    def revoke(self, public: str) -> list[str]:
        """Revoke ``public`` wherever it is trusted; return the channels it was trusted for.

        The caller then releases the activations of the images it signed
        (:func:`realms.activation.release_untrusted`, which builds on this module, as
        :func:`realms.api.revoke_key` does).
        """
        with self._changing() as keys:
            channels = [k.channel for k in keys if k.public == public and not k.is_revoked]
            if not channels:
                if any(k.public == public for k in keys):
                    raise InvalidInput(f"key {public} is revoked already")
                keys.append(TrustedKey("", public, now(), now()))
                return []
            for key in keys:
                if key.public == public:
                    key.revoked = now()
            for channel in channels:
                if self.signing_public(channel) == public:
                    # Kept, not deleted, but no longer used to sign: generate a new one.
                    path = self._signing_path(channel)
                    path.rename(path.with_name(f"{channel}.key.revoked-{public[:16]}"))
        return channels


def public_of(seed: bytes) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = Ed25519PrivateKey.from_private_bytes(seed)
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def sign(seed: bytes, message: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed).sign(message)


def signed_by(message: bytes, signature: bytes, candidates: list[str]) -> str | None:
    """The public key among ``candidates`` whose signature ``signature`` is, or None."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    for public in candidates:
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(signature, message)
        except (InvalidSignature, ValueError):
            continue
        return public
    return None
