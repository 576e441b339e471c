"""Writing a layer of a tree version into the store's blob cache: a gzip tar, hashed as it goes.

One pipeline, memory flat whatever the tree's size: the names of the entries (every path of
the tree for a full layer, the changed ones for a layer on top of the parent's) are fed to
GNU tar (``--no-recursion``, names as given, numeric owners, xattrs and ACLs, no atime or
ctime: the same tree gives the same bytes), whose output goes through ``pigz -n`` (``gzip -n``
when pigz is not installed) into a temporary file of the cache. The uncompressed stream is
hashed on the way in (the layer's ``diff_id``), the compressed one on the way out (its
digest), and the file is renamed under its digest when all three programs succeeded: a blob in
the cache is always complete.

Whiteouts (``DIR/.wh.NAME``) come first in a layer of changes, written here as empty entries
(GNU tar cannot archive a name that does not exist): an unpacker that applies entries in
order deletes from the layers below before it writes what replaces them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from realms.errors import CommandFailed, RealmsError
from realms.store import out_of_space_error
from realms.store.layout import Layout
from realms.system.fs import token
from realms.system.run import check_exit, popen

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
_CHUNK = 1 << 20
PARTIAL_PREFIX = ".push."
_YOUNG = 60.0

_TAR = [
    "tar",
    "--create",
    "--file=-",
    "--format=posix",
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    # Reproducible: no access or change times, no process id in the names of pax headers.
    "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
    "--no-recursion",
    "--null",
    "--verbatim-files-from",
    # Last: --directory applies to the names that follow it.
]


@dataclass(frozen=True)
class Layer:
    digest: str
    """sha256 of the compressed blob (the manifest's layer digest)."""
    diff_id: str
    """sha256 of the uncompressed tar (the config's rootfs.diff_ids)."""
    size: int
    """Bytes of the compressed blob."""
    path: Path
    """The blob in the cache."""


def compressor() -> list[str]:
    return ["pigz", "-n", "-c"] if shutil.which("pigz") else ["gzip", "-n", "-c"]


def open_partial(layout: Layout) -> tuple[Path, IO[bytes]]:
    """A new file in the blob cache's ``partial/`` (0600, locked while it is open) to be
    renamed under its digest; files that killed pushes left there are deleted first."""
    directory = layout.blob_cache_dir / "partial"
    for needed in (layout.blob_cache_dir, directory):
        with contextlib.suppress(FileExistsError):
            needed.mkdir(mode=0o700, parents=True)
    _sweep(directory)
    path = directory / f"{PARTIAL_PREFIX}{token()}"
    handle = open(path, "xb")  # noqa: SIM115 - the caller closes it
    os.fchmod(handle.fileno(), 0o600)
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    return path, handle


def _sweep(directory: Path) -> None:
    # A file of a push that runs is locked, or was made a moment ago and not locked yet.
    for path in directory.glob(f"{PARTIAL_PREFIX}*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime < _YOUNG:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def whiteout_entries(paths: Iterable[str]) -> bytes:
    """Empty tar entries ``DIR/.wh.NAME`` for the deleted ``paths``."""
    chunks = []
    for path in paths:
        directory, _, name = path.rpartition("/")
        info = tarfile.TarInfo(f"{directory}/.wh.{name}" if directory else f".wh.{name}")
        info.mode = 0o600
        chunks.append(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    return b"".join(chunks)


class _Pump(threading.Thread):
    """Runs ``work`` in a thread and keeps what it raised for :meth:`result`."""

    def __init__(self, work: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self._work = work
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as error:  # handed to the main thread
            self.error = error


def write_layer(
    layout: Layout,
    tree: Path,
    names: Iterable[str],
    *,
    whiteouts: Iterable[str] = (),
    on_progress: Callable[[int], None] | None = None,
) -> Layer:
    """Write the layer of ``names`` (relative paths of ``tree``, in the order given) after the
    ``whiteouts``, into the blob cache of ``layout``; see the module docstring."""
    partial, output = open_partial(layout)
    tar_argv = [*_TAR, f"--directory={tree}", "--files-from=-"]
    zip_argv = compressor()
    uncompressed, compressed = hashlib.sha256(), hashlib.sha256()
    size = 0
    with tempfile.TemporaryFile() as tar_errors, tempfile.TemporaryFile() as zip_errors:
        tar = popen(tar_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=tar_errors)
        gzip = popen(zip_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=zip_errors)
        tar_in, tar_out, zip_in, zip_out = tar.stdin, tar.stdout, gzip.stdin, gzip.stdout
        assert tar_in and tar_out and zip_in and zip_out

        def feed() -> None:
            with tar_in:
                for name in names:
                    tar_in.write(os.fsencode(name) + b"\0")

        def pump() -> None:
            with zip_in:
                head = whiteout_entries(whiteouts)
                uncompressed.update(head)
                zip_in.write(head)
                while chunk := tar_out.read(_CHUNK):
                    uncompressed.update(chunk)
                    zip_in.write(chunk)

        feeder, pumper = _Pump(feed), _Pump(pump)
        feeder.start()
        pumper.start()
        finished = False
        try:
            with output:
                while chunk := zip_out.read(_CHUNK):
                    compressed.update(chunk)
                    output.write(chunk)
                    size += len(chunk)
                    if on_progress is not None:
                        on_progress(len(chunk))
                output.flush()
                os.fsync(output.fileno())
            finished = True
        finally:
            # After a failure (or Ctrl-C) the programs are stopped, which ends the threads'
            # writes into their pipes, before anything else happens.
            for process in (tar, gzip):
                if not finished and process.poll() is None:
                    process.kill()
            tar_code, zip_code = tar.wait(), gzip.wait()
            for pipe in (tar_in, tar_out, zip_in, zip_out):
                with contextlib.suppress(OSError):
                    pipe.close()
            feeder.join()
            pumper.join()
            if not finished:
                partial.unlink(missing_ok=True)
        try:
            _check(tar_argv, tar_code, tar_errors, partial, tree)
            _check(zip_argv, zip_code, zip_errors, partial, tree)
            for thread in (feeder, pumper):
                if thread.error is not None:
                    raise RealmsError(f"writing a layer of {tree} failed: {thread.error}")
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    digest = f"sha256:{compressed.hexdigest()}"
    target = layout.blob_path(digest)
    with contextlib.suppress(FileExistsError):
        target.parent.mkdir(mode=0o700, parents=True)
    os.replace(partial, target)
    return Layer(digest, f"sha256:{uncompressed.hexdigest()}", size, target)


def _check(argv: list[str], code: int, errors: IO[bytes], partial: Path, tree: Path) -> None:
    errors.seek(0)
    stderr = errors.read()
    if code == 0:
        return
    full = out_of_space_error(partial.parent, f"writing a layer of {tree}", stderr)
    if full is not None:
        raise full
    try:
        check_exit(argv, code, stderr)
    except CommandFailed as error:
        raise RealmsError(f"writing a layer of {tree} failed: {error}") from None
