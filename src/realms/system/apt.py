"""The host's apt configuration: which Debian mirror it uses, so that images are built from the
same mirror as the host's own packages (no host name is written into realms)."""

from __future__ import annotations

import re
from pathlib import Path

from realms.errors import RealmsError

APT_DIR = Path("/etc/apt")


def _deb822_uris(text: str) -> list[str]:
    """URIs of ``Types: deb`` stanzas that are not security or updates suites."""
    uris = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        suites = fields.get("suites", "").split()
        if suites and all("security" in s or s.endswith("-updates") for s in suites):
            continue
        uris += fields.get("uris", "").split()
    return uris


def _one_line_uris(text: str) -> list[str]:
    uris = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        main_suite = len(words) >= 3 and not words[2].endswith("-updates")
        if main_suite and words[0] == "deb" and "security" not in words[2]:
            uris.append(words[1])
    return uris


def host_debian_mirror(apt_dir: Path = APT_DIR) -> str:
    """The Debian mirror URI of the host's apt sources (deb822 or one-line format)."""
    candidates: list[str] = []
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        candidates += _deb822_uris(path.read_text(errors="replace"))
    for path in one_line:
        if path.is_file():
            candidates += _one_line_uris(path.read_text(errors="replace"))
    debian = [uri for uri in candidates if uri.rstrip("/").endswith("/debian")]
    if debian or candidates:
        return (debian or candidates)[0]
    raise RealmsError(
        f"found no Debian mirror in the host's apt sources ({apt_dir})",
        hint="name one with the mirror key of the build config",
    )
