"""mmdebstrap: the default bootstrapper (fast: it resolves and installs with apt in one go).

The package cache is synced into the new root before apt downloads and back out afterwards,
as mmdebstrap's documentation describes for a persistent cache; mmdebstrap is told neither to
require an empty archive directory nor to delete the essential packages' files.
"""

from __future__ import annotations

import shlex

from realms.builder.job import BuildJob

ARCHIVES = "/var/cache/apt/archives"


class Mmdebstrap:
    name = "mmdebstrap"

    def bootstrap(self, job: BuildJob, include: list[str]) -> None:
        config = job.config
        cache = shlex.quote(str(job.package_cache))
        argv = [
            "mmdebstrap",
            "--mode=root",
            f"--variant={config.variant}",
            f"--components={','.join(config.components)}",
            "--skip=download/empty",
            "--skip=essential/unlink",
            f'--setup-hook=mkdir -p "$1"{ARCHIVES}/',
            f"--setup-hook=sync-in {cache} {ARCHIVES}/",
            f"--customize-hook=sync-out {ARCHIVES} {cache}",
        ]
        if include:
            argv.append(f"--include={','.join(include)}")
        argv += [config.release, str(job.tree), config.mirror]
        job.run_on_host(argv)
