"""Private networks without root: the zone tables, subnets given to zones, addresses given to
realms, the nftables ruleset, the /etc/hosts block and the realm's resolv.conf."""

from __future__ import annotations

import os
import shutil
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from realms import config
from realms.errors import InvalidInput, RealmsError
from realms.network import bridge, hosts, ipam, nft, zones
from realms.store import Store


def load(path: Path, text: str) -> config.GlobalConfig:
    path.write_text(text)
    return config.load_global(path)


def test_zone_tables_are_read_with_the_global_config(tmp_path: Path) -> None:
    loaded = load(
        tmp_path / "config.toml",
        '[zones.work]\nsubnet = "10.89.7.0/24"\n[zones.other]\nallow = ["work", "work"]\n',
    )
    assert loaded.zones["work"] == zones.Zone("work", IPv4Network("10.89.7.0/24"), ())
    assert loaded.zones["other"] == zones.Zone("other", None, ("work",))
    assert zones.zone(loaded.zones, "clear") == zones.Zone("clear")
    assert load(tmp_path / "empty.toml", "").zones == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[zones.work]\nsubnet = "10.89.7.1/24"', "no host bits"),
        ('[zones.work]\nsubnet = "10.89.7.0/31"', "prefix length from /8 to /30"),
        ('[zones.work]\nsubnet = "fd00::/64"', "an IPv4 subnet"),
        ("[zones.work]\nsubnet = 5", "an IPv4 subnet"),
        ("[zones.work]\ncolour = 1", "unknown key 'colour'"),
        ('[zones.work]\nallow = ["Bad"]', "invalid zone name 'Bad'"),
        ("[zones.Work]", "invalid zone name 'Work'"),
        ("[zones.verylongname]", "longer than 8 characters"),
        ("zones = 1", "expected a table [zones]"),
        ("[zones]\nwork = 1", "expected a table"),
        (
            '[zones.a]\nsubnet = "10.1.0.0/16"\n[zones.b]\nsubnet = "10.1.2.0/24"',
            "the subnets of zones a (10.1.0.0/16) and b (10.1.2.0/24) overlap",
        ),
    ],
)
def test_bad_zone_tables_are_refused_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        load(tmp_path / "config.toml", text)
    assert expected in raised.value.message and "\n" not in raised.value.message


