"""Booted realms where systemd is PID 1, for real: a QEMU guest running Debian trixie with
systemd as init (:mod:`tests.system.kernel.systemd_guest`; these machines' PID 1 is not systemd).

The store is made on the host (a btrfs image: the ``bootable_tree`` imported as appimg ``base``,
realm ``box`` made from it, then ``base`` sealed with a key of the store's own), and handed to
the guest as its second disk. In the guest:

- ``realms start box`` gives an active ``realm-box.service`` that machined lists as machine
  ``box`` of that unit (``--keep-unit``: no scope of its own), whose cgroup holds the realm's
  init; a second start says it runs already; ``realms remove`` refuses it while it runs (its
  run lock, held in the unit); ``realms stop box`` leaves neither unit nor machine, and a
  one-shot ``realms run`` works again.
- With ``verity = "kernel"``, a realm on the sealed version runs a command: its image opened by
  the kernel's dm-verity (the enforcement these machines cannot take).

The guest prints ``@@ key value`` lines; the test reads them. One boot, about a minute and a
half under TCG (slow).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from realms.system.apt import host_debian_mirror
from tests.helpers import Realms, loops_backed_below, make_btrfs, unmount_below
from tests.system.kernel.systemd_guest import SystemdGuest, build_initramfs, build_root, make_ext4
from tests.system.kernel.vm import Guest, VMError

pytestmark = pytest.mark.slow

SCRIPT = r"""
set -u
say() { echo "@@ $*"; }
mkdir -p /mnt/pool
mount /dev/vdb /mnt/pool || exit 10
export REALMS_STORE=/mnt/pool/store
say pid1 "$(cat /proc/1/comm)"

realms start box; say start $?
say active "$(systemctl is-active realm-box.service)"
say machine "$(machinectl list --no-legend --no-pager | awk '$1 == "box" {print $1, $2}')"
say unit-of-machine "$(machinectl show box --property=Unit --value)"
leader=$(machinectl show box --property=Leader --value)
say leader-cgroup "$(cut -d: -f3 /proc/$leader/cgroup)"
say leader-comm "$(cat /proc/$leader/comm)"
realms start box; say start-again $?
realms remove box; say remove $?
systemctl status realm-box.service --no-pager --lines=0 | head -12
realms stop box; say stop $?
say after "$(systemctl is-active realm-box.service)"
say machines-after "$(machinectl list --no-legend --no-pager | wc -l)"
realms stop box; say stop-again $?
realms run box -- true; say run-stopped $?

# Networks of realms started as units: private (zone net) and none (loopback only).
realms start netbox; say net-start $?
leader=$(machinectl show netbox --property=Leader --value)
say net-address "$(nsenter -t "$leader" -n ip -4 -o addr show dev host0 | awk '{print $4}')"
say net-route "$(nsenter -t "$leader" -n ip -4 route show default | awk '{print $3}')"
say net-bridge "$(ip -4 -o addr show dev realms-net | awk '{print $4}')"
say net-ports "$(ip -o link show master realms-net | wc -l)"
say net-table "$(nft list tables | grep -c 'inet realms')"
say net-listed "$(realms show netbox --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["address"])')"
machinectl poweroff netbox
i=0; while [ "$(systemctl is-active realm-netbox.service)" != inactive ] && [ $i -lt 300 ]; do
    sleep 0.2; i=$((i+1)); done
say net-self-stopped "$(systemctl is-active realm-netbox.service)"
journalctl -u realm-netbox.service --no-pager -o cat | tail -5
say net-bridge-after "$(ip -o link show realms-net 2>/dev/null | wc -l)"
say net-table-after "$(nft list tables | grep -c 'inet realms')"
realms start netbox; say net-restart $?
leader=$(machinectl show netbox --property=Leader --value)
say net-address-again "$(nsenter -t "$leader" -n ip -4 -o addr show dev host0 | awk '{print $4}')"
realms stop netbox; say net-stop $?
say net-bridge-stopped "$(ip -o link show realms-net 2>/dev/null | wc -l)"
realms start nonet; say none-start $?
leader=$(machinectl show nonet --property=Leader --value)
say none-links "$(nsenter -t "$leader" -n ip -o link | awk -F': ' '{print $2}' | tr '\n' ' ')"
realms stop nonet; say none-stop $?

