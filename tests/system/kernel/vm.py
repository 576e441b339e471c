"""A throwaway Linux guest in QEMU that runs one shell script against a few disk images.

The host kernel has no device-mapper, so whatever needs dm-verity runs here instead:

- :func:`fetch_kernel` downloads Debian's current ``linux-image-*-amd64`` package (the one the
  ``linux-image-amd64`` metapackage points at) with ``apt-get download``, unpacks it with
  ``dpkg -x``, drops the modules no guest needs (network, sound, graphics: 400 MB down to 60)
  and indexes the rest with ``depmod -b``, into a cache directory shared by test sessions
  (under a lock: other sessions may share the machine).
- :func:`build_initramfs` writes a gzip'd newc cpio archive (in Python): busybox-static and its
  applets, the kernel modules the guest needs with their dependencies from ``modules.dep`` (in
  load order), the host's ``veritysetup`` with the shared libraries ``ldd`` names, and an
  ``/init`` that mounts /proc, /sys and /dev, loads the modules, runs ``/test.sh`` between two
  markers on the serial console and powers off.
- :meth:`Guest.run` appends a small cpio archive holding the script to that initramfs, boots
  ``qemu-system-x86_64 -accel tcg -nodefaults`` (serial console on stdio, about 6 s from start
  to power-off) with the images as read-only virtio disks (``/dev/vda``,
  ``/dev/vdb``, ...), and returns what the script printed and its exit status. A guest that
  hangs, panics or never reaches the script fails with the tail of its serial console.

Nothing is installed here. The host needs (Debian packages): qemu-system-x86 (QEMU), kmod
(depmod), cryptsetup-bin (veritysetup), busybox-static, and apt access to Debian's kernel
packages; :data:`HOST_PACKAGES` lists them for CI.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
HOST_PACKAGES = ("qemu-system-x86", "kmod", "cryptsetup-bin", "busybox-static", "e2fsprogs")
# Drivers for the disks and loop devices, dm-verity, and the filesystems images carry; their
# dependencies (dm-mod, dm-bufio, reed_solomon, jbd2, mbcache, crc16, ...) come from modules.dep.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "loop",
    "dm-verity",
    "ext4",
    "crc32c_generic",  # ext4's metadata checksums ask the crypto API for "crc32c"
    "erofs",
)
# The module directories (under lib/modules/VERSION/kernel) kept in the cache: block and
# device-mapper drivers, virtio, filesystems and what they use; not network, sound or graphics.
KEPT_MODULES = (
    "arch",
    "block",
    "crypto",
    "fs",
    "lib",
    "mm",
    "drivers/block",
    "drivers/md",
    "drivers/virtio",
    # Private networks of booted realms (bridge, nftables; a realm's veth).
    "net",
    "drivers/net/veth.ko",
)
GUEST_PROGRAMS = ("/usr/sbin/veritysetup",)
BEGIN = "REALMS-GUEST-BEGIN"
END = "REALMS-GUEST-END"

INIT = f"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
export DM_DISABLE_UDEV=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run/cryptsetup /tmp /mnt
# Kernel messages stay off the console, so that it shows only what the script prints; the
# script reads them with dmesg.
dmesg -n 1
while read -r module; do
    insmod "/lib/modules/$module" || echo "guest: insmod $module failed"
done < /etc/modules.load
echo {BEGIN}
sh /test.sh
echo "{END} $?"
poweroff -f
"""


class VMError(Exception):
    """The guest could not be prepared or did not run its script to the end."""


