"""Build packets and capture files as bytes, for tests (plain struct packing, no scapy).

Every builder returns ``bytes`` with correct length fields; IPv4 header and ICMP checksums are
computed, TCP/UDP checksums are computed only when the builder is given the addresses (they are
optional for the readers). Layouts: Ethernet/802.1Q/802.1ad (IEEE 802.1Q), Linux cooked capture
v1/v2 (tcpdump.org linktypes LINKTYPE_LINUX_SLL/SLL2), BSD loopback (LINKTYPE_NULL/LOOP),
PPP (RFC 1661, RFC 1662 framing), IPv4 (RFC 791), IPv6 and its extension headers (RFC 8200),
TCP (RFC 9293), UDP (RFC 768), ICMP (RFC 792), ICMPv6 (RFC 4443), GTP-U (3GPP TS 29.281).

Typical use::

    frame = ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp(5000, 53, b"q")))
    write_pcap(tmp_path / "a.pcap", [frame], linktype=1)
"""

from __future__ import annotations

import io
import ipaddress
import os
import struct
from typing import Iterable, Sequence

from inspector.capture.writer import PcapngWriter, PcapWriter

# IP protocol numbers (IANA)
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58
# IPv6 extension header numbers (RFC 8200 §4)
EXT_HOP_BY_HOP, EXT_ROUTING, EXT_FRAGMENT, EXT_DEST_OPTS = 0, 43, 44, 60
# EtherTypes
ETH_IPV4, ETH_IPV6, ETH_ARP, ETH_VLAN, ETH_QINQ = 0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8
# PPP protocol numbers (RFC 1661, RFC 5072)
PPP_IPV4, PPP_IPV6 = 0x0021, 0x0057
# BSD address families as loopback headers carry them (AF_INET6 differs between systems)
AF_INET, AF_INET6_BSD, AF_INET6_FREEBSD, AF_INET6_DARWIN, AF_INET6_LINUX = 2, 24, 28, 30, 10
GTPU_PORT = 2152

_TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}
T0_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z, a default capture start


def checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def addr(a: str | bytes) -> bytes:
    """An IPv4 or IPv6 address given as text (or already packed) as packed bytes."""
    return a if isinstance(a, bytes) else ipaddress.ip_address(a).packed


def mac(m: str | bytes) -> bytes:
    """A MAC address ``"02:00:00:00:00:01"`` (or 6 packed bytes) as bytes."""
    return m if isinstance(m, bytes) else bytes.fromhex(m.replace(":", ""))


# ---------------------------------------------------------------- link layers


def ether(
    payload: bytes,
    ethertype: int = ETH_IPV4,
    vlans: Sequence[int | tuple[int, int]] = (),
    src: str | bytes = "02:00:00:00:00:01",
    dst: str | bytes = "02:00:00:00:00:02",
) -> bytes:
    """Ethernet II frame; ``vlans`` outer first, each a VLAN id (TPID 0x8100) or (tpid, vid)."""
    tags = b""
    for v in vlans:
        tpid, vid = (ETH_VLAN, v) if isinstance(v, int) else v
        tags += struct.pack("!HH", tpid, vid & 0x0FFF)
    return mac(dst) + mac(src) + tags + struct.pack("!H", ethertype) + payload


def sll(payload: bytes, protocol: int = ETH_IPV4, pkttype: int = 0, arphrd: int = 1,
        link_addr: bytes = b"\x02\x00\x00\x00\x00\x01") -> bytes:
    """Linux cooked capture v1 (LINKTYPE 113): 16-byte header, protocol = EtherType."""
    return struct.pack("!HHH", pkttype, arphrd, len(link_addr)) + link_addr[:8].ljust(8, b"\x00") + \
        struct.pack("!H", protocol) + payload


def sll2(payload: bytes, protocol: int = ETH_IPV4, ifindex: int = 1, pkttype: int = 0, arphrd: int = 1,
         link_addr: bytes = b"\x02\x00\x00\x00\x00\x01") -> bytes:
    """Linux cooked capture v2 (LINKTYPE 276): 20-byte header, protocol first."""
    return struct.pack("!HHIHBB", protocol, 0, ifindex, arphrd, pkttype, len(link_addr)) + \
        link_addr[:8].ljust(8, b"\x00") + payload


