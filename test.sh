#!/usr/bin/env bash
# Run the test suite (as root: the system tests make btrfs filesystems in loopback files, mount
# them and run systemd-nspawn). Installs what the tests need first. Arguments go to pytest, e.g.
#   ./test.sh -k tarball      ./test.sh -m "not slow"
# tests/unit: no root, no devices (./test.sh tests/unit -n auto); tests/system: btrfs, loop, nspawn.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
EXTRAS=test ./setup.sh --install-only
exec .venv/bin/python -m pytest "$@"
