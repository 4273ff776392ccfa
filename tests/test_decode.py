"""Vectorised decode and its slow path, from crafted packets of every link type."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from inspector import batch as B
from inspector.batch import PacketBatch
from inspector.decode import SKIP, SKIP_REASONS, STATE_FLOW, STATE_MERGED, STATE_SKIPPED, TUNNEL_GTP, decode_batch
from inspector.slowpath import SlowDecoder
from tests import craft as C

T0 = C.T0_NS


def decode(packets, linktype, slow=None):
    b = PacketBatch.from_packets(packets, [T0 + i * 1000 for i in range(len(packets))], linktype)
    d, rows = decode_batch(b)
    (slow or SlowDecoder()).decode_rows(d, rows, b)
    return d


def addr_of(d, i, side="src"):
    hi = int(getattr(d, f"{side}_hi")[i])
    lo = int(getattr(d, f"{side}_lo")[i])
    if d.ip_version[i] == 4:
        return str(ipaddress.IPv4Address(lo))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


#: The columns both paths fill for a decoded packet.
FAST_SLOW_COLUMNS = (
    "ip_version", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo", "src_port", "dst_port", "ip_bytes",
    "tcp_flags", "tcp_seq", "vlan_id", "payload_len",
)  # fmt: skip

UDP4 = C.udp4("10.0.0.1", "10.0.0.2", 40000, 3478, b"hello")
TCP6 = C.tcp6("2001:db8::1", "2001:db8::2", 50000, 443, "PA", b"xyz", seq=1234)


UDP4_FRAMES = [
    (B.LINKTYPE_ETHERNET, C.ether(UDP4)),
    (B.LINKTYPE_LINUX_SLL, C.sll(UDP4)),
    (B.LINKTYPE_LINUX_SLL2, C.sll2(UDP4)),
    (B.LINKTYPE_RAW, UDP4),
    (B.LINKTYPE_RAW_12, UDP4),
    (B.LINKTYPE_RAW_14, UDP4),
    (B.LINKTYPE_IPV4, UDP4),
    (B.LINKTYPE_NULL, C.null(UDP4, byteorder="<")),
    (B.LINKTYPE_NULL, C.null(UDP4, byteorder=">")),
    (B.LINKTYPE_LOOP, C.loop(UDP4)),
    (B.LINKTYPE_PPP, C.ppp(UDP4)),
    (B.LINKTYPE_PPP, C.ppp(UDP4, hdlc=True)),
    (B.LINKTYPE_PPP_HDLC, C.ppp_hdlc(UDP4)),
    (B.LINKTYPE_ETHERNET, C.ether(UDP4, vlans=[42])),
    (B.LINKTYPE_ETHERNET, C.ether(UDP4, vlans=[(0x88A8, 7), 42])),
]


@pytest.mark.parametrize("linktype,frame", UDP4_FRAMES)
def test_udp4_over_every_link_type(linktype, frame):
    d = decode([frame], linktype)
    assert d.state[0] == STATE_FLOW, SKIP_REASONS[d.skip_reason[0]]
    assert d.ip_version[0] == 4 and d.proto[0] == 17
    assert addr_of(d, 0, "src") == "10.0.0.1" and addr_of(d, 0, "dst") == "10.0.0.2"
    assert (d.src_port[0], d.dst_port[0]) == (40000, 3478)
    assert d.ip_bytes[0] == 20 + 8 + 5
    assert d.payload(0) == b"hello"


def test_vlan_ids():
    d = decode([C.ether(UDP4, vlans=[42]), C.ether(UDP4, vlans=[(0x88A8, 7), 42]), C.ether(UDP4)], 1)
    assert d.vlan_id.tolist() == [42, 42, 0]  # QinQ: the inner (customer) tag


TCP6_FRAMES = [
    (B.LINKTYPE_ETHERNET, C.ether(TCP6, C.ETH_IPV6)),
    (B.LINKTYPE_RAW, TCP6),
    (B.LINKTYPE_IPV6, TCP6),
    (B.LINKTYPE_NULL, C.null(TCP6, C.AF_INET6_BSD)),
    (B.LINKTYPE_NULL, C.null(TCP6, C.AF_INET6_DARWIN)),
    (B.LINKTYPE_NULL, C.null(TCP6, C.AF_INET6_FREEBSD)),
    (B.LINKTYPE_LOOP, C.loop(TCP6, C.AF_INET6_BSD)),
    (B.LINKTYPE_PPP, C.ppp(TCP6, C.PPP_IPV6)),
    (B.LINKTYPE_LINUX_SLL2, C.sll2(TCP6, C.ETH_IPV6)),
]


@pytest.mark.parametrize("linktype,frame", TCP6_FRAMES)
def test_tcp6_over_link_types(linktype, frame):
    d = decode([frame], linktype)
    assert d.state[0] == STATE_FLOW, SKIP_REASONS[d.skip_reason[0]]
    assert d.ip_version[0] == 6 and d.proto[0] == 6
    assert addr_of(d, 0, "src") == "2001:db8::1" and addr_of(d, 0, "dst") == "2001:db8::2"
    assert (d.src_port[0], d.dst_port[0]) == (50000, 443)
    assert d.tcp_flags[0] == 0x18 and d.tcp_seq[0] == 1234
    assert d.ip_bytes[0] == 40 + 20 + 3
    assert d.payload(0) == b"xyz"


def test_ipv4_options_and_ethernet_padding():
    pkt = C.ipv4("1.2.3.4", "5.6.7.8", 17, C.udp(1, 2, b"ab"), options=b"\x94\x04\x00\x00")
    frame = C.ether(pkt) + b"\x00" * 20  # padded to the Ethernet minimum
    d = decode([frame], 1)
    assert d.state[0] == STATE_FLOW
    assert d.ip_bytes[0] == 24 + 8 + 2
    assert d.payload(0) == b"ab"


def test_icmp_and_other_protocols_have_port_zero():
    icmp = C.ipv4("10.0.0.1", "10.0.0.2", 1, C.icmp())
    icmp6 = C.ipv6("fe80::1", "fe80::2", 58, C.icmpv6())
    gre = C.ipv4("10.0.0.1", "10.0.0.2", 47, b"\x00" * 8)
    d = decode([icmp, icmp6, gre], B.LINKTYPE_RAW)
    assert d.state.tolist() == [STATE_FLOW] * 3
    assert d.proto.tolist() == [1, 58, 47]
    assert d.src_port.tolist() == [0, 0, 0] and d.dst_port.tolist() == [0, 0, 0]


@pytest.mark.parametrize("exts", [[0], [43], [60], [0, 43, 60]])
def test_ipv6_extension_headers(exts):
    pkt = C.ipv6("2001:db8::1", "2001:db8::2", 17, C.udp(5000, 53, b"dns?"), extensions=exts)
    d = decode([pkt], B.LINKTYPE_RAW)
    assert d.state[0] == STATE_FLOW
    assert d.proto[0] == 17 and d.dst_port[0] == 53
    assert d.payload(0) == b"dns?"
    assert d.ip_bytes[0] == len(pkt)


def test_ipv4_fragments_reassembled_and_counted_once():
    seg = C.udp(1000, 2000, bytes(range(256)) * 8)  # 2056 bytes
    frags = [
        C.ipv4("10.0.0.1", "10.0.0.2", 17, seg[0:1000], ident=7, more_fragments=True),
        C.ipv4("10.0.0.1", "10.0.0.2", 17, seg[1000:2000], ident=7, more_fragments=True, frag_offset=1000),
        C.ipv4("10.0.0.1", "10.0.0.2", 17, seg[2000:], ident=7, frag_offset=2000),
    ]
    # Out of order across two batches: state persists in the slow decoder.
    slow = SlowDecoder()
    d1 = decode([frags[2]], B.LINKTYPE_RAW, slow)
    d2 = decode([frags[0], frags[1]], B.LINKTYPE_RAW, slow)
    assert d1.state.tolist() == [STATE_MERGED]
    assert d2.state.tolist() == [STATE_MERGED, STATE_FLOW]
    assert d2.ip_bytes[1] == 20 + len(seg)
    assert (d2.src_port[1], d2.dst_port[1]) == (1000, 2000)
    assert d2.payload(1) == bytes(range(256)) * 8
    assert slow.reassembler.reassembled_datagrams == 1


def test_ipv6_fragments_reassembled():
    seg = C.udp(1000, 2000, b"Z" * 1500)
    frags = [
        C.ipv6("2001:db8::1", "2001:db8::2", 17, seg[:1000], extensions=[(44, 0, True, 99)]),
        C.ipv6("2001:db8::1", "2001:db8::2", 17, seg[1000:], extensions=[(44, 1000, False, 99)]),
    ]
    d = decode(frags, B.LINKTYPE_RAW)
    assert d.state.tolist() == [STATE_MERGED, STATE_FLOW]
    assert d.payload(1) == b"Z" * 1500
    assert d.ip_bytes[1] == 40 + 8 + len(seg)


def test_incomplete_fragments_are_reported():
    slow = SlowDecoder()
    decode([C.ipv4("10.0.0.1", "10.0.0.2", 17, C.udp(1, 2, b"x" * 16), ident=3, more_fragments=True)], B.LINKTYPE_RAW, slow)
    assert slow.reassembler.finish() == 1


def test_gtp_inner_flow_is_the_flow():
    inner = C.tcp4("10.45.0.2", "93.184.216.34", 40001, 443, "S")
    outer = C.ether(C.udp4("192.0.2.1", "192.0.2.2", 2152, 2152, C.gtpu(inner)))
    d = decode([outer], 1)
    assert d.state[0] == STATE_FLOW
    assert d.tunnel[0] == TUNNEL_GTP
    assert addr_of(d, 0, "src") == "10.45.0.2" and d.dst_port[0] == 443
    assert d.ip_bytes[0] == len(inner)


GTP_INNER_TCP = C.tcp4("10.45.0.2", "93.184.216.34", 40001, 443, "PA", b"inner payload", seq=77)
GTP_INNER_UDP6 = C.udp6("2001:db8:45::2", "2001:db8::53", 5353, 53, b"query")


@pytest.mark.parametrize(
    "gtp",
    [
        C.gtpu(GTP_INNER_TCP),
        C.gtpu(GTP_INNER_UDP6, teid=9),
        C.gtpu(GTP_INNER_TCP, sequence=5),
        C.gtpu(GTP_INNER_TCP, extensions=[(0x85, b"\x00\x01")]),
        C.gtpu(GTP_INNER_UDP6, sequence=1, extensions=[(0x85, b"\x10\x09"), (0x40, b"\x00" * 5)]),
        # A GTP packet inside the inner packet: two tunnels deep, decoded by the slow path.
        C.gtpu(C.udp4("10.45.0.2", "10.45.0.3", 2152, 2152, C.gtpu(GTP_INNER_TCP))),
        # An inner fragment: held for reassembly by the slow path.
        C.gtpu(C.ipv4("10.45.0.2", "10.0.0.9", 17, C.udp(1, 2, b"x" * 16), ident=3, more_fragments=True)),
    ],
)
def test_gtp_fast_path_decodes_as_the_slow_path(gtp):
    """The vectorised GTP-U decode gives every column the slow path gives the same packet."""
    frames = [C.ether(C.udp4("192.0.2.1", "192.0.2.2", 2152, 2152, gtp), vlans=[12])]
    b = PacketBatch.from_packets(frames, [T0], 1)
    fast, slow_rows = decode_batch(b)
    again, _ = decode_batch(b)
    SlowDecoder().decode_rows(again, np.arange(1), b)
    if slow_rows.shape[0] == 0:  # the fast path finished the packet
        assert fast.state[0] == STATE_FLOW and fast.tunnel[0] == TUNNEL_GTP
        assert fast.payload(0) == again.payload(0)
    else:
        SlowDecoder().decode_rows(fast, slow_rows, b)
    for c in FAST_SLOW_COLUMNS + ("state", "skip_reason", "tunnel", "payload_off"):
        assert getattr(fast, c)[0] == getattr(again, c)[0], c


def test_gtp_fast_path_takes_plain_and_extended_g_pdus():
    frames = [C.ether(C.udp4("192.0.2.1", "192.0.2.2", 2152, 2152, C.gtpu(GTP_INNER_TCP, extensions=[(0x85, b"\x00\x01")] * k))) for k in range(3)]
    b = PacketBatch.from_packets(frames, [T0] * 3, 1)
    d, slow_rows = decode_batch(b)
    assert slow_rows.shape[0] == 0
    assert (d.tunnel == TUNNEL_GTP).all() and (d.dst_port == 443).all() and (d.tcp_seq == 77).all()
    assert [d.payload(i) for i in range(3)] == [b"inner payload"] * 3
    assert (d.vlan_id == 0).all() and (d.ip_bytes == len(GTP_INNER_TCP)).all()


@pytest.mark.parametrize(
    "gtp,reason",
    [
        (b"\x30\xff\x00\x00\x00", "bad_gtp_header"),  # shorter than the 8-byte header
        (b"\x32\xff\x00\x04\x00\x00\x00\x01\x00\x00", "bad_gtp_header"),  # S set, no room for it
        # E set, an extension header whose length runs past the datagram.
        (b"\x34\xff\x00\x08\x00\x00\x00\x01\x00\x00\x00\x85\x09\x00\x00\x00", "bad_gtp_header"),
        (C.gtpu(b"\x45\x00"), "short_ip_header"),
        (C.gtpu(b"\x75" + b"\x00" * 30), "bad_ip_version"),
    ],
)
def test_broken_gtp_is_skipped_with_a_reason(gtp, reason):
    d = decode([C.ether(C.udp4("192.0.2.1", "192.0.2.2", 2152, 2152, gtp))], 1)
    assert d.state[0] == STATE_SKIPPED
    assert SKIP_REASONS[d.skip_reason[0]] == reason


def test_gtp_echo_is_the_outer_flow():
    echo = b"\x32\x01\x00\x04\x00\x00\x00\x00\x00\x01\x00\x00"
    d = decode([C.ether(C.udp4("192.0.2.1", "192.0.2.2", 40000, 2152, echo))], 1)
    assert d.state[0] == STATE_FLOW and d.tunnel[0] == 0 and d.dst_port[0] == 2152


MALFORMED_FRAMES = [
    (b"\x00" * 10, 1, "short_link_header"),
    (C.ether(b"\x00" * 28, C.ETH_ARP), 1, "non_ip"),
    (C.ether(b"\x45\x00"), 1, "short_ip_header"),
    (C.ether(b"\x75" + b"\x00" * 30), 1, "bad_ip_version"),
    (C.ether(b"\x43" + b"\x00" * 30), 1, "bad_ipv4_header_length"),
    (C.ether(C.ipv4("1.1.1.1", "2.2.2.2", 17, C.udp(1, 2), total_length=10)), 1, "bad_ip_total_length"),
    (C.ether(C.ipv4("1.1.1.1", "2.2.2.2", 6, b"\x00" * 10)), 1, "short_transport_header"),
    (C.ether(C.ipv4("1.1.1.1", "2.2.2.2", 6, b"\x00" * 12 + b"\x20" + b"\x00" * 7)), 1, "bad_tcp_data_offset"),
    (UDP4, 147, "unsupported_link_type"),
    (C.null(UDP4, family=99), 0, "non_ip"),
    (C.ppp(UDP4, protocol=0xC021), 9, "non_ip"),
]


@pytest.mark.parametrize("frame,linktype,reason", MALFORMED_FRAMES)
def test_malformed_packets_are_counted_with_a_reason(frame, linktype, reason):
    d = decode([frame], linktype)
    assert d.state[0] == STATE_SKIPPED
    assert SKIP_REASONS[d.skip_reason[0]] == reason


def test_a_batch_of_mixed_link_types_decodes_each_packet_as_alone():
    # A pcapng file's interfaces may differ in link type, so one batch can mix them; decode
    # takes a batch of one link type by a shorter way, which must not change any row.
    frames = [(lt, f) for lt, f in UDP4_FRAMES + TCP6_FRAMES] + [(lt, f) for f, lt, _ in MALFORMED_FRAMES]
    for order in (frames, frames[::-1]):
        mixed = decode([f for _, f in order], [lt for lt, _ in order])
        for i, (linktype, frame) in enumerate(order):
            alone = decode([frame], linktype)
            for name in FAST_SLOW_COLUMNS + ("state", "skip_reason", "tunnel"):
                assert getattr(mixed, name)[i] == getattr(alone, name)[0], (name, linktype, frame)
            assert mixed.payload(i) == alone.payload(0)


def test_bad_ipv6_extension_chain():
    pkt = C.ipv6("2001:db8::1", "2001:db8::2", 17, C.udp(1, 2, b""), extensions=[0])
    broken = pkt[:40] + bytes([17, 200]) + pkt[42:]  # hop-by-hop length runs past the packet
    d = decode([broken], B.LINKTYPE_RAW)
    assert d.state[0] == STATE_SKIPPED and d.skip_reason[0] == SKIP["bad_ipv6_extension_header"]


def test_snaplen_cut_packet_counts_wire_bytes():
    full = C.ether(C.udp4("10.0.0.1", "10.0.0.2", 1, 2, b"x" * 1000))
    cut = full[:60]
    b = PacketBatch.from_packets([cut], [T0], 1, wirelen=[len(full)])
    d, _ = decode_batch(b)
    assert d.state[0] == STATE_FLOW
    assert d.ip_bytes[0] == 20 + 8 + 1000
    assert d.payload_len[0] == 60 - 14 - 28


def test_fast_and_slow_paths_agree(ndpi_dir):
    """Every packet the fast path decodes, the slow path decodes to the same columns."""
    from inspector.capture.files import open_capture

    columns = FAST_SLOW_COLUMNS + ("tunnel", "payload_off")
    checked = tunnelled = 0
    for path in sorted(ndpi_dir.glob("*.pcap*")):
        for b in open_capture(path).batches():
            fast, slow_rows = decode_batch(b)
            ok = np.flatnonzero(fast.state == STATE_FLOW)
            again, _ = decode_batch(b)
            SlowDecoder().decode_rows(again, ok, b)
            for c in columns:
                assert np.array_equal(getattr(fast, c)[ok], getattr(again, c)[ok]), (path.name, c)
            for i in ok[:50].tolist():
                assert fast.payload(i) == again.payload(i)
            checked += ok.shape[0]
            tunnelled += int((fast.tunnel[ok] == TUNNEL_GTP).sum())
    assert checked > 10_000
    assert tunnelled > 0  # the GTP-U capture's inner packets, decoded by the fast path


@pytest.mark.parametrize("linktype", [B.LINKTYPE_RAW, B.LINKTYPE_ETHERNET])
def test_headers_shorter_than_the_read_windows_decode_at_the_end_of_the_buffer(linktype):
    """The IP and transport fields are read through 40- and 14-byte windows; a packet that ends
    the batch's buffer sooner (an empty UDP datagram, an IPv4 header with a bare UDP header)
    still decodes exactly, alone or after others, as the slow path decodes it."""
    tiny = [
        C.udp4("10.0.0.1", "10.0.0.2", 40000, 3478),
        C.udp4("10.0.0.3", "10.0.0.4", 5353, 53, b"q"),
        C.udp6("2001:db8::1", "2001:db8::2", 1234, 443),
        C.tcp4("10.0.0.5", "10.0.0.6", 50000, 443, "S", seq=7),
    ]
    for last in range(len(tiny)):
        packets = [C.link(linktype, p) for p in tiny[: last + 1]]
        b = PacketBatch.from_packets(packets, [T0 + i for i in range(len(packets))], linktype)
        fast, _ = decode_batch(b)
        assert (fast.state == STATE_FLOW).all(), [SKIP_REASONS[r] for r in fast.skip_reason]
        again, _ = decode_batch(b)
        SlowDecoder().decode_rows(again, np.arange(len(packets)), b)
        for c in FAST_SLOW_COLUMNS:
            assert np.array_equal(getattr(fast, c), getattr(again, c)), (last, c)
    assert (int(fast.src_port[2]), int(fast.dst_port[2]), addr_of(fast, 2, "dst")) == (1234, 443, "2001:db8::2")
    assert (int(fast.tcp_seq[3]), int(fast.tcp_flags[3])) == (7, 0x02)
    assert fast.payload_len.tolist() == [0, 1, 0, 0]


def test_payload_window_reads_whole_windows_from_the_buffer_and_extra():
    """payload_window gives, for each row whose payload holds the window, the bytes d.payload
    gives; reassembled payloads (in ``extra``) included; shorter payloads are left out."""
    seg = C.udp(5, 6, bytes(range(200)))
    frags = [
        C.ipv4("10.0.0.1", "10.0.0.2", 17, seg[:104], ident=9, more_fragments=True),
        C.ipv4("10.0.0.1", "10.0.0.2", 17, seg[104:], ident=9, frag_offset=104),
    ]
    packets = [
        C.ether(C.udp4("10.0.0.1", "10.0.0.2", 1, 2, bytes(range(40)))),
        C.ether(C.udp4("10.0.0.1", "10.0.0.2", 1, 2, b"short")),
        *(C.ether(f) for f in frags),
        C.ether(C.udp4("10.0.0.1", "10.0.0.2", 1, 2, bytes(range(100, 120)))),
    ]
    d = decode(packets, 1)
    rows = np.flatnonzero(d.state == STATE_FLOW)
    assert d.payload_in_extra[rows].any() and not d.payload_in_extra[rows].all()
    for start in (0, 3, np.arange(rows.shape[0]) % 4):
        for width in (1, 8, 12):
            whole, window = d.payload_window(rows, start, width)
            starts = np.broadcast_to(start, rows.shape)
            expect = [d.payload(i)[s : s + width] for i, s in zip(rows.tolist(), starts.tolist())]
            assert whole.tolist() == [len(e) == width for e in expect]
            assert window.dtype == np.uint8 and window.shape == (int(whole.sum()), width)
            assert [bytes(w) for w in window] == [e for e in expect if len(e) == width]
    whole, window = d.payload_window(rows, -1, 4)
    assert not whole.any() and window.shape == (0, 4)


def test_the_manifest_counts_the_tunnelled_packets_of_either_path(tmp_path):
    """GTP-U packets decoded by the vectorised path (no slow row in their batch) and by the
    slow path (a tunnel inside the tunnel) both count in ``tunnelled_packets``."""
    import inspector
    from inspector.pipeline import AnalyzeOptions

    def outer(gtp):
        return C.ether(C.udp4("192.0.2.1", "192.0.2.2", 2152, 2152, gtp))

    fast = [outer(C.gtpu(GTP_INNER_TCP))] * 3
    nested = [outer(C.gtpu(C.udp4("10.45.0.2", "10.45.0.3", 2152, 2152, C.gtpu(GTP_INNER_TCP))))]
    for packets, tunnelled in ((fast, 3), (fast + nested, 4)):
        path = C.write_pcap(tmp_path / "gtp.pcap", packets)
        options = AnalyzeOptions(inspect_payloads=False, batch_size=8)
        decode = inspector.analyze([path], options).manifest["inputs"][0]["decode"]
        assert decode["tunnelled_packets"] == tunnelled and decode["packets_skipped"] == 0
