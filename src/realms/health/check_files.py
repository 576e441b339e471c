"""``realms check``: the store's own files: modes, lock files, keys and trust, the default realm's
link, leftovers of killed commands, and the runtime state of booted realms under /run.

- modes: the store directory 0700 (and the pool image beside it 0600, its mount
  ``nosuid,nodev``), ``keys/`` and ``keys/signing/`` 0700 and every file in them 0600, ``locks/``
  0700: what ``realms init`` sets (:func:`realms.store.make_private`), and what the repair runs;
- lock files: a stale one (nobody holds it) is normal; one that is not a regular file makes
  every command that needs it fail (locks are opened with O_NOFOLLOW), and is moved away;
- ``keys/trust.toml`` parses and names 64-hex-digit public keys; a signing key is a seed in hex;
- ``default.realm`` is a symlink to an existing realm (else it is removed: the config's
  default-realm, then the next realm made, becomes the default);
- leftovers: the temporary names the sweep looks at (:mod:`realms.store.txn`) whose owner does
  not run (its locks are free, taken without waiting; without a lock: older than a minute);
- runtime state: a realm's record under /run that the machine contradicts (the realm is stopped,
  or gone) is forgotten as the next start or stop would (:func:`realms.lifecycle.state.forget`).
"""

from __future__ import annotations

import functools
import os
import re
import stat
import time
from contextlib import ExitStack
from pathlib import Path

from realms import config
from realms.errors import Busy, RealmsError
from realms.health.findings import Finding, finding, move_aside
from realms.names import is_existing_realm_name
from realms.store import Store, txn
from realms.store.init import STORE_MODE, make_private
from realms.system import mounts

_HEX = re.compile(r"[0-9a-fA-F]{64}")


def check_files(store: Store) -> list[Finding]:
    return [
        *_modes(store),
        *_lock_files(store),
        *_keys(store),
        *_default_link(store),
        *_leftovers(store),
        *_runtime(store),
    ]


def _mode(path: Path) -> int | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return None if stat.S_ISLNK(info.st_mode) else stat.S_IMODE(info.st_mode)


def _private(store: Store) -> str:
    changed = make_private(store.root)
    if os.path.isdir(store.locks_dir) and not os.path.islink(store.locks_dir):
        os.chmod(store.locks_dir, 0o700)
    return f"modes set ({len(changed)} changed)" if changed else "modes set"


def _modes(store: Store) -> list[Finding]:
    wrong: list[tuple[Path, int, int]] = []
    expected = [(store.root, STORE_MODE), (store.locks_dir, 0o700)]
    for directory in (store.keys_dir, store.signing_dir):
        expected.append((directory, 0o700))
        try:
            entries = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            path = directory / entry
            if path.is_file() and not path.is_symlink():
                expected.append((path, 0o600))
    from realms.store import pool

    image = pool.mounted_pool(store.root)
    if image is not None:
        expected.append((image, pool.IMAGE_MODE))
    for path, mode in expected:
        found = _mode(path)
        if found is not None and found != mode:
            wrong.append((path, found, mode))
    findings = [
        finding(
            "mode",
            "keys" if store.keys_dir in (path, *path.parents) else "store",
            path,
            f"mode {found:04o}, not {mode:04o}" + (": others may read it" if found & 0o077 else ""),
            f"set its mode to {mode:04o} (as 'realms init' does)",
            lambda: _private(store),
        )
        for path, found, mode in wrong
    ]
    if image is not None and not mounts.has_safe_options(mounts.mount_of(store.root)):
        findings.append(
            finding(
                "mode",
                "store",
                store.root,
                "the pool is mounted without nosuid,nodev",
                "remount it nosuid,nodev (as 'realms init' does)",
                lambda: _private(store),
            )
        )
    return findings


def _lock_files(store: Store) -> list[Finding]:
    try:
        entries = sorted(os.listdir(store.locks_dir))
    except FileNotFoundError:

        def make() -> str:
            store.locks_dir.mkdir(mode=0o700, exist_ok=True)
            return "made it"

        return [finding("store-layout", "store", store.locks_dir, "missing", "make it", make)]
    except NotADirectoryError:
        return [
            finding(
                "store-layout",
                "store",
                store.locks_dir,
                "not a directory: no command can take a lock",
                "move it to removed/ and make the directory",
                lambda: _replace_locks_dir(store),
            )
        ]
    found = []
    for entry in entries:
        path = store.locks_dir / entry
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode):
            continue

        def fix(path: Path = path) -> str:
            if os.path.islink(path) or not path.is_dir():
                path.unlink()
                return "removed (the lock file is made again when next used)"
            return move_aside(store, path, f"lock-{path.name}")

        found.append(
            finding(
                "lock-file",
                "store",
                path,
                "a lock file that is not a regular file: commands that need it fail",
                "move it away (a lock file is made again when next used)",
                fix,
            )
        )
    return found


