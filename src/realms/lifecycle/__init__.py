"""Booted realms: a realm whose init (systemd) runs as PID 1 of its container, in the
background, until it is stopped (to be written; the model goes here)."""
