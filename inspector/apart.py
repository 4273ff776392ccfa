"""Several captures read at once, each one whole in a process of its own (``--workers N`` over
more than one file).

``parallel.py`` splits one capture's dissection over N processes beside the one reading it. A run
over many files (a day of rotated captures) repeated that split for every file: forking the
workers, filling and draining their pipeline and gathering their results cost ~0.1 s a file, so
twenty 50 k-packet files took longer with two workers than with one (5.3 s against 4.8 s, where
the same packets in one file take 2.7 s against 4.1 s). Here each file is read from start to end
by one process exactly as a one-process run reads it (``pipeline.process_capture`` with the
payload stage, the collectors and a labeller): N forked processes (``forked.Server``) each take
the next file as soon as they finish one. What the table stage needs of a capture comes back
pickled (``CaptureReadApart``), and the tables are made from it as from a capture read here, so
they are byte-identical to a one-process run's (tested). Twenty files: 2.96 s with two
processes, 4.65 s with one.

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
from inspector.errors import InspectorError

#: How much faster two processes name one capture than one does (benchmark capture, 2 cores:
#: 4.1 s -> 2.7 s). A file is read alone when its one-process time would exceed the time the other
#: processes need for the rest by more than this (``alone_files``).
INTRA_FILE_SPEEDUP = 1.5


@dataclass
class CaptureReadApart:
    """One capture as another process read it: what ``api._build_tables`` takes of a
    ``pipeline.CaptureResult``, made there.

    path, name    the capture as given, and its file name
    entry         its manifest input entry (``api._input_entry``), SHA-256 still blank
    reader_stats  its ``CaptureStats``, the SHA-256 made (a text, so it pickles)
    flows_part    its flows table with every label decided (``summarize.CaptureFlows``)
    activity      its activity buckets' rows, sorted and folded (``ActivityBuckets.sorted_rows``),
                  made ``ActivityBuckets`` again as it arrives (held as a capture read here holds
                  them, the rows beyond a store's limit in its temporary file); None without
                  payload inspection
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
    faster per byte than one of small ones, and a gzip-compressed capture holds several times
    its size in packets, so beside uncompressed ones the split can miss by that much.
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
    on_result: Callable[[int, Any], None] | None = None,
    after_first_start: Callable[[], None] | None = None,
) -> list[Any]:
    """``[fn(*args) for args in calls]`` in ``workers`` forked processes (``forked.Server``), each
    taking the next call as soon as it has finished one; the results in call order.

    A process serves many calls, so the later ones reuse the memory the first faulted in: one
    fresh process per file took ~12 k page faults each, twice the system time of one process
    over the same twenty files. ``on_result(i, value)`` is called as call ``i``'s result arrives;
    ``after_first_start()`` once the first process is started, before the others (the caller
    imports there what the later processes should inherit rather than import themselves). A
    process that finished is given its next call before its result is unpickled here. Where no
    process can be forked the calls run here. The first exception a call raised is raised here,
    once every process is stopped.
    """
    results: list[Any] = [None] * len(calls)
    following = iter(range(len(calls)))
    serving: dict[int, tuple[forked.Server, int]] = {}  # read end of a server's pipe -> (server, call)
    selector = selectors.DefaultSelector()
    try:
        for k in range(min(workers, len(calls))):
            server = forked.Server.start("reading", fn, list(calls))
            if server is None:
                break
            i = next(following)
            server.send(i)
            serving[server.read_fd] = (server, i)
            selector.register(server.read_fd, selectors.EVENT_READ)
            if k == 0 and after_first_start is not None:
                after_first_start()
        if not serving:
            for i in following:
                results[i] = fn(*calls[i])
                if on_result is not None:
                    on_result(i, results[i])
        while serving:
            # A server writes a call's outcome when the call ends: its pipe turns readable then.
            fd = selector.select()[0][0].fd
            server, i = serving[fd]
            try:
                blob = server.take()
            except InspectorError as e:  # the process died (killed, out of memory)
                raise _stopped(calls[i]) from e
            upcoming = next(following, None)
            if upcoming is None:
                selector.unregister(fd)
                del serving[fd]
                server.close()
            else:
                try:
                    server.send(upcoming)
                except InspectorError as e:
                    raise _stopped(calls[upcoming]) from e
                serving[fd] = (server, upcoming)
            results[i] = forked.outcome(blob)
            if on_result is not None:
                on_result(i, results[i])
    finally:
        for server, _ in serving.values():
            server.discard()
        selector.close()
    return results


def _stopped(call: tuple) -> InspectorError:
    """The error of a call whose process died: it names the call's first argument (the capture)."""
    return InspectorError(f"{call[0]}: the process reading it stopped unexpectedly")


__all__ = ["CaptureReadApart", "INTRA_FILE_SPEEDUP", "alone_files", "map_in_processes"]
