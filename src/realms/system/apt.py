"""The host's apt configuration: which Debian mirrors it uses, so that images are built from the
same mirrors as the host's own packages (no host name is written into realms)."""

from __future__ import annotations

import re
from pathlib import Path

from realms.errors import RealmsError

APT_DIR = Path("/etc/apt")


def _deb822_sources(text: str) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every ``Types: deb`` stanza."""
    sources = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split():
            suites = fields.get("suites", "").split()
            sources += [(uri, suites) for uri in fields.get("uris", "").split()]
    return sources


def _one_line_sources(text: str) -> list[tuple[str, list[str]]]:
    sources = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            sources.append((words[1], [words[2]]))
    return sources


def _sources(apt_dir: Path) -> list[tuple[str, list[str]]]:
    found = []
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        found += _deb822_sources(path.read_text(errors="replace"))
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            found += _one_line_sources(path.read_text(errors="replace"))
    return found


def _is_security(suites: list[str]) -> bool:
    return bool(suites) and all("security" in suite for suite in suites)


def host_debian_mirror(apt_dir: Path = APT_DIR) -> str:
    """The Debian mirror URI of the host's apt sources (deb822 or one-line format)."""
    candidates = [uri for uri, suites in _sources(apt_dir) if not _is_security(suites)]
    debian = [uri for uri in candidates if uri.rstrip("/").endswith("/debian")]
    if debian or candidates:
        return (debian or candidates)[0]
    raise RealmsError(
        f"found no Debian mirror in the host's apt sources ({apt_dir})",
        hint="name one with the mirror key of the build config",
    )


def host_security_mirror(apt_dir: Path = APT_DIR) -> str | None:
    """The Debian security mirror URI of the host's apt sources, if it has one."""
    for uri, suites in _sources(apt_dir):
        if _is_security(suites) or uri.rstrip("/").endswith("/debian-security"):
            return uri
    return None
