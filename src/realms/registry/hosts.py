"""What the machine's container configuration says about a registry host: TLS files and
``registries.conf``.

**TLS** is verified against the system's CAs plus every ``*.crt`` in the registry's certs.d
directory, ``ROOT/HOST[:PORT]/``, with ROOT each of ``~/.config/containers/certs.d`` (not
root), ``/etc/containers/certs.d`` and ``/etc/docker/certs.d``; a ``NAME.cert`` with its
``NAME.key`` there is the client certificate. ``$REALMS_CERTS_DIR`` (a ``:``-separated list of
such roots) replaces those roots: podman and skopeo take one as ``--cert-dir``, no environment
variable of theirs names one, and tests need it.

**registries.conf** is ``$CONTAINERS_REGISTRIES_CONF`` if set (as for podman), else
``~/.config/containers/registries.conf`` for a user who has one, else
``/etc/containers/registries.conf`` and its ``registries.conf.d/*.conf``. Both formats are
read: ``[[registry]]`` tables (``location`` or ``prefix``, ``insecure``, ``blocked``) and v1's
``[registries.insecure] registries = [...]`` and ``[registries.block]``. The entry with the
longest prefix matching ``HOST/REPOSITORY`` applies (``*.example.com`` matches hosts).
Mirrors are not used.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path

from realms.errors import InvalidInput

CERTS_ROOTS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))
SYSTEM_CONF = Path("/etc/containers/registries.conf")


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


@dataclass(frozen=True)
class RegistryEntry:
    prefix: str
    insecure: bool = False
    blocked: bool = False


def registries_conf_files() -> list[Path]:
    if os.environ.get("CONTAINERS_REGISTRIES_CONF"):
        return [Path(os.environ["CONTAINERS_REGISTRIES_CONF"])]
    user = _home() / ".config/containers/registries.conf"
    main = user if os.geteuid() != 0 and user.exists() else SYSTEM_CONF
    dropins = main.parent / "registries.conf.d"
    return [main, *sorted(dropins.glob("*.conf"))] if dropins.is_dir() else [main]


def _flag(path: Path, table: dict[str, object], key: str, prefix: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{path}: {key} of registry {prefix!r} must be true or false")
    return value


def parse_registries_conf(path: Path, text: str) -> list[RegistryEntry]:
    """The registries one ``registries.conf`` names, or InvalidInput naming the file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput(f"{path} is not valid TOML: {error}") from None
    entries = []
    tables = data.get("registry", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise InvalidInput(f"{path}: registry must be a list of [[registry]] tables")
    for table in tables:
        prefix = table.get("prefix") or table.get("location")
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise InvalidInput(f"{path}: a [[registry]] table has no location or prefix")
        prefix = prefix.rstrip("/")
        insecure = _flag(path, table, "insecure", prefix)
        entries.append(RegistryEntry(prefix, insecure, _flag(path, table, "blocked", prefix)))
    v1 = data.get("registries", {})
    if not isinstance(v1, dict):
        raise InvalidInput(f"{path}: [registries] must be a table")
    for section, insecure, blocked in (("insecure", True, False), ("block", False, True)):
        part = v1.get(section, {})
        names = part.get("registries", []) if isinstance(part, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidInput(f"{path}: registries.{section}.registries must be a list of names")
        entries += [RegistryEntry(n.rstrip("/"), insecure, blocked) for n in names if n]
    return entries


_conf_cache: dict[tuple[Path, ...], list[RegistryEntry]] = {}


def registries_conf() -> list[RegistryEntry]:
    """Every entry of the registries.conf files that apply (read once per process)."""
    files = tuple(registries_conf_files())
    if files not in _conf_cache:
        entries = []
        for path in files:
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError) as error:
                raise InvalidInput(f"cannot read {path}: {error}") from None
            entries += parse_registries_conf(path, text)
        _conf_cache[files] = entries
    return _conf_cache[files]


def _matches(prefix: str, host: str, repository: str) -> bool:
    if prefix.startswith("*."):
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return name.endswith(prefix[1:])
    full = f"{host}/{repository}" if repository else host
    return prefix in (host, full) or full.startswith(f"{prefix}/")


def registry_entry(
    host: str, repository: str = "", entries: list[RegistryEntry] | None = None
) -> RegistryEntry | None:
    """The entry for a repository (or a whole host): the longest matching prefix."""
    candidates = registries_conf() if entries is None else entries
    found = [e for e in candidates if _matches(e.prefix, host, repository)]
    return max(found, key=lambda e: len(e.prefix)) if found else None


def certs_roots() -> list[Path]:
    """The certs.d roots, in the order their files are used."""
    if os.environ.get("REALMS_CERTS_DIR"):
        return [Path(p) for p in os.environ["REALMS_CERTS_DIR"].split(":") if p]
    roots = list(CERTS_ROOTS)
    if os.geteuid() != 0:
        roots.insert(0, _home() / ".config/containers/certs.d")
    return roots


def tls_context(host: str) -> tuple[ssl.SSLContext, list[Path]]:
    """A verifying TLS context for ``host``: the system's CAs and the host's certs.d files; and
    the files it took."""
    context = ssl.create_default_context()
    used = []
    for root in certs_roots():
        directory = root / host
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            try:
                if path.suffix == ".crt":
                    context.load_verify_locations(cafile=str(path))
                elif path.suffix == ".cert":
                    context.load_cert_chain(str(path), str(path.with_suffix(".key")))
                else:
                    continue
            except (OSError, ssl.SSLError) as error:
                raise InvalidInput(f"cannot use the certificate file {path}: {error}") from None
            used.append(path)
    return context, used
