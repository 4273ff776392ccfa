"""forked.py: a function run in a forked child hands back its result or its exception."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from inspector import forked
from inspector.errors import InspectorError


def _pid_and(value):
    return os.getpid(), value


def _raise(kind, text):
    raise kind(text)


def _big(n: int) -> bytes:
    return bytes(range(256)) * (n // 256)


def test_the_function_runs_in_another_process_and_its_result_comes_back():
    job = forked.start("test", _pid_and, {"a": [1, 2, 3]})
    assert job is not None
    pid, value = job.result()
    assert pid != os.getpid() and value == {"a": [1, 2, 3]}


def test_a_result_larger_than_a_pipe_buffer_comes_back_whole():
    assert forked.start("test", _big, 5 << 20).result() == _big(5 << 20)


@pytest.mark.parametrize("kind", [ValueError, InspectorError])
def test_the_childs_exception_is_raised_here(kind):
    job = forked.start("test", _raise, kind, "disk full")
    with pytest.raises(kind, match="disk full"):
        job.result()


def test_a_child_that_dies_is_an_error_naming_what_it_built():
    job = forked.start("flows.csv", _kill_self)
    with pytest.raises(InspectorError, match="flows.csv: the process building it stopped unexpectedly"):
        job.result()


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_for(read_fd: int) -> str:
    os.read(read_fd, 1)
    return "done"


def test_ended_tells_without_blocking_and_result_still_comes_back():
    go_read, go_write = os.pipe()
    job = forked.start("test", _wait_for, go_read)
    os.close(go_read)
    try:
        assert not job.ended()  # still waiting for its byte
        os.write(go_write, b"x")
        for _ in range(1000):
            if job.ended():
                break
            threading.Event().wait(0.01)
        assert job.ended()  # asked again: the same answer, the child waited for once
        assert job.result() == "done"
    finally:
        os.close(go_write)


def test_ended_then_a_dead_child_is_still_an_error_naming_what_it_built():
    job = forked.start("media", _kill_self)
    for _ in range(1000):
        if job.ended():
            break
        threading.Event().wait(0.01)
    with pytest.raises(InspectorError, match="media: the process building it stopped unexpectedly"):
        job.result()


def test_discard_stops_a_child_that_is_still_working():
    import time

    job = forked.start("test", time.sleep, 60)
    started = time.monotonic()
    job.discard()
    assert time.monotonic() - started < 10
    with pytest.raises(ChildProcessError):
        os.waitpid(job.pid, 0)


def test_when_the_system_refuses_a_process_the_caller_runs_the_function_itself(monkeypatch):
    def refused():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refused)
    opened = len(os.listdir("/proc/self/fd"))
    assert forked.start("test", _pid_and, 1) is None
    assert len(os.listdir("/proc/self/fd")) == opened  # the pipe was closed again


def test_discard_after_result_and_result_after_discard_are_safe():
    job = forked.start("test", _pid_and, 1)
    assert job.result()[1] == 1
    job.discard()  # nothing left to stop: no error
    job = forked.start("test", _pid_and, 2)
    job.discard()
    with pytest.raises(InspectorError, match="already taken or discarded"):
        job.result()


def _collector_enabled() -> bool:
    import gc

    return gc.isenabled()


def test_the_child_runs_without_the_cyclic_collector():
    """A collection in the child would write to every inherited object's header (copying the
    pages it shares with the parent) for garbage that leaves with the process."""
    import gc

    assert gc.isenabled()
    assert forked.start("test", _collector_enabled).result() is False
    assert gc.isenabled()  # the parent's is untouched


_FREEZE = """
import gc
from inspector import forked, gcpause
keep = [[i] for i in range(1000)]
forked.start("test", len, "x").result()
before = gc.get_freeze_count()
gcpause.freeze_at_fork()
forked.start("test", len, "x").result()
print(before, gc.get_freeze_count() >= len(keep))
"""


def test_objects_are_frozen_at_a_fork_only_once_the_program_asks():
    """``gcpause.freeze_at_fork`` (the command line's choice, its process ending with the run):
    the objects alive at a fork leave the collector's generations; a library host's are left be."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FREEZE], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "True"]


_IMPORT_DURING_FORK = """
import pathlib, sys, tempfile, time
folder = tempfile.mkdtemp()
# A module that takes a while to import and registers fork handlers, as logging and
# concurrent.futures do: acquire a lock before a fork, release it after.
pathlib.Path(folder, "slow_fork_handlers.py").write_text(
    "import os, threading, time\\n"
    "lock = threading.Lock()\\n"
    "time.sleep(0.3)\\n"
    "os.register_at_fork(before=lock.acquire, after_in_parent=lock.release, after_in_child=lock.release)\\n"
)
sys.path.insert(0, folder)
from inspector import forked, warmup
warmup.MODULES[:] = ["slow_fork_handlers"]
warmup.start()
time.sleep(0.05)  # the import is under way on the warm-up thread
print(forked.start("a number", int, "7").result())
"""


def test_a_fork_waits_for_the_warm_up_import_before_the_fork_handlers_run():
    # Waited for inside the fork's handlers, the import would register its handlers while they
    # run: the release would then run without the acquire ("Exception ignored ... release
    # unlocked lock" on stderr, seen with two workers over several files).
    r = subprocess.run([sys.executable, "-c", _IMPORT_DURING_FORK], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "7", r.stderr
    assert r.stderr == ""


def _pid_and_double(x):
    if x < 0:
        raise ValueError(f"negative: {x}")
    return os.getpid(), 2 * x


def test_a_server_runs_each_call_it_is_sent_in_one_process():
    calls = [(1,), (-5,), (3,)]
    server = forked.Server.start("doubling", _pid_and_double, calls)
    try:
        server.send(0)
        first = forked.outcome(server.take())
        server.send(2)
        second = forked.outcome(server.take())
        server.send(1)
        with pytest.raises(ValueError, match="negative: -5"):
            forked.outcome(server.take())
    finally:
        server.close()
    assert first[1] == 2 and second[1] == 6 and first[0] == second[0] != os.getpid()


def test_a_server_that_dies_is_an_error_naming_it():
    server = forked.Server.start("doubling", _pid_and_double, [(1,)])
    os.kill(server.pid, signal.SIGKILL)
    with pytest.raises(InspectorError, match="doubling: the process stopped unexpectedly"):
        server.take()
    server.discard()  # already reaped: a no-op


def test_a_later_server_does_not_keep_an_earlier_one_alive():
    # The second child inherits the first one's pipes at its fork and closes them: otherwise the
    # first would never see the end of its input, and closing it would wait forever.
    first = forked.Server.start("first", _pid_and_double, [(1,)])
    second = forked.Server.start("second", _pid_and_double, [(2,)])
    try:
        first.send(0)
        assert forked.outcome(first.take())[1] == 2
        done = []
        closer = threading.Thread(target=lambda: (first.close(), done.append(True)), daemon=True)
        closer.start()
        closer.join(timeout=10)
        assert done == [True]
        second.send(0)
        assert forked.outcome(second.take())[1] == 4
    finally:
        first.discard()
        second.close()
