"""The calls stage end to end on a capture crafted with scapy: one WebRTC call and two beacons.

The capture (``build_call_capture``) holds, from one machine 192.168.1.10:

* at T0 (five minutes before the call) a telemetry beacon: TCP to 198.51.100.7:443, a TLS
  ClientHello with SNI ``app-measurement.com`` (Google Analytics for Firebase) and a few bytes
  of application data each way;
* at T0+300 s a call to 203.0.113.50:40000 (UDP from port 50000): a STUN Binding request and
  success response (RFC 8489 §5, §14.2), a DTLS 1.2 ClientHello/ServerHello with use_srtp
  (RFC 6347 §4.2, RFC 5764 §4.1.1), then 20 s of RTP audio (Opus PT 111, 48 kHz clock, 20 ms
  frames: 960 ticks per packet, RFC 7587 §4.2) at 50 packets/s each way;
* at T0+310 s, inside the call, the same beacon to 198.51.100.8:443.

Every expected number below is computed from the packets the test built (IP total lengths,
RFC 791), not from the pipeline, and the window is the first and last media packet times.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import PcapWriter

import inspector
from tests.dissect.test_tls import (
    client_hello,
    record,
    server_hello,
    sni_extension,
    use_srtp_extension,
)

CLIENT = "192.168.1.10"
PEER = "203.0.113.50"
CLIENT_MEDIA_PORT, PEER_MEDIA_PORT = 50000, 40000
BEACON_OUTSIDE, BEACON_INSIDE = "198.51.100.7", "198.51.100.8"
BEACON_SNI = b"app-measurement.com"
T0_S = 1_700_000_000  # 2023-11-14T22:13:20Z
CALL_START_S = T0_S + 300
RTP_START_S = CALL_START_S + 0.5
RTP_PACKETS = 1000  # 20 s at 50 packets/s
RTP_INTERVAL_US = 20_000
RECEIVED_OFFSET_US = 5_000
OPUS_PT = 111
SENT_SSRC, RECEIVED_SSRC = 0x11111111, 0x22222222
STUN_MAGIC = 0x2112A442


@dataclass
class Built:
    """What the test wrote, as the truth to compare with: every packet with its time."""

    packets: list[tuple[int, object]] = field(default_factory=list)  # (time in µs, scapy packet)
    _summary: list[tuple[int, str, str, int]] = field(default_factory=list)  # time, src, dst, IP length

    def add(self, time_us: int, packet) -> None:
        self.packets.append((time_us, packet))
        self._summary.append((time_us, packet[IP].src, packet[IP].dst, len(bytes(packet[IP]))))

    def ip_totals(self, a: str, b: str) -> tuple[int, int, int, int]:
        """(packets a->b, bytes a->b, packets b->a, bytes b->a), IP total length (RFC 791)."""
        out = [0, 0, 0, 0]
        for _, src, dst, length in self._summary:
            if (src, dst) in ((a, b), (b, a)):
                side = 0 if src == a else 2
                out[side] += 1
                out[side + 1] += length
        return tuple(out)

    def times_us(self, a: str, b: str) -> tuple[int, int]:
        times = [t for t, src, dst, _ in self._summary if {src, dst} == {a, b}]
        return min(times), max(times)


def _us(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def _udp(src: str, dst: str, sport: int, dport: int, payload: bytes):
    return Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)


def stun_binding(response: bool, transaction: bytes) -> bytes:
    """STUN Binding request (0x0001, no attributes) or success response (0x0101) with an
    XOR-MAPPED-ADDRESS (RFC 8489 §14.2: port and address XOR the magic cookie)."""
    if not response:
        return struct.pack("!HHI", 0x0001, 0, STUN_MAGIC) + transaction
    xport = CLIENT_MEDIA_PORT ^ (STUN_MAGIC >> 16)
    xaddr = int.from_bytes(bytes(map(int, CLIENT.split("."))), "big") ^ STUN_MAGIC
    attr = struct.pack("!HHBBHI", 0x0020, 8, 0, 0x01, xport, xaddr)
    return struct.pack("!HHI", 0x0101, len(attr), STUN_MAGIC) + transaction + attr


def dtls_record(body: bytes, sequence: int) -> bytes:
    """DTLS 1.2 handshake record: type 22, version 0xFEFD, epoch 0, 48-bit sequence (RFC 6347 §4.1)."""
    return struct.pack("!BHH", 22, 0xFEFD, 0) + sequence.to_bytes(6, "big") + struct.pack("!H", len(body)) + body


def rtp_packet(seq: int, timestamp: int, ssrc: int, marker: bool = False) -> bytes:
    """RTP v2 header (RFC 3550 §5.1) and an 80-byte stand-in for an encrypted Opus frame."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | OPUS_PT, seq & 0xFFFF, timestamp, ssrc) + b"\xab" * 80


