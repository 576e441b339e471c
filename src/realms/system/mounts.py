"""What is mounted where (from /proc/self/mountinfo), and mounting a filesystem image file.

Every filesystem realms mounts on the host from a file (the store's pool, an image's activation)
is mounted ``nosuid,nodev`` (:data:`SAFE_OPTIONS`): a setuid binary or a device node that came
from a tarball, an image or a realm's root never means anything on the host, even if the store's
permissions were wrong. Containers still get setuid inside: :mod:`realms.container` binds a
tree realm's root onto itself with ``suid``, in a mount namespace only the container sees, and
an image realm's overlay is a mount of its own (without ``nosuid``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

from realms.system.run import run


class Mount(NamedTuple):
    target: Path
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def mounts() -> list[Mount]:
    """Every mount visible to this process, in mount order."""
    result = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            result.append(
                Mount(
                    target=Path(_unescape(fields[4])),
                    fstype=fields[separator + 1],
                    source=_unescape(fields[separator + 2]),
                    options=fields[5],
                )
            )
    return result


def mount_of(path: Path) -> Mount:
    """The mount that holds ``path`` (the last-mounted one on the deepest matching target)."""
    real = Path(os.path.realpath(path))
    best: Mount | None = None
    for mount in mounts():
        holds = real == mount.target or mount.target in real.parents
        if holds and (best is None or len(mount.target.parts) >= len(best.target.parts)):
            best = mount
    assert best is not None, "/ is always mounted"
    return best


def is_mountpoint(path: Path) -> bool:
    real = Path(os.path.realpath(path))
    return any(mount.target == real for mount in mounts())


def loop_backing_file(device: str) -> Path | None:
    """The file behind a loop device such as /dev/loop3, if it is one."""
    name = Path(device).name
    backing = Path("/sys/block") / name / "loop" / "backing_file"
    try:
        return Path(backing.read_text().strip())
    except OSError:
        return None


def in_own_mount_namespace(script: str, *arguments: str | Path) -> list[str]:
    """The command line that runs the shell ``script`` (its arguments as $1, $2, ...) in a
    mount namespace of its own: whatever it mounts is private to it and goes when it ends,
    even if it is killed. The script may end by exec'ing the program that needs the mounts."""
    return [
        "unshare",
        "--mount",
        "--propagation=private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        *map(str, arguments),
    ]


def _loop_backings() -> list[tuple[str, str]]:
    """(device, backing file) of every attached loop device; a backing file that was deleted
    keeps its name (sysfs adds " (deleted)")."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().rstrip("\n").removesuffix(" (deleted)")
        except OSError:
            continue  # detached meanwhile
        found.append((f"/dev/{backing.parent.parent.name}", name))
    return found


def loops_backed_by(image: Path) -> list[str]:
    """The loop devices whose backing file is ``image``."""
    real = os.path.realpath(image)
    return [device for device, name in _loop_backings() if name == real]


def loops_backed_below(directory: Path) -> list[str]:
    """The loop devices whose backing file is below ``directory``."""
    prefix = os.path.realpath(directory).rstrip("/") + "/"
    return [device for device, name in _loop_backings() if name.startswith(prefix)]


def wait_until_detached(image: Path, timeout: float = 10.0) -> bool:
    """Wait until no loop device is backed by ``image`` (an unmounted loop mount's device is
    detached asynchronously); return whether none is."""
    deadline = time.monotonic() + timeout
    while loops_backed_by(image):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


SAFE_OPTIONS = ("nosuid", "nodev")


def has_safe_options(mount: Mount) -> bool:
    return set(SAFE_OPTIONS) <= set(mount.options.split(","))


def mount_image(image: Path, target: Path, options: str = "") -> None:
    """Mount a filesystem image file through a loop device that is freed on unmount; always
    ``nosuid,nodev``."""
    all_options = ",".join(["loop", *SAFE_OPTIONS, *([options] if options else [])])
    run(["mount", "-o", all_options, image, target])


def make_safe(target: Path) -> None:
    """Add ``nosuid,nodev`` to the mount at ``target`` (one made by an older realms without)."""
    run(["mount", "-o", "remount," + ",".join(SAFE_OPTIONS), target])


def unmount(target: Path) -> None:
    run(["umount", target])


def mounted_below(directory: Path) -> list[Path]:
    """Mount points at or below ``directory``, deepest first."""
    real = Path(os.path.realpath(directory))
    found = {m.target for m in mounts() if m.target == real or real in m.target.parents}
    return sorted(found, key=lambda target: len(target.parts), reverse=True)


def unmount_below(directory: Path) -> None:
    """Unmount everything mounted at or below ``directory`` (a tree realms made and owns, such
    as a build root a killed bootstrapper left with /proc mounted in it)."""
    for target in mounted_below(directory):
        if run(["umount", target], check=False).returncode != 0:
            run(["umount", "--lazy", target], check=False)
