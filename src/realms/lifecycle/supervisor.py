"""The supervisor of one booted realm, where systemd is not PID 1 (no transient units).

:func:`realms.lifecycle.detach.launch` forks it from ``realms start`` (no second Python
start-up: what the command imported is there already), detached: a session of its own, stdin
from /dev/null, stdout and stderr appended to the realm's console log
(``logs/realm-NAME.console``, moved to ``.old`` once long). It lives as long as the realm:

1. It holds the realm's run lock (:meth:`realms.store.Layout.run_lock`), so that ``realms
   remove`` refuses a running realm and nothing else runs it as a one-shot container; then it
   prepares the container exactly as ``realms run`` does (:func:`realms.realm.realm_container`)
   with the tree's init as PID 1, and the network (:mod:`realms.network`).
2. It makes the realm's cgroup (:mod:`realms.lifecycle.cgroups`), moves nspawn into it before
   exec, and listens on nspawn's notify socket: ``X_NSPAWN_LEADER_PID`` and ``READY=1`` go
   into the runtime state (:mod:`realms.lifecycle.state`) and, once, to ``realms start``
   through a pipe (one JSON line: ``ready`` or ``error``). Once the realm is ready it
   executes the lean watcher (:mod:`realms.lifecycle.watch`: the same process, a third of the
   memory), which waits for nspawn and comes back here (:func:`resume_main`) for what follows
   unless only the runtime files and the cgroup are left to remove.
3. It is a child subreaper: if nspawn is SIGKILLed, the realm's init becomes its child and it
   stops it (poweroff, then ``cgroup.kill``). nspawn exiting 133 (a reboot from inside) boots
   the realm again; any other exit, or SIGTERM to the supervisor (what ``realms stop`` sends;
   it is passed to nspawn, which asks init to power off), ends it: the network is released,
   the runtime state and the cgroup removed.

If the supervisor itself is killed, the kernel sends nspawn SIGTERM (the realm powers off) and
the next start or stop cleans up after it (:func:`realms.lifecycle.state.running` never takes
a dead supervisor's record for a running realm).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from realms.errors import RealmsError
from realms.kinds import RealmState
from realms.lifecycle import cgroups, state, watch
from realms.lifecycle.detach import Report
from realms.lifecycle.state import POWEROFF
from realms.store import Store
from realms.system.libc import libc
from realms.units import now

if TYPE_CHECKING:
    from realms.container import Container
    from realms.network import NetworkPlan

REBOOT_STATUS = 133
"""nspawn's exit status when the container's init asked for a reboot."""
ORPHAN_GRACE = 10.0
"""How long init gets to power off when nspawn is gone, before everything is killed."""
REBOOT_LIMIT = (5, 60.0)
"""At most this many reboots from inside within so many seconds: a realm that reboots at once,
again and again, is stopped (its console log says why) instead of looping for ever."""
_PR_SET_CHILD_SUBREAPER = 36


def note(message: str) -> None:
    """A line of the supervisor's in the console log."""
    print(f"realms: {now()} {message}", file=sys.stderr, flush=True)


def supervise(store: Store, name: str, report: Report) -> int:
    """Run realm ``name`` until it stops for good; 0 if it stopped cleanly."""
    try:
        with store.run_lock(name):
            return Supervisor(store, name, report).run()
    except RealmsError as error:
        report.send({"error": error.message, "hint": error.hint})
        note(f"error: {error.message}")
        return 1


def boot_container(store: Store, name: str) -> tuple[Container, dict[str, Any]]:
    """Realm ``name``'s container with its init as PID 1, and its settings; the caller holds
    its run lock. A tree with no init is refused with a hint."""
    from realms.lifecycle.order import require_init
    from realms.realm import realm_container, realm_settings

    directory = store.realm_dir(name)
    container, view = realm_container(store, name, directory, [], root=True)
    require_init(view, name)
    return container._replace(boot=True), realm_settings(store, name)


