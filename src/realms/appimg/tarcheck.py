"""Reading and checking root filesystem archives: the one parser of tar streams.

Archives mean one thing: there is one parser, Python's :mod:`tarfile`, and GNU tar only ever
reads what realms wrote. :func:`rewrite` streams the archive once (memory does not grow with it),
checks every entry and writes each accepted one as a fresh, canonical POSIX (pax) entry: the
checked name, type, mode, numeric owner, modification time, data, and the pax records GNU tar
uses for extended attributes (file capabilities included) and ACLs; nothing else of the original
headers is passed on. Extracting that stream is :mod:`realms.appimg.tarball`'s.

The archive is refused, and nothing is imported, when an entry has an absolute path, a ``..``
component or a NUL byte, is a hard link to something not earlier in the archive, would be
written through a symbolic link of the archive (``a -> /etc`` then ``a/passwd``), is of a type a
root filesystem has no use for (or a sparse file), has a nonsensical owner, size or time, or when
the archive is damaged: a bad or truncated header anywhere (also after the first entry, where
tarfile alone would silently stop), or anything but zero padding after the end-of-archive marker.
Character and block device nodes are not stored (a realm gets its /dev from systemd-nspawn):
they are skipped, and counted in :attr:`Summary.devices` for one warning line.

What the tree already holds is the :class:`Checker`'s to know: by default nothing but the
archive's own entries; :mod:`realms.registry.layers` subclasses it for OCI layers applied onto
the tree of the layers below.
"""

from __future__ import annotations

import lzma
import math
import struct
import tarfile
import zlib
from dataclasses import dataclass
from typing import IO, Any, Protocol, cast

from realms.appimg.compression import CHUNK
from realms.errors import InvalidInput

BLOCKSIZE = tarfile.BLOCKSIZE


