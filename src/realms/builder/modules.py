"""Build modules: the steps that shape an image before and after its packages are installed.

A module is a shell script that runs as root *inside* the image being built (in a
systemd-nspawn container, see :mod:`realms.builder.stages`), never on the host. Built-in modules
are written here from the config's values; a user's module is their own script file. The same
config always gives the same scripts, which is what lets the build cache trust its key.

Each built-in module is declared once, in :data:`BUILTINS`: its name, what it does (for the
template and the errors), the package it needs and its script. The build config's checks and
template take them from there.

Every config value written into a script is either quoted (``shlex.quote``) or inside a quoted
here-document, on top of the checks of :mod:`realms.builder.schema` (plain names, URIs without
spaces or quotes): a config cannot add a command to a script.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

from realms.builder import archive
from realms.builder.spec import BuildConfig


def _no_install_recommends(config: BuildConfig) -> str:
    return """\
cat > /etc/apt/apt.conf.d/00realms-no-recommends <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
"""


def _write_apt_sources(config: BuildConfig) -> str:
    # The suites the archive state covers (realms.builder.archive), one stanza per mirror.
    stanzas: dict[str, list[str]] = {}
    for suite in archive.suites(config):
        stanzas.setdefault(suite.uri, []).append(suite.suite)
    # A config with a keyring trusts its keys as well (the bootstrapper puts them into
    # /etc/apt/trusted.gpg.d, beside Debian's): no Signed-By, which would trust Debian's only.
    # Snapshots are old by design: their Valid-Until has passed.
    options = (
        "" if config.keyring else "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    if config.snapshot:
        options += "Check-Valid-Until: no\n"
    text = ""
    for uri, suite_list in stanzas.items():
        text += (
            f"Types: deb\nURIs: {uri}\nSuites: {' '.join(suite_list)}\n"
            f"Components: {' '.join(config.components)}\n{options}\n"
        )
    return f"""\
rm -f /etc/apt/sources.list
mkdir -p /etc/apt/sources.list.d
cat > /etc/apt/sources.list.d/debian.sources <<'EOF'
{text.rstrip()}
EOF
"""


def _configure_locale(config: BuildConfig) -> str:
    locale = config.locale
    charset = locale.split(".", 1)[1] if "." in locale else "ISO-8859-1"
    line = shlex.quote(f"{locale} {charset}")
    return f"""\
if ! command -v locale-gen >/dev/null; then
    echo "configure-locale needs the package locales" >&2
    exit 1
fi
echo {line} > /etc/locale.gen
locale-gen
echo {shlex.quote(f"LANG={locale}")} > /etc/default/locale
"""


def _create_user(config: BuildConfig) -> str:
    user = config.user
    groups = ",".join(user["groups"])
    options = [
        "--create-home",
        f"--uid={user['uid']}",
        "--user-group",
        f"--shell={user['shell']}",
        *([f"--groups={groups}"] if groups else []),
        "--",
        user["name"],
    ]
    return f"useradd {shlex.join(options)}\n"


def _set_hostname(config: BuildConfig) -> str:
    host = shlex.quote(config.hostname)
    return f"""\
echo {host} > /etc/hostname
cat > /etc/hosts <<'EOF'
127.0.0.1	localhost
127.0.1.1	{config.hostname}
::1	localhost ip6-localhost ip6-loopback
EOF
"""


def _sudo_nopasswd(config: BuildConfig) -> str:
    name = config.user["name"]
    rule = shlex.quote(f"{name} ALL=(ALL:ALL) NOPASSWD: ALL")
    path = shlex.quote(f"/etc/sudoers.d/90-realms-{name}")
    return f"""\
[ -d /etc/sudoers.d ] || {{ echo "sudo-nopasswd needs the package sudo" >&2; exit 1; }}
echo {rule} > {path}
chmod 0440 {path}
"""


# Units masked in an image that boots as a realm: the console's login prompt and the gettys (a
# booted realm is entered with run and shell, and nobody types at its console, which goes to a
# log), and apt's timers (an appimg is updated as a whole; a realm must not download or upgrade
# packages on its own, behind the user's back).
CONTAINER_MASKED = (
    "console-getty.service",
    "getty.target",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
)


def _boot_in_container(config: BuildConfig) -> str:
    links = "\n".join(f"ln -sfn /dev/null /etc/systemd/system/{unit}" for unit in CONTAINER_MASKED)
    # systemd-update-done records that /etc and /var match /usr, so that the first boot of each
    # realm skips the one-time updates (ldconfig, the journal's catalog) the build did already.
    return f"""\
[ -x /usr/lib/systemd/systemd ] || exit 0
mkdir -p /etc/systemd/system
{links}
journalctl --update-catalog
/usr/lib/systemd/systemd-update-done
"""


@dataclass(frozen=True)
class Builtin:
    """A built-in module."""

    name: str
    doc: str
    """What it does (the template lists it)."""
    write: Callable[[BuildConfig], str]
    """Its script for a config."""
    needs: str | None = None
    """A package it needs installed (refused at load without it; configure-locale's package,
    locales, is installed by the bootstrapper already, since it runs before the packages)."""


BUILTINS = {
    module.name: module
    for module in [
        Builtin(
            "no-install-recommends",
            "apt installs no recommended or suggested packages",
            _no_install_recommends,
        ),
        Builtin(
            "write-apt-sources",
            "write the mirror and release as the image's apt sources (deb822)",
            _write_apt_sources,
        ),
        Builtin(
            "configure-locale",
            "generate the locale and make it the default (needs package locales)",
            _configure_locale,
        ),
        Builtin(
            "create-user", "create the user of [user], with a home, in its groups", _create_user
        ),
        Builtin("set-hostname", "write /etc/hostname and /etc/hosts", _set_hostname),
        Builtin(
            "sudo-nopasswd",
            "let the user use sudo without a password",
            _sudo_nopasswd,
            needs="sudo",
        ),
        Builtin(
            "boot-in-container",
            "when systemd is installed: no login prompt or gettys, no apt timers, first-boot "
            "updates done, so that realms boot quickly",
            _boot_in_container,
        ),
    ]
}


def builtin_script(name: str, config: BuildConfig) -> str:
    """The script of built-in module ``name`` for ``config``."""
    return "set -eu\n" + BUILTINS[name].write(config)
