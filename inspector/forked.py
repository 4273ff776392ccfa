"""Run functions in forked child processes while the caller goes on (the end of a run; several
captures at once).

After the packets, the tables are built and written in one process (the dissect workers have
stopped), so a run with ``--workers`` above 1 leaves a core idle for ~1 s. Two pieces of that
end depend on nothing the rest still computes: the destinations table once the call windows
are known (``sessions.build_calls``), and flows.csv once the tables are built
(``api.Analysis.write``). ``start`` forks a child that computes one of them from the memory it
inherits, and ``Forked.result`` collects what it returns, pickled through a pipe. ``Server`` forks
a child that runs one call after another as it is sent their indexes (``apart.py``: one capture
each, several captures read at once).

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
import struct
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
        self._status: int | None = None  # the child's wait status, once it has been waited for

    def ended(self) -> bool:
        """Whether the child has exited (waited for without blocking; ``result`` then reads what
        it sent without waiting)."""
        if self._status is None and not self._reaped:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return False
            self._status = status
        return True

    def _reap(self, kill: bool) -> int:
        """Close the pipe and wait for the child (killed first if ``kill``); its exit code."""
        if self._reaped:
            return -1
        self._reaped = True
        os.close(self.read_fd)
        if self._status is None:
            if kill:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _, self._status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(self._status)

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
        return outcome(b"".join(chunks))


def fork_process() -> int | None:
    """``os.fork`` after what every fork here needs first; the child's pid (0 in the child), or
    None where this platform cannot fork or the system refuses another process now."""
    if not hasattr(os, "fork"):
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    # A module import still running on the tables' warm-up thread ends before the fork, not
    # inside it (``warmup.py``): the modules it imports register fork handlers of their own
    # (logging's, concurrent.futures'), which, added while the fork runs its handlers, are run
    # after it without having run before it ("Exception ignored ... release unlocked lock").
    warmup.wait()
    gcpause.before_fork()
    try:
        return os.fork()
    except OSError:  # EAGAIN (process limit), ENOMEM
        return None


def _outcome_blob(what: str, fn: Callable[..., Any], args: tuple) -> bytes:
    """``fn(*args)`` as the pickled (failed, value or exception) a parent unpickles."""
    try:
        outcome = (False, fn(*args))
    except BaseException as e:  # noqa: BLE001 - handed to the parent, which re-raises it
        outcome = (True, e)
    try:
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - an exception that does not pickle
        return pickle.dumps((True, InspectorError(f"{what}: {e.__class__.__name__}: {e}")))


def start(what: str, fn: Callable[..., Any], *args: Any) -> Forked | None:
    """Run ``fn(*args)`` in a forked child; None where this platform cannot fork, or when the
    system refuses another process now (the caller then runs ``fn`` itself)."""
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        return None
    pid = fork_process()
    if pid is None:
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
        _close_servers_fds()
        os.close(read_fd)
        blob = _outcome_blob(what, fn, args)
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(blob)
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child
        code = 1
    finally:
        os._exit(code)


_INDEX = struct.Struct("<q")
#: This process's ends of its serving children's pipes. A child forked later closes its copies
#: first (``_close_servers_fds``): a serving child sees the end of its input only once every
#: copy of the pipe's writing end is closed.
_server_fds: set[int] = set()


def _close_servers_fds() -> None:
    """In a new child: close the inherited ends of the parent's serving children's pipes."""
    for fd in _server_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _server_fds.clear()


class Server:
    """A forked child that runs ``fn(*calls[i])`` for each index ``i`` it is sent (``send``), one
    after another, until its input is closed (``close``): one process for many calls, whose
    memory the later calls reuse instead of faulting in a fresh process's pages again.

    ``calls`` are inherited at the fork, so only indexes cross to the child; each outcome comes
    back pickled, after its length, through a second pipe: ``read_fd`` turns readable when one
    is ready, ``take`` reads it whole, and ``outcome`` makes it the call's value or raises what
    the call raised there (``send`` and ``take`` raise ``InspectorError`` when the child died).
    The child collects its cycles after each call (the automatic collector is off, as in
    ``start``'s children: frozen inherited objects are not walked).
    """

    def __init__(self, pid: int, task_fd: int, read_fd: int, what: str) -> None:
        self.pid = pid
        self.task_fd = task_fd
        self.read_fd = read_fd
        self.what = what
        self._reaped = False

    @classmethod
    def start(cls, what: str, fn: Callable[..., Any], calls: list[tuple]) -> Server | None:
        """The serving child; None where no process can be forked (the caller runs the calls)."""
        try:
            task_read, task_write = os.pipe()
            result_read, result_write = os.pipe()
        except OSError:
            return None
        pid = fork_process()
        if pid is None:
            for fd in (task_read, task_write, result_read, result_write):
                os.close(fd)
            return None
        if pid:
            os.close(task_read)
            os.close(result_write)
            _server_fds.update((task_write, result_read))
            return cls(pid, task_write, result_read, what)
        gc.disable()
        code = 0
        try:
            _close_servers_fds()
            os.close(task_write)
            os.close(result_read)
            while (head := read_exactly(task_read, _INDEX.size)) is not None:
                (i,) = _INDEX.unpack(head)
                blob = _outcome_blob(f"{what} {calls[i][0]}", fn, calls[i])
                write_all(result_write, _INDEX.pack(len(blob)) + blob)
                gc.collect()
        except BaseException:  # noqa: BLE001 - nothing may escape a forked child
            code = 1
        finally:
            os._exit(code)

    def send(self, i: int) -> None:
        """Have the child run call ``i`` next."""
        try:
            write_all(self.task_fd, _INDEX.pack(i))
        except OSError as e:  # EPIPE: the child is gone
            self.discard()
            raise InspectorError(f"{self.what}: the process stopped unexpectedly") from e

    def take(self) -> bytes:
        """The pickled outcome of the call the child finished (ready once ``read_fd`` turned
        readable), for ``outcome``; raises InspectorError, the child reaped, if it died."""
        head = read_exactly(self.read_fd, _INDEX.size)
        blob = read_exactly(self.read_fd, _INDEX.unpack(head)[0]) if head is not None else None
        if blob is None:
            self.discard()
            raise InspectorError(f"{self.what}: the process stopped unexpectedly")
        return blob

    def close(self) -> None:
        """No more calls: the child leaves once it has finished its last; reaped here."""
        if self._reaped:
            return
        self._reaped = True
        for fd in (self.task_fd, self.read_fd):
            os.close(fd)
            _server_fds.discard(fd)
        os.waitpid(self.pid, 0)

    def discard(self) -> None:
        """Stop the child at once and reap it (safe after ``close`` and twice)."""
        if self._reaped:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.close()


def outcome(blob: bytes) -> Any:
    """The value a child's call returned (``Forked.result``, ``Server.take``); its exception,
    re-raised."""
    failed, value = pickle.loads(blob)
    if failed:
        raise value
    return value


def read_exactly(fd: int, n: int) -> bytes | None:
    """``n`` bytes from the pipe ``fd``, or None once it ends first."""
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to the pipe ``fd`` (a write to a pipe may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