def _beacon(built: Built, server: str, start_s: float, client_port: int) -> None:
    """A TCP connection to ``server``:443: handshake, ClientHello with the telemetry SNI,
    ServerHello, 60 bytes of application data each way (TLS record type 23)."""
    t = _us(start_s)
    seq_c, seq_s = 1000, 5000
    hello = record(client_hello(sni_extension(BEACON_SNI)))
    reply = record(server_hello(), version=0x0303)
    data_c = record(b"\x01" * 60, content_type=23, version=0x0303)
    data_s = record(b"\x02" * 60, content_type=23, version=0x0303)

    def tcp(src, dst, sport, dport, flags, seq, ack, payload=b""):
        packet = Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
        return packet / Raw(payload) if payload else packet

    c, s, cp = CLIENT, server, client_port
    steps = [
        tcp(c, s, cp, 443, "S", seq_c, 0),
        tcp(s, c, 443, cp, "SA", seq_s, seq_c + 1),
        tcp(c, s, cp, 443, "A", seq_c + 1, seq_s + 1),
        tcp(c, s, cp, 443, "PA", seq_c + 1, seq_s + 1, hello),
        tcp(s, c, 443, cp, "PA", seq_s + 1, seq_c + 1 + len(hello), reply),
        tcp(c, s, cp, 443, "PA", seq_c + 1 + len(hello), seq_s + 1 + len(reply), data_c),
        tcp(s, c, 443, cp, "PA", seq_s + 1 + len(reply), seq_c + 1 + len(hello) + len(data_c), data_s),
    ]
    for i, packet in enumerate(steps):
        built.add(t + i * 10_000, packet)  # 10 ms apart: one 100 ms activity bucket


