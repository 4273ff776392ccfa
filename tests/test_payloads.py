"""The dissect stage's packet selection (payloads.py): handing the dissectors only the packets
they can still take must not change what they learn."""

from __future__ import annotations

import numpy as np
import pytest

from inspector import payloads
from inspector.flows import Flow
from tests.conftest import pure_python_only
from inspector.payloads import (
    MEDIA_CAP_PACKETS,
    NAMER_CAP_PACKETS,
    ROUTE_BOTH,
    ROUTE_DNS,
    ROUTE_MEDIA,
    ROUTE_NAMER,
    FlowInspection,
    PayloadStage,
    _still_wanted,
)


def _Flow(state) -> Flow:
    """A flow of the flow table holding ``state`` (only its state is read here)."""
    f = Flow()
    f.state = state
    return f


def _state(route: int, namer_packets: int = 0, media_packets: int = 0, transport: str = "udp") -> FlowInspection:
    st = FlowInspection(route, transport, 50000, 443)
    st.namer_packets = namer_packets
    st.media_packets = media_packets
    return st


def test_a_capped_namer_gets_only_its_remaining_packets() -> None:
    flows = [_Flow(_state(ROUTE_NAMER, namer_packets=NAMER_CAP_PACKETS - 2))]
    slot_of = np.zeros(10, dtype=np.int64)
    first_byte = np.full(10, 0x16, dtype=np.uint8)
    assert _still_wanted(flows, slot_of, first_byte).tolist() == [0, 1]


def test_a_media_flow_namer_counts_only_dtls_records() -> None:
    st = _state(ROUTE_MEDIA, namer_packets=NAMER_CAP_PACKETS - 1, media_packets=MEDIA_CAP_PACKETS - 1)
    flows = [_Flow(st)]
    # Packets: STUN, STUN, DTLS, RTP, DTLS: the detectors take the first, the namer the first DTLS.
    first_byte = np.array([0x00, 0x01, 0x16, 0x80, 0x16], dtype=np.uint8)
    slot_of = np.zeros(5, dtype=np.int64)
    assert _still_wanted(flows, slot_of, first_byte).tolist() == [0, 2]
    st.media_done = True
    assert _still_wanted(flows, slot_of, first_byte).tolist() == [2]


def test_dns_flows_are_uncapped_and_done_flows_get_nothing() -> None:
    dns = _state(ROUTE_DNS, namer_packets=1000)
    finished = _state(ROUTE_BOTH)
    finished.namer_done = finished.media_done = True
    flows = [_Flow(dns), _Flow(finished), _Flow(None)]
    slot_of = np.array([0, 1, 2, 0, 1, 0], dtype=np.int64)
    first_byte = np.zeros(6, dtype=np.uint8)
    assert _still_wanted(flows, slot_of, first_byte).tolist() == [0, 3, 5]
    assert _still_wanted([_Flow(finished)], np.zeros(3, dtype=np.int64), first_byte[:3]) is None


def test_interleaved_flows_keep_capture_order() -> None:
    flows = [_Flow(_state(ROUTE_BOTH, namer_packets=NAMER_CAP_PACKETS - 1, media_packets=MEDIA_CAP_PACKETS - 2)),
             _Flow(_state(ROUTE_NAMER, namer_packets=NAMER_CAP_PACKETS - 1))]
    slot_of = np.array([1, 0, 1, 0, 0, 1], dtype=np.int64)
    first_byte = np.full(6, 0x80, dtype=np.uint8)
    # Flow 0 may still take max(1, 2) = 2 packets, flow 1 one.
    assert _still_wanted(flows, slot_of, first_byte).tolist() == [0, 1, 3]


def _every_live_packet(flows, slot_of, first_byte):
    """The selection before budgets: every packet of a flow not yet done."""
    live = np.array([f.state is not None and not f.state.done for f in flows], dtype=bool)
    at = np.flatnonzero(live[slot_of])
    return at if at.shape[0] else None


def _run(path, batch_size: int):
    from inspector.pipeline import AnalyzeOptions, process_capture

    stage = PayloadStage()
    result = process_capture(path, AnalyzeOptions(batch_size=batch_size), None, stage)
    # Without a labeller the pipeline keeps every flow's facts (pipeline.process_batches).
    facts = [result.facts[flow_id] for flow_id in result.flows.records()["flow_id"].tolist()]
    return facts, stage.packets_inspected, dict(stage.errors)


