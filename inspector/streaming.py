"""Glue between a live capture and the batch pipeline: the manifest's input entry for a live
capture, and a side-effect-free look at an active flow's facts for the live view.

The pipeline itself is the same for files and live captures (``api.analyze_batches`` over
``pipeline.process_batches``); nothing here builds tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from inspector.capture.files import CaptureStats

__all__ = ["LiveInputStats", "live_input_stats", "preview_facts"]


@dataclass
class LiveInputStats(CaptureStats):
    """``CaptureStats`` for a live capture, read from the evidence file it wrote.

    The fields of ``CaptureStats`` describe the evidence pcapng (so the manifest entry reads like
    the one ``inspector analyze evidence.pcapng`` writes); ``manifest_extra`` adds what only the
    live run knows: interface, filter, limits, kernel drops.
    """

    manifest_extra: dict = field(default_factory=dict)


def live_input_stats(capture, bpf: str | None, evidence_path: Path, duration_s: float | None = None,
                     count: int | None = None) -> LiveInputStats:
    """The manifest input entry's source for ``capture`` (a finished ``LiveCapture``).

    ``packets_dropped_by_kernel`` is the kernel's own counter (PACKET_STATISTICS, packet(7)):
    packets that never reached the capture, so they are in neither the evidence nor the tables.
    """
    st = capture.stats
    try:
        size = os.stat(evidence_path).st_size
    except OSError:
        size = 0
    stats = LiveInputStats(
        path=str(evidence_path),
        size_bytes=size,
        sha256=st.evidence_sha256,
        format="pcapng",
        records_read=st.packets_captured,
        link_types=[st.linktype] if st.packets_captured else [],
        first_ts_ns=st.first_ts_ns if st.packets_captured else None,
        last_ts_ns=st.last_ts_ns if st.packets_captured else None,
        sections=1,
        interfaces=1,
    )
    stats.manifest_extra = {
        "source": "live",
        "interface": st.interface,
        "filter": bpf or "",
        "duration_limit_s": duration_s,
        "count_limit": count,
        "evidence_path": str(evidence_path),
        "evidence_sha256": st.evidence_sha256,
        "evidence_packets": st.evidence_packets,
        "packets_dropped_by_kernel": st.packets_dropped_by_kernel,
    }
    return stats


def preview_facts(payloads, flow):
    """FlowFacts of a flow that is still active, without counting its dissect errors twice.

    ``PayloadStage.facts`` adds the flow's dissect-error counts to the run's totals every time it
    is called; the pipeline calls it once, when the flow finishes. The live view looks earlier and
    more often, so the totals are put back afterwards (call on the pipeline's thread).
    """
    saved = payloads.errors.copy()
    try:
        return payloads.facts(flow)
    finally:
        payloads.errors = saved