def null(payload: bytes, family: int = AF_INET, byteorder: str = "<") -> bytes:
    """BSD loopback header (LINKTYPE 0: host byte order, ``"<"`` or ``">"``): 4-byte family."""
    return struct.pack(byteorder + "I", family) + payload


def loop(payload: bytes, family: int = AF_INET) -> bytes:
    """OpenBSD loopback header (LINKTYPE 108): 4-byte family in network byte order."""
    return struct.pack("!I", family) + payload


def ppp(payload: bytes, protocol: int = PPP_IPV4, hdlc: bool = False) -> bytes:
    """PPP (LINKTYPE 9): 2-byte protocol, optionally preceded by HDLC address/control ff 03."""
    return (b"\xff\x03" if hdlc else b"") + struct.pack("!H", protocol) + payload


def ppp_hdlc(payload: bytes, protocol: int = PPP_IPV4) -> bytes:
    """PPP in HDLC-like framing (LINKTYPE 50): ff 03, then the 2-byte protocol."""
    return b"\xff\x03" + struct.pack("!H", protocol) + payload


RAW_LINKTYPES = (12, 14, 101, 228, 229)  # raw IP: no link header at all


def link(linktype: int, ip_packet: bytes) -> bytes:
    """``ip_packet`` (IPv4 or IPv6, told apart by its version) framed for any LINKTYPE the decoder reads."""
    v6 = bool(ip_packet) and ip_packet[0] >> 4 == 6
    if linktype == 1:
        return ether(ip_packet, ETH_IPV6 if v6 else ETH_IPV4)
    if linktype in RAW_LINKTYPES:
        return ip_packet
    if linktype == 0:
        return null(ip_packet, AF_INET6_BSD if v6 else AF_INET)
    if linktype == 108:
        return loop(ip_packet, AF_INET6_BSD if v6 else AF_INET)
    if linktype == 9:
        return ppp(ip_packet, PPP_IPV6 if v6 else PPP_IPV4)
    if linktype == 50:
        return ppp_hdlc(ip_packet, PPP_IPV6 if v6 else PPP_IPV4)
    if linktype == 113:
        return sll(ip_packet, ETH_IPV6 if v6 else ETH_IPV4)
    if linktype == 276:
        return sll2(ip_packet, ETH_IPV6 if v6 else ETH_IPV4)
    raise ValueError(f"no framing for LINKTYPE {linktype}")


# ---------------------------------------------------------------- network layer


def ipv4(
    src: str | bytes,
    dst: str | bytes,
    proto: int,
    payload: bytes,
    ttl: int = 64,
    ident: int = 0,
    dont_fragment: bool = False,
    more_fragments: bool = False,
    frag_offset: int = 0,
    options: bytes = b"",
    tos: int = 0,
    total_length: int | None = None,
) -> bytes:
    """IPv4 packet; ``frag_offset`` in bytes (multiple of 8), options padded to 4 bytes."""
    options += b"\x00" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    flags = (0x4000 if dont_fragment else 0) | (0x2000 if more_fragments else 0) | (frag_offset // 8)
    length = 4 * ihl + len(payload) if total_length is None else total_length
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, length, ident, flags, ttl, proto, 0,
                         addr(src), addr(dst)) + options
    csum = checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + payload


