"""Sizes and times as people write and read them."""

from __future__ import annotations

import re
import time

from realms.errors import InvalidInput

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``32G``, ``512M``, ``1T``, ``4096`` (bytes); binary units."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise InvalidInput(f"invalid size {text!r}", hint="write it like 32G, 512M or 1T")
    return int(match[1]) * _UNITS[match[2].upper()]


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def now() -> str:
    """The current time as ISO 8601 UTC, to the second."""
    # time, not datetime: this is on the path of `realms start` (datetime is 2 ms to import).
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
