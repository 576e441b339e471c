"""What makes two builds of the same config against the same archive state give the same tree.

The model, after reproducible-builds.org and mmdebstrap:

1. **One date.** ``SOURCE_DATE_EPOCH`` is the date of the archive state the build reads (the
   newest ``Date`` of its Release files, :attr:`realms.builder.archive.ArchiveState.date`), or
   the user's: the environment variable ``SOURCE_DATE_EPOCH`` when realms runs. The
   bootstrapper and every step inside the image get it in their environment (mmdebstrap, dpkg,
   useradd and others use it instead of the clock).
2. **No per-build files.** What a build writes that depends on when or where it ran is removed
   or made constant by :func:`cleanup_script`, inside the image at the end: logs, apt's lists
   and caches, ldconfig's aux-cache, the machine id (an empty ``/etc/machine-id``: systemd fills
   it at the first boot), D-Bus's machine id, ssh host keys, the last-change day of
   ``/etc/shadow`` (the epoch's day), compiled Python (``__pycache__``), dpkg's and debconf's
   ``-old`` files, man-db's index, and the time in systemd-update-done's stamps (``/usr``'s,
   which the clamp makes the epoch). It runs in the container, so that a link planted in the
   image by a package points inside the image, never at the host.
3. **No time newer than the epoch.** :func:`clamp_mtimes` sets every modification time later
   than the epoch to the epoch, from the host, after the last step: the tree is walked with
   directory descriptors and nothing is followed (``utimensat`` with ``AT_SYMLINK_NOFOLLOW``):
   a symlink in the image is the symlink's own time, never the file it names.

Files from packages keep their packaged times (older than the epoch), so an image still says
when each file was made upstream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from realms.errors import InvalidInput

ENVIRONMENT = "SOURCE_DATE_EPOCH"
MAX_EPOCH = 253402300799
"""9999-12-31 23:59:59 UTC: later dates are typing mistakes (and overflow some tools)."""


@dataclass(frozen=True)
class Epoch:
    seconds: int
    source: str
    """Where it came from, for the log: "the archive's Release date" or "SOURCE_DATE_EPOCH"."""

    @property
    def user_set(self) -> bool:
        return self.source == ENVIRONMENT

    def environment(self) -> dict[str, str]:
        return {ENVIRONMENT: str(self.seconds)}


def parse_epoch(text: str, where: str = ENVIRONMENT) -> int:
    """A ``SOURCE_DATE_EPOCH`` value: whole seconds since 1970, as reproducible-builds.org
    defines it (decimal digits only)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or int(text) > MAX_EPOCH:
        raise InvalidInput(
            f"{where}: expected whole seconds since 1970 (like 1764547200), got {text[:40]!r}"
        )
    return int(text)


def source_date_epoch(archive_date: datetime | None) -> Epoch | None:
    """The build's epoch: the user's ``SOURCE_DATE_EPOCH``, or else the archive's date; None
    when neither is known (then nothing is clamped)."""
    given = os.environ.get(ENVIRONMENT)
    if given is not None and given != "":
        return Epoch(parse_epoch(given), ENVIRONMENT)
    if archive_date is None:
        return None
    return Epoch(int(archive_date.timestamp()), "the archive's Release date")


# Run with /bin/sh inside the image, SOURCE_DATE_EPOCH in its environment, after apt's last run.
_CLEANUP = r"""
apt-get clean
rm -rf /var/lib/apt/lists/*
# Logs: those with anything in them (apt, dpkg, alternatives, the bootstrap's); the empty ones
# packages make on purpose (wtmp, btmp, lastlog) stay.
find /var/log -xdev -type f -size +0 -delete
rm -f /var/cache/ldconfig/aux-cache /var/lib/dpkg/*-old /var/cache/debconf/*-old
rm -rf /var/cache/man/* /var/tmp/*
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
# The machine id: empty, so that systemd makes one at the first boot; D-Bus's copy goes (a
# link to /etc/machine-id stays).
if [ -f /etc/machine-id ]; then : > /etc/machine-id; fi
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
    rm -f /var/lib/dbus/machine-id
fi
# Compiled Python holds its compiler's choices; Python writes it again where it may.
find / -xdev -type d -name __pycache__ -prune -exec rm -rf {} +
# systemd-update-done's stamps hold /usr's time, which the clamp makes the epoch's: so must they
# (else the first boot would redo the updates the build did, and each build differ).
for file in /etc/.updated /var/.updated; do
    [ -n "${SOURCE_DATE_EPOCH:-}" ] && [ -f "$file" ] && [ ! -L "$file" ] || continue
    sed -i "s/^TIMESTAMP_NSEC=.*/TIMESTAMP_NSEC=${SOURCE_DATE_EPOCH}000000000/" "$file"
done
# The day of the last password change: the epoch's, for every account that has one.
day=$((${SOURCE_DATE_EPOCH:-0} / 86400))
for file in /etc/shadow /etc/shadow-; do
    [ -n "${SOURCE_DATE_EPOCH:-}" ] || break
    [ -f "$file" ] && [ ! -L "$file" ] || continue
    awk -F: -v OFS=: -v day="$day" '$3 != "" { $3 = day } { print }' "$file" > "$file.realms"
    cat "$file.realms" > "$file"
    rm -f "$file.realms"
done
"""


def cleanup_script() -> str:
    """The script that removes or makes constant the per-build files (see the module's doc)."""
    return "set -eu\n" + _CLEANUP.lstrip("\n")


def clamp_mtimes(tree: Path, epoch: int) -> int:
    """Set every modification (and access) time in ``tree`` later than ``epoch`` to ``epoch``,
    following no symlink; return how many were changed."""
    changed = 0
    root = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(root).st_mtime > epoch:
            os.utime(root, (epoch, epoch))
            changed += 1
    finally:
        os.close(root)
    # fwalk opens each directory relative to its parent's descriptor and checks that it is the
    # directory it listed: a tree that changed under it is never left for a path elsewhere.
    for _path, directories, files, fd in os.fwalk(tree, follow_symlinks=False):
        for name in (*directories, *files):
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if info.st_mtime > epoch:
                os.utime(name, (epoch, epoch), dir_fd=fd, follow_symlinks=False)
                changed += 1
    return changed
