"""Crafted tar archives, block by block (headers Python's tarfile writes, with whatever names,
links and types an attacker would choose), for the unit and the system tests of imports."""

from __future__ import annotations

import tarfile
from pathlib import Path


def _header(info: tarfile.TarInfo) -> bytes:
    block = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    # tarfile splits a long name into ustar's prefix and name fields at a slash, and at the
    # leading one of a 101-character absolute name it drops the slash: the entry would be
    # harmless, and a test of it pass for the wrong reason.
    written = tarfile.TarInfo.frombuf(block[:512], "utf-8", "surrogateescape").name
    if written.rstrip("/") != info.name.rstrip("/"):
        raise ValueError(f"{info.name!r} does not fit a ustar header (it reads {written!r})")
    return block


def _file(name: str, data: bytes = b"x\n", mode: int = 0o644) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return _header(info) + data + bytes(-len(data) % 512)


def _dir(name: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return _header(info)


def _node(name: str, kind: bytes, major: int, minor: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.devmajor, info.devminor = kind, 0o666, major, minor
    return _header(info)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return _header(info)


END = bytes(1024)


def _archive(path: Path, *parts: bytes) -> Path:
    data = b"".join(parts)
    path.write_bytes(data + bytes(-len(data) % 10240))
    return path


def _outside_cases(outside: Path) -> dict[str, tuple[list[bytes], str]]:
    return {
        "absolute path": ([_file(f"{outside}/pwned")], "absolute path"),
        "dot-dot": ([_dir("usr/"), _file("usr/../../pwned")], "'..'"),
        "hard link outside": ([_link("usr", "../../../etc/shadow", tarfile.LNKTYPE)], "'..'"),
        "write through symlink": (
            [_link("usr", str(outside)), _file("usr/pwned")],
            "symbolic link",
        ),
        "hard link through symlink": (
            [_link("usr", "/etc"), _link("shadow", "usr/shadow", tarfile.LNKTYPE)],
            "symbolic link",
        ),
        # GNU tar reads a pax path up to its first NUL: 'usr\0x' would be the symlink 'usr'.
        "NUL in a name": ([_pax_symlink("usr\0x", str(outside)), _file("usr/pwned")], "NUL"),
    }


def _pax_symlink(name: str, target: str) -> bytes:
    info = tarfile.TarInfo("placeholder")
    info.type, info.linkname = tarfile.SYMTYPE, target
    info.pax_headers = {"path": name}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
