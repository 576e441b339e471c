"""Private networks of zones, for real: booted realms with veths into bridges, nftables rules,
addresses kept with realms, names in /etc/hosts.

Everything runs in two network namespaces of the test's own: ``inner`` plays the host (realms
runs there: its bridges, veths and nftables table never touch this machine's network), and
``outer`` plays the world beyond the host's uplink (a veth pair between them, 192.0.2.0/24, a
TCP server of the test's on 192.0.2.2). No packet goes anywhere else: the realms' default route
ends in ``outer``, which routes nothing further. Both namespaces are deleted at the end, also
when a test fails, after its realms are stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from realms.lifecycle import state
from realms.network import nft
from realms.store import Store
from tests.helpers import Realms

OUTSIDE = "192.0.2.2"
UPLINK = "192.0.2.1"
OUTSIDE_PORT = 8080
REALM_PORT = 7777

# Accepts connections, sends each the address it came from and closes; prints "ready" first.
SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    connection, peer = server.accept()
    connection.sendall(f"hello {peer[0]}".encode())
    connection.close()
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def serve(prefix: list[str], address: str, port: int) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        [*prefix, sys.executable, "-c", SERVER, address, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    if server.stdout.readline().strip() != "ready":
        server.kill()
        raise AssertionError(f"the test server did not start: {server.communicate()[1]}")
    return server


class NetnsRealms(Realms):
    """The realms command run in the test's ``inner`` network namespace (only it: the mount
    namespace stays this machine's, so the store and its mounts are where the fixtures look)."""

    def __init__(self, store: Path, netns: str) -> None:
        super().__init__(store)
        self.netns = netns

    def argv(self, *args: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *super().argv(*args)]


