"""HTTP to one registry: scheme and TLS choice, authentication, retries, and the error lines.

One :class:`Transport` per registry host and TLS choice, shared by every repository of that
host in a process (and by the threads that move blobs): a ``requests.Session`` with a small
connection pool, the challenge the registry gave and the bearer tokens it got, per scope.

- **TLS and insecure registries** (what the files say: :mod:`.hosts`): ``tls_verify=True``
  means HTTPS, verified. ``tls_verify=False`` (``--tls-verify=false``), or ``insecure = true``
  in ``registries.conf`` when ``tls_verify`` is None, means HTTPS without checking the
  certificate, and plain HTTP when HTTPS does not answer (what podman and skopeo do). Every
  request has timeouts (:data:`TIMEOUT`) and a User-Agent naming realms.
- **Authentication** answers the registry's ``WWW-Authenticate`` challenge: Basic with the kept
  credentials (:mod:`.auth`), or Bearer: a token from the challenge's realm for the scopes asked
  (``repository:NAME:pull``, ``repository:NAME:pull,push``, plus the scopes the challenge
  names), fetched with the credentials when there are any, cached per scope until it expires.
  The Authorization header goes only to the registry's own scheme, host and port, never to a
  redirect elsewhere or an upload URL on another host; a token realm must be HTTPS unless the
  registry is insecure.
- **Retries**: 429, 500, 502, 503, 504 and connection failures are tried :data:`TRIES` times
  with backoff (``Retry-After`` honoured up to :data:`RETRY_AFTER_MAX` seconds); then, as for
  every other failure, one line naming the registry and what failed (:func:`error_for`).
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from realms import __version__, log
from realms.errors import NotFound, RealmsError
from realms.registry.credentials import Credentials, credentials_for
from realms.registry.hosts import registry_entry, tls_context
from realms.registry.reference import DOCKER_HUB, check_host

TIMEOUT = (10.0, 60.0)
"""Connect and read timeouts of every request, in seconds."""
TRIES = 4
BACKOFF = 0.5
"""The first wait before a retry; it doubles with each try."""
RETRY_AFTER_MAX = 30.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BODY_LIMIT = 64 * 1024
"""The most read of an error body or a token answer."""
TOKEN_MAX = 16 * 1024
USER_AGENT = f"realms/{__version__}"
POOL_SIZE = 8
_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


class RegistryError(RealmsError):
    """A registry refused or failed a request; ``status`` is its HTTP status (None: no answer,
    or a transfer cut off)."""

    def __init__(self, message: str, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True)
class Challenge:
    scheme: str
    """``basic`` or ``bearer``."""
    params: Mapping[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """The Basic or Bearer challenge of a ``WWW-Authenticate`` header (None for others)."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    params = {}
    for match in _PARAM.finditer(rest):
        value = match[3] if match[2] is None else re.sub(r"\\(.)", r"\1", match[2])
        params[match[1].lower()] = value
    return Challenge(scheme.lower(), params)


