"""A root filesystem read before anything runs in it: one tree, or an overlay's layers, and what
realms reads there (the user of a uid, the default locale, whether it is an OS tree).

Every read stays inside the tree (:func:`realms.system.fs.read_in_root`): the files are the
image's, hostile until checked. Its own module so that a command that only reads a realm's
files (joining a running realm) does not load the container machinery.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from realms.errors import RealmsError
from realms.system.fs import read_in_root


class TreeView(NamedTuple):
    """A root filesystem as the container will see it, read before it runs: one tree, or an
    overlay's layers (upper first), where a file deleted in the upper layer (a whiteout) is
    gone and a file changed there hides the image's."""

    layers: Sequence[Path]

    def _layer_of(self, relative: str) -> Path | None:
        for layer in self.layers:
            try:
                info = os.lstat(layer / relative)
            except OSError:
                continue
            if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                return None  # overlayfs whiteout: deleted in the realm's layer
            return layer
        return None

    def exists(self, relative: str) -> bool:
        return self._layer_of(relative) is not None

    def is_dir(self, relative: str) -> bool:
        layer = self._layer_of(relative)
        return layer is not None and (layer / relative).is_dir()

    def read(self, relative: str, limit: int = 1 << 20) -> bytes:
        layer = self._layer_of(relative)
        if layer is None:
            raise FileNotFoundError(relative)
        return read_in_root(layer, relative, limit)


def _view(root: Path | TreeView) -> TreeView:
    return root if isinstance(root, TreeView) else TreeView([root])


def user_of_uid(rootfs: Path | TreeView, uid: int) -> str | None:
    """The name of ``uid`` in the container's /etc/passwd, read without leaving the tree."""
    try:
        text = _view(rootfs).read("etc/passwd").decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2] == str(uid):
            return fields[0]
    return None


def default_locale(rootfs: Path | TreeView) -> str | None:
    """LANG as the image sets it (/etc/default/locale or /etc/locale.conf), for commands that
    do not go through a login (which would read it with PAM)."""
    for relative in ("etc/default/locale", "etc/locale.conf"):
        try:
            text = _view(rootfs).read(relative, limit=4096).decode(errors="replace")
        except OSError:
            continue
        match = re.search(r"^\s*LANG=\"?([A-Za-z0-9_.@-]+)\"?\s*$", text, re.MULTILINE)
        if match:
            return match[1]
    return None


def check_os_tree(rootfs: Path | TreeView, what: str) -> None:
    """nspawn refuses trees without /usr and os-release; say so before it does."""
    view = _view(rootfs)
    has_release = any(view.exists(p) for p in ("etc/os-release", "usr/lib/os-release"))
    if not view.is_dir("usr") or not has_release:
        raise RealmsError(
            f"{what} does not look like an OS tree (it needs /usr and /etc/os-release or "
            "/usr/lib/os-release)",
            hint="import a complete root filesystem",
        )
