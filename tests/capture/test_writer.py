"""The pcap/pcapng writers, checked against dpkt's readers (an independent implementation)."""

from __future__ import annotations

import io
import struct

import dpkt
import pytest

from inspector.capture.writer import PcapngWriter, PcapWriter, _ts_units
from tests import craft

T0 = 1_700_000_000_123_456_789


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_pcap_writer_is_read_back_by_dpkt(byteorder, nanosecond):
    buf = io.BytesIO()
    w = PcapWriter(buf, linktype=101, nanosecond=nanosecond, byteorder=byteorder)
    w.write_packet(T0, b"\x45" + b"\x00" * 19)
    w.write_packet(T0 + 1_500_000_000, b"abc", wirelen=1500)
    w.flush()
    buf.seek(0)
    reader = dpkt.pcap.Reader(buf)
    assert reader.datalink() == 101
    got = [(ts, bytes(data)) for ts, data in reader]
    assert [d for _, d in got] == [b"\x45" + b"\x00" * 19, b"abc"]
    step = 1e-9 if nanosecond else 1e-6
    assert abs(float(got[0][0]) - 1_700_000_000.123456789) <= step
    assert abs(float(got[1][0]) - float(got[0][0]) - 1.5) < 2e-6


def test_pcap_writer_header_bytes_and_wirelen():
    buf = io.BytesIO()
    w = PcapWriter(buf, linktype=1, snaplen=4)
    w.write_packet(2_000_000_001_000, b"abcdefgh")
    data = buf.getvalue()
    assert data[:24] == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 4, 1)
    # ts 2000 s + 1 µs; the packet cut to the snaplen keeps its real length as wirelen
    assert data[24:40] == struct.pack("<IIII", 2000, 1, 4, 8)
    assert data[40:] == b"abcd"


def test_pcapng_writer_is_read_back_by_dpkt():
    buf = io.BytesIO()
    w = PcapngWriter(buf, interfaces=[(1, 262144, 6)])
    w.write_packet(0, T0, b"\x01\x02\x03")  # 3 bytes: padded to 4 in the block
    w.write_packet(0, T0 + 1000, b"x" * 64, wirelen=100)
    buf.seek(0)
    got = [(ts, bytes(d)) for ts, d in dpkt.pcapng.Reader(buf)]
    assert [d for _, d in got] == [b"\x01\x02\x03", b"x" * 64]
    assert abs(float(got[0][0]) - 1_700_000_000.123456) < 1e-6


def test_pcapng_blocks_are_padded_and_closed_by_their_length():
    buf = io.BytesIO()
    w = PcapngWriter(buf, interfaces=[(1, 0, 9)], byteorder=">")
    w.write_packet(0, 5, b"\xaa")
    data = buf.getvalue()
    pos = 0
    types = []
    while pos < len(data):
        btype, blen = struct.unpack_from(">II", data, pos)
        assert blen % 4 == 0
        assert struct.unpack_from(">I", data, pos + blen - 4)[0] == blen
        types.append(btype)
        pos += blen
    assert pos == len(data)
    assert types == [0x0A0D0D0A, 1, 6]
    # the IDB carries if_tsresol = 9 (option 9, length 1) then opt_endofopt
    idb_start = struct.unpack_from(">I", data, 4)[0]
    assert data[idb_start + 16 : idb_start + 24] == b"\x00\x09\x00\x01\x09\x00\x00\x00"


@pytest.mark.parametrize(
    ("tsresol", "ts_ns", "units"),
    [(6, 1_500_000_999, 1_500_000), (9, 7, 7), (0x80 | 20, 1_000_000_000, 1 << 20), (3, 2_999_999, 2)],
)
def test_timestamp_units(tsresol, ts_ns, units):
    assert _ts_units(ts_ns, tsresol) == units


def test_bad_byteorder_is_rejected():
    with pytest.raises(ValueError):
        PcapWriter(io.BytesIO(), 1, byteorder="=")


# tests/craft.py builds the packets other tests feed the readers and decoder; dpkt, an
# independent implementation, checks its lengths, checksums and headers here.


