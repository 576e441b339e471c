"""Realms: containers with their own root filesystem and home, made from an appimg version.

A realm lives in ``realms/NAME/``:

- ``rootfs/``: a writable clone (btrfs snapshot) of the appimg version it was made from. It is
  independent of the appimg afterwards: updating the appimg never changes it, and ``realms
  list`` shows it as outdated instead.
- ``home/``: bound at ``/home/user`` (uid and gid 1000), made from the store's ``skel/``.
- ``config``: the realm's settings, with Citadel's keys (see :mod:`realms.config`).
- ``origin.toml``: which appimg and version it came from (see :mod:`realms.origin`).

The default realm is the symlink ``default.realm`` in the store; the first realm made becomes the
default when there is none.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from realms import config, log, origin
from realms.errors import AlreadyExists, InvalidInput, NotFound, RealmsError
from realms.faults import checkpoint
from realms.kinds import IMAGE_KINDS, ImageKind, Isolation, RealmState
from realms.names import check_appimg_name, check_existing_realm_name, check_realm_name
from realms.store import Store, write_toml
from realms.store.layout import RealmFiles
from realms.system import idmap
from realms.system.fs import atomic_symlink, atomic_write, fsync_dir
from realms.units import now

if TYPE_CHECKING:
    from realms.container import Bind, Container, Overlay
    from realms.treeview import TreeView

# realms.activation and realms.container are imported by the functions that use them: a realm
# on a tree is made, listed and removed without them (a shorter start-up for those commands).

REALM_UID = 1000


class RealmInfo(NamedTuple):
    name: str
    origin: origin.Origin
    current_version: int | None
    """The appimg's current version, None when the appimg is gone."""
    default: bool
    running: bool
    path: Path
    isolation: Isolation | str
    """userns (the realm's root is an unprivileged host uid) or privileged; a note when the
    realm's config cannot be read."""
    state: RealmState = RealmState.STOPPED
    """A booted realm's state (:mod:`realms.lifecycle.state`); running also while a one-shot
    command runs in it (with no leader)."""
    leader_pid: int | None = None
    """A booted realm's init, as the host sees it."""
    address: str | None = None
    started: str | None = None
    """When the booted realm was started (ISO time)."""
    uptime: float | None = None
    """Seconds since its init started."""

    @property
    def outdated(self) -> bool:
        return (
            self.current_version is not None and self.current_version != self.origin.appimg_version
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "appimg": self.origin.appimg,
            "appimg_version": self.origin.appimg_version,
            "appimg_current_version": self.current_version,
            "outdated": self.outdated,
            "default": self.default,
            "running": self.running,
            "state": self.state,
            "leader_pid": self.leader_pid,
            "address": self.address,
            "started": self.started,
            "isolation": self.isolation,
            "uid_base": self.origin.uid_base,
            "kind": self.origin.kind,
            "created": self.origin.created,
            "path": str(self.path),
        }


def _exists(store: Store, name: str) -> bool:
    return store.realm(name).origin.exists()


def _require(store: Store, name: str) -> None:
    check_existing_realm_name(name)
    if not _exists(store, name):
        raise NotFound(f"no realm named {name!r}", hint="'realms list' shows the realms")


# The default realm


def default_realm(store: Store) -> str | None:
    """The default realm's name: the store's default.realm link, else the config's
    default-realm, if that realm exists."""
    try:
        name = os.path.basename(os.readlink(store.default_realm_link))
    except OSError:
        name = store.config.default_realm
    return name if name and _exists(store, name) else None


def set_default_realm(store: Store, name: str) -> None:
    store.sweep()
    with store.realm_lock(name, shared=True):
        _require(store, name)
        atomic_symlink(f"realms/{name}", store.default_realm_link)


# Listing


def _current_versions(store: Store, appimgs: set[str]) -> dict[str, int]:
    from realms.appimg.record import load_record

    result = {}
    for name in appimgs:
        try:
            result[name] = load_record(store, name).current
        except RealmsError:
            continue
    return result


def _infos(store: Store, origins: dict[str, origin.Origin]) -> list[RealmInfo]:
    from realms.lifecycle.state import runtime_fields

    current = _current_versions(store, {o.appimg for o in origins.values()})
    default = default_realm(store)
    infos = []
    for name, found in origins.items():
        booted = runtime_fields(store, name)
        running = booted is not None or store.is_running(name)
        infos.append(
            RealmInfo(
                name,
                found,
                current.get(found.appimg),
                name == default,
                running,
                store.realm_dir(name),
                _isolation(store, name),
                **(booted or ({"state": RealmState.RUNNING} if running else {})),
            )
        )
    return infos