def _replace_locks_dir(store: Store) -> str:
    moved = move_aside(store, store.locks_dir, "locks")
    store.locks_dir.mkdir(mode=0o700)
    return f"{moved}; made it again"


def _keys(store: Store) -> list[Finding]:
    found = []
    trust = store.trust_path
    try:
        data = config.read_toml(trust)
        for entry in data.get("key", []):
            if not isinstance(entry, dict) or not _HEX.fullmatch(str(entry.get("public", ""))):
                raise RealmsError(f"{trust}: a key entry is not a public key: {entry!r}")
            unknown = set(entry) - {"channel", "public", "added", "revoked"}
            if unknown or not isinstance(entry.get("channel"), str):
                raise RealmsError(f"{trust}: a key entry is damaged: {entry!r}")
    except RealmsError as error:
        found.append(
            finding(
                "trust",
                "keys",
                trust,
                f"cannot be read ({error}): no sealed image verifies",
                "restore it from a backup; until then 'realms key trust' cannot add keys",
            )
        )
    try:
        entries = sorted(os.listdir(store.signing_dir))
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        path = store.signing_dir / entry
        if not entry.endswith(".key") or entry.startswith("."):
            continue  # revoked keys (CHANNEL.key.revoked-...) and temporary files
        try:
            text = path.read_text(errors="replace").strip()
        except OSError as error:
            text = f"unreadable: {error.strerror}"
        if not _HEX.fullmatch(text):
            found.append(
                finding(
                    "signing-key",
                    "keys",
                    path,
                    "not an Ed25519 seed in hex: seals with this channel fail",
                    "restore it from a backup, or make a new one ('realms key generate "
                    f"{entry.removesuffix('.key')} --replace')",
                )
            )
    return found


def _default_link(store: Store) -> list[Finding]:
    link = store.default_realm_link
    try:
        info = os.lstat(link)
    except FileNotFoundError:
        return []
    if not stat.S_ISLNK(info.st_mode):
        return [
            finding(
                "default-link",
                "store",
                link,
                "not a symlink",
                "move it to removed/",
                lambda: move_aside(store, link, "default.realm"),
            )
        ]
    target = os.readlink(link)
    name = os.path.basename(target.rstrip("/"))
    if target == f"realms/{name}" and store.realm(name).origin.exists():
        return []

    def fix() -> str:
        with store.realm_lock(name, wait=0) if is_existing_realm_name(name) else ExitStack():
            current = os.readlink(link)
            if current == f"realms/{name}" and store.realm(name).origin.exists():
                return "nothing to do (the realm exists now)"
            link.unlink()
        return "removed (the next realm made becomes the default)"

    return [
        finding(
            "default-link",
            "store",
            link,
            f"points to {target}, which is no realm",
            "remove it",
            fix,
        )
    ]


def _leftovers(store: Store) -> list[Finding]:
    found = []
    now = time.time()
    for leftover in txn.find_leftovers(store):
        if not leftover.locks:
            try:
                young = now - os.lstat(leftover.path).st_mtime <= txn.STALE_AFTER
            except FileNotFoundError:
                continue
            if young:
                continue  # an atomic write under way
        else:
            try:
                with ExitStack() as stack:
                    for lock in leftover.locks:
                        stack.enter_context(lock())
            except Busy:
                continue  # its command runs
            except RealmsError:
                continue  # named like no lock: the sweep leaves it too
        found.append(
            finding(
                "leftover",
                "store",
                leftover.path,
                "left by a killed command",
                "delete it (what the next command's sweep does)",
                functools.partial(_sweep, store, leftover.path),
            )
        )
    return found


def _sweep(store: Store, path: Path) -> str:
    if os.path.lexists(path):
        store.sweep()
    return "deleted" if not os.path.lexists(path) else "still there (its command runs again)"


def _runtime(store: Store) -> list[Finding]:
    from realms.lifecycle import state

    try:
        entries = sorted(os.listdir(store.runtime_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        name = entry.removesuffix(".json")
        if not is_existing_realm_name(name):
            continue
        exists = store.realm(name).origin.exists()
        runtime = state.running(store, name)
        path = store.runtime_state_path(name)
        if runtime is not None:
            if not exists:
                found.append(
                    finding(
                        "runtime-orphan",
                        f"realm {name}",
                        runtime.cgroup,
                        f"processes of realm {name}, which is gone, still run",
                        f"kill the processes in {runtime.cgroup}",
                    )
                )
            continue

        def fix(name: str = name) -> str:
            with store.realm_lock(name, wait=0):
                if state.running(store, name) is None:
                    state.forget(store, name)
            return "forgotten"

        found.append(
            finding(
                "runtime-stale",
                f"realm {name}",
                path,
                "recorded as booted, but it is stopped"
                if exists
                else "a booted realm's record, but the realm is gone",
                "forget the record (as the next start or stop does)",
                fix,
            )
        )
    return found
