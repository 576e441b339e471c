"""The importable API: everything the command line does, for Python users too.

    from realms import api
    store = api.open_store()                      # $REALMS_STORE or /var/lib/realms
    api.import_appimg(store, "base", Path("rootfs.tar.zst"))
    api.new_realm(store, "work")
    status = api.run_in_realm(store, "work", ["id"])

Functions take a :class:`~realms.store.Store` and raise :class:`~realms.errors.RealmsError` (with
a message and a hint) for anything a user can cause; results are records (dataclasses, or
NamedTuples on the lifecycle commands' lean path) with ``to_json()``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from realms.errors import AlreadyExists, RealmsError
from realms.store import Store, locate

if TYPE_CHECKING:
    from realms.appimg.diff import TreeDiff, diff_appimg
    from realms.appimg.images import Verification
    from realms.appimg.ops import (
        AppimgInfo,
        import_appimg,
        list_appimgs,
        remove_appimg,
        show_appimg,
    )
    from realms.appimg.record import AppimgRecord, Version
    from realms.appimg.update import UpdateResult
    from realms.appimg.versions import Pruned
    from realms.builder.build import BuildResult
    from realms.builder.stages import Decision
    from realms.health.check import CheckReport, check_store
    from realms.health.gc import GcResult, collect_garbage
    from realms.health.usage import DiskUsage, disk_usage
    from realms.image.keys import KeyInfo, Keyring
    from realms.lifecycle.startstop import Started
    from realms.realm import (
        RealmInfo,
        default_realm,
        list_realms,
        new_realm,
        remove_realm,
        run_in_realm,
        set_default_realm,
        show_realm,
    )
    from realms.realm_config import configure_realm
    from realms.registry.pull import Outdated, PullResult
    from realms.registry.push import PushResult
    from realms.rootfs.rebase import RebaseResult, rebase_outdated, rebase_realm
    from realms.rootfs.snapshots import (
        Snapshot,
        list_snapshots,
        remove_snapshot,
        restore_snapshot,
        snapshot_realm,
    )
    from realms.status import Status, status
    from realms.store.init import InitResult, init

# What this module passes on from the modules that own it, imported when first used: a command
# imports only the modules it needs (``realms appimg verify`` never imports realms, containers or
# the tar reader), which keeps the start-up of every command short.
_LAZY = {
    "AppimgInfo": "realms.appimg.ops",
    "import_appimg": "realms.appimg.ops",
    "list_appimgs": "realms.appimg.ops",
    "remove_appimg": "realms.appimg.ops",
    "show_appimg": "realms.appimg.ops",
    "AppimgRecord": "realms.appimg.record",
    "Version": "realms.appimg.record",
    "Pruned": "realms.appimg.versions",
    "UpdateResult": "realms.appimg.update",
    "BuildResult": "realms.builder.build",
    "RealmInfo": "realms.realm",
    "default_realm": "realms.realm",
    "list_realms": "realms.realm",
    "new_realm": "realms.realm",
    "remove_realm": "realms.realm",
    "run_in_realm": "realms.realm",
    "set_default_realm": "realms.realm",
    "show_realm": "realms.realm",
    "InitResult": "realms.store.init",
    "init": "realms.store.init",
    "Status": "realms.status",
    "status": "realms.status",
    "TreeDiff": "realms.appimg.diff",
    "diff_appimg": "realms.appimg.diff",
    "CheckReport": "realms.health.check",
    "check_store": "realms.health.check",
    "GcResult": "realms.health.gc",
    "collect_garbage": "realms.health.gc",
    "DiskUsage": "realms.health.usage",
    "disk_usage": "realms.health.usage",
    "configure_realm": "realms.realm_config",
    "RebaseResult": "realms.rootfs.rebase",
    "rebase_outdated": "realms.rootfs.rebase",
    "rebase_realm": "realms.rootfs.rebase",
    "Snapshot": "realms.rootfs.snapshots",
    "list_snapshots": "realms.rootfs.snapshots",
    "remove_snapshot": "realms.rootfs.snapshots",
    "restore_snapshot": "realms.rootfs.snapshots",
    "snapshot_realm": "realms.rootfs.snapshots",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AppimgInfo",
    "AppimgRecord",
    "BuildResult",
    "CheckReport",
    "DiskUsage",
    "GcResult",
    "InitResult",
    "KeyTrusted",
    "Pruned",
    "RealmInfo",
    "RebaseResult",
    "Revocation",
    "Snapshot",
    "Status",
    "Store",
    "TreeDiff",
    "UpdateResult",
    "Version",
    "appimg_versions",
    "build_appimg",
    "check_store",
    "collect_garbage",
    "configure_realm",
    "current_realm",
    "default",
    "default_realm",
    "diff_appimg",
    "disk_usage",
    "export_appimg",
    "export_key",
    "generate_key",
    "import_appimg",
    "init",
    "keyring",
    "list_appimgs",
    "list_keys",
    "list_realms",
    "list_snapshots",
    "locate",
    "new_realm",
    "open_store",
    "outdated_appimgs",
    "pin_version",
    "prune_appimg",
    "pull_appimg",
    "push_appimg",
    "rebase_outdated",
    "rebase_realm",
    "registry_login",
    "registry_logout",
    "remove_appimg",
    "remove_realm",
    "remove_snapshot",
    "restart_realm",
    "restore_snapshot",
    "revoke_key",
    "rollback_appimg",
    "run",
    "run_in_realm",
    "seal_appimg",
    "set_default_realm",
    "shell",
    "show_appimg",
    "show_realm",
    "snapshot_realm",
    "start_realm",
    "status",
    "stop_realm",
    "trust_key",
    "update_appimg",
    "verify_appimg",
    "write_build_template",
]


def update_appimg(
    store: Store,
    name: str | None,
    command: list[str],
    *,
    discard: bool = False,
    commit_kept: bool = False,
    discard_kept: bool = False,
) -> UpdateResult:
    """A root shell (or ``command``) on a working copy of the appimg; exit 0 commits it as a
    new version, unless another version became current meanwhile: then it is kept, for
    ``commit_kept`` or ``discard_kept`` (see realms.appimg.update)."""
    from realms.appimg import update

    return update.update_appimg(
        store,
        name,
        command,
        discard=discard,
        commit_kept=commit_kept,
        discard_kept=discard_kept,
    )


def appimg_versions(store: Store, name: str) -> AppimgRecord:
    """The appimg's record: its versions, the current one, its history."""
    from realms.appimg.versions import versions

    return versions(store, name)


