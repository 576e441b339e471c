"""The store: where appimgs and realms live, and the rules that keep it consistent.

- :mod:`realms.store.layout`: every path and lock of a store, and THE LOCK ORDER;
- :mod:`realms.store.txn`: staging under temporary names, renames into place, discarding, and
  the one sweep of what killed commands left (which ``realms status`` counts);
- :mod:`realms.store.core`: :class:`Store`, an opened store (layout, backend, config);
- :mod:`realms.store.init`: ``realms init`` and the store's modes;
- :mod:`realms.store.locks`: flock-based locks that name their holder;
- :mod:`realms.store.pool`: the btrfs pool image for stores not on btrfs;
- :mod:`realms.store.space`: what to say when a filesystem is full.

Removal works on a full store: taking a lock writes nothing (:mod:`realms.store.locks`), and the
space of what was deleted is free again when the command returns.
"""

from realms.store.core import DEFAULT_STORE, STORE_ENV, STORE_FORMAT, Store, locate, write_toml
from realms.store.layout import (
    DELETED_PREFIX,
    NEW_PREFIX,
    TEMPORARY_PREFIXES,
    WORKING_PREFIX,
    Layout,
)
from realms.store.space import out_of_space_error, out_of_space_hint

__all__ = [
    "DEFAULT_STORE",
    "DELETED_PREFIX",
    "NEW_PREFIX",
    "STORE_ENV",
    "STORE_FORMAT",
    "TEMPORARY_PREFIXES",
    "WORKING_PREFIX",
    "Layout",
    "Store",
    "locate",
    "out_of_space_error",
    "out_of_space_hint",
    "write_toml",
]
