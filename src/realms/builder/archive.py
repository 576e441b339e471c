"""The archive state a build reads: which suites of which mirrors, and what each serves now.

A build's result depends on what the mirror serves, not only on its config: the same config on a
mirror that moved must build again, and on an unchanged mirror must not. What a Debian suite
serves is summed up by its ``InRelease`` file (or ``Release``): it holds the digests of every
package index, so one new package version anywhere in the suite gives a new file. This module
fetches those files cheaply and sums them up as an :class:`ArchiveState`.

The interface, for the builder (:mod:`realms.builder.build` and its stage cache):

- :func:`suites` (``config``): the :class:`Suite` list a build of ``config`` reads: the release
  from the mirror, and when the module ``write-apt-sources`` makes the image's apt read them,
  RELEASE-updates and RELEASE-security (not for sid/unstable/experimental).
- :func:`fetch` (``store, config``): the :class:`ArchiveState` of those suites now (a network
  round trip per suite, in parallel; a ``304 Not Modified`` costs no transfer).
- :class:`ArchiveState`: ``digest`` (one hex digest of every suite's URI, name and Release
  digest: key builds and stages with it), ``date`` (the newest ``Date`` of the suites, UTC: the
  build's ``SOURCE_DATE_EPOCH`` is ``int(state.date.timestamp())``), ``suites`` (one
  :class:`SuiteState` each: ``uri``, ``suite``, ``file``, ``digest``, ``date``),
  :meth:`~ArchiveState.source` (a version's ``source`` record), :meth:`~ArchiveState.changes`
  (in words: which suites differ from an older state, for ``--explain``),
  :meth:`~ArchiveState.to_json` / :meth:`~ArchiveState.from_json` (kept beside cached builds),
  :meth:`~ArchiveState.describe` ("mirror state of 2026-12-01 14:02 (2 days old)").
- :func:`build_key` (``inputs, state``): the key of a whole build: the config's inputs digest
  (:func:`realms.builder.config.inputs_digest`) and the archive state.
- The config's ``keyring`` becomes one binary keyring file with
  :func:`realms.builder.release.write_keyring` (``keys, path``), for ``mmdebstrap --keyring``,
  gpgv and the image's apt; Release files are parsed by :mod:`realms.builder.release`.

How it is fetched (measured on this machine's mirror: 0.08 s for the three suites of trixie,
against 20 s cold and 9 s warm for ``apt-get update`` into a throw-away list directory, which
downloads every package index too, 21 MB): a conditional GET
(``If-None-Match`` / ``If-Modified-Since``) of ``dists/SUITE/InRelease`` per suite, its answer
kept in the store's ``cache/archive/`` (the file and its validators, written atomically under
the cache lock); ``file://`` mirrors are read directly.

Everything a mirror sends is hostile until checked: a Release file larger than
:data:`MAX_RELEASE`, truncated (no final newline, a broken checksum line, an unclosed
signature), without a valid ``Date``, naming another suite, or without a component the config
uses is refused with one line. With a ``keyring`` in the config, the file must carry a valid
signature by one of its keys (``gpgv``), or the build stops before anything runs. Without one,
the digest is only a cache key: the bootstrapper and apt check the signatures of what they use.

A mirror may move between this check and the build's own downloads; then the build is keyed by
the older state, and the next build, seeing the newer one, builds again: a needless build at
worst, never a stale result.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from realms.builder.release import (
    MAX_RELEASE,
    parse_release,
    verify,
    write_keyring,
)
from realms.builder.spec import BuildConfig
from realms.errors import InvalidInput, RealmsError
from realms.settings import shown
from realms.store import Store
from realms.system.fs import atomic_write

UNSTABLE = ("sid", "unstable", "experimental")
"""Releases without -updates and -security suites."""
_TIMEOUT = (10, 30)
_FILES = ("InRelease", "Release")


@dataclass(frozen=True)
class Suite:
    """A suite a build reads: ``URI/dists/SUITE/`` with some of its components."""

    uri: str
    suite: str
    components: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.uri.rstrip('/')} {self.suite}"


@dataclass(frozen=True)
class SuiteState:
    uri: str
    suite: str
    file: str
    """InRelease or Release: the file the digest is of."""
    digest: str
    """sha256:HEX of the file's bytes."""
    date: datetime
    """Its Date field (UTC)."""

    @property
    def name(self) -> str:
        return f"{self.uri.rstrip('/')} {self.suite}"