@pure_python_only
@pytest.mark.parametrize("batch_size", [97, 65536])
def test_budgeted_selection_learns_what_the_full_selection_learns(ndpi_dir, monkeypatch, batch_size) -> None:
    captures = [
        ndpi_dir / name
        for name in (
            "zoom.pcap",
            "zoom_p2p.pcapng",
            "teams.pcap",
            "quic.pcap",
            "quic_frags_ch_out_of_order_same_packet_craziness.pcapng",
            "stun_signal.pcapng",
            "gquic.pcap",
            "1kxun.pcap",
        )
        if (ndpi_dir / name).exists()
    ]
    assert captures
    for path in captures:
        budgeted = _run(path, batch_size)
        with monkeypatch.context() as patch:
            patch.setattr(payloads, "_still_wanted", _every_live_packet)
            full = _run(path, batch_size)
        assert budgeted == full, path.name


def test_flows_are_shared_among_workers_with_fewer_for_the_rtp_worker():
    import numpy as np

    from inspector.payloads import FIRST_SHARE, OTHER_SHARE, owner_of, owners_of

    ids = np.arange(10_000, 10_000 + 12 * 50)
    for n in (1, 2, 3, 5):
        vector = owners_of(ids, n)
        assert vector.tolist() == [owner_of(int(i), n) for i in ids]
        counts = np.bincount(vector, minlength=n)
        assert counts.sum() == ids.size and set(vector.tolist()) == set(range(n))
        if n > 1:  # worker 0 also folds the RTP headers: it takes the smaller share
            assert counts[0] < counts[1:].min()
    # Two workers: 5 of every 12 consecutive ids to worker 0, 7 to worker 1.
    assert (FIRST_SHARE, OTHER_SHARE) == (5, 7)
    assert np.bincount(owners_of(ids, 2)).tolist() == [5 * 50, 7 * 50]


class _Decoded:
    """The decoded-batch columns ``PayloadPackets`` and ``first_payload_routes`` read."""

    def __init__(self, first_bytes: list[int], dst_ports: list[int]) -> None:
        n = len(first_bytes)
        self.payload_len = np.full(n, 100, dtype=np.int64)
        self.proto = np.full(n, 17, dtype=np.uint8)  # UDP
        self.src_port = np.full(n, 50000, dtype=np.uint16)
        self.dst_port = np.array(dst_ports, dtype=np.uint16)
        self._first = np.array(first_bytes, dtype=np.uint8)

    def payload_byte(self, rows: np.ndarray, pos: int) -> np.ndarray:
        return self._first[rows]


class _BatchFlows:
    def __init__(self, flows: list[Flow], slots: list[int]) -> None:
        self.flows = flows
        self.rows = np.arange(len(slots), dtype=np.int64)
        self.flow_slot = np.array(slots, dtype=np.int64)


@pytest.mark.parametrize("seed", range(6))
def test_each_flow_not_yet_routed_is_routed_by_its_first_payload_packet(seed) -> None:
    from inspector.payloads import PayloadPackets, _routes, first_payload_routes

    rng = np.random.default_rng(seed)
    n_flows, n_packets = 40, 600
    routed = rng.random(n_flows) < 0.6
    flows = [_Flow(_state(ROUTE_NAMER) if routed[slot] else None) for slot in range(n_flows)]
    slots = rng.integers(0, n_flows, n_packets).tolist()
    # First bytes of STUN, DTLS, RTP and QUIC long headers; port 53 makes a DNS flow.
    first_bytes = rng.choice([0x00, 0x16, 0x80, 0xC3], n_packets).tolist()
    dst_ports = rng.choice([443, 3478, 53], n_packets).tolist()
    d = _Decoded(first_bytes, dst_ports)
    bf = _BatchFlows(flows, slots)

    expected = []
    for slot in sorted(set(slots)):
        if flows[slot].state is None:
            k = slots.index(slot)  # the flow's first payload packet in capture order
            route = _routes(d.proto[k : k + 1], d.src_port[k : k + 1], d.dst_port[k : k + 1], d._first[k : k + 1])
            expected.append((slot, int(route[0])))
    assert expected and len(expected) < len(set(slots))
    assert first_payload_routes(d, bf, PayloadPackets(d, bf)) == expected
    # Once every flow is routed, none is routed again.
    for f in flows:
        f.state = f.state or _state(ROUTE_BOTH)
    assert first_payload_routes(d, bf, PayloadPackets(d, bf)) == []


