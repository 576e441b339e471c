"""Block and sealed versions of appimgs: sealing a tree version, verifying any version,
importing an image file, exporting a version.

Sealing takes the appimg's update lock (one change of an appimg's content at a time) and works
in a directory of its own beside the versions; its version number is reserved in the record at
the start, because the number is written into the signed metainfo. The appimg's lock is taken
only for a moment, to commit (:mod:`realms.appimg.commit`); before it does, the new image's
signature is checked against the store's trust as it is then, so that the store never commits
an image it would refuse.

Importing checks the file's header and signature (against the trusted and unrevoked keys of its
channel) before it reads anything else, then every data and hash block of the copy in the store
before that copy is committed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from realms import log
from realms.appimg.commit import NewVersion, commit, reserve
from realms.appimg.record import AppimgRecord, Version, load_record
from realms.errors import InvalidInput, NotFound, RealmsError
from realms.faults import checkpoint
from realms.image import filesystem, keys, realmfs
from realms.image.realmfs import Check
from realms.kinds import ImageKind, VersionOrigin
from realms.names import check_appimg_name
from realms.store import Store
from realms.system import btrfs
from realms.system.fs import rename_noreplace, token
from realms.system.run import run

DEFAULT_CHANNEL = "realmfs-user"


def _pick(record: AppimgRecord, number: int | None) -> Version:
    if number is None:
        return record.current_version
    found = record.version(number)
    if found is None:
        raise NotFound(f"appimg {record.name!r} has no version {number}")
    return found


def seal(
    store: Store,
    name: str,
    *,
    channel: str | None = None,
    fs: str = "ext4",
    verity: bool = True,
    salt: str | None = None,
) -> Version:
    """Make a sealed (or, without ``verity``, a block) version of appimg ``name`` from its
    current tree version, and make it current. ``salt``: the dm-verity salt in hex (default:
    random); given, the image is the same for the same tree (see :func:`realmfs.seal_tree`)."""
    fixed_salt = parse_salt(salt) if salt is not None else None
    if fs not in filesystem.FILESYSTEMS:
        raise InvalidInput(f"unknown filesystem {fs!r}", hint="choose ext4 or erofs")
    channel = keys.check_channel(channel or DEFAULT_CHANNEL)
    keyring = keys.Keyring(store)
    seed = keyring.signing_seed(channel) if verity else None
    check_appimg_name(name)
    store.sweep()
    with store.update_lock(name):
        base = load_record(store, name).current_version
        if base.kind != ImageKind.TREE:
            raise RealmsError(
                f"version {base.version} of appimg {name!r} is {base.kind} already: "
                "only a tree version can be sealed",
                hint="'realms appimg rollback' to a tree version first",
            )
        number = reserve(store, name)
        base = load_record(store, name).current_version
        work = store.working_path(name, f"seal-{token()}")
        work.mkdir()
        try:
            # A snapshot of the tree, so that nothing (a prune) can take it away meanwhile.
            tree = work / "tree"
            store.backend.clone(store.version_path(name, base), tree)
            # Read-only, so that reading it (the filesystem's maker does) changes no atime:
            # mkfs.ext4 -d copies them, and the same tree must give the same image.
            store.backend.freeze(tree)
            image = work / "image.img"
            realmfs.seal_tree(
                tree,
                image,
                scratch=work,
                name=name,
                version=number,
                fs=fs,
                channel=channel if verity else None,
                seed=seed,
                verity=verity,
                salt=fixed_salt,
            )
            # The store never commits what it would refuse to use: the new image is checked
            # against the trust as it is now (a rotation or a revocation may have happened
            # since the key was read, or a killed rotation left a key that is not trusted).
            checkpoint("seal:signed")
            realmfs.require(
                realmfs.check_trust(image, keys.Keyring(store)),
                f"the new {'sealed' if verity else 'block'} image of appimg {name!r}",
            )
            kind = ImageKind.SEALED if verity else ImageKind.BLOCK
            signer = f", channel {channel}, key {keys.public_of(seed)[:16]}" if seed else ""
            detail = f"{kind} from version {base.version} ({fs}{signer})"
            new = NewVersion(kind, VersionOrigin.SEAL, detail, number, base.version)
            return commit(store, name, lambda path: rename_noreplace(image, path), new)
        finally:
            if work.exists():
                store.backend.remove(work)


def parse_salt(text: str) -> bytes:
    """A salt given in hex: exactly 64 hex digits (32 bytes, as Citadel's metainfo holds)."""
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        shown = text if len(text) <= 70 else text[:67] + "..."
        raise InvalidInput(
            f"the salt {shown!r} is not 64 hex digits ({len(text)} characters)",
            hint="a salt is 32 bytes in hex, e.g. from 'openssl rand -hex 32'",
        )
    return bytes.fromhex(text)


@dataclass(frozen=True)
class Verification:
    appimg: str
    version: int
    kind: ImageKind
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, object]:
        return {
            "appimg": self.appimg,
            "version": self.version,
            "kind": self.kind,
            "ok": self.ok,
            "checks": [check.to_json() for check in self.checks],
        }


