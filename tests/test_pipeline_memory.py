"""A long stream of packets (a live capture running for hours) holds bounded memory while it is
read: finished flows and their activity buckets wait on disk (``inspector.spill``)."""

from __future__ import annotations

import tracemalloc

from inspector.batch import LINKTYPE_ETHERNET, PacketBatch
from tests import craft as C

FLOWS_PER_BATCH = 800
BATCHES = 30
MINUTE_NS = 60 * 1_000_000_000


def _batches(held: list[int]):
    """Batch k: FLOWS_PER_BATCH new UDP flows from this machine, two packets each 150 ms apart,
    ten minutes after batch k-1 (so the flows before have timed out and ended). Records the
    traced memory before each batch."""
    for k in range(BATCHES):
        held.append(tracemalloc.get_traced_memory()[0])
        base_ns = 1_700_000_000 * 1_000_000_000 + k * 10 * MINUTE_NS
        packets, times = [], []
        for i in range(FLOWS_PER_BATCH):
            client_port = 1024 + (k * FLOWS_PER_BATCH + i) % 60000
            client = f"10.0.{(k * FLOWS_PER_BATCH + i) // 60000}.2"
            datagram = C.ether(C.udp4(client, "198.51.100.7", client_port, 9999, b"hello, telemetry"))
            for step in range(2):
                packets.append(datagram)
                times.append(base_ns + i * 1000 + step * 150_000_000)
        yield PacketBatch.from_packets(packets, times, LINKTYPE_ETHERNET)


def test_memory_held_while_reading_does_not_grow_with_finished_flows(monkeypatch):
    from inspector import spill
    from inspector.api import _collectors, _labeller, _payload_stage, _signature_set
    from inspector.pipeline import AnalyzeOptions, process_batches

    monkeypatch.setattr(spill, "DEFAULT_LIMIT_BYTES", 64 << 10)
    options = AnalyzeOptions(idle_timeout_s=120)
    stage, collectors, labeller = _payload_stage(options), _collectors(options), _labeller(_signature_set(options))
    held: list[int] = []
    tracemalloc.start()
    try:
        result = process_batches(
            _batches(held), "stream", "stream", lambda: None, options, stage, collectors, None, labeller
        )
    finally:
        tracemalloc.stop()
    flows = BATCHES * FLOWS_PER_BATCH
    assert len(result.flows) == flows
    assert result.flows.spilled > flows // 2 and collectors[0].spilled > flows // 2
    # Between batch 5 and the last, 19,200 flows ended: kept in memory, their records (101 B)
    # and buckets (2 x 40 B) alone would be ~3.5 MB. What is held may not grow by a third of it.
    grown = held[-1] - held[5]
    assert grown < 1_200_000, (grown, held)
    records = result.flows.records()
    packets = records["client_to_server_packets"].sum() + records["server_to_client_packets"].sum()
    assert packets == 2 * flows and len(set(records["flow_id"])) == flows
