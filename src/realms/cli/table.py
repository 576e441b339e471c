"""The command table: every command of ``realms``, declared once.

Each :class:`Command` names its words (``("appimg", "seal")``), its help and description, its
arguments with their types, choices, defaults and metavars, whether it needs root, and the
handler that runs it. Everything else is made from this table: the argparse parser
(:mod:`realms.cli.parser`, so ``realms --help`` and every command's help), the README's command
table, the bash and zsh completions and the man page (:mod:`realms.cli.generate`).

A new command is one entry here plus one handler (a function in a ``handlers_*`` module that
calls one function of :mod:`realms.api`); then ``python -m realms.cli.generate`` writes the
documents again. This module imports nothing of realms: ``realms --help`` and ``--version``
start without loading the API.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Complete = Literal["appimg", "realm", "channel", "file", "dir"]
"""What a shell completes an argument's value from: names in the store, or files."""


class Arg(NamedTuple):
    """One argument: a positional (``name``) or an option (``--pool-size``, ``-v --verbose``)."""

    name: str
    help: str | None = None
    type: type[str] | type[int] = str
    flag: bool = False
    """An option without a value (store_true)."""
    optional: bool = False
    """A positional that may be left out."""
    choices: tuple[str, ...] = ()
    default: str | None = None
    metavar: str | None = None
    short: str | None = None
    """The one-letter form of an option (``-v``)."""
    exclusive: str | None = None
    """Options with the same value here are mutually exclusive."""
    complete: Complete | None = None

    @property
    def positional(self) -> bool:
        return not self.name.startswith("-")

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    @property
    def value_name(self) -> str:
        """How the value is written in a synopsis: CONFIG, NAME, SIZE, ext4|erofs."""
        if self.choices:
            return "|".join(self.choices)
        return self.metavar or self.dest.upper()


class Group(NamedTuple):
    """A word that groups commands (``appimg``, ``key``)."""

    path: tuple[str, ...]
    help: str
    description: str
    default_command: str | None = None
    """The command that runs when the word after the group is none of its commands
    (``realms snapshot NAME`` is ``realms snapshot take NAME``)."""


class Command(NamedTuple):
    path: tuple[str, ...]
    help: str
    handler: str
    """``module.function`` below realms.cli, imported only when the command runs."""
    description: str = ""
    args: tuple[Arg, ...] = ()
    trailing: Literal["required", "optional"] | None = None
    """Whether everything after ``--`` is a command to run (always its own, never options)."""
    needs_root: bool = True
    root_free_flag: str | None = None
    """An option with which the command needs no root (``build --new`` only writes a file)."""
    constants: tuple[tuple[str, bool], ...] = ()
    """Values the handler gets without an argument (``pin`` and ``unpin`` share one handler)."""
    usage: str | None = None
    """argparse's usage line, when the one it makes cannot say it (``-- COMMAND``)."""

    @property
    def name(self) -> str:
        return " ".join(self.path)

    def needs_root_with(self, flags: dict[str, object]) -> bool:
        if not self.needs_root:
            return False
        return not (self.root_free_flag is not None and flags.get(self.root_free_flag))


JSON = Arg("--json", "print JSON with stable keys", flag=True)
NAME_APPIMG = Arg("name", complete="appimg")
NAME_REALM = Arg("name", complete="realm")
VERSION_OPTION = Arg("--version", "default: the current version", type=int)
TLS_VERIFY = Arg(
    "--tls-verify",
    "check the registry's TLS certificate (default true; false also allows plain http); "
    "default: what /etc/containers/registries.conf says of the registry, else true",
    choices=("true", "false"),
)

GLOBAL_OPTIONS: tuple[Arg, ...] = (
    Arg(
        "--store",
        "the store directory (default: $REALMS_STORE, else /var/lib/realms)",
        metavar="DIR",
        complete="dir",
    ),
    Arg("--verbose", "also show every external command that runs", flag=True, short="-v"),
    Arg("--quiet", "show only errors, warnings and results", flag=True, short="-q"),
)
"""Accepted before or after the command."""

