"""The compressions of root filesystem tarballs (.tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2):
recognizing them by their magic bytes, and decompressing them as one stream (with progress)."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from realms import log
from realms.system.run import popen

CHUNK = 1 << 20


@dataclass(frozen=True)
class Compression:
    name: str
    tar_option: str | None  # the GNU tar option that decompresses it


NONE = Compression("none", None)
_MAGICS = [
    (b"\x1f\x8b", Compression("gzip", "--gzip")),
    (b"\xfd7zXZ\x00", Compression("xz", "--xz")),
    (b"\x28\xb5\x2f\xfd", Compression("zstd", "--zstd")),
    (b"BZh", Compression("bzip2", "--bzip2")),
]


def detect(path: Path) -> Compression | None:
    """The compression of a tarball, or None when ``path`` is not a tarball at all."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    for magic, compression in _MAGICS:
        if head.startswith(magic):
            return compression
    if len(head) == 512 and head[257:262] == b"ustar":
        return NONE
    return None


class _Counting(io.RawIOBase):
    """A readable file that reports how much of it has been read to a progress bar."""

    def __init__(self, handle: io.BufferedReader, bar: log.ProgressBar) -> None:
        super().__init__()
        self._handle = handle
        self._bar = bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count: int = self._handle.readinto(buffer)
        self._bar.advance(count)
        return count


@contextmanager
def decompressed(path: Path, compression: Compression, bar: log.ProgressBar) -> Iterator[IO[bytes]]:
    """The archive's uncompressed bytes as a stream."""
    with open(path, "rb") as raw, io.BufferedReader(_Counting(raw, bar), CHUNK) as counting:
        if compression.name == "gzip":
            with gzip.GzipFile(fileobj=counting, mode="rb") as gzip_stream:
                yield cast(IO[bytes], gzip_stream)
        elif compression.name == "xz":
            with lzma.LZMAFile(counting) as xz_stream:
                yield cast(IO[bytes], xz_stream)
        elif compression.name == "bzip2":
            with bz2.BZ2File(counting) as bzip2_stream:
                yield cast(IO[bytes], bzip2_stream)
        elif compression.name == "zstd":
            # Python 3.11 has no zstd: decompress with the zstd tool, fed from here for progress.
            with piped_through(["zstd", "--decompress", "--stdout", "--quiet"], counting) as out:
                yield out
        else:
            yield cast(IO[bytes], counting)


@contextmanager
def piped_through(argv: list[str], source: IO[bytes]) -> Iterator[IO[bytes]]:
    """The output of ``argv`` fed with ``source``; damaged input raises tarfile.ReadError."""
    process = popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin and process.stdout and process.stderr
    stdin = process.stdin

    def feed() -> None:
        try:
            while chunk := source.read(CHUNK):
                stdin.write(chunk)
        except (BrokenPipeError, ValueError):
            pass
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield process.stdout
        # Drain what the consumer left (the end-of-archive padding) to learn the exit status.
        while process.stdout.read(CHUNK):
            pass
        if process.wait() != 0:
            detail = process.stderr.read().decode(errors="replace").strip()
            raise tarfile.ReadError(detail or f"{argv[0]} exited with status {process.returncode}")
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        process.wait()
        feeder.join()
        process.stderr.close()
