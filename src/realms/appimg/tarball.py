"""Root filesystem tarballs (.tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2): check, then extract.

Importing is two passes over the archive:

1. :func:`check` reads every entry's header in Python (streaming: memory does not grow with the
   archive) and refuses the archive, before anything is written, if an entry has an absolute path
   or a ``..`` component, is a hard link to something outside the archive, would be written
   through a symbolic link of the archive (``a -> /etc`` then ``a/passwd``), or is of a type a root
   filesystem has no use for.
2. :func:`extract` runs GNU tar on the checked archive into a fresh tree, keeping numeric
   ownership, modes (setuid included), extended attributes (file capabilities), ACLs, hard links,
   symbolic links and device nodes, exactly as they are in the archive.

Both passes show progress over the archive's bytes. :func:`write_tarball` goes the other way:
a tree to a tarball, with the same attributes kept.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from realms import log
from realms.errors import CommandFailed, InvalidInput, RealmsError, StoreFull
from realms.system.fs import token
from realms.system.run import check_exit, popen, run

_CHUNK = 1 << 20


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


@dataclass(frozen=True)
class Summary:
    entries: int
    size: int
    """Total size of the regular files, in bytes."""


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
def _decompressed(
    path: Path, compression: Compression, bar: log.ProgressBar
) -> Iterator[IO[bytes]]:
    """The archive's uncompressed bytes as a stream."""
    with open(path, "rb") as raw, io.BufferedReader(_Counting(raw, bar), _CHUNK) as counting:
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
            with _piped_through(["zstd", "--decompress", "--stdout", "--quiet"], counting) as out:
                yield out
        else:
            yield cast(IO[bytes], counting)


@contextmanager
def _piped_through(argv: list[str], source: IO[bytes]) -> Iterator[IO[bytes]]:
    """The output of ``argv`` fed with ``source``; damaged input raises tarfile.ReadError."""
    process = popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin and process.stdout and process.stderr
    stdin = process.stdin

    def feed() -> None:
        try:
            while chunk := source.read(_CHUNK):
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
        while process.stdout.read(_CHUNK):
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


class _Refused(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name!r}: {reason}")


