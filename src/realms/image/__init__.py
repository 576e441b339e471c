"""Sealed block images in Citadel's format: one file ``[header][data][dm-verity hash area]``.

- :mod:`realms.image.header` is the 4096-byte SGOS image header at offset 0: magic, status,
  flags, the metainfo (UTF-8 TOML, kept byte for byte as stored because signatures cover exactly
  those bytes) and the 64-byte Ed25519 signature slot.
- :mod:`realms.image.verity` computes and checks the dm-verity hash tree (format 1, salted
  sha256, 4096-byte blocks) appended after the data, byte for byte what ``veritysetup format``
  writes, so that the kernel's dm-verity and ``veritysetup`` accept it.

Signing and keys (Ed25519 over the metainfo, one trusted key per channel) come later and build on
these two modules.
"""
