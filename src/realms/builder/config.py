"""Build configs: what ``realms appimg build`` makes, declared in TOML, loaded and checked.

The keys are declared once in :mod:`realms.builder.schema` (type, default, what it does); that
declaration checks a config file (errors name the file, the key and what was expected), fills in
defaults, and writes the commented template of ``realms appimg build --new``. With no file, the
defaults are the default appimg ``base``. This module adds the checks that span keys, resolves
the modules and files the config names (read through :mod:`realms.builder.context`), and the
mirror.

A build config is untrusted data: every value is checked at load, before any tool runs.

The build's *inputs* are the checked config with the mirror resolved (a ``snapshot`` resolves
to its dated mirrors), plus the contents of every file, script and key it names; their digest
(:func:`inputs_digest`) and the archive state (:mod:`realms.builder.archive`) key the build
cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from realms import settings
from realms.builder.context import Context, read_config
from realms.builder.release import binary_keys
from realms.builder.schema import (
    BUILTIN_MODULES,
    FILE_KEYS,
    KEYS,
    MODULE_KEYS,
    NEEDS_PACKAGE,
    SECTIONS,
    URI_EXPECTED,
    USER_KEYS,
    is_uri,
    template,
)
from realms.builder.spec import BuildConfig, FileSpec, Module
from realms.errors import InvalidInput
from realms.names import check_appimg_name
from realms.settings import shown
from realms.system import apt

__all__ = [
    "BUILDER_VERSION",
    "BUILTIN_MODULES",
    "KEYS",
    "MODULE_KEYS",
    "USER_KEYS",
    "BuildConfig",
    "FileSpec",
    "Module",
    "inputs_digest",
    "load",
    "template",
    "with_name",
]

# Bump when what a given config builds changes (built-in modules, stages), so that old cached
# results are not taken for new ones.
BUILDER_VERSION = 1


def _modules(entries: list[str], context: Context, where: str) -> list[Module]:
    modules = []
    for entry in entries:
        if entry in BUILTIN_MODULES:
            modules.append(Module(entry))
            continue
        if "/" not in entry and not entry.endswith(".sh"):
            raise InvalidInput(
                f"{where}: unknown module {shown(entry)}",
                hint="built-in modules: "
                + ", ".join(BUILTIN_MODULES)
                + "; a script is a path relative to the config file",
            )
        data = context.read(entry, f"{where}: module script")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            message = f"{where}: module script {shown(entry)} is not UTF-8 text"
            raise InvalidInput(message) from None
        modules.append(Module(entry.rstrip("/").rsplit("/", 1)[-1], entry, text))
    return modules


def _files(entries: Any, context: Context, where: str) -> list[FileSpec]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidInput(f"{where}: files: expected [[files]] tables")
    result = []
    for index, entry in enumerate(entries, 1):
        here = f"{where} [[files]] #{index}"
        values = settings.parse(FILE_KEYS, entry, here)
        data = context.read(values["source"], f"{here}: source:")
        mode = int(values["mode"], 8)
        result.append(FileSpec(values["source"], data, values["path"], mode, values["owner"]))
    return result


def _host_mirror(uri: str | None, key: str) -> str | None:
    """A mirror from the host's apt sources, held to the same rule as a config's."""
    if uri is not None and not is_uri(uri):
        raise InvalidInput(
            f"the host's apt sources ({apt.APT_DIR}): {key}: expected {URI_EXPECTED}, "
            f"got {shown(uri)}",
            hint=f"name one with the {key} key of the build config",
        )
    return uri


def load(path: Path | None) -> BuildConfig:
    """Read and check a build config (None: the defaults, i.e. the default appimg ``base``)."""
    if path is None:
        data: dict[str, Any] = {}
        where = "default config"
        context = Context.current()
    else:
        if not path.is_file():
            raise InvalidInput(f"{path}: no such build config")
        data, context = read_config(path)
        where = str(path)
    try:
        return _load(data, where, context)
    finally:
        context.close()


def _load(data: dict[str, Any], where: str, context: Context) -> BuildConfig:
    data = dict(data)
    tables = {name: settings.section(data, name, where) for name in SECTIONS}
    files = data.pop("files", [])
    top = settings.parse(KEYS, data, where)
    user_values = settings.parse(USER_KEYS, tables["user"], f"{where} [user]")
    module_lists = settings.parse(MODULE_KEYS, tables["modules"], f"{where} [modules]")
    for module, package in NEEDS_PACKAGE.items():
        wanted = module in module_lists["before"] + module_lists["after"]
        if wanted and package not in top["packages"]:
            raise InvalidInput(
                f"{where}: packages: the module {module} needs the package {package}",
                hint=f"add {package!r} to packages, or remove {module} from [modules]",
            )
    if top["bootstrapper"] == "debootstrap" and top["variant"] not in ("minbase", "important"):
        raise InvalidInput(
            f"{where}: variant: debootstrap has no variant {top['variant']!r}",
            hint="use minbase or important with debootstrap, or bootstrapper = mmdebstrap",
        )
    before = _modules(module_lists["before"], context, f"{where} [modules] before")
    after = _modules(module_lists["after"], context, f"{where} [modules] after")
    file_specs = _files(files, context, where)
    snapshot = top["snapshot"] or None
    if snapshot is not None:
        if top["mirror"] or top["security-mirror"]:
            raise InvalidInput(
                f"{where}: snapshot: a snapshot build reads snapshot-mirror, not mirror or "
                "security-mirror",
                hint="remove mirror and security-mirror, or set snapshot-mirror",
            )
        base = top["snapshot-mirror"].rstrip("/")
        mirror: str | None = f"{base}/archive/debian/{snapshot}/"
        security: str | None = f"{base}/archive/debian-security/{snapshot}/"
    else:
        mirror = top["mirror"] or _host_mirror(apt.host_debian_mirror(), "mirror")
        security = top["security-mirror"] or _host_mirror(
            apt.host_security_mirror(), "security-mirror"
        )
    keyring = []
    for entry in top["keyring"]:
        key = context.read(entry, f"{where}: keyring:")
        binary_keys(key, f"{where}: keyring: {entry}")
        keyring.append((entry, key))
    return BuildConfig(
        origin=where,
        name=top["name"],
        release=top["release"],
        mirror=str(mirror),
        security_mirror=security,
        components=top["components"],
        variant=top["variant"],
        bootstrapper=top["bootstrapper"],
        packages=sorted(set(top["packages"])),
        hostname=top["hostname"] or top["name"],
        locale=top["locale"],
        user=user_values,
        before=before,
        after=after,
        files=file_specs,
        snapshot=snapshot,
        keyring=keyring,
    )


def with_name(config: BuildConfig, name: str) -> BuildConfig:
    """The config building appimg ``name`` instead (--name)."""
    check_appimg_name(name)
    hostname = name if config.hostname == config.name else config.hostname
    return dataclasses.replace(config, name=name, hostname=hostname)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inputs_digest(config: BuildConfig) -> str:
    """A digest of everything the build depends on but what the mirror serves (the archive
    state, :mod:`realms.builder.archive`, completes the build's key)."""
    inputs = {
        "builder": BUILDER_VERSION,
        "release": config.release,
        "mirror": config.mirror,
        "security-mirror": config.security_mirror,
        "components": config.components,
        "variant": config.variant,
        "bootstrapper": config.bootstrapper,
        "packages": config.packages,
        "hostname": config.hostname,
        "locale": config.locale,
        "user": config.user,
        "modules": [
            [[m.name, _digest(m.text.encode()) if m.script else None] for m in stage]
            for stage in (config.before, config.after)
        ],
        "files": [[f.path, f.mode, f.owner, _digest(f.data)] for f in config.files],
        "snapshot": config.snapshot,
        "keyring": [_digest(data) for _, data in config.keyring],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