def read_body(response: requests.Response, limit: int) -> bytes | None:
    """A streamed response's body, or None when it is longer than ``limit`` bytes (a hostile
    registry cannot make realms hold more than that)."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        return None
    body = bytearray()
    try:
        for chunk in response.iter_content(64 * 1024):
            body += chunk
            if len(body) > limit:
                return None
    except requests.RequestException as error:
        host = urlsplit(response.url).netloc
        raise RegistryError(f"the answer of {host} was cut off ({type(error).__name__})") from None
    return bytes(body)


def _registry_said(response: requests.Response) -> tuple[str | None, str]:
    """The first error code and message of a Distribution error body (its JSON errors list)."""
    try:
        body = read_body(response, BODY_LIMIT)
        errors = json.loads(body).get("errors") if body else None
    except (ValueError, AttributeError, RegistryError):
        return None, ""
    first = errors[0] if isinstance(errors, list) and errors else None
    if not isinstance(first, dict):
        return None, ""
    code, message = first.get("code"), first.get("message")
    code = code if isinstance(code, str) else None
    said = " ".join(x for x in (code, message) if isinstance(x, str) and x)
    return code, said


def error_for(host: str, response: requests.Response, subject: str) -> RealmsError:
    """The one line for a failed answer of ``host`` about ``subject`` (``manifest team/a:1``)."""
    status = response.status_code
    code, said = _registry_said(response)
    said = f" ({said})" if said else ""
    if status == 401:
        return RegistryError(
            f"not logged in to {host} or wrong credentials (for {subject})",
            hint=f"realms registry login {host}",
            status=status,
        )
    if status == 403:
        return RegistryError(f"{host} denied access to {subject}{said}", status=status)
    if status == 404:
        if code == "NAME_UNKNOWN":
            return NotFound(f"no such repository on {host}: {subject}")
        return NotFound(f"no such {subject} on {host}")
    if status == 429:
        return RegistryError(
            f"{host} refused {subject}: too many requests (HTTP 429, {TRIES} tries){said}",
            status=status,
        )
    tries = f", {TRIES} tries" if status in RETRY_STATUSES else ""
    return RegistryError(f"{host} answered HTTP {status}{tries} for {subject}{said}", status=status)


def connection_error(host: str, error: Exception, verified: bool) -> RegistryError:
    """The one line for a request that got no answer."""
    if isinstance(error, requests.exceptions.SSLError):
        text = str(error)
        reason = next((why for key, why in _TLS_REASONS if key in text), "the TLS handshake failed")
        if "WRONG_VERSION_NUMBER" in text:
            hint = (
                f"if {host} is meant to be plain HTTP: --tls-verify=false, or insecure = true "
                "for it in registries.conf"
            )
        elif verified:
            hint = (
                f"if its certificate is signed by a private CA, install the CA as "
                f"/etc/containers/certs.d/{host}/ca.crt; --tls-verify=false only if you mean "
                "to reach it without checking"
            )
        else:
            hint = None
        return RegistryError(f"TLS connection to {host} failed: {reason}", hint=hint)
    if isinstance(error, requests.exceptions.Timeout):
        return RegistryError(f"{host} did not answer in time ({TRIES} tries)")
    return RegistryError(
        f"cannot connect to registry {host} ({TRIES} tries)",
        hint="check the host name and port, and that the registry is running",
    )


_TLS_REASONS = (
    (
        "CERTIFICATE_VERIFY_FAILED",
        "its certificate is not signed by a trusted CA or does not name the host",
    ),
    ("WRONG_VERSION_NUMBER", "it does not speak TLS (a plain HTTP registry?)"),
)


def _wait(response: requests.Response | None, attempt: int) -> float:
    """Seconds before the next try: the registry's Retry-After (capped), else the backoff."""
    backoff: float = BACKOFF * 2.0 ** (attempt - 1)
    value: str = response.headers.get("Retry-After", "") if response is not None else ""
    if value.strip().isdigit():
        return min(float(value), RETRY_AFTER_MAX)
    try:
        when = email.utils.parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        when = None
    if when is not None:
        return max(0.0, min(float(when.timestamp()) - time.time(), RETRY_AFTER_MAX))
    return backoff


@dataclass
class _Token:
    value: str
    expires: float

    def __repr__(self) -> str:
        return "_Token(...)"


class _TLSAdapter(HTTPAdapter):
    def __init__(self, context: Any) -> None:
        self._context = context
        super().__init__(pool_maxsize=POOL_SIZE)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


def _usable_token(token: object) -> bool:
    # It goes into a header: printable ASCII without blanks, and not a megabyte of it.
    return (
        isinstance(token, str)
        and 0 < len(token) <= TOKEN_MAX
        and token.isascii()
        and token.isprintable()
        and " " not in token
    )


def _no_netrc(request: requests.PreparedRequest) -> requests.PreparedRequest:
    # A session auth keeps requests from putting ~/.netrc credentials over ours.
    return request


