"""Bootstrappers make the first root filesystem of a build, into an empty directory.

One small interface, one file per bootstrapper: another distribution (or tool) is a new file
that implements :class:`Bootstrapper` and a line in :func:`bootstrapper_named`. A bootstrapper
reuses the store's package cache, so that packages are downloaded once.
"""

from __future__ import annotations

from typing import Protocol

from realms import log
from realms.builder.job import BuildJob
from realms.errors import InvalidInput


class Bootstrapper(Protocol):
    name: str
    """Its name in build configs (the ``bootstrapper`` key)."""
    shows_progress: bool
    """Whether it reports progress to the bar that :meth:`bootstrap` is given."""

    def bootstrap(
        self, job: BuildJob, include: list[str], *, recommends: bool, bar: log.ProgressBar
    ) -> None:
        """Make the base system of ``job.config`` in ``job.tree`` (empty), with the packages
        ``include`` as well (and, with ``recommends``, the packages they recommend);
        downloaded packages go to ``job.package_cache``."""


def bootstrapper_named(name: str) -> Bootstrapper:
    from realms.builder.bootstrap.debootstrap import Debootstrap
    from realms.builder.bootstrap.mmdebstrap import Mmdebstrap

    known: dict[str, type[Bootstrapper]] = {"mmdebstrap": Mmdebstrap, "debootstrap": Debootstrap}
    if name not in known:
        raise InvalidInput(f"unknown bootstrapper {name!r}", hint="known: " + ", ".join(known))
    return known[name]()
