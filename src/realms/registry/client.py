"""The OCI Distribution API over ``requests``: one :class:`Repository` per repository.

Each method is one operation of the distribution spec (manifests by tag or digest, blobs by
digest, uploads, cross-repository mounts); the registry's host, TLS, authentication, retries and
error lines are :mod:`.transport`'s. What comes back is bounded (manifests at most
MANIFEST_LIMIT bytes, error bodies and tokens smaller) and a manifest asked by digest is checked
against it; blobs stream to the caller, who hashes them.

Errors: NotFound for a 404 that a method does not answer with None, RegistryError (a
RealmsError with the HTTP status) for the rest, InvalidInput for an answer that breaks the
protocol (a manifest of another digest, a Content-Range that was not asked for). A blob
download cut off midway raises RegistryError with status None from the chunk iterator: open
the blob again from where it stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin

import requests

from realms import log
from realms.errors import InvalidInput, NotFound
from realms.registry.reference import (
    Reference,
    check_digest,
    check_tag,
    parse_reference,
)
from realms.registry.transport import (
    RETRY_STATUSES,
    RegistryError,
    Transport,
    error_for,
    read_body,
    transport,
)

MANIFEST_LIMIT = 4 * 1024 * 1024
"""The largest manifest or index read (the OCI distribution spec's suggestion)."""
CHUNK = 1 << 20
"""The size of the chunks a blob download yields."""
UPLOAD_CHUNK = 8 << 20
"""A blob up to this size is uploaded in one PUT; a larger one in PATCHes of this size (held in
memory, so a retry can send the chunk again)."""

__all__ = [
    "MANIFEST_LIMIT",
    "BlobStream",
    "Manifest",
    "RegistryError",
    "Repository",
]


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


def _check_target(target: str) -> str:
    return check_digest(target) if target.startswith("sha256:") else check_tag(target)


def _digest_of(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


class Repository:
    """One repository of one registry; authentication, TLS, retries and errors inside.

    Every failure is a RealmsError with one line naming the registry, the repository and what
    failed (401: not logged in or wrong credentials, 403, 404: no such repository, tag or blob,
    429 and 5xx after the retries); never a traceback, never a secret."""

    def __init__(self, reference: Reference, *, tls_verify: bool | None = None) -> None:
        self.reference = reference
        self.tls_verify = tls_verify
        """As asked: a pull records ``False`` so that pulling again asks the same."""
        self.host = reference.registry
        self.name = reference.repository
        self.transport: Transport = transport(self.host, self.name, tls_verify)
        self._pull = (f"repository:{self.name}:pull",)
        self._push = (f"repository:{self.name}:pull,push",)

    def __repr__(self) -> str:
        return f"Repository({self.reference.name!r})"

    def _request(
        self, method: str, target: str, scopes: tuple[str, ...], **kwargs: Any
    ) -> requests.Response:
        return self.transport.request(method, target, repository=self.name, scopes=scopes, **kwargs)

    def _subject(self, what: str, target: str) -> str:
        separator = "@" if target.startswith("sha256:") else ":"
        return f"{what} {self.name}{separator}{target}"

    # -- manifests ---------------------------------------------------------------------------

    def get_manifest(self, target: str, accept: tuple[str, ...]) -> Manifest:
        """The manifest or index named by a tag or a digest (at most MANIFEST_LIMIT bytes; a
        digest target is checked against the body)."""
        target = _check_target(target)
        subject = self._subject("manifest", target)
        headers = {"Accept": ", ".join(accept)}
        url = f"/v2/{self.name}/manifests/{target}"
        with self._request("GET", url, self._pull, headers=headers) as response:
            if response.status_code != 200:
                raise error_for(self.host, response, subject)
            body = read_body(response, MANIFEST_LIMIT)
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if body is None:
            raise InvalidInput(
                f"{self.host} sent a {subject} larger than {MANIFEST_LIMIT} bytes: refused"
            )
        digest = _digest_of(body)
        if target.startswith("sha256:") and digest != target:
            raise InvalidInput(f"{self.host} sent a {subject} whose digest is {digest}: refused")
        return Manifest(body, media_type, digest)

    def head_manifest(self, target: str, accept: tuple[str, ...]) -> str | None:
        """The digest the tag or digest names now (HEAD, Docker-Content-Digest; a GET where the
        registry gives no digest), None when there is no such manifest."""
        target = _check_target(target)
        headers = {"Accept": ", ".join(accept)}
        url = f"/v2/{self.name}/manifests/{target}"
        with self._request("HEAD", url, self._pull, headers=headers) as response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise error_for(self.host, response, self._subject("manifest", target))
            given = response.headers.get("Docker-Content-Digest", "")
        if target.startswith("sha256:"):
            return target
        try:
            return check_digest(given)
        except InvalidInput:
            pass
        try:
            return self.get_manifest(target, accept).digest
        except NotFound:
            return None

    def put_manifest(self, target: str, body: bytes, media_type: str) -> str:
        """Upload a manifest under a tag (or its digest); return its digest."""
        target = _check_target(target)
        digest = _digest_of(body)
        if target.startswith("sha256:") and target != digest:
            raise InvalidInput(f"a manifest put under {target} has the digest {digest}")
        if len(body) > MANIFEST_LIMIT:
            raise InvalidInput(f"a manifest of {len(body)} bytes is larger than registries take")
        url = f"/v2/{self.name}/manifests/{target}"
        headers = {"Content-Type": media_type}
        with self._request("PUT", url, self._push, headers=headers, data=body) as response:
            if response.status_code not in (200, 201, 202):
                raise error_for(self.host, response, self._subject("manifest", target))
        return digest

    def delete_manifest(self, digest: str) -> None:
        """Delete a manifest by its digest (where the registry allows deletes)."""
        digest = check_digest(digest)
        url = f"/v2/{self.name}/manifests/{digest}"
        with self._request("DELETE", url, self._push) as response:
            if response.status_code not in (200, 202):
                raise error_for(self.host, response, self._subject("manifest", digest))

    # -- blobs -------------------------------------------------------------------------------

    def blob_size(self, digest: str) -> int | None:
        """HEAD of a blob: its size, None when the repository does not have it."""
        digest = check_digest(digest)
        url = f"/v2/{self.name}/blobs/{digest}"
        with self._request("HEAD", url, self._pull, allow_redirects=True) as response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise error_for(self.host, response, f"blob {digest} of {self.name}")
            length = response.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):
            raise InvalidInput(f"{self.host} gave no size for blob {digest} of {self.name}")
        return int(length)

    def open_blob(self, digest: str, offset: int = 0) -> AbstractContextManager[BlobStream]:
        """GET a blob from ``offset`` (a ranged GET when offset > 0), streamed in chunks; the
        connection is closed when the block ends. The caller hashes what it reads."""
        return self._open_blob(check_digest(digest), offset)

    @contextmanager
    def _open_blob(self, digest: str, offset: int) -> Iterator[BlobStream]:
        subject = f"blob {digest} of {self.name}"
        headers = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        url = f"/v2/{self.name}/blobs/{digest}"
        with self._request("GET", url, self._pull, headers=headers) as response:
            size: int | None
            if response.status_code == 206:
                start, size = _content_range(response.headers.get("Content-Range", ""))
                if start != offset:
                    raise InvalidInput(f"{self.host} sent {subject} from {start}, not {offset}")
            elif response.status_code == 200:
                start = 0
                length = response.headers.get("Content-Length", "")
                size = int(length) if length.isascii() and length.isdigit() else None
            else:
                raise error_for(self.host, response, subject)
            yield BlobStream(self._chunks(response, subject), start, size)

    def _chunks(self, response: requests.Response, subject: str) -> Iterator[bytes]:
        try:
            yield from response.iter_content(CHUNK)
        except requests.RequestException as error:
            raise RegistryError(
                f"the download of {subject} from {self.host} was cut off ({type(error).__name__})"
            ) from None

    def mount_blob(self, digest: str, source_repository: str) -> bool:
        """Ask the registry to mount the blob from another repository of the same registry;
        True when it did (201), False when the caller must upload it."""
        digest = check_digest(digest)
        source = parse_reference(f"{self.host}/{source_repository}").repository
        scopes = (*self._push, f"repository:{source}:pull")
        url = f"/v2/{self.name}/blobs/uploads/"
        params = {"mount": digest, "from": source}
        with self._request("POST", url, scopes, params=params) as response:
            if response.status_code == 201:
                return True
            if response.status_code != 202:
                raise error_for(self.host, response, f"mount of blob {digest} into {self.name}")
            location = response.headers.get("Location")
        if location:
            # The registry started an upload instead; it is not used: cancel it.
            with suppress(RegistryError):
                self._request("DELETE", self._upload_url(location), self._push).close()
        return False

    def _upload_url(self, location: str) -> str:
        return urljoin(f"{self.transport.base}/v2/{self.name}/blobs/uploads/", location)

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
        digest = check_digest(digest)
        if isinstance(data, Path):
            with data.open("rb") as handle:
                self._upload_again_if_cut(digest, handle, size, on_progress)
        else:
            self._upload_again_if_cut(digest, data, size, on_progress)

    def _upload_again_if_cut(
        self,
        digest: str,
        data: IO[bytes],
        size: int,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        """An upload that fails after the transport's retries starts once more from the
        beginning when ``data`` can be read again: a registry that wrote part of a chunk does
        not resume that upload (Distribution drops it). Progress is reported once per byte."""
        origin = data.tell() if data.seekable() else None
        reached = 0

        def report(position: int) -> None:
            nonlocal reached
            if on_progress is not None and position > reached:
                on_progress(position - reached)
            reached = max(reached, position)

        for attempt in (1, 2):
            try:
                self._upload(digest, data, size, report)
                return
            except RegistryError as error:
                again = error.status is None or error.status in (404, 416, *RETRY_STATUSES)
                if attempt == 2 or origin is None or not again:
                    raise
                log.debug(f"{error.message}; the upload starts again")
                data.seek(origin)

    def _upload(
        self, digest: str, data: IO[bytes], size: int, report: Callable[[int], None]
    ) -> None:
        subject = f"upload of blob {digest} to {self.name}"
        url = f"/v2/{self.name}/blobs/uploads/"
        with self._request("POST", url, self._push) as response:
            if response.status_code != 202 or not response.headers.get("Location"):
                raise error_for(self.host, response, subject)
            location = self._upload_url(response.headers["Location"])
        sent = 0
        if size > UPLOAD_CHUNK:
            while sent < size:
                chunk = _read_exactly(data, min(UPLOAD_CHUNK, size - sent), subject)
                location = self._patch(location, chunk, sent, subject)
                sent += len(chunk)
                report(sent)
            body = b""
        else:
            body = _read_exactly(data, size, subject)
        headers = {"Content-Type": "application/octet-stream"}
        params = {"digest": digest}
        with self._request(
            "PUT", location, self._push, headers=headers, params=params, data=body
        ) as response:
            if response.status_code not in (201, 204):
                raise error_for(self.host, response, subject)
        report(size)

    def _patch(self, location: str, chunk: bytes, start: int, subject: str) -> str:
        """Send one chunk of an upload from byte ``start``; the next upload URL."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(chunk) - 1}",
        }
        with self._request("PATCH", location, self._push, headers=headers, data=chunk) as answer:
            if answer.status_code != 202 or not answer.headers.get("Location"):
                raise error_for(self.host, answer, subject)
            return self._upload_url(answer.headers["Location"])


def _read_exactly(data: IO[bytes], count: int, subject: str) -> bytes:
    chunk = data.read(count)
    if len(chunk) != count:
        raise InvalidInput(f"the data for the {subject} ended early")
    return chunk


def _content_range(value: str) -> tuple[int, int | None]:
    """``start`` and the total size of ``bytes START-END/TOTAL`` (TOTAL may be ``*``)."""
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    start, _, end = span.partition("-")
    if unit != "bytes" or not (start.isascii() and start.isdigit() and end.isdigit()):
        raise InvalidInput(f"a registry answered a ranged GET with Content-Range {value!r}")
    return int(start), int(total) if total.isascii() and total.isdigit() else None


TLS_KEY = "tls-verify"
"""A pulled version's source records ``"tls-verify": "false"`` when it was pulled with
``--tls-verify=false``: pulling it again, ``pull --all`` and ``outdated`` ask the same unless
told otherwise (the user chose it for this reference; registries.conf decides the rest)."""


def remembered_tls(repo: Repository) -> dict[str, str]:
    """What a pulled version's source keeps of how ``repo`` was asked."""
    return {TLS_KEY: "false"} if repo.tls_verify is False else {}


def tls_from_source(source: dict[str, str], tls_verify: bool | None) -> bool | None:
    """How to ask the registry a pulled version came from: as told, else as it was pulled."""
    if tls_verify is not None:
        return tls_verify
    return False if source.get(TLS_KEY) == "false" else None
