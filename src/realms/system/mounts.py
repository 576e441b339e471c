"""What is mounted where (from /proc/self/mountinfo), and mounting a filesystem image file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from realms.system.run import run


@dataclass(frozen=True)
class Mount:
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


def mount_image(image: Path, target: Path, options: str = "") -> None:
    """Mount a filesystem image file through a loop device that is freed on unmount."""
    all_options = "loop" + (f",{options}" if options else "")
    run(["mount", "-o", all_options, image, target])


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
