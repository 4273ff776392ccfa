"""Several captures read at once, each one whole in a process of its own (``--workers N`` over
more than one file).

``parallel.py`` splits one capture's dissection over N processes beside the one reading it. A run
over many files (a day of rotated captures) repeated that split for every file: forking the
workers, filling and draining their pipeline and gathering their results cost ~0.1 s a file, so
twenty 50 k-packet files took longer with two workers than with one (5.3 s against 4.8 s, where
the same packets in one file take 2.7 s against 4.1 s). Here each file is read from start to end
in one forked process exactly as a one-process run reads it (``pipeline.process_capture`` with the
payload stage, the collectors and a labeller), up to N such processes at a time. What the table
stage needs of a capture comes back pickled (``CaptureReadApart``), and the tables are made from
it as from a capture read here, so they are byte-identical to a one-process run's (tested).

A file much larger than all the others together is read alone first, with every core
(``alone_files``): split N ways it finishes sooner than in one process while the others run out
of files.

Weakness: N captures are held at once, so the peak memory is up to N times one capture's (each
stays flat in its size), plus the parent's share of every capture read so far, as in any run.
"""

from __future__ import annotations

import selectors
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from inspector import forked

#: How much faster two processes name one capture than one does (benchmark capture, 2 cores:
#: 4.1 s -> 2.7 s). A file is read alone when its one-process time would exceed the time the other
#: processes need for the rest by more than this (``alone_files``).
INTRA_FILE_SPEEDUP = 1.5


@dataclass
class CaptureReadApart:
    """One capture as a process of its own read it: what ``api._build_tables`` takes of a
    ``pipeline.CaptureResult``, made there.

    path, name    the capture as given, and its file name
    entry         its manifest input entry (``api._input_entry``), SHA-256 still blank
    reader_stats  its ``CaptureStats``, the SHA-256 made (a text, so it pickles)
    flows_part    its flows table with every label decided (``summarize.CaptureFlows``)
    activity      its activity buckets' rows, sorted and folded (``ActivityBuckets.sorted_rows``),
                  or None without payload inspection
    rtp, rtcp     its RTP stream segments and RTCP reports (DataFrames), or None
    """

    path: str
    name: str
    entry: dict
    reader_stats: Any
    flows_part: Any
    activity: Any
    rtp: Any
    rtcp: Any


def alone_files(sizes: Sequence[int], workers: int) -> set[int]:
    """Indexes of the files read alone with every core, largest first, before the others.

    Reading one in a process of its own takes its one-process time while the other N - 1
    processes share the rest; read alone it takes that time over ``INTRA_FILE_SPEEDUP``, and the
    rest is shared by all N afterwards. With two processes the second is sooner once the file is
    more than 1.5 times the rest together. Sizes stand for reading times (packets per byte vary
    little between captures of the same kind). Weakness: a file of large packets (video) names
    faster per byte than one of small ones, so the split can miss by that much.
    """
    if workers < 2:
        return set(range(len(sizes)))
    alone: set[int] = set()
    rest = sum(sizes)
    for i in sorted(range(len(sizes)), key=lambda k: -sizes[k]):
        rest -= sizes[i]
        if sizes[i] * (workers - 1) > INTRA_FILE_SPEEDUP * rest:
            alone.add(i)
        else:
            break
    return alone


def map_in_processes(
    fn: Callable[..., Any],
    calls: Sequence[tuple],
    workers: int,
    on_result: Callable[[int], None] | None = None,
    after_first_start: Callable[[], None] | None = None,
) -> list[Any]:
    """``[fn(*args) for args in calls]``, each call in a forked process (``forked.start``), up to
    ``workers`` at a time, a new one started as soon as any ends; the results in call order.

    ``on_result(i)`` is called as call ``i``'s result arrives; ``after_first_start()`` once the
    first process is started, before the others (the caller imports there what every later
    process should inherit rather than import itself). When a process ends, the next one is
    started before its result is read and unpickled here. A call that cannot be forked runs
    here. The first exception a call raised is raised here, once every other process is stopped.
    """
    results: list[Any] = [None] * len(calls)
    running: dict[int, tuple[int, forked.Forked]] = {}  # read end of a job's pipe -> (call, job)
    selector = selectors.DefaultSelector()
    following = iter(range(len(calls)))
    first = True

    def start_more() -> None:
        nonlocal first
        while len(running) < workers:
            i = next(following, None)
            if i is None:
                return
            job = forked.start(f"reading {calls[i][0]}", fn, *calls[i])
            if job is None:
                results[i] = fn(*calls[i])
                if on_result is not None:
                    on_result(i)
            else:
                running[job.read_fd] = (i, job)
                selector.register(job.read_fd, selectors.EVENT_READ)
            if first:
                first = False
                if after_first_start is not None:
                    after_first_start()

    try:
        start_more()
        while running:
            # A process writes its result when it ends: its pipe turns readable then.
            fd = selector.select()[0][0].fd
            selector.unregister(fd)
            i, job = running.pop(fd)
            try:
                start_more()
            except BaseException:
                job.discard()
                raise
            results[i] = job.result()
            if on_result is not None:
                on_result(i)
    finally:
        for _, job in running.values():
            job.discard()
        selector.close()
    return results


__all__ = ["CaptureReadApart", "INTRA_FILE_SPEEDUP", "alone_files", "map_in_processes"]
