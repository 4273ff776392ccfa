"""idlecores: the CPU a run's processes use, read from /proc, against the cores it may use."""

import os
import subprocess
import sys
import time

import pytest

from inspector import idlecores
from inspector.idlecores import IdleCores, process_cpu_seconds, usable_cores

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc (Linux)")


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_process_cpu_seconds_grow_with_its_work():
    before = process_cpu_seconds(os.getpid())
    _spin(0.1)
    after = process_cpu_seconds(os.getpid())
    assert before is not None and after is not None
    assert after - before == pytest.approx(0.1, abs=0.05)


def test_stat_is_read_where_there_is_no_schedstat(monkeypatch):
    real_open = open

    def no_schedstat(path, *args, **kwargs):
        if str(path).endswith("/schedstat"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_schedstat)
    before = process_cpu_seconds(os.getpid())
    _spin(0.1)
    after = process_cpu_seconds(os.getpid())
    assert before is not None and after is not None
    assert after - before == pytest.approx(0.1, abs=0.05)  # clock ticks: 10 ms steps


def test_no_answer_for_a_process_that_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_cpu_seconds(child.pid) is None
    gate = IdleCores([child.pid], cores=2)
    assert gate() is None and gate() is None


def test_a_busy_worker_leaves_no_core_idle_and_a_sleeping_one_leaves_it():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    sleeping = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # One core for this process and the busy one: it takes most of it.
        on_one_core = IdleCores([busy.pid], cores=1, min_idle=0.9)
        idle_beside_a_sleeper = IdleCores([sleeping.pid], cores=1, min_idle=0.5)
        assert on_one_core() is None and idle_beside_a_sleeper() is None  # the first call measures nothing
        time.sleep(0.3)
        assert on_one_core() is False
        assert idle_beside_a_sleeper() is True
    finally:
        busy.kill()
        sleeping.kill()
        busy.wait()
        sleeping.wait()


def test_this_process_own_work_counts():
    gate = IdleCores([], cores=1, min_idle=0.5)
    gate()
    _spin(0.2)
    assert gate() is False


def test_usable_cores_are_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(idlecores.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert usable_cores() == 3
    monkeypatch.delattr(idlecores.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(idlecores.os, "cpu_count", lambda: None)
    assert usable_cores() == 1