def build_call_capture(
    path: Path,
    received_first_seq: int = 1000,
    dropped_received_seqs: frozenset[int] = frozenset(),
) -> Built:
    """Write the capture of the module docstring to ``path`` (pcap, Ethernet, µs timestamps).

    ``received_first_seq``/``dropped_received_seqs``: the received stream's first RTP sequence
    number and the 16-bit sequence numbers left out of it (loss, RFC 3550 A.1).
    """
    built = Built()
    _beacon(built, BEACON_OUTSIDE, T0_S, 51000)
    transaction = bytes(range(1, 13))
    c_to_p = dict(src=CLIENT, dst=PEER, sport=CLIENT_MEDIA_PORT, dport=PEER_MEDIA_PORT)
    p_to_c = dict(src=PEER, dst=CLIENT, sport=PEER_MEDIA_PORT, dport=CLIENT_MEDIA_PORT)
    t = _us(CALL_START_S)
    built.add(t, _udp(payload=stun_binding(False, transaction), **c_to_p))
    built.add(t + 20_000, _udp(payload=stun_binding(True, transaction), **p_to_c))
    hello = client_hello(use_srtp_extension(0x0001), dtls=True, version=0xFEFD)
    built.add(t + 100_000, _udp(payload=dtls_record(hello, 0), **c_to_p))
    reply = server_hello(version=0xFEFD, extensions=use_srtp_extension(0x0001), dtls=True)
    built.add(t + 130_000, _udp(payload=dtls_record(reply, 0), **p_to_c))
    start = _us(RTP_START_S)
    for i in range(RTP_PACKETS):
        built.add(start + i * RTP_INTERVAL_US, _udp(payload=rtp_packet(20_000 + i, 960 * i, SENT_SSRC, i == 0), **c_to_p))
        seq = (received_first_seq + i) & 0xFFFF
        if seq in dropped_received_seqs:
            continue
        arrival = start + i * RTP_INTERVAL_US + RECEIVED_OFFSET_US
        built.add(arrival, _udp(payload=rtp_packet(seq, 7_000 + 960 * i, RECEIVED_SSRC, i == 0), **p_to_c))
    _beacon(built, BEACON_INSIDE, CALL_START_S + 10, 51001)
    built.packets.sort(key=lambda item: item[0])
    writer = PcapWriter(str(path), linktype=1, sync=True)
    try:
        writer.write_header(built.packets[0][1])
        for time_us, packet in built.packets:
            writer.write_packet(packet, sec=time_us // 1_000_000, usec=time_us % 1_000_000)
    finally:
        writer.close()
    return built


def _iso(time_us: int) -> str:
    return pd.Timestamp(time_us * 1000, unit="ns", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture(scope="module")
def clean_call(tmp_path_factory):
    path = tmp_path_factory.mktemp("call") / "crafted-call.pcap"
    built = build_call_capture(path)
    analysis = inspector.analyze([path])
    out = tmp_path_factory.mktemp("out")
    analysis.write(out)
    return built, analysis, out


def test_flows_are_classified_as_expected(clean_call):
    # The test's premise: the media flow is generic WebRTC (STUN/DTLS/RTP to an unnamed public
    # address) and both beacons are Google Analytics for Firebase telemetry, named by their SNI.
    _, analysis, _ = clean_call
    flows = analysis.flows.set_index("server_ip")
    assert flows.loc[PEER, "service"] == "webrtc"
    assert flows.loc[PEER, "session_id"] == "s1"
    for beacon in (BEACON_OUTSIDE, BEACON_INSIDE):
        assert flows.loc[beacon, "server_name"] == "app-measurement.com"
        assert flows.loc[beacon, "service"] == "google-analytics"
        assert flows.loc[beacon, "kind"] == "telemetry"
        assert flows.loc[beacon, "session_id"] == ""


def test_sessions_csv(clean_call):
    built, _, out = clean_call
    first_us, last_us = built.times_us(CLIENT, PEER)
    # Window: first media packet (the STUN request) to the last RTP packet (received stream,
    # 5 ms after the last sent one).
    assert first_us == _us(CALL_START_S)
    assert last_us == _us(RTP_START_S) + (RTP_PACKETS - 1) * RTP_INTERVAL_US + RECEIVED_OFFSET_US
    sent_p, sent_b, recv_p, recv_b = built.ip_totals(CLIENT, PEER)
    assert (sent_p, recv_p) == (1002, 1002)
    # IP bytes: RTP 20 + 8 + 12 + 80 = 120 per packet; STUN request 20 + 8 + 20, response
    # 20 + 8 + 32; DTLS records 20 + 8 + 13 + handshake.
    hello = client_hello(use_srtp_extension(1), dtls=True, version=0xFEFD)
    reply = server_hello(version=0xFEFD, extensions=use_srtp_extension(1), dtls=True)
    assert sent_b == 1000 * 120 + 48 + 41 + len(hello)
    assert recv_b == 1000 * 120 + 60 + 41 + len(reply)
    duration = (last_us - first_us) / 1e6
    expected = (
        "capture,session_id,service,start,end,duration_s,client_ip,media_flows,peers,is_p2p,relay_servers,"
        "bytes_sent,bytes_received,audio_streams,video_streams,screen_streams\n"
        f"crafted-call.pcap,s1,webrtc,{_iso(first_us)},{_iso(last_us)},{duration},{CLIENT},1,"
        f"{PEER}:{PEER_MEDIA_PORT},False,{PEER}:{PEER_MEDIA_PORT},{sent_b},{recv_b},2,0,0\n"
    )
    assert (out / "sessions.csv").read_text() == expected


def test_destinations_csv_byte_for_byte(clean_call):
    built, _, out = clean_call
    rows = []
    # During the call: the media peer (sent bytes first), then the beacon inside the window.
    # Outside: the beacon five minutes before. Columns: DESIGN.md §2.
    for session, server, name, service, org, kind, category, evidence in (
        ("s1", PEER, PEER, "webrtc", "unknown operator (IETF WebRTC protocols)", "conferencing",
         "webrtc-media", None),
        ("s1", BEACON_INSIDE, "app-measurement.com", "google-analytics",
         "Google LLC", "telemetry", "analytics", "sni:app-measurement.com"),
        ("", BEACON_OUTSIDE, "app-measurement.com", "google-analytics",
         "Google LLC", "telemetry", "analytics", "sni:app-measurement.com"),
    ):
        sent_p, sent_b, recv_p, recv_b = built.ip_totals(CLIENT, server)
        first_us, last_us = built.times_us(CLIENT, server)
        if evidence is None:
            evidence = _media_evidence(out)
        rows.append(
            f"crafted-call.pcap,{session},{name},{server},{service},{org},{kind},{category},1,"
            f"{sent_b},{recv_b},{sent_p},{recv_p},{_iso(first_us)},{_iso(last_us)},"
            f"{'True' if session else 'False'},{evidence}\n"
        )
    # Hand count of a beacon: 4 packets from the client (SYN, ACK, ClientHello, data: 40 + 40 +
    # 40 + hello + 40 + 65 bytes) and 3 from the server (SYN-ACK, ServerHello, data).
    hello = record(client_hello(sni_extension(BEACON_SNI)))
    assert built.ip_totals(CLIENT, BEACON_INSIDE) == (4, 40 + 40 + 40 + len(hello) + 40 + 65, 3,
                                                      40 + 40 + len(record(server_hello())) + 40 + 65)
    header = (
        "capture,session_id,destination,server_ips,service,organisation,kind,category,flows,bytes_sent,"
        "bytes_received,packets_sent,packets_received,first_seen,last_seen,during_call,evidence\n"
    )
    assert (out / "destinations.csv").read_text() == header + "".join(rows)


def _media_evidence(out: Path) -> str:
    """The media flow's evidence as flows.csv has it (the classifier's wording, not this stage's)."""
    flows = pd.read_csv(out / "flows.csv", dtype=str, keep_default_na=False)
    evidence = flows.loc[flows["server_ip"] == PEER, "evidence"].iloc[0]
    assert evidence.startswith("payload:")  # decided by STUN/DTLS/RTP payloads
    return f'"{evidence}"' if ";" in evidence and "," in evidence else evidence


def test_media_csv_clean(clean_call):
    _, _, out = clean_call
    media = pd.read_csv(out / "media.csv")
    assert sorted(media["direction"]) == ["received", "sent"]  # one stream each way, nothing else
    media = media.set_index("direction")
    assert media.loc["sent", "ssrc"] == SENT_SSRC and media.loc["received", "ssrc"] == RECEIVED_SSRC
    for direction in ("sent", "received"):
        row = media.loc[direction]
        assert row["media_kind"] == "audio"
        assert row["payload_type"] == OPUS_PT
        assert row["packets"] == RTP_PACKETS
        assert row["bytes"] == RTP_PACKETS * 120
        assert row["duration_s"] == pytest.approx((RTP_PACKETS - 1) * RTP_INTERVAL_US / 1e6)
        assert row["bitrate_kbps"] == pytest.approx(120 * 8 * RTP_PACKETS / 19.98 / 1000)
        assert row["lost_packets"] == 0 and row["loss_rate"] == 0.0
        # Arrival spacing matches the RTP clock exactly (20 ms = 960 ticks at 48 kHz): no jitter.
        assert row["jitter_ms"] == pytest.approx(0.0, abs=1e-6)


def test_media_csv_loss_across_the_sequence_wrap(tmp_path):
    # The received stream starts at 65000 and wraps after 65535 (RFC 3550 A.1 extended sequence
    # numbers). Dropped: two before the wrap, 65535 itself, 0 right after it, and one far after.
    dropped = frozenset({65010, 65300, 65535, 0, 400})
    path = tmp_path / "lossy-call.pcap"
    build_call_capture(path, received_first_seq=65000, dropped_received_seqs=dropped)
    media = inspector.analyze([path]).media.set_index("direction")
    received = media.loc["received"]
    assert received["packets"] == RTP_PACKETS - len(dropped)
    assert received["lost_packets"] == len(dropped)
    assert received["loss_rate"] == pytest.approx(len(dropped) / RTP_PACKETS)
    assert media.loc["sent", "lost_packets"] == 0


# --- the RTP collector on Zoom's encapsulations (inspector/collect.py) ---------------------------


def _zoom_inner(inner_type: int, seq: int) -> bytes:
    """A Zoom inner media header (facts §2.3): audio (15) has its RTP at 19; video (16) at 24
    when inner byte 20 is 0x02."""
    rtp = rtp_packet(seq, 960 * seq, 0x5A5A0000 + inner_type)
    if inner_type == 15:
        return bytes([15]) + b"\x00" * 18 + rtp
    return bytes([16]) + b"\x00" * 19 + b"\x02" + b"\x00" * 3 + rtp


@pytest.mark.parametrize(
    "layout, wrap",
    [
        ("sfu 2022 (8-byte outer, direction 0x00)", lambda inner: b"\x05" + b"\x10" * 6 + b"\x00" + inner),
        ("sfu 2019 (1-byte outer)", lambda inner: b"\x05" + inner),
        ("p2p (no outer)", lambda inner: inner),
    ],
)
def test_rtp_collector_reads_zoom_layouts_like_the_dissector(tmp_path, layout, wrap):
    from inspector.collect import RtpCollector
    from inspector.dissect.zoom import parse_p2p_media, parse_server_media
    from inspector.payloads import PayloadStage
    from inspector.pipeline import AnalyzeOptions, process_capture

    path = tmp_path / "zoom.pcap"
    writer = PcapWriter(str(path), linktype=1, sync=True)
    payloads = [wrap(_zoom_inner(inner_type, seq)) for seq in range(6) for inner_type in (15, 16)]
    try:
        for i, payload in enumerate(payloads):
            packet = _udp(CLIENT, PEER, 50000, 8801, payload)
            if i == 0:
                writer.write_header(packet)
            writer.write_packet(packet, sec=T0_S, usec=i * 1000)
    finally:
        writer.close()
    collector = RtpCollector(keep_rows=True)
    process_capture(path, AnalyzeOptions(), None, PayloadStage(), (collector,))
    rows = collector.rows_frame("zoom.pcap")
    parsed = [parse_server_media(p) or parse_p2p_media(p) for p in payloads]
    assert all(p is not None for p in parsed), layout
    assert list(rows["zoom_type"]) == [p.inner_type for p in parsed]
    assert list(rows["ssrc"]) == [p.rtp.ssrc for p in parsed]
    assert list(rows["seq"]) == [p.rtp.sequence for p in parsed]
    assert list(rows["rtp_len"]) == [len(pl) - p.rtp_offset for pl, p in zip(payloads, parsed)]


# --- which flows are call media (inspector/sessions.py rule 1) ----------------------------------


def test_media_role_needs_udp_or_media_payload_evidence():
    from inspector.sessions import flow_sides
    from tests.test_sessions import flows_frame

    sides = flow_sides(
        flows_frame(
            [
                # TLS to a vendor's media range, decided by the range alone (webex.pcap): not media.
                {"flow_id": 1, "transport": "tcp", "server_port": 443, "app_protocol": "tls",
                 "service": "webex", "role": "media", "evidence": "cidr:webex", "confidence": "medium"},
                # UDP to the same range: media (vendor media protocols are UDP first).
                {"flow_id": 2, "transport": "udp", "server_port": 9000, "app_protocol": "",
                 "service": "webex", "role": "media", "evidence": "cidr:webex", "confidence": "medium"},
                # TURN over TCP/443 (RFC 6062), named by its payload: media (relay).
                {"flow_id": 3, "transport": "tcp", "server_port": 443, "app_protocol": "",
                 "service": "teams", "role": "relay", "evidence": "payload:turn turn; cidr:teams"},
                # TCP with a media app_protocol: media.
                {"flow_id": 4, "transport": "tcp", "server_port": 5000, "app_protocol": "rtp",
                 "service": "zoom", "role": "media", "evidence": "port:tcp/5000"},
            ]
        )  # fmt: skip
    )
    assert list(sides["is_media"]) == [False, True, True, True]


def test_documentation_addresses_are_public_peers():
    # RFC 5737 documentation ranges stand for public addresses: generic WebRTC to one is a server
    # (not P2P), while RFC 1918 / RFC 6598 peers are P2P. Python's ip.is_private says otherwise.
    from inspector.sessions import flow_sides
    from tests.test_sessions import flows_frame

    rows = [
        {"flow_id": i, "server_ip": ip, "service": "webrtc", "role": "media", "app_protocol": "rtp",
         "evidence": "payload:rtp rtp"}
        for i, ip in enumerate(("203.0.113.50", "192.168.0.4", "100.64.1.1", "8.8.8.8", "fd00::1"), start=1)
    ]  # fmt: skip
    assert list(flow_sides(flows_frame(rows))["is_p2p"]) == [False, True, True, False, True]


def test_call_summary_names_the_beacon_inside_and_outside(clean_call):
    _, analysis, _ = clean_call
    lines = analysis.call_summaries()
    assert len(lines) == 2
    assert lines[0].startswith("s1 WebRTC media call 2023-11-14 22:18:20-22:18:40 UTC (20s) from 192.168.1.10")
    assert "app-measurement.com 341 B (third-party telemetry: analytics)" in lines[0]
    assert lines[1].startswith("Outside calls (crafted-call.pcap): data went to:")
    assert "app-measurement.com 341 B" in lines[1]
