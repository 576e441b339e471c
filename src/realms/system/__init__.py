"""Thin wrappers around the operating system: the subprocess runner, btrfs, mounts, files.

Nothing here knows about appimgs or realms; the modules above build on these primitives.
"""
