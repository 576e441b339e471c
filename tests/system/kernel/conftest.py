"""The ``guest`` fixture: Debian's kernel and a busybox initramfs, ready to boot in QEMU.

The unpacked kernel package is cached in pytest's cache directory (``.pytest_cache/d/``, or the
session's temporary directory when the cache is disabled) and shared by later sessions; the
initramfs is built once per session. A host without QEMU fails here with the package to install.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.kernel.vm import Guest, VMError, build_initramfs, fetch_kernel, require_qemu


@pytest.fixture(scope="session")
def guest(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Guest:
    try:
        require_qemu()
        cache = getattr(request.config, "cache", None)
        directory: Path = (
            cache.mkdir("realms-kernel") if cache is not None else tmp_path_factory.mktemp("kernel")
        )
        kernel = fetch_kernel(directory)
        workdir = tmp_path_factory.mktemp("guest")
        initramfs = workdir / "initramfs.cpio.gz"
        build_initramfs(kernel, initramfs)
    except VMError as error:
        pytest.fail(f"cannot prepare the QEMU guest: {error}", pytrace=False)
    return Guest(kernel, initramfs, workdir)
