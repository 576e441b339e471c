"""A real OCI registry for the registry tests and benchmarks: Debian's ``docker-registry``
(Docker Distribution 2.8), unpacked from its package (``apt-get download`` + ``dpkg-deb -x``:
installing it would start a service on port 5000), run on 127.0.0.1 with a free port and a
storage directory in the test's temporary directory, and stopped with the test.

- :func:`unpack_registry` fetches the program; :func:`start_registry` runs it, with extra
  configuration (authentication, TLS) if asked, and stops it when the block ends.
- The fixtures are in ``tests/system/registry/conftest.py``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class RunningRegistry:
    host: str
    """``127.0.0.1:PORT``."""
    storage: Path
    """The filesystem storage's root directory (``docker/registry/v2/...`` below it)."""
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def blob_data_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (to corrupt it behind its back)."""
        algorithm, hexdigest = digest.split(":", 1)
        return (
            self.storage
            / "docker/registry/v2/blobs"
            / algorithm
            / hexdigest[:2]
            / hexdigest
            / "data"
        )


def unpack_registry(directory: Path) -> Path:
    """Fetch Debian's docker-registry package into ``directory`` and unpack it there (nothing is
    installed, no service starts); return the program."""
    subprocess.run(
        ["apt-get", "download", "-q", "docker-registry"],
        cwd=directory,
        check=True,
        capture_output=True,
    )
    (package,) = directory.glob("docker-registry_*.deb")
    subprocess.run(["dpkg-deb", "-x", package, directory / "root"], check=True)
    binary = directory / "root/usr/bin/docker-registry"
    assert binary.is_file(), "the docker-registry package has no usr/bin/docker-registry"
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v2/", timeout=2, context=context):  # noqa: S310
                return
        except urllib.error.HTTPError:
            return  # 401 with authentication: it answers
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer in {READY_TIMEOUT}s: {log.read_text()}")


@contextmanager
def start_registry(
    binary: Path, directory: Path, extra: dict[str, Any] | None = None
) -> Iterator[RunningRegistry]:
    """Run docker-registry with its storage in ``directory``; ``extra`` is merged into its
    configuration (``auth``, ``http.tls``: an ``http`` dict is merged key by key)."""
    directory.mkdir(parents=True, exist_ok=True)
    storage = directory / "storage"
    storage.mkdir(exist_ok=True)
    port = free_port()
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": "realms-tests"}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
    }
    extra = dict(extra or {})
    http.update(extra.pop("http", {}))
    config["http"] = http
    config.update(extra)
    config_path = directory / "config.yml"
    config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    log = directory / "registry.log"
    scheme = "https" if "tls" in http else "http"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [binary, "serve", config_path],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _ready(f"{scheme}://127.0.0.1:{port}", process, log)
        yield RunningRegistry(f"127.0.0.1:{port}", storage, scheme)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
