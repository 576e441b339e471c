"""A QEMU guest where systemd is PID 1: Debian trixie booted from an ext4 disk, running realms.

:mod:`tests.system.kernel.vm` boots a busybox initramfs and runs a script in it; this module
boots a whole system instead, from the same kernel (:func:`~tests.system.kernel.vm.fetch_kernel`)
and the same pieces (its cpio writer, module resolution and QEMU wrapper conventions):

- :func:`build_root` makes the guest's root filesystem with mmdebstrap from the host's Debian
  mirror: systemd as init, machined (systemd-container), D-Bus, Python 3 with realms' own
  dependencies from Debian, btrfs-progs and cryptsetup; realms' source is copied into Python's
  path (and compiled there, or every command would compile it again under emulation), and a
  oneshot unit, the only thing the boot target asks for, runs the test's script between the
  markers of :mod:`~tests.system.kernel.vm` with its output on the serial console, then powers
  off. No login prompt, no network.
- :func:`make_ext4` packs a tree into an ext4 image (``mkfs.ext4 -d``, no mount needed).
- :class:`SystemdGuest` boots that image as ``/dev/vda`` (read-write) with further writable
  disks (``/dev/vdb``, ...): a small initramfs (busybox) loads the kernel modules the guest
  needs (virtio disks, ext4, btrfs, loop, overlayfs, dm-verity, erofs; Debian builds them as
  modules and the root has none of its own), copies the test's script into the root, and
  switches to it, with systemd as PID 1.

Under QEMU's software emulation the boot to the script takes about 10-20 s, and each realms
command a second or two more than on the host.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from tests.system.kernel.vm import (
    BEGIN,
    END,
    Cpio,
    GuestRun,
    Kernel,
    VMError,
    _module_bytes,
    _run,
    module_load_order,
    require_qemu,
    run_guest,
)

SOURCE = Path(__file__).resolve().parents[3] / "src/realms"
ROOT_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "systemd-container",
    "dbus",
    "python3",
    "python3-requests",
    "python3-rich",
    "python3-cryptography",
    "python3-tomli-w",
    "btrfs-progs",
    "util-linux",
    "iproute2",
    "nftables",
    "cryptsetup-bin",
    "e2fsprogs",
)
# What the guest loads before systemd starts: its root disk and filesystem, and what realms
# uses (a btrfs store on a loop device or a disk, overlay realms, sealed images under dm-verity).
ROOT_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "ext4",
    "crc32c_generic",
    "btrfs",
    "loop",
    "overlay",
    "dm-verity",
    "erofs",
    # Private networks (realms.network): veth, bridge, and what the zone rules use.
    "veth",
    "bridge",
    "nf_tables",
    "nft_ct",
    "nft_reject_inet",
    "nft_masq",
    "nft_chain_nat",
)
SCRIPT = "/usr/local/sbin/realms-guest-test"
TARGET = "realms-guest.target"
TARGET_UNIT = """[Unit]
Description=realms guest test
Requires=basic.target realms-guest-test.service
After=basic.target realms-guest-test.service
AllowIsolate=yes
"""
# The script's output goes to the serial console between the markers; its end, whatever it
# is, powers the guest off (QEMU runs with -no-reboot and exits then).
TEST_UNIT = f"""[Unit]
Description=realms guest test script
After=basic.target dbus.socket
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo {BEGIN}; sh {SCRIPT}; echo "{END} $?"'
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
"""
REALMS_COMMAND = """#!/usr/bin/python3
import sys

from realms.cli import run

sys.exit(run())
"""
INIT = """#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
dmesg -n 1
while read -r module; do
    insmod "/lib/modules/$module" || echo "guest: insmod $module failed"