def _run(*argv: str | Path, cwd: Path | None = None) -> str:
    program = str(argv[0])
    if not shutil.which(program):
        raise VMError(f"{program} is not installed (Debian: apt-get install {_package(program)})")
    result = subprocess.run(
        [str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise VMError(f"{program} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return result.stdout


def _package(program: str) -> str:
    return {
        QEMU: "qemu-system-x86",
        "depmod": "kmod",
        "apt-get": "apt",
        "apt-cache": "apt",
        "dpkg": "dpkg",
        "ldd": "libc-bin",
        "busybox": "busybox-static",
        "veritysetup": "cryptsetup-bin",
    }.get(program, program)


def require_qemu() -> str:
    """The path of qemu-system-x86_64, or VMError saying which package to install."""
    path = shutil.which(QEMU)
    if not path:
        raise VMError(f"{QEMU} is not installed: apt-get install qemu-system-x86")
    return path


# The kernel


@dataclass(frozen=True)
class Kernel:
    """An unpacked Debian kernel package: its version, image and indexed modules."""

    version: str
    vmlinuz: Path
    modules: Path


def kernel_package() -> str:
    """Debian's current generic amd64 kernel package, e.g. ``linux-image-6.1.0-56-amd64``."""
    output = _run("apt-cache", "depends", "linux-image-amd64")
    found = re.search(r"Depends: (linux-image-\S+-amd64)$", output, re.MULTILINE)
    if not found:
        raise VMError("apt knows no linux-image-amd64 package: run apt-get update")
    return found.group(1)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch_kernel(cache: Path) -> Kernel:
    """Debian's kernel, downloaded and unpacked once into ``cache`` and reused after that.

    Only the module directories a guest may need are kept (:data:`KEPT_MODULES`, about 60 MB
    of the package's 400), then depmod indexes what is left.
    """
    package = kernel_package()
    version = package.removeprefix("linux-image-")
    root = cache / package
    stamp = f"{package}\n" + "".join(f"{kept}\n" for kept in KEPT_MODULES)
    with _locked(cache / f"{package}.lock"):
        if _read(root / "complete") != stamp:
            work = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=cache))
            try:
                _run("apt-get", "download", package, cwd=work)
                (deb,) = work.glob(f"{package}_*.deb")
                _run("dpkg", "-x", deb, work / "root")
                deb.unlink()
                _prune(_modules_dir(work / "root", version) / "kernel", Path())
                shutil.rmtree(work / "root/usr/share", ignore_errors=True)
                _run("depmod", "-b", work / "root", version)
                (work / "complete").write_text(stamp)
                shutil.rmtree(root, ignore_errors=True)
                work.rename(root)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    vmlinuz = root / "root/boot" / f"vmlinuz-{version}"
    if not vmlinuz.exists():
        raise VMError(f"{package} has no boot/vmlinuz-{version}")
    return Kernel(version, vmlinuz, _modules_dir(root / "root", version))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _modules_dir(root: Path, version: str) -> Path:
    for candidate in (root / "lib/modules" / version, root / "usr/lib/modules" / version):
        if candidate.is_dir():
            return candidate
    raise VMError(f"the kernel package has no modules/{version} directory")


def _prune(directory: Path, relative: Path) -> None:
    """Remove what is neither in KEPT_MODULES nor on the way to something in it."""
    for child in directory.iterdir():
        name = str(relative / child.name)
        if name in KEPT_MODULES:
            continue
        if child.is_dir() and any(kept.startswith(name + "/") for kept in KEPT_MODULES):
            _prune(child, relative / child.name)
        elif child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    name = re.sub(r"\.ko(\.xz|\.gz|\.zst)?$", "", name)
    return name.replace("-", "_")


def module_load_order(modules: Path, names: Sequence[str]) -> list[str]:
    """The module files (relative to ``modules``) to load for ``names``, dependencies first.

    Built-in modules are left out; dependencies come from ``modules.dep`` (made by depmod).
    """
    dependencies: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        dependencies[target] = rest.split()
        by_name[_module_name(target)] = target
    builtin = {_module_name(line) for line in (modules / "modules.builtin").read_text().split()}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dependency in dependencies.get(path, []):
            visit(dependency)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key in builtin:
            continue
        if key not in by_name:
            raise VMError(f"kernel module {name} is neither built in nor in modules.dep")
        visit(by_name[key])
    return order


# The initramfs


class Cpio:
    """A newc ("070701") cpio archive, the format the kernel unpacks as an initramfs."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.inode = 1
        self.names: set[str] = set()

    def _entry(self, name: str, mode: int, body: bytes = b"") -> None:
        name = name.strip("/")
        if name in self.names:
            return
        self.names.add(name)
        encoded = name.encode() + b"\0"
        fields = (self.inode, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(encoded), 0)
        self.inode += 1
        self.data += b"070701" + "".join(f"{field:08X}" for field in fields).encode()
        self.data += encoded
        self.data += bytes(-len(self.data) % 4)
        self.data += body
        self.data += bytes(-len(self.data) % 4)

    def directory(self, name: str) -> None:
        parts = [part for part in name.strip("/").split("/") if part]
        for end in range(1, len(parts) + 1):
            self._entry("/".join(parts[:end]), stat.S_IFDIR | 0o755)

    def file(self, name: str, body: bytes, mode: int = 0o644) -> None:
        self.directory(os.path.dirname(name.strip("/")))
        self._entry(name, stat.S_IFREG | mode, body)

    def symlink(self, name: str, target: str) -> None:
        self.directory(os.path.dirname(name.strip("/")))
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self.data)


def _libraries(program: str) -> list[str]:
    """The shared libraries a program loads (the paths ldd names, the loader included)."""
    found = []
    for line in _run("ldd", program).splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            found.append(match.group(1))
    return found


def _module_bytes(path: Path) -> bytes:
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".zst":
        raise VMError(f"{path.name}: zstd-compressed modules are not supported")
    return path.read_bytes()


def build_initramfs(kernel: Kernel, target: Path) -> None:
    """The guest's base initramfs (busybox, modules, veritysetup, /init) as gzip'd cpio."""
    busybox = shutil.which("busybox")
    if not busybox:
        raise VMError("busybox is not installed (Debian: apt-get install busybox-static)")
    archive = Cpio()
    for directory in ("dev", "proc", "sys", "run", "tmp", "mnt", "etc", "root"):
        archive.directory(directory)
    archive.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    for applet in _run(busybox, "--list-full").split():
        archive.symlink(applet, "/bin/busybox")
    archive.file("init", INIT.encode(), 0o755)

    order = module_load_order(kernel.modules, GUEST_MODULES)
    loaded = []
    for relative in order:
        name = re.sub(r"\.ko\.(xz|gz|zst)$", ".ko", relative)
        archive.file(f"lib/modules/{name}", _module_bytes(kernel.modules / relative))
        loaded.append(name)
    archive.file("etc/modules.load", "".join(f"{name}\n" for name in loaded).encode())

    for program in GUEST_PROGRAMS:
        if not Path(program).exists():
            raise VMError(f"{program} is not installed (Debian: apt-get install cryptsetup-bin)")
        archive.file(program, Path(program).read_bytes(), 0o755)
        for library in _libraries(program):
            archive.file(library, Path(os.path.realpath(library)).read_bytes(), 0o755)
    target.write_bytes(gzip.compress(archive.finish(), compresslevel=6, mtime=0))


# Running a guest


@dataclass(frozen=True)
class GuestRun:
    """What a guest printed: the whole serial console, the script's output and exit status."""

    console: str
    output: str
    status: int


class Guest:
    """A kernel and base initramfs, booted afresh for each script."""

    def __init__(self, kernel: Kernel, initramfs: Path, workdir: Path) -> None:
        self.qemu = require_qemu()
        self.kernel = kernel
        self.initramfs = initramfs
        self.workdir = workdir
        self.runs = 0

    def run(self, script: str, drives: Sequence[Path] = (), timeout: float = 120) -> GuestRun:
        """Boot, run ``script`` with ``sh`` (the drives are /dev/vda, /dev/vdb, ... read-only),
        power off; VMError with the console's tail when the script does not finish.
        """
        self.runs += 1
        initrd = self.workdir / f"initrd-{self.runs}.img"
        base = self.initramfs.read_bytes()
        extra = Cpio()
        waits = "".join(
            f"i=0; while [ ! -b /dev/vd{chr(ord('a') + n)} ] && [ $i -lt 100 ]; "
            "do sleep 0.05; i=$((i+1)); done\n"
            for n in range(len(drives))
        )
        extra.file("test.sh", (waits + script).encode(), 0o755)
        # A second archive after the first, 4-byte aligned: the kernel unpacks both in order.
        initrd.write_bytes(base + bytes(-len(base) % 512) + extra.finish())
        argv = [
            self.qemu,
            "-accel",
            "tcg",
            "-m",
            "512",
            # No default devices (network card, VGA, ...): their firmware costs a second a boot.
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
            str(self.kernel.vmlinuz),
            "-initrd",
            str(initrd),
            "-append",
            "console=ttyS0 panic=-1 quiet",
        ]
        for drive in drives:
            argv += ["-drive", f"file={drive},format=raw,if=virtio,readonly=on"]
        return run_guest(argv, initrd, timeout, insmod_failures=True)


def run_guest(
    argv: list[str],
    initrd: Path,
    timeout: float,
    *,
    tail: int = 40,
    insmod_failures: bool = False,
) -> GuestRun:
    """Run QEMU ``argv``: a guest that prints BEGIN, its script's output and END STATUS, then
    powers off. ``initrd`` is deleted afterwards. VMError with the console's last ``tail``
    lines when QEMU fails, times out, or the script does not finish (with ``insmod_failures``,
    also when the initramfs could not load a module)."""
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        console = _text(expired.stdout or b"")
        message = f"the guest did not power off within {timeout} s:\n{_tail(console, tail)}"
        raise VMError(message) from None
    finally:
        initrd.unlink(missing_ok=True)
    console = _text(result.stdout)
    if result.returncode != 0:
        stderr = _text(result.stderr).strip()
        raise VMError(f"{QEMU} exited {result.returncode}: {stderr}\n{_tail(console, tail)}")
    begin = console.find(BEGIN + "\n")
    end = re.search(rf"^{END} (\d+)$", console, re.MULTILINE)
    if begin < 0 or not end:
        raise VMError(f"the guest did not run its script to the end:\n{_tail(console, tail)}")
    if insmod_failures:
        failed = re.search(r"^guest: insmod .* failed$", console[:begin], re.MULTILINE)
        if failed:
            raise VMError(f"{failed.group(0)}:\n{_tail(console[:begin], tail)}")
    output = console[begin + len(BEGIN) + 1 : end.start()]
    return GuestRun(console=console, output=output, status=int(end.group(1)))


def _text(data: bytes) -> str:
    return data.decode(errors="replace").replace("\r\n", "\n").replace("\r", "")


def _tail(console: str, lines: int = 40) -> str:
    return "\n".join(console.splitlines()[-lines:])
