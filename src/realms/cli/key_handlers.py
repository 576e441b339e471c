"""Handlers of ``realms key``: signing keys and trusted keys. Each calls one function of
:mod:`realms.api` and prints the result."""

from __future__ import annotations

from realms import api, log
from realms.cli import output
from realms.cli.call import Call


def generate(call: Call) -> int:
    channel = call.text("channel")
    public = api.generate_key(call.store, channel, replace=call.flag("replace"))
    log.note(f"New signing key for channel {channel}; its public key is trusted:")
    print(public)
    return 0


def list_(call: Call) -> int:
    found = api.list_keys(call.store)
    if call.json:
        output.print_json([key.to_json() for key in found])
    elif not found:
        log.note("No keys yet: 'realms key generate CHANNEL' makes one")
    else:
        output.keys(found)
    return 0


def export(call: Call) -> int:
    print(api.export_key(call.store, call.text("channel")))
    return 0


def trust(call: Call) -> int:
    channel = call.text("channel")
    result = api.trust_key(call.store, channel, call.text("pubkey"))
    verb = "Trusted" if result.added else "Already trusted:"
    log.note(f"{verb} {result.public} for channel {channel}")
    return 0


def revoke(call: Call) -> int:
    result = api.revoke_key(call.store, call.text("pubkey"))
    where = f" (it was trusted for {', '.join(result.channels)})" if result.channels else ""
    log.note(f"Revoked {result.public}{where}: images it signed fail verification from now on")
    return 0