def test_a_realm_names_its_zone_with_a_checked_name(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text('network = "private"\nnetwork-zone = "../x"\n')
    with pytest.raises(InvalidInput, match="invalid zone name"):
        config.load_realm(path, {})
    path.write_text('network = "private"\nnetwork-zone = "work"\n')
    assert config.load_realm(path, {})["network-zone"] == "work"


def test_zones_without_a_subnet_get_the_next_free_one_and_keep_it() -> None:
    configured = {"work": zones.Zone("work", IPv4Network("10.89.0.0/24"))}
    first = zones.subnets(configured, {}, ["clear", "work", "other"])
    assert first == {"clear": "10.89.1.0/24", "other": "10.89.2.0/24"}
    # Kept across commands, whatever order zones are asked in; a new one takes the next gap.
    again = zones.subnets(configured, first, ["new", "other"])
    assert again == {**first, "new": "10.89.3.0/24"}
    # A zone given a subnet in the config that kept ones overlap: they move when used next.
    moved = {**configured, "clear": zones.Zone("clear", IPv4Network("10.89.2.0/23"))}
    assert zones.subnets(moved, again, ["other"]) == {"other": "10.89.1.0/24"}
    assert zones.subnet_of(moved, {}, "clear") == IPv4Network("10.89.2.0/23")


def test_the_pool_can_run_out() -> None:
    configured = {"all": zones.Zone("all", zones.POOL)}
    with pytest.raises(RealmsError, match=r"no free /24 left in 10\.89\.0\.0/16 for zone work"):
        zones.subnets(configured, {}, ["work"])


def realm(store: Store, name: str) -> None:
    store.realm_dir(name).mkdir(parents=True)


def test_realms_get_addresses_of_their_zone_and_keep_them(store: Store) -> None:
    for name in ("a", "b", "c"):
        realm(store, name)
    assert str(ipam.assign(store, "a", "clear").address) == "10.89.0.2"
    b = ipam.assign(store, "b", "clear")
    assert (str(b.address), str(b.gateway), b.subnet.prefixlen) == ("10.89.0.3", "10.89.0.1", 24)
    assert str(ipam.assign(store, "c", "work").address) == "10.89.1.2"
    # Again and again the same (across restarts), and readable without a lock.
    assert str(ipam.assign(store, "a", "clear").address) == "10.89.0.2"
    assert ipam.read(store, "b") == ipam.Record("clear", "10.89.0.3")
    # Another zone: an address of that zone's subnet; the old one is free again.
    assert str(ipam.assign(store, "a", "work").address) == "10.89.1.3"
    realm(store, "d")
    assert str(ipam.assign(store, "d", "clear").address) == "10.89.0.2"
    # A removed realm's address goes with its directory.
    shutil.rmtree(store.realm_dir("d"))
    realm(store, "e")
    assert str(ipam.assign(store, "e", "clear").address) == "10.89.0.2"
    assert (store.network_dir / ipam.ZONES_FILE).read_text().count("/24") == 2


def test_a_full_subnet_says_so(store: Store) -> None:
    store.config_path.write_text('[zones.tiny]\nsubnet = "10.50.0.0/30"\n')
    realm(store, "a")
    realm(store, "b")
    assert str(ipam.assign(store, "a", "tiny").address) == "10.50.0.2"
    with pytest.raises(RealmsError, match=r"zone tiny has no free address left in 10.50.0.0/30"):
        ipam.assign(Store(store.root, backend=store.backend), "b", "tiny")


def test_a_damaged_record_is_given_anew(store: Store) -> None:
    realm(store, "a")
    store.realm("a").network.write_text('zone = "clear"\naddress = "not an address"\n')
    assert ipam.read(store, "a") is None
    assert str(ipam.assign(store, "a", "clear").address) == "10.89.0.2"


def test_a_record_runs_only_while_its_init_does() -> None:
    me = os.getpid()
    started = ipam.start_time(me)
    assert started is not None
    record = ipam.Record("clear", "10.89.0.2", "vb-x", me, started, ipam.boot_id())
    assert record.running()
    assert not ipam.Record("clear", "10.89.0.2", "vb-x", me, started + 1, ipam.boot_id()).running()
    assert not ipam.Record("clear", "10.89.0.2", "vb-x", me, started, "another boot").running()
    assert not record.stopped().running() and record.stopped().address == "10.89.0.2"


def test_the_ruleset_keeps_zones_apart_unless_allowed() -> None:
    text = nft.ruleset(
        [
            nft.ZoneRules("other", IPv4Network("10.89.1.0/24"), ("work", "gone")),
            nft.ZoneRules("work", IPv4Network("10.89.0.0/24")),
        ],
        "0",
    )
    lines = [line.strip() for line in text.splitlines()]
    assert lines[:3] == ["table inet realms", "delete table inet realms", "table inet realms {"]
    assert (
        'comment "made by realms for the private networks of its zones; ip_forward was 0"' in lines
    )
    assert 'iifname "realms-work" oifname "realms-work" accept' in lines
    assert 'iifname "realms-other" oifname "realms-work" accept' in lines
    # Allowed one way only, and not towards a zone not in use (no such bridge).
    assert 'iifname "realms-work" oifname "realms-other" accept' not in lines
    assert not any("realms-gone" in line for line in lines)
    # Established first, the zone's own rules, then the refusal between zones.
    refuse = lines.index(
        'iifname "realms-*" oifname "realms-*" reject with icmpx type admin-prohibited'
    )
    assert lines.index("ct state established,related accept") < refuse
    assert lines.index('iifname "realms-other" oifname "realms-work" accept') < refuse
    assert (
        refuse < lines.index('oifname "realms-*" drop') < lines.index('iifname "realms-*" accept')
    )
    assert 'iifname "realms-work" ip saddr != 10.89.0.0/24 drop' in lines
    assert 'ip saddr 10.89.0.0/24 oifname != "realms-*" masquerade' in lines
    assert 'ip saddr 10.89.1.0/24 oifname != "realms-*" masquerade' in lines


def test_the_hosts_block_is_replaced_and_the_rest_kept() -> None:
    text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
    once = hosts.with_zone(text, [("a", "10.89.0.2"), ("b", "10.89.0.3")])
    assert once == text + f"\n{hosts.BEGIN}\n10.89.0.2\ta\n10.89.0.3\tb\n{hosts.END}\n"
    assert hosts.with_zone(once, [("a", "10.89.0.2"), ("b", "10.89.0.3")]) == once
    changed = hosts.with_zone(once + "10.0.0.9\tmine\n", [("a", "10.89.0.2")])
    assert changed == text + f"10.0.0.9\tmine\n\n{hosts.BEGIN}\n10.89.0.2\ta\n{hosts.END}\n"
    assert hosts.with_zone(once, []) == text
    assert hosts.with_zone("", []) == ""


def test_the_realm_gets_the_upstream_name_servers() -> None:
    text = (
        "# resolved\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.53\n"
        "nameserver fe80::1%eth0\nnameserver junk\nsearch example.org\noptions edns0\n"
    )
    assert hosts.resolv_without_loopback(text, "/etc/resolv.conf").splitlines()[1:] == [
        "nameserver 192.0.2.53",
        "nameserver fe80::1%eth0",
        "search example.org",
        "options edns0",
    ]


def test_veth_names_fit_and_differ(tmp_path: Path) -> None:
    long = "a" * 64
    names = {
        bridge.veth_name(tmp_path, long),
        bridge.veth_name(tmp_path, long[:-1] + "b"),
        bridge.veth_name(tmp_path / "other", long),
        bridge.veth_name(tmp_path, "x"),
    }
    assert len(names) == 4
    assert all(len(name) <= 15 and name.startswith("vb-") for name in names)
    assert bridge.veth_name(tmp_path, "x") == bridge.veth_name(tmp_path, "x")
