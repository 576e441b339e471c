"""The order in which booted realms start and stop, and whether a realm can boot at all.

A realm's config says ``requires = ["other", ...]`` (realms that must run before it, and stop
after it) and ``autostart = true`` (started by ``realms start --autostart``, what the boot-time
unit runs). From them:

- :func:`start_order`: the realms to start for some realms, each after every realm it requires
  (directly or not); a cycle is an error naming it (``a -> b -> a``), and so is a required realm
  that does not exist;
- :func:`stop_order`: the realms among some (the running ones) that require a realm, each
  before the realms it requires: what ``realms stop --force`` stops before it;
- :func:`require_init`: a realm boots only when its root filesystem has systemd (nspawn
  ``--boot`` runs it as PID 1); otherwise a clear error with a hint.

The graph is read through a loader, so that the order is computed (and unit-tested) without a
store: :func:`store_loader` reads the realms' configs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from realms import log
from realms.errors import InvalidInput, InvalidName, NotFound, RealmsError
from realms.names import check_realm_name

if TYPE_CHECKING:
    from realms.store import Store
    from realms.treeview import TreeView


class Needs(NamedTuple):
    """What one realm's config says about starting it."""

    requires: tuple[str, ...] = ()
    autostart: bool = False


Loader = Callable[[str], Needs | None]
"""A realm's needs by name; None when no such realm exists."""

INIT_PATHS = ("usr/lib/systemd/systemd", "lib/systemd/systemd")
"""Where ``systemd-nspawn --boot`` finds systemd in a root filesystem (merged /usr first)."""


def store_loader(store: Store) -> Loader:
    """The needs of the store's realms, read from their configs (each read once)."""
    cache: dict[str, Needs | None] = {}

    def load(name: str) -> Needs | None:
        if name not in cache:
            if not store.realm(name).origin.exists():
                cache[name] = None
            else:
                values = _settings(store, name)
                cache[name] = Needs(tuple(values["requires"]), bool(values["autostart"]))
        return cache[name]

    return load


def _settings(store: Store, name: str) -> dict[str, Any]:
    # What realms.realm.realm_settings reads; not imported from there, which imports the
    # lifecycle modules that use this one.
    from realms.config import load_realm

    return load_realm(store.realm(name).config, store.config.realm_defaults)


def _required(name: str, needs: Needs) -> list[str]:
    """``name``'s required realms, each a realm name (they become paths and lock names)."""
    result = []
    for required in needs.requires:
        try:
            check_realm_name(required)
        except InvalidName:
            raise InvalidInput(
                f"realm {name}: requires: {required!r} is not a realm name"
            ) from None
        if required not in result:
            result.append(required)
    return result


def start_order(names: Iterable[str], load: Loader) -> list[str]:
    """``names`` and every realm they require, directly or not, each after all the realms it
    requires; otherwise in the order given (and of each ``requires`` list).

    A cycle raises RealmsError naming it; a name or a required realm that does not exist,
    NotFound.
    """
    order: list[str] = []
    done: set[str] = set()
    for root in names:
        if root in done:
            continue
        root_needs = load(root)
        if root_needs is None:
            raise NotFound(f"no realm named {root!r}", hint="'realms list' shows the realms")
        # Depth first without recursion (a long chain of realms cannot exhaust the stack): each
        # frame is a realm on the current path and the required realms it has left to visit.
        path = [root]
        stack = [(root, _required(root, root_needs))]
        while stack:
            current, left = stack[-1]
            if not left:
                stack.pop()
                path.pop()
                done.add(current)
                order.append(current)
                continue
            required = left.pop(0)
            if required in done:
                continue
            if required in path:
                cycle = [*path[path.index(required) :], required]
                raise RealmsError(
                    f"the realms' requires form a cycle: {' -> '.join(cycle)}",
                    hint="remove one of these from the requires of the realm before it",
                )
            needs = load(required)
            if needs is None:
                raise NotFound(
                    f"realm {current!r} requires realm {required!r}, which does not exist",
                    hint=f"make it, or remove it from requires in realm {current}'s config",
                )
            path.append(required)
            stack.append((required, _required(required, needs)))
    return order


