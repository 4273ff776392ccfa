"""Scheduling priority of work off the critical path: a whole process, or one thread."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Each check runs in a fresh interpreter: niceness cannot be lowered again without privilege.
_THREAD = """
import os, threading
from inspector.niceness import lower_thread_priority
seen = {}
def work():
    seen["returned"] = lower_thread_priority(5)
    seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
t = threading.Thread(target=work); t.start(); t.join()
me = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
print(me, seen["returned"], seen["thread"], os.getpriority(os.PRIO_PROCESS, 0))
"""


def _run(code: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return list(map(int, out.split()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_a_thread_lowers_its_own_priority_and_no_other():
    main_thread, returned, worker_thread, process = _run(_THREAD)
    assert returned == worker_thread == min(main_thread + 5, 19)
    assert process == main_thread  # PRIO_PROCESS 0 is the calling (main) thread: unchanged


def test_a_process_lowers_its_priority():
    code = "import os; from inspector.niceness import lower_priority; b = os.nice(0); print(b, lower_priority(3), os.nice(0))"
    before, returned, after = _run(code)
    assert returned == after == min(before + 3, 19)
