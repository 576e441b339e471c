"""A realm's root filesystem over time: snapshots, restore, and rebase onto another appimg
version keeping the realm's state.

The model: a realm's *root* is what it writes (``rootfs/`` on a tree version, the overlay's
``upper/`` on a block or sealed one); its home and config are outside it and never change here.
A snapshot (``snapshots/LABEL/``) is a read-only copy of the root with the origin it had, so
that restoring it also gives back the version it ran on (image versions a snapshot needs stay:
:func:`realms.activation.image_users`). Replacing the root (restore, rebase, undo) is one swap
(:mod:`realms.rootfs.roots`): the new root is staged, the roots are exchanged with one rename,
the origin follows through a record that :func:`realms.origin.load` reads, and the root
replaced becomes a snapshot ('pre-restore', 'pre-rebase'). A rebase builds the new root from
the appimg and the paths of the realm's ``keep`` setting (:mod:`realms.rootfs.keep`).

Modules: ``roots`` (where roots and snapshots live, the swap, finishing a killed one),
``keep`` (the state paths), ``snapshots`` (take, list, remove, restore), ``rebase``.
"""
