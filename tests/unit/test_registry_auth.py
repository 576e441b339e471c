"""Registry credentials, registries.conf and auth challenges, read as podman and docker write
them; damaged files are one-line errors naming the file."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from realms.errors import InvalidInput
from realms.registry import credentials, hosts
from realms.registry.credentials import Credentials, credentials_for, login_file
from realms.registry.transport import parse_challenge


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of its own, no auth file and no runtime directory from the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return home


def _write(path: Path, content: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_the_files_are_searched_in_podmans_order(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker = _write(
        home / ".docker/config.json", {"auths": {"https://r.example/v1/": _auth("d", "1")}}
    )
    assert credentials_for("r.example") == Credentials("d", "1")
    _write(home / ".config/containers/auth.json", {"auths": {"r.example": _auth("c", "2")}})
    assert credentials_for("r.example") == Credentials("c", "2")
    _write(tmp_path / "run/containers/auth.json", {"auths": {"r.example": _auth("x", "3")}})
    assert credentials_for("r.example") == Credentials("x", "3")
    given = _write(tmp_path / "given.json", {"auths": {"r.example": _auth("g", "4")}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(given))
    assert credentials_for("r.example") == Credentials("g", "4")
    # A file without the registry does not hide the next one.
    assert credentials_for("other.example") is None
    docker.write_text(json.dumps({"auths": {"other.example": _auth("o", "5")}}))
    assert credentials_for("other.example") == Credentials("o", "5")


def test_keys_match_by_host_and_the_most_specific_namespace(home: Path) -> None:
    _write(
        home / ".config/containers/auth.json",
        {
            "auths": {
                "r.example:5000": _auth("host", "a"),
                "r.example:5000/team": _auth("team", "b"),
                "r.example:5000/team/base": _auth("base", "c"),
                "http://plain.example": _auth("plain", "d:with:colons"),
                "https://index.docker.io/v1/": _auth("hub", "e"),
            }
        },
    )
    assert credentials_for("r.example:5000", "team/base") == Credentials("base", "c")
    assert credentials_for("r.example:5000", "team/other") == Credentials("team", "b")
    assert credentials_for("r.example:5000", "elsewhere") == Credentials("host", "a")
    assert credentials_for("r.example:5000") == Credentials("host", "a")
    assert credentials_for("r.example") is None
    assert credentials_for("plain.example") == Credentials("plain", "d:with:colons")
    assert credentials_for("docker.io", "library/ubuntu") == Credentials("hub", "e")


def test_a_password_is_not_in_the_repr(home: Path) -> None:
    assert "s3cret" not in repr(Credentials("user", "s3cret"))


def test_credential_helpers_are_not_run(home: Path) -> None:
    _write(
        home / ".docker/config.json",
        {"credsStore": "desktop", "credHelpers": {"r.example": "evil"}, "auths": {"r.example": {}}},
    )
    assert credentials_for("r.example") is None


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "is not valid JSON (line 1)"),
        ("[1, 2]", "does not hold a JSON object"),
        ('{"auths": []}', '"auths" is not a map of objects'),
        ('{"auths": {"r.example": "x"}}', '"auths" is not a map of objects'),
        ('{"auths": {"r.example": {"auth": "!!!"}}}', "is not base64 of USER:PASSWORD"),
        ('{"auths": {"r.example": {"auth": "bm9jb2xvbg=="}}}', "is not base64 of USER:PASSWORD"),
        ("[" * 100_000, "is not valid JSON"),
        ("\x00\xff", "is not valid JSON"),
    ],
)
def test_a_damaged_file_is_one_line_naming_it(home: Path, content: str, why: str) -> None:
    path = _write(home / ".config/containers/auth.json", content)
    with pytest.raises(InvalidInput) as caught:
        credentials_for("r.example")
    assert str(path) in caught.value.message
    assert why in caught.value.message
    assert "\n" not in caught.value.message


def test_a_huge_file_is_refused(home: Path) -> None:
    path = _write(home / ".config/containers/auth.json", " " * (credentials.FILE_LIMIT + 1))
    with pytest.raises(InvalidInput, match="larger than"):
        credentials_for("r.example")
    assert path.exists()


def test_login_writes_where_podman_reads_first(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert login_file() == tmp_path / "run/containers/auth.json"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    expected = (
        Path("/run/containers/0/auth.json")
        if os.geteuid() == 0
        else home / ".config/containers/auth.json"
    )
    assert login_file() == expected
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "given.json"))
    assert login_file() == tmp_path / "given.json"


def test_the_credentials_file_is_written_private_and_keeps_other_entries(home: Path) -> None:
    path = home / ".docker/config.json"
    _write(path, {"auths": {"a.example": _auth("a", "1")}, "psFormat": "table"})
    content = credentials.read(path)
    assert content is not None
    content["auths"]["b.example"] = _auth("b", "2")
    credentials.write(path, content)
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["psFormat"] == "table"
    assert credentials_for("a.example") == Credentials("a", "1")
    assert credentials_for("b.example") == Credentials("b", "2")
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]


# --- registries.conf -------------------------------------------------------------------------

V2 = """
unqualified-search-registries = ["docker.io"]

