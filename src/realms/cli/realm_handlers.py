"""Handlers of the store and realm commands: init, status, new, list, show, remove, shell, run,
default. Each turns its arguments into typed values, calls one function of :mod:`realms.api`
and prints the result (:mod:`realms.cli.output`)."""

from __future__ import annotations

from realms import api, log
from realms.cli import output
from realms.cli.call import Call, UsageError
from realms.units import parse_size


def init(call: Call) -> int:
    pool_size = parse_size(call.text("pool_size"))
    result = api.init(call.location, backend=call.text("backend"), pool_size=pool_size)
    where = f" (btrfs pool {result.pool_image})" if result.pool_image else ""
    if result.created:
        log.note(f"Store ready at {result.store}: {result.backend} backend{where}")
    elif result.mounted:
        log.note(f"Store at {result.store} mounted again{where}")
    else:
        log.note(f"Store at {result.store} is already set up: {result.backend} backend{where}")
    return 0


def status(call: Call) -> int:
    result = api.status(call.store)
    if call.json:
        output.print_json(result.to_json())
    else:
        output.status(result)
    return 0


def new(call: Call) -> int:
    info = api.new_realm(call.store, call.text("name"), call.maybe_text("appimg"))
    log.note(
        f"Created realm {info.name} from appimg {info.origin.appimg} version "
        f"{info.origin.appimg_version}" + (" (default realm)" if info.default else "")
    )
    return 0


def list_(call: Call) -> int:
    found = api.list_realms(call.store)
    if call.json:
        output.print_json([r.to_json() for r in found])
    elif not found:
        log.note("No realms yet: 'realms new NAME' makes one")
    else:
        output.realms(found)
    return 0


def show(call: Call) -> int:
    info = api.show_realm(call.store, call.text("name"))
    if call.json:
        output.print_json(info.to_json())
    else:
        output.realm(info)
    return 0


def remove(call: Call) -> int:
    name = call.text("name")
    kept = api.remove_realm(call.store, name, keep_home=call.flag("keep_home"))
    log.note(f"Removed realm {name}" + (f"; its home is kept in {kept}" if kept else ""))
    return 0


def default(call: Call) -> int:
    name = call.maybe_text("name")
    found = api.default(call.store, name)
    if name:
        log.note(f"Default realm is now {found}")
    else:
        print(found)
    return 0


def shell(call: Call) -> int:
    return api.shell(call.store, call.maybe_text("name"), root=call.flag("root"))


def run(call: Call) -> int:
    if not call.trailing:
        raise UsageError("run needs a command after --: realms run [NAME] -- COMMAND ...")
    return api.run(call.store, call.maybe_text("name"), call.trailing, root=call.flag("root"))


def start(call: Call) -> int:
    name, autostart = call.maybe_text("name"), call.flag("autostart")
    if autostart == (name is not None):
        raise UsageError("name a realm to start, or give --autostart")
    started = api.start_realm(
        call.store, name, autostart=autostart, timeout=call.maybe_number("timeout")
    )
    for result in started:
        log.note(result.message())
    if autostart and not started:
        log.note("No realm has autostart = true")
    return 0


def stop(call: Call) -> int:
    stopped = api.stop_realm(
        call.store,
        call.text("name"),
        timeout=call.maybe_number("timeout"),
        force=call.flag("force"),
    )
    for name in stopped:
        log.note(f"Stopped realm {name}")
    if not stopped:
        log.note(f"Realm {call.text('name')} is not running")
    return 0


def restart(call: Call) -> int:
    result = api.restart_realm(call.store, call.text("name"))
    log.note(result.message())
    return 0


def current(call: Call) -> int:
    name = call.maybe_text("name")
    chosen = api.current_realm(call.store, name)
    if name is None:
        if chosen is None:
            log.note("No current realm, and no default realm")
            return 1
        print(chosen)
    else:
        log.note(f"Realm {chosen} is current")
    return 0
