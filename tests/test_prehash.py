"""The capture's SHA-256 begun in a forked process as the command starts (inspector/prehash.py)."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import time

import pytest

from inspector import prehash
from inspector.errors import InspectorError


@pytest.fixture(autouse=True)
def no_left_over_process(monkeypatch):
    monkeypatch.setattr(prehash, "_usable_cores", lambda: 2)  # as on the 2-core machines here
    yield
    prehash._stop_left_over()
    assert prehash._current is None and prehash._started == []


def _file(tmp_path, name="c.pcap", size=3 * prehash.READ_CHUNK + 12345):
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def _gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_the_file_is_hashed_and_its_reader_takes_the_digest(tmp_path):
    path, data = _file(tmp_path)
    prehash.start([path])
    early = prehash.claim(os.stat(path))
    assert early is not None and prehash._current is None  # taken once
    assert prehash.claim(os.stat(path)) is None
    assert early.digest() == hashlib.sha256(data).hexdigest()
    assert early.digest() == hashlib.sha256(data).hexdigest()  # asked again: kept
    assert _gone(early.pid) and early not in prehash._started


def test_a_gzip_file_is_hashed_as_stored(tmp_path):
    path, data = _file(tmp_path)
    zipped = tmp_path / "c.pcap.gz"
    zipped.write_bytes(gzip.compress(data))
    prehash.start([zipped])
    early = prehash.claim(os.stat(zipped))
    assert early is not None and early.digest() == hashlib.sha256(zipped.read_bytes()).hexdigest()


def test_a_finished_process_whose_digest_nobody_asked_for_is_reaped_by_the_next_start(tmp_path):
    """A library caller may run many analyses and never read a manifest: each start reaps the
    hashing processes that have ended, keeping their answers, so none stays a zombie holding two
    descriptors."""
    first, data = _file(tmp_path)
    second, _ = _file(tmp_path, "second.pcap")
    prehash.start([first])
    early = prehash.claim(os.stat(first))
    for _ in range(1000):  # until it has ended (a zombie: not reaped yet), at most 10 s
        with open(f"/proc/{early.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    prehash.start([second])
    assert early not in prehash._started and _gone(early.pid)
    assert early._digest == hashlib.sha256(data).hexdigest()  # its answer kept when reaped
    assert early.digest() == hashlib.sha256(data).hexdigest()


def test_a_paused_process_goes_on_when_resumed_or_asked(tmp_path):
    path, data = _file(tmp_path)
    prehash.start([path])
    early = prehash.claim(os.stat(path))
    early.pause()
    early.resume()
    early.pause()
    assert early.digest() == hashlib.sha256(data).hexdigest()  # asking resumes it


@pytest.mark.parametrize("kind", ["missing", "directory", "two files", "empty list", "one core", "named pipe"])
def test_no_process_where_the_reader_hashes_the_file_itself(tmp_path, kind, monkeypatch):
    path, _ = _file(tmp_path, size=100)
    if kind == "one core":
        monkeypatch.setattr(prehash, "_usable_cores", lambda: 1)
    paths = {
        "missing": [tmp_path / "nope.pcap"],
        "directory": [tmp_path],
        "two files": [path, path],
        "empty list": [],
        "one core": [path],
    }.get(kind)
    if kind == "named pipe":  # opened without waiting for a writer, then left alone
        fifo = tmp_path / "fifo.pcap"
        os.mkfifo(fifo)
        paths = [fifo]
    prehash.start(paths)
    assert prehash._current is None and prehash._started == []


def test_usable_cores_are_the_affinity_masks(monkeypatch):
    monkeypatch.undo()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert prehash._usable_cores() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 5}, raising=False)
    assert prehash._usable_cores() == 3


def test_another_file_or_a_changed_file_is_not_taken(tmp_path):
    path, _ = _file(tmp_path)
    other, _ = _file(tmp_path, "other.pcap")
    prehash.start([path])
    assert prehash.claim(os.stat(other)) is None
    with open(path, "ab") as f:  # the same file, grown since: another size and mtime
        f.write(b"more")
    assert prehash.claim(os.stat(path)) is None
    assert prehash._current is not None  # left for the exit handler (the fixture)


def test_starting_for_another_file_stops_the_untaken_one(tmp_path):
    first, _ = _file(tmp_path)
    second, data = _file(tmp_path, "second.pcap")
    prehash.start([first])
    old = prehash._current
    prehash.start([first])  # the same file: the same process goes on
    assert prehash._current is old
    prehash.start([second])
    assert prehash._current is not old and _gone(old.pid)
    assert prehash.claim(os.stat(second)).digest() == hashlib.sha256(data).hexdigest()


def test_a_stopped_process_gives_no_digest(tmp_path):
    path, _ = _file(tmp_path)
    prehash.start([path])
    early = prehash.claim(os.stat(path))
    early.discard()
    assert _gone(early.pid)
    with pytest.raises(InspectorError, match="c.pcap: SHA-256: its hashing process was stopped"):
        early.digest()


def test_exit_handler_stops_what_no_run_took(tmp_path):
    path, _ = _file(tmp_path)
    prehash.start([path])
    early = prehash._current
    early.pause()  # as a parallel run that failed while reading leaves it
    prehash._stop_left_over()
    assert _gone(early.pid) and prehash._current is None and prehash._started == []


def test_a_forked_process_neither_takes_nor_stops_its_parents_hashing(tmp_path):
    path, data = _file(tmp_path)
    prehash.start([path])
    pid = os.fork()
    if pid == 0:  # the child: nothing of the parent's to take or stop
        code = 0
        try:
            if prehash.claim(os.stat(path)) is not None:
                code = 3
            prehash._stop_left_over()
        except BaseException:  # noqa: BLE001
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert prehash.claim(os.stat(path)).digest() == hashlib.sha256(data).hexdigest()


def test_asked_from_another_process_it_says_so(tmp_path):
    path, _ = _file(tmp_path)
    prehash.start([path])
    early = prehash.claim(os.stat(path))
    early.owner_pid = -1  # as in a process forked after the claim
    with pytest.raises(InspectorError, match="from another process"):
        early.digest()
    early.owner_pid = os.getpid()
    early.discard()


def test_hash_reads_control_messages_between_pieces(tmp_path):
    path, data = _file(tmp_path)
    read_end, write_end = os.pipe()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.write(write_end, b"p")  # paused, then resumed before it would block
        os.write(write_end, b"r")
        assert prehash._hash(fd, len(data), read_end) == hashlib.sha256(data).hexdigest()
        os.write(write_end, b"pr")  # read as one message: the last word counts
        assert prehash._hash(fd, len(data), read_end) == hashlib.sha256(data).hexdigest()
        os.close(write_end)  # the parent is gone: nothing to hash for
        assert prehash._hash(fd, len(data), read_end) == ""
    finally:
        os.close(fd)
        os.close(read_end)


def test_hash_reads_control_messages_on_a_descriptor_past_fd_setsize(tmp_path):
    """select() refuses descriptors from 1024 on; a library caller may have that many open."""
    import resource

    path, data = _file(tmp_path, size=5000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"the descriptor limit ({hard}) is below 1100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    read_end, write_end = os.pipe()
    high = os.dup2(read_end, 1050)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.write(write_end, b"pr")
        assert prehash._hash(fd, len(data), high) == hashlib.sha256(data).hexdigest()
    finally:
        for f in (fd, high, read_end, write_end):
            os.close(f)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_hash_of_a_file_shorter_than_its_size_is_an_error(tmp_path):
    path, data = _file(tmp_path, size=1000)
    read_end, write_end = os.pipe()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert prehash._hash(fd, len(data) + 1, read_end) == "!the file became shorter while it was hashed"
        assert prehash._hash(fd, 0, read_end) == hashlib.sha256(b"").hexdigest()
    finally:
        for f in (fd, read_end, write_end):
            os.close(f)


@pytest.mark.parametrize(
    "cut_to,sig,message",
    [
        # killed from outside (out of memory)
        (None, signal.SIGKILL, "the process building it stopped unexpectedly"),
        # the file cut meanwhile: reading a mapped page past its new end kills the process with
        # SIGBUS (sent as SIGKILL here, which no fault handler inherited from pytest reports)
        (1000, signal.SIGKILL, "the file became shorter while it was hashed"),
    ],
)
def test_a_hashing_process_that_died_is_an_error_naming_the_file(tmp_path, cut_to, sig, message):
    path, _ = _file(tmp_path)
    prehash.start([path])
    early = prehash.claim(os.stat(path))
    if cut_to is not None:
        os.truncate(path, cut_to)
    os.kill(early.pid, sig)
    with pytest.raises(InspectorError, match=f"c.pcap: SHA-256: {message}"):
        early.digest()
    assert _gone(early.pid)


def test_a_file_cut_while_the_process_is_paused_is_an_error(tmp_path):
    """The file is hashed through a mapping: each piece is read only after the file is seen to
    still hold it (reading a mapped page past a file's new end would kill the process)."""
    import threading

    path, data = _file(tmp_path)
    read_end, write_end = os.pipe()
    fd = os.open(path, os.O_RDONLY)

    def cut_then_resume():
        time.sleep(0.05)
        os.truncate(path, 1000)
        os.write(write_end, b"r")

    try:
        os.write(write_end, b"p")  # paused before its first piece
        helper = threading.Thread(target=cut_then_resume)
        helper.start()
        assert prehash._hash(fd, len(data), read_end) == "!the file became shorter while it was hashed"
        helper.join()
    finally:
        for f in (fd, read_end, write_end):
            os.close(f)


def test_the_hashing_process_releases_the_pages_it_has_hashed(tmp_path):
    """Its mapping's pages would otherwise stay in its resident set: a 386 MB capture made it a
    385 MB process, above the run's own peak."""
    import resource

    path, data = _file(tmp_path, size=64 * prehash.READ_CHUNK)
    read_end, write_end = os.pipe()
    fd = os.open(path, os.O_RDONLY)
    pid = os.fork()
    if pid == 0:  # measure in a fresh process: its peak is its own
        code = 1
        try:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            ok = prehash._hash(fd, len(data), read_end) == hashlib.sha256(data).hexdigest()
            grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            code = 0 if ok and grew_kib < 16 * 1024 else 2 + (not ok)
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # 2: its resident set grew by 16 MiB or more
    finally:
        for f in (fd, read_end, write_end):
            os.close(f)
