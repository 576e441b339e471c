"""Every path and every lock of a store, and the order in which locks are taken.

Layout of a store (default ``/var/lib/realms``)::

    store.toml              format and storage backend; its presence marks an initialized store
    config.toml             global config (see realms.config)
    skel/                   copied into every new realm's home
    Shared/                 bound into realms that set use-shared-dir
    appimg/NAME/            one appimg: appimg.toml (its record), one tree vN or image file
                            vN.img per version, kept-update (an update that was not committed)
    realms/NAME/            one realm: config, origin.toml, home/, rootfs/ (or upper/ work/
                            lower/ on an image version); snapshots/LABEL/ (origin.toml and a
                            read-only rootfs/ or upper/, realms.rootfs); root-swap.toml while a
                            rebase or restore swaps the root (realms.origin reads it)
    default.realm           symlink to the default realm's directory (as on Citadel)
    removed/                homes kept by `realms remove --keep-home`
    active/APPIMG.vN        where block and sealed versions are mounted (activations)
    build/                  trees of builds that run now (.new.NAME.RANDOM)
    cache/packages/RELEASE  downloaded .deb files; cache/builds/KEY finished builds
    cache/stages/KEY        bootstrap stages of builds (realms.builder.stages), read-only
    cache/archive/HASH      mirrors' last InRelease/Release files and their HTTP validators
                            (HASH.json), for conditional GETs (realms.builder.archive)
    cache/blobs/sha256/HEX  registry blobs whose digest was checked (pull, push);
    cache/blobs/partial/    blob downloads under way, resumed by the next pull
    logs/                   build logs; realm-NAME.console: a booted realm's console
    network/                zones.toml: the subnets given to zones without one in the config
    keys/                   trust.toml and signing/CHANNEL.key (mode 0700)
    locks/                  the lock files below (mode 0700)

Runtime state of booted realms (:mod:`realms.lifecycle`) is outside the store, under
``/run/realms/KEY/`` (KEY: a short hash of the store's path, so that several stores on one
machine never meet): ``NAME.json`` per started realm, ``NAME.notify`` (nspawn's notify socket),
``current`` (the current realm and the boot it was chosen in);
each realm's processes are in the cgroup ``realms/KEY-NAME`` of the cgroup2 hierarchy.

Temporary names (see :mod:`realms.store.txn`): ``.new.NAME.RANDOM`` (being made),
``.del.NAME.RANDOM`` (being deleted), ``.update.RANDOM`` (an update's or a seal's working copy),
``.tmp.NAME.RANDOM`` (an atomic write, :mod:`realms.system.fs`), ``.skel.RANDOM`` (skel/ being
made by ``init``).

The locks (:mod:`realms.store.locks`, one file each in ``locks/``), in THE LOCK ORDER: a command
that holds one of them and waits for another always waits for one further down this list::

    init          the store directory itself (flock on it): ``realms init`` only
    build.NAME    one build of appimg NAME at a time            (realms.builder.build)
    appimg.NAME.update
                  one update session or seal of appimg NAME      (realms.appimg.update, images)
    realm.NAME    a realm being made, removed, made default, or a run starting
    realm.NAME.run
                  held while something runs in realm NAME (its realm lock is let go once the
                  run lock is held; a removal takes it without waiting)
    appimg.NAME   an appimg's record and versions (shared: a realm being made from it)
    activate.NAME activating and releasing appimg NAME's image versions
    cache         the finished builds in cache/builds, the stages in cache/stages, the files
                  in cache/archive
    keys          the keyring (trust.toml, signing keys)
    network       zones' subnets, realms' addresses, the bridges and nftables rules
                  (realms.network; nothing is taken while holding it)

Examples of the order: a build holds its build lock and commits under the appimg lock; an
update session holds the update lock and takes the appimg lock for moments; ``realms new``
holds the realm lock, then the appimg lock (shared), then the activation lock; a run holds the
run lock, then takes the appimg lock (shared) and the activation lock. Nothing takes a lock
while holding one further down. A lock taken without waiting (``wait=0``, :class:`Busy` at
once) cannot deadlock and may be tried out of order; the sweep takes only such locks, each in
the order above.

Lock files are named only after checked names (:func:`realms.names.check_lock_name`), so a
``../`` in a name never reaches a path.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import NamedTuple, Protocol

from realms.kinds import ImageKind
from realms.names import check_lock_name, is_existing_realm_name
from realms.store import locks
from realms.system.fs import TEMPORARY_PREFIX

NEW_PREFIX = ".new."
DELETED_PREFIX = ".del."
WORKING_PREFIX = ".update."
SKEL_PREFIX = ".skel."
TEMPORARY_PREFIXES = (NEW_PREFIX, DELETED_PREFIX, WORKING_PREFIX, TEMPORARY_PREFIX, SKEL_PREFIX)

MARKER_NAME = "store.toml"
RECORD_NAME = "appimg.toml"
"""An appimg's record in its directory (:mod:`realms.appimg.record`)."""
ORIGIN_NAME = "origin.toml"
"""A realm's origin in its directory (:mod:`realms.origin`)."""
REALM_CONFIG_NAME = "config"
ROOT_SWAP_NAME = "root-swap.toml"
KEPT_NAME = "kept-update"

