"""The registry the other tests use answers the Distribution API."""

from __future__ import annotations

import json
import urllib.request

from tests.system.registry.conftest import RunningRegistry


def test_registry_answers_the_distribution_api(registry: RunningRegistry) -> None:
    with urllib.request.urlopen(f"{registry.url}/v2/", timeout=5) as answer:  # noqa: S310
        assert answer.status == 200
        assert answer.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    with urllib.request.urlopen(f"{registry.url}/v2/_catalog", timeout=5) as answer:  # noqa: S310
        assert json.load(answer) == {"repositories": []}
    assert registry.host.startswith("127.0.0.1:")