def _isolation(store: Store, name: str) -> Isolation | str:
    try:
        return Isolation(realm_settings(store, name)["isolation"])
    except RealmsError:
        return "unknown (the realm's config is damaged)"


def list_realms(store: Store) -> list[RealmInfo]:
    return _infos(store, origin.all_origins(store.realms_dir))


def show_realm(store: Store, name: str) -> RealmInfo:
    _require(store, name)
    return _infos(store, {name: origin.load(store.realm_dir(name))})[0]


# Making and removing


def make_home(store: Store, home: Path) -> None:
    import shutil

    shutil.copytree(store.skel_dir, home, symlinks=True)
    for directory, subdirectories, files in os.walk(home):
        for entry in (directory, *(os.path.join(directory, n) for n in subdirectories + files)):
            os.lchown(entry, REALM_UID, REALM_UID)
    os.chmod(home, 0o700)


def new_realm(store: Store, name: str, appimg: str | None = None) -> RealmInfo:
    """Make realm ``name`` from the current version of ``appimg`` (default: the config's
    default-appimg)."""
    from realms.appimg.record import load_record

    check_realm_name(name)
    appimg = check_appimg_name(appimg or store.config.default_appimg)
    store.sweep()
    with store.realm_lock(name):
        if store.realm_dir(name).exists():
            raise AlreadyExists(f"realm {name!r} already exists")
        with store.appimg_lock(appimg, shared=True):
            record = load_record(store, appimg)
            version = record.current_version
            if store.config.require_sealed and version.kind != ImageKind.SEALED:
                raise RealmsError(
                    f"appimg {appimg!r} version {version.version} is not sealed, and the policy "
                    "require-sealed is on",
                    hint="seal it with 'realms appimg seal', or turn require-sealed off",
                )
            image = version.kind.is_image
            if image:
                from realms import activation

                # Checked and mounted first: a bad image stops here, before anything is made.
                with store.activation_lock(appimg):
                    activation.release_unused(store, appimg)
                    activation.activate(store, appimg, version, store.version_path(appimg, version))
                checkpoint("realm-new:activated")
            elif not store.backend.zero_cost:
                log.note(f"copy backend: copying appimg {appimg!r} (not a zero-cost snapshot)")
            with store.staging(store.realm_dir(name), f"realm {name!r}") as path:
                path.mkdir(mode=0o755)
                staged = RealmFiles(path)
                uid_base = _new_uid_base(store)
                if image:
                    for layer in (staged.rootfs, staged.upper, staged.work, staged.lower):
                        layer.mkdir(mode=0o755)
                    os.chown(staged.upper, uid_base, uid_base)
                else:
                    store.backend.clone(store.version_path(appimg, version), staged.rootfs)
                make_home(store, staged.home)
                template = config.commented_template(
                    config.REALM_SETTINGS,
                    f"realm {name}; unset keys fall back to [realm-defaults] in "
                    f"{store.config_path}",
                    {"realmfs": appimg},
                )
                atomic_write(staged.config, template)
                found = origin.Origin(appimg, version.version, version.kind, now(), uid_base)
                write_toml(staged.origin, found.to_toml())
                checkpoint("realm-new:staged")
    checkpoint("realm-new:renamed")
    if default_realm(store) is None:
        atomic_symlink(f"realms/{name}", store.default_realm_link)
    return show_realm(store, name)


def remove_realm(store: Store, name: str, *, keep_home: bool = False) -> Path | None:
    """Remove a realm; with ``keep_home`` move its home to ``removed/`` and return where."""
    store.sweep()
    with store.realm_lock(name):
        _require(store, name)
        directory = store.realm_dir(name)
        kept = None
        with store.run_lock(name):
            was_default = default_realm(store) == name
            if keep_home and store.realm(name).home.exists():
                kept = store.kept_home_path(name, now().replace(":", ""))
                os.rename(store.realm(name).home, kept)
                fsync_dir(store.removed_dir)
                checkpoint("realm-remove:home-kept")
            found = origin.load(directory)
            store.discard(directory)
        if was_default:
            store.default_realm_link.unlink(missing_ok=True)
    if found.kind in IMAGE_KINDS:
        from realms import activation

        with store.activation_lock(found.appimg):
            if not activation.users(store, found.appimg, found.appimg_version):
                activation.release(store, found.appimg, found.appimg_version)
    return kept


