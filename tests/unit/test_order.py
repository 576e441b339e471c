"""The start and stop order of booted realms (requires, autostart), cycles and missing realms,
and whether a root filesystem can boot. Without root: graphs are dictionaries, and the store
loader reads realm configs of a unit-test store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from realms import api
from realms.errors import InvalidInput, NotFound, RealmsError
from realms.lifecycle import order
from realms.lifecycle.order import Needs
from realms.store import Store
from realms.treeview import TreeView
from tests.unit.conftest import Owners


def loader(graph: dict[str, list[str]], autostart: tuple[str, ...] = ()) -> order.Loader:
    def load(name: str) -> Needs | None:
        if name not in graph:
            return None
        return Needs(tuple(graph[name]), name in autostart)

    return load


def test_requirements_start_first_in_a_stable_order() -> None:
    graph = {"top": ["mid", "side"], "mid": ["low"], "side": ["low"], "low": [], "other": []}
    assert order.start_order(["top"], loader(graph)) == ["low", "mid", "side", "top"]
    assert order.start_order(["low"], loader(graph)) == ["low"]
    # Several roots: each realm once, each after what it requires.
    assert order.start_order(["other", "mid", "top"], loader(graph)) == [
        "other",
        "low",
        "mid",
        "side",
        "top",
    ]


def test_a_long_chain_needs_no_recursion() -> None:
    graph = {f"r{i}": [f"r{i + 1}"] for i in range(5000)} | {"r5000": []}
    result = order.start_order(["r0"], loader(graph))
    assert result[0] == "r5000" and result[-1] == "r0" and len(result) == 5001


@pytest.mark.parametrize(
    ("graph", "root", "cycle"),
    [
        ({"a": ["b"], "b": ["a"]}, "a", "a -> b -> a"),
        ({"a": ["a"]}, "a", "a -> a"),
        ({"top": ["a"], "a": ["b"], "b": ["c"], "c": ["a"]}, "top", "a -> b -> c -> a"),
    ],
)
def test_a_cycle_is_an_error_naming_it(graph: dict[str, list[str]], root: str, cycle: str) -> None:
    with pytest.raises(RealmsError, match="cycle") as caught:
        order.start_order([root], loader(graph))
    assert caught.value.message.endswith(cycle)


def test_a_missing_realm_is_named() -> None:
    graph = {"a": ["b"], "b": ["ghost"]}
    with pytest.raises(NotFound, match="realm 'b' requires realm 'ghost', which does not exist"):
        order.start_order(["a"], loader(graph))
    with pytest.raises(NotFound, match="no realm named 'nothing'"):
        order.start_order(["nothing"], loader(graph))


def test_a_required_name_that_is_no_realm_name_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"realm a: requires: '\.\./etc'"):
        order.start_order(["a"], loader({"a": ["../etc"]}))


def test_autostart_starts_the_chosen_realms_and_what_they_require() -> None:
    graph = {"web": ["db"], "db": [], "mail": [], "idle": ["db"]}
    load = loader(graph, autostart=("web", "mail"))
    assert order.autostart_order(sorted(graph), load) == ["mail", "db", "web"]
    assert order.autostart_order(sorted(graph), loader(graph)) == []


def test_autostart_skips_a_realm_whose_config_cannot_be_read() -> None:
    def load(name: str) -> Needs | None:
        if name == "broken":
            raise InvalidInput("broken config")
        return Needs((), True)

    assert order.autostart_order(["a", "broken", "c"], load) == ["a", "c"]


def test_stop_order_puts_dependents_first() -> None:
    graph = {"top": ["mid"], "mid": ["low"], "low": [], "side": ["low"], "alone": []}
    load = loader(graph)
    running = ["alone", "low", "mid", "side", "top"]
    assert order.stop_order("low", running, load) == ["top", "side", "mid"]
    assert order.stop_order("mid", running, load) == ["top"]
    assert order.stop_order("top", running, load) == []
    # Only running realms count: a stopped realm in between does not hide the chain.
    assert order.stop_order("low", ["low", "top"], load) == ["top"]
    assert order.stop_order("low", ["low", "alone"], load) == []


def test_stop_order_survives_a_cycle_among_running_realms() -> None:
    graph = {"a": ["b"], "b": ["a"], "c": []}
    assert sorted(order.stop_order("c", ["a", "b", "c"], loader(graph))) == []
    assert order.stop_order("a", ["a", "b"], loader(graph)) == ["b"]


def test_the_store_loader_reads_realm_configs(store: Store, tree: Path, owners: Owners) -> None:
    api.import_appimg(store, "base", tree)
    for name in ("db", "web"):
        api.new_realm(store, name)
    config = store.realm("web").config
    config.write_text(config.read_text() + 'requires = ["db"]\nautostart = true\n')
    load = order.store_loader(store)
    assert load("web") == Needs(("db",), True)
    assert load("db") == Needs((), False)
    assert load("ghost") is None
    assert order.autostart_order(["db", "web"], load) == ["db", "web"]
    store.realm("db").config.write_text('requires = "db"\n')
    with pytest.raises(InvalidInput, match="requires"):
        order.store_loader(store)("db")


def test_a_tree_boots_only_with_systemd(tree: Path) -> None:
    view = TreeView([tree])
    assert not order.has_init(view)
    with pytest.raises(order.NoInit, match="realm 'work' cannot boot") as caught:
        order.require_init(view, "work")
    assert caught.value.hint and "systemd-sysv" in caught.value.hint
    (tree / "usr/lib/systemd").mkdir(parents=True)
    (tree / "usr/lib/systemd/systemd").write_text("")
    assert order.has_init(view)
    order.require_init(view, "work")
