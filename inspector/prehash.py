"""The capture file's SHA-256 for the manifest, begun in a forked process as the command starts.

For its first ~0.1-0.15 s a run is one thread: the interpreter's imports (numpy, the dissectors'
modules) and the signatures, before any packet is read (measured on the 2-core machine of
docs/BENCHMARK.md: the dissect workers fork ~0.17-0.19 s after the process starts, ~0.1 s after
the command's function is entered). On a machine with a second core that core is idle meanwhile,
and hashing a 386 MB capture takes ~0.27 s of one core. ``start`` opens the file and forks a
hashing process at once, at ``HASH_NICENESS``; the reader of that very file (``claim``: the same
device, inode, size and modification time as the file it maps) takes its digest from that process
instead of hashing the file itself.

A run whose other processes keep every core busy while the packets are read (two dissect workers
and the reader on two cores) ``pause``s the hashing process for that time and ``resume``s it once
the packets are read: hashing beside them took the workers' and the reader's time, whatever its
niceness, and under ``SCHED_IDLE`` too (docs/BENCHMARK.md, fifteenth to seventeenth sessions). A
parallel run whose processes leave a core idle (a long call, whose few flows leave the workers
little to do) lets it go on for as long as they do (``idlecores.IdleCores``, checked after every
batch). A one-process run leaves it going, on the core the reader leaves idle.

The hashing process is a ``forked.start`` child (its answer comes back as that module's children's
do). It hashes its own descriptor of the file, opened before the fork, through a mapping whose
pages it releases as it goes (``_hash``); it leaves when the file is hashed, or when its parent
is gone (the control pipe's end of file), without running anything its parent registered
(``os._exit``).

Weakness: it starts for a single capture file only, in a process that may use more than one
core. Several files are read apart, by other processes, and on one core nothing is idle at the
start; those are hashed as before (a gzip file's compressed bytes as they are inflated,
``capture.files``). A file rewritten in place without changing its size or modification time
would be taken for the same file.
"""

from __future__ import annotations

import atexit
import hashlib
import mmap
import os
import select
import stat
from typing import TYPE_CHECKING

from inspector.capture.pages import drop_pages
from inspector.errors import InspectorError

if TYPE_CHECKING:
    from inspector.forked import Forked

#: Bytes read and hashed at a time (``digest.READ_CHUNK``: a buffer that stays in the core's cache).
READ_CHUNK = 1024 * 1024
_PAUSE, _RESUME = b"p", b"r"
#: ``_hash``'s answer for a file that became shorter than the size it was started for.
_SHORTER = "!the file became shorter while it was hashed"


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class EarlyHash:
    """A hashing process started by ``start`` (``job``, a ``forked.Forked``), seen from the
    process that started it."""

    def __init__(self, job: Forked, identity: tuple[int, int, int, int], control_fd: int, path: str) -> None:
        self.job = job
        self.pid = job.pid
        self.identity = identity
        self.control_fd = control_fd
        self.path = path
        self.owner_pid = os.getpid()
        #: Once the process is reaped: its hex digest, or the error that stands for it.
        self._digest: str | None = None
        self._failure: InspectorError | None = None

    def pause(self) -> None:
        """Stop hashing after the piece in hand until ``resume``."""
        self._tell(_PAUSE)

    def resume(self) -> None:
        """Go on hashing (after ``pause``)."""
        self._tell(_RESUME)

    def _tell(self, message: bytes) -> None:
        if self._reaped:
            return
        try:
            os.write(self.control_fd, message)
        except OSError:  # the hashing process is gone: ``digest`` says so
            pass

    @property
    def _reaped(self) -> bool:
        return self._digest is not None or self._failure is not None

    def digest(self) -> str:
        """The file's hex SHA-256, waited for; an InspectorError naming the file if the hashing
        process failed or was stopped."""
        if not self._reaped:
            if os.getpid() != self.owner_pid:
                raise InspectorError(f"{self.path}: SHA-256: asked of its hashing process from another process")
            self.resume()  # a paused process would never answer
            self._collect()
        if self._digest is None:
            raise self._failure  # type: ignore[misc]
        return self._digest

    def poll(self) -> bool:
        """Whether the process has ended; if it has, its answer is kept and it is reaped (so a
        long-lived caller that never asks for the digests holds no process or descriptor)."""
        if not self._reaped:
            if not self.job.ended():
                return False
            self._collect()
        return True

    def discard(self) -> None:
        """Stop the hashing process (its digest is not wanted)."""
        if not self._reaped:
            self.job.discard()
            self._failure = InspectorError(f"{self.path}: SHA-256: its hashing process was stopped")
            self._forget()

    def _collect(self) -> None:
        """Read the process's answer (``forked.Forked.result``), reap it and keep what it said."""
        try:
            digest = self.job.result()
        except InspectorError as e:
            self._failure = e
            if self._file_shrank():  # the process died reading past the file's new end
                self._failure = InspectorError(f"{self.path}: SHA-256: {_SHORTER[1:]}")
        else:
            self._digest = digest
        finally:
            self._forget()

    def _file_shrank(self) -> bool:
        try:
            return os.stat(self.path).st_size < self.identity[2]
        except OSError:
            return False

    def _forget(self) -> None:
        try:
            os.close(self.control_fd)
        except OSError:
            pass
        if self in _started:
            _started.remove(self)


#: How much lower the hashing process runs than the run (``niceness.py``): its digest is needed
#: only for the manifest, written last. ``capture.files`` hashes at the same niceness.
HASH_NICENESS = 19

