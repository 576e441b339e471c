"""Registry credentials: the files podman, skopeo and docker keep them in, read and written.

Credentials are read from the first of these files that has an entry for the registry (the
files podman and docker write; what is missing is skipped):

1. ``$REGISTRY_AUTH_FILE``;
2. ``${XDG_RUNTIME_DIR}/containers/auth.json`` (as root without ``XDG_RUNTIME_DIR``:
   ``/run/containers/0/auth.json``, as podman does);
3. ``~/.config/containers/auth.json``;
4. ``~/.docker/config.json``.

Each is JSON with an ``"auths"`` map from a registry (``HOST``, ``https://HOST``,
``HOST/v1/``, or ``HOST/NAMESPACE`` for credentials of part of a registry) to
``{"auth": base64("USER:PASSWORD")}``. Credential helpers (``credHelpers``, ``credsStore``) are
not run: realms runs no program a config file names. A damaged file is an InvalidInput that
names it.

``login`` (:mod:`.auth`) writes to the first file of the list (``$REGISTRY_AUTH_FILE``, else
the runtime one; a user without ``XDG_RUNTIME_DIR``: ``~/.config/containers/auth.json``)
through a temporary 0600 file and a rename (:func:`write`), keeping every other entry.

A password lives in a :class:`Credentials` whose repr hides it; it is never logged, put in a
message or on a command line.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realms import log
from realms.errors import InvalidInput, RealmsError
from realms.registry.reference import check_host
from realms.system.fs import atomic_write

FILE_LIMIT = 1 << 20
"""The largest credentials file read."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def auth_files() -> list[Path]:
    """The files credentials are read from, in order (whether they exist or not)."""
    files = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    runtime = _runtime_file()
    if runtime is not None:
        files.append(runtime)
    home = Path(os.environ.get("HOME") or Path.home())
    files += [home / ".config/containers/auth.json", home / ".docker/config.json"]
    return files


def _runtime_file() -> Path | None:
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "containers/auth.json"
    if os.geteuid() == 0:
        return Path("/run/containers/0/auth.json")
    return None


def login_file() -> Path:
    """The file ``login`` writes to."""
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return Path(os.environ["REGISTRY_AUTH_FILE"])
    runtime = _runtime_file()
    if runtime is not None:
        return runtime
    return Path(os.environ.get("HOME") or Path.home()) / ".config/containers/auth.json"


def read(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when there is no such file."""
    try:
        with path.open("rb") as handle:
            data = handle.read(FILE_LIMIT + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise InvalidInput(f"cannot read credentials file {path}: {error.strerror}") from None
    if len(data) > FILE_LIMIT:
        raise InvalidInput(f"credentials file {path} is larger than {FILE_LIMIT} bytes")
    if not data.strip():
        return {}
    try:
        content = json.loads(data)
    except (ValueError, RecursionError) as error:
        where = f" (line {error.lineno})" if isinstance(error, json.JSONDecodeError) else ""
        raise InvalidInput(f"credentials file {path} is not valid JSON{where}") from None
    if not isinstance(content, dict):
        raise InvalidInput(f"credentials file {path} does not hold a JSON object")
    auths = content.get("auths", {})
    if not isinstance(auths, dict) or not all(isinstance(v, dict) for v in auths.values()):
        raise InvalidInput(f'credentials file {path}: "auths" is not a map of objects')
    return content


def normalise_key(key: str) -> str:
    """An ``auths`` key as ``HOST[/PATH]``: no scheme, no ``/v1/``; docker.io's other names are
    docker.io. A key that names no registry is returned as it was (it matches nothing)."""
    text = key
    for scheme in ("https://", "http://"):
        text = text.removeprefix(scheme)
    text = text.rstrip("/")
    host, slash, path = text.partition("/")
    if path in ("v1", "v2"):
        path, slash = "", ""
    try:
        host = check_host(host)
    except InvalidInput:
        return key
    return f"{host}{slash}{path}"


def _decode(path: Path, key: str, entry: dict[str, Any]) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        username, colon, password = decoded.partition(":")
        if not colon or not username:
            raise InvalidInput(
                f'credentials file {path}: the "auth" of {key!r} is not base64 of USER:PASSWORD'
            )
        return Credentials(username, password)
    user, secret = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(secret, str) and user:
        return Credentials(user, secret)
    if entry.get("identitytoken"):
        log.debug(f"credentials file {path}: identity tokens are not used ({key})")
    return None


def credentials_for(registry: str, repository: str | None = None) -> Credentials | None:
    """The credentials kept for ``registry`` (the most specific ``HOST/NAMESPACE`` entry for
    ``repository`` first), from the first file that has any; None when none has."""
    registry = check_host(registry)
    wanted = [registry]
    if repository:
        parts = repository.split("/")
        wanted = [f"{registry}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
        wanted.append(registry)
    for path in auth_files():
        content = read(path)
        if not content:
            continue
        if content.get("credHelpers") or content.get("credsStore"):
            log.debug(f"credentials file {path}: credential helpers are not run by realms")
        entries: dict[str, tuple[str, dict[str, Any]]] = {}
        for key, entry in content.get("auths", {}).items():
            entries.setdefault(normalise_key(key), (key, entry))
        for name in wanted:
            if name in entries:
                key, entry = entries[name]
                credentials = _decode(path, key, entry)
                if credentials is not None:
                    log.debug(f"credentials for {name} from {path}")
                    return credentials
    return None


def write(path: Path, content: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, json.dumps(content, indent="\t") + "\n", mode=0o600)
    except OSError as error:
        raise RealmsError(f"cannot write credentials file {path}: {error.strerror}") from None
