"""The stage cache: a build in two stages, each reused by key, and why a stage was reused or
made again, in words.

The stages (run by :mod:`realms.builder.build`):

- **bootstrap**: the bootstrapper's base system (with ``locales`` when ``configure-locale`` is
  used), the modules before the packages, and ``apt-get update`` and ``upgrade`` with the
  image's own sources. Its inputs (:func:`bootstrap_inputs`): the release, variant,
  bootstrapper, mirrors, components, snapshot and keyring, whether recommended packages are
  installed, the scripts of the ``before`` modules (a built-in module's as the config makes
  it, so a changed user or locale is a changed script), the archive state, and a
  ``SOURCE_DATE_EPOCH`` the user set. Its result is kept read-only as ``cache/stages/KEY``
  (:func:`realms.builder.cache.stages`), package lists included: a build with another package
  list on an unchanged mirror starts from a writable snapshot of it and runs one apt
  transaction.
- **packages**: one ``apt-get install`` of the package list, the files, the ``after`` modules
  and the cleanup. Its result is the finished build, kept as ``cache/builds/KEY`` by the build
  key (:mod:`realms.builder.archive`); its inputs (:func:`packages_inputs`): the bootstrap's
  key, the packages, the files, the ``after`` modules and the user's epoch.

A stage's inputs are described as a JSON object; the bootstrap's key is the digest of its
description, and each cache entry keeps its description as its record. A miss is explained by
comparing the inputs with the kept record that differs least (usually the previous build of the
same config): "packages: miss: package list changed: +curl -nano".

On the copy backend a stage is a copy (``cp --reflink=auto``: shared extents where the
filesystem has them): a few seconds and the disk space of a base system, against a bootstrap's
half a minute.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from realms.builder import modules
from realms.builder.archive import ArchiveState
from realms.builder.reproducible import Epoch
from realms.builder.spec import BuildConfig, Module

STAGES_VERSION = 1
"""Bump when what a stage makes from the same inputs changes."""

BOOTSTRAP = "bootstrap"
PACKAGES = "packages"
HIT = "hit"
MISS = "miss"
UNUSED = "not needed"


@dataclass(frozen=True)
class Decision:
    """Whether a stage is reused, and why (``reason``, in words; may be empty)."""

    stage: str
    outcome: str
    """:data:`HIT`, :data:`MISS` or :data:`UNUSED` (a later stage hit)."""
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.stage}: {self.outcome}" + (f": {self.reason}" if self.reason else "")

    def to_json(self) -> dict[str, str]:
        return {"stage": self.stage, "outcome": self.outcome, "reason": self.reason}


def _digest(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def key_of(inputs: dict[str, Any]) -> str:
    return _digest(json.dumps(inputs, sort_keys=True))


def includes(config: BuildConfig) -> list[str]:
    """What the bootstrapper installs besides its variant: configure-locale runs before the
    packages and needs locales."""
    return ["locales"] if any(m.name == "configure-locale" for m in config.before) else []


def _scripts(config: BuildConfig, stage: list[Module]) -> list[list[str]]:
    scripts = []
    for module in stage:
        text = module.text if module.script else modules.builtin_script(module.name, config)
        scripts.append([module.name, _digest(text)])
    return scripts


def bootstrap_inputs(
    config: BuildConfig, state: ArchiveState | None, epoch: Epoch | None
) -> dict[str, Any]:
    """The description of the bootstrap stage's inputs (see the module's doc)."""
    inputs: dict[str, Any] = {
        "stage": BOOTSTRAP,
        "version": STAGES_VERSION,
        "release": config.release,
        "variant": config.variant,
        "bootstrapper": config.bootstrapper,
        "mirror": config.mirror,
        "security-mirror": config.security_mirror,
        "components": config.components,
        "snapshot": config.snapshot,
        "keyring": [_digest(data) for _name, data in config.keyring],
        "recommends": not config.uses("no-install-recommends"),
        "include": includes(config),
        "before": _scripts(config, config.before),
        "archive": state.to_json() if state is not None else None,
    }
    if epoch is not None and epoch.user_set:
        # An epoch taken from the archive is part of its state already.
        inputs["epoch"] = epoch.seconds
    return inputs


def packages_inputs(config: BuildConfig, bootstrap_key: str, epoch: Epoch | None) -> dict[str, Any]:
    """The description of the package stage's inputs: what a finished build is made of."""
    inputs: dict[str, Any] = {
        "stage": PACKAGES,
        "version": STAGES_VERSION,
        "bootstrap": bootstrap_key,
        "packages": config.packages,
        "files": [[f.path, f"{f.mode:o}", f.owner, _digest(f.data)] for f in config.files],
        "after": _scripts(config, config.after),
    }
    if epoch is not None and epoch.user_set:
        inputs["epoch"] = epoch.seconds
    return inputs