class Supervisor:
    def __init__(self, store: Store, name: str, report: Report) -> None:
        self.store = store
        self.name = name
        self.report = report
        self.cgroup = cgroups.path(store.cgroup_name(name))
        self.stop_requested = False
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None
        self.reboots: list[float] = []
        self.plan: NetworkPlan | None = None
        self.release_network = False
        """Set on a resumed supervisor, which has no plan but may have a network to release."""
        self.record = state.Record(
            name=name,
            state=RealmState.STARTING,
            boot_id=state.boot_id(),
            supervisor=_self(),
            started=now(),
            cgroup=store.cgroup_name(name),
        )

    def save(self, **changes: Any) -> None:
        self.record = self.record.but(**changes)
        state.write(self.store, self.record)

    def run(self) -> int:
        wake = self._handle_signals()
        self.save()
        try:
            if cgroups.populated(self.cgroup):
                raise RealmsError(
                    f"realm {self.name!r} still has processes in its cgroup {self.cgroup}",
                    hint=f"stop it first: realms stop {self.name}",
                )
            container = self._prepare()
            cgroups.create(self.store.cgroup_name(self.name))
            status = self._boot_loop(container, wake, [])
            return 0 if status in (0, REBOOT_STATUS) else 1
        finally:
            self._clean_up()

    def resume(self, status: int, reboots: list[float]) -> int:
        """Go on where the watcher (:mod:`realms.lifecycle.watch`) stopped: nspawn exited with
        ``status``; boot again after a reboot from inside, or clean up."""
        wake = self._handle_signals()
        try:
            status = self._boot_loop(None, wake, reboots, status)
            return 0 if status in (0, REBOOT_STATUS) else 1
        finally:
            self._clean_up()

    def _handle_signals(self) -> int:
        """SIGCHLD and SIGTERM wake the loop (through the returned pipe); SIGTERM also stops."""
        wake_read, wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda _n, _f: None)
        signal.signal(signal.SIGTERM, self._on_term)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watch.BLOCKED)
        return wake_read

    def _prepare(self) -> Container:
        container, settings = boot_container(self.store, self.name)
        from realms import network

        # The plan decides the network (use-network = false included): nspawn's options
        # are its own, not the one-shot container's switch.
        self.plan = network.prepare(self.store, self.name, settings)
        container = container._replace(
            private_network=False, extra_args=[*container.extra_args, *self.plan.nspawn_args]
        )
        self.save(address=self.plan.address)
        return container

    def _on_term(self, _signum: int, _frame: Any) -> None:
        if not self.stop_requested:
            with contextlib.suppress(OSError):
                self.save(state=RealmState.STOPPING)
        self.stop_requested = True
        if self.nspawn is not None and self.nspawn.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.nspawn.pid, signal.SIGTERM)

    def _boot_loop(
        self,
        container: Container | None,
        wake: int,
        reboots: list[float],
        status: int | None = None,
    ) -> int:
        """Boot the realm until it stops for good (``status``: nspawn has exited already)."""
        from realms.container import launch, nspawn_argv

        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = str(self.store.notify_socket_path(self.name))
        # One cgroup2 tree for the realm, also on a hybrid host (systemd 258 drops v1).
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        self.reboots = reboots
        while True:
            if status is None:
                if self.stop_requested:
                    return 0
                container = container or self._prepare()
                argv = nspawn_argv(container, interactive=False, systemd_pid1=False)
                note(f"booting realm {self.name} (boot {self.record.boots})")
                with _notify_socket(self.store.notify_socket_path(self.name)) as notify:
                    self.notify = notify
                    self.nspawn = launch(
                        container,
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=1,
                        stderr=2,
                        env=env,
                        cgroup=self.cgroup,
                    )
                    self.save(
                        nspawn=_process(self.nspawn.pid), leader=None, state=RealmState.STARTING
                    )
                    if self.stop_requested:
                        os.kill(self.nspawn.pid, signal.SIGTERM)
                    status = self._wait(notify, wake)
                note(f"nspawn exited with status {status}")
            if cgroups.populated(self.cgroup):
                self._stop_orphans()
            reboots.append(time.monotonic())
            if len(reboots) > REBOOT_LIMIT[0]:
                reboots.pop(0)
                if reboots[-1] - reboots[0] < REBOOT_LIMIT[1]:
                    note(
                        f"realm {self.name} rebooted {REBOOT_LIMIT[0]} times within "
                        f"{REBOOT_LIMIT[1]:g}s: stopping it"
                    )
                    return status
            if status != REBOOT_STATUS or self.stop_requested:
                if self.report.fd >= 0:
                    self.report.send(
                        {
                            "error": f"realm {self.name!r} stopped before it was ready "
                            f"(systemd-nspawn exit status {status})"
                        }
                    )
                return status
            self.save(boots=self.record.boots + 1)
            status = None

    def _wait(self, notify: socket.socket, wake: int) -> int:
        """Pass on nspawn's notifications until it exits; its exit status."""
        assert self.nspawn is not None
        while True:
            readable, _, _ = select.select([notify.fileno(), wake], [], [])
            if notify.fileno() in readable:
                self._notified(notify)
            if wake in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake, 4096)
            status = self._reap()
            if status is not None:
                return status

    def _reap(self) -> int | None:
        """Reap every child that exited (nspawn, or orphans reparented to the supervisor);
        nspawn's exit status if it was one of them."""
        assert self.nspawn is not None
        found = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == self.nspawn.pid:
                found = os.waitstatus_to_exitcode(status)
                self.nspawn.returncode = found
        return found

    def _notified(self, notify: socket.socket) -> None:
        assert self.nspawn is not None
        try:
            data, ancillary, _flags, _address = notify.recvmsg(4096, socket.CMSG_SPACE(12))
        except BlockingIOError:
            return
        sender = None
        for level, kind, credentials in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = int.from_bytes(credentials[0:4], sys.byteorder)
        if sender != self.nspawn.pid:
            return  # only nspawn speaks for the realm
        fields: dict[str, str] = {}
        for line in data.decode(errors="replace").splitlines():
            key, equals, value = line.partition("=")
            if equals:
                fields[key] = value
        if "X_NSPAWN_LEADER_PID" in fields:
            with contextlib.suppress(ValueError):
                self.save(leader=_process(int(fields["X_NSPAWN_LEADER_PID"])))
        if fields.get("READY") == "1" and self.record.leader is not None:
            self._ready(self.record.leader.pid)

    def _ready(self, leader: int) -> None:
        if self.plan is not None:
            from realms import network

            try:
                network.configure(self.plan, leader)
            except RealmsError as error:
                note(f"error: {error.message}")
                self.report.send({"error": error.message, "hint": error.hint})
                self._on_term(signal.SIGTERM, None)
                return
        self.save(state=RealmState.RUNNING)
        note(f"realm {self.name} is ready (init {leader})")
        self.report.send({"ready": leader, "address": self.record.address})
        if not self.stop_requested:
            self._become_watcher()

    def _become_watcher(self) -> None:
        """Execute the lean watcher (:mod:`realms.lifecycle.watch`) in this process, keeping
        nspawn, the run lock and the notify socket; it comes back here when nspawn exits, unless
        only the runtime files and the cgroup are left to clean up."""
        from realms.kinds import NetworkMode
        from realms.store.locks import own_descriptor
        from realms.system.fs import temporary_name

        assert self.nspawn is not None and self.notify is not None
        lock = own_descriptor(self.store.run_lock_path(self.name))
        if lock is None:
            return  # cannot keep the lock across an exec: stay as we are
        path = self.store.runtime_state_path(self.name)
        spec = {
            "name": self.name,
            "nspawn": self.nspawn.pid,
            "notify_fd": self.notify.fileno(),
            "cgroup": self.store.cgroup_name(self.name),
            "state_path": str(path),
            "temporary_path": str(temporary_name(path)),
            "stopping_record": self.record.but(state=RealmState.STOPPING).to_json(),
            "forget": [str(file) for file in state.runtime_files(self.store, self.name)],
            "lean_cleanup": self.plan is None or self.plan.mode != NetworkMode.PRIVATE,
            "reboot_status": REBOOT_STATUS,
            "resume": {
                "store": str(self.store.root),
                "name": self.name,
                "record": self.record.to_json(),
                "lock_fd": lock,
                "notify_fd": self.notify.fileno(),
                "reboots": self.reboots,
            },
        }
        argv, spec_fd = watch.command("watch.main", spec, lean=True)
        for fd in (lock, self.notify.fileno()):
            os.set_inheritable(fd, True)
        signal.pthread_sigmask(signal.SIG_BLOCK, watch.BLOCKED)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(argv[0], argv)  # noqa: S606 (realms' own interpreter, argv made here)
        except OSError as error:
            os.close(spec_fd)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, watch.BLOCKED)
            note(f"cannot become the watcher, supervising as before: {error}")

    def _stop_orphans(self) -> None:
        """nspawn is gone but the realm's processes are not (nspawn was SIGKILLed): power its
        init off, and kill what is left after the grace time."""
        self.save(state=RealmState.STOPPING)
        leader = self.record.leader
        if leader is not None and leader.alive():
            note(f"nspawn is gone: powering off init {leader.pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(leader.pid, POWEROFF)
        deadline = time.monotonic() + ORPHAN_GRACE
        while cgroups.populated(self.cgroup) and time.monotonic() < deadline:
            cgroups.wait_empty(self.cgroup, 0.1)
            self._reap_any()
        if cgroups.populated(self.cgroup):
            note("killing what is left in the realm's cgroup")
            cgroups.kill(self.cgroup)
            cgroups.wait_empty(self.cgroup, 10)
        self._reap_any()

    def _reap_any(self) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _clean_up(self) -> None:
        with contextlib.suppress(Exception):
            self.save(state=RealmState.STOPPING)
        if cgroups.populated(self.cgroup):
            cgroups.kill(self.cgroup)
            cgroups.wait_empty(self.cgroup, 10)
        self._reap_any()
        if self.plan is not None or self.release_network:
            from realms import network

            try:
                network.release(self.store, self.name)
            except RealmsError as error:
                note(f"error: {error.message}")
        state.forget(self.store, self.name)
        note(f"realm {self.name} stopped")


@contextlib.contextmanager
def _notify_socket(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        notify.bind(str(path))
        notify.setblocking(False)
        yield notify
    finally:
        notify.close()
        path.unlink(missing_ok=True)


def _self() -> state.Process:
    found = state.Process.of(os.getpid())
    assert found is not None
    return found


def _process(pid: int) -> state.Process | None:
    return state.Process.of(pid)


def resume_main() -> None:
    """The supervisor's program once more, after the watcher (see :mod:`realms.lifecycle.watch`
    and :func:`watch.command`): ``argv[2]`` is the spec the supervisor gave the watcher, with
    nspawn's exit status and whether a stop was asked for."""
    from realms.store import Store

    spec = watch.read_spec()
    name = str(spec["name"])
    with contextlib.suppress(OSError):
        os.close(int(spec["notify_fd"]))
    os.set_inheritable(int(spec["lock_fd"]), False)  # held until this process ends
    try:
        store = Store.open(Path(spec["store"]))
        supervisor = Supervisor(store, name, Report(-1))
        supervisor.record = state.Record.from_json(spec["record"])
        supervisor.stop_requested = bool(spec["stop_requested"])
        supervisor.release_network = True
        status = supervisor.resume(int(spec["status"]), [float(t) for t in spec["reboots"]])
    except RealmsError as error:
        note(f"error: {error.message}")
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