APPIMG_WAIT = 30.0
"""How long a command waits for an appimg's or a realm's lock before it says who holds it."""
ACTIVATION_WAIT = 120.0
KEYRING_WAIT = 30.0

RUNTIME_ROOT = Path("/run/realms")
"""Runtime state of booted realms; it is not the store's, and means nothing after a reboot."""


class RealmFiles(NamedTuple):
    """The entries of one realm's directory (also of its directory while it is staged)."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / REALM_CONFIG_NAME

    @property
    def origin(self) -> Path:
        return self.directory / ORIGIN_NAME

    @property
    def home(self) -> Path:
        return self.directory / "home"

    @property
    def ephemeral_home(self) -> Path:
        """The mount point of the tmpfs home of a realm with use-ephemeral-home."""
        return self.directory / "ephemeral-home"

    @property
    def rootfs(self) -> Path:
        """A tree realm's root filesystem; an image realm's mount point of its overlay."""
        return self.directory / "rootfs"

    @property
    def upper(self) -> Path:
        """An image realm's writable layer, and the overlay's work directory beside it."""
        return self.directory / "upper"

    @property
    def work(self) -> Path:
        return self.directory / "work"

    @property
    def lower(self) -> Path:
        """Where an image realm in a user namespace sees its image idmapped."""
        return self.directory / "lower"

    @property
    def network(self) -> Path:
        """The realm's zone and address (private network), and its running veth's record."""
        return self.directory / "network.toml"

    @property
    def tmpfs(self) -> Path:
        """The mount point of the writable layer of an image realm with overlay = "tmpfs"."""
        return self.directory / "tmpfs"

    @property
    def snapshots(self) -> Path:
        """The realm's snapshots, one directory per label (:mod:`realms.rootfs`)."""
        return self.directory / "snapshots"

    def snapshot(self, label: str) -> Path:
        return self.snapshots / label

    @property
    def root_swap(self) -> Path:
        """The record of a root being swapped (rebase, restore): :mod:`realms.origin`."""
        return self.directory / ROOT_SWAP_NAME


class Versioned(Protocol):
    """A version as the layout needs it (:class:`realms.appimg.record.Version`)."""

    @property
    def version(self) -> int: ...

    @property
    def kind(self) -> str: ...


def version_name(number: int, kind: str) -> str:
    """A version's name in its appimg's directory: ``vN`` for a tree, ``vN.img`` for a block or
    sealed image file."""
    return f"v{number}" if kind == ImageKind.TREE else f"v{number}.img"


def pool_image(root: Path) -> Path:
    """The btrfs pool image of a store not on btrfs: beside the store, never inside it (it is
    mounted over the store directory)."""
    return root.parent / f"{root.name}.pool.img"