class Transport:
    """Requests to one registry host; see the module docstring."""

    def __init__(
        self, host: str, *, insecure: bool, credentials: Credentials | None = None
    ) -> None:
        self.host = host
        self.api_host = "registry-1.docker.io" if host == DOCKER_HUB else host
        self.insecure = insecure
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.auth = _no_netrc
        self.session.mount("http://", HTTPAdapter(pool_maxsize=POOL_SIZE))
        if insecure:
            self.session.verify = False
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        else:
            context, used = tls_context(host)
            if used:
                log.debug(f"TLS for {host}: {', '.join(map(str, used))}")
            self.session.mount("https://", _TLSAdapter(context))
        self._base: str | None = None
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._given = credentials
        self._credentials: dict[str, Credentials | None] = {}

    def __repr__(self) -> str:
        return f"Transport({self.host!r}, insecure={self.insecure})"

    # -- the base URL ------------------------------------------------------------------------

    @property
    def base(self) -> str:
        """``https://HOST``, or ``http://HOST`` for an insecure registry without HTTPS."""
        with self._lock:
            if self._base is None:
                self._base = self._find_base()
            return self._base

    def _find_base(self) -> str:
        https = f"https://{self.api_host}"
        if not self.insecure:
            return https
        try:
            response = self.session.get(f"{https}/v2/", timeout=TIMEOUT, stream=True, verify=False)
        except requests.RequestException as error:
            log.debug(f"{self.host}: no HTTPS ({type(error).__name__}: {error}), trying HTTP")
        else:
            self._note_challenge(response)
            response.close()
            return https
        http = f"http://{self.api_host}"
        response = self._send("GET", f"{http}/v2/", {}, verified=False)
        self._note_challenge(response)
        response.close()
        return http

    def _note_challenge(self, response: requests.Response) -> None:
        if response.status_code == 401:
            self._challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))

    def _own(self, url: str) -> bool:
        ours, theirs = urlsplit(self.base), urlsplit(url)
        return (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc)

    # -- sending -----------------------------------------------------------------------------

    def _send(
        self, method: str, url: str, kwargs: dict[str, Any], *, verified: bool | None = None
    ) -> requests.Response:
        """One request with the retries for 429, 5xx and lost connections; the last answer."""
        verified = not self.insecure if verified is None else verified
        # verify on every request: a session's verify=False loses to $REQUESTS_CA_BUNDLE.
        kwargs = {"timeout": TIMEOUT, "stream": True, "verify": not self.insecure, **kwargs}
        for attempt in range(1, TRIES + 1):
            try:
                response = self.session.request(method, url, **kwargs)
            except requests.exceptions.SSLError as error:
                raise connection_error(self.host, error, verified) from None
            except (requests.ConnectionError, requests.Timeout) as error:
                if attempt == TRIES:
                    raise connection_error(self.host, error, verified) from None
                wait = _wait(None, attempt)
                log.debug(f"{method} {self.host}: {type(error).__name__}; again in {wait:.1f}s")
                time.sleep(wait)
                continue
            if response.status_code not in RETRY_STATUSES or attempt == TRIES:
                return response
            wait = _wait(response, attempt)
            log.debug(f"{method} {self.host}: HTTP {response.status_code}; again in {wait:.1f}s")
            response.close()
            time.sleep(wait)
        raise AssertionError("unreachable")

    def request(
        self,
        method: str,
        target: str,
        *,
        repository: str,
        scopes: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send ``method`` to ``target`` (a path on the registry or a URL it gave), answering
        its auth challenge once; the answer (streamed: the caller closes it or reads it)."""
        url = target if "://" in target else f"{self.base}{target}"
        own = self._own(url)
        scopes = tuple(sorted(set(scopes)))
        answered = False
        while True:
            sent = dict(headers or {})
            authorization = self._authorization(repository, scopes) if own else None
            if authorization:
                sent["Authorization"] = authorization
            response = self._send(method, url, {"headers": sent, **kwargs})
            if response.status_code != 401 or not own or answered:
                return response
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if challenge is None:
                return response
            answered = True
            response.close()
            self._learn(challenge, repository, scopes)

    # -- authentication ----------------------------------------------------------------------

    def credentials(self, repository: str) -> Credentials | None:
        if self._given is not None:
            return self._given
        if repository not in self._credentials:
            self._credentials[repository] = credentials_for(self.host, repository or None)
        return self._credentials[repository]

    def _learn(self, challenge: Challenge, repository: str, scopes: tuple[str, ...]) -> None:
        with self._lock:
            self._challenge = challenge
            # Credentials kept since they were read (a login meanwhile) count from now on.
            self._credentials.clear()
            if challenge.scheme == "bearer":
                extra = challenge.params.get("scope", "").split()
                wanted = tuple(sorted({*scopes, *extra}))
                self._tokens[scopes] = self._fetch_token(challenge, repository, wanted)

    def _authorization(self, repository: str, scopes: tuple[str, ...]) -> str | None:
        with self._lock:
            challenge = self._challenge
            if challenge is None:
                return None
            if challenge.scheme == "basic":
                credentials = self.credentials(repository)
                if credentials is None:
                    return None
                pair = f"{credentials.username}:{credentials.password}".encode()
                return f"Basic {base64.b64encode(pair).decode()}"
            token = self._tokens.get(scopes)
            if token is None or token.expires < time.monotonic():
                token = self._fetch_token(challenge, repository, scopes)
                self._tokens[scopes] = token
            return f"Bearer {token.value}"

    def _fetch_token(
        self, challenge: Challenge, repository: str, scopes: tuple[str, ...]
    ) -> _Token:
        realm = challenge.params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise RegistryError(f"{self.host} asks for a token from a bad realm {realm!r}")
        if parts.scheme == "http" and not self.insecure:
            raise RegistryError(
                f"{self.host} asks for a token over plain HTTP ({realm}): refused",
                hint="list the registry as insecure in registries.conf if you mean it",
            )
        params = [("scope", scope) for scope in scopes]
        if challenge.params.get("service"):
            params.insert(0, ("service", challenge.params["service"]))
        credentials = self.credentials(repository)
        auth = None
        if credentials is not None:
            params.append(("account", credentials.username))
            auth = (credentials.username, credentials.password)
        response = self._send("GET", realm, {"params": params, "auth": auth})
        with response:
            if response.status_code != 200:
                raise error_for(self.host, response, f"a token from {parts.netloc}")
            try:
                answer = json.loads(read_body(response, BODY_LIMIT) or b"")
            except ValueError:
                answer = None
        if not isinstance(answer, dict):
            answer = {}
        token = answer.get("token") or answer.get("access_token")
        if not _usable_token(token):
            raise RegistryError(f"the token server of {self.host} gave no usable token")
        assert isinstance(token, str)
        lifetime = answer.get("expires_in")
        lifetime = lifetime if isinstance(lifetime, int) and lifetime > 0 else 60
        return _Token(token, time.monotonic() + max(lifetime - 5, 1))


_transports: dict[tuple[str, bool], Transport] = {}
_transports_lock = threading.Lock()


def insecure_for(host: str, repository: str, tls_verify: bool | None) -> bool:
    """Whether a repository is reached without checking TLS (and over HTTP if need be); a
    registry blocked in registries.conf is an error."""
    entry = registry_entry(host, repository)
    if entry is not None and entry.blocked:
        raise RealmsError(f"registry {entry.prefix} is blocked in registries.conf")
    if tls_verify is None:
        return entry is not None and entry.insecure
    return not tls_verify


def transport(host: str, repository: str, tls_verify: bool | None) -> Transport:
    """The process's transport for a repository's registry."""
    key = (host, insecure_for(host, repository, tls_verify))
    with _transports_lock:
        if key not in _transports:
            _transports[key] = Transport(host, insecure=key[1])
        return _transports[key]


def check_login(host: str, credentials: Credentials, *, tls_verify: bool | None) -> None:
    """Whether the registry takes ``credentials`` (GET /v2/ with its challenge answered; for a
    Bearer challenge a token for no scope); RegistryError if not."""
    host = check_host(host)
    checker = Transport(host, insecure=insecure_for(host, "", tls_verify), credentials=credentials)
    try:
        response = checker.request("GET", "/v2/", repository="")
        with response:
            if response.status_code == 401:
                raise error_for(host, response, "the login")
            if response.status_code != 200:
                raise error_for(host, response, "the login check (GET /v2/)")
    except RegistryError as error:
        if error.status == 401:
            raise RegistryError(f"wrong username or password for {host}", status=401) from None
        raise
    finally:
        checker.session.close()
    if checker._challenge is None:
        log.debug(f"{host} asks for no credentials; they are kept all the same")