done < /etc/modules.load
i=0; while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || { echo "guest: cannot mount /dev/vda"; poweroff -f; }
cp /test.sh /newroot@SCRIPT@
chmod 0755 /newroot@SCRIPT@
umount /proc /sys /dev
exec switch_root /newroot /sbin/init
"""


def build_root(target: Path, mirror: str, source: Path = SOURCE) -> Path:
    """The guest's root filesystem in directory ``target`` (made by mmdebstrap), with realms
    from ``source`` (its package directory)."""
    _run(
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        f"--include={','.join(ROOT_PACKAGES)}",
        '--customize-hook=chroot "$1" useradd --create-home --uid 1000 --user-group user',
        '--customize-hook=chroot "$1" systemctl mask console-getty.service getty.target '
        "serial-getty@ttyS0.service systemd-firstboot.service",
        "trixie",
        target,
        mirror,
    )
    units = target / "etc/systemd/system"
    (units / TARGET).write_text(TARGET_UNIT)
    (units / "realms-guest-test.service").write_text(TEST_UNIT)
    (target / "etc/hostname").write_text("realms-guest\n")
    install_realms(target, source)
    return target


def install_realms(target: Path, source: Path = SOURCE) -> None:
    """Copy realms into the guest's Python path (Debian's python3 runs it) and compile it."""
    packages = target / "usr/lib/python3/dist-packages/realms"
    shutil.rmtree(packages, ignore_errors=True)
    shutil.copytree(source, packages, ignore=shutil.ignore_patterns("__pycache__"))
    command = target / "usr/local/bin/realms"
    command.write_text(REALMS_COMMAND)
    command.chmod(0o755)
    _run(
        "chroot",
        target,
        "python3",
        "-m",
        "compileall",
        "-q",
        "/usr/lib/python3/dist-packages/realms",
    )


def make_ext4(tree: Path, image: Path, size: str = "1G") -> Path:
    """An ext4 image of ``tree`` (sparse, ``size`` large)."""
    _run("truncate", "-s", size, image)
    _run("mkfs.ext4", "-q", "-F", "-L", "realms-guest", "-d", tree, image)
    return image


def build_initramfs(kernel: Kernel, target: Path) -> Path:
    """A busybox initramfs that loads :data:`ROOT_MODULES` and switches to ``/dev/vda``."""
    busybox = shutil.which("busybox")
    if not busybox:
        raise VMError("busybox is not installed (Debian: apt-get install busybox-static)")
    archive = Cpio()
    for directory in ("dev", "proc", "sys", "run", "tmp", "etc", "newroot"):
        archive.directory(directory)
    archive.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    for applet in _run(busybox, "--list-full").split():
        archive.symlink(applet, "/bin/busybox")
    archive.file("init", INIT.replace("@SCRIPT@", SCRIPT).encode(), 0o755)
    loaded = []
    for relative in module_load_order(kernel.modules, ROOT_MODULES):
        name = re.sub(r"\.ko\.(xz|gz|zst)$", ".ko", relative)
        archive.file(f"lib/modules/{name}", _module_bytes(kernel.modules / relative))
        loaded.append(name)
    archive.file("etc/modules.load", "".join(f"{name}\n" for name in loaded).encode())
    target.write_bytes(gzip.compress(archive.finish(), compresslevel=6, mtime=0))
    return target


class SystemdGuest:
    """The kernel, the initramfs and the root image, booted afresh for each script."""

    def __init__(self, kernel: Kernel, initramfs: Path, root: Path, workdir: Path) -> None:
        self.qemu = require_qemu()
        self.kernel = kernel
        self.initramfs = initramfs
        self.root = root
        self.workdir = workdir
        self.runs = 0

    def run(
        self, script: str, drives: Sequence[Path] = (), timeout: float = 600, memory: int = 1536
    ) -> GuestRun:
        """Boot with systemd as PID 1, run ``script`` with ``sh`` from a oneshot unit (the
        drives are /dev/vdb, ... read-write), power off; VMError with the console's tail when
        the script does not finish. The root image keeps what the script changed in it."""
        self.runs += 1
        initrd = self.workdir / f"initrd-systemd-{self.runs}.img"
        base = self.initramfs.read_bytes()
        extra = Cpio()
        extra.file("test.sh", script.encode(), 0o755)
        initrd.write_bytes(base + bytes(-len(base) % 512) + extra.finish())
        append = (
            f"console=ttyS0 panic=-1 quiet systemd.show_status=false systemd.unit={TARGET} "
            "root=/dev/vda rw"
        )
        argv = [self.qemu, "-accel", "tcg", "-smp", str(min(2, os.cpu_count() or 1))]
        argv += ["-m", str(memory), "-nodefaults", "-display", "none", "-serial", "stdio"]
        argv += ["-no-reboot", "-kernel", str(self.kernel.vmlinuz), "-initrd", str(initrd)]
        argv += ["-append", append]
        for drive in (self.root, *drives):
            argv += ["-drive", f"file={drive},format=raw,if=virtio"]
        return run_guest(argv, initrd, timeout, tail=80)