[[registry]]
location = "insecure.example:5000"
insecure = true

[[registry]]
prefix = "mixed.example/private"
location = "mirror.example/private"
blocked = true

[[registry]]
location = "*.lab.example"
insecure = true
"""

V1 = """
[registries.search]
registries = ["docker.io"]

[registries.insecure]
registries = ["old.example:5000"]

[registries.block]
registries = ["bad.example"]
"""


def test_both_formats_of_registries_conf_are_read(tmp_path: Path) -> None:
    entries = hosts.parse_registries_conf(tmp_path / "r.conf", V2 + V1)

    def entry(host: str, repository: str = "") -> hosts.RegistryEntry | None:
        return hosts.registry_entry(host, repository, entries)

    found = entry("insecure.example:5000", "a/b")
    assert found is not None and found.insecure and not found.blocked
    assert entry("insecure.example", "a") is None
    assert entry("insecure.example:50001", "a") is None
    found = entry("mixed.example", "private/x")
    assert found is not None and found.blocked
    assert entry("mixed.example", "privateer") is None
    found = entry("ci.lab.example:443", "x")
    assert found is not None and found.insecure
    assert entry("lab.example", "x") is None
    found = entry("old.example:5000", "x")
    assert found is not None and found.insecure
    found = entry("bad.example", "x")
    assert found is not None and found.blocked


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("[[registry]\nlocation = 1", "is not valid TOML"),
        ("[[registry]]\ninsecure = true", "has no location or prefix"),
        ('[[registry]]\nlocation = "a"\ninsecure = "yes"', "must be true or false"),
        ("registry = 1", "[[registry]] tables"),
        ('[registries.insecure]\nregistries = "a"', "must be a list of names"),
        ("registries = 3", "must be a table"),
    ],
)
def test_a_damaged_registries_conf_is_one_line_naming_it(
    tmp_path: Path, content: str, why: str
) -> None:
    path = tmp_path / "registries.conf"
    with pytest.raises(InvalidInput) as caught:
        hosts.parse_registries_conf(path, content)
    assert str(path) in caught.value.message
    assert why in caught.value.message


def test_containers_registries_conf_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "mine.conf", V2)
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(path))
    assert hosts.registries_conf_files() == [path]
    found = hosts.registry_entry("insecure.example:5000", "x")
    assert found is not None and found.insecure


def test_a_bad_certificate_file_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REALMS_CERTS_DIR", str(tmp_path / "certs.d"))
    assert hosts.certs_roots() == [tmp_path / "certs.d"]
    bad = _write(tmp_path / "certs.d/r.example:5000/ca.crt", "not a certificate")
    _write(tmp_path / "certs.d/r.example:5000/README", "ignored")
    with pytest.raises(InvalidInput) as caught:
        hosts.tls_context("r.example:5000")
    assert str(bad) in caught.value.message
    _, used = hosts.tls_context("other.example")
    assert used == []


# --- challenges ------------------------------------------------------------------------------


def test_challenges_are_parsed_as_the_distribution_spec_writes_them() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push repository:c:pull"'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push repository:c:pull",
    }
    basic = parse_challenge('Basic realm="Registry \\"Realm\\""')
    assert basic is not None and basic.scheme == "basic"
    assert basic.params == {"realm": 'Registry "Realm"'}
    unquoted = parse_challenge("bearer realm=https://a.example/t, service=s")
    assert unquoted is not None and unquoted.params == {
        "realm": "https://a.example/t",
        "service": "s",
    }
    assert parse_challenge("Negotiate abc") is None
    assert parse_challenge("") is None
