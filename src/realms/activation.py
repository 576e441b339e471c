"""Activations: block and sealed appimg versions made usable, once per version.

A realm on a block or sealed version has no root filesystem of its own, only a writable layer
over the image. The image is *activated* once per version and shared by every realm made from
it: attached to a loop device (read-only, after the image's header, see
:mod:`realms.system.loop`) and mounted read-only at ``STORE/active/APPIMG.vN``. The
activation's users are the realms whose origin is that version (:mod:`realms.origin`), so its
reference count is never stored, only derived: it is made when the first realm is made or
started, and released (unmounted, which frees the loop device) when the last one is removed.

A sealed image is checked before it is mounted: its signature against the trusted, unrevoked
keys of its channel, always; then, by the ``verity`` policy of the global config:

- ``kernel`` dm-verity (``auto`` where the kernel has it): ``veritysetup open`` with the signed
  root hash, as Citadel did; every later read is checked by the kernel.
- ``userspace`` (``auto`` elsewhere, as on these machines): every data and hash block is
  checked before the read-only mount; the enforcement is reported as ``userspace (checked at
  activation)``.
- ``kernel`` where the kernel has no dm-verity: refused.

The header and signature are checked again at every use of a version (:func:`require_trusted`,
also when it is active already), against the trust as it is then: a revoked key takes effect at
once, and revoking one releases the activations of the images it signed on which no realm runs
(:func:`release_untrusted`).

Activation and release happen under the appimg's activation lock
(:meth:`realms.store.Layout.activation_lock`). A command killed while activating leaves at most
an activation that no realm uses; the next realm command on that appimg releases it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from realms import log, origin
from realms.appimg.record import Version, load_record
from realms.errors import InvalidInput, RealmsError
from realms.image.header import HEADER_SIZE, data_size
from realms.kinds import IMAGE_KINDS, ImageKind, VerityMode
from realms.store import Store
from realms.system import kernel, mounts
from realms.system.run import run

if TYPE_CHECKING:
    from realms.image.header import Header

# The image modules that hash and check signatures are imported where an image is activated,
# not here: every realm command imports this module, and most never activate anything.


@dataclass(frozen=True)
class Activation:
    appimg: str
    version: int
    mountpoint: Path
    device: str
    enforcement: VerityMode
    """kernel, userspace (checked at activation) or none (a block image)."""
    users: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "appimg": self.appimg,
            "version": self.version,
            "mountpoint": str(self.mountpoint),
            "device": self.device,
            "verity": self.enforcement,
            "users": self.users,
        }


def enforcement(store: Store, kind: ImageKind) -> VerityMode:
    """How a version of ``kind`` is checked here, under the store's verity policy."""
    if kind != ImageKind.SEALED:
        return VerityMode.NONE
    found = kernel.verity_enforcement(store.config.verity, kernel.features())
    if found == VerityMode.NONE:
        raise RealmsError(
            "the verity policy is 'kernel', but this kernel has no dm-verity",
            hint='set verity = "auto" in the global config to check sealed images in '
            "userspace, or use a kernel with device-mapper",
        )
    return found


def _users_by_version(store: Store) -> dict[tuple[str, int], list[str]]:
    """The realms that run on each block or sealed version, by (appimg, version): read from
    every realm's origin once, for all the lookups a command makes."""
    found: dict[tuple[str, int], list[str]] = {}
    for name, made in sorted(origin.all_origins(store.realms_dir).items()):
        if made.kind in IMAGE_KINDS:
            found.setdefault((made.appimg, made.appimg_version), []).append(name)
    return found


def users(store: Store, appimg: str, version: int) -> list[str]:
    """The realms that run on one version (the activation's users)."""
    return _users_by_version(store).get((appimg, version), [])


def image_users(store: Store, appimg: str) -> dict[int, list[str]]:
    """The realms that run on each block or sealed version of ``appimg``, by version, and the
    realm snapshots whose layer needs one (``NAME (snapshot LABEL)``): the versions that must
    stay (prune, remove). Snapshots do not keep a version activated."""
    found = {
        version: names
        for (name, version), names in _users_by_version(store).items()
        if name == appimg
    }
    for (realm, label), made in origin.snapshot_origins(store.realms_dir).items():
        if made.kind in IMAGE_KINDS and made.appimg == appimg:
            found.setdefault(made.appimg_version, []).append(f"{realm} (snapshot {label})")
    return found


def _mounted(path: Path) -> mounts.Mount | None:
    real = Path(os.path.realpath(path))
    return next((m for m in reversed(mounts.mounts()) if m.target == real), None)


def activate(store: Store, appimg: str, version: Version, image: Path) -> Activation:
    """Make the version usable (check, attach, mount) unless it is already; the caller holds
    the activation lock (:meth:`realms.store.Layout.activation_lock`)."""
    if version.kind not in IMAGE_KINDS:
        raise RealmsError(f"version {version.version} of appimg {appimg!r} is not an image")
    require_trusted(store, appimg, version, image)  # at every use, an existing activation too
    target = store.mountpoint(appimg, version.version)
    existing = _mounted(target)
    how = enforcement(store, version.kind)
    if existing is not None:
        return Activation(
            appimg,
            version.version,
            target,
            existing.source,
            how,
            users(store, appimg, version.version),
        )
    from realms.image import filesystem, keys, realmfs
    from realms.system.loop import attached

    header, _ = realmfs.read_header(image)
    keyring = keys.Keyring(store)
    # The signature always; every block too unless the kernel will check each read.
    title = f"Checking appimg {appimg} version {version.version}"
    with log.step(title + (" (every block)" if how == VerityMode.USERSPACE else "")):
        checks = realmfs.verify_image(image, keyring, data=how != VerityMode.KERNEL)
    realmfs.require(checks, f"appimg {appimg} version {version.version}")
    fstype = filesystem.detect(image, HEADER_SIZE) or "ext4"
    size = data_size(header.metainfo.nblocks or 0)
    target.mkdir(parents=True, exist_ok=True)
    with log.step(f"Activating appimg {appimg} version {version.version}"):
        if how == VerityMode.KERNEL:
            device = _open_verity(store, appimg, version.version, image, header)
        else:
            with attached(image, offset=HEADER_SIZE, size=size) as loop:
                run(["mount", "-t", fstype, "-o", "ro,nosuid,nodev", loop, target])
                device = loop
        if how == VerityMode.KERNEL:
            run(["mount", "-t", fstype, "-o", "ro,nosuid,nodev", device, target])
    return Activation(
        appimg, version.version, target, device, how, users(store, appimg, version.version)
    )


