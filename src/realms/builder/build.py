"""``realms appimg build``: the stages in order, the cache, and the commit.

1. The config is read and checked, and the digest of the build's inputs computed.
2. If the appimg's current version was built from the same inputs, there is nothing to do; if a
   cached result has them, it becomes the new version (a snapshot: seconds, not minutes).
   ``rebuild`` skips both (the mirror's content is not an input: rebuild to pick up new
   package versions).
3. Otherwise the image is built in ``STORE/build/.new.NAME.RANDOM``: bootstrap, the modules
   before the packages, apt update/upgrade/install, the files, the modules after, and a final
   cleanup. Only the bootstrapper runs on the host; everything else runs inside the image.
4. The result is kept in the cache, then committed as the appimg's new current version (or
   written as a tarball with ``output``), under the appimg's lock for a moment only.

One build of an appimg runs at a time. A build that fails, is interrupted or killed leaves the
appimg as it was: the build tree is deleted (at once, or by the next build when realms was
killed), and nothing reaches ``appimg list``.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from realms import log
from realms.appimg.commit import NewVersion, commit
from realms.appimg.record import Version, exists, load_record
from realms.appimg.tarball import create_options, write_tarball
from realms.builder import cache, modules, packages
from realms.builder.bootstrap import bootstrapper_named
from realms.builder.config import BuildConfig, Module, inputs_digest, load, with_name
from realms.builder.job import BuildJob, prune_logs
from realms.faults import checkpoint
from realms.kinds import ImageKind, VersionOrigin
from realms.store import Store
from realms.system.fs import rename_noreplace, token, unlink_in_root


@dataclass(frozen=True)
class BuildResult:
    name: str
    outcome: str
    """"built", "cached" (a cached result became the version) or "up to date"."""
    version: Version | None
    output: Path | None
    log_path: Path | None
    key: str
    seconds: float


def build(
    store: Store,
    config_path: Path | None,
    *,
    name: str | None = None,
    output: Path | None = None,
    rebuild: bool = False,
) -> BuildResult:
    """Build appimg ``name`` (default: the config's) from ``config_path`` (None: the default
    appimg base) as its new current version, or as the tarball ``output``."""
    started = time.monotonic()
    config = load(config_path)
    if name:
        config = with_name(config, name)
    if output is not None:
        create_options(output)
        output = output.resolve()
    key = inputs_digest(config)
    detail = config.origin if config_path is None else str(config_path.resolve())

    def result(outcome: str, version: Version | None, log_path: Path | None) -> BuildResult:
        return BuildResult(
            config.name, outcome, version, output, log_path, key, time.monotonic() - started
        )

    store.sweep()
    with store.build_lock(config.name):
        if not rebuild:
            if output is None and exists(store, config.name):
                current = load_record(store, config.name).current_version
                if current.build_key == key:
                    return result("up to date", current, None)
            cached = cache.lookup(store, key)
            if cached is not None:
                log.note(f"Reusing the cached build of these inputs ({key[:12]})")
                if output is not None:
                    write_tarball(cached, output)
                    return result("cached", None, None)
                new = NewVersion(
                    ImageKind.TREE, VersionOrigin.BUILD, f"{detail} (cached)", build_key=key
                )
                version = commit(
                    store, config.name, lambda tree: cache.clone(store, key, tree), new
                )
                return result("cached", version, None)
        return _build_new(store, config, key=key, detail=detail, output=output, result=result)


def _build_new(
    store: Store,
    config: BuildConfig,
    *,
    key: str,
    detail: str,
    output: Path | None,
    result: Callable[[str, Version | None, Path | None], BuildResult],
) -> BuildResult:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    logs = store.logs_dir
    # One directory per build, holding the new root filesystem and the scripts run in it.
    store.build_dir.mkdir(exist_ok=True)
    work = store.build_work_path(config.name, token())
    tree = work / "root"
    scratch = work / "scratch"
    job = BuildJob(
        config=config,
        tree=tree,
        log_path=store.build_log_path(config.name, stamp),
        package_cache=cache.packages_dir(store, config.release),
        scratch=scratch,
    )
    job.open()
    prune_logs(logs, config.name)
    log.note(f"Building appimg {config.name} ({config.release}); log: {job.log_path}")
    try:
        work.mkdir()
        scratch.mkdir()
        store.backend.create_tree(tree)
        _run_stages(job)
        checkpoint("build:built")
        cache.keep(store, key, tree)
        cache.prune_packages(job.package_cache, tree)
        if output is not None:
            write_tarball(tree, output)
            return result("built", None, job.log_path)
        with log.step(f"Committing as a new version of appimg {config.name}"):
            new = NewVersion(ImageKind.TREE, VersionOrigin.BUILD, detail, build_key=key)
            version = commit(store, config.name, lambda target: rename_noreplace(tree, target), new)
        return result("built", version, job.log_path)
    finally:
        job.close()
        if work.exists():
            # Bootstrappers mount in namespaces of their own; Store.remove would undo any
            # mount left in the host's anyway.
            store.remove(work)


def _run_stages(job: BuildJob) -> None:
    config = job.config
    bootstrapper = bootstrapper_named(config.bootstrapper)
    include = ["locales"] if any(m.name == "configure-locale" for m in config.before) else []
    # The built-in modules do not need to come before the packages (the bootstrapper is told
    # whether to install recommended packages, and the apt sources are written for later),
    # so unless a user's own script runs before them, the packages are installed by the
    # bootstrapper in the same run as the base system: one apt and dpkg run instead of two.
    together = all(module.script is None for module in config.before)
    if together:
        include = sorted({*include, *config.packages})
    what = f" and {len(config.packages)} packages" if together and config.packages else ""
    title = f"Bootstrapping Debian {config.release}{what} ({config.bootstrapper}, {config.variant})"
    recommends = not config.uses("no-install-recommends")
    if bootstrapper.shows_progress:
        with job.stage("bootstrap", title, show=False), log.progress(title, 100, "percent") as bar:
            bootstrapper.bootstrap(job, include, recommends=recommends, bar=bar)
    else:
        with job.stage("bootstrap", title):
            bootstrapper.bootstrap(job, include, recommends=recommends, bar=log.NO_BAR)
    _run_modules(job, config.before, "before")
    with job.stage("packages", "Updating package lists and upgrading"):
        packages.update_and_upgrade(job)
    if not together:
        with job.stage("packages", f"Installing {len(config.packages)} packages", show=False):
            packages.install(job, config.packages)
    if config.files:
        with job.stage("files", f"Installing {len(config.files)} files"):
            _install_files(job, config)
    _run_modules(job, config.after, "after")
    with job.stage("finish", "Cleaning up the image"):
        job.run_script("finish", modules.finish_script())
        # The bootstrapper copied the host's name server configuration; an appimg has none of
        # its own (nspawn provides one when a realm runs). Removed from outside: inside the
        # container the host's file is bound over it.
        unlink_in_root(job.tree, "etc/resolv.conf")


def _run_modules(job: BuildJob, stage_modules: list[Module], when: str) -> None:
    config = job.config
    env = {
        "REALMS_APPIMG": config.name,
        "REALMS_RELEASE": config.release,
        "REALMS_USER": str(config.user["name"]),
        "REALMS_UID": str(config.user["uid"]),
    }
    for module in stage_modules:
        kind = "module" if module.script is None else "script"
        with job.stage(f"{kind} {module.name}", f"Running {kind} {module.name} ({when} packages)"):
            if module.script is None:
                job.run_script(module.name, modules.builtin_script(module.name, config))
            else:
                # The text read when the config was loaded: the path is never opened again.
                job.run_script(module.name, module.text, env=env)


def _install_files(job: BuildJob, config: BuildConfig) -> None:
    # The files' contents were read when the config was loaded (inside its directory, see
    # config._context_file); they go into the scratch directory, which the container sees
    # read-only at /run/realms-build. No host path the config names is bound or opened here.
    # Readable by all (like the scripts there): the container's root may be an unprivileged
    # uid; the store around the build directory keeps host users out.
    staged = job.scratch / "files"
    staged.mkdir()
    staged.chmod(0o755)  # whatever the umask
    commands = ["set -eu"]
    for index, spec in enumerate(config.files):
        fd = os.open(
            staged / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
        )
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(spec.data)
        inside = f"/run/realms-build/files/{index}"
        user, _, group = spec.owner.partition(":")
        owner = ["-o", user] + (["-g", group] if group else [])
        argv = ["install", "-D", "-m", f"{spec.mode:o}", *owner, "--", inside, spec.path]
        commands.append(shlex.join(argv))
    path = job.scratch / "files.sh"
    path.write_text("\n".join(commands) + "\n")
    job.run_in_image(["/bin/sh", "/run/realms-build/files.sh"], what="install")
