"""Credentials and TLS against real registries: docker-registry with htpasswd (bcrypt) and TLS
from a CA made in the test, and docker-registry with bearer tokens from a local token server.
``realms registry login`` and ``logout`` run as the real command."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from realms.errors import NotFound
from realms.registry.client import Repository
from realms.registry.reference import parse_reference
from realms.registry.transport import RegistryError
from tests.helpers import Realms
from tests.system.registry.conftest import SecureRegistry, TokenRegistry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _push_and_pull(repo: Repository, tag: str) -> None:
    """Upload a config and a layer, put a manifest naming them, read everything back."""
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer bytes " + tag.encode()
    for blob in (config, layer):
        repo.upload_blob(_digest(blob), io.BytesIO(blob), len(blob))
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    digest = repo.put_manifest(tag, body, OCI_MANIFEST)
    assert repo.get_manifest(tag, (OCI_MANIFEST,)).body == body
    assert repo.head_manifest(tag, (OCI_MANIFEST,)) == digest
    with repo.open_blob(_digest(layer), 3) as stream:
        assert b"".join(stream.chunks) == layer[3:]


@pytest.fixture
def cli(tmp_path: Path) -> Realms:
    """The real command line; login and logout need no store."""
    return Realms(tmp_path / "no-store")


@pytest.fixture
def auth_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials go to (and are read from) a file of the test's only."""
    path = tmp_path / "auth" / "auth.json"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(tmp_path / "no-registries.conf"))
    return path


def _env(secure: SecureRegistry | None = None, certs: Path | None = None) -> dict[str, str]:
    certs_dir = certs if certs is not None else secure.certs_dir if secure else None
    return {"REALMS_CERTS_DIR": str(certs_dir)} if certs_dir is not None else {}


def test_login_then_push_and_pull_over_tls_with_the_ca_in_certs_d(
    secure_registry: SecureRegistry, auth_file: Path, cli: Realms, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = secure_registry.host
    result = cli(
        "-v",
        "registry",
        "login",
        host,
        "--username",
        secure_registry.username,
        "--password-stdin",
        input=secure_registry.password + "\n",
        env=_env(secure_registry),
    )
    assert f"Logged in to {host}; credentials kept in {auth_file}" in result.stderr
    assert secure_registry.password not in result.stdout + result.stderr
    assert auth_file.stat().st_mode & 0o777 == 0o600
    assert list(json.loads(auth_file.read_text())["auths"]) == [host]
    monkeypatch.setenv("REALMS_CERTS_DIR", str(secure_registry.certs_dir))
    _push_and_pull(Repository(parse_reference(f"{host}/team/base")), "1.0")
    assert secure_registry.password not in repr(Repository(parse_reference(f"{host}/team/base")))


def test_without_credentials_the_401_line(
    secure_registry: SecureRegistry, auth_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REALMS_CERTS_DIR", str(secure_registry.certs_dir))
    repo = Repository(parse_reference(f"{secure_registry.host}/team/base"))
    with pytest.raises(RegistryError) as caught:
        repo.head_manifest("1.0", (OCI_MANIFEST,))
    assert caught.value.message == (
        f"not logged in to {secure_registry.host} or wrong credentials (for manifest team/base:1.0)"
    )
    assert caught.value.hint == f"realms registry login {secure_registry.host}"


def test_a_wrong_password_is_refused_and_nothing_kept(
    secure_registry: SecureRegistry, auth_file: Path, cli: Realms
) -> None:
    result = cli(
        "registry",
        "login",
        secure_registry.host,
        "--username",
        secure_registry.username,
        "--password-stdin",
        input="wrong password\n",
        env=_env(secure_registry),
        check=False,
    )
    assert result.returncode == 1
    assert f"wrong username or password for {secure_registry.host}" in result.stderr
    assert "wrong password" not in result.stderr.replace("wrong username or password", "")
    assert not auth_file.exists()


def test_without_the_ca_the_tls_line_and_with_tls_verify_false_it_works(
    secure_registry: SecureRegistry, auth_file: Path, cli: Realms, tmp_path: Path
) -> None:
    host = secure_registry.host
    login = ("registry", "login", host, "--username", secure_registry.username, "--password-stdin")
    no_ca = tmp_path / "empty-certs.d"
    no_ca.mkdir()
    result = cli(*login, input=secure_registry.password, env=_env(certs=no_ca), check=False)
    assert result.returncode == 1
    assert (
        f"realms: error: TLS connection to {host} failed: its certificate is not signed by a "
        "trusted CA or does not name the host" in result.stderr
    )
    assert f"/etc/containers/certs.d/{host}/ca.crt" in result.stderr
    assert not auth_file.exists()
    cli(*login, "--tls-verify=false", input=secure_registry.password, env=_env(certs=no_ca))
    assert host in json.loads(auth_file.read_text())["auths"]


def test_logout_removes_the_host_from_every_file_and_keeps_the_rest(
    secure_registry: SecureRegistry, auth_file: Path, cli: Realms, tmp_path: Path
) -> None:
    host = secure_registry.host
    docker = tmp_path / "home/.docker/config.json"
    docker.parent.mkdir(parents=True)
    docker.write_text(
        json.dumps(
            {"auths": {f"https://{host}/v1/": {"auth": "dTpw"}, "other.example": {"auth": "dTpw"}}}
        )
    )
    cli(
        "registry",
        "login",
        host,
        "--username",
        secure_registry.username,
        "--password-stdin",
        input=secure_registry.password,
        env=_env(secure_registry) | {"HOME": str(tmp_path / "home")},
    )
    result = cli("registry", "logout", host, env={"HOME": str(tmp_path / "home")})
    assert f"Logged out of {host}: removed from {auth_file}, {docker}" in result.stderr
    assert json.loads(auth_file.read_text()) == {"auths": {}}
    assert json.loads(docker.read_text()) == {"auths": {"other.example": {"auth": "dTpw"}}}
    result = cli("registry", "logout", host, env={"HOME": str(tmp_path / "home")})
    assert f"No credentials were kept for {host}" in result.stderr


def test_bearer_tokens_for_pull_push_and_mount(
    token_registry: TokenRegistry, auth_file: Path, cli: Realms
) -> None:
    host = token_registry.host
    anonymous = Repository(parse_reference(f"{host}/team/base"), tls_verify=False)
    with pytest.raises(RegistryError, match=f"not logged in to {host} or wrong credentials"):
        anonymous.head_manifest("1.0", (OCI_MANIFEST,))
    cli(
        "registry",
        "login",
        host,
        "--username",
        token_registry.username,
        "--password-stdin",
        "--tls-verify=false",
        input=token_registry.password,
    )
    repo = Repository(parse_reference(f"{host}/team/base"), tls_verify=False)
    _push_and_pull(repo, "1.0")
    scopes = [scope for query in token_registry.tokens.requests for scope in query.get("scope", [])]
    assert "repository:team/base:pull,push" in scopes
    requests = token_registry.tokens.requests
    assert "account" not in requests[0]
    assert requests[-1].get("account") == [token_registry.username]
    # A mount asks for pull on the source repository too.
    layer = b"layer bytes 1.0"
    other = Repository(parse_reference(f"{host}/team/other"), tls_verify=False)
    assert other.mount_blob(_digest(layer), "team/base") is True
    assert other.blob_size(_digest(layer)) == len(layer)
    assert any(
        {"repository:team/base:pull", "repository:team/other:pull,push"} <= set(q.get("scope", []))
        for q in token_registry.tokens.requests
    )
    with pytest.raises(NotFound):
        other.get_manifest("1.0", (OCI_MANIFEST,))
