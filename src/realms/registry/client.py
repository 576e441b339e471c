"""The OCI Distribution API over ``requests``: one :class:`Repository` per repository.

(Interface fixed; the body is being written.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from realms.registry.reference import Reference

MANIFEST_LIMIT = 4 * 1024 * 1024
"""The largest manifest or index read (the OCI distribution spec's suggestion)."""


@dataclass(frozen=True)
class Manifest:
    body: bytes
    """The bytes as served (their sha256 is ``digest``; checked against a digest reference)."""
    media_type: str
    """The Content-Type the registry gave (the body's own mediaType is checked by the parser)."""
    digest: str


@dataclass(frozen=True)
class BlobStream:
    """An open GET of a blob from ``offset``."""

    chunks: Iterator[bytes]
    offset: int
    """Where the stream starts: the asked offset when the registry honoured the range, else 0."""
    size: int | None
    """The blob's whole size when the registry said it."""


class Repository:
    """One repository of one registry; authentication, TLS, retries and errors inside.

    Every failure is a RealmsError with one line naming the registry, the repository and what
    failed (401: not logged in or wrong credentials, 403, 404: no such repository, tag or blob,
    429 and 5xx after the retries); never a traceback, never a secret."""

    def __init__(self, reference: Reference, *, tls_verify: bool | None = None) -> None:
        self.reference = reference
        raise NotImplementedError

    def get_manifest(self, target: str, accept: tuple[str, ...]) -> Manifest:
        """The manifest or index named by a tag or a digest (at most MANIFEST_LIMIT bytes; a
        digest target is checked against the body)."""
        raise NotImplementedError

    def head_manifest(self, target: str, accept: tuple[str, ...]) -> str | None:
        """The digest the tag or digest names now (HEAD, Docker-Content-Digest; a GET where the
        registry gives no digest), None when there is no such manifest."""
        raise NotImplementedError

    def put_manifest(self, target: str, body: bytes, media_type: str) -> str:
        """Upload a manifest under a tag (or its digest); return its digest."""
        raise NotImplementedError

    def blob_size(self, digest: str) -> int | None:
        """HEAD of a blob: its size, None when the repository does not have it."""
        raise NotImplementedError

    def open_blob(self, digest: str, offset: int = 0) -> AbstractContextManager[BlobStream]:
        """GET a blob from ``offset`` (a ranged GET when offset > 0), streamed in chunks; the
        connection is closed when the block ends. The caller hashes what it reads."""
        raise NotImplementedError

    def mount_blob(self, digest: str, source_repository: str) -> bool:
        """Ask the registry to mount the blob from another repository of the same registry;
        True when it did (201), False when the caller must upload it."""
        raise NotImplementedError

    def upload_blob(
        self,
        digest: str,
        data: IO[bytes] | Path,
        size: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Upload a blob (POST, then PATCH in chunks, then PUT with the digest); ``data`` is read
        from its current position; ``on_progress`` is called with each amount sent. The registry
        checks the digest."""
        raise NotImplementedError