def ipv6_ext(kind: int, next_header: int, frag_offset: int = 0, more_fragments: bool = False,
             ident: int = 0) -> bytes:
    """One 8-byte IPv6 extension header: hop-by-hop/destination (PadN), routing, or fragment."""
    if kind in (EXT_HOP_BY_HOP, EXT_DEST_OPTS):
        return struct.pack("!BB", next_header, 0) + b"\x01\x04\x00\x00\x00\x00"  # PadN, 4 bytes
    if kind == EXT_ROUTING:  # type 0 style, no segments left, no addresses
        return struct.pack("!BBBB", next_header, 0, 0, 0) + b"\x00" * 4
    if kind == EXT_FRAGMENT:
        return struct.pack("!BBHI", next_header, 0, (frag_offset // 8) << 3 | int(more_fragments), ident)
    raise ValueError(f"unsupported extension header {kind}")


def ipv6(
    src: str | bytes,
    dst: str | bytes,
    proto: int,
    payload: bytes,
    hop_limit: int = 64,
    extensions: Iterable[int | tuple] = (),
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """IPv6 packet; ``extensions`` in order, each a kind or (44, frag_offset, more, ident)."""
    items = [e if isinstance(e, tuple) else (e,) for e in extensions]
    chain = b""
    for i, item in enumerate(items):
        nxt = items[i + 1][0] if i + 1 < len(items) else proto
        chain += ipv6_ext(item[0], nxt, *item[1:])
    first = items[0][0] if items else proto
    body = chain + payload
    vtf = (6 << 28) | (traffic_class << 20) | flow_label
    return struct.pack("!IHBB16s16s", vtf, len(body), first, hop_limit, addr(src), addr(dst)) + body


# ---------------------------------------------------------------- transport layer


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return struct.pack("!4s4sBBH", src, dst, 0, proto, length)
    return struct.pack("!16s16sIxxxB", src, dst, length, proto)


def udp(sport: int, dport: int, payload: bytes = b"", src: str | bytes | None = None,
        dst: str | bytes | None = None) -> bytes:
    """UDP datagram; checksum computed when ``src``/``dst`` are given, else 0 (none)."""
    head = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    if src is not None and dst is not None:
        csum = checksum(_pseudo(addr(src), addr(dst), PROTO_UDP, 8 + len(payload)) + head + payload) or 0xFFFF
        head = head[:6] + struct.pack("!H", csum)
    return head + payload


def tcp(sport: int, dport: int, flags: str = "S", seq: int = 0, ack: int = 0, payload: bytes = b"",
        window: int = 65535, options: bytes = b"", src: str | bytes | None = None,
        dst: str | bytes | None = None) -> bytes:
    """TCP segment; ``flags`` letters from FSRPAUEC; checksum computed when addresses are given."""
    options += b"\x00" * (-len(options) % 4)
    bits = 0
    for letter in flags:
        bits |= _TCP_FLAGS[letter]
    offset = (5 + len(options) // 4) << 4
    head = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, offset, bits,
                       window, 0, 0) + options
    if src is not None and dst is not None:
        seg = head + payload
        csum = checksum(_pseudo(addr(src), addr(dst), PROTO_TCP, len(seg)) + seg)
        head = head[:16] + struct.pack("!H", csum) + head[18:]
    return head + payload


def icmp(icmp_type: int = 8, code: int = 0, body: bytes = b"\x00\x01\x00\x01") -> bytes:
    """ICMPv4 message with checksum; ``body`` is everything after the checksum (echo: id, seq, data)."""
    msg = struct.pack("!BBH", icmp_type, code, 0) + body
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def icmpv6(icmp_type: int = 128, code: int = 0, body: bytes = b"\x00\x01\x00\x01",
           src: str | bytes | None = None, dst: str | bytes | None = None) -> bytes:
    """ICMPv6 message; checksum (over the IPv6 pseudo-header) computed when addresses are given."""
    msg = struct.pack("!BBH", icmp_type, code, 0) + body
    if src is not None and dst is not None:
        csum = checksum(_pseudo(addr(src), addr(dst), PROTO_ICMPV6, len(msg)) + msg)
        msg = msg[:2] + struct.pack("!H", csum) + msg[4:]
    return msg


def gtpu(inner: bytes, teid: int = 1, sequence: int | None = None, extensions: list[tuple[int, bytes]] = (), message_type: int = 0xFF) -> bytes:
    """GTP-U (version 1, PT=1) message, by default a G-PDU (type 255) carrying an inner IPv4/IPv6
    packet. ``sequence`` sets the S flag; ``extensions`` are (type, content) extension headers
    (E flag; each content padded to a multiple of 4 bytes with the length and next-type bytes,
    3GPP TS 29.281 §5.2), e.g. (0x85, b"\x00\x01") a PDU Session Container."""
    flags = 0x30
    optional = b""
    if sequence is not None or extensions:
        flags |= (0x02 if sequence is not None else 0) | (0x04 if extensions else 0)
        next_type = extensions[0][0] if extensions else 0
        optional = struct.pack("!HBB", sequence or 0, 0, next_type)
        for k, (_, content) in enumerate(extensions):
            following = extensions[k + 1][0] if k + 1 < len(extensions) else 0
            body = content + b"\x00" * (-(len(content) + 2) % 4)
            optional += bytes([(len(body) + 2) // 4]) + body + bytes([following])
    body = optional + inner
    return struct.pack("!BBHI", flags, message_type, len(body), teid) + body


# ---------------------------------------------------------------- shortcuts


def udp4(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    """IPv4 + UDP with checksums (no link layer)."""
    return ipv4(src, dst, PROTO_UDP, udp(sport, dport, payload, src, dst))


def tcp4(src: str, dst: str, sport: int, dport: int, flags: str = "S", payload: bytes = b"", **kw) -> bytes:
    """IPv4 + TCP with checksums (no link layer); extra keywords go to ``tcp``."""
    return ipv4(src, dst, PROTO_TCP, tcp(sport, dport, flags, payload=payload, src=src, dst=dst, **kw))


def udp6(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    """IPv6 + UDP with checksum (no link layer)."""
    return ipv6(src, dst, PROTO_UDP, udp(sport, dport, payload, src, dst))


def tcp6(src: str, dst: str, sport: int, dport: int, flags: str = "S", payload: bytes = b"", **kw) -> bytes:
    """IPv6 + TCP with checksum (no link layer); extra keywords go to ``tcp``."""
    return ipv6(src, dst, PROTO_TCP, tcp(sport, dport, flags, payload=payload, src=src, dst=dst, **kw))


# ---------------------------------------------------------------- capture files


def _timed(packets: Iterable, start_ns: int, step_ns: int) -> list[tuple[int, bytes]]:
    """Packets given as bytes or (ts_ns, bytes) -> (ts_ns, bytes), bytes spaced ``step_ns`` apart."""
    out = []
    for i, p in enumerate(packets):
        out.append(p if isinstance(p, tuple) else (start_ns + i * step_ns, p))
    return out


def pcap_bytes(packets: Iterable, linktype: int = 1, nanosecond: bool = False, byteorder: str = "<",
               snaplen: int = 262144, start_ns: int = T0_NS, step_ns: int = 1_000_000) -> bytes:
    """A whole pcap file as bytes; packets are bytes or (ts_ns, bytes)."""
    buf = io.BytesIO()
    w = PcapWriter(buf, linktype, nanosecond=nanosecond, byteorder=byteorder, snaplen=snaplen)
    for ts, data in _timed(packets, start_ns, step_ns):
        w.write_packet(ts, data)
    return buf.getvalue()


def pcapng_bytes(packets: Iterable, linktype: int = 1, tsresol: int = 6, byteorder: str = "<",
                 interfaces: Sequence[tuple[int, int, int]] | None = None, start_ns: int = T0_NS,
                 step_ns: int = 1_000_000) -> bytes:
    """A one-section pcapng file as bytes; packets are bytes, (ts_ns, bytes) or (iface, ts_ns, bytes)."""
    buf = io.BytesIO()
    w = PcapngWriter(buf, interfaces or [(linktype, 262144, tsresol)], byteorder=byteorder)
    for i, p in enumerate(packets):
        if isinstance(p, tuple) and len(p) == 3:
            w.write_packet(*p)
        else:
            ts, data = p if isinstance(p, tuple) else (start_ns + i * step_ns, p)
            w.write_packet(0, ts, data)
    return buf.getvalue()


def write_pcap(path: str | os.PathLike, packets: Iterable, linktype: int = 1, **kw) -> str:
    """Writes a pcap file (see ``pcap_bytes`` for keywords); returns the path as str."""
    with open(path, "wb") as f:
        f.write(pcap_bytes(packets, linktype, **kw))
    return os.fspath(path)


def write_pcapng(path: str | os.PathLike, packets: Iterable, linktype: int = 1, **kw) -> str:
    """Writes a pcapng file (see ``pcapng_bytes`` for keywords); returns the path as str."""
    with open(path, "wb") as f:
        f.write(pcapng_bytes(packets, linktype, **kw))
    return os.fspath(path)
