"""Application images ("appimgs"): named, versioned root filesystems that realms are made from.

- :mod:`realms.appimg.record` is an appimg's record on disk (its versions, the current one).
- :mod:`realms.appimg.ops` lists, shows, imports and removes appimgs.
- :mod:`realms.appimg.tarball` checks and extracts root filesystem tarballs.
"""
