"""Images sealed by ``realms appimg seal`` (ext4 and erofs), exported with ``realms appimg
export``, opened by the real kernel's dm-verity in QEMU exactly as Citadel opened RealmFS
images: the root hash and hash offset from the signed header, the salt from the superblock."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from realms.image.header import parse_header
from tests.helpers import Realms, run
from tests.system.kernel.vm import Guest

B = 4096


@pytest.fixture(scope="module")
def sealing_store(
    btrfs_pool: Path, busybox_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> Realms:
    store = btrfs_pool / "sealing-kernel"
    store.mkdir()
    realms = Realms(store)
    realms("init")
    tree = tmp_path_factory.mktemp("tree") / "root"
    run("cp", "-a", f"{busybox_tree}/.", f"{tree}/")
    (tree / "etc/motd").write_text("sealed by realms " + "x" * 64 + "\n")
    (tree / "blob").write_bytes(os.urandom(300_000))
    realms("appimg", "import", "sealme", str(tree))
    realms("key", "generate", "kernel-test")
    return realms


def _script(image: Path, fstype: str, *commands: str) -> str:
    with image.open("rb") as handle:
        meta = parse_header(handle.read(B)).metainfo
    assert meta.nblocks and meta.verity_root
    return (
        "\n".join(
            [
                "dev=$(losetup -f)",
                'losetup -o 4096 -r "$dev" /dev/vda || exit 10',
                f'veritysetup open "$dev" realm "$dev" {meta.verity_root.hex()} '
                f"--hash-offset={meta.nblocks * B} || exit 11",
                f"mount -t {fstype} -o ro /dev/mapper/realm /mnt || exit 12",
                "echo '@@ mounted'",
                *commands,
                "dmesg | grep -i verity",
                "exit 0",
            ]
        )
        + "\n"
    )


@pytest.mark.parametrize("fstype", ["ext4", "erofs"])
def test_realms_sealed_image_in_the_kernel(
    guest: Guest, sealing_store: Realms, tmp_path: Path, fstype: str
) -> None:
    realms = sealing_store
    realms("appimg", "rollback", "sealme", "1", check=False)
    realms("appimg", "seal", "sealme", "--channel", "kernel-test", "--fs", fstype)
    assert realms.json("appimg", "verify", "sealme")["ok"] is True
    image = tmp_path / f"sealme-{fstype}.img"
    realms("appimg", "export", "sealme", str(image))

    good = guest.run(_script(image, fstype, "cat /mnt/etc/motd", "wc -c < /mnt/blob"), [image])
    assert good.status == 0, good.console
    assert "sealed by realms" in good.output
    assert "300000" in good.output
    assert "corrupted" not in good.output

    # One byte of the data changed in the image: the kernel refuses to read that block. In
    # ext4 it is a byte of /etc/motd; erofs packs its files tightly, so the middle data block
    # belongs to some file, and the guest reads them all.
    damaged = tmp_path / f"damaged-{fstype}.img"
    shutil.copyfile(image, damaged)
    if fstype == "ext4":
        offset = damaged.read_bytes().find(b"sealed by realms")
    else:
        offset = _middle_of_data(damaged)
    assert offset > B
    with damaged.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x01]))
    error = realms.fails("appimg", "import", "damaged", str(damaged))
    assert "verity" in error and "data block" in error
    bad = guest.run(
        _script(
            damaged,
            fstype,
            "find /mnt -type f -exec cat {} + > /dev/null",
            'echo "@@ read status $?"',
        ),
        [damaged],
    )
    assert "Input/output error" in bad.output or "@@ read status 1" in bad.output, bad.console
    assert "is corrupted" in bad.output, bad.console


def _middle_of_data(image: Path) -> int:
    """An offset in the middle block of the image's data."""
    with image.open("rb") as handle:
        meta = parse_header(handle.read(B)).metainfo
    assert meta.nblocks
    return B + (meta.nblocks // 2) * B + 100