class Refused(Exception):
    """An entry that is not written: the archive is refused (raised by a checker)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{shown(name)}: {reason}")


class _Damaged(Exception):
    """A header that is not valid where an entry or the end of the archive must be."""


class _End(Exception):
    """The end-of-archive marker (or the end of the data) where the next entry would start."""


class SinkStopped(Exception):
    """The process that reads the rewritten stream stopped reading (its exit status says why)."""


_SHOWN_MAX = 200
# Metadata blocks (pax headers, GNU long names) are read into memory whole: a root filesystem
# needs a few kB (a path is at most 4 kB, an extended attribute value at most 64 kB).
_METADATA_MAX = 1 << 20
_METADATA_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_ID_MAX = (1 << 32) - 2  # (uid_t)-1 means "no change" to chown
_MTIME_MAX = 1 << 40
_KEPT_PAX = ("SCHILY.xattr.", "SCHILY.acl.access", "SCHILY.acl.default")
_ZEROS = bytes(CHUNK)


def shown(name: str) -> str:
    """A name as an error shows it: quoted, and cut when it is long."""
    if len(name) <= _SHOWN_MAX:
        return repr(name)
    return f"{name[:_SHOWN_MAX]!r}... ({len(name)} characters)"


def _check_pax_records(data: bytes) -> None:
    """Refuse pax records that are not well formed, in one linear pass: tarfile's own parser
    (Python < 3.11.10) takes quadratic time on crafted records."""
    position = 0
    while position < len(data) and data[position] != 0:
        space = data.find(b" ", position, position + 21)
        digits = data[position:space]
        if space < 0 or not digits.isdigit():
            raise _Damaged("a pax header record without a length")
        end = position + int(digits)
        equals = data.find(b"=", space + 1, end)
        if end > len(data) or equals <= space + 1 or data[end - 1] != 0x0A:
            raise _Damaged("a malformed pax header record")
        if data.startswith(b"GNU.sparse.", space + 1):
            raise _Damaged("sparse file entries are not supported (made with tar --sparse)")
        position = end
    if data[position:].strip(b"\0"):
        raise _Damaged("a malformed pax header record")


class _Replay:
    """What ``TarFile.fileobj`` reads while tarfile parses a pax header that was already read
    (to be checked) here: those bytes first, then the stream."""

    def __init__(self, data: bytes, stream: Any) -> None:
        self._data = data
        self._stream = stream

    def read(self, size: int) -> bytes:
        if not self._data:
            return cast(bytes, self._stream.read(size))
        head, self._data = self._data[:size], self._data[size:]
        if len(head) < size:
            head += self._stream.read(size - len(head))
        return head

    def tell(self) -> int:
        return cast(int, self._stream.tell()) - len(self._data)


class _Header(tarfile.TarInfo):
    """tarfile's header parsing, made strict: every header error is damage, not an end."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> _Header:
        stream: Any = archive.fileobj
        # TarFile.next() puts the stream at the archive's offset before it asks for an entry;
        # a header that belongs to an entry (after a pax header or a long name) is read from
        # further on.
        at_entry = stream.tell() == archive.offset
        block = stream.read(BLOCKSIZE)
        if at_entry and (not block or block == bytes(BLOCKSIZE)):
            raise _End()
        if len(block) != BLOCKSIZE:
            raise _Damaged("a truncated header")
        try:
            header = cls.frombuf(block, archive.encoding, archive.errors)
        except tarfile.HeaderError as error:
            raise _Damaged(str(error) or "a bad header") from None
        header.offset = stream.tell() - BLOCKSIZE
        if header.type == tarfile.GNUTYPE_SPARSE:
            raise _Damaged("sparse file entries are not supported (made with tar --sparse)")
        if header.type in _METADATA_TYPES and not 0 <= header.size <= _METADATA_MAX:
            raise _Damaged(f"a metadata header of {header.size} bytes")
        return cast(_Header, cast(Any, header)._proc_member(archive))

    def _proc_pax(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        stream: Any = archive.fileobj
        data = stream.read(cast(Any, self)._block(self.size))
        _check_pax_records(data[: self.size])
        archive.fileobj = cast(Any, _Replay(data, stream))
        try:
            return cast(tarfile.TarInfo, cast(Any, super())._proc_pax(archive))
        finally:
            archive.fileobj = stream


@dataclass(frozen=True)
class Summary:
    entries: int
    """Entries written (device nodes and the hard links to them are not)."""
    size: int
    """Total size of the regular files, in bytes."""
    devices: int = 0
    """Character and block device nodes skipped (hard links to them included)."""


def normal(name: str) -> str:
    """The entry's path relative to the tree's root ("" for the root), or Refused."""
    if "\0" in name:
        raise Refused(name, "a NUL byte in the name")
    if name.startswith("/"):
        raise Refused(name, "absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise Refused(name, "path with a '..' component")
    return "/".join(parts)


def through_symlink(path: str, symlinks: set[str]) -> str | None:
    """The archive's symlink that ``path`` would be written through, if any."""
    parts = path.split("/")
    for depth in range(1, len(parts)):
        prefix = "/".join(parts[:depth])
        if prefix in symlinks:
            return prefix
    return None


class Sink(Protocol):
    """Where :func:`rewrite` writes the checked stream (a pipe into tar, usually)."""

    def write(self, data: bytes, /) -> int: ...


class Checker:
    """What the entries so far have made of the tree, to check the next one against.

    A subclass may know more of the tree (the layers below an OCI layer): it overrides
    :meth:`via_symlink` and :meth:`check_link`, and may wrap :meth:`check`."""

    def __init__(self) -> None:
        self.symlinks: set[str] = set()
        self.files: set[str] = set()
        self.devices: set[str] = set()  # skipped: not in the tree
        self.skipped = 0
        self.read = 0

    def check(self, member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        """The entry to write for ``member`` (None: skip a device node), or Refused."""
        self.read += 1
        path = normal(member.name)
        via = self.via_symlink(path)
        if via is not None:
            raise Refused(member.name, f"would be written through the symbolic link {via!r}")
        if not path and not member.isdir():
            raise Refused(member.name, "the root of the tree is not a directory")
        entry = self._entry(member, path)
        target = normal(member.linkname) if member.islnk() else ""
        if member.ischr() or member.isblk() or (member.islnk() and target in self.devices):
            # Not stored, so nothing of what the tree was at ``path`` changes.
            self.devices.add(path)
            self.skipped += 1
            return None
        self.devices.discard(path)
        if member.islnk():
            self.check_link(member, path, target)
            entry.type, entry.linkname = tarfile.LNKTYPE, target
            self.files.add(path)
        elif member.issym():
            if not member.linkname or "\0" in member.linkname:
                raise Refused(member.name, "a symbolic link to an empty name or with a NUL byte")
            entry.type, entry.linkname = tarfile.SYMTYPE, member.linkname
            self.symlinks.add(path)
            self.files.add(path)
        elif member.isreg() or member.isfifo():
            if member.size < 0:
                raise Refused(member.name, f"a negative size ({member.size})")
            entry.type = tarfile.REGTYPE if member.isreg() else tarfile.FIFOTYPE
            entry.size = member.size if member.isreg() else 0
            # tar unlinks the symlink before writing the file: nothing goes through it any more.
            self.symlinks.discard(path)
            self.files.add(path)
        elif member.isdir():
            entry.type = tarfile.DIRTYPE
            self.files.discard(path)
        else:
            raise Refused(member.name, f"unsupported entry type {member.type!r}")
        return entry

    def via_symlink(self, path: str) -> str | None:
        """The symbolic link (of the tree, as far as it is known) that ``path`` would be
        written through, if any."""
        return through_symlink(path, self.symlinks)

    def check_link(self, member: tarfile.TarInfo, path: str, target: str) -> None:
        """Refuse the hard link ``path`` to ``target`` unless the target is a file of the
        tree reached through no symbolic link; ``path`` is a symbolic link if it is."""
        via = self.via_symlink(target)
        if via is not None:
            raise Refused(member.name, f"hard link through the symbolic link {via!r}")
        if target not in self.files:
            raise Refused(
                member.name,
                f"hard link to {shown(member.linkname)}, which is not earlier in the archive",
            )
        if target in self.symlinks:
            self.symlinks.add(path)

    @staticmethod
    def _entry(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        for what, value in (("owner", member.uid), ("group", member.gid)):
            if not 0 <= value <= _ID_MAX:
                raise Refused(member.name, f"an impossible numeric {what} ({value})")
        mtime = member.mtime
        if (
            not (isinstance(mtime, int) or math.isfinite(mtime))
            or not -_MTIME_MAX < mtime < _MTIME_MAX
        ):
            raise Refused(member.name, f"an impossible modification time ({mtime})")
        entry = tarfile.TarInfo(path or ".")
        entry.mode = member.mode & 0o7777
        entry.uid, entry.gid = member.uid, member.gid
        entry.uname = entry.gname = ""  # extraction is --numeric-owner
        entry.mtime = int(mtime) if int(mtime) == mtime else mtime
        kept = {k: v for k, v in member.pax_headers.items() if k.startswith(_KEPT_PAX)}
        if isinstance(entry.mtime, float):
            # tarfile would write str(float), which may be "1e-05": GNU tar wants a decimal.
            kept["mtime"] = f"{entry.mtime:.9f}"
        for keyword in kept:
            try:
                keyword.encode("utf-8")  # tarfile writes keywords as strict UTF-8
            except UnicodeEncodeError:
                raise Refused(
                    member.name, f"a pax keyword that is not UTF-8: {shown(keyword)}"
                ) from None
            if not keyword.isprintable():
                raise Refused(member.name, f"an unprintable pax keyword {shown(keyword)}")
        entry.pax_headers = kept
        return entry


def rewrite(
    source: IO[bytes],
    sink: Sink | None,
    name: str = "archive",
    kind: str = "tar archive",
    checker: Checker | None = None,
) -> Summary:
    """Read the tar stream ``source``, check every entry, and write the accepted entries to
    ``sink`` as a fresh POSIX tar stream (see the module docstring); raise InvalidInput, naming
    the archive ``name``, if an entry is unsafe or the archive is damaged or empty. ``checker``
    (a fresh :class:`Checker` by default) decides each entry."""
    checker = Checker() if checker is None else checker
    entries = size = 0
    written = 0
    try:
        with tarfile.open(
            fileobj=source,
            mode="r|",
            tarinfo=_Header,
            bufsize=tarfile.RECORDSIZE,
            encoding="utf-8",
            errors="surrogateescape",
        ) as archive:
            while True:
                try:
                    member = archive.next()
                except _End:
                    break
                cast(Any, archive).members.clear()  # tarfile keeps every entry: memory grows
                if member is None:
                    break
                entry = checker.check(member)
                if entry is None:
                    continue
                entries += 1
                header = _ustar(entry) or entry.tobuf(
                    tarfile.PAX_FORMAT, "utf-8", "surrogateescape"
                )
                written += _write(sink, header)
                if entry.type == tarfile.REGTYPE:
                    size += entry.size
                    written += _copy_data(archive, member, sink)
            stream: Any = archive.fileobj
            while chunk := stream.read(CHUNK):
                if chunk != _ZEROS[: len(chunk)]:
                    raise _Damaged("data after the end of the archive")
    except Refused as refused:
        raise InvalidInput(
            f"{name}: refusing unsafe entry {refused}; nothing was imported"
        ) from None
    except _End:
        raise InvalidInput(f"{name}: the archive is empty; nothing was imported") from None
    except _Damaged as damaged:
        where = f" after entry {checker.read}" if checker.read else ""
        raise InvalidInput(
            f"{name}: damaged {kind}: {damaged}{where}; nothing was imported"
        ) from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, UnicodeError) as error:
        raise InvalidInput(
            f"{name}: not a valid {kind} ({error or 'truncated'}); nothing was imported"
        ) from None
    except OSError as error:
        if error.filename is not None:
            raise
        raise InvalidInput(f"{name}: not a valid {kind} ({error}); nothing was imported") from None
    if checker.read == 0:
        raise InvalidInput(f"{name}: the archive is empty; nothing was imported")
    # Two zero blocks end the archive; pad to tar's record size as tar itself does.
    _write(sink, bytes(2 * BLOCKSIZE + (-(written + 2 * BLOCKSIZE) % tarfile.RECORDSIZE)))
    return Summary(entries, size, checker.skipped)


_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")


def _ustar(entry: tarfile.TarInfo) -> bytes | None:
    """The entry as one ustar header when it fits one without pax records (most entries of a
    root filesystem), else None. tarfile's own writer does the same, several times slower: this
    is most of the time a rewrite takes."""
    name = entry.name.encode("utf-8", "surrogateescape")
    if entry.type == tarfile.DIRTYPE:
        name += b"/"
    linkname = entry.linkname.encode("utf-8", "surrogateescape")
    if (
        entry.pax_headers
        or not (name.isascii() and linkname.isascii())
        or len(name) > 100
        or len(linkname) > 100
        or not isinstance(entry.mtime, int)
        or not 0 <= entry.mtime < 8**11
        or not 0 <= entry.size < 8**11
        or not (entry.uid < 8**7 and entry.gid < 8**7)
    ):
        return None
    fields = [
        name,
        b"%07o" % entry.mode,
        b"%07o" % entry.uid,
        b"%07o" % entry.gid,
        b"%011o" % entry.size,
        b"%011o" % entry.mtime,
        b" " * 8,
        entry.type,
        linkname,
        b"ustar\x0000",
        b"",  # uname, gname: extraction is --numeric-owner
        b"",
        b"",  # devmajor, devminor: no device nodes are written
        b"",
        b"",
    ]
    header = bytearray(_USTAR.pack(*fields))
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _write(sink: Sink | None, data: bytes) -> int:
    if sink is not None:
        try:
            sink.write(data)
        except BrokenPipeError:
            raise SinkStopped() from None
    return len(data)


def _copy_data(archive: tarfile.TarFile, member: tarfile.TarInfo, sink: Sink | None) -> int:
    stream: Any = archive.fileobj
    if type(stream).__name__ == "_Stream" and getattr(stream, "comptype", None) == "tar":
        _copy_from_stream(stream, member.size, sink)
    else:
        data = archive.extractfile(member)
        assert data is not None
        left = member.size
        while left:
            chunk = data.read(min(left, CHUNK))
            if not chunk:
                raise tarfile.ReadError("unexpected end of data")
            _write(sink, chunk)
            left -= len(chunk)
    return _write(sink, bytes(-member.size % BLOCKSIZE)) + member.size


def _copy_from_stream(stream: Any, size: int, sink: Sink | None) -> None:
    """``size`` bytes of tarfile's stream reader, taken straight from its source in large
    reads: tarfile's own file object reads one record (10 kB) at a time, which is half of the
    time a large archive takes. What the reader had read ahead comes first, and its position
    moves as its own reads would move it (the next entry is found from there)."""
    head, stream.buf = stream.buf[:size], stream.buf[size:]
    stream.pos += len(head)
    _write(sink, head)
    left = size - len(head)
    while left:
        chunk = stream.fileobj.read(min(left, CHUNK))
        if not chunk:
            raise tarfile.ReadError("unexpected end of data")
        stream.pos += len(chunk)
        _write(sink, chunk)
        left -= len(chunk)