@dataclass(frozen=True)
class ArchiveState:
    suites: tuple[SuiteState, ...]

    @property
    def digest(self) -> str:
        listed = [[s.uri.rstrip("/"), s.suite, s.digest] for s in self.suites]
        return hashlib.sha256(json.dumps(listed).encode()).hexdigest()

    @property
    def date(self) -> datetime:
        return max(s.date for s in self.suites)

    def source(self) -> dict[str, str]:
        """A built version's ``source``: the first suite's archive (URI and suite), Release
        digest and date, and the digest of the whole state (all suites)."""
        main = self.suites[0]
        return {
            "archive": main.name,
            "release_digest": main.digest,
            "date": _iso(main.date),
            "state": self.digest,
        }

    def changes(self, old: ArchiveState | None) -> list[str]:
        """What differs from ``old``, one phrase per suite (empty: nothing)."""
        if old is None:
            return ["no earlier mirror state is known"]
        before = {s.name: s for s in old.suites}
        found = []
        for suite in self.suites:
            was = before.pop(suite.name, None)
            if was is None:
                found.append(f"{suite.name} is read now")
            elif was.digest != suite.digest:
                found.append(
                    f"{suite.name} moved from {_minute(was.date)} to {_minute(suite.date)}"
                )
        found += [f"{name} is no longer read" for name in before]
        return found

    def describe(self, now: datetime | None = None) -> str:
        """``mirror state of 2026-12-01 14:02 (2 days old)``."""
        return f"mirror state of {_minute(self.date)} ({age(self.date, now)})"

    def to_json(self) -> dict[str, Any]:
        return {
            "suites": [
                {
                    "uri": s.uri,
                    "suite": s.suite,
                    "file": s.file,
                    "digest": s.digest,
                    "date": _iso(s.date),
                }
                for s in self.suites
            ]
        }

    @classmethod
    def from_json(cls, data: object) -> ArchiveState | None:
        """A state written by :meth:`to_json`; None for anything else (a damaged record)."""
        try:
            assert isinstance(data, dict)
            suites = []
            for entry in data["suites"]:
                fields = [entry[k] for k in ("uri", "suite", "file", "digest", "date")]
                assert all(isinstance(f, str) for f in fields)
                uri, suite, file, digest, date = fields
                when = datetime.fromisoformat(date)
                assert when.tzinfo is not None and re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
                suites.append(SuiteState(uri, suite, file, digest, when.astimezone(UTC)))
            assert suites
            return cls(tuple(suites))
        except (AssertionError, KeyError, TypeError, ValueError):
            return None


def _iso(date: datetime) -> str:
    return date.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _minute(date: datetime) -> str:
    return date.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def age(date: datetime, now: datetime | None = None) -> str:
    """How long ago ``date`` was, in the largest whole unit: "5 minutes old", "2 days old"."""
    seconds = ((now or datetime.now(UTC)) - date).total_seconds()
    if seconds < 0:
        return "dated in the future"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''} old"
    return "less than a minute old"


def build_key(inputs: str, state: ArchiveState) -> str:
    """The key of a build: its config's inputs digest and the archive state it reads."""
    return hashlib.sha256(f"{inputs}\n{state.digest}".encode()).hexdigest()


def suites(config: BuildConfig) -> list[Suite]:
    """The suites a build of ``config`` reads (the first is the bootstrapper's)."""
    components = tuple(config.components)
    found = [Suite(config.mirror, config.release, components)]
    if config.uses("write-apt-sources") and config.release not in UNSTABLE:
        # The same suites as the module writes (realms.builder.modules): the package stage's
        # apt-get update/upgrade reads them.
        found.append(Suite(config.mirror, f"{config.release}-updates", components))
        if config.security_mirror:
            found.append(Suite(config.security_mirror, f"{config.release}-security", components))
    return found


# Fetching