def rollback_appimg(store: Store, name: str, version: int | None = None) -> tuple[int, int]:
    """Make an earlier version current; return (previous, new) current version."""
    from realms.appimg.versions import rollback

    return rollback(store, name, version)


def prune_appimg(store: Store, name: str, keep: int | None = None) -> Pruned:
    from realms.appimg.versions import prune

    return prune(store, name, keep)


def pin_version(store: Store, name: str, version: int, *, pinned: bool = True) -> Version:
    from realms.appimg.versions import set_pinned

    return set_pinned(store, name, version, pinned)


def build_appimg(
    store: Store,
    config: Path | None = None,
    *,
    name: str | None = None,
    output: Path | None = None,
    rebuild: bool = False,
    explain: Callable[[list[Decision]], None] | None = None,
    offline: bool = False,
) -> BuildResult:
    """Build an appimg from a build config (None: the default appimg base); ``explain`` is told
    which stages are reused and why the others are not, before the work starts; ``offline``
    asks no mirror and uses the cached build of the config with the newest mirror state."""
    from realms.builder.build import build

    return build(
        store, config, name=name, output=output, rebuild=rebuild, explain=explain, offline=offline
    )


def write_build_template(path: Path) -> None:
    """Write the commented template of a build config; refuse to overwrite a file."""
    from realms.builder.config import template

    try:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(template())
    except FileExistsError:
        raise AlreadyExists(f"{path} exists already", hint="name another file") from None


def seal_appimg(
    store: Store,
    name: str,
    *,
    channel: str | None = None,
    fs: str = "ext4",
    verity: bool = True,
    salt: str | None = None,
) -> Version:
    """Make a sealed (or block) version from the appimg's current tree version."""
    from realms.appimg import images

    return images.seal(store, name, channel=channel, fs=fs, verity=verity, salt=salt)


def verify_appimg(store: Store, name: str, version: int | None = None) -> Verification:
    from realms.appimg import images

    return images.verify(store, name, version)


def export_appimg(store: Store, name: str, target: Path, version: int | None = None) -> Version:
    from realms.appimg import images

    return images.export(store, name, target, version)


def pull_appimg(
    store: Store,
    source: str | None,
    *,
    name: str | None = None,
    platform: str | None = None,
    pull_all: bool = False,
    tls_verify: bool | None = None,
) -> list[PullResult]:
    """Pull ``source`` (a registry reference, or the name of a pulled appimg: its reference
    again) into appimg ``name``; with ``pull_all``, every pulled appimg whose reference moved.
    ``tls_verify`` None: as registries.conf says, else verify."""
    from realms.registry.pull import pull

    return pull(
        store, source, name=name, platform=platform, pull_all=pull_all, tls_verify=tls_verify
    )


def push_appimg(
    store: Store,
    name: str,
    ref: str,
    *,
    version: int | None = None,
    tls_verify: bool | None = None,
) -> PushResult:
    """Push a version of appimg ``name`` (default: the current one) to the reference ``ref``."""
    from realms.registry.push import push

    return push(store, name, ref, version=version, tls_verify=tls_verify)


def outdated_appimgs(store: Store, *, tls_verify: bool | None = None) -> list[Outdated]:
    """The pulled appimgs whose reference names another manifest in its registry now."""
    from realms.registry.pull import outdated

    return outdated(store, tls_verify=tls_verify)


def registry_login(
    host: str, username: str, password: str, *, tls_verify: bool | None = None
) -> Path:
    """Check the credentials against registry ``host`` and keep them; return the file."""
    from realms.registry.auth import login

    return login(host, username, password, tls_verify=tls_verify)


