#!/usr/bin/env bash
# Set up realms on a fresh Debian machine (run as root), then run the main job:
#   1. install the system tools realms uses (apt-get) and realms itself (a virtualenv in .venv,
#      with the `realms` command linked into /usr/local/bin);
#   2. prepare the store (/var/lib/realms, or $REALMS_STORE);
#   3. build the default appimg `base` with `realms appimg build`: Debian trixie with a user
#      `user` (uid 1000), from the host's Debian mirror;
#   4. make the realm `demo` from it and run a command in it.
# Every step is skipped when already done, so running it again is cheap.
# ./setup.sh --install-only stops after step 1.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

PACKAGES=(btrfs-progs systemd-container mmdebstrap debootstrap busybox-static zstd pigz xz-utils
          tar util-linux e2fsprogs erofs-utils cryptsetup-bin python3-venv nftables)
# The tests boot Debian's kernel in QEMU to check sealed images against the real dm-verity, build
# a static setuid program for the attacks of a host user (gcc, libc6-dev), and watch processes;
# the registry tests check that podman, skopeo, buildah and umoci read what realms pushes and
# that realms reads what they make (the registry server itself is unpacked by the tests); the
# build tests make a local signed Debian archive (apt-ftparchive from apt-utils, gnupg).
[ "${EXTRAS:-}" = test ] && PACKAGES+=(qemu-system-x86 kmod gcc libc6-dev strace procps
                                       skopeo umoci podman buildah runc apt-utils gnupg)
REPO=$PWD
STAMP=.venv/.installed
realms() { "$REPO/.venv/bin/realms" "$@"; }

say() { printf '[+]: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run it as root (realms mounts filesystems and runs containers)" >&2
    exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "Installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup.sh: realms needs Python 3.11 or newer ($PYTHON is older)" >&2
    exit 1
}
# Reinstalled when pyproject.toml changes; EXTRAS=test adds the test tools.
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/realms ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ] ||
   { [ -n "${EXTRAS:-}" ] && [ "$(cat "$STAMP-$EXTRAS" 2>/dev/null)" != "$wanted" ]; }; then
    say "Installing realms${EXTRAS:+ with its $EXTRAS tools} into $REPO/.venv"
    "$PYTHON" -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check --editable ".${EXTRAS:+[$EXTRAS]}"
    echo "$wanted" > "$STAMP"
    [ -z "${EXTRAS:-}" ] || echo "$wanted" > "$STAMP-$EXTRAS"
fi
# Compiled once here: PYTHONDONTWRITEBYTECODE may be set, and compiling on every start is slow.
.venv/bin/python -m compileall -q src/realms >/dev/null
ln -sf "$REPO/.venv/bin/realms" /usr/local/bin/realms

[ "${1:-}" = "--install-only" ] && exit 0

realms init
realms appimg build     # the default appimg base; does nothing when it is up to date
realms show demo >/dev/null 2>&1 || realms new demo
say "Running a command in realm demo:"
realms run demo -- sh -c '. /etc/os-release; echo "$PRETTY_NAME in realm $(hostname), as $(id -un) (uid $(id -u))"'
