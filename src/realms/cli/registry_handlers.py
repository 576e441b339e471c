"""Handlers of ``realms registry``: credentials for OCI registries."""

from __future__ import annotations

import getpass
import sys

from realms import api, log
from realms.cli.appimg_handlers import tls_verify
from realms.cli.call import Call, UsageError


def login(call: Call) -> int:
    host, username = call.text("host"), call.maybe_text("username")
    if call.flag("password_stdin"):
        if username is None:
            raise UsageError("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask on: give --username and --password-stdin")
        username = username or input("Username: ")
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise UsageError("a username and a password are needed")
    path = api.registry_login(host, username, password, tls_verify=tls_verify(call))
    log.note(f"Logged in to {host}; credentials kept in {path}")
    return 0


def logout(call: Call) -> int:
    host = call.text("host")
    files = api.registry_logout(host)
    if files:
        log.note(f"Logged out of {host}: removed from {', '.join(map(str, files))}")
    else:
        log.note(f"No credentials were kept for {host}")
    return 0
