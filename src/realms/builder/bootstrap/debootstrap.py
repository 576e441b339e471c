"""debootstrap: the classic bootstrapper (Citadel's appimg-builder used it), as an alternative.

It keeps downloaded packages in the store's package cache through its own ``--cache-dir``.
Its variants are ``minbase`` and its default (Priority: required and important).
"""

from __future__ import annotations

from realms.builder.job import BuildJob
from realms.errors import InvalidInput


class Debootstrap:
    name = "debootstrap"

    def bootstrap(self, job: BuildJob, include: list[str]) -> None:
        config = job.config
        if config.variant not in ("minbase", "important"):
            raise InvalidInput(
                f"debootstrap has no variant {config.variant!r}",
                hint="use minbase or important with debootstrap, or bootstrapper = mmdebstrap",
            )
        argv = [
            "debootstrap",
            *(["--variant=minbase"] if config.variant == "minbase" else []),
            f"--components={','.join(config.components)}",
            f"--cache-dir={job.package_cache}",
        ]
        if include:
            argv.append(f"--include={','.join(include)}")
        argv += [config.release, str(job.tree), config.mirror]
        job.run_on_host(argv)
