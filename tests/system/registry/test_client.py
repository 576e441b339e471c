"""The Distribution client against a real docker-registry: manifests, blobs, ranged GETs,
mounts, chunked uploads, and the one-line errors; retries against a local server that answers
429 and 503 (a real registry cannot be made to)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from realms.errors import InvalidInput, NotFound, RealmsError
from realms.registry.client import UPLOAD_CHUNK, Repository
from realms.registry.reference import parse_reference
from realms.registry.transport import RegistryError
from tests.registry_server import free_port
from tests.system.registry.conftest import RunningRegistry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = (OCI_MANIFEST,)


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def repository(registry: RunningRegistry, path: str) -> Repository:
    return Repository(parse_reference(f"{registry.host}/{path}"), tls_verify=False)


def image_manifest(config: bytes, layer: bytes) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()


def push_image(repo: Repository, tag: str, layer: bytes) -> tuple[str, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    for blob in (config, layer):
        repo.upload_blob(digest_of(blob), io.BytesIO(blob), len(blob))
    body = image_manifest(config, layer)
    return repo.put_manifest(tag, body, OCI_MANIFEST), body


def test_a_manifest_put_is_got_and_headed_by_tag_and_digest(registry: RunningRegistry) -> None:
    repo = repository(registry, "team/base")
    digest, body = push_image(repo, "1.0", b"layer one")
    assert digest == digest_of(body)
    got = repo.get_manifest("1.0", ACCEPT)
    assert (got.body, got.digest, got.media_type) == (body, digest, OCI_MANIFEST)
    assert repo.get_manifest(digest, ACCEPT).body == body
    assert repo.head_manifest("1.0", ACCEPT) == digest
    assert repo.head_manifest(digest, ACCEPT) == digest
    assert repo.head_manifest("2.0", ACCEPT) is None
    # The tag moves; HEAD sees it.
    moved, _ = push_image(repo, "1.0", b"layer two")
    assert moved != digest
    assert repo.head_manifest("1.0", ACCEPT) == moved


def test_a_manifest_the_registry_changed_is_refused(registry: RunningRegistry) -> None:
    repo = repository(registry, "team/base")
    digest, body = push_image(repo, "1.0", b"layer")
    # Behind the registry's back: the stored manifest's bytes become another manifest.
    hexdigest = digest.split(":")[1]
    data = registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    data.write_bytes(body.replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    with pytest.raises(InvalidInput, match="whose digest is sha256:"):
        repo.get_manifest(digest, ACCEPT)


def test_blobs_upload_in_one_put_or_in_chunks_and_read_back(registry: RunningRegistry) -> None:
    repo = repository(registry, "team/base")
    small = b"a small blob"
    large = bytes(range(256)) * ((2 * UPLOAD_CHUNK + 12345) // 256)
    sent: list[int] = []
    assert repo.blob_size(digest_of(large)) is None
    repo.upload_blob(digest_of(small), io.BytesIO(small), len(small))
    path = registry.storage.parent / "large.bin"
    path.write_bytes(large)
    repo.upload_blob(digest_of(large), path, len(large), on_progress=sent.append)
    assert sum(sent) == len(large) and len(sent) == 3
    assert repo.blob_size(digest_of(small)) == len(small)
    assert repo.blob_size(digest_of(large)) == len(large)
    with repo.open_blob(digest_of(large)) as stream:
        assert (stream.offset, stream.size) == (0, len(large))
        assert b"".join(stream.chunks) == large


def test_a_download_resumes_with_a_ranged_get(registry: RunningRegistry) -> None:
    repo = repository(registry, "team/base")
    blob = bytes(range(256)) * 4096 * 3
    digest = digest_of(blob)
    repo.upload_blob(digest, io.BytesIO(blob), len(blob))
    # The first download stops after its first chunk; the second goes on from there.
    with repo.open_blob(digest) as stream:
        first = next(stream.chunks)
    assert 0 < len(first) < len(blob)
    with repo.open_blob(digest, len(first)) as stream:
        assert (stream.offset, stream.size) == (len(first), len(blob))
        rest = b"".join(stream.chunks)
    assert hashlib.sha256(first + rest).hexdigest() == digest.split(":")[1]


def test_a_blob_is_mounted_from_another_repository(registry: RunningRegistry) -> None:
    source, target = repository(registry, "team/base"), repository(registry, "team/other")
    blob = b"shared layer"
    source.upload_blob(digest_of(blob), io.BytesIO(blob), len(blob))
    assert target.blob_size(digest_of(blob)) is None
    assert target.mount_blob(digest_of(blob), "team/base") is True
    assert target.blob_size(digest_of(blob)) == len(blob)
    missing = digest_of(b"nobody has this")
    assert target.mount_blob(missing, "team/base") is False
    assert target.blob_size(missing) is None
    with pytest.raises(InvalidInput, match="invalid registry reference"):
        target.mount_blob(digest_of(blob), "../etc")


def test_a_wrong_digest_is_refused_by_the_registry(registry: RunningRegistry) -> None:
    repo = repository(registry, "team/base")
    with pytest.raises(RegistryError) as caught:
        repo.upload_blob(digest_of(b"other"), io.BytesIO(b"bytes"), 5)
    assert caught.value.status == 400
    assert "DIGEST_INVALID" in caught.value.message
    assert repo.blob_size(digest_of(b"other")) is None


def test_missing_things_read_well(registry: RunningRegistry) -> None:
    repo = repository(registry, "team/base")
    with pytest.raises(NotFound) as caught:
        repo.get_manifest("nope", ACCEPT)
    assert caught.value.message == f"no such manifest team/base:nope on {registry.host}"
    blob = digest_of(b"missing")
    with pytest.raises(NotFound) as caught, repo.open_blob(blob):
        pass
    assert caught.value.message == f"no such blob {blob} of team/base on {registry.host}"
    with pytest.raises(InvalidInput, match="invalid tag"):
        repo.get_manifest("../../etc", ACCEPT)


def test_a_plain_registry_is_not_reached_with_tls_verified(registry: RunningRegistry) -> None:
    repo = Repository(parse_reference(f"{registry.host}/team/base"), tls_verify=True)
    with pytest.raises(RegistryError) as caught:
        repo.get_manifest("1", ACCEPT)
    assert caught.value.message == (
        f"TLS connection to {registry.host} failed: it does not speak TLS (a plain HTTP registry?)"
    )
    assert caught.value.hint is not None and "--tls-verify=false" in caught.value.hint


def test_insecure_in_registries_conf_allows_plain_http(
    registry: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
    repo = Repository(parse_reference(f"{registry.host}/team/base"))
    assert repo.head_manifest("1", ACCEPT) is None
    blocking = tmp_path / "blocking.conf"
    blocking.write_text(f'[[registry]]\nlocation = "{registry.host}/team"\nblocked = true\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(blocking))
    with pytest.raises(RealmsError, match=r"is blocked in registries\.conf"):
        Repository(parse_reference(f"{registry.host}/team/base"))


def test_a_registry_that_does_not_run_is_one_line() -> None:
    host = f"127.0.0.1:{free_port()}"
    repo = Repository(parse_reference(f"{host}/team/base"), tls_verify=False)
    with pytest.raises(RegistryError) as caught:
        repo.head_manifest("1", ACCEPT)
    assert caught.value.message == f"cannot connect to registry {host} (4 tries)"


# --- retries (a local server plays the overloaded registry) ---------------------------------


class Overloaded(BaseHTTPRequestHandler):
    """Answers each path with the statuses queued for it, then 200 with a manifest; a queued
    206 is a transfer cut off midway."""

    answers: dict[str, list[tuple[int, dict[str, str]]]]
    seen: list[str]
    body = image_manifest(b"{}", b"")

    def do_GET(self) -> None:
        self.seen.append(self.path)
        queued = self.answers.get(self.path, [])
        status, headers = queued.pop(0) if queued else (200, {})
        payload = (
            self.body if status == 200 else b'{"errors":[{"code":"TOOMANY","message":"slow down"}]}'
        )
        if status == 206:
            # A cut transfer: 95 bytes promised, 10 sent, the connection closed.
            self.send_response(206)
            self.send_header("Content-Length", "95")
            self.send_header("Connection", "close")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Type", OCI_MANIFEST if status == 200 else "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def overloaded() -> Iterator[tuple[str, type[Overloaded]]]:
    handler = type("Handler", (Overloaded,), {"answers": {}, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_429_and_5xx_are_retried_honouring_retry_after(
    overloaded: tuple[str, type[Overloaded]],
) -> None:
    host, handler = overloaded
    path = "/v2/team/base/manifests/1"
    handler.answers[path] = [(429, {"Retry-After": "0"}), (503, {"Retry-After": "0"})]
    repo = Repository(parse_reference(f"{host}/team/base:1"), tls_verify=False)
    manifest = repo.get_manifest("1", ACCEPT)
    assert manifest.body == Overloaded.body
    assert handler.seen.count(path) == 3


def test_429_after_every_try_is_one_line(overloaded: tuple[str, type[Overloaded]]) -> None:
    host, handler = overloaded
    path = "/v2/team/base/manifests/1"
    handler.answers[path] = [(429, {"Retry-After": "0"})] * 4 + [(200, {})]
    repo = Repository(parse_reference(f"{host}/team/base:1"), tls_verify=False)
    with pytest.raises(RegistryError) as caught:
        repo.get_manifest("1", ACCEPT)
    assert caught.value.message == (
        f"{host} refused manifest team/base:1: too many requests (HTTP 429, 4 tries) "
        "(TOOMANY slow down)"
    )
    assert handler.seen.count(path) == 4


def test_a_download_cut_off_midway_is_one_line(
    overloaded: tuple[str, type[Overloaded]],
) -> None:
    """The server promises more bytes than it sends and closes: the chunks end in an error
    that says so (the caller opens the blob again from where it stopped)."""
    host, handler = overloaded
    digest = digest_of(b"whole")
    handler.answers[f"/v2/team/base/blobs/{digest}"] = [(206, {"Content-Range": "bytes 5-99/100"})]
    repo = Repository(parse_reference(f"{host}/team/base"), tls_verify=False)
    with repo.open_blob(digest, 5) as stream:
        assert (stream.offset, stream.size) == (5, 100)
        with pytest.raises(RegistryError) as caught:
            b"".join(stream.chunks)
    assert caught.value.status is None
    assert caught.value.message == (
        f"the download of blob {digest} of team/base from {host} was cut off (ChunkedEncodingError)"
    )
