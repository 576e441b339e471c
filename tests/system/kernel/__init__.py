"""Tests against a real Linux kernel in QEMU, for what the host kernel cannot do (device-mapper).

:mod:`tests.system.kernel.vm` boots Debian's own kernel with a small busybox initramfs under QEMU's
software emulation and runs a shell script in it; the tests here use it to prove that sealed
images open under the kernel's dm-verity as Citadel opened them.
"""