def verify(store: Store, name: str, number: int | None = None) -> Verification:
    """Check a version: an image file entirely (header, signature, every block); a tree, that
    it is the read-only tree the record names."""
    with store.appimg_lock(name, shared=True):
        record = load_record(store, name)
        version = _pick(record, number)
        path = store.version_path(name, version)
        if version.kind == ImageKind.TREE:
            checks = [_check_tree(store, path)]
        else:
            with log.step(f"Verifying {name} version {version.version}"):
                checks = realmfs.verify_image(path, keys.Keyring(store))
            checks += _check_matches_record(path, version)
    return Verification(name, version.version, version.kind, checks)


def _check_tree(store: Store, path: Path) -> Check:
    if not path.is_dir():
        return Check("tree", False, f"{path} is missing")
    if store.backend.name == "btrfs" and not btrfs.is_readonly(path):
        return Check("tree", False, f"{path} is not read-only")
    return Check("tree", True, "a read-only tree (no signature: seal it to sign it)")


def _check_matches_record(path: Path, version: Version) -> list[Check]:
    try:
        header, _ = realmfs.read_header(path)
    except InvalidInput:
        return []
    kind = ImageKind.SEALED if header.metainfo.sealed else ImageKind.BLOCK
    if kind != version.kind:
        return [Check("record", False, f"the record says {version.kind}, the image is {kind}")]
    return []


def import_image(
    store: Store,
    name: str,
    source: Path,
    *,
    new_version: bool = False,
    pulled: dict[str, str] | None = None,
    image_digest: str | None = None,
) -> Version:
    """Import a block or sealed image file (a Citadel RealmFS image included) after checking
    all of it; a sealed image must be signed by a trusted, unrevoked key of its channel.
    ``pulled``: the file came from a registry (realms.registry.artifact), the version's source
    ``{"ref", "digest"}``; it is added to the appimg, or makes it.

    The header and signature are checked on ``source`` first (nothing more is read from a
    file that fails them); every block is checked on the copy in the store, before it is
    committed, so that what was checked is what is stored even if ``source`` changes.
    """
    check_appimg_name(name)
    keyring = keys.Keyring(store)
    first = realmfs.check_trust(source, keyring)
    realmfs.require(first, str(source))
    header, _ = realmfs.read_header(source)
    kind = ImageKind.SEALED if header.metainfo.sealed else ImageKind.BLOCK

    def signer(checks: list[Check]) -> str:
        return next((c.detail for c in checks if c.name == "signature"), "")

    def copy_to(target: Path) -> None:
        with log.step(f"Copying {source.name} into the store"):
            run(["cp", "--reflink=auto", "--", source, target])
        with log.step(f"Verifying {source}"):
            checks = realmfs.verify_image(target, keyring)
        realmfs.require(checks, str(source))
        copied, _ = realmfs.read_header(target)
        if signer(checks) != signer(first) or copied.metainfo.sealed != (kind == ImageKind.SEALED):
            raise InvalidInput(f"{source}: the file changed while it was imported")

    if pulled is not None:
        detail = f"{pulled.get('ref')} ({signer(first)})"
        new = NewVersion(kind, VersionOrigin.PULL, detail, source=pulled, image_digest=image_digest)
        return commit(store, name, copy_to, new)
    new = NewVersion(kind, VersionOrigin.IMPORT, f"{source.resolve()} ({signer(first)})")
    return commit(store, name, copy_to, new, mode="add" if new_version else "create")


def export(store: Store, name: str, target: Path, number: int | None = None) -> Version:
    """Write a version as a standalone file: an image version as its image file (reflinked
    where possible), a tree version as a tarball (.tar, .tar.gz, .tar.xz, .tar.zst)."""
    with store.appimg_lock(name, shared=True):
        version = _pick(load_record(store, name), number)
        source = store.version_path(name, version)
        if version.kind == ImageKind.TREE:
            # Imported here: the tar modules (tarfile, compressors) are not needed by the other
            # commands of this module, verify above all.
            from realms.appimg.tarball import write_tarball

            write_tarball(source, target)
            return version
        partial = target.with_name(f".{target.name}.{token()}.part")
        with log.step(f"Writing {target}"):
            try:
                run(["cp", "--reflink=auto", "--", source, partial])
                partial.chmod(0o644)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
    return version