PROGRAM_DESCRIPTION = "Application images (appimgs) and the realms (containers) made from them."

COMMANDS: tuple[Group | Command, ...] = (
    Command(
        ("init",),
        "prepare the store (safe to run again)",
        "realm_handlers.init",
        "Prepare the store. If its directory is on btrfs it is used as it is; otherwise a btrfs "
        "filesystem is made in a sparse image file beside it (DIR.pool.img) and mounted on it. "
        "Run again, it changes nothing, or mounts that pool again after a reboot.",
        (
            Arg(
                "--pool-size",
                "size of a new pool image (sparse: it takes only what is used; default 32G)",
                default="32G",
                metavar="SIZE",
            ),
            Arg(
                "--backend",
                "btrfs (snapshots; a pool image if the directory is not on btrfs), copy (plain "
                "directories, realms made with cp --reflink=auto), or auto (btrfs; default)",
                choices=("auto", "btrfs", "copy"),
                default="auto",
            ),
        ),
    ),
    Command(
        ("status",),
        "show the store, its backend, the kernel's features and the verity enforcement",
        "realm_handlers.status",
        args=(JSON,),
    ),
    Group(
        ("appimg",),
        "manage application images",
        "Manage application images: the root filesystems realms are made from.",
    ),
    Command(("appimg", "list"), "list appimgs", "appimg_handlers.list_", args=(JSON,)),
    Command(
        ("appimg", "show"),
        "show an appimg: its versions and the realms made from it",
        "appimg_handlers.show",
        args=(NAME_APPIMG, JSON),
    ),
    Command(
        ("appimg", "import"),
        "import a directory or a root filesystem tarball as an appimg",
        "appimg_handlers.import_",
        "Import SOURCE as a new appimg of kind tree: a directory (copied with cp -a) or a "
        "tarball (.tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2; every entry is checked first, "
        "then it is extracted keeping ownership, modes, xattrs, links and device nodes). The "
        "result becomes read-only version 1.",
        (
            NAME_APPIMG,
            Arg("source", "a directory or a tarball", complete="file"),
            Arg(
                "--new-version",
                "import as the next version of the existing appimg NAME (realms made before "
                "keep their version)",
                flag=True,
            ),
        ),
    ),
    Command(
        ("appimg", "build"),
        "build a Debian-based appimg from a declarative config (default: base)",
        "appimg_handlers.build",
        "Build a tree appimg from CONFIG (a TOML file; without one, the default appimg base: "
        "Debian trixie with a user 'user', uid 1000) and commit it as the appimg's new current "
        "version, or write it to --output. Downloaded packages and finished builds are cached "
        "in the store: a build whose inputs (config, the files and scripts it names, release, "
        "mirror, packages) did not change reuses its result. The log of every build is kept in "
        "the store's logs/ directory.",
        (
            Arg("config", "the build config", optional=True, metavar="CONFIG", complete="file"),
            Arg(
                "--name",
                "the appimg to build (default: the config's name)",
                complete="appimg",
            ),
            Arg(
                "--new",
                "write a commented template config to CONFIG (default: build.toml) and stop",
                flag=True,
            ),
            Arg(
                "--output",
                "write the result as a tarball (.tar, .tar.gz, .tar.xz, .tar.zst), not a version",
                metavar="FILE",
                complete="file",
            ),
            Arg(
                "--rebuild",
                "build every stage again, even when the inputs did not change",
                flag=True,
            ),
            Arg(
                "--offline",
                "ask no mirror: use the newest cached build of the config and say how old its "
                "mirror state is",
                flag=True,
            ),
            Arg(
                "--explain",
                "print first, on stdout, which stages (bootstrap, packages) hit or miss the cache "
                "and why, in words (which input changed); then build as usual",
                flag=True,
            ),
        ),
        root_free_flag="new",
    ),
    Command(
        ("appimg", "seal"),
        "make a sealed version (dm-verity, signed) from the current tree version",
        "appimg_handlers.seal",
        "Make a new version from the appimg's current tree version: a filesystem image (ext4, "
        "or erofs: smaller, compressed) in Citadel's RealmFS layout, with a dm-verity hash tree "
        "over it (fresh random salt) and its metainfo signed with the channel's key, and make "
        "it current. --no-verity makes a plain, unsigned block version instead.",
        (
            NAME_APPIMG,
            Arg(
                "--channel",
                "the signing key's channel (default: realmfs-user)",
                complete="channel",
            ),
            Arg("--fs", "default: ext4", choices=("ext4", "erofs"), default="ext4"),
            Arg("--no-verity", "a block version: no hash tree, no signature", flag=True),
            Arg(
                "--salt",
                "the dm-verity salt, 64 hex characters (default: random); with the same tree "
                "and salt the image is the same",
                metavar="HEX",
            ),
        ),
    ),
    Command(
        ("appimg", "diff"),
        "list the files added, removed and changed between two versions",
        "diff_handlers.diff",
        "Compare two versions of appimg NAME (trees, block or sealed images, in any mix): "
        "the paths added, removed, and changed, with what changed (type, content, mode, "
        "owner, mtime, xattrs, symlink target). Exits 0 whether or not they differ.",
        (
            NAME_APPIMG,
            Arg("v1", "the older version", type=int),
            Arg("v2", "the newer version", type=int),
            JSON,
        ),
    ),
    Command(
        ("appimg", "verify"),
        "check a version: header, signature against trusted keys, every data and hash block",
        "appimg_handlers.verify",
        "Check a version (default: the current one). For an image: the header byte for byte, "
        "the size, the signature against the trusted and unrevoked keys of its channel, the "
        "filesystem, and every data and hash block (the first bad one is named). Exits 1 when "
        "a check fails.",
        (NAME_APPIMG, VERSION_OPTION, JSON),
    ),
    Command(
        ("appimg", "export"),
        "write a version to a file: an image version as its image, a tree as a tarball",
        "appimg_handlers.export",
        args=(
            NAME_APPIMG,
            Arg(
                "file",
                "for a tree version: .tar, .tar.gz, .tar.xz or .tar.zst",
                complete="file",
            ),
            VERSION_OPTION,
        ),
    ),
    Command(
        ("appimg", "versions"),
        "list an appimg's versions: when and how each was made, what it changed, pins",
        "appimg_handlers.versions",
        args=(NAME_APPIMG, JSON),
    ),
    Command(
        ("appimg", "rollback"),
        "make an earlier version current again (recorded in the appimg's history)",
        "appimg_handlers.rollback",
        "Make VERSION (default: the newest version older than the current one) the current "
        "version: new realms are made from it. Nothing is deleted; realms are not changed.",
        (NAME_APPIMG, Arg("version", type=int, optional=True)),
    ),
    Command(
        ("appimg", "prune"),
        "delete old versions, never the current one, pinned ones, or images realms run on",
        "appimg_handlers.prune",
        "Delete all but the N newest versions of the appimg (N: --keep, else keep-versions of "
        "the config, 3). The current version, pinned versions and block or sealed versions "
        "that realms run on are always kept; realms made from deleted tree versions keep "
        "working (their root filesystems are their own).",
        (NAME_APPIMG, Arg("--keep", "how many versions to keep", type=int, metavar="N")),
    ),
    Command(
        ("appimg", "pin"),
        "keep a version from being pruned",
        "appimg_handlers.pin",
        args=(NAME_APPIMG, Arg("version", type=int)),
        constants=(("pinned", True),),
    ),
    Command(
        ("appimg", "unpin"),
        "let a pinned version be pruned again",
        "appimg_handlers.pin",
        args=(NAME_APPIMG, Arg("version", type=int)),
        constants=(("pinned", False),),
    ),
    Command(
        ("appimg", "remove"),
        "remove an appimg and all its versions (refused while realms run on its images; "
        "realms made from its tree versions keep working)",
        "appimg_handlers.remove",
        args=(NAME_APPIMG,),
    ),
    Command(
        ("appimg", "pull"),
        "pull an image from an OCI registry as an appimg's new version, or pull again",
        "appimg_handlers.pull",
        "Pull SOURCE: a registry reference (HOST[:PORT]/PATH[:TAG][@sha256:HEX]) becomes a new "
        "version of appimg NAME (default: the last part of PATH). A container image's layers "
        "are applied in order, with OCI whiteouts, into a tree version, checked like a tarball "
        "import; a realms artifact (a block or sealed image) is checked like an image file "
        "import, and a delta is used when a version it applies to is here. Every blob is "
        "checked against its digest; finished blobs are kept in the store, so an interrupted "
        "pull resumes. SOURCE the name of a pulled appimg: pull again from its reference. "
        "Nothing is pulled when the registry's digest is the one pulled last.",
        (
            Arg(
                "source",
                "a registry reference, or the name of a pulled appimg",
                optional=True,
                metavar="REF|NAME",
            ),
            Arg("--name", "the appimg to pull into (default: the reference's last path part)"),
            Arg(
                "--platform",
                "OS/ARCH[/VARIANT] to pick from a multi-platform image (default: this host's)",
            ),
            Arg("--all", "pull again every appimg whose reference has moved", flag=True),
            TLS_VERIFY,
            JSON,
        ),
    ),
    Command(
        ("appimg", "push"),
        "push a version to an OCI registry: a tree as a container image, an image as an artifact",
        "appimg_handlers.push",
        "Push a version of appimg NAME (default: the current one) to REF. A tree version "
        "becomes an OCI image that podman, docker and skopeo run; when its parent version was "
        "pushed to the same repository, only a layer of the changed files is added to the "
        "parent's layers. A block or sealed version becomes an OCI artifact holding its image "
        "file (with its signature), plus deltas against the two versions pushed before it. "
        "Blobs the registry has are not sent again.",
        (
            NAME_APPIMG,
            Arg("ref", "HOST[:PORT]/PATH[:TAG] (default tag: vN, the version's number)"),
            VERSION_OPTION,
            TLS_VERIFY,
            JSON,
        ),
    ),
    Command(
        ("appimg", "outdated"),
        "list pulled appimgs whose registry reference now names another image",
        "appimg_handlers.outdated",
        "Ask each pulled appimg's registry for the digest its reference names now, and list "
        "those that moved ('realms appimg pull --all' pulls them) and those whose registry "
        "could not be asked (with why).",
        (TLS_VERIFY, JSON),
    ),
    Group(
        ("registry",),
        "log in to OCI registries",
        "Credentials for OCI registries, kept where podman, skopeo and docker keep them.",
    ),
    Command(
        ("registry", "login"),
        "check and keep credentials for a registry",
        "registry_handlers.login",
        "Check USERNAME and the password read from standard input against registry HOST, then "
        "keep them in ${XDG_RUNTIME_DIR}/containers/auth.json (or $REGISTRY_AUTH_FILE), as "
        "podman login does. Without --username, ask on the terminal.",
        (
            Arg("host", "HOST[:PORT]"),
            Arg("--username", metavar="USER"),
            Arg("--password-stdin", "read the password from standard input", flag=True),
            TLS_VERIFY,
        ),
    ),
    Command(
        ("registry", "logout"),
        "forget the credentials kept for a registry",
        "registry_handlers.logout",
        args=(Arg("host", "HOST[:PORT]"),),
    ),
    Group(
        ("key",),
        "manage signing keys and trusted keys",
        "Ed25519 keys that sign sealed images, per channel; several trusted keys per channel, "
        "and revocation.",
    ),
    Command(
        ("key", "generate"),
        "make the channel's signing key (kept mode 0600 in the store) and trust it",
        "key_handlers.generate",
        args=(
            Arg("channel", complete="channel"),
            Arg(
                "--replace",
                "replace the channel's signing key; the old public key stays trusted until revoked",
                flag=True,
            ),
        ),
    ),
    Command(("key", "list"), "list trusted and revoked keys", "key_handlers.list_", args=(JSON,)),
    Command(
        ("key", "export"),
        "print the channel's public key in hex",
        "key_handlers.export",
        args=(Arg("channel", complete="channel"),),
    ),
    Command(
        ("key", "trust"),
        "trust a public key for a channel (several may be)",
        "key_handlers.trust",
        args=(
            Arg("channel", complete="channel"),
            Arg("pubkey", "64 hex characters, or a file holding them", complete="file"),
        ),
    ),
    Command(
        ("key", "revoke"),
        "revoke a public key: every image it signed fails verification",
        "key_handlers.revoke",
        args=(Arg("pubkey", "64 hex characters, or a file holding them", complete="file"),),
    ),
    Command(
        ("update-appimg",),
        "change an appimg in a container with a root shell (or a command); exit 0 commits",
        "appimg_handlers.update",
        "Open a root shell (or run COMMAND) in a container on a working snapshot of the appimg's "
        "current version (NAME: default-appimg of the config), with the host's network. When "
        "it exits with status 0 the snapshot becomes the appimg's new current version; any "
        "other status, --discard, or realms being stopped or killed leaves the appimg as it "
        "was. Realms are never changed: realms made before show as outdated. The exit status "
        "is passed through. An update commits only on the version it started from: if another "
        "version became current while it ran (an import, a build, a seal, a rollback), "
        "nothing is committed and its tree is kept (appimg/NAME/kept-update, shown by "
        "'realms appimg versions') until --commit-kept commits it anyway as the next version "
        "or --discard-kept deletes it; no other update of the appimg starts meanwhile.",
        (
            Arg("name", "default: the default appimg", optional=True, complete="appimg"),
            Arg("--discard", "never commit: a scratch session on a copy", flag=True),
            Arg(
                "--commit-kept",
                "commit the kept update (one refused because another version became current "
                "while it ran) anyway, as the next version",
                flag=True,
                exclusive="kept",
            ),
            Arg("--discard-kept", "delete the kept update", flag=True, exclusive="kept"),
        ),
        trailing="optional",
        usage="realms update-appimg [-h] [--discard] [NAME] [-- COMMAND [ARG ...]]\n"
        "       realms update-appimg [-h] [NAME] --commit-kept | --discard-kept",
    ),
    Command(
        ("new",),
        "make a realm from an appimg",
        "realm_handlers.new",
        "Make a realm from the appimg's current version, with a home made from the store's "
        "skel/. From a tree version, its root filesystem is a writable snapshot (zero cost on "
        "btrfs); from a block or sealed version, a writable layer over the image, which is "
        "checked (sealed: signature, and dm-verity or every block) and mounted once for all "
        "the realms made from it. The first realm becomes the default realm.",
        (
            Arg("name"),
            Arg(
                "--appimg",
                "default: default-appimg in the config (base)",
                metavar="APPIMG",
                complete="appimg",
            ),
        ),
    ),
    Command(
        ("list",),
        "list realms, their appimg version, and whether it is outdated",
        "realm_handlers.list_",
        args=(JSON,),
    ),
    Command(("show",), "show a realm", "realm_handlers.show", args=(NAME_REALM, JSON)),
    Command(
        ("remove",),
        "remove a realm (refused while something runs in it)",
        "realm_handlers.remove",
        args=(
            NAME_REALM,
            Arg(
                "--keep-home",
                "move the realm's home to the store's removed/ directory instead of deleting it",
                flag=True,
            ),
        ),
    ),
    Command(
        ("start",),
        "boot a realm's init in the background and wait until it is ready",
        "realm_handlers.start",
        "Boot realm NAME: its init (systemd) runs as PID 1 of the container "
        "(systemd-nspawn --boot), supervised in the background; the command returns once the "
        "realm reports ready, or fails after --timeout with the end of its console log (the "
        "realm is stopped then). The realms it requires start first. --autostart starts "
        "every realm whose config says autostart = true, in order.",
        (
            Arg("name", optional=True, complete="realm"),
            Arg("--autostart", "start every realm with autostart = true", flag=True),
            Arg("--timeout", "seconds to wait for ready (default 30)", type=int, metavar="S"),
        ),
    ),
    Command(
        ("stop",),
        "shut a running realm down (its init first, then SIGKILL after the timeout)",
        "realm_handlers.stop",
        "Ask the realm's init to power off and wait; after --timeout seconds (default 10) "
        "every process of the realm is killed. A realm that running realms require is refused "
        "unless --force, which stops those first.",
        (
            NAME_REALM,
            Arg("--timeout", "seconds before SIGKILL (default 10)", type=int, metavar="S"),
            Arg("--force", "stop the realms that require it first", flag=True),
        ),
    ),
    Command(
        ("restart",),
        "stop a running realm and start it again",
        "realm_handlers.restart",
        args=(NAME_REALM,),
    ),
    Command(
        ("current",),
        "print the current realm, or make NAME current (starting it if it boots)",
        "realm_handlers.current",
        "The current realm is the one shell and run use without a name. It is kept in "
        "/run/realms, so it goes back to the default realm when the host boots.",
        (Arg("name", optional=True, complete="realm"),),
    ),
    Command(
        ("shell",),
        "open a login shell in a realm (as the realm's user, uid 1000, unless --root)",
        "realm_handlers.shell",
        args=(
            Arg(
                "name",
                "default: the current realm, else the default realm",
                optional=True,
                complete="realm",
            ),
            Arg("--root", "a root shell", flag=True),
        ),
    ),
    Command(
        ("run",),
        "run a command in a realm and pass its exit status through",
        "realm_handlers.run",
        "Run COMMAND in realm NAME (default: the current realm, else the default realm) with "
        "systemd-nspawn, as the realm's user (uid 1000, in /home/user) unless --root. Its exit "
        "status becomes realms' exit status.",
        (
            Arg("name", "default: the current realm", optional=True, complete="realm"),
            Arg("--root", "run as root", flag=True),
        ),
        trailing="required",
        usage="realms run [-h] [--root] [NAME] -- COMMAND [ARG ...]",
    ),
    Command(
        ("default",),
        "print the default realm, or set it to NAME",
        "realm_handlers.default",
        args=(Arg("name", optional=True, complete="realm"),),
    ),
    Command(
        ("config",),
        "print a realm's settings, one setting, or set one",
        "config_handlers.config",
        "Without KEY, print every setting of realm NAME (its config file over the global "
        "[realm-defaults]); with KEY, that setting; with KEY VALUE, set it (VALUE is TOML: "
        'true, 3, "text", ["a", "b"]; a bare word is a string), checked as the file '
        "is. --unset KEY goes back to the default. The realm's config file stays editable by "
        "hand.",
        (
            NAME_REALM,
            Arg("key", optional=True),
            Arg("value", optional=True),
            Arg("--unset", "remove KEY from the realm's config", metavar="KEY"),
            JSON,
        ),
    ),
    Command(
        ("rebase",),
        "give a realm a fresh root from its appimg's current version, keeping its state",
        "rootfs_handlers.rebase",
        "Replace realm NAME's root filesystem with one made from its appimg's current version "
        "(or --to VERSION), carrying over its state: the paths its config's keep setting "
        "names (default: machine-id and ssh host keys); the home and config are not in the "
        "root and stay as they are. The old root is kept as the realm's snapshot "
        "'pre-rebase', which --undo goes back to. Refused while the realm runs, unless "
        "--restart (stop, rebase, start). --all-outdated rebases every outdated realm.",
        (
            Arg("name", optional=True, complete="realm"),
            Arg(
                "--to", "the appimg version (default: the current one)", type=int, metavar="VERSION"
            ),
            Arg("--undo", "go back to the root from before the last rebase", flag=True),
            Arg("--restart", "stop a running realm first and start it again after", flag=True),
            Arg("--all-outdated", "rebase every outdated realm and report each", flag=True),
            JSON,
        ),
    ),
    Group(
        ("snapshot",),
        "take, list and remove snapshots of a realm's root filesystem",
        "Snapshots of a realm's root filesystem (instant on btrfs). 'realms snapshot NAME "
        "[LABEL]' takes one; the realm's keep-snapshots setting bounds how many are kept "
        "(the oldest go first). 'realms restore NAME LABEL' goes back to one.",
        default_command="take",
    ),
    Command(
        ("snapshot", "take"),
        "snapshot a realm's root filesystem (LABEL: default the date and time)",
        "rootfs_handlers.snapshot_take",
        args=(NAME_REALM, Arg("label", optional=True)),
    ),
    Command(
        ("snapshot", "list"),
        "list a realm's snapshots",
        "rootfs_handlers.snapshot_list",
        args=(NAME_REALM, JSON),
    ),
    Command(
        ("snapshot", "remove"),
        "remove a snapshot of a realm",
        "rootfs_handlers.snapshot_remove",
        args=(NAME_REALM, Arg("label")),
    ),
    Command(
        ("restore",),
        "give a realm back the root filesystem of one of its snapshots",
        "rootfs_handlers.restore",
        "Make snapshot LABEL realm NAME's root filesystem again; the root it replaces is kept "
        "as the snapshot 'pre-restore'. Refused while the realm runs.",
        (NAME_REALM, Arg("label")),
    ),
    Command(
        ("df",),
        "show the disk space each appimg version, realm, cache and leftover holds",
        "usage_handlers.df",
        "For every appimg version and realm: the bytes it holds alone (exclusive) and the "
        "bytes it shares with others, measured with btrfs qgroups where they are enabled and "
        "'btrfs filesystem du' otherwise, except that a realm's root or an updated version is "
        "measured from what changed in it since its snapshot was made (its shared bytes "
        "estimated; the output says which); then the caches, the leftovers, and what "
        "'realms gc' would free.",
        (JSON,),
    ),
    Command(
        ("gc",),
        "free unreferenced cache entries, old unpinned versions beyond the keep count, "
        "stale blobs and leftovers",
        "usage_handlers.gc",
        args=(Arg("--dry-run", "say what would be freed, free nothing", flag=True), JSON),
    ),
    Command(
        ("check",),
        "check the store against its records; --repair fixes what it can without losing data",
        "check_handlers.check",
        "Check every record of the store against what is on disk: versions, subvolumes, "
        "image files, realm roots and upper layers, activations and their counts, loop "
        "devices, mounts, locks, leftovers, keys and their modes, the trust store. Each "
        "problem is one line with what --repair would do; --repair does it (an orphaned "
        "realm root is moved to removed/, never deleted). Exits 1 when problems remain.",
        (Arg("--repair", "fix what can be fixed without losing data", flag=True), JSON),
    ),
)


def commands() -> list[Command]:
    return [entry for entry in COMMANDS if isinstance(entry, Command)]


def trailing_words() -> set[str]:
    """The words after which ``--`` starts a command to run (``run``, ``update-appimg``)."""
    return {entry.path[-1] for entry in commands() if entry.trailing}
