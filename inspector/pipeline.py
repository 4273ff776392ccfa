"""The one place the stages are wired together (DESIGN.md §1).

capture -> decode (+ slow path) -> flows -> dissect/name -> classify -> sessions -> summarize.
Each capture is read batch by batch; only the flow table and the per-flow dissection state live
across batches, so memory is bounded by the batch size plus the flows, never by capture size.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inspector.capture.files import open_capture
from inspector.decode import SKIP_REASONS, STATE_FLOW, STATE_MERGED, STATE_SKIPPED, decode_batch
from inspector.flows import DEFAULT_IDLE_TIMEOUT_S, Flow, FlowConfig, FlowTable
from inspector.slowpath import SlowDecoder

DEFAULT_BATCH_SIZE = 65536


@dataclass(frozen=True, slots=True)
class AnalyzeOptions:
    """How to analyse.

    batch_size        packets per batch (results never depend on it; memory and speed do)
    idle_timeout_s    a flow ends after this long without packets
    inspect_payloads  run the dissectors and payload detectors (naming, classification)
    signature_dirs    extra signature directories on top of the built-in set
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    inspect_payloads: bool = True
    signature_dirs: tuple[Path, ...] = ()


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
    flows: list[Flow]
    decode: DecodeStats
    reader_stats: object
    payloads: object  # the PayloadStage (naming and detector state), or None


def process_capture(
    path: str | os.PathLike,
    options: AnalyzeOptions = AnalyzeOptions(),
    progress: Callable[[int], None] | None = None,
    payload_stage: object | None = None,
    collectors: Sequence[object] = (),
) -> CaptureResult:
    """Read one capture through decode, the flow table and (if given) the dissect stage."""
    reader = open_capture(path, batch_size=options.batch_size)
    table = FlowTable(FlowConfig(idle_timeout_s=options.idle_timeout_s))
    slow = SlowDecoder()
    stats = DecodeStats()
    finished: list[Flow] = []
    for batch in reader.batches(progress=progress):
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
        if slow_rows.shape[0]:
            stats.tunnelled_packets += int(((d.tunnel != 0) & (d.state == STATE_FLOW)).sum())
        bf = table.add(d)
        if payload_stage is not None and bf.rows.shape[0]:
            payload_stage.feed(d, bf)
        for c in collectors:
            c.add(d, bf)
        finished.extend(table.expire())
    finished.extend(table.finish())
    # Fragments whose datagram never completed were counted as decoded when held: move them.
    slow.reassembler.finish()
    incomplete = slow.reassembler.incomplete_fragments
    if incomplete:
        stats.packets_decoded -= incomplete
        stats.packets_skipped["fragment_incomplete"] += incomplete
    stats.datagrams_reassembled = slow.reassembler.reassembled_datagrams
    finished.sort(key=lambda f: f.flow_id)
    p = Path(path)
    return CaptureResult(str(p), p.name, finished, stats, reader.stats, payload_stage)


__all__ = [
    "AnalyzeOptions",
    "CaptureResult",
    "DecodeStats",
    "process_capture",
    "STATE_MERGED",
]
