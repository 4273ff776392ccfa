"""Lower the scheduling priority of work that is off a run's critical path.

On Linux the niceness is a property of each thread (setpriority(2) with a thread id as the
``who`` of PRIO_PROCESS acts on that thread alone, NOTES of sched(7) and setpriority(2)); a
process forked later by another thread starts from that other thread's niceness. Elsewhere
POSIX defines it per process, so a thread's own is only lowered on Linux.
"""

from __future__ import annotations

import os
import sys
import threading


def lower_priority(increment: int) -> int | None:
    """This process's niceness raised by ``increment``; the new niceness, or None where the system
    has no ``nice`` or refuses it (the work goes on at the priority it had)."""
    try:
        return os.nice(increment)
    except (AttributeError, OSError):
        return None


def lower_thread_priority(increment: int) -> int | None:
    """The calling thread's niceness raised by ``increment``, the other threads' left alone; the
    new niceness, or None off Linux or where the system refuses it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        thread = threading.get_native_id()
        niceness = min(os.getpriority(os.PRIO_PROCESS, thread) + increment, 19)
        os.setpriority(os.PRIO_PROCESS, thread, niceness)
        return niceness
    except (AttributeError, OSError):
        return None