@contextmanager
def running(store: Store, name: str) -> Iterator[Path]:
    """Hold realm ``name`` as running for the block: it cannot be removed, nor run twice."""
    with ExitStack() as stack:
        # The realm lock is held only while the run lock is taken, so that a removal sees
        # either a running realm or none, and long runs do not block other realm commands.
        with store.realm_lock(name, shared=True):
            _require(store, name)
            stack.enter_context(store.run_lock(name))
        yield store.realm_dir(name)


def realm_settings(store: Store, name: str) -> dict[str, Any]:
    return config.load_realm(store.realm(name).config, store.config.realm_defaults)


# Running


def _bind_target(name: str, key: str, entry: str, target: str) -> str:
    """A bind's target inside the realm: absolute, normalized, and never the root itself (a
    host tree over the realm's / would hand it the host's files as its system)."""
    normal = os.path.normpath(target)
    if not target.startswith("/") or ".." in target.split("/"):
        raise InvalidInput(
            f"realm {name}: {key}: {entry!r}: the target must be an absolute path without '..'"
        )
    if normal in ("/", "//"):
        raise InvalidInput(f"realm {name}: {key}: {entry!r}: cannot bind over the realm's root")
    return normal


def _binds(
    store: Store, name: str, settings: dict[str, Any], uid_base: int
) -> tuple[list[Bind], list[tuple[Path, str]]]:
    """The bind mounts that the realm's settings ask for and the tmpfs mounts made for them;
    ``uid_base`` is the host uid of the realm's root (0 for a privileged realm)."""
    from realms.container import REALM_HOME, Bind

    binds: list[Bind] = []
    tmpfs: list[tuple[Path, str]] = []
    if settings["use-ephemeral-home"]:
        # A tmpfs of the container's own, owned by the realm's user as the host sees it
        # (nspawn's --tmpfs would give it to the realm's root).
        home = store.realm(name).ephemeral_home
        home.mkdir(mode=0o700, exist_ok=True)
        owner = uid_base + REALM_UID
        tmpfs.append((home, f"mode=0700,uid={owner},gid={owner}"))
        binds.append(Bind(home, REALM_HOME))
    else:
        binds.append(Bind(store.realm(name).home, REALM_HOME, idmap=True))
    if settings["use-shared-dir"]:
        binds.append(Bind(store.shared_dir, f"{REALM_HOME}/Shared", idmap=True))
    optional = [
        ("use-kvm", Path("/dev/kvm"), False),
        ("use-gpu", Path("/dev/dri"), False),
        ("use-sound", Path(f"/run/user/{REALM_UID}/pulse"), False),
        ("use-x11", Path("/tmp/.X11-unix"), True),
        ("use-wayland", Path(f"/run/user/{REALM_UID}/wayland-0"), False),
    ]
    for key, path, readonly in optional:
        if settings[key]:
            if path.exists():
                binds.append(Bind(path, str(path), readonly))
            else:
                log.warn(f"realm {name}: {key} is set but {path} does not exist on this host")
    for key, readonly in (("extra-bindmounts", False), ("extra-bindmounts-ro", True)):
        for entry in settings[key]:
            source, _, target = entry.partition(":")
            if not source.startswith("/"):
                raise InvalidInput(f"realm {name}: {key}: {entry!r} is not an absolute path")
            target = _bind_target(name, key, entry, target or source)
            if not Path(source).exists():
                raise InvalidInput(f"realm {name}: {key}: {source} does not exist")
            binds.append(Bind(Path(source), target, readonly))
    return binds, tmpfs


def _image_layers(
    store: Store, name: str, found: origin.Origin, settings: dict[str, Any], userns: bool
) -> tuple[Overlay | None, TreeView]:
    """For a realm on a block or sealed version: its overlay (the activated image below, the
    realm's layer above) and the view of its files before it runs (passwd, locale)."""
    from realms import activation
    from realms.appimg.record import load_record
    from realms.container import Overlay
    from realms.treeview import TreeView

    with store.appimg_lock(found.appimg, shared=True):
        record = load_record(store, found.appimg)
        version = record.version(found.appimg_version)
        if version is None:
            raise RealmsError(
                f"realm {name!r} was made from version {found.appimg_version} of appimg "
                f"{found.appimg!r}, which is gone"
            )
        with store.activation_lock(found.appimg):
            active = activation.activate(
                store, found.appimg, version, store.version_path(found.appimg, version)
            )
    files = store.realm(name)
    mode = settings["overlay"]
    if mode == "none":
        return None, TreeView([active.mountpoint])
    tmpfs = files.tmpfs if mode == "tmpfs" else None
    if tmpfs is not None:
        tmpfs.mkdir(exist_ok=True)
        view = TreeView([active.mountpoint])
    else:
        _own_layer(files.upper, found.uid_base if userns else 0)
        view = TreeView([files.upper, active.mountpoint])
    lower_view = files.lower
    lower_view.mkdir(exist_ok=True)
    layers = Overlay(
        active.mountpoint,
        files.upper,
        files.work,
        tmpfs,
        lower_view if userns else None,
    )
    return layers, view


