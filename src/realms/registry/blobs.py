"""The store's blob cache (``cache/blobs``): registry blobs fetched, checked and kept.

A blob is fetched into ``partial/ALGORITHM-HEX`` (the directory 0700, the file 0600), hashed
while it streams, and renamed to ``sha256/HEX`` only when it has exactly the size its
descriptor says and its sha256 is its digest; what is in ``sha256/`` was checked. So:

- a blob already in the cache is not downloaded again (pulling it again, or a layer that
  another image shares, is "reused");
- a download that was interrupted (a network failure, Ctrl-C, SIGKILL) leaves its partial
  file, and the next fetch re-hashes what is there and asks for the rest with a ranged GET (a
  registry that ignores the range sends it all, and the partial file starts over);
- a registry cannot fill the disk: no more than the descriptor's size is written (the first
  byte beyond it stops the download and deletes the partial file);
- a blob that does not match its digest is deleted and refused (InvalidInput naming it);
- concurrent pulls share the cache: each partial file is locked (``flock``) by the process
  that writes it, a second fetch of the same blob waits and then finds it in ``sha256/``, and
  renames are atomic.

:class:`Downloads` fetches the blobs of one pull on a small pool of threads, each with a
progress bar (:func:`realms.log.transfers`), and hands them to the caller in the order it asks
for them, so that a layer is applied while the ones after it still download.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from realms import log
from realms.errors import InvalidInput, RealmsError
from realms.faults import checkpoint
from realms.registry.client import Repository
from realms.registry.manifest import Descriptor
from realms.store.layout import Layout
from realms.system.fs import fsync_dir

WORKERS = 3
"""Blobs downloaded at once (registries and links are shared with others: a small pool)."""
_CHUNK = 1 << 20


class Stopped(RealmsError):
    """A download was stopped because the pull it belonged to failed or was interrupted."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    """The checked blob in the cache."""
    downloaded: int
    """Bytes that came over the network for it this time (0: it was in the cache)."""
    reused: bool
    """It was in the cache already (no request was made)."""


def short(digest: str) -> str:
    """``sha256:`` and the first 12 hex digits, for messages and bars."""
    return digest[:19]


def cached(layout: Layout, descriptor: Descriptor) -> Path | None:
    """The cached blob of ``descriptor``, or None. A file of another size is not that blob (a
    damaged cache): it is deleted."""
    path = layout.blob_path(descriptor.digest)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == descriptor.size:
        return path
    log.warn(f"the cached blob {path} has {size} bytes, not {descriptor.size}: fetching it again")
    path.unlink(missing_ok=True)
    return None


def _directory(path: Path) -> Path:
    for directory in (path.parent.parent.parent, path.parent.parent, path.parent):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    return path


def _open_locked(partial: Path) -> int:
    """The partial file, created 0600 and locked; waits while another process writes it. The
    file locked is the one at ``partial`` (not one renamed or deleted meanwhile)."""
    while True:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                log.debug(f"waiting for another download of {partial.name}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.stat(partial)):
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@dataclass
class _Fetch:
    """One blob being fetched into the cache (see :func:`fetch`)."""

    layout: Layout
    repo: Repository
    descriptor: Descriptor
    transfers: log.Transfers
    title: str
    stop: threading.Event | None

    @property
    def what(self) -> str:
        return f"blob {short(self.descriptor.digest)} of {self.repo.reference.name}"

    def run(self) -> Fetched:
        digest, size = self.descriptor.digest, self.descriptor.size
        found = cached(self.layout, self.descriptor)
        if found is not None:
            return Fetched(found, 0, True)
        final = _directory(self.layout.blob_path(digest))
        partial = _directory(self.layout.blob_partial_path(digest))
        with os.fdopen(_open_locked(partial), "r+b") as handle:
            # Another pull may have finished it while this one waited for the lock: the partial
            # file this one locked is then one it made after, or one left by a kill (deleted
            # under the lock; a third waiting on it sees it gone and looks again).
            found = cached(self.layout, self.descriptor)
            if found is not None:
                partial.unlink(missing_ok=True)
                return Fetched(found, 0, True)
            # What an interrupted download left is hashed again: it is only trusted once the
            # whole blob matches its digest.
            hasher = hashlib.sha256()
            length = 0
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
                length += len(chunk)
            if length > size:
                handle.truncate(0)
                hasher, length = hashlib.sha256(), 0
            downloaded = 0
            if length < size:
                hasher, downloaded = self._download(handle, partial, hasher, length)
            if f"sha256:{hasher.hexdigest()}" != digest:
                partial.unlink(missing_ok=True)
                raise InvalidInput(
                    f"{self.what} does not match its digest (the registry sent other bytes)"
                )
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(partial, final)
            fsync_dir(final.parent)
        return Fetched(final, downloaded, False)

    def _download(
        self, handle: IO[bytes], partial: Path, hasher: hashlib._Hash, length: int
    ) -> tuple[hashlib._Hash, int]:
        """Append the rest of the blob to the partial file ``handle`` (from ``length``); return
        the hash of the whole and the bytes received."""
        size = self.descriptor.size
        received = 0
        with self.repo.open_blob(self.descriptor.digest, length) as stream:
            if stream.offset != length:
                # The registry ignored the range: it sends the whole blob.
                handle.truncate(0)
                hasher, length = hashlib.sha256(), 0
            if stream.size is not None and stream.size != size:
                partial.unlink(missing_ok=True)
                raise InvalidInput(f"{self.what} has {stream.size} bytes, its manifest says {size}")
            handle.seek(length)
            bar = self.transfers.start(self.title, size, length)
            ok = False
            try:
                for chunk in stream.chunks:
                    if self.stop is not None and self.stop.is_set():
                        raise Stopped(f"the download of {self.what} was stopped")
                    if length + len(chunk) > size:
                        # Not one byte more than promised reaches the disk.
                        partial.unlink(missing_ok=True)
                        raise InvalidInput(
                            f"{self.what} is larger than the {size} bytes its manifest says"
                        )
                    handle.write(chunk)
                    hasher.update(chunk)
                    if length < size // 2 <= length + len(chunk):
                        handle.flush()
                        checkpoint("blob:half")
                    length += len(chunk)
                    received += len(chunk)
                    bar.advance(len(chunk))
                ok = True
            finally:
                bar.done(ok)
        if length < size:
            raise RealmsError(
                f"the download of {self.what} ended after {length} of {size} bytes",
                hint="pull again: the download resumes where it stopped",
            )
        return hasher, received


def fetch(
    layout: Layout,
    repo: Repository,
    descriptor: Descriptor,
    *,
    transfers: log.Transfers,
    title: str,
    stop: threading.Event | None = None,
) -> Fetched:
    """Fetch the blob of ``descriptor`` into the cache (resuming a partial download) and return
    where it is; InvalidInput when the registry sends more bytes than the descriptor's size or
    bytes of another digest."""
    return _Fetch(layout, repo, descriptor, transfers, title, stop).run()


def read_small(repo: Repository, descriptor: Descriptor, what: str) -> bytes:
    """A small blob (an image config; its descriptor's size already bounded) read into memory
    and checked against its size and digest, without the cache."""
    hasher, chunks, length = hashlib.sha256(), [], 0
    with repo.open_blob(descriptor.digest) as stream:
        for chunk in stream.chunks:
            length += len(chunk)
            if length > descriptor.size:
                raise InvalidInput(
                    f"{what} is larger than the {descriptor.size} bytes it should be"
                )
            hasher.update(chunk)
            chunks.append(chunk)
    if length != descriptor.size or f"sha256:{hasher.hexdigest()}" != descriptor.digest:
        raise InvalidInput(f"{what} does not match its digest (the registry sent other bytes)")
    return b"".join(chunks)


class Downloads:
    """The blobs of one pull, fetched on a pool of :data:`WORKERS` threads in the order given;
    :meth:`wait` returns one when it is in the cache. Leaving the block stops what still runs
    (after a failure) and waits for the threads."""

    def __init__(self, layout: Layout, repo: Repository, blobs: list[tuple[Descriptor, str]]):
        self._layout = layout
        self._repo = repo
        self._blobs = blobs
        self._stop = threading.Event()
        self._futures: list[Future[Fetched]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._bars = log.transfers()

    def __enter__(self) -> Downloads:
        transfers = self._bars.__enter__()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="blob")
        self._futures = [
            self._pool.submit(
                _Fetch(self._layout, self._repo, descriptor, transfers, title, self._stop).run
            )
            for descriptor, title in self._blobs
        ]
        return self

    def wait(self, number: int) -> Fetched:
        """The ``number``-th blob (0-based), once it is fetched and checked."""
        return self._futures[number].result()

    @property
    def downloaded(self) -> int:
        """Bytes downloaded by the fetches that finished."""
        return sum(
            f.result().downloaded
            for f in self._futures
            if f.done() and not f.cancelled() and f.exception() is None
        )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        for future in self._futures:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._bars.__exit__(kind, error, traceback)
