"""mmdebstrap: the default bootstrapper (fast: it resolves and installs with apt in one go).

mmdebstrap draws its progress (each phase: downloading, extracting, installing, ...) only on
a terminal, so it is given one, and its display feeds realms' own bar.

The package cache is synced into the new root before apt downloads and back out afterwards,
as mmdebstrap's documentation describes for a persistent cache; mmdebstrap is told neither to
require an empty archive directory nor to delete the essential packages' files.
"""

from __future__ import annotations

import re
import shlex

from realms import log
from realms.builder import release
from realms.builder.job import BuildJob

ARCHIVES = "/var/cache/apt/archives"
TRUSTED = "/etc/apt/trusted.gpg.d/"
KEYRING_NAME = "realms-build.gpg"


_PROGRESS = re.compile(r"^\s*([a-z][a-z -]*):\s+([0-9]+(?:\.[0-9]+)?)")


class Mmdebstrap:
    name = "mmdebstrap"
    shows_progress = True

    def bootstrap(
        self, job: BuildJob, include: list[str], *, recommends: bool, bar: log.ProgressBar
    ) -> None:
        config = job.config
        cache = shlex.quote(str(job.package_cache))
        argv = [
            "mmdebstrap",
            "--mode=root",
            f"--variant={config.variant}",
            f"--components={','.join(config.components)}",
            "--skip=download/empty",
            "--skip=essential/unlink",
            # The package lists stay for the package stage's apt-get update, which then only
            # checks them and fetches what write-apt-sources adds; the finish stage removes them.
            "--skip=cleanup/apt/lists",
            f'--setup-hook=mkdir -p "$1"{ARCHIVES}/',
            f"--setup-hook=sync-in {cache} {ARCHIVES}/",
            f"--customize-hook=sync-out {ARCHIVES} {cache}",
            f'--aptopt=APT::Install-Recommends "{str(recommends).lower()}"',
        ]
        if config.keyring:
            # The config's keys as well as the host's (Dir::Etc::Trusted beside the host's
            # trusted.gpg.d), and in the image's trusted.gpg.d for its own apt.
            keyring = job.scratch / KEYRING_NAME
            release.write_keyring(config.keyring, keyring)
            argv += [
                f"--keyring={keyring}",
                f'--setup-hook=mkdir -p "$1"{TRUSTED}',
                f"--setup-hook=copy-in {shlex.quote(str(keyring))} {TRUSTED}",
            ]
        if config.snapshot:
            # A snapshot's Release files are old by design: their Valid-Until has passed.
            argv.append('--aptopt=Acquire::Check-Valid-Until "false"')
        if include:
            argv.append(f"--include={','.join(include)}")
        # "--": mmdebstrap takes options anywhere on its command line; after it, SUITE, TARGET
        # and MIRROR are never options (the config checks them as well: a name and a URI).
        argv += ["--", config.release, str(job.tree), config.mirror]

        def progress(piece: str) -> None:
            # mmdebstrap draws "STATUS:  PERCENT [####   ]" on a terminal, once per phase.
            match = _PROGRESS.match(piece)
            if match:
                bar.show(float(match[2]), match[1])

        job.run_on_host(argv, progress=progress)
