"""Talking to the test registry directly, as a hostile or hand-made image needs: blobs and
manifests put as they are, with no checks of realms in between."""

from __future__ import annotations

import hashlib

import requests

from tests.registry_server import RunningRegistry


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def put_blob(registry: RunningRegistry, repository: str, data: bytes) -> str:
    """Upload ``data`` as a blob of ``repository`` (one monolithic PUT); return its digest."""
    digest = sha256(data)
    started = requests.post(f"{registry.url}/v2/{repository}/blobs/uploads/", timeout=30)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    if location.startswith("/"):
        location = registry.url + location
    done = requests.put(
        location,
        params={"digest": digest},
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=120,
    )
    assert done.status_code == 201, done.text
    return digest


def put_manifest(
    registry: RunningRegistry, repository: str, tag: str, body: bytes, media_type: str
) -> str:
    """Put ``body`` as the manifest ``tag`` of ``repository``; return its digest."""
    answer = requests.put(
        f"{registry.url}/v2/{repository}/manifests/{tag}",
        data=body,
        headers={"Content-Type": media_type},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    return sha256(body)