def _open_verity(store: Store, appimg: str, version: int, image: Path, header: Header) -> str:
    """Citadel's way: the loop device after the header (data and hash area), veritysetup open
    with the signed root hash and the hash area's offset on that device."""
    from realms.system.loop import attached

    meta = header.metainfo
    assert meta.verity_root is not None and meta.nblocks is not None
    name = store.verity_name(appimg, version)
    if Path(f"/dev/mapper/{name}").exists():  # left by a killed activation, unmounted
        run(["veritysetup", "close", name], check=False)
    with attached(image, offset=HEADER_SIZE) as loop:
        run(
            [
                "veritysetup",
                "open",
                loop,
                name,
                loop,
                meta.verity_root.hex(),
                f"--hash-offset={data_size(meta.nblocks)}",
            ]
        )
    return f"/dev/mapper/{name}"


def release(store: Store, appimg: str, version: int) -> bool:
    """Unmount the version's activation (the loop device goes with it); return whether there
    was one. The caller holds the activation lock and knows that no realm uses it."""
    target = store.mountpoint(appimg, version)
    mounted = _mounted(target)
    if mounted is None:
        if target.is_dir():
            target.rmdir()
        return False
    with log.step(f"Releasing appimg {appimg} version {version} (no realm uses it)"):
        run(["umount", target])
        if mounted.source.startswith("/dev/mapper/"):
            run(["veritysetup", "close", mounted.source.removeprefix("/dev/mapper/")], check=False)
        target.rmdir()
    return True


def release_unused(store: Store, appimg: str) -> None:
    """Release the appimg's activations that no realm uses (a killed command's leftovers)."""
    for found in activations(store):
        if found.appimg == appimg and not found.users:
            release(store, appimg, found.version)


def _kind(store: Store, appimg: str, number: int) -> ImageKind | None:
    try:
        version = load_record(store, appimg).version(number)
    except RealmsError:
        return None
    return version.kind if version else None


def activations(store: Store) -> list[Activation]:
    """Every activation of the store (mounted under ``active/``), with its users."""
    directory = Path(os.path.realpath(store.active_dir))
    by_version = _users_by_version(store)
    found = []
    for mount in mounts.mounts():
        if mount.target.parent != directory or ".v" not in mount.target.name:
            continue
        appimg, _, number = mount.target.name.rpartition(".v")
        if not number.isdigit():
            continue
        how = VerityMode.KERNEL if mount.source.startswith("/dev/mapper/") else VerityMode.USERSPACE
        if how == VerityMode.USERSPACE and _kind(store, appimg, int(number)) == ImageKind.BLOCK:
            how = VerityMode.NONE
        found.append(
            Activation(
                appimg,
                int(number),
                mount.target,
                mount.source,
                how,
                by_version.get((appimg, int(number)), []),
            )
        )
    return found


def require_trusted(store: Store, appimg: str, version: Version, image: Path) -> None:
    """Refuse a block or sealed version whose header, size or signature fails against the
    store's trust as it is now (a revoked key, say). Reads the image's header only, so that
    every use of a version (new, run, shell) can afford it; the data is checked at activation.
    """
    if version.kind not in IMAGE_KINDS:
        return
    from realms.image import keys, realmfs

    checks = realmfs.check_trust(image, keys.Keyring(store))
    failed = next((check for check in checks if not check.ok), None)
    if failed is None:
        return
    if "revoked" in failed.detail:
        hint = (
            "the key that signed it was revoked: seal or import a version signed by a trusted "
            "key and make realms on that one"
        )
    else:
        hint = f"'realms appimg verify {appimg} --version {version.version}' shows every check"
    raise InvalidInput(
        f"appimg {appimg} version {version.version}: {failed.name}: {failed.detail}", hint=hint
    )


def release_untrusted(store: Store) -> list[tuple[str, int]]:
    """Release every activation whose image no longer passes :func:`require_trusted` (its key
    was revoked) and on which no realm runs; return the (appimg, version) released. One on
    which a realm runs stays until it is next used or released: every use refuses it."""
    released = []
    for found in activations(store):
        with store.activation_lock(found.appimg):
            if any(store.is_running(user) for user in users(store, found.appimg, found.version)):
                continue
            try:
                version = load_record(store, found.appimg).version(found.version)
            except RealmsError:
                continue  # not ours to judge without its record
            if version is None:
                continue
            try:
                require_trusted(
                    store, found.appimg, version, store.version_path(found.appimg, version)
                )
                continue
            except RealmsError:
                pass
            try:
                release(store, found.appimg, found.version)
            except RealmsError as error:
                log.warn(f"appimg {found.appimg} version {found.version} stays active: {error}")
                continue
            released.append((found.appimg, found.version))
    return released
