"""``realms registry login`` and ``logout``: credentials checked against a registry, then kept
in (or removed from) the files podman, skopeo and docker read (:mod:`.credentials`).

``login`` checks the credentials against the registry (its ``/v2/`` with the challenge
answered, :func:`.transport.check_login`), then writes them to :func:`.credentials.login_file`
atomically (a temporary 0600 file and a rename), keeping every other entry. ``logout`` removes
the registry from every file that has it. The password is never logged nor put in a message.
"""

from __future__ import annotations

import base64
from pathlib import Path

from realms.errors import InvalidInput
from realms.registry.credentials import (
    Credentials,
    auth_files,
    login_file,
    normalise_key,
    read,
    write,
)
from realms.registry.reference import check_host
from realms.registry.transport import check_login


def login(host: str, username: str, password: str, *, tls_verify: bool | None = None) -> Path:
    """Check the credentials against registry ``host`` and keep them; return the file."""
    host = check_host(host)
    if ":" in username:
        raise InvalidInput("a registry username cannot hold ':'")
    credentials = Credentials(username, password)
    check_login(host, credentials, tls_verify=tls_verify)
    path = login_file()
    content = read(path) or {}
    auths = content.setdefault("auths", {})
    for key in [k for k in auths if normalise_key(k) == host]:
        del auths[key]
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    auths[host] = {"auth": token}
    write(path, content)
    return path


def logout(host: str) -> list[Path]:
    """Remove the credentials of ``host`` from every file that has them; return those files."""
    host = check_host(host)
    changed = []
    for path in dict.fromkeys(auth_files()):
        content = read(path)
        if not content:
            continue
        auths = content.get("auths", {})
        keys = [key for key in auths if normalise_key(key) == host]
        if keys:
            for key in keys:
                del auths[key]
            write(path, content)
            changed.append(path)
    return changed
