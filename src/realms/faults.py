"""Named points where a test can kill realms for real.

With ``REALMS_KILL_AT=NAME`` in its environment, a realms process sends itself SIGKILL when it
reaches the checkpoint NAME: a real, uncatchable kill at an exact moment (between two steps of a
change to the store), which the crash-safety tests use beside kills at random moments. Without
the variable a checkpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "REALMS_KILL_AT"


def checkpoint(name: str) -> None:
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
