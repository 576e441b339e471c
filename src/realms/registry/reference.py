"""Registry references: ``HOST[:PORT]/PATH[:TAG][@sha256:HEX]``, parsed and checked once.

(Interface fixed; the body is being written.)
"""

from __future__ import annotations

from dataclasses import dataclass


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
        raise NotImplementedError

    @property
    def target(self) -> str:
        """What the manifest URL ends with: the digest when there is one, else the tag (default
        ``latest``)."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """``REGISTRY/REPOSITORY``: the repository, without tag or digest."""
        raise NotImplementedError

    def with_tag(self, tag: str) -> Reference:
        raise NotImplementedError

    def with_digest(self, digest: str) -> Reference:
        raise NotImplementedError


def parse_reference(text: str) -> Reference:
    """Parse a reference, or raise InvalidInput naming what is wrong with it."""
    raise NotImplementedError


def check_digest(digest: str) -> str:
    """``digest`` if it is ``sha256:`` and 64 lowercase hex digits, else InvalidInput. Only
    checked digests become paths (the blob cache) or URLs."""
    raise NotImplementedError
