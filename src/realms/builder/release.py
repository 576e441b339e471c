"""Release files and OpenPGP keys, as a mirror and a build config give them: parsed and checked
before anything uses them (:mod:`realms.builder.archive` reads mirrors' files through here).

- :func:`parse_release`: an ``InRelease`` (OpenPGP cleartext-signed) or ``Release`` file: its
  fields and ``Date``. Refused with one line: larger than :data:`MAX_RELEASE`, not UTF-8,
  truncated (no final newline, a broken checksum line, an unclosed signature), text outside the
  signed part, a line that is no field, a field given twice, no or a bad ``Date``.
- :func:`binary_keys`: a key file (armored or binary) as binary OpenPGP packets, refused unless
  it starts with a public-key packet; :func:`write_keyring` writes a config's keys as the one
  keyring file that gpgv, ``mmdebstrap --keyring`` and apt read.
- :func:`verify`: ``gpgv`` against such a keyring, for an InRelease or a Release with its
  Release.gpg.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from realms.errors import InvalidInput
from realms.settings import shown
from realms.system.run import run

MAX_RELEASE = 8 << 20
"""The largest Release file taken (Debian's biggest, sid's InRelease, is about 200 KB)."""
MAX_KEY = 1 << 20
"""The largest OpenPGP key file a config may name."""


@dataclass(frozen=True)
class Release:
    """A parsed Release file (or the signed text of an InRelease)."""

    fields: dict[str, str]
    date: datetime
    signed: bool
    """An InRelease: the text is inside an OpenPGP cleartext signature."""

    @property
    def components(self) -> list[str]:
        return self.fields.get("Components", "").split()

    @property
    def names(self) -> set[str]:
        """The names the file gives its suite (Suite and Codename)."""
        return {self.fields[k] for k in ("Suite", "Codename") if k in self.fields}


_CHECKSUM_FIELDS = {"MD5Sum", "SHA1", "SHA256", "SHA512"}
_CHECKSUM_LINE = re.compile(r" [0-9a-f]{32,128} +[0-9]{1,15} +\S+")
_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*):[ \t]*(.*)")


def _cleartext(text: str, where: str) -> str:
    """The signed text of an OpenPGP cleartext-signed message; refuse any other shape, and
    text outside the signed part."""
    lines = text.split("\n")
    try:
        start = lines.index("-----BEGIN PGP SIGNED MESSAGE-----")
        body_at = lines.index("", start) + 1
        signature_at = lines.index("-----BEGIN PGP SIGNATURE-----", body_at)
        end = lines.index("-----END PGP SIGNATURE-----", signature_at)
    except ValueError:
        raise InvalidInput(f"{where}: truncated or malformed OpenPGP signed message") from None
    if start != 0 or any(line.strip() for line in lines[end + 1 :]):
        raise InvalidInput(f"{where}: text outside the signed part")
    body = [line[2:] if line.startswith("- ") else line for line in lines[body_at:signature_at]]
    return "\n".join(body) + "\n"


def parse_release(data: bytes, where: str) -> Release:
    """Parse an InRelease or Release file; refuse a truncated or malformed one (naming
    ``where``)."""
    if len(data) > MAX_RELEASE:
        raise InvalidInput(f"{where}: larger than {MAX_RELEASE >> 20} MiB")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"{where}: not UTF-8 text") from None
    signed = text.startswith("-----BEGIN PGP SIGNED MESSAGE-----")
    if signed:
        text = _cleartext(text, where)
    if not text.endswith("\n"):
        raise InvalidInput(f"{where}: truncated (no newline at its end)")
    fields: dict[str, str] = {}
    current = ""
    for number, line in enumerate(text[:-1].split("\n"), 1):
        if line.startswith((" ", "\t")) and current:
            if current in _CHECKSUM_FIELDS and not _CHECKSUM_LINE.fullmatch(line):
                raise InvalidInput(f"{where}: line {number}: a broken {current} line")
            fields[current] += "\n" + line.strip()
            continue
        match = _FIELD.fullmatch(line)
        if not match or match[1] in fields:
            raise InvalidInput(f"{where}: line {number}: not a Release field: {shown(line)}")
        current = match[1]
        fields[current] = match[2].strip()
    if "Date" not in fields:
        raise InvalidInput(f"{where}: no Date field")
    try:
        date = parsedate_to_datetime(fields["Date"])
    except (TypeError, ValueError):
        raise InvalidInput(f"{where}: Date: not a date: {shown(fields['Date'])}") from None
    if date.tzinfo is None:
        date = date.replace(tzinfo=UTC)
    return Release(fields, date.astimezone(UTC), signed)


# Keys (the config's keyring)


_ARMOR = re.compile(
    r"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.S
)


def binary_keys(data: bytes, where: str) -> bytes:
    """The OpenPGP public keys in ``data`` (armored or binary), as binary packets; refuse
    anything that is not a public key."""
    if len(data) > MAX_KEY:
        raise InvalidInput(f"{where}: larger than {MAX_KEY >> 20} MiB")
    if data.lstrip().startswith(b"-----BEGIN"):
        blocks = _ARMOR.findall(data.decode(errors="replace"))
        if not blocks:
            raise InvalidInput(f"{where}: not an OpenPGP public key block")
        binary = b""
        for block in blocks:
            # Armor headers end at the first empty line; the line starting with '=' is the
            # CRC, not data.
            lines = block.replace("\r", "").split("\n")
            lines = lines[lines.index("") + 1 :] if "" in lines else []
            lines = [line for line in lines if line and not line.startswith("=")]
            try:
                binary += base64.b64decode("".join(lines), validate=True)
            except ValueError:
                raise InvalidInput(f"{where}: broken OpenPGP armor") from None
        data = binary
    first = data[0] if data else 0
    # A packet header: bit 7 set; the tag in bits 5-0 (new format) or 5-2 (old format).
    tag = (first & 0x3F) if first & 0x40 else (first >> 2) & 0x0F
    if not first & 0x80 or tag != 6:
        raise InvalidInput(f"{where}: not an OpenPGP public key")
    return data


def write_keyring(keys: Sequence[tuple[str, bytes]], path: Path) -> None:
    """Write the keys (each ``(name, data)`` as a config gives them, already checked at load)
    as one binary keyring file, the form gpgv, mmdebstrap's --keyring and apt's Signed-By all
    read."""
    path.write_bytes(b"".join(binary_keys(data, name) for name, data in keys))
    path.chmod(0o644)


def verify(keyring: Path, data: bytes, signature: bytes | None, where: str, scratch: Path) -> None:
    """Refuse ``data`` unless it (InRelease) or ``signature`` (Release.gpg) is a valid
    signature by a key of ``keyring``."""
    signed = scratch / "signed"
    signed.write_bytes(data)
    argv: list[str | Path] = [
        "gpgv",
        "--homedir",
        scratch,
        "--status-fd",
        "1",
        "--keyring",
        keyring,
    ]
    if signature is not None:
        detached = scratch / "signature"
        detached.write_bytes(signature)
        argv += [detached, signed]
    else:
        argv.append(signed)
    result = run(argv, check=False)
    if result.returncode != 0 or "[GNUPG:] VALIDSIG " not in result.stdout:
        raise InvalidInput(
            f"{where}: not signed by a key of the config's keyring",
            hint="name the archive's signing key in the build config's keyring",
        )
