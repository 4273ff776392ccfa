"""Run one function in a forked child process while the caller goes on (the end of a run).

After the packets, the tables are built and written in one process (the dissect workers have
stopped), so a run with ``--workers`` above 1 leaves a core idle for ~1 s. Two pieces of that
end depend on nothing the rest still computes: the destinations table once the call windows
are known (``sessions.build_calls``), and flows.csv once the tables are built
(``api.Analysis.write``). ``start`` forks a child that computes one of them from the memory it
inherits, and ``Forked.result`` collects what it returns, pickled through a pipe.

The child never runs the parent's exit handlers or finalisers (it leaves with ``os._exit``), so
the temporary files it inherits stay the parent's; it reads them with positional reads
(``spill.SpillFile``), which move no shared file offset. Where ``os.fork`` does not exist,
``start`` returns None and the caller runs the function itself.

Weakness: fork copies a process that may hold other threads' locks. The reading threads have
ended by then, and Arrow's thread pools, which pandas' string columns may have started, re-create
themselves in a child (Arrow's at-fork handlers: apache/arrow#2363, #14594). The child's resident
set counts the pages it shares with its parent, so a peak-memory figure per process sees both.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import sys
from collections.abc import Callable
from typing import Any

from inspector import gcpause, warmup
from inspector.errors import InspectorError


class Forked:
    """A function running in a child process; ``result()`` waits for it, ``discard()`` stops it.
    Either may be called after the other: the child is reaped once."""

    def __init__(self, pid: int, read_fd: int, what: str) -> None:
        self.pid = pid
        self.read_fd = read_fd
        self.what = what
        self._reaped = False

    def _reap(self, kill: bool) -> int:
        """Close the pipe and wait for the child (killed first if ``kill``); its exit code."""
        if self._reaped:
            return -1
        self._reaped = True
        os.close(self.read_fd)
        if kill:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)

    def discard(self) -> None:
        """Stop the child and forget its result (the caller failed before it needed it)."""
        self._reap(kill=True)

    def result(self) -> Any:
        """The function's return value; its exception, re-raised, if it raised one."""
        if self._reaped:
            raise InspectorError(f"{self.what}: its result was already taken or discarded")
        chunks = []
        try:
            while chunk := os.read(self.read_fd, 1 << 20):
                chunks.append(chunk)
        except BaseException:
            self._reap(kill=True)
            raise
        code = self._reap(kill=False)
        if not chunks or code != 0:
            raise InspectorError(f"{self.what}: the process building it stopped unexpectedly")
        failed, value = pickle.loads(b"".join(chunks))
        if failed:
            raise value
        return value


def start(what: str, fn: Callable[..., Any], *args: Any) -> Forked | None:
    """Run ``fn(*args)`` in a forked child; None where this platform cannot fork, or when the
    system refuses another process now (the caller then runs ``fn`` itself)."""
    if not hasattr(os, "fork"):
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    # A module import still running on the tables' warm-up thread ends before the fork, not
    # inside it (``warmup.py``): the modules it imports register fork handlers of their own
    # (logging's, concurrent.futures'), which, added while the fork runs its handlers, are run
    # after it without having run before it ("Exception ignored ... release unlocked lock").
    warmup.wait()
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        return None
    gcpause.before_fork()
    try:
        pid = os.fork()
    except OSError:  # EAGAIN (process limit), ENOMEM
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid:
        os.close(write_fd)
        return Forked(pid, read_fd, what)
    # The child: compute, send, and leave without running anything the parent registered. It
    # runs without the cyclic collector: a collection would write to the header of every object
    # it inherited, copying each page of them (the parent's, shared until written), for garbage
    # that leaves with the process anyway.
    gc.disable()
    code = 0
    try:
        os.close(read_fd)
        try:
            outcome = (False, fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the parent, which re-raises it
            outcome = (True, e)
        try:
            blob = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - an exception that does not pickle
            blob = pickle.dumps((True, InspectorError(f"{what}: {e.__class__.__name__}: {e}")))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(blob)
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child
        code = 1
    finally:
        os._exit(code)
