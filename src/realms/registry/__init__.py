"""OCI registries: pulling images as appimg versions, pushing versions, deltas.

The model, in one place:

- A **reference** (:mod:`.reference`) names a repository in a registry and a tag or a digest:
  ``HOST[:PORT]/PATH[:TAG][@sha256:HEX]``. Everything that comes back from a registry is
  hostile until checked: manifests and configs are size-limited and parsed in
  :mod:`.manifest`; every blob is hashed while it streams and used only under its digest.
- The **client** (:mod:`.client`) speaks the OCI Distribution API over ``requests``: bearer
  tokens and basic auth (:mod:`.transport`) from the credentials podman, skopeo and docker keep
  (:mod:`.credentials`; ``registry login``/``logout`` in :mod:`.auth`), TLS files and
  ``insecure`` registries as ``/etc/containers`` says (:mod:`.hosts`), retries with backoff on
  429 and 5xx, one-line errors for the rest.
- **Blobs** (:mod:`.blobs`) go through the store's blob cache (``cache/blobs``): a download is
  written to ``partial/``, resumed with a ranged GET after an interrupt, and renamed under its
  digest once the digest matched. Several blobs transfer at once, each with a progress bar.
- A **pull** (:mod:`.pull`) of a container image applies its layers in order into a new tree
  (:mod:`.layers`: the same entry checks as a tarball import, plus OCI whiteouts), and commits it
  through :func:`realms.appimg.commit.commit` with origin ``pull`` and the version's ``source``
  ``{"ref", "digest"}``. A pull of a **realms artifact** (:mod:`.artifact`: a block or sealed
  image file) is checked like an image file import; it uses a **delta** (:mod:`.delta`) when a
  version it applies to is here, and the full image when the delta fails.
- A **push** (:mod:`.push`) of a tree version writes its layer into the blob cache
  (:mod:`.tarlayer`) and an OCI image config and manifest (:mod:`.image_config`); a version
  whose parent was pushed to the same repository adds one layer of the files that changed
  (:mod:`.changes`) to the parent's layers. Blobs the registry has are not sent again, and
  blobs of another repository of the same registry are mounted.
"""