def autostart_order(names: Iterable[str], load: Loader) -> list[str]:
    """The realms among ``names`` whose config says autostart = true, and the realms they
    require, in start order."""
    chosen = []
    for name in names:
        try:
            needs = load(name)
        except RealmsError as error:
            # One damaged config must not keep every other realm from starting at boot.
            log.warn(f"realm {name} is not started: {error.message}")
            continue
        if needs is not None and needs.autostart:
            chosen.append(name)
    return start_order(chosen, load)


def closure(name: str, load: Loader) -> set[str]:
    """Every realm that ``name`` requires, directly or through others (running or not)."""
    found: set[str] = set()
    left = [name]
    while left:
        needs = load(left.pop())
        for required in needs.requires if needs is not None else ():
            if required not in found:
                found.add(required)
                left.append(required)
    return found


def stop_order(name: str, among: Sequence[str], load: Loader) -> list[str]:
    """The realms of ``among`` (the running ones) that require ``name``, directly or through
    other realms: each before the realms it requires, so the last one stopped is the nearest to
    ``name``. ``name`` itself is not in it."""
    closures: dict[str, set[str]] = {}
    for other in among:
        if other == name:
            continue
        try:
            closures[other] = closure(other, load)
        except RealmsError as error:
            log.warn(f"cannot tell whether realm {other} requires {name}: {error.message}")
    dependents = [other for other, closure in closures.items() if name in closure]

    def among_dependents(other: str) -> Needs:
        return Needs(tuple(d for d in dependents if d != other and d in closures[other]))

    # The reverse of their start order among themselves; a cycle among running realms must not
    # keep them from stopping, so it falls back to the order given.
    try:
        return list(reversed(start_order(dependents, among_dependents)))
    except RealmsError:
        return list(reversed(dependents))


def has_init(view: TreeView) -> bool:
    """Whether the root filesystem has systemd where ``systemd-nspawn --boot`` looks."""
    return any(view.exists(path) for path in INIT_PATHS)


class NoInit(RealmsError):
    """A realm was asked to boot whose root filesystem has no init (systemd)."""


def require_init(view: TreeView, name: str) -> None:
    """Refuse to boot realm ``name`` when its root filesystem (as the container will see it)
    has no systemd."""
    if not has_init(view):
        raise NoInit(
            f"realm {name!r} cannot boot: its root filesystem has no systemd (/{INIT_PATHS[0]})",
            hint="'realms run' and 'realms shell' work without booting; to boot, make the realm "
            "from an appimg with the packages systemd and systemd-sysv (the default base has them)",
        )


def boots(store: Store, name: str) -> bool:
    """Whether realm ``name`` (which exists) has an init to boot, read from its files as they
    are before it runs: a tree realm's root, or an image realm's own layer over its image
    (activated for it, as a start would)."""
    from realms import activation, origin
    from realms.appimg.record import load_record
    from realms.kinds import IMAGE_KINDS
    from realms.treeview import TreeView

    files = store.realm(name)
    found = origin.load(files.directory)
    if found.kind not in IMAGE_KINDS:
        return has_init(TreeView([files.rootfs]))
    with store.appimg_lock(found.appimg, shared=True):
        version = load_record(store, found.appimg).version(found.appimg_version)
        if version is None:
            return False  # its image is gone: a start would say so
        with store.activation_lock(found.appimg):
            active = activation.activate(
                store, found.appimg, version, store.version_path(found.appimg, version)
            )
    # The realm's own layer counts only where the realm runs on it (overlay = "storage").
    own = [files.upper] if _settings(store, name)["overlay"] == "storage" else []
    return has_init(TreeView([*own, active.mountpoint]))
