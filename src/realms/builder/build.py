"""``realms appimg build``: the stages in order, the caches, and the commit.

1. The config is read and checked, the archive state of its mirrors fetched
   (:mod:`realms.builder.archive`), and the build key computed: the config's inputs and the
   archive state (and a ``SOURCE_DATE_EPOCH`` the user set).
2. If the appimg's current version was built with the same key, there is nothing to do; if a
   finished build of that key is cached, it becomes the new version (a snapshot: seconds, not
   minutes). ``rebuild`` skips both, and the stage cache.
3. Otherwise the image is built in ``STORE/build/.new.NAME.RANDOM``, in two stages
   (:mod:`realms.builder.stages`): the bootstrap (the bootstrapper, the modules before the
   packages, apt update and upgrade), taken from the stage cache as a snapshot when its inputs
   are unchanged and kept there otherwise; then the packages (one apt install), the files, the
   modules after, and the cleanup that makes the tree reproducible
   (:mod:`realms.builder.reproducible`). Only the bootstrapper runs on the host; everything
   else runs inside the image.
4. The result is kept in the cache, then committed as the appimg's new current version (or
   written as a tarball with ``output``), under the appimg's lock for a moment only.

``explain`` is told, before any work, which stages are reused and why the others are not.

One build of an appimg runs at a time. A build that fails, is interrupted or killed leaves the
appimg as it was: the build tree is deleted (at once, or by the next build when realms was
killed), and nothing reaches ``appimg list``.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realms import log
from realms.appimg.commit import NewVersion, commit
from realms.appimg.record import Version, exists, load_record
from realms.appimg.tarball import create_options, write_tarball
from realms.builder import archive, cache, modules, packages, reproducible, stages
from realms.builder.bootstrap import bootstrapper_named
from realms.builder.config import BuildConfig, Module, inputs_digest, load, with_name
from realms.builder.job import BuildJob, prune_logs
from realms.builder.reproducible import Epoch
from realms.builder.stages import BOOTSTRAP, HIT, MISS, PACKAGES, UNUSED, Decision
from realms.errors import InvalidInput, NotFound
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
    stages: tuple[Decision, ...] = ()
    """Which stages were reused, and why the others were not."""


Explain = Callable[[list[Decision]], None]
"""Told which stages a build reuses, and why not the others, before it starts."""


def build(
    store: Store,
    config_path: Path | None,
    *,
    name: str | None = None,
    output: Path | None = None,
    rebuild: bool = False,
    explain: Explain | None = None,
    offline: bool = False,
) -> BuildResult:
    """Build appimg ``name`` (default: the config's) from ``config_path`` (None: the default
    appimg base) as its new current version, or as the tarball ``output``; ``offline``: ask
    no mirror, use the cached build of the config with the newest mirror state."""
    started = time.monotonic()
    config = load(config_path)
    if name:
        config = with_name(config, name)
    if output is not None:
        create_options(output)
        output = output.resolve()
    offline_key, state = _offline(store, config, rebuild) if offline else (None, None)
    state = state or archive.fetch(store, config)
    epoch = reproducible.source_date_epoch(state.date)
    key = archive.build_key(inputs_digest(config), state)
    if epoch is not None and epoch.user_set:
        key = hashlib.sha256(f"{key}\nepoch {epoch.seconds}".encode()).hexdigest()
    key = offline_key or key
    plan = stages.plan(config, state, epoch)
    record = {
        "config": inputs_digest(config),
        "archive": state.to_json(),
        "packages": plan.packages,
    }
    detail = config.origin if config_path is None else str(config_path.resolve())
    decided: list[Decision] = []

    def decide(decisions: list[Decision]) -> None:
        decided[:] = decisions
        if explain is not None:
            explain(decisions)

    def result(outcome: str, version: Version | None, log_path: Path | None) -> BuildResult:
        seconds = time.monotonic() - started
        return BuildResult(
            config.name, outcome, version, output, log_path, key, seconds, tuple(decided)
        )

    store.sweep()
    with store.build_lock(config.name):
        if not rebuild:
            if output is None and exists(store, config.name):
                current = load_record(store, config.name).current_version
                if current.build_key == key:
                    built = f"version {current.version} was built from these inputs"
                    decide([Decision(BOOTSTRAP, UNUSED), Decision(PACKAGES, HIT, built)])
                    return result("up to date", current, None)
            cached = cache.lookup(store, key)
            if cached is not None:
                kept = "a finished build of these inputs is cached"
                decide([Decision(BOOTSTRAP, UNUSED), Decision(PACKAGES, HIT, kept)])
                log.note(f"Reusing the cached build of these inputs ({key[:12]})")
                if output is not None:
                    write_tarball(cached, output)
                    return result("cached", None, None)
                new = NewVersion(
                    ImageKind.TREE,
                    VersionOrigin.BUILD,
                    f"{detail} (cached)",
                    build_key=key,
                    source=state.source(),
                )
                version = commit(
                    store, config.name, lambda tree: cache.clone(store, key, tree), new
                )
                return result("cached", version, None)
        if offline:
            raise NotFound(f"the cached build of {detail} is gone", hint=_ONLINE)
        bootstrap = None if rebuild else cache.stages(store).lookup(plan.bootstrap_key)
        decide(_decisions(store, plan, bootstrap is not None, rebuild))
        return _build_new(
            store,
            config,
            key=key,
            detail=detail,
            output=output,
            result=result,
            plan=plan,
            epoch=epoch,
            record=record,
            bootstrap=bootstrap is not None,
            source=state.source(),
        )


_ONLINE = "build it once without --offline"


def _offline(store: Store, config: BuildConfig, rebuild: bool) -> tuple[str, archive.ArchiveState]:
    """The key and mirror state of the cached build of ``config`` with the newest mirror
    state (``--offline``: no mirror is asked)."""
    if rebuild:
        raise InvalidInput("--offline builds nothing: it cannot --rebuild")
    found = archive.newest_cached(cache.results(store).records(), inputs_digest(config))
    if found is None:
        raise NotFound(f"no cached build of {config.origin} to use offline", hint=_ONLINE)
    log.note(f"Offline: the cached build of the {found[1].describe()}")
    return found


def _decisions(store: Store, plan: stages.Plan, bootstrap: bool, rebuild: bool) -> list[Decision]:
    if rebuild:
        again = "--rebuild builds every stage again"
        return [Decision(BOOTSTRAP, MISS, again), Decision(PACKAGES, MISS, again)]
    if bootstrap:
        first = Decision(BOOTSTRAP, HIT)
    else:
        kept = [inputs for _key, inputs in cache.stages(store).records()]
        first = Decision(BOOTSTRAP, MISS, stages.explain_miss(plan.bootstrap, kept))
    finished = [record.get("packages") for _key, record in cache.results(store).records()]
    why = stages.explain_miss(plan.packages, [r for r in finished if isinstance(r, dict)])
    return [first, Decision(PACKAGES, MISS, why)]


def _build_new(
    store: Store,
    config: BuildConfig,
    *,
    key: str,
    detail: str,
    output: Path | None,
    result: Callable[[str, Version | None, Path | None], BuildResult],
    plan: stages.Plan,
    epoch: Epoch | None,
    record: dict[str, Any],
    bootstrap: bool,
    source: dict[str, str],
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
        environment=epoch.environment() if epoch is not None else {},
    )
    job.open()
    prune_logs(logs, config.name)
    log.note(f"Building appimg {config.name} ({config.release}); log: {job.log_path}")
    try:
        work.mkdir()
        scratch.mkdir()
        if bootstrap:
            with log.step("Starting from the cached bootstrap"):
                cache.stages(store).clone(store, plan.bootstrap_key, tree)
        else:
            store.backend.create_tree(tree)
            _bootstrap(job)
            checkpoint("build:bootstrapped")
            with log.step("Keeping the bootstrap in the stage cache"):
                cache.stages(store).keep(store, plan.bootstrap_key, tree, plan.bootstrap)
        _packages(job, epoch)
        checkpoint("build:built")
        cache.keep(store, key, tree, record)
        cache.prune_packages(job.package_cache, tree)
        if output is not None:
            write_tarball(tree, output)
            return result("built", None, job.log_path)
        with log.step(f"Committing as a new version of appimg {config.name}"):
            new = NewVersion(
                ImageKind.TREE, VersionOrigin.BUILD, detail, build_key=key, source=source
            )
            version = commit(store, config.name, lambda target: rename_noreplace(tree, target), new)
        return result("built", version, job.log_path)
    finally:
        job.close()
        if work.exists():
            # Bootstrappers mount in namespaces of their own; Store.remove would undo any
            # mount left in the host's anyway.
            store.remove(work)


def _bootstrap(job: BuildJob) -> None:
    """The bootstrap stage: the base system, the modules before the packages, and apt's
    package lists for the image's own sources, with what they upgrade."""
    config = job.config
    bootstrapper = bootstrapper_named(config.bootstrapper)
    include = stages.includes(config)
    title = f"Bootstrapping Debian {config.release} ({config.bootstrapper}, {config.variant})"
    recommends = not config.uses("no-install-recommends")
    if bootstrapper.shows_progress:
        with job.stage("bootstrap", title, show=False), log.progress(title, 100, "percent") as bar:
            bootstrapper.bootstrap(job, include, recommends=recommends, bar=bar)
    else:
        with job.stage("bootstrap", title):
            bootstrapper.bootstrap(job, include, recommends=recommends, bar=log.NO_BAR)
    _run_modules(job, config.before, "before")
    with job.stage("bootstrap", "Updating package lists and upgrading"):
        packages.update_and_upgrade(job)


def _packages(job: BuildJob, epoch: Epoch | None) -> None:
    """The package stage: one apt transaction for the package list, the files, the modules
    after the packages, and the cleanup."""
    config = job.config
    with job.stage("packages", f"Installing {len(config.packages)} packages", show=False):
        packages.install(job, config.packages)
    if config.files:
        with job.stage("files", f"Installing {len(config.files)} files"):
            _install_files(job, config)
    _run_modules(job, config.after, "after")
    with job.stage("finish", "Cleaning up the image"):
        job.run_script("finish", reproducible.cleanup_script())
        # The bootstrapper copied the host's name server configuration; an appimg has none of
        # its own (nspawn provides one when a realm runs). Removed from outside: inside the
        # container the host's file is bound over it.
        unlink_in_root(job.tree, "etc/resolv.conf")
        if epoch is not None:
            reproducible.clamp_mtimes(job.tree, epoch.seconds)


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