@dataclass
class Lab:
    inner: str
    outer: str
    realms: NetnsRealms
    started: list[str] = field(default_factory=list)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def inner_sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.inner, *argv, check=check)

    def new(self, name: str, **settings: str) -> None:
        self.realms("new", name)
        config = self.realms.store / "realms" / name / "config"
        lines = "".join(f'{key} = "{value}"\n' for key, value in settings.items())
        config.write_text(config.read_text() + lines)

    def start(self, name: str) -> None:
        if name not in self.started:
            self.started.append(name)
        self.realms("start", name)

    def stop(self, name: str) -> None:
        self.realms("stop", name)

    def leader(self, name: str) -> int:
        runtime = state.running(Store.open(self.realms.store), name)
        assert runtime is not None and runtime.leader_pid, f"realm {name} does not run"
        return runtime.leader_pid

    def address(self, name: str) -> str:
        text = (self.realms.store / "realms" / name / "network.toml").read_text()
        return text.split('address = "')[1].split('"')[0]

    def inside(
        self, name: str, script: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``script`` run by bash in the realm (all its namespaces, its root)."""
        return sh(
            "nsenter", "-t", str(self.leader(name)), "-a", "-r", "-w",
            "--", "/bin/bash", "-c", script, check=check,
        )  # fmt: skip

    def connect(self, name: str, host: str, port: int) -> subprocess.CompletedProcess[str]:
        """From realm ``name``, a TCP connection to ``host`` (a name or an address); what the
        server said on stdout. Refused between zones at once, with a short timeout anyway."""
        return self.inside(
            name, f"timeout 10 bash -c 'exec 3<>/dev/tcp/{host}/{port}; cat <&3'", check=False
        )

    def serve_in(self, name: str) -> None:
        """A server of the test's in realm ``name``'s network namespace (the realm's network,
        this machine's program)."""
        prefix = ["nsenter", f"--net=/proc/{self.leader(name)}/ns/net", "--"]
        self.servers.append(serve(prefix, "0.0.0.0", REALM_PORT))  # noqa: S104 (its own netns)

    def realms_links(self) -> list[str]:
        links = self.inner_sh("ip", "-o", "link", "show").stdout
        return sorted(
            line.split(": ")[1].split("@")[0]
            for line in links.splitlines()
            if line.split(": ")[1].startswith(("realms-", "vb-"))
        )

    def table(self) -> str:
        return self.inner_sh("nft", "list", "table", "inet", "realms", check=False).stdout

    def forwarding(self) -> str:
        return self.inner_sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()


@pytest.fixture
def lab(store_dir: Path, bootable_tree: Path) -> Iterator[Lab]:
    token = uuid.uuid4().hex[:8]
    inner, outer = f"realms-test-{token}", f"realms-out-{token}"
    lab = Lab(inner, outer, NetnsRealms(store_dir, inner))
    sh("ip", "netns", "add", inner)
    try:
        sh("ip", "netns", "add", outer)
        sh("ip", "-n", inner, "link", "add", "uplink0", "type", "veth", "peer", "name", "world0",
           "netns", outer)  # fmt: skip
        for netns, link, address in ((inner, "uplink0", UPLINK), (outer, "world0", OUTSIDE)):
            sh("ip", "-n", netns, "address", "add", f"{address}/24", "dev", link)
            sh("ip", "-n", netns, "link", "set", link, "up")
            sh("ip", "-n", netns, "link", "set", "lo", "up")
        sh("ip", "-n", inner, "route", "add", "default", "via", OUTSIDE)
        lab.servers.append(serve(["ip", "netns", "exec", outer], OUTSIDE, OUTSIDE_PORT))
        lab.realms("init")
        lab.realms("appimg", "import", "base", str(bootable_tree))
        yield lab
    finally:
        for name in reversed(lab.started):
            lab.realms("stop", name, check=False)
        for server in lab.servers:
            server.kill()
            server.wait()
        sh("ip", "netns", "delete", outer, check=False)
        sh("ip", "netns", "delete", inner, check=False)
    assert not Path(f"/run/netns/{inner}").exists()


def test_zones_reach_their_own_and_the_outside_and_others_only_when_allowed(lab: Lab) -> None:
    assert lab.forwarding() == "0"
    # One privileged realm: its files are written without a user namespace to join.
    lab.new("a", network="private", isolation="privileged", **{"network-zone": "work"})
    lab.new("b", network="private", **{"network-zone": "work"})
    lab.new("c", network="private", **{"network-zone": "other"})
    for name in ("a", "b", "c"):
        lab.start(name)
    a, b, c = (lab.address(name) for name in ("a", "b", "c"))
    assert (a, b) == ("10.89.0.2", "10.89.0.3") and c == "10.89.1.2"
    links = lab.realms_links()
    assert [link for link in links if link.startswith("realms-")] == ["realms-other", "realms-work"]
    assert len([link for link in links if link.startswith("vb-")]) == 3
    assert lab.forwarding() == "1"

    # Names: each realm of a zone has the zone's running realms in its /etc/hosts.
    hosts_a = lab.inside("a", "cat /etc/hosts").stdout
    assert f"{a}\ta" in hosts_a and f"{b}\tb" in hosts_a and "\tc" not in hosts_a
    hosts_c = lab.inside("c", "stat -c %u:%g /etc/hosts; cat /etc/hosts").stdout
    assert hosts_c.startswith("0:0\n") and f"{c}\tc" in hosts_c  # the realm's root owns it
    assert "127.0.0.53" not in lab.inside("a", "cat /etc/resolv.conf").stdout

    # Within the zone, by name; the outside, masqueraded behind the uplink's address.
    lab.serve_in("b")
    reached = lab.connect("a", "b", REALM_PORT)
    assert reached.stdout == f"hello {a}", reached.stderr
    outside = lab.connect("a", OUTSIDE, OUTSIDE_PORT)
    assert outside.stdout == f"hello {UPLINK}", outside.stderr
    assert lab.connect("c", OUTSIDE, OUTSIDE_PORT).stdout == f"hello {UPLINK}"

    # Another zone: refused.
    refused = lab.connect("c", b, REALM_PORT)
    assert refused.returncode != 0 and "hello" not in refused.stdout

    # Allowed from other to work (one way): after the config says so, at the next start.
    config = lab.realms.store / "config.toml"
    config.write_text(config.read_text() + '\n[zones.other]\nallow = ["work"]\n')
    lab.realms("restart", "c")
    assert lab.address("c") == c  # kept across restarts
    allowed = lab.connect("c", b, REALM_PORT)
    assert allowed.stdout == f"hello {c}", allowed.stderr  # not masqueraded between zones
    lab.serve_in("c")
    assert lab.connect("b", c, REALM_PORT).returncode != 0

    # Stopped: gone from the others' /etc/hosts; the last of a zone takes its bridge along.
    lab.stop("b")
    assert "\tb" not in lab.inside("a", "cat /etc/hosts").stdout
    lab.stop("a")
    assert "realms-work" not in lab.realms_links()
    assert '"realms-work"' not in lab.table() and '"realms-other"' in lab.table()
    lab.stop("c")
    assert lab.realms_links() == []
    assert lab.table() == ""
    assert lab.forwarding() == "0"

    # Addresses stay with their realms; a removed realm's goes with it.
    lab.start("b")
    assert lab.address("b") == b
    lab.stop("b")
    lab.realms("remove", "a")
    lab.new("d", network="private", **{"network-zone": "work"})
    lab.start("d")
    assert lab.address("d") == a
    hosts_d = lab.inside("d", "cat /etc/hosts").stdout
    assert f"{a}\td" in hosts_d and "\ta\n" not in hosts_d
    lab.stop("d")


def test_none_has_only_loopback_and_host_shares_the_namespace(lab: Lab) -> None:
    lab.new("n", network="none")
    lab.new("h", network="host")
    lab.start("n")
    lab.start("h")
    links = lab.inside("n", "ip -o link show").stdout.splitlines()
    assert [line.split(": ")[1] for line in links] == ["lo"]
    own = os.stat(f"/run/netns/{lab.inner}").st_ino
    assert os.stat(f"/proc/{lab.leader('h')}/ns/net").st_ino == own
    assert os.stat(f"/proc/{lab.leader('n')}/ns/net").st_ino != own
    assert lab.realms_links() == [] and lab.table() == ""
    assert not (lab.realms.store / "realms" / "n" / "network.toml").exists()


def test_what_a_killed_command_left_is_cleaned_up(lab: Lab) -> None:
    # A bridge, a table and forwarding on, as a command killed halfway would leave them.
    lab.inner_sh("ip", "link", "add", "realms-gone", "type", "bridge")
    rules = nft.ruleset([nft.ZoneRules("gone", IPv4Network("10.89.9.0/24"))], "0")
    subprocess.run(
        ["ip", "netns", "exec", lab.inner, "nft", "-f", "-"], input=rules, text=True, check=True
    )
    lab.inner_sh("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
    lab.new("a", network="private")
    lab.start("a")
    assert "realms-gone" not in lab.realms_links() and "realms-clear" in lab.realms_links()
    assert "realms-gone" not in lab.table()
    assert lab.address("a") == "10.89.0.2"
    lab.stop("a")
    assert lab.realms_links() == [] and lab.table() == "" and lab.forwarding() == "0"
    # The supervisor killed: stopping the realm still takes its network along.
    lab.start("a")
    runtime = state.running(Store.open(lab.realms.store), "a")
    assert runtime is not None and runtime.supervisor_pid
    os.kill(runtime.supervisor_pid, signal.SIGKILL)
    lab.stop("a")
    assert lab.realms_links() == [] and lab.table() == "" and lab.forwarding() == "0"