def _read_file(url: str, where: str) -> bytes | None:
    """A file:// URL's bytes (None: no such file)."""
    path = unquote(urlsplit(url).path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise RealmsError(f"{where}: cannot read {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not os.path.isfile(f"/proc/self/fd/{handle.fileno()}"):
            raise InvalidInput(f"{where}: {path} is not a file")
        data = handle.read(MAX_RELEASE + 1)
    if len(data) > MAX_RELEASE:
        raise InvalidInput(f"{where}: larger than {MAX_RELEASE >> 20} MiB")
    return data


class _Cache:
    """The last answer for each URL in ``cache/archive``: ``HASH`` (the body) and ``HASH.json``
    (its URL, digest and validators). A damaged entry is as good as none."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.directory = store.archive_cache_dir

    def _paths(self, url: str) -> tuple[Path, Path]:
        name = hashlib.sha256(url.encode()).hexdigest()
        return self.directory / name, self.directory / f"{name}.json"

    def load(self, url: str) -> tuple[bytes, dict[str, str]] | None:
        body_path, meta_path = self._paths(url)
        try:
            meta = json.loads(meta_path.read_bytes()[:65536])
            with open(body_path, "rb") as handle:
                body = handle.read(MAX_RELEASE + 1)
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("url") != url:
            return None
        if meta.get("digest") != "sha256:" + hashlib.sha256(body).hexdigest():
            return None
        headers = {k: v for k, v in meta.items() if k in ("etag", "last-modified")}
        return body, {k: v for k, v in headers.items() if isinstance(v, str)}

    def keep(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        body_path, meta_path = self._paths(url)
        meta = {"url": url, "digest": "sha256:" + hashlib.sha256(body).hexdigest(), **headers}
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.store.cache_lock():
            # The body first: a record whose body is missing or another is refused by load().
            atomic_write(body_path, body)
            atomic_write(meta_path, json.dumps(meta))


def _get(cache: _Cache, url: str, where: str) -> bytes | None:
    """The body at ``url`` (None: 404), asking the server only whether it changed when a
    copy is kept."""
    kept = cache.load(url)
    headers = {"Cache-Control": "max-age=0"}
    if kept is not None:
        if "etag" in kept[1]:
            headers["If-None-Match"] = kept[1]["etag"]
        if "last-modified" in kept[1]:
            headers["If-Modified-Since"] = kept[1]["last-modified"]
    try:
        with requests.get(url, headers=headers, stream=True, timeout=_TIMEOUT) as response:
            if response.status_code == 304 and kept is not None:
                return kept[0]
            if response.status_code in (404, 410):
                return None
            if response.status_code != 200:
                raise RealmsError(f"{where}: the mirror answered {response.status_code}")
            length = response.headers.get("Content-Length", "0")
            if not length.isdigit() or int(length) > MAX_RELEASE:
                raise InvalidInput(f"{where}: larger than {MAX_RELEASE >> 20} MiB")
            body = b""
            for chunk in response.iter_content(65536):
                body += chunk
                if len(body) > MAX_RELEASE:
                    raise InvalidInput(f"{where}: larger than {MAX_RELEASE >> 20} MiB")
            validators = {
                key.lower(): response.headers[key]
                for key in ("ETag", "Last-Modified")
                if key in response.headers
            }
    except requests.RequestException as error:
        reason = type(error).__name__ if not str(error) else str(error)
        raise RealmsError(
            f"{where}: cannot read the mirror: {reason}",
            hint="--offline builds from the newest cached build, without asking the mirror",
        ) from None
    if validators:
        cache.keep(url, body, validators)
    return body


def _suite_state(cache: _Cache, suite: Suite, keyring: Path | None) -> SuiteState:
    base = f"{suite.uri.rstrip('/')}/dists/{suite.suite}/"
    file_url = suite.uri.startswith("file:")

    def get(name: str) -> bytes | None:
        where = base + name
        return _read_file(where, where) if file_url else _get(cache, where, where)

    for name in _FILES:
        data = get(name)
        if data is not None:
            break
    else:
        raise RealmsError(
            f"{suite.name}: the mirror has no such suite (no InRelease or Release file)",
            hint="check the release, mirror, security-mirror and snapshot keys of the config",
        )
    where = base + name
    release = parse_release(data, where)
    if release.names and suite.suite not in release.names:
        raise InvalidInput(f"{where}: describes suite {shown(sorted(release.names)[0])}")
    # A security suite names its components updates/main and so on.
    served = {c.rsplit("/", 1)[-1] for c in release.components}
    missing = [c for c in suite.components if served and c not in served]
    if missing:
        raise InvalidInput(f"{where}: the suite has no component {shown(missing[0])}")
    if keyring is not None:
        signature = None if release.signed else get("Release.gpg")
        if not release.signed and signature is None:
            raise InvalidInput(
                f"{where}: not signed (no InRelease or Release.gpg)",
                hint="a config with a keyring only builds from signed archives",
            )
        with tempfile.TemporaryDirectory(prefix="realms-gpgv-") as scratch:
            verify(keyring, data, signature, where, Path(scratch))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return SuiteState(suite.uri, suite.suite, name, digest, release.date)


def fetch(store: Store, config: BuildConfig) -> ArchiveState:
    """The state of every suite the build of ``config`` reads, now."""
    wanted = suites(config)
    cache = _Cache(store)
    with tempfile.TemporaryDirectory(prefix="realms-keyring-") as scratch:
        keyring = None
        if config.keyring:
            keyring = Path(scratch) / "keyring.gpg"
            write_keyring(config.keyring, keyring)
        with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
            futures = [pool.submit(_suite_state, cache, suite, keyring) for suite in wanted]
            return ArchiveState(tuple(future.result() for future in futures))


def newest_cached(
    records: Sequence[tuple[str, dict[str, Any]]], inputs: str
) -> tuple[str, ArchiveState] | None:
    """Of cached builds' ``(key, record)`` (records with ``config``: the inputs digest, and
    ``archive``: :meth:`ArchiveState.to_json`), the key and archive state of the one built
    from ``inputs`` against the newest mirror state (``--offline``)."""
    found = []
    for key, record in records:
        state = ArchiveState.from_json(record.get("archive"))
        if record.get("config") == inputs and state is not None:
            found.append((state.date, key, state))
    if not found:
        return None
    _, key, state = max(found, key=lambda entry: entry[0])
    return key, state
