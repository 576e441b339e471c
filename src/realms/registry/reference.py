"""Registry references: ``HOST[:PORT]/PATH[:TAG][@sha256:HEX]``, parsed and checked once.

The grammar is the Distribution project's (``distribution/reference``), with docker's
normalisation, so a reference means here what it means to podman, skopeo and docker:

- a reference whose first part has no ``.`` and no ``:`` and is not ``localhost`` has no host
  part; its registry is ``docker.io`` (``ubuntu`` is ``docker.io/library/ubuntu``: one-part
  names on docker.io get ``library/``); ``index.docker.io`` is ``docker.io`` as well;
- a path is components of ``[a-z0-9]+`` joined by ``.``, ``_``, ``__`` or dashes, separated by
  ``/`` (no uppercase, no ``..``, no empty component), at most 255 characters with the host;
- a tag is ``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``; a digest is ``sha256:`` and 64 lowercase hex
  digits (the only algorithm realms accepts: every digest becomes a path or a URL).

Everything that names a registry or a digest is checked here before it reaches a URL or a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from realms.errors import InvalidInput

DOCKER_HUB = "docker.io"
"""The registry of a reference without a host part."""
DEFAULT_TAG = "latest"
NAME_MAX = 255
"""The longest ``HOST/PATH`` (distribution's NameTotalLengthMax)."""

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Reference:
    registry: str
    """``HOST`` or ``HOST:PORT`` (``docker.io`` for a reference without a host)."""
    repository: str
    """The path in the registry: ``team/base`` (``library/NAME`` on docker.io)."""
    tag: str | None = None
    digest: str | None = None
    """``sha256:HEX`` (64 lowercase hex digits)."""

    def __str__(self) -> str:
        """The reference written out in full (what records and messages show)."""
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def target(self) -> str:
        """What the manifest URL ends with: the digest when there is one, else the tag (default
        ``latest``)."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def name(self) -> str:
        """``REGISTRY/REPOSITORY``: the repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def with_tag(self, tag: str) -> Reference:
        return replace(self, tag=check_tag(tag), digest=None)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=check_digest(digest))


def _invalid(text: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"invalid registry reference {text!r}: {why}",
        hint="a reference is HOST[:PORT]/PATH[:TAG][@sha256:HEX], e.g. "
        "registry.example:5000/team/base:1.0",
    )


def parse_reference(text: str) -> Reference:
    """Parse a reference, or raise InvalidInput naming what is wrong with it."""
    if not text:
        raise _invalid(text, "it is empty")
    if len(text) > NAME_MAX + 1 + 128 + 1 + 71:
        raise _invalid(text, "it is too long")
    if not text.isascii() or not text.isprintable() or " " in text:
        raise _invalid(text, "it may hold only printable ASCII characters without blanks")
    rest, digest = text, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise _invalid(text, "the digest must be sha256: and 64 lowercase hex digits")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _invalid(text, f"bad tag {tag!r} (letters, digits, . _ -, at most 128)")
    registry, repository = split_host(rest)
    registry = _check_host(text, registry)
    if not repository:
        raise _invalid(text, "it names no repository")
    for component in repository.split("/"):
        if not _COMPONENT.fullmatch(component):
            why = (
                "repository names are lowercase"
                if _COMPONENT.fullmatch(component.lower())
                else f"bad path component {component!r} (lowercase letters and digits, "
                "joined by . _ __ or -)"
            )
            raise _invalid(text, why)
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if len(registry) + 1 + len(repository) > NAME_MAX:
        raise _invalid(text, f"the name is longer than {NAME_MAX} characters")
    return Reference(registry, repository, tag, digest)


def split_host(name: str) -> tuple[str, str]:
    """``(HOST, PATH)`` of a name without tag and digest, by docker's rule for whether its first
    part is a host."""
    first, slash, remainder = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        return DOCKER_HUB, name
    return first, remainder


def _check_host(text: str, host: str) -> str:
    if host in _DOCKER_HUB_ALIASES:
        return DOCKER_HUB
    try:
        return check_host(host)
    except InvalidInput as error:
        raise _invalid(text, error.message) from None


def check_host(host: str) -> str:
    """``host`` if it is a registry host: ``NAME[:PORT]`` or ``[IPV6][:PORT]``, with DNS labels
    and a port of 1-65535; else InvalidInput. ``https://HOST/`` is read as ``HOST``, as
    ``docker login`` does; docker.io's other names become ``docker.io``."""
    original = host
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :].rstrip("/")
            host = host.removesuffix("/v1").removesuffix("/v2")
    if host in _DOCKER_HUB_ALIASES:
        return DOCKER_HUB
    name, port = host, None
    if host.startswith("["):
        end = host.find("]")
        name, after = host[: end + 1], host[end + 1 :]
        if end < 0 or not _IPV6.fullmatch(name) or (after and not after.startswith(":")):
            raise InvalidInput(f"bad registry host {original!r}")
        port = after[1:] if after else None
    elif ":" in host:
        name, _, port = host.partition(":")
    if not name.startswith("["):
        labels = name.split(".")
        if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in labels):
            raise InvalidInput(f"bad registry host {original!r}")
    if port is not None and not (
        port.isdigit() and port.isascii() and len(port) <= 5 and 0 < int(port) < 65536
    ):
        raise InvalidInput(f"bad port in registry host {original!r}")
    return host


def check_tag(tag: str) -> str:
    """``tag`` if it is a valid tag, else InvalidInput."""
    if not _TAG.fullmatch(tag):
        raise InvalidInput(f"invalid tag {tag!r} (letters, digits, . _ -, at most 128)")
    return tag


def check_digest(digest: str) -> str:
    """``digest`` if it is ``sha256:`` and 64 lowercase hex digits, else InvalidInput. Only
    checked digests become paths (the blob cache) or URLs."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidInput(f"invalid digest {digest!r} (sha256: and 64 lowercase hex digits)")
    return digest
