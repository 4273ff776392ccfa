"""The one place the stages are wired together (DESIGN.md §1).

capture -> decode (+ slow path) -> flows -> dissect/name -> classify -> sessions -> summarize.
Each capture is read batch by batch; only the flow table and the per-flow dissection state live
across batches, so memory is bounded by the batch size plus the flows, never by capture size.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inspector import warmup
from inspector.batch import PacketBatch
from inspector.capture.files import open_capture
from inspector.decode import SKIP_REASONS, STATE_FLOW, STATE_MERGED, STATE_SKIPPED, decode_batch
from inspector.gcpause import paused_collector, return_free_memory
from inspector.flows import DEFAULT_IDLE_TIMEOUT_S, Flow, FlowConfig, FlowTable
from inspector.flowstore import FlowStore
from inspector.labels import EMPTY, PENDING
from inspector.slowpath import SlowDecoder

DEFAULT_BATCH_SIZE = 65536


@dataclass(frozen=True, slots=True)
class AnalyzeOptions:
    """How to analyse.

    batch_size        packets per batch (results never depend on it; memory and speed do)
    idle_timeout_s    a flow ends after this long without packets
    inspect_payloads  run the dissectors and payload detectors (naming, classification)
    signature_dirs    extra signature directories on top of the built-in set
    merge             treat several captures as one timeline (pieces of one machine's capture)
    workers           processes per capture (``inspector.parallel``); results never depend on it
    prepare_flows_csv flows.csv will be written (``Analysis.write``, format csv): a run of several
                      workers then formats its rows in a forked process while the calls are
                      built (``inspector.flows_csv``); the tables never depend on it
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    inspect_payloads: bool = True
    signature_dirs: tuple[Path, ...] = ()
    merge: bool = False
    workers: int = 1
    prepare_flows_csv: bool = False


@dataclass(slots=True)
class DecodeStats:
    """Packet accounting for one capture: read = decoded + skipped, always."""

    packets_read: int = 0
    packets_decoded: int = 0  # packets in flows, plus fragments folded into a reassembled datagram
    packets_skipped: Counter = field(default_factory=Counter)  # reason -> packets
    datagrams_reassembled: int = 0  # IP datagrams rebuilt from fragments (each counted once)
    tunnelled_packets: int = 0

    def as_dict(self) -> dict:
        return {
            "packets_read": self.packets_read,
            "packets_decoded": self.packets_decoded,
            "packets_skipped": sum(self.packets_skipped.values()),
            "skipped_by_reason": dict(sorted(self.packets_skipped.items())),
            "datagrams_reassembled": self.datagrams_reassembled,
            "tunnelled_packets": self.tunnelled_packets,
        }


@dataclass(slots=True)
class CaptureResult:
    """What one capture produced before the tables are built."""

    path: str
    name: str
    flows: FlowStore  # the finished flows' records, labelled as they ended
    decode: DecodeStats
    reader_stats: object
    payloads: object  # the PayloadStage (naming and detector state), or None
    labeller: object = None  # the labels.FlowLabeller that labelled the flows (its book and deferred flows)
    facts: dict = field(default_factory=dict)  # flow_id -> FlowFacts, kept only when no labeller was given
    collectors: tuple = ()  # the per-batch collectors (activity buckets, RTP headers) of this capture


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """What ``process_batches`` hands its ``on_batch`` hook after each batch.

    table     the FlowTable (``active_flows()``: the flows being counted)
    ended     (Flow, FlowFacts or None) for each flow that finished in this batch; its
              dissection state is gone, the facts are all that is left of it
    payloads  the PayloadStage, or None without payload inspection
    decode    the DecodeStats so far (live object: read it, do not keep it)
    """

    table: FlowTable
    ended: list
    payloads: object
    decode: DecodeStats


def process_capture(
    path: str | os.PathLike,
    options: AnalyzeOptions = AnalyzeOptions(),
    progress: Callable[[int], None] | None = None,
    payload_stage: object | None = None,
    collectors: Sequence[object] = (),
    labeller: object | None = None,
    reader: object | None = None,
) -> CaptureResult:
    """Read one capture through decode, the flow table and (if given) the dissect stage;
    ``reader`` is the capture's ``open_capture`` reader when the caller opened it already."""
    if reader is None:
        reader = open_capture(path, batch_size=options.batch_size)
    p = Path(path)
    return process_batches(
        reader.batches(progress=progress), str(p), p.name, lambda: reader.stats, options, payload_stage, collectors,
        labeller=labeller,
    )  # fmt: skip


def process_batches(
    batches: Iterable[PacketBatch],
    path: str,
    name: str,
    reader_stats: Callable[[], object],
    options: AnalyzeOptions = AnalyzeOptions(),
    payload_stage: object | None = None,
    collectors: Sequence[object] = (),
    on_batch: Callable[["BatchProgress"], None] | None = None,
    labeller: object | None = None,
) -> CaptureResult:
    """Run a stream of PacketBatch (a file reader, a live capture) through decode, the flow table,
    the dissect stage and the collectors.

    ``reader_stats()`` is called once the stream has ended (a live capture's counters are final
    only then). ``on_batch(BatchProgress)`` is called after each batch, on this thread (the live
    view reads the active flows there). A flow that finishes is summarised at once: its facts are
    taken, its dissection state dropped, ``labeller`` (a ``labels.FlowLabeller``) labels it, and
    only its compact record stays (``flowstore.FlowStore``), so a long capture holds dissectors for
    its active flows only and ~100 bytes per finished flow. The facts are the same as at the end of
    the capture: a flow's DNS name is the latest answer at or before its first packet, which was
    seen before the flow ended. Without a labeller the facts are kept in ``CaptureResult.facts``;
    a payload stage that returns no facts (``parallel.PayloadShipper``) leaves the labels pending.
    """
    if not getattr(payload_stage, "starts_warmup", False):  # a PayloadShipper starts it later
        warmup.start()  # the tables' pandas, imported while the packets are read
    table = FlowTable(FlowConfig(idle_timeout_s=options.idle_timeout_s))
    slow = SlowDecoder()
    stats = DecodeStats()
    store = FlowStore()
    facts: dict[int, object] = {}

    def summarise(done: list[Flow]) -> list:
        ended = []  # (flow, facts) for ``on_batch`` only
        keep = on_batch is not None
        for f in done:
            fact = None
            label = EMPTY
            if payload_stage is not None:
                fact = payload_stage.facts(f)
                f.state = None
                if fact is None:
                    label = PENDING
                elif labeller is not None:
                    label = labeller.label(f.flow_id, fact)
                else:
                    facts[f.flow_id] = fact
            store.append(f, label)
            if keep:
                ended.append((f, fact))
        return ended

    def one_batch(batch: PacketBatch) -> None:
        d, slow_rows = decode_batch(batch)
        if slow_rows.shape[0]:
            slow.decode_rows(d, slow_rows, batch)
        n = len(d)
        stats.packets_read += n
        skipped = d.state == STATE_SKIPPED
        n_skipped = int(skipped.sum())
        if n_skipped:
            counts = np.bincount(d.skip_reason[skipped], minlength=len(SKIP_REASONS))
            for code in np.flatnonzero(counts).tolist():
                stats.packets_skipped[SKIP_REASONS[code]] += int(counts[code])
        stats.packets_decoded += n - n_skipped
        if d.tunnel.any():  # GTP-U's inner packets, decoded by either path
            stats.tunnelled_packets += int(((d.tunnel != 0) & (d.state == STATE_FLOW)).sum())
        bf = table.add(d)
        if payload_stage is not None and bf.rows.shape[0]:
            payload_stage.feed(d, bf)
        for c in collectors:
            c.add(d, bf)
        ended = summarise(table.expire())
        if on_batch is not None:
            on_batch(BatchProgress(table, ended, payload_stage, stats))

    with paused_collector() as collector:
        for batch in batches:
            one_batch(batch)
            collector.tick()
        summarise(table.finish())
    # Fragments whose datagram never completed were counted as decoded when held: move them.
    slow.reassembler.finish()
    incomplete = slow.reassembler.incomplete_fragments
    if incomplete:
        stats.packets_decoded -= incomplete
        stats.packets_skipped["fragment_incomplete"] += incomplete
    stats.datagrams_reassembled = slow.reassembler.reassembled_datagrams
    return_free_memory()  # the batches' temporaries, before the tables are built
    return CaptureResult(path, name, store, stats, reader_stats(), payload_stage, labeller, facts, tuple(collectors))


__all__ = [
    "AnalyzeOptions",
    "BatchProgress",
    "CaptureResult",
    "DecodeStats",
    "process_batches",
    "process_capture",
    "STATE_MERGED",
]
