"""Whether a run's processes left a core idle lately: when a parallel run lets its capture's
hashing process work beside the packets.

A parallel run pauses the hashing process that ``prehash`` started while its packets are read
(``CaptureReader.hash_after_reading``): on the benchmark capture the reader and two dissect
workers keep both cores busy, and hashing beside them took their time whatever its priority.
A long call is the opposite case: a few media flows whose dissectors are done after their first
packets leave the workers next to idle (on 1 M RTP packets in 8 flows, the two workers used half
a core between them), and the paused hash then ran alone after the last packet, ~0.3 s of the
run's 1.5 s. ``IdleCores`` measures, between two calls (one a batch), the CPU the reading process
and its workers used against the cores the run may use; the reader lets the hash go on while at
least ``MIN_IDLE_CORES`` of a core was left over, and pauses it again when not.

The CPU of a process is read from ``/proc/PID/schedstat`` (nanoseconds on a CPU, Linux with
scheduler statistics), else ``/proc/PID/stat`` (clock ticks); the reading process's own from
``time.process_time``. Where neither file exists the answer is None and the hash stays paused,
as before this gate.

Weakness: the past interval stands for the next one; a capture that turns busy (a burst of new
flows) keeps the hash going for one batch, at ``prehash.HASH_NICENESS`` beside the busy
processes. The threshold is measured on a 2-core machine: on the benchmark capture the run leaves
0-0.2 of a core idle after a batch, on the long call 0.4-1.0.
"""

from __future__ import annotations

import os
import time

#: Unused CPU (in cores) over the last interval from which the hashing process may run.
MIN_IDLE_CORES = 0.45

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds process ``pid`` (its main thread, for ``schedstat``) has run, or None when
    this system does not say (no such process, no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name (field 2) may hold spaces and parentheses: fields after the last ")".
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND  # utime, stime (proc(5))
    except (OSError, ValueError, IndexError):
        return None


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask on Linux, else the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class IdleCores:
    """Called once per batch: whether this process and ``pids`` left at least ``min_idle`` of
    ``cores`` unused since the previous call (None on the first call and when a process's CPU
    cannot be read)."""

    def __init__(self, pids: list[int], cores: int, min_idle: float = MIN_IDLE_CORES) -> None:
        self.pids = list(pids)
        self.cores = cores
        self.min_idle = min_idle
        self._last: tuple[float, float] | None = None

    def _sample(self) -> tuple[float, float] | None:
        cpu = time.process_time()  # every thread of this process
        for pid in self.pids:
            seconds = process_cpu_seconds(pid)
            if seconds is None:
                return None
            cpu += seconds
        return time.monotonic(), cpu

    def __call__(self) -> bool | None:
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None or now[0] <= last[0]:
            return None
        used = (now[1] - last[1]) / (now[0] - last[0])
        return self.cores - used >= self.min_idle