def registry_logout(host: str) -> list[Path]:
    """Forget the credentials kept for ``host``; return the files they were removed from."""
    from realms.registry.auth import logout

    return logout(host)


def keyring(store: Store) -> Keyring:
    """The store's signing keys and trusted keys (generate, trust, revoke, list)."""
    from realms.image.keys import Keyring

    return Keyring(store)


def generate_key(store: Store, channel: str, *, replace: bool = False) -> str:
    """Make the channel's signing key and trust it; return its public key (hex)."""
    return keyring(store).generate(channel, replace=replace)


def list_keys(store: Store) -> list[KeyInfo]:
    """Every trusted and revoked key, and whether this store signs with it."""
    return keyring(store).keys()


def export_key(store: Store, channel: str) -> str:
    """The channel's public key (hex): the one this store signs with, else the one key trusted
    for the channel; refused when there is none or several to choose from."""
    from realms.image.keys import check_channel

    ring = keyring(store)
    public = ring.signing_public(check_channel(channel))
    if public is not None:
        return public
    trusted = ring.trusted(channel)
    if len(trusted) != 1:
        raise RealmsError(
            f"no signing key for channel {channel!r} in this store",
            hint="'realms key list' shows the trusted keys",
        )
    return trusted[0]


class KeyTrusted(NamedTuple):
    public: str
    """The key, in lower-case hex."""
    added: bool
    """False when it was trusted for the channel already."""


def trust_key(store: Store, channel: str, key: str) -> KeyTrusted:
    """Trust a public key (64 hex characters, or a file holding them) for ``channel``."""
    from realms.image.keys import parse_public_key

    public = parse_public_key(key)
    return KeyTrusted(public, keyring(store).trust(channel, public))


class Revocation(NamedTuple):
    public: str
    channels: list[str]
    """The channels it was trusted for."""


def revoke_key(store: Store, key: str) -> Revocation:
    """Revoke a public key (64 hex characters, or a file holding them) for good: every image it
    signed fails verification from now on."""
    from realms.image.keys import parse_public_key

    public = parse_public_key(key)
    channels = keyring(store).revoke(public)
    # Images it signed are refused from now on: their activations go, except where a realm
    # runs on one (it goes when it is next used, which checks the signature again).
    from realms import activation

    activation.release_untrusted(store)
    return Revocation(public, channels)


def default(store: Store, name: str | None = None) -> str:
    """Make ``name`` the default realm, or, without one, return the default realm; refused when
    there is none."""
    from realms.realm import default_realm, set_default_realm

    if name:
        set_default_realm(store, name)
        return name
    found = default_realm(store)
    if found is None:
        raise RealmsError("no default realm", hint="'realms default NAME' sets one")
    return found


def shell(store: Store, name: str | None = None, *, root: bool = False) -> int:
    """An interactive login shell in realm ``name`` (default: the current realm, else the
    default realm); return its exit status."""
    return _run(store, _realm_or_current(store, name, "shell NAME"), [], root=root)


def run(store: Store, name: str | None, command: list[str], *, root: bool = False) -> int:
    """Run ``command`` in realm ``name`` (default: the current realm, else the default realm);
    return its exit status."""
    return _run(store, _realm_or_current(store, name, "run NAME -- COMMAND"), command, root=root)


def _run(store: Store, name: str, command: list[str], *, root: bool) -> int:
    """A running realm is joined before what a container needs is imported (fast start-up)."""
    from realms.lifecycle.join import join_realm

    joined = join_realm(store, name, command, root=root)
    if joined is not None:
        return joined
    from realms.realm import run_in_realm

    return run_in_realm(store, name, command, root=root)


def _realm_or_current(store: Store, name: str | None, usage: str) -> str:
    name = name or current_realm(store)
    if name is None:
        raise RealmsError(
            "no realm named, and no current or default realm",
            hint=f"name one (realms {usage}), or choose one: realms current NAME",
        )
    return name


def start_realm(
    store: Store, name: str | None, *, autostart: bool = False, timeout: int | None = None
) -> list[Started]:
    """Boot realm ``name`` (and the realms it requires first), or with ``autostart`` every
    realm whose config says so; return what was started, in order."""
    from realms.lifecycle.control import start

    return start(store, name, autostart=autostart, timeout=timeout)


def stop_realm(
    store: Store, name: str, *, timeout: int | None = None, force: bool = False
) -> list[str]:
    """Stop a running realm (with ``force``, the running realms that require it first); return
    the realms stopped, in order."""
    from realms.lifecycle.control import stop

    return stop(store, name, timeout=timeout, force=force)


def restart_realm(store: Store, name: str) -> Started:
    from realms.lifecycle.control import restart

    return restart(store, name)


def current_realm(store: Store, name: str | None = None) -> str | None:
    """The current realm (else the default realm), or make ``name`` current (starting it when
    its appimg boots) and return it."""
    from realms.lifecycle.control import current

    return current(store, name)


def open_store(path: str | Path | None = None) -> Store:
    """Open the store at ``path``, $REALMS_STORE, or /var/lib/realms."""
    return Store.open(locate(path))
