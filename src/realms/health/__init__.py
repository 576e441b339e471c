"""The store's health: disk usage (``df``), garbage collection (``gc``) and its fsck
(``check``, ``check --repair``).

Disk usage and garbage collection (``df``, ``gc``):

- :mod:`.measure` measures many paths in one go: btrfs qgroups where the filesystem has quotas
  (never enabled by realms), else one ``btrfs filesystem du`` call, plain ``du`` on the copy
  backend; each path gets the bytes it holds alone (exclusive) and the bytes it shares. Without
  quotas, a snapshot of a read-only tree measured too (a realm's root, an updated version) is
  measured from what changed in it since (:mod:`.changes`: btrfs tree searches, no walk).
- :mod:`.references` reads what the records refer to: versions, their build keys, the registry
  blobs their cached manifests name, and which builds run now.
- :mod:`.gc` plans what nothing refers to (leftovers whose owners' locks are free, versions
  beyond keep-versions by prune's rule, finished builds no version records, .deb files no
  finished build installed, unreferenced and stale blobs) and frees exactly that plan, checking
  each item again under its lock; ``removed/`` (users' homes) is reported, never freed.
- :mod:`.usage` measures every version, realm (root or upper layer, home, snapshots), cache and
  leftover, and what gc would free, in one measurement.

The check (``check``, ``check --repair``): :mod:`.check` compares every record with the disk and
the machine, one object at a time under its own lock (shared), and reports each disagreement
as one :class:`.findings.Problem` with what ``--repair`` does; ``--repair`` runs each repair
under the locks it needs, then checks again. The checks, by part of the store:
:mod:`.check_appimgs` (records vs versions), :mod:`.check_realms` (origins vs roots, layers,
homes, configs, snapshots, uid ranges), :mod:`.check_mounts` (activations, mounts, loop and
dm devices), :mod:`.check_files` (modes, lock files, keys, the default link, leftovers,
runtime state). Repairs never delete what a user made: it is moved to ``removed/``.
"""
