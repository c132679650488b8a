"""A peer started by the launcher ends when the launcher does, however the launcher ends.

The launcher names itself in the environment of every peer it starts
(``P2PTRAIN_LAUNCHER_PID``). Such a peer, at start-up:

- on Linux, asks the kernel to send it SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``). SIGKILL is the one signal a SIGSTOPped process
  does not leave pending, so a paused peer goes too, and with it its port. The
  kernel sends it when the *thread* that started the process ends: the
  launcher starts and restarts its peers from the thread that supervises them
  until they have all exited.
- everywhere, watches its parent's pid: once the peer has been handed to
  another parent (init, or a subreaper), its launcher is gone, and it stops as
  on SIGTERM, writing its result. A peer stopped with SIGSTOP cannot watch;
  without the Linux request it stops only once it is continued.

A peer started by hand has no such variable and is tied to nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from typing import Callable

LAUNCHER_PID = "P2PTRAIN_LAUNCHER_PID"
# How often a peer looks whether its launcher is still its parent.
WATCH_INTERVAL_SECONDS = 1.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class LauncherGone(RuntimeError):
    pass


def tie_to_launcher(environ=os.environ) -> int | None:
    """Tie this process to the launcher named in ``environ`` (see the module's text); returns its pid, or
    None for a peer started by hand. Raises LauncherGone if the launcher has already exited."""
    value = environ.get(LAUNCHER_PID)
    if not value:
        return None
    launcher = int(value)
    if sys.platform.startswith("linux"):
        _die_with_parent()
    # Checked after the request: a launcher that died before it took effect is caught here.
    if os.getppid() != launcher:
        raise LauncherGone(f"the launcher that started this peer (pid {launcher}) has exited; not starting")
    watch_launcher(launcher)
    return launcher


def _die_with_parent() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        # The pid watcher still stops a running peer; only a SIGSTOPped one would wait to be continued.
        print(f"p2ptrain.peer: warning: prctl(PR_SET_PDEATHSIG) failed ({os.strerror(ctypes.get_errno())}); "
              "this peer watches its launcher's pid instead", file=sys.stderr)


def watch_launcher(launcher: int, interval: float = WATCH_INTERVAL_SECONDS,
                   on_gone: Callable[[], None] | None = None) -> threading.Thread:
    """Call ``on_gone`` (by default: SIGTERM to this process, which stops a peer cleanly) once this process's
    parent is no longer ``launcher``; looks every ``interval`` seconds, from a daemon thread."""

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(interval)
        print(f"p2ptrain.peer: the launcher (pid {launcher}) has exited; stopping", file=sys.stderr, flush=True)
        (on_gone or _stop_self)()

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    return thread


def _stop_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
