"""The store: one object for an opened store, its paths and locks (:mod:`realms.store.layout`),
its storage backend, its global config, and the safe changes of :mod:`realms.store.txn`.

The config and the safe changes are imported when first used: ``realms stop`` or a ``realms
run`` that joins a running realm needs neither, and their imports (TOML, the settings, the
zones, the mount and subprocess helpers) would be most of such a command's start-up.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from realms import log
from realms.errors import InvalidInput, RealmsError
from realms.storage import Backend, backend_named
from realms.store.layout import Layout, pool_image

if TYPE_CHECKING:
    from realms.config import GlobalConfig

DEFAULT_STORE = Path("/var/lib/realms")
STORE_ENV = "REALMS_STORE"
STORE_FORMAT = 1
BACKENDS = ("btrfs", "copy")


def locate(path: str | Path | None = None) -> Path:
    """The store directory: the argument, else $REALMS_STORE, else /var/lib/realms."""
    chosen = path or os.environ.get(STORE_ENV) or DEFAULT_STORE
    return Path(os.path.abspath(chosen))


def marker_text(backend: str) -> str:
    """The store's marker (``store.toml``) as ``realms init`` writes it."""
    return f'format = {STORE_FORMAT}\nbackend = "{backend}"\n'


def _backend_in_marker(marker: Path) -> str | None:
    """The backend the store's marker names, None if it is not a marker of this format. A
    marker as ``realms init`` wrote it is known without the TOML parser, whose import would be
    a tenth of ``realms stop``; one edited by hand is parsed."""
    try:
        text = marker.read_text()
    except UnicodeDecodeError:
        return None
    for backend in BACKENDS:
        if text == marker_text(backend):
            return backend
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    found = data.get("backend")
    if data.get("format") != STORE_FORMAT or found not in BACKENDS:
        return None
    return str(found)


def write_toml(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    import tomli_w

    from realms.system.fs import atomic_write

    atomic_write(path, tomli_w.dumps(data), mode)


class Store(Layout):
    """An opened store: its paths and locks (inherited from :class:`Layout`), its backend."""

    def __init__(self, root: Path, *, backend: Backend | str) -> None:
        super().__init__(root)
        self._backend = backend
        self._config: GlobalConfig | None = None

    @property
    def backend(self) -> Backend:
        """The storage driver (:mod:`realms.storage`), loaded when first used: stopping a realm
        or joining a running one changes no tree."""
        if isinstance(self._backend, str):
            self._backend = backend_named(self._backend)
        return self._backend

    @classmethod
    def open(cls, root: Path) -> Store:
        """Open an initialized store, or explain how to initialize (or re-mount) it."""
        layout = Layout(root)
        marker = layout.marker_path
        if not marker.exists():
            image = pool_image(root)
            if image.exists():
                raise RealmsError(
                    f"the store's btrfs pool {image} is not mounted at {root}",
                    hint="run 'realms init' to mount it again",
                )
            raise RealmsError(
                f"no realms store at {root}",
                hint="run 'realms init' to create one, or choose another with --store",
            )
        backend = _backend_in_marker(marker)
        if backend is None:
            raise InvalidInput(f"{marker}: not a realms store of format {STORE_FORMAT}")
        if os.stat(root).st_mode & 0o077:
            log.warn(
                f"the store {root} is open to other users of this machine; "
                "run 'realms init' to close it"
            )
        return cls(root, backend=str(backend))

    @property
    def config(self) -> GlobalConfig:
        if self._config is None:
            from realms.config import load_global

            self._config = load_global(self.config_path)
        return self._config

    # Safe changes (realms.store.txn)

    def staging(self, target: Path, what: str) -> AbstractContextManager[Path]:
        """A temporary path beside ``target``, renamed to it when the block succeeds."""
        from realms.store import txn

        return txn.staging(self, self.backend, target, what)

    def discard(self, path: Path) -> None:
        """Make ``path`` disappear at once (a rename), then delete it."""
        from realms.store import txn

        txn.discard(self.backend, path)

    def remove(self, path: Path) -> None:
        """Remove a tree this store made (unmounting what a killed command left inside it)."""
        from realms.store import txn

        txn.remove(self, self.backend, path)

    def sweep(self) -> int:
        """The one sweep: delete the leftovers of killed commands (see :mod:`realms.store.txn`);
        every command that changes the store calls it first."""
        from realms.store import txn

        return txn.sweep(self, self.backend)

    def leftovers(self) -> list[Path]:
        """What :meth:`sweep` looks at: every temporary name in the store."""
        from realms.store import txn

        return txn.leftovers(self)

    def reclaim(self) -> None:
        """Wait until the space of deleted trees is free again (errors only logged)."""
        from realms.store import txn

        txn.reclaim_quietly(self, self.backend)