def _own_layer(upper: Path, base: int | None) -> None:
    """Give the realm's writable layer to the uid range it runs in: its root's files belong to
    the realm's host range in a user namespace, to host root otherwise (a layer written in the
    other mode, or before realms used user namespaces, is shifted once)."""
    assert base is not None
    owner = os.lstat(upper).st_uid
    current = owner - owner % idmap.RANGE_SIZE if owner >= idmap.RANGE_SIZE else 0
    if current != base:
        with log.step(f"Moving the files of {upper} into uid range {base}"):
            idmap.shift_owners(upper, current, base)


def _new_uid_base(store: Store) -> int:
    """A uid range for a realm: none that another realm of the store has."""
    made = origin.all_origins(store.realms_dir).values()
    return idmap.pick_base(found.uid_base for found in made if found.uid_base is not None)


def _ensure_uid_base(store: Store, name: str, found: origin.Origin) -> origin.Origin:
    """The realm's origin with a uid range (one is given to a realm made before realms used
    user namespaces); the caller holds the realm as running."""
    if found.uid_base is not None:
        return found
    found = found._replace(uid_base=_new_uid_base(store))
    write_toml(store.realm(name).origin, found.to_toml())
    return found


def run_in_realm(store: Store, name: str, command: list[str], *, root: bool = False) -> int:
    """Run ``command`` (a login shell when empty) in realm ``name``; return its exit status.

    It runs as the realm's user (uid 1000, in /home/user) unless ``root``, in a user namespace
    of the realm's own uid range unless its config says ``isolation = "privileged"``. A realm
    on a block or sealed version runs on an overlay of the activated image (checked first, see
    :mod:`realms.activation`) and its own writable layer. A booted realm that is running is
    joined instead (:mod:`realms.lifecycle.join`): the command runs among its processes.
    """
    from realms.container import run as run_container
    from realms.lifecycle.join import join_realm

    with store.realm_lock(name, shared=True):
        _require(store, name)
    joined = join_realm(store, name, command, root=root)
    if joined is not None:
        return joined
    with running(store, name) as directory:
        container, _view = realm_container(store, name, directory, command, root=root)
        return run_container(container)


def realm_container(
    store: Store, name: str, directory: Path, command: list[str], *, root: bool
) -> tuple[Container, TreeView]:
    """Realm ``name``'s container for ``command`` (with ``root``, as root; else as its user),
    and its files as they will be seen; the caller holds the realm as running. A booted realm
    (:mod:`realms.lifecycle`) takes the same container with root and no command."""
    from realms.container import REALM_HOME, Container
    from realms.treeview import TreeView, check_os_tree, default_locale, user_of_uid

    settings = realm_settings(store, name)
    found = _ensure_uid_base(store, name, origin.load(directory))
    userns = settings["isolation"] == Isolation.USERNS
    rootfs = RealmFiles(directory).rootfs
    overlay = None
    view = TreeView([rootfs])
    if found.kind in IMAGE_KINDS:
        overlay, view = _image_layers(store, name, found, settings, userns)
        if overlay is None:
            rootfs = view.layers[0]  # overlay = "none": the image itself, read-only
    check_os_tree(view, f"the root filesystem of realm {name!r}")
    user = None
    if not root:
        user = user_of_uid(view, REALM_UID)
        if user is None:
            raise RealmsError(
                f"realm {name!r} has no user with uid {REALM_UID} in its /etc/passwd",
                hint="run as root with --root, or make the appimg with a user",
            )
    uid_base = found.uid_base if userns and found.uid_base is not None else 0
    binds, tmpfs = _binds(store, name, settings, uid_base)
    lang = default_locale(view)
    container = Container(
        rootfs=rootfs,
        machine=name,
        command=command,
        user=user,
        binds=binds,
        scratch=tmpfs,
        private_network=not settings["use-network"],
        workdir=REALM_HOME if user else None,
        environment={"LANG": lang} if lang else {},
        overlay=overlay,
        read_only=found.kind in IMAGE_KINDS and overlay is None,
        private_users=uid_base if userns else None,
    )
    return container, view
