#!/usr/bin/env bash
# Run the test suite (as root: the system tests make btrfs filesystems in loopback files, mount
# them and run systemd-nspawn). Installs what the tests need first. Arguments go to pytest, e.g.
#   ./test.sh -k tarball      ./test.sh -m "not slow"
# tests/unit needs no root and no devices (./test.sh tests/unit); tests/system is the real thing.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
EXTRAS=test ./setup.sh --install-only
exec .venv/bin/python -m pytest "$@"
