"""``realms config``: a realm's settings, read and set through their declarations.

STUB (contract of the open issues): to be written. The interface below is what the CLI and the
API use.
"""

from __future__ import annotations

from typing import Any

from realms.store import Store


def configure_realm(
    store: Store,
    name: str,
    key: str | None = None,
    value: str | None = None,
    *,
    unset: str | None = None,
) -> dict[str, Any]:
    """The realm's settings after the change (all of them; the handler prints what was
    asked)."""
    raise NotImplementedError
