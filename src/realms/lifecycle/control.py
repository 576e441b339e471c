"""The commands on booted realms: start, stop and restart (in the order of the realms'
``requires``, :mod:`realms.lifecycle.order`; one realm at a time is
:mod:`realms.lifecycle.startstop`), and the current realm."""

from __future__ import annotations

from pathlib import Path

from realms import log
from realms.errors import InvalidInput, NotFound, RealmsError
from realms.lifecycle.startstop import Started
from realms.names import check_existing_realm_name
from realms.store import Store
from realms.system.fs import atomic_write


def start(
    store: Store, name: str | None, *, autostart: bool = False, timeout: int | None = None
) -> list[Started]:
    """Boot realm ``name`` after the realms it requires, or with ``autostart`` every realm
    whose config says autostart = true (and what they require); what was started, in order
    (a realm running already is in it with already=True)."""
    from realms.lifecycle import order

    load = order.store_loader(store)
    if autostart:
        return _start_autostart(store, order.autostart_order(_realm_names(store), load), timeout)
    if name is None:
        raise InvalidInput("name a realm to start, or start the autostart realms")
    check_existing_realm_name(name)
    return _start_chain(store, name, order.start_order([name], load), timeout)


def _running_names(store: Store, *, but: str) -> list[str]:
    """The realms that run, but ``but``: found from the realms' directory names and their
    runtime state, reading no realm's files (a stop reads the configs of these only)."""
    from realms.lifecycle import state

    return [n for n in store.realm_names() if n != but and state.running(store, n) is not None]


def _realm_names(store: Store) -> list[str]:
    from realms.origin import all_origins

    return sorted(all_origins(store.realms_dir))


def _start_chain(store: Store, name: str, names: list[str], timeout: int | None) -> list[Started]:
    """Start ``names`` in order for realm ``name``; the first failure ends it, naming the realm
    that failed and the realms started before it (they keep running)."""
    from realms.lifecycle.startstop import start_one

    started: list[Started] = []
    for each in names:
        try:
            started.append(start_one(store, each, timeout))
        except RealmsError as error:
            before = [result.name for result in started if not result.already]
            if each == name and not before:
                raise
            what = f"realm {each!r}, which {name!r} requires," if each != name else repr(name)
            raise RealmsError(
                f"{what} did not start: {error.message}"
                + (f" (started before it, still running: {', '.join(before)})" if before else ""),
                hint=error.hint,
                details=error.details,
            ) from error
    return started


def _start_autostart(store: Store, names: list[str], timeout: int | None) -> list[Started]:
    """Start the autostart realms in order. One that fails does not keep the others from
    starting (what the boot-time unit runs), only the realms that require it."""
    from realms.lifecycle import order
    from realms.lifecycle.startstop import start_one

    load = order.store_loader(store)
    started: list[Started] = []
    failed: dict[str, str] = {}
    for each in names:
        blocked = sorted(order.closure(each, load) & set(failed))
        if blocked:
            failed[each] = f"it requires {', '.join(blocked)}"
            log.warn(f"realm {each} is not started: it requires {', '.join(blocked)}")
            continue
        try:
            started.append(start_one(store, each, timeout))
        except RealmsError as error:
            failed[each] = error.message
            log.warn(f"realm {each} did not start: {error.message}")
    if failed:
        for result in started:
            log.note(result.message())
        raise RealmsError(
            f"{len(failed)} of {len(names)} autostart realms did not start: " + ", ".join(failed),
            hint="'realms start NAME' shows why, with the end of its console log",
            details=[f"{each}: {why}" for each, why in failed.items()],
        )
    return started


def stop(store: Store, name: str, *, timeout: int | None = None, force: bool = False) -> list[str]:
    """Stop realm ``name``; the names of the realms stopped (none when it was not running).
    A realm that running realms require is refused, unless ``force``: those stop first, each
    before the realms it requires."""
    from realms.lifecycle import order, state
    from realms.lifecycle.startstop import stop_one

    check_existing_realm_name(name)
    dependents: list[str] = []
    if state.running(store, name) is not None:
        running = _running_names(store, but=name)
        dependents = order.stop_order(name, running, order.store_loader(store))
    if dependents and not force:
        raise RealmsError(
            f"realm {name!r} is required by running realms: {', '.join(dependents)}",
            hint=f"stop them first, or all of them with: realms stop --force {name}",
        )
    return [each for each in [*dependents, name] if stop_one(store, each, timeout)]


def restart(store: Store, name: str) -> Started:
    from realms.lifecycle.startstop import start_one, stop_one

    stop_one(store, name)
    return start_one(store, name)


def current(store: Store, name: str | None = None) -> str | None:
    """The current realm, else the default realm (None without either); or make realm ``name``
    current, booting it first (and what it requires) when it has an init and is not running.

    It is kept under /run with the boot it was chosen in, so that after the host boots the
    default realm is current again (also where /run outlives a boot)."""
    from realms.lifecycle import order, state
    from realms.realm import default_realm

    path = store.current_realm_path
    if name is None:
        chosen = _read_current(store, path)
        return chosen if chosen is not None else default_realm(store)
    check_existing_realm_name(name)
    if not store.realm(name).origin.exists():
        raise NotFound(f"no realm named {name!r}", hint="'realms list' shows the realms")
    if state.running(store, name) is None and order.boots(store, name):
        for result in start(store, name):
            log.note(result.message())
    store.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, f"{name} {state.boot_id()}\n", 0o600)
    return name


def _read_current(store: Store, path: Path) -> str | None:
    """The realm made current in this boot, if it still exists."""
    from realms.lifecycle.state import boot_id

    try:
        name, _, chosen_in = path.read_text(encoding="utf-8").strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        return None
    if chosen_in != boot_id():
        return None
    try:
        check_existing_realm_name(name)
    except RealmsError:
        return None
    return name if store.realm(name).origin.exists() else None
