"""Every set of kinds realms knows, one enum each: the values as they are written in records,
configs and JSON (a ``StrEnum`` compares equal to its string, so records stay as they are).

Where a new kind goes: add it here, then follow the type checker to every ``match`` and table
that must handle it.
"""

from __future__ import annotations

from enum import StrEnum


class ImageKind(StrEnum):
    """How an appimg version is stored (see ``../shared/design.md``)."""

    TREE = "tree"
    """A read-only btrfs subvolume ``vN``; realms are snapshots of it."""
    BLOCK = "block"
    """An image file ``vN.img`` (header + ext4/erofs), mounted read-only through a loop device."""
    SEALED = "sealed"
    """A block image with a dm-verity hash tree and signed metainfo."""

    @property
    def is_image(self) -> bool:
        """Stored as an image file (block or sealed): realms on it run on an overlay."""
        return self is not ImageKind.TREE


IMAGE_KINDS = frozenset({ImageKind.BLOCK, ImageKind.SEALED})


class VersionOrigin(StrEnum):
    """How a version came into being (its record's ``origin``)."""

    IMPORT = "import"
    BUILD = "build"
    UPDATE = "update"
    SEAL = "seal"
    PULL = "pull"
    """From an OCI registry (``appimg pull``): the version's ``source`` names the reference and
    the manifest digest."""


class VerityMode(StrEnum):
    """How sealed images are checked: the ``verity`` policy, and what is enforced here."""

    AUTO = "auto"
    """Policy only: the kernel's dm-verity where present, else userspace."""
    KERNEL = "kernel"
    """The kernel checks every read (dm-verity)."""
    USERSPACE = "userspace"
    """Every block is checked in userspace before a read-only mount (at activation)."""
    NONE = "none"
    """Enforcement only: nothing to check (a block image), or no way to check."""


class Isolation(StrEnum):
    """Who a realm's root is on the host (realm config ``isolation``)."""

    USERNS = "userns"
    """An unprivileged host uid: the realm's own range, in a user namespace."""
    PRIVILEGED = "privileged"
    """Host root (an explicit opt-out)."""


class NetworkMode(StrEnum):
    """A realm's network (realm config ``network``; ``use-network = false`` means NONE)."""

    HOST = "host"
    """The host's network namespace."""
    PRIVATE = "private"
    """A veth into its zone's bridge, an address of the zone's subnet, NAT to the outside."""
    NONE = "none"
    """Loopback only."""


class RealmState(StrEnum):
    """Whether something runs in a realm (booted realms add starting and stopping)."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
