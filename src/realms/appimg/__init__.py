"""Application images ("appimgs"): named, versioned root filesystems that realms are made from.

- :mod:`realms.appimg.record`: an appimg's record on disk (its versions, the current one), and
  :func:`~realms.appimg.record.changing`, the one way it is changed;
- :mod:`realms.appimg.commit`: the one way a version comes into being (import, build, update,
  seal);
- :mod:`realms.appimg.ops`: list, show, import, remove;
- :mod:`realms.appimg.versions`: rollback, prune, pin;
- :mod:`realms.appimg.update`: update sessions;
- :mod:`realms.appimg.images`: seal, verify, import and export of image files;
- :mod:`realms.appimg.compression`, :mod:`realms.appimg.tarcheck` (reading and checking
  archives), :mod:`realms.appimg.tarball` (extracting them, writing tarballs).
"""
