"""Booted realms: a realm whose init (systemd) runs as PID 1 of its container, in the
background, until it is stopped.

- :mod:`~realms.lifecycle.control`: the commands (start, stop, restart, current), several
  realms in the order of their ``requires`` (:mod:`~realms.lifecycle.order`);
- :mod:`~realms.lifecycle.startstop`: one realm started (READY, or stopped with the end of its
  console log) or stopped (poweroff, ``cgroup.kill`` after the timeout), under its realm lock;
- :mod:`~realms.lifecycle.supervisor`: where systemd is not PID 1, the detached process that
  holds the realm's run lock, runs nspawn ``--boot`` in the realm's cgroup, records READY and
  boots again after a reboot from inside; where it is, the realm is a transient unit
  (:mod:`~realms.lifecycle.systemd`);
- :mod:`~realms.lifecycle.state`: the runtime state under ``/run/realms`` and the truth about
  it (pids with their start times, boot id, cgroup), what ``list`` shows and ``join`` uses;
- :mod:`~realms.lifecycle.cgroups`: the realm's cgroup (every process of it, killed at once);
- :mod:`~realms.lifecycle.join`: ``run`` and ``shell`` inside a running realm.

States (:class:`realms.kinds.RealmState`): stopped, starting (supervisor up, no READY yet),
running (READY, init alive), stopping (a stop under way, or processes left without a
supervisor: the next start or stop ends them).
"""
