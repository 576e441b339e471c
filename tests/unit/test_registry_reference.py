"""Registry references are parsed with docker's normalisation and refuse what is not one."""

from __future__ import annotations

import pytest

from realms.errors import InvalidInput
from realms.registry.reference import (
    Reference,
    check_digest,
    check_host,
    check_tag,
    parse_reference,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", None, None),
        ("ubuntu:24.04", "docker.io", "library/ubuntu", "24.04", None),
        ("team/base", "docker.io", "team/base", None, None),
        ("docker.io/ubuntu", "docker.io", "library/ubuntu", None, None),
        ("index.docker.io/team/x:1", "docker.io", "team/x", "1", None),
        ("localhost/base", "localhost", "base", None, None),
        ("localhost:5000/a/b/c:v1", "localhost:5000", "a/b/c", "v1", None),
        (
            "registry.example:5000/team/base:2026-12",
            "registry.example:5000",
            "team/base",
            "2026-12",
            None,
        ),
        ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", None, None),
        ("[::1]:5000/x:t", "[::1]:5000", "x", "t", None),
        (f"ghcr.io/o/r@{DIGEST}", "ghcr.io", "o/r", None, DIGEST),
        (f"ghcr.io/o/r:tag@{DIGEST}", "ghcr.io", "o/r", "tag", DIGEST),
        ("quay.io/a.b_c__d--e/f-g:_T.a-g", "quay.io", "a.b_c__d--e/f-g", "_T.a-g", None),
        ("foo:5000", "docker.io", "library/foo", "5000", None),
    ],
)
def test_good_references_parse_as_docker_reads_them(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    reference = parse_reference(text)
    assert reference == Reference(registry, repository, tag, digest)
    assert parse_reference(str(reference)) == reference


def test_a_reference_writes_out_in_full_and_names_its_target() -> None:
    reference = parse_reference("registry.example:5000/team/base")
    assert str(reference) == "registry.example:5000/team/base"
    assert reference.target == "latest"
    assert reference.name == "registry.example:5000/team/base"
    tagged = reference.with_tag("1.0")
    assert str(tagged) == "registry.example:5000/team/base:1.0"
    assert tagged.target == "1.0"
    pinned = tagged.with_digest(DIGEST)
    assert str(pinned) == f"registry.example:5000/team/base:1.0@{DIGEST}"
    assert pinned.target == DIGEST
    assert str(parse_reference("ubuntu")) == "docker.io/library/ubuntu"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Team/base", "lowercase"),
        ("host.example/Team/base", "lowercase"),
        ("host.example/../etc", "bad path component"),
        ("host.example/a/../b", "bad path component"),
        ("host.example/a//b", "bad path component"),
        ("host.example/a/", "bad path component"),
        ("host.example/", "no repository"),
        ("host.example/.a", "bad path component"),
        ("host.example/a-", "bad path component"),
        ("host.example/a___b", "bad path component"),
        ("host.example/a\x00b", "printable ASCII"),
        ("host.example/a\nb", "printable ASCII"),
        ("host.example/a b", "printable ASCII"),
        ("host.example/bäse", "printable ASCII"),
        ("host.example/a:", "bad tag"),
        ("host.example/a:-x", "bad tag"),
        ("host.example/a:" + "t" * 129, "bad tag"),
        ("host.example/a@sha256:" + "AB" * 32, "digest"),
        ("host.example/a@sha256:" + "ab" * 31, "digest"),
        ("host.example/a@sha512:" + "ab" * 64, "digest"),
        ("host.example/a@" + "ab" * 32, "digest"),
        ("host.example:99999/a", "port"),
        ("host.example:0/a", "port"),
        ("host.example:x/a", "port"),
        ("-host.example/a", "bad registry host"),
        ("host..example/a", "bad registry host"),
        ("host.example/" + "a" * 300, "longer than 255"),
        ("x" * 100_000, "too long"),
    ],
)
def test_bad_references_are_refused_in_one_line(text: str, why: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_reference(text)
    message = caught.value.message
    assert why in message
    assert "\n" not in message and "\x00" not in message
    assert len(message) < 400


def test_digests_and_tags_are_checked_before_they_become_paths_or_urls() -> None:
    assert check_digest(DIGEST) == DIGEST
    for bad in ("sha256:" + "ab" * 32 + "\n", "sha256:../" + "a" * 61, "md5:abc", DIGEST.upper()):
        with pytest.raises(InvalidInput, match="invalid digest"):
            check_digest(bad)
    assert check_tag("v1.0_rc-2") == "v1.0_rc-2"
    for bad in ("../x", "a/b", ".x", ""):
        with pytest.raises(InvalidInput, match="invalid tag"):
            check_tag(bad)


def test_hosts_as_login_takes_them() -> None:
    assert check_host("registry.example:5000") == "registry.example:5000"
    assert check_host("https://registry.example:5000/") == "registry.example:5000"
    assert check_host("https://index.docker.io/v1/") == "docker.io"
    for bad in ("", "a/b", "a:b:c", "exa mple", "host:"):
        with pytest.raises(InvalidInput):
            check_host(bad)
