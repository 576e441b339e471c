"""debootstrap: the classic bootstrapper (Citadel's appimg-builder used it), as an alternative.

It keeps downloaded packages in the store's package cache through its own ``--cache-dir``.
Its variants are ``minbase`` and its default (Priority: required and important). It never
installs recommended packages.
"""

from __future__ import annotations

from realms import log
from realms.builder import release
from realms.builder.bootstrap.mmdebstrap import KEYRING_NAME, TRUSTED
from realms.builder.job import BuildJob
from realms.errors import InvalidInput


class Debootstrap:
    name = "debootstrap"
    shows_progress = False

    def bootstrap(
        self, job: BuildJob, include: list[str], *, recommends: bool, bar: log.ProgressBar
    ) -> None:
        # debootstrap resolves Depends only: recommended packages come with a later apt run.
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
        keyring = job.scratch / KEYRING_NAME
        if config.keyring:
            release.write_keyring(config.keyring, keyring)
            argv.append(f"--keyring={keyring}")
        if include:
            argv.append(f"--include={','.join(include)}")
        # No "--" here: debootstrap refuses it ("unrecognized or invalid option --"). It stops
        # reading options at its first positional, SUITE, which the config holds to a plain
        # Debian name (it is also a path below debootstrap's scripts/), so no value can be
        # taken for an option; MIRROR is an http(s)/file URI.
        argv += [config.release, str(job.tree), config.mirror]
        job.run_on_host(argv)
        if config.keyring:
            # The image's apt trusts the config's keys too (beside Debian's); copied inside
            # the image, where no symlink of the new tree can lead out of it.
            keyring.chmod(0o644)
            target = f"{TRUSTED}{KEYRING_NAME}"
            script = f"install -D -m 0644 /run/realms-build/{KEYRING_NAME} {target}\n"
            job.run_script("keyring", script)