#: The hashing process no reader has taken yet; every one this process started (stopped at exit
#: unless reaped); the process that started them (a forked child inherits these, not the processes).
_current: EarlyHash | None = None
_started: list[EarlyHash] = []
_owner_pid = 0


def start(paths: list, niceness: int | None = None) -> None:
    """Fork a process hashing ``paths[0]`` at ``niceness`` (by default ``HASH_NICENESS``) when
    ``paths`` is one regular file (gzip-compressed or not: the digest is of the stored bytes),
    this platform forks and this process may use more than one core; otherwise do nothing (the
    file's reader hashes it, and reports what is wrong with it). A process that hashes this very
    file already goes on; one hashing another file no reader took is stopped."""
    global _current
    if len(paths) != 1 or not hasattr(os, "fork") or not hasattr(mmap.mmap, "madvise") or not hasattr(select, "poll"):
        return
    if _usable_cores() < 2:
        return
    _forget_inherited()
    for early in list(_started):
        early.poll()
    path = os.fspath(paths[0])
    try:
        # Without blocking: opening a named pipe for reading would wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if _current is not None:
            if _current.identity == _identity(st):
                os.close(fd)
                return
            _current.discard()
            _current = None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return
        control_r, control_w = os.pipe()
    except OSError:
        os.close(fd)
        return
    from inspector import forked

    what = f"{path}: SHA-256"
    chosen = HASH_NICENESS if niceness is None else niceness
    job = forked.start(what, _hash_in_child, what, fd, st.st_size, control_r, control_w, chosen)
    os.close(fd)
    os.close(control_r)
    if job is None:
        os.close(control_w)
        return
    _current = EarlyHash(job, _identity(st), control_w, path)
    _started.append(_current)


def _usable_cores() -> int:
    """The cores this process may run on. With one, no core is idle while the run starts, and
    the hashing process only costs switches: pinned to one core (``taskset -c 0``) a one-worker
    run took 4.19 -> 4.26 s with it (4 alternating runs), so the reader's own thread hashes."""
    from inspector.idlecores import usable_cores

    return usable_cores()


def _forget_inherited() -> None:
    """In a process forked from the one that started them, the hashing processes are not this
    process's to take or stop: its copies of them are dropped (their descriptors stay open)."""
    global _current, _owner_pid
    if os.getpid() != _owner_pid:
        _current = None
        _started.clear()
        _owner_pid = os.getpid()


def claim(st: os.stat_result) -> EarlyHash | None:
    """The hashing process of the file ``st`` describes, for its one reader in the process that
    started it; None when there is none (another file, a file changed since, another process)."""
    global _current
    _forget_inherited()
    early = _current
    if early is None or early.identity != _identity(st):
        return None
    _current = None  # taken: the next run in this process may start its own
    return early


def _stop_left_over() -> None:
    """At exit: a hashing process whose digest was not taken (the run failed before it was
    needed) is stopped. A run that wrote its manifest took every digest it started."""
    global _current
    _forget_inherited()
    _current = None
    while _started:
        _started.pop().discard()


atexit.register(_stop_left_over)


def _hash_in_child(what: str, fd: int, size: int, control: int, parent_end: int, niceness: int) -> str:
    """The hashing process (``forked.start``'s child): ``size`` bytes of ``fd`` hashed
    ``READ_CHUNK`` at a time, a control message (pause, resume, the parent's end of file) looked
    for before each piece; the hex digest, or an InspectorError saying ``what`` went wrong."""
    from inspector.niceness import lower_priority

    os.close(parent_end)  # the control pipe's end of file is then the parent's going away
    lower_priority(niceness)
    answer = _hash(fd, size, control)
    if answer.startswith("!") or not answer:
        raise InspectorError(f"{what}: {answer[1:] or 'its parent is gone'}")
    return answer


def _hash(fd: int, size: int, control: int) -> str:
    """What ``_hash_in_child`` answers: the digest, "!reason", or "" when the parent has gone.

    The file is hashed through a read-only mapping of its ``size`` bytes, ``READ_CHUNK`` at a
    time: a positional read copies each piece out of the page cache first, which cost ~10% more
    CPU here (386 MB: 0.28 against 0.31 s). A file found shorter than ``size`` before a piece is
    an error; one cut between that check and the piece's reading kills this process (SIGBUS),
    which ``EarlyHash`` reports the same way.
    """
    sha = hashlib.sha256()
    # poll, not select: a descriptor numbered past FD_SETSIZE (a library caller with many files
    # open) is no error to it.
    control_poll = select.poll()
    control_poll.register(control, select.POLLIN)
    paused = False
    done = 0
    mapping = None
    try:
        while done < size:
            if control_poll.poll(None if paused else 0):  # a message, or the parent's end of file
                message = os.read(control, 64)
                if not message:
                    return ""
                paused = message[-1:] == _PAUSE
                continue
            try:
                if os.fstat(fd).st_size < size:
                    return _SHORTER
                if mapping is None:
                    mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
                end = min(done + READ_CHUNK, size)
                with memoryview(mapping) as view:
                    sha.update(view[done:end])
                # The piece's pages leave this process's resident set: mapped whole, a 386 MB
                # file made this process a 385 MB one.
                drop_pages(mapping, done, end)
            except (OSError, ValueError) as e:
                return f"!cannot read: {getattr(e, 'strerror', None) or e}"
            done = end
        return sha.hexdigest()
    finally:
        if mapping is not None:
            mapping.close()
