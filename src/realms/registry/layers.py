"""Applying OCI image layers to a tree: the entry checks of a tarball import, plus whiteouts.

:func:`apply_layer` applies one uncompressed layer (:func:`open_layer` decompresses it by its
media type) onto a tree that holds the layers below it (nothing, for the first). The layer goes
through the one parser and its checks (:func:`realms.appimg.tarcheck.rewrite`) into GNU tar
(:func:`realms.appimg.tarball.extractor`), as an archive import does; the checker here also
knows the tree on disk, so that the layers below are as hostile as this one:

- Nothing is written, linked or deleted through a symbolic link, the layer's own or one of a
  layer below (``evil -> /etc`` below, ``evil/passwd`` or ``evil/.wh.passwd`` here). Where this
  layer has written nothing yet, the tree on disk says what a path is (``lstat``, one per new
  path); where it has, the layer's own entries say (tar may not have got there yet).
- A hard link may point to a file of this layer or a file of the layers below.
- ``DIR/.wh.NAME`` deletes NAME, ``DIR/.wh..wh..opq`` every child of DIR, from the layers below
  only: what this layer wrote there (before or after the marker) stays, as in umoci. Other
  ``.wh.`` names, a whiteout of ``.`` or ``..``, and ``.wh.`` directories are refused. The
  directory a deletion changed gets its times back, as umoci does.
- An entry that is not a directory replaces a directory of the layers below, and any entry a
  symbolic link of the layers below: those are deleted first, so that nothing depends on how
  tar replaces them. Tar replaces the rest itself (it unlinks, never writes through).

Deletions walk the tree by file descriptors, each directory opened with ``O_NOFOLLOW`` and
each name removed relative to its directory's descriptor, so no deletion can leave the tree.
They run while tar extracts the entries before them: tar only ever touches the paths this
layer has written (and their parents), which a deletion keeps. Only two cases wait for tar to
finish first (end its stream, wait, start another one for the rest): a deletion of a file of
the layers below that a pending hard link points to, and a directory of this layer replaced
by a file; the directories of the layer get their times again after the last one. Memory
holds the sets of paths this layer wrote, nothing of the data.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from realms.appimg.compression import CHUNK, piped_through
from realms.appimg.tarball import extractor, warn_devices
from realms.appimg.tarcheck import (
    BLOCKSIZE,
    Checker,
    Refused,
    normal,
    rewrite,
    shown,
    through_symlink,
)
from realms.errors import InvalidInput, RealmsError

LAYER_COMPRESSIONS = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
"""The layer media types :func:`open_layer` reads, and their compression."""

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
# A layer's entries of one directory need not be together (a file of a directory may come
# after another directory's entries): its times and mode are set when tar ends, not when tar
# leaves it, or the later entries would change its time again.
_OPTIONS = ("--delay-directory-restore",)
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class LayerSummary:
    entries: int
    """Entries written (whiteouts and device nodes are not)."""
    size: int
    """Total size of the regular files written, in bytes."""
    devices: int
    """Device nodes skipped (one warning line says so)."""
    whiteouts: int
    """Whiteout and opaque markers applied."""
    extractions: int
    """GNU tar processes run (one, unless a deletion had to wait for tar; none when empty)."""


_DECOMPRESS = {
    "gzip": lambda: ["pigz" if shutil.which("pigz") else "gzip", "--decompress", "--stdout"],
    "zstd": lambda: ["zstd", "--decompress", "--stdout", "--quiet"],
}


@contextmanager
def open_layer(stream: IO[bytes], media_type: str, name: str = "layer") -> Iterator[IO[bytes]]:
    """The uncompressed tar stream of a layer blob of ``media_type``; InvalidInput for another
    media type, or (when the block ends) for compressed data that is damaged."""
    compression = LAYER_COMPRESSIONS.get(media_type)
    if compression is None:
        raise InvalidInput(
            f"{name}: a layer of media type {shown(media_type)} cannot be applied",
            hint="layers are tar archives, uncompressed, gzip or zstd (OCI or Docker v2)",
        )
    if compression in ("gzip", "zstd"):
        # Another process decompresses, on the other core, while this one checks the entries.
        try:
            with piped_through(_DECOMPRESS[compression](), stream) as out:
                yield out
        except tarfile.ReadError as error:  # the tool failed: the data is damaged
            raise InvalidInput(f"{name}: not a valid {compression} layer ({error})") from None
    else:
        yield stream


class _Tree:
    """The tree on disk, reached without following symbolic links."""

    def __init__(self, root: Path) -> None:
        self.fd = os.open(root, _DIRECTORY_FLAGS)
        with os.scandir(self.fd) as entries:
            self.empty = next(entries, None) is None

    def close(self) -> None:
        os.close(self.fd)

    def lstat(self, path: str) -> int | None:
        """The mode of ``path`` (not followed), None if it is not there. Only asked for a path
        whose parents are known to be real directories (or absent)."""
        try:
            return os.stat(path, dir_fd=self.fd, follow_symlinks=False).st_mode
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise Refused(path, f"cannot be looked up in the tree ({error.strerror})") from None

    def open_directory(self, path: str) -> int | None:
        """A descriptor of the directory ``path`` reached through real directories only; None
        when a component is missing or not a directory, Refused when one is a symbolic link."""
        fd = os.dup(self.fd)
        try:
            for part in path.split("/") if path else []:
                mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    raise Refused(path, f"would delete through the symbolic link {part!r}")
                if not stat.S_ISDIR(mode):
                    return None
                opened = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = opened
            found, fd = fd, -1
            return found
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            if fd >= 0:
                os.close(fd)

    def remove(self, path: str, keep: set[str], children_only: bool) -> bool:
        """Delete ``path`` (its children only, for an opaque directory) and everything below
        it that is not in ``keep``; the directory whose entries changed keeps its times.
        Whether anything was deleted."""
        parent, _, name = path.rpartition("/")
        fd = self.open_directory(path if children_only else parent)
        if fd is None:
            return False
        try:
            times = os.stat(fd)
            if children_only:
                changed = self._prune(fd, path, keep)
            elif path not in keep:
                changed = self._unlink(fd, name)
            else:
                inner = self.open_directory(path)
                changed = False
                if inner is not None:
                    try:
                        self._prune(inner, path, keep)
                    finally:
                        os.close(inner)
            if changed:
                os.utime(fd, ns=(times.st_atime_ns, times.st_mtime_ns))
            return changed
        finally:
            os.close(fd)

    def set_mtime(self, path: str, mtime: float) -> None:
        """Set the modification time of the directory ``path`` (if it still is one)."""
        try:
            fd = self.open_directory(path)
        except Refused:
            return
        if fd is not None:
            try:
                os.utime(fd, ns=(os.stat(fd).st_atime_ns, round(mtime * 1_000_000_000)))
            finally:
                os.close(fd)

    def _unlink(self, fd: int, name: str) -> bool:
        """Delete ``name`` of the directory ``fd``, a whole tree if it is a directory."""
        try:
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(mode):
            inner = os.open(name, _DIRECTORY_FLAGS, dir_fd=fd)
            try:
                self._prune(inner, name, set(), everything=True)
            finally:
                os.close(inner)
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)
        return True

    @staticmethod
    def _prune(top: int, path: str, keep: set[str], everything: bool = False) -> bool:
        """Delete what is below the directory ``top`` (at ``path``) and not in ``keep`` (all of
        it, with ``everything``); whether anything was deleted. Depth first, holding one
        descriptor and climbing back through "..": no depth of a crafted tree runs out of
        Python's stack or of descriptors (shutil.rmtree would, past a thousand levels)."""
        changed = False
        fd = os.dup(top)
        # A frame per directory on the way down: its path, whether it goes once it is empty,
        # and its subdirectories still to visit (each with whether it goes).
        frames: list[tuple[str, bool, list[tuple[str, bool]]]] = []
        prefix, gone = path, everything
        try:
            while True:
                visit: list[tuple[str, bool]] = []
                with os.scandir(fd) as scan:
                    children = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan]
                for child, is_directory in children:
                    doomed = gone or (f"{prefix}/{child}" if prefix else child) not in keep
                    if is_directory:
                        visit.append((child, doomed))
                    elif doomed:
                        os.unlink(child, dir_fd=fd)
                        changed = True
                frames.append((prefix, gone, visit))
                while True:
                    prefix, gone, visit = frames[-1]
                    if visit:
                        child, doomed = visit.pop()
                        opened = os.open(child, _DIRECTORY_FLAGS, dir_fd=fd)
                        os.close(fd)
                        fd = opened
                        prefix, gone = (f"{prefix}/{child}" if prefix else child), doomed
                        break
                    frames.pop()
                    if not frames:
                        return changed
                    opened = os.open("..", _DIRECTORY_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = opened
                    if gone:
                        os.rmdir(prefix.rpartition("/")[2], dir_fd=fd)
                        changed = True
        finally:
            os.close(fd)


class _Tar:
    """The sink of the checked stream: a running ``tar --extract`` into the tree, started at
    the first entry and again after :meth:`end` when more entries come."""

    def __init__(self, tree: Path, what: str) -> None:
        self._tree = tree
        self._what = what
        self._stack: ExitStack | None = None
        self._stdin: IO[bytes] | None = None
        self.runs = 0

    def write(self, data: bytes, /) -> int:
        if self._stdin is None:
            if not data.strip(b"\0"):
                return len(data)  # the end of the archive, and no entry since the last tar
            stack = ExitStack()
            self._stdin = stack.enter_context(extractor(self._tree, self._what, _OPTIONS))
            self._stack = stack
            self.runs += 1
        return self._stdin.write(data)

    def end(self, error: BaseException | None = None, *, ended: bool = False) -> None:
        """Let tar finish what it was sent (or, after ``error``, stop it) and wait for it;
        ``ended``: the stream written so far ends with the end-of-archive marker."""
        stack, stdin = self._stack, self._stdin
        self._stack = self._stdin = None
        if stack is None or stdin is None:
            return
        if error is not None:
            stack.__exit__(type(error), error, error.__traceback__)
            return
        if not ended:
            with contextlib.suppress(BrokenPipeError):  # tar stopped: closing says why
                stdin.write(bytes(2 * BLOCKSIZE))
        stack.close()


class _LayerChecker(Checker):
    """The archive checks, knowing the tree of the layers below (see the module docstring)."""

    def __init__(self, tree: _Tree, tar: _Tar, name: str) -> None:
        super().__init__()
        self._tree = tree
        self._tar = tar
        self._name = name
        self.upper: set[str] = {""}
        """Every path this layer wrote, and their parents."""
        self._linked: set[str] = set()
        """Files of the layers below that hard links sent to the running tar point to."""
        self.whiteouts = 0
        self._directory_times: dict[str, float] = {}
        """The times of this layer's directories, set again when more than one tar ran."""

    def check(self, member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        path = normal(member.name)
        parts = path.split("/")
        if parts[-1].startswith(WHITEOUT):
            self.read += 1
            self._whiteout(member, path)
            return None
        if any(part.startswith(WHITEOUT) for part in parts[:-1]):
            self.read += 1
            raise Refused(member.name, "a whiteout name as a directory")
        was_directory = path in self.upper and path not in self.files
        entry = super().check(member)
        if entry is None:
            return None
        is_directory = entry.type == tarfile.DIRTYPE
        if is_directory:
            self._directory_times[path] = entry.mtime
        if was_directory and not is_directory:
            # This layer's own directory, whose entries tar may still be writing.
            self._end_tar()
            self._delete(path, set(), children_only=False)
            self._forget_below(path)
        elif not self._tree.empty and path not in self.upper:
            mode = self._tree.lstat(path)
            # A symbolic link below goes before anything takes its name: what comes after
            # this entry may be written below that name, and must not depend on tar
            # having replaced the link.
            if mode is not None and (
                (stat.S_ISDIR(mode) and not is_directory) or stat.S_ISLNK(mode)
            ):
                self._delete(path, set(), children_only=False)
        while path not in self.upper:
            self.upper.add(path)
            path = path.rpartition("/")[0]
        return entry

    def via_symlink(self, path: str) -> str | None:
        via = through_symlink(path, self.symlinks)
        parent = path.rpartition("/")[0]
        if via is not None or self._tree.empty or parent in self.upper:
            return via  # the parents are this layer's (``upper`` holds every parent)
        start = 0
        while (end := path.find("/", start)) >= 0:
            prefix, start = path[:end], end + 1
            if prefix in self.upper:
                continue
            mode = self._tree.lstat(prefix)
            if mode is None or not stat.S_ISDIR(mode):
                return prefix if mode is not None and stat.S_ISLNK(mode) else None
        return None

    def check_link(self, member: tarfile.TarInfo, path: str, target: str) -> None:
        if self._tree.empty or target in self.upper:
            super().check_link(member, path, target)
            return
        via = self.via_symlink(target)
        if via is not None:
            raise Refused(member.name, f"hard link through the symbolic link {via!r}")
        mode = self._tree.lstat(target)
        if mode is None or stat.S_ISDIR(mode):
            raise Refused(
                member.name,
                f"hard link to {shown(member.linkname)}, which is neither earlier in the layer "
                "nor a file of the layers below",
            )
        if stat.S_ISLNK(mode):
            self.symlinks.add(path)
        self._linked.add(target)

    def _whiteout(self, member: tarfile.TarInfo, path: str) -> None:
        parent, _, base = path.rpartition("/")
        via = self.via_symlink(path)
        if via is not None:
            raise Refused(member.name, f"a whiteout through the symbolic link {via!r}")
        if base == OPAQUE:
            target, children_only = parent, True
        elif base.startswith(WHITEOUT + WHITEOUT):
            raise Refused(member.name, "an unknown kind of whiteout")
        else:
            deleted = base[len(WHITEOUT) :]
            if deleted in ("", ".", ".."):
                raise Refused(member.name, f"a whiteout of {deleted!r}")
            target, children_only = f"{parent}/{deleted}" if parent else deleted, False
        self.whiteouts += 1
        if not self._tree.empty:
            self._delete(target, self.upper, children_only)

    def _delete(self, path: str, keep: set[str], children_only: bool) -> None:
        if any(not path or t == path or t.startswith(path + "/") for t in self._linked):
            self._end_tar()  # a pending hard link points into what goes
        try:
            self._tree.remove(path, keep, children_only)
        except OSError as error:
            raise RealmsError(
                f"{self._name}: deleting {shown(path)} failed: {error.strerror}"
            ) from None

    def _end_tar(self) -> None:
        self._tar.end()
        self._linked.clear()

    def _forget_below(self, path: str) -> None:
        """Forget what this layer wrote below ``path``, which was just deleted."""
        below = path + "/"
        for paths in (self.upper, self.files, self.symlinks, self.devices):
            paths.difference_update([p for p in paths if p.startswith(below)])
        for gone in [p for p in self._directory_times if p.startswith(below)]:
            del self._directory_times[gone]
        self._directory_times.pop(path, None)

    def restore_directory_times(self) -> None:
        """After more than one tar: a later one wrote into directories an earlier one had
        already given their times."""
        for path, mtime in self._directory_times.items():
            self._tree.set_mtime(path, mtime)


class _Prefixed:
    """A stream with its first bytes already read: those, then the rest."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        if size < 0:
            head, self._head = self._head, b""
            return head + self._stream.read()
        head, self._head = self._head[:size], self._head[size:]
        return head


def _read_block(stream: IO[bytes]) -> bytes:
    data = b""
    while len(data) < BLOCKSIZE and (chunk := stream.read(BLOCKSIZE - len(data))):
        data += chunk
    return data


def apply_layer(stream: IO[bytes], tree: Path, name: str) -> LayerSummary:
    """Apply the uncompressed layer ``stream`` onto the directory ``tree`` (see the module
    docstring); InvalidInput, naming the layer ``name``, when the layer is unsafe or damaged.
    After an error the tree holds part of the layer: the caller deletes it."""
    try:
        head = _read_block(stream)
        if not head.strip(b"\0"):
            # An empty layer (Docker writes them: two zero blocks): valid, nothing to apply.
            while chunk := stream.read(CHUNK):
                if chunk.strip(b"\0"):
                    raise InvalidInput(f"{name}: damaged layer: data after the end of the archive")
            return LayerSummary(0, 0, 0, 0, 0)
    except (OSError, EOFError, zlib.error) as error:  # what decompressing raises
        if isinstance(error, OSError) and error.filename is not None:
            raise
        raise InvalidInput(f"{name}: not a valid layer ({error or 'truncated'})") from None
    tar = _Tar(tree, name)
    lower = _Tree(tree)
    try:
        checker = _LayerChecker(lower, tar, name)
        try:
            summary = rewrite(cast(IO[bytes], _Prefixed(head, stream)), tar, name, "layer", checker)
        except BaseException as error:
            tar.end(error)
            raise
        tar.end(ended=True)
        if tar.runs > 1:
            checker.restore_directory_times()
    finally:
        lower.close()
    warn_devices(summary, name)
    return LayerSummary(summary.entries, summary.size, summary.devices, checker.whiteouts, tar.runs)