# Explanations


def _names(old: Any, new: Any) -> str:
    """``+added -removed`` of two lists of names."""
    before, after = set(old or []), set(new or [])
    return " ".join(
        [*(f"+{n}" for n in sorted(after - before)), *(f"-{n}" for n in sorted(before - after))]
    )


def _entries(old: Any, new: Any) -> str:
    """``+added -removed changed`` of two lists of [name, ...] entries (modules, files)."""
    before = {str(e[0]): e for e in old or [] if isinstance(e, list) and e}
    after = {str(e[0]): e for e in new or [] if isinstance(e, list) and e}
    words = [f"+{n}" for n in after if n not in before]
    words += [f"-{n}" for n in before if n not in after]
    words += [n for n in after if n in before and after[n] != before[n]]
    if not words and list(before) != list(after):
        words = ["their order"]
    return " ".join(words)


def _archive(old: Any, new: Any) -> str:
    was, now = ArchiveState.from_json(old), ArchiveState.from_json(new)
    if now is None:
        return "no mirror state"
    return "; ".join(now.changes(was)) or "its state"


def _value(old: Any, new: Any) -> str:
    return f"{_shown(old)} → {_shown(new)}"


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


_FIELDS: list[tuple[str, str, Callable[[Any, Any], str]]] = [
    ("version", "the builder changed", lambda _old, _new: ""),
    ("archive", "the mirror moved", _archive),
    ("release", "release changed", _value),
    ("variant", "variant changed", _value),
    ("bootstrapper", "bootstrapper changed", _value),
    ("mirror", "mirror changed", _value),
    ("security-mirror", "security mirror changed", _value),
    ("components", "components changed", _value),
    ("snapshot", "snapshot changed", _value),
    ("keyring", "keyring changed", lambda _old, _new: ""),
    ("recommends", "recommended packages changed", _value),
    ("include", "bootstrap packages changed", _names),
    ("before", "modules before the packages changed", _entries),
    ("bootstrap", "the bootstrap changed", lambda _old, _new: ""),
    ("packages", "package list changed", _names),
    ("files", "files changed", _entries),
    ("after", "modules after the packages changed", _entries),
    ("epoch", "SOURCE_DATE_EPOCH changed", _value),
]


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    found = []
    for name, label, detail in _FIELDS:
        if old.get(name) != new.get(name):
            words = detail(old.get(name), new.get(name))
            found.append(f"{label}: {words}" if words else label)
    return found


def explain_miss(inputs: dict[str, Any], kept: list[dict[str, Any]]) -> str:
    """Why nothing kept matches ``inputs``: what differs from the kept record of the same stage
    that differs least (``kept`` is the most recently used first)."""
    candidates = [record for record in kept if record.get("stage") == inputs.get("stage")]
    if not candidates:
        return "nothing kept yet"
    nearest = min(candidates, key=lambda record: len(_differences(record, inputs)))
    return "; ".join(_differences(nearest, inputs)) or "an input changed"


@dataclass(frozen=True)
class Plan:
    """The inputs of a build's stages, described, and the bootstrap's key."""

    bootstrap: dict[str, Any]
    bootstrap_key: str
    packages: dict[str, Any]


def plan(config: BuildConfig, state: ArchiveState | None, epoch: Epoch | None) -> Plan:
    bootstrap = bootstrap_inputs(config, state, epoch)
    key = key_of(bootstrap)
    return Plan(bootstrap, key, packages_inputs(config, key, epoch))
