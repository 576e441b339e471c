"""Extracting checked archives and directories into trees, and writing trees as tarballs.

:func:`extract` pipes the stream that :func:`realms.appimg.tarcheck.rewrite` writes into
``tar --extract``, so GNU tar never sees an entry that was not checked, and a directory source
(:func:`copy_directory`) goes through the same path (``tar --create`` of the directory, read and
checked there). :func:`write_tarball` goes the other way: a tree to a tarball, with the same
attributes kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from realms import log
from realms.appimg.compression import Compression, decompressed
from realms.appimg.tarcheck import SinkStopped, Summary, rewrite
from realms.errors import CommandFailed, InvalidInput, RealmsError
from realms.store import out_of_space_error
from realms.system.fs import token
from realms.system.run import check_exit, popen, run

PIPE_SIZE = 1 << 20  # what an unprivileged process may ask for (/proc/sys/fs/pipe-max-size)
_EXTRACT = [
    "tar",
    "--extract",
    "--file=-",
    "--numeric-owner",
    "--same-owner",
    "--preserve-permissions",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    # tarfile marks records holding raw bytes with hdrcharset=BINARY, which GNU tar reads
    # as raw bytes anyway, with a warning.
    "--warning=no-unknown-keyword",
]


def _kind(compression: Compression) -> str:
    return "tar archive" if compression.name == "none" else f"{compression.name} tar archive"


class _Drained:
    """All of a pipe (a child's stderr), read in a thread of its own so that the child never
    blocks on a full pipe while realms feeds or reads its other end."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(
            target=lambda: self._chunks.append(pipe.read()), daemon=True
        )
        self._thread.start()

    def join(self) -> bytes:
        self._thread.join()
        return b"".join(self._chunks)


@contextmanager
def extractor(target: Path, what: str, options: Sequence[str] = ()) -> Iterator[IO[bytes]]:
    """A pipe into ``tar --extract`` (with more ``options``) into the existing directory
    ``target`` (empty, or for an OCI layer the tree of the layers below); the tar stream
    written to it is extracted when the block ends."""
    argv = [*_EXTRACT, *options, f"--directory={target}"]
    process = popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    stdin, stderr_pipe = process.stdin, process.stderr
    assert stdin and stderr_pipe
    with contextlib.suppress(OSError):
        # A larger pipe than the 64 kB default: realms and tar switch less often.
        fcntl.fcntl(stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    errors = _Drained(stderr_pipe)
    stopped = False
    # Whatever stops this (a refused entry, an error, Ctrl-C, SIGTERM at any moment), tar is
    # killed and waited for before the caller deletes the tree it writes into.
    try:
        try:
            yield stdin
        except SinkStopped:
            stopped = True  # tar stopped reading: its exit status and stderr say why
        try:
            stdin.close()
        except BrokenPipeError:
            stopped = True
        returncode = process.wait()
        stderr = errors.join()
    except BaseException:
        process.kill()
        process.wait()
        with contextlib.suppress(OSError):
            stdin.close()
        errors.join()
        raise
    finally:
        stderr_pipe.close()
    full = out_of_space_error(target, f"extracting {what}", stderr) if returncode else None
    if full is not None:
        raise full
    try:
        check_exit(argv, returncode, stderr)
    except CommandFailed as error:
        raise RealmsError(f"extracting {what} failed: {error}; nothing was imported") from None
    if stopped:
        raise RealmsError(f"extracting {what} failed: tar stopped early; nothing was imported")


def warn_devices(summary: Summary, what: str) -> None:
    if summary.devices:
        nodes = "node" if summary.devices == 1 else "nodes"
        log.warn(
            f"{what}: skipped {summary.devices} device {nodes} "
            "(not stored: systemd-nspawn gives every realm its own /dev)"
        )


def extract(path: Path, compression: Compression, target: Path) -> Summary:
    """Check the archive ``path`` and extract it into the existing empty directory ``target``
    in one pass (see the module docstring); InvalidInput if it is unsafe or damaged, in which
    case ``target`` holds a part of it and is the caller's to delete."""
    total = path.stat().st_size
    kind = _kind(compression)
    with (
        log.progress(f"Importing {path.name}", total) as bar,
        extractor(target, path.name) as sink,
    ):
        try:
            with decompressed(path, compression, bar) as stream:
                summary = rewrite(stream, sink, path.name, kind)
        except tarfile.ReadError as error:  # the decompressing tool failed
            raise InvalidInput(
                f"{path.name}: not a valid {kind} ({error}); nothing was imported"
            ) from None
    warn_devices(summary, path.name)
    return summary


def copy_directory(source: Path, target: Path) -> Summary:
    """Copy the directory ``source`` into the existing empty directory ``target`` through the
    same checks as an archive (``tar --create``, read and rewritten here): device nodes are
    skipped, everything else is kept as it is."""
    argv: list[str] = [
        "tar",
        "--create",
        "--file=-",
        f"--directory={source}",
        "--format=posix",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
        ".",
    ]
    with log.step(f"Copying {source}"):
        process = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr_pipe = process.stdout, process.stderr
        assert stdout and stderr_pipe
        errors = _Drained(stderr_pipe)
        try:
            with extractor(target, str(source)) as sink:
                summary = rewrite(stdout, sink, str(source), "copy of the directory")
            returncode = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            stdout.close()
            stderr = errors.join()
            stderr_pipe.close()
    try:
        check_exit(argv, returncode, stderr)
    except CommandFailed as error:
        raise RealmsError(f"reading {source} failed: {error}; nothing was imported") from None
    warn_devices(summary, str(source))
    return summary


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
