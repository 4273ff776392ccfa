"""pandas (and the terminal's rich, for a command that prints) imported on a second thread while
the packets are read.

The packet path never needs pandas: the modules it uses import it only where frames are made.
The tables after it do, and importing pandas is ~0.17 s of module code (~0.25 s when it loads
pyarrow too, ``cli.keep_pyarrow_unloaded``) that would otherwise run
between the last packet and the first table, with the second core idle. ``start()`` (called by
``pipeline.process_batches`` as the packets start, or in a parallel run by the reader's
``parallel.PayloadShipper`` once its first batches are sent) imports it on another thread instead; when
the tables need it, Python's import lock makes the main thread wait for that import to finish
(or do it, if it never started). Measured on the benchmark capture: 3.97 s -> 3.76 s with two
workers, 5.55 s -> 5.4 s in one process.

Forking while another thread imports would leave the child with that import's module locks held
by a thread it does not have, so a hook registered with ``os.register_at_fork`` waits for the
import before any fork (``multiprocessing``'s or ``forked.py``'s). The dissect workers are
forked before the packets start, so that wait is only ever a formality.

Weakness: the import takes the GIL from the reading thread for its duration; it pays only
because a parallel run's reader often waits on its workers, and a one-process run has the
SHA-256 thread's core half idle.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading

#: What the tables need that the packet path does not import (``also_import`` adds to it).
MODULES = ["pandas"]

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _import() -> None:
    for name in MODULES[:]:  # a copy: also_import may add to it meanwhile
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the main thread's own import reports it, where it is used
            pass


def also_import(*names: str) -> None:
    """Import ``names`` too, after pandas (the command line's terminal modules, when it will
    print): for a ``start`` still to come."""
    with _lock:
        MODULES.extend(name for name in names if name not in MODULES)


def start() -> None:
    """Import ``MODULES`` on another thread, once per process, unless they are imported already."""
    global _thread
    with _lock:
        if _thread is not None or all(name in sys.modules for name in MODULES):
            return
        _thread = threading.Thread(target=_import, name="import-tables")
        _thread.start()


def wait() -> None:
    """Return once the import ``start`` began has finished (at once if none is running)."""
    thread = _thread
    if thread is not None and thread is not threading.current_thread():
        thread.join()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=wait)