class Layout:
    """The paths and locks of the store at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    # The store as a whole

    @property
    def marker_path(self) -> Path:
        return self.root / MARKER_NAME

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def skel_dir(self) -> Path:
        return self.root / "skel"

    @property
    def shared_dir(self) -> Path:
        return self.root / "Shared"

    @property
    def removed_dir(self) -> Path:
        return self.root / "removed"

    @property
    def default_realm_link(self) -> Path:
        return self.root / "default.realm"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def console_log_path(self, name: str) -> Path:
        """A booted realm's console (its init's output, nspawn's messages)."""
        return self.logs_dir / f"realm-{check_lock_name('realm', name)}.console"

    # Runtime state of booted realms (outside the store)

    @property
    def runtime_key(self) -> str:
        """A short name of this store that is the same for every path that reaches it: the
        CRC-32 of its real path (a few stores on one machine; hashlib would load OpenSSL at the
        start of every command that finds a running realm)."""
        import zlib

        return f"{zlib.crc32(os.fsencode(os.path.realpath(self.root))):08x}"

    @property
    def runtime_dir(self) -> Path:
        return RUNTIME_ROOT / self.runtime_key

    def runtime_state_path(self, name: str) -> Path:
        return self.runtime_dir / f"{check_lock_name('realm', name)}.json"

    def notify_socket_path(self, name: str) -> Path:
        return self.runtime_dir / f"{check_lock_name('realm', name)}.notify"

    @property
    def current_realm_path(self) -> Path:
        """The current realm (``realms current``): under /run, so that the default realm is
        current again after the host boots."""
        return self.runtime_dir / "current"

    def cgroup_name(self, name: str) -> str:
        """The realm's cgroup, relative to the root of a cgroup hierarchy."""
        return f"realms/{self.runtime_key}-{check_lock_name('realm', name)}"

    # Appimgs

    @property
    def appimgs_dir(self) -> Path:
        return self.root / "appimg"

    def appimg_dir(self, name: str) -> Path:
        return self.appimgs_dir / name

    def record_path(self, name: str) -> Path:
        return self.appimg_dir(name) / RECORD_NAME

    def version_path(self, name: str, version: Versioned) -> Path:
        return self.appimg_dir(name) / version_name(version.version, version.kind)

    def kept_path(self, name: str) -> Path:
        """Where the tree of an update that could not be committed is kept."""
        return self.appimg_dir(name) / KEPT_NAME

    def working_path(self, name: str, token: str) -> Path:
        """The working copy of an update session, or the work directory of a seal."""
        return self.appimg_dir(name) / f"{WORKING_PREFIX}{token}"

    # Realms

    @property
    def realms_dir(self) -> Path:
        return self.root / "realms"

    def realm_names(self) -> list[str]:
        """The names of the realms' directories, sorted; temporary names (realms being made
        or removed) and entries no realm can be named are skipped. Reads no realm's files."""
        try:
            entries = os.listdir(self.realms_dir)
        except FileNotFoundError:
            return []
        return sorted(entry for entry in entries if is_existing_realm_name(entry))

    def realm_dir(self, name: str) -> Path:
        return self.realms_dir / name

    def realm(self, name: str) -> RealmFiles:
        return RealmFiles(self.realm_dir(name))

    def kept_home_path(self, name: str, stamp: str) -> Path:
        """Where ``realms remove --keep-home`` moves a realm's home."""
        return self.removed_dir / f"{name}-{stamp}"

    # Activations

    @property
    def active_dir(self) -> Path:
        return self.root / "active"

    def mountpoint(self, appimg: str, version: int) -> Path:
        # "." cannot be part of a name, so the split back is unambiguous (Citadel split on "-").
        return self.active_dir / f"{appimg}.v{version}"

    def verity_name(self, appimg: str, version: int) -> str:
        """The device-mapper name of a kernel dm-verity activation (unique per store)."""
        return f"realms-{os.stat(self.root).st_ino}-{appimg}.v{version}"

    # Builds and caches

    @property
    def build_dir(self) -> Path:
        return self.root / "build"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def build_cache_dir(self) -> Path:
        return self.cache_dir / "builds"

    @property
    def stage_cache_dir(self) -> Path:
        """Bootstrap stages of builds, read-only trees by key (realms.builder.stages)."""
        return self.cache_dir / "stages"

    @property
    def archive_cache_dir(self) -> Path:
        """Mirrors' Release files, kept for conditional GETs (realms.builder.archive)."""
        return self.cache_dir / "archive"

    @property
    def blob_cache_dir(self) -> Path:
        """Registry blobs (layers, image files, deltas), kept to resume and reuse transfers."""
        return self.cache_dir / "blobs"

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``sha256:HEX`` is kept once its digest was checked. The caller
        checked ``digest`` (realms.registry.reference.check_digest)."""
        algorithm, _, hexdigest = digest.partition(":")
        return self.blob_cache_dir / algorithm / hexdigest

    def blob_partial_path(self, digest: str) -> Path:
        """Where a download of the blob ``digest`` is written until it is complete and checked."""
        return self.blob_cache_dir / "partial" / digest.replace(":", "-")

    def packages_dir(self, release: str) -> Path:
        return self.cache_dir / "packages" / release

    def build_work_path(self, name: str, token: str) -> Path:
        """The directory of a build that runs (its new root filesystem and scratch files)."""
        return self.build_dir / f"{NEW_PREFIX}{name}.{token}"

    def build_log_path(self, name: str, stamp: str) -> Path:
        return self.logs_dir / f"build-{name}-{stamp}.log"

    # Networks

    @property
    def network_dir(self) -> Path:
        return self.root / "network"

    # Keys

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def signing_dir(self) -> Path:
        return self.keys_dir / "signing"

    @property
    def trust_path(self) -> Path:
        return self.keys_dir / "trust.toml"

    def signing_path(self, channel: str) -> Path:
        return self.signing_dir / f"{channel}.key"

    # Lock files, named as in the module docstring

    def build_lock_path(self, name: str) -> Path:
        return self.locks_dir / f"build.{check_lock_name('appimg', name)}.lock"

    def update_lock_path(self, name: str) -> Path:
        return self.locks_dir / f"appimg.{check_lock_name('appimg', name)}.update.lock"

    def realm_lock_path(self, name: str) -> Path:
        return self.locks_dir / f"realm.{check_lock_name('realm', name)}.lock"

    def run_lock_path(self, name: str) -> Path:
        return self.locks_dir / f"realm.{check_lock_name('realm', name)}.run.lock"

    def appimg_lock_path(self, name: str) -> Path:
        return self.locks_dir / f"appimg.{check_lock_name('appimg', name)}.lock"

    def activation_lock_path(self, name: str) -> Path:
        return self.locks_dir / f"activate.{check_lock_name('appimg', name)}.lock"

    @property
    def cache_lock_path(self) -> Path:
        return self.locks_dir / "cache.lock"

    @property
    def keyring_lock_path(self) -> Path:
        return self.locks_dir / "keys.lock"

    @property
    def network_lock_path(self) -> Path:
        return self.locks_dir / "network.lock"

    # The locks, in the lock order

    def build_lock(self, name: str, *, wait: float | None = 0) -> AbstractContextManager[None]:
        return locks.hold(
            self.build_lock_path(name),
            what=f"build of appimg {name}",
            wait=wait,
            busy=f"appimg {name!r} is being built",
            hint="wait for that build to finish (one build at a time per appimg)",
        )

    def update_lock(self, name: str) -> AbstractContextManager[None]:
        """Hold the appimg's update lock for the block; Busy, naming the session, if one runs."""
        return locks.hold(
            self.update_lock_path(name),
            what=f"appimg {name}",
            wait=0,
            busy=f"appimg {name!r} is being updated",
            hint="wait for that update to finish (one update at a time per appimg)",
        )

    def realm_lock(
        self, name: str, *, shared: bool = False, wait: float | None = APPIMG_WAIT
    ) -> AbstractContextManager[None]:
        return locks.hold(
            self.realm_lock_path(name), what=f"realm {name}", shared=shared, wait=wait
        )

    def run_lock(self, name: str) -> AbstractContextManager[None]:
        """Held while something runs in the realm: taken without waiting (one run at a time,
        and a removal refuses a running realm)."""
        return locks.hold(
            self.run_lock_path(name),
            what=f"realm {name}",
            wait=0,
            busy=f"realm {name!r} is running",
            hint=f"stop it if it was started (realms stop {name}), or wait for what runs in it "
            "to finish; one command at a time runs in a realm that is not started",
        )

    def is_running(self, name: str) -> bool:
        return not locks.is_free(self.run_lock_path(name))

    def appimg_lock(
        self, name: str, *, shared: bool = False, wait: float | None = APPIMG_WAIT
    ) -> AbstractContextManager[None]:
        return locks.hold(
            self.appimg_lock_path(name), what=f"appimg {name}", shared=shared, wait=wait
        )

    def activation_lock(
        self, name: str, *, wait: float | None = ACTIVATION_WAIT
    ) -> AbstractContextManager[None]:
        """Held while an appimg's versions are activated or released."""
        return locks.hold(
            self.activation_lock_path(name), what=f"activation of appimg {name}", wait=wait
        )

    def cache_lock(
        self, *, shared: bool = False, wait: float | None = APPIMG_WAIT
    ) -> AbstractContextManager[None]:
        """Held while finished builds are added or evicted (shared: while one is cloned)."""
        return locks.hold(self.cache_lock_path, what="the build cache", shared=shared, wait=wait)

    def keyring_lock(self, *, wait: float | None = KEYRING_WAIT) -> AbstractContextManager[None]:
        return locks.hold(self.keyring_lock_path, what="the keyring", wait=wait)

    def network_lock(self, *, wait: float | None = APPIMG_WAIT) -> AbstractContextManager[None]:
        """Held while addresses are given out and bridges and rules are changed."""
        return locks.hold(self.network_lock_path, what="the realms' networks", wait=wait)