def _normal(name: str) -> str:
    """The entry's path relative to the tree's root ("" for the root), or _Refused."""
    if name.startswith("/"):
        raise _Refused(name, "absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _Refused(name, "path with a '..' component")
    return "/".join(parts)


def _through_symlink(path: str, symlinks: set[str]) -> str | None:
    """The archive's symlink that ``path`` would be written through, if any."""
    parts = path.split("/")
    for depth in range(1, len(parts)):
        prefix = "/".join(parts[:depth])
        if prefix in symlinks:
            return prefix
    return None


def _check_entry(member: tarfile.TarInfo, symlinks: set[str], files: set[str]) -> None:
    path = _normal(member.name)
    via = _through_symlink(path, symlinks)
    if via is not None:
        raise _Refused(member.name, f"would be written through the symbolic link {via!r}")
    if member.islnk():
        target = _normal(member.linkname)
        via = _through_symlink(target, symlinks)
        if via is not None:
            raise _Refused(member.name, f"hard link through the symbolic link {via!r}")
        if target not in files:
            raise _Refused(
                member.name,
                f"hard link to {member.linkname!r}, which is not earlier in the archive",
            )
        if target in symlinks:
            symlinks.add(path)
        files.add(path)
    elif member.issym():
        symlinks.add(path)
        files.add(path)
    elif member.isreg() or member.ischr() or member.isblk() or member.isfifo():
        # tar unlinks the symlink before writing the file: nothing goes through it any more.
        symlinks.discard(path)
        files.add(path)
    elif not member.isdir():
        raise _Refused(member.name, f"unsupported entry type {member.type!r}")


def check(path: Path, compression: Compression) -> Summary:
    """Check every entry of the archive (see the module docstring); raise InvalidInput if any
    is unsafe or the archive is damaged."""
    total = path.stat().st_size
    symlinks: set[str] = set()
    files: set[str] = set()
    entries = 0
    size = 0
    with log.progress(f"Checking {path.name}", total) as bar:
        try:
            with (
                _decompressed(path, compression, bar) as stream,
                tarfile.open(fileobj=stream, mode="r|") as archive,
            ):
                for member in archive:
                    _check_entry(member, symlinks, files)
                    entries += 1
                    if member.isreg():
                        size += member.size
        except _Refused as refused:
            raise InvalidInput(
                f"{path.name}: refusing unsafe entry {refused}; nothing was imported"
            ) from None
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as error:
            if isinstance(error, OSError) and error.filename is not None:
                raise
            raise InvalidInput(
                f"{path.name}: not a valid {compression.name} tar archive ({error or 'truncated'})"
            ) from None
    if entries == 0:
        raise InvalidInput(f"{path.name}: the archive is empty")
    return Summary(entries, size)


def extract(path: Path, compression: Compression, target: Path) -> None:
    """Extract a checked archive into the existing empty directory ``target`` with GNU tar."""
    argv: list[str] = [
        "tar",
        "--extract",
        "--file=-",
        f"--directory={target}",
        "--numeric-owner",
        "--same-owner",
        "--preserve-permissions",
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
        *([compression.tar_option] if compression.tar_option else []),
    ]
    total = path.stat().st_size
    errors: list[bytes] = []
    with log.progress(f"Extracting {path.name}", total) as bar:
        process = popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        stdin, stderr_pipe = process.stdin, process.stderr
        assert stdin and stderr_pipe
        # Whatever stops this (an error, Ctrl-C, SIGTERM at any moment), tar is killed and
        # waited for before the caller deletes the tree it writes into.
        try:
            reader = threading.Thread(target=lambda: errors.append(stderr_pipe.read()), daemon=True)
            reader.start()
            try:
                with open(path, "rb") as source:
                    while chunk := source.read(_CHUNK):
                        stdin.write(chunk)
                        bar.advance(len(chunk))
            except BrokenPipeError:
                pass  # tar stopped reading: its exit status and stderr say why
            finally:
                with contextlib.suppress(BrokenPipeError):
                    stdin.close()
            returncode = process.wait()
            reader.join()
        except BaseException:
            process.kill()
            process.wait()
            raise
    stderr = b"".join(errors)
    if returncode != 0 and b"No space left on device" in stderr:
        raise StoreFull(
            f"the store is full: extracting {path.name} ran out of space; nothing was imported",
            hint="free space (realms remove, realms appimg prune) or make the pool larger",
        )
    try:
        check_exit(argv, returncode, stderr)
    except CommandFailed as error:
        raise RealmsError(f"extracting {path.name} failed: {error}; nothing was imported") from None


_CREATE_OPTIONS = {".tar": [], ".tar.gz": ["--gzip"], ".tar.xz": ["--xz"], ".tar.zst": ["--zstd"]}


def create_options(output: Path) -> list[str]:
    """The compression option of GNU tar for a tarball named ``output``."""
    for suffix, options in _CREATE_OPTIONS.items():
        if output.name.endswith(suffix) and not (suffix == ".tar" and output.suffix != ".tar"):
            return options
    raise InvalidInput(f"{output}: a tarball is named .tar, .tar.gz, .tar.xz or .tar.zst")


def write_tarball(tree: Path, output: Path) -> None:
    """Write ``tree`` as the tarball ``output`` (through a temporary name), keeping numeric
    ownership, modes, xattrs and ACLs."""
    options = create_options(output)
    partial = output.with_name(f".{output.name}.{token()}.part")
    with log.step(f"Writing {output}"):
        try:
            run(
                [
                    "tar",
                    "--create",
                    f"--file={partial}",
                    f"--directory={tree}",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "--acls",
                    *options,
                    ".",
                ]
            )
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