def test_craft_ipv4_tcp_with_options_parses_and_checksums_verify():
    seg = craft.tcp(40000, 443, "SA", seq=5, ack=7, payload=b"hi", src="10.0.0.1", dst="10.0.0.2")
    pkt = craft.ipv4("10.0.0.1", "10.0.0.2", craft.PROTO_TCP, seg, options=b"\x94\x04\x00\x00")
    ip = dpkt.ip.IP(pkt)
    assert (ip.hl, ip.len, ip.p) == (6, len(pkt), 6)
    assert craft.checksum(pkt[:24]) == 0  # a correct header checksums to zero
    tcp = ip.data
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, tcp.data) == (40000, 443, 5, 7, b"hi")
    assert tcp.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
    pseudo = craft.addr("10.0.0.1") + craft.addr("10.0.0.2") + struct.pack("!BBH", 0, 6, len(seg))
    assert craft.checksum(pseudo + seg) == 0


def test_craft_ipv4_fragment_fields():
    pkt = craft.ipv4("1.1.1.1", "2.2.2.2", 17, b"x" * 16, ident=77, more_fragments=True, frag_offset=64)
    ip = dpkt.ip.IP(pkt)
    assert ip.id == 77 and ip.mf == 1 and ip.offset == 8  # dpkt counts in 8-byte units
    assert pkt[6:8] == struct.pack("!H", 0x2000 | 8)


def test_craft_ipv6_extension_chain_and_udp_checksum():
    body = craft.udp(1, 2, b"abc", "2001:db8::1", "2001:db8::2")
    pkt = craft.ipv6(
        "2001:db8::1", "2001:db8::2", craft.PROTO_UDP, body,
        extensions=[craft.EXT_HOP_BY_HOP, craft.EXT_ROUTING, (craft.EXT_FRAGMENT, 8, True, 9), craft.EXT_DEST_OPTS],
    )
    ip6 = dpkt.ip6.IP6(pkt)
    assert ip6.plen == len(pkt) - 40 == 32 + len(body)
    assert ip6.nxt == craft.EXT_HOP_BY_HOP and ip6.p == craft.PROTO_UDP
    frag = ip6.extension_hdrs[craft.EXT_FRAGMENT]
    assert (frag.frag_off, frag.m_flag, frag.id) == (1, 1, 9)
    pseudo = craft.addr("2001:db8::1") + craft.addr("2001:db8::2") + struct.pack("!IxxxB", len(body), 17)
    assert craft.checksum(pseudo + body) == 0


def test_craft_qinq_and_gtpu():
    inner = craft.udp4("10.0.0.1", "8.8.8.8", 1000, 53, b"q")
    frame = craft.ether(craft.udp4("192.0.2.1", "192.0.2.2", 2152, 2152, craft.gtpu(inner, teid=0xABCD)),
                        vlans=[(craft.ETH_QINQ, 100), 200])
    eth = dpkt.ethernet.Ethernet(frame)
    assert [t.id for t in eth.vlan_tags] == [100, 200]
    assert frame[12:14] == b"\x88\xa8" and frame[16:18] == b"\x81\x00"
    gtp = eth.data.data.data
    assert gtp[:8] == struct.pack("!BBHI", 0x30, 0xFF, len(inner), 0xABCD) and gtp[8:] == inner


@pytest.mark.parametrize("linktype", [0, 1, 9, 12, 14, 50, 101, 108, 113, 228, 229, 276])
def test_craft_link_framing_ends_with_the_ip_packet(linktype):
    ip = craft.udp4("10.0.0.1", "10.0.0.2", 1, 2, b"z")
    header_len = {0: 4, 1: 14, 9: 2, 50: 4, 108: 4, 113: 16, 276: 20}.get(linktype, 0)
    framed = craft.link(linktype, ip)
    assert framed[header_len:] == ip and len(framed) == header_len + len(ip)


def test_craft_linux_cooked_headers():
    v1 = dpkt.sll.SLL(craft.sll(craft.udp4("1.1.1.1", "2.2.2.2", 5, 53, b"x")))
    assert v1.ethtype == 0x0800 and isinstance(v1.data, dpkt.ip.IP)
    v2 = craft.sll2(b"", protocol=craft.ETH_IPV6, ifindex=3)
    assert struct.unpack("!HHIHBB", v2[:12]) == (0x86DD, 0, 3, 1, 0, 6)
