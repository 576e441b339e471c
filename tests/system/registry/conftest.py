"""Fixtures of the registry tests (see :mod:`tests.registry_server`).

- ``registry_binary`` and ``registry`` (in tests/system/conftest.py, for every system test): the
  unpacked ``docker-registry`` program, and a plain-http registry with deletes enabled; ``.host``
  is ``127.0.0.1:PORT``, ``.storage`` its data directory (tests that play a hostile registry
  write there behind its back).
- ``insecure_registry``: realms, skopeo and buildah treat ``registry`` as insecure, through the
  registries.conf they all read, as a user would configure it (a module uses it for all its
  tests with ``pytestmark = pytest.mark.usefixtures("insecure_registry")``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry_server import RunningRegistry, start_registry

__all__ = ["RunningRegistry", "start_registry"]


# --- registries with authentication (helper A) -----------------------------------------------

from dataclasses import dataclass

from tests.system.registry.secure import (
    Certificates,
    TokenServer,
    make_certificates,
    serve_tokens,
    write_htpasswd,
)

USERNAME, PASSWORD = "realms-user", "s3cret pass:word"


@dataclass(frozen=True)
class SecureRegistry:
    """``secure_registry``: docker-registry with htpasswd (bcrypt) authentication and TLS with a
    certificate of a CA made in the test. ``certs_dir`` is a certs.d root holding
    ``HOST/ca.crt`` (give it as ``REALMS_CERTS_DIR``)."""

    registry: RunningRegistry
    certificates: Certificates
    certs_dir: Path
    username: str = USERNAME
    password: str = PASSWORD

    @property
    def host(self) -> str:
        return self.registry.host


@pytest.fixture
def secure_registry(registry_binary: Path, tmp_path: Path) -> Iterator[SecureRegistry]:
    certificates = make_certificates(tmp_path / "tls")
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {USERNAME: PASSWORD})
    extra = {
        "auth": {"htpasswd": {"realm": "realms-test", "path": str(htpasswd)}},
        "http": {
            "tls": {"certificate": str(certificates.certificate), "key": str(certificates.key)}
        },
    }
    with start_registry(registry_binary, tmp_path / "secure-registry", extra) as running:
        certs_dir = tmp_path / "certs.d"
        (certs_dir / running.host).mkdir(parents=True)
        (certs_dir / running.host / "ca.crt").write_bytes(certificates.ca.read_bytes())
        yield SecureRegistry(running, certificates, certs_dir)


@dataclass(frozen=True)
class TokenRegistry:
    """``token_registry``: plain-http docker-registry with ``auth: token``, its tokens from a
    local token server (``tokens``) signing JWTs with a key of the test."""

    registry: RunningRegistry
    tokens: TokenServer
    username: str = USERNAME
    password: str = PASSWORD

    @property
    def host(self) -> str:
        return self.registry.host


@pytest.fixture
def token_registry(registry_binary: Path, tmp_path: Path) -> Iterator[TokenRegistry]:
    tokens = TokenServer({USERNAME: PASSWORD})
    tokens.prepare(tmp_path)
    with serve_tokens(tokens):
        extra = {
            "auth": {
                "token": {
                    "realm": tokens.url,
                    "service": tokens.service,
                    "issuer": tokens.issuer,
                    "rootcertbundle": str(tokens.signing_certificate),
                }
            }
        }
        with start_registry(registry_binary, tmp_path / "token-registry", extra) as running:
            yield TokenRegistry(running, tokens)


@pytest.fixture
def insecure_registry(
    registry: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
