"""The appimg builder: ``realms appimg build`` makes a Debian-based tree appimg from a
declarative config.

- :mod:`~realms.builder.schema`: the config's keys, declared once (types, defaults, docs), and
  the template generated from them.
- :mod:`~realms.builder.config`: loading a config (checks across keys, modules, files, the
  mirror) and the digest of the build's inputs.
- :mod:`~realms.builder.spec`: what a loaded config is (the values a build uses).
- :mod:`~realms.builder.context`: the files and scripts a config names, read inside its
  directory.
- :mod:`~realms.builder.bootstrap`: the first root filesystem (mmdebstrap or debootstrap; one
  file per bootstrapper).
- :mod:`~realms.builder.modules`: the steps before and after the packages, as scripts; each
  built-in module declared once.
- :mod:`~realms.builder.job`: one build's log, its stages, and running things in the image.
- :mod:`~realms.builder.cache`: downloaded packages, bootstrap stages and finished builds, kept
  in the store.
- :mod:`~realms.builder.stages`: the stage cache's keys, and why a stage hits or misses.
- :mod:`~realms.builder.reproducible`: the epoch, the per-build files, the clamp of times.
- :mod:`~realms.builder.build`: the stages in order, the caches, the commit.
"""