def _flow(state: FlowInspection, proto: int, server_port: int) -> Flow:
    """A finished flow 10.0.0.2 -> 192.0.2.9 holding ``state``: what ``PayloadStage.facts`` reads."""
    f = _Flow(state)
    f.flow_id, f.ip_version, f.proto = 1, 4, proto
    f.client_hi, f.client_lo, f.client_port = 0, 0x0A000002, 50000
    f.server_hi, f.server_lo, f.server_port = 0, 0xC0000209, server_port
    f.first_seen_ns, f.last_seen_ns = 1_000_000_000, 2_000_000_000
    return f


def _tls_packets() -> list[tuple[bool, bytes, int]]:
    """(from client, payload, TCP sequence number): a ClientHello naming example.com, then
    server records the namer cannot read, until its packet cap."""
    from tests.dissect.test_tls import client_hello, record, sni_extension

    hello = record(client_hello(sni_extension(b"example.com")))
    packets = [(True, hello, 1000)]
    seq = 5000
    for _ in range(NAMER_CAP_PACKETS - 1):
        junk = b"\x17\x03\x03\x00\x04" + b"\xff" * 4
        packets.append((False, junk, seq))
        seq += len(junk)
    return packets


def _turn_packets() -> list[tuple[bool, bytes, int]]:
    """STUN Allocate error responses carrying a TURN server's REALM, up to the detectors' cap."""
    from inspector.dissect import stun
    from tests.dissect.test_stun import attr, build

    message = build(0x0113, attr(stun.ATTR_REALM, b"telegram.org"))
    return [(k % 2 == 1, message, -1) for k in range(MEDIA_CAP_PACKETS)]


def _broken_quic_packets() -> list[tuple[bool, bytes, int]]:
    """Long-header datagrams whose length field overruns them: an error count each."""
    datagram = b"\xc3\x00\x00\x00\x01\x08" + bytes(range(8)) + b"\x00\x00" + b"\x44" * 40
    return [(True, datagram, -1) for _ in range(NAMER_CAP_PACKETS)]


@pytest.mark.parametrize(
    ("route", "proto", "port", "packets", "server_name"),
    [
        (ROUTE_NAMER, 6, 443, _tls_packets, "example.com"),
        (ROUTE_NAMER, 17, 443, _broken_quic_packets, ""),
        (ROUTE_MEDIA, 17, 3478, _turn_packets, "telegram.org"),
    ],
    ids=["tls-namer", "quic-errors", "turn-detectors"],
)
def test_a_done_dissector_is_replaced_by_what_it_found(route, proto, port, packets, server_name) -> None:
    """Once done, a dissector is freed and its findings kept (``FlowInspection.namer_found`` /
    ``media_found``); the flow's facts and the run's error counts are those of a flow whose
    dissectors were fed the same packets and kept to its end."""
    from inspector.dissect.detectors import MediaFlowState
    from inspector.naming import FlowNamer

    transport = "tcp" if proto == 6 else "udp"
    rows = packets()
    stage = PayloadStage()
    st = FlowInspection(route, transport, 50000, port)
    stage.dissect(
        [st] * len(rows),
        [c for c, _, _ in rows],
        [1_000_000_000 + k for k in range(len(rows))],
        [seq if seq >= 0 else None for _, _, seq in rows],
        [p[0] for _, p, _ in rows],
        lambda k: rows[k][1],
    )
    # A media flow's namer waits for DTLS records that may still come: only the detectors are done.
    assert (st.namer_done, st.media_done) == ((True, True) if route == ROUTE_NAMER else (False, True))
    assert st.namer is None and st.media is None
    assert (st.namer_found is not None) == (route == ROUTE_NAMER)
    assert (st.media_found is not None) == (route == ROUTE_MEDIA)

    kept = PayloadStage()
    reference = FlowInspection(route, transport, 50000, port)
    for k, (from_client, payload, seq) in enumerate(rows):
        if route == ROUTE_NAMER:
            if reference.namer is None:
                reference.namer = FlowNamer(transport, 50000, port)
            reference.namer.feed(from_client, payload, 1_000_000_000 + k, seq if seq >= 0 else None)
        else:
            assert isinstance(reference.media, MediaFlowState)
            reference.media.feed(from_client, payload, 1_000_000_000 + k)

    facts = stage.facts(_flow(st, proto, port))
    expected = kept.facts(_flow(reference, proto, port))
    assert facts == expected
    assert facts.server_name == server_name
    assert stage.errors == kept.errors
    # The findings' error counts were added once, when the dissector was done.
    assert stage.facts(_flow(st, proto, port)) == expected
    assert stage.errors == kept.errors