realms status
realms new sealedbox --appimg base; say new-sealed $?
realms run sealedbox -- cat /etc/motd; say run-sealed $?
say mapper "$(ls /dev/mapper | grep -v control | wc -l)"
realms appimg show base --json | python3 -c 'import json, sys; print(json.load(sys.stdin))' || true
realms remove sealedbox; say remove-sealed $?
say mapper-after "$(ls /dev/mapper | grep -v control | wc -l)"
umount /mnt/pool
exit 0
"""


@pytest.fixture(scope="module")
def systemd_guest(guest: Guest, tmp_path_factory: pytest.TempPathFactory) -> SystemdGuest:
    """Debian trixie with systemd as init, realms in it, on an ext4 disk image."""
    workdir = tmp_path_factory.mktemp("systemd-guest")
    try:
        root = build_root(workdir / "root", host_debian_mirror())
        image = make_ext4(root, workdir / "root.img")
        initramfs = build_initramfs(guest.kernel, workdir / "initramfs.cpio.gz")
    except VMError as error:
        pytest.fail(f"cannot prepare the systemd guest: {error}", pytrace=False)
    return SystemdGuest(guest.kernel, initramfs, image, workdir)


@pytest.fixture
def store_disk(bootable_tree: Path, tmp_path: Path) -> Iterator[Path]:
    """A btrfs image holding store ``store``: appimg base (v1 the tree, v2 sealed), realm box
    on v1, and the verity policy ``kernel``; unmounted again for the guest."""
    image = tmp_path / "store.img"
    mountpoint = tmp_path / "pool"
    try:
        make_btrfs(image, mountpoint, "2G")
        realms = Realms(mountpoint / "store")
        realms("init")
        realms("appimg", "import", "base", str(bootable_tree))
        realms("new", "box", "--appimg", "base")
        for name, settings in (
            ("netbox", 'network = "private"\nnetwork-zone = "net"\n'),
            ("nonet", 'network = "none"\n'),
        ):
            realms("new", name, "--appimg", "base")
            realm_config = realms.store / "realms" / name / "config"
            realm_config.write_text(realm_config.read_text() + settings)
        zones = '\n[zones.net]\nsubnet = "10.77.0.0/24"\n'
        # A file the sealed version has and the tree version has not.
        realms("update-appimg", "base", "--", "sh", "-c", "echo sealed-by-the-host > /etc/motd")
        realms("key", "generate", "guest")
        realms("appimg", "seal", "base", "--channel", "guest", "--fs", "ext4")
        config = realms.store / "config.toml"
        config.write_text(config.read_text() + '\nverity = "kernel"\n' + zones)
    finally:
        unmount_below(tmp_path)
    assert not loops_backed_below(tmp_path)
    yield image


def _said(output: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in output.splitlines():
        match = re.match(r"^@@ (\S+) ?(.*)$", line)
        if match:
            found[match[1]] = match[2].strip()
    return found


def test_started_realm_is_a_unit_registered_with_machined(
    systemd_guest: SystemdGuest, store_disk: Path
) -> None:
    result = systemd_guest.run(SCRIPT, [store_disk])
    said = _said(result.output)
    context = result.output[-6000:]
    assert result.status == 0, context
    assert said["pid1"] == "systemd", context

    assert said["start"] == "0", context
    assert said["active"] == "active", context
    assert said["machine"] == "box container", context
    # --keep-unit: the machine is the realm's unit itself, and the realm's init is in it.
    assert said["unit-of-machine"] == "realm-box.service", context
    assert said["leader-cgroup"].startswith("/machine.slice/realm-box.service/"), context
    assert said["leader-comm"] == "systemd", context
    assert said["start-again"] == "0", context
    assert "running already" in result.output, context
    assert said["remove"] != "0", context

    assert said["stop"] == "0", context
    assert said["after"] in ("inactive", "unknown"), context
    assert said["machines-after"] == "0", context
    assert said["stop-again"] == "0", context
    assert said["run-stopped"] == "0", context  # the run lock went with the unit

    # A private network set up by the unit (prepare, ExecStartPost= configure), released by
    # its ExecStopPost= when the realm powers off by itself, and by realms stop.
    assert said["net-start"] == "0", context
    assert said["net-address"] == "10.77.0.2/24", context
    assert said["net-listed"].split("/")[0] == "10.77.0.2", context
    assert said["net-route"] == "10.77.0.1", context
    assert said["net-bridge"] == "10.77.0.1/24", context
    assert said["net-ports"] == "1", context
    assert said["net-table"] == "1", context
    assert said["net-self-stopped"] in ("inactive", "unknown"), context
    assert said["net-bridge-after"] == "0", context
    assert said["net-table-after"] == "0", context
    assert said["net-restart"] == "0", context
    assert said["net-address-again"] == "10.77.0.2/24", context
    assert said["net-stop"] == "0", context
    assert said["net-bridge-stopped"] == "0", context
    # network = "none": nspawn's --private-network, loopback only.
    assert said["none-start"] == "0", context
    assert said["none-links"].split() == ["lo"], context
    assert said["none-stop"] == "0", context

    # The sealed version under the kernel's dm-verity.
    assert said["new-sealed"] == "0", context
    assert said["run-sealed"] == "0", context
    assert "sealed-by-the-host" in result.output, context
    assert said["mapper"] == "1", context
    assert said["remove-sealed"] == "0", context
    assert said["mapper-after"] == "0", context
