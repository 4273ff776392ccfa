"""Per-packet decode of the rare shapes the vectorised decoder leaves: fragments, IPv6 extension
headers, GTP-U tunnels, PPPoE and PPP-in-HDLC framing.

Each packet is decoded with ``struct`` in plain Python and written into the same columns the fast
path fills (``inspector.decode.DecodedBatch``). IP fragments are reassembled across batches by
``Reassembler``: the completed datagram is counted once, on the row of the fragment that completed
it; the other fragments become STATE_MERGED rows (decoded, but not packets of a flow).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from inspector import batch as B
from inspector.decode import (
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_PPPOE_SESSION,
    ETHERTYPE_VLAN,
    GTP_U_PORT,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV6_EXTENSION_HEADERS,
    PPP_IPV4,
    PPP_IPV6,
    SKIP,
    STATE_FLOW,
    STATE_MERGED,
    STATE_SKIPPED,
    TUNNEL_GTP,
    DecodedBatch,
)

MAX_TUNNEL_DEPTH = 2
# Reassembly bounds (RFC 791 §3.2 suggests a timer of a few tens of seconds; Linux uses 30 s
# for ipfrag_time). Past them, pending fragments are given up and counted as incomplete.
FRAGMENT_TIMEOUT_NS = 30 * 1_000_000_000
MAX_PENDING_DATAGRAMS = 4096
MAX_DATAGRAM_BYTES = 65535 + 40


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(slots=True)
class _Pending:
    first_ts_ns: int
    header_len: int  # bytes of IP header (v4) or unfragmentable part + 40 (v6) of the datagram
    pieces: dict[int, bytes] = field(default_factory=dict)  # fragment offset -> data
    total_len: int = -1  # payload length, known once the last fragment (MF=0) arrived
    proto: int = -1  # transport protocol, known from the first fragment (offset 0)
    fragments: int = 0


@dataclass(slots=True)
class Decoded:
    """One packet's transport facts as decoded by the slow path."""

    ip_version: int
    proto: int
    src: bytes
    dst: bytes
    src_port: int
    dst_port: int
    ip_bytes: int
    tcp_flags: int
    tcp_seq: int
    payload: bytes
    payload_offset: int  # within the captured packet, -1 when the payload was rebuilt
    tunnel: int
    vlan_id: int


class Reassembler:
    """IPv4 and IPv6 fragment reassembly that persists across batches (bounded)."""

    def __init__(self) -> None:
        self._pending: dict[tuple, _Pending] = {}
        self.incomplete_fragments = 0  # fragments given up (their datagram never completed)
        self.reassembled_datagrams = 0

    def add(self, key: tuple, ts_ns: int, offset: int, more: bool, data: bytes, header_len: int, proto: int):
        """Add one fragment. Returns (payload, proto, header_len, fragments) when complete."""
        self._expire(ts_ns)
        p = self._pending.get(key)
        if p is None:
            if len(self._pending) >= MAX_PENDING_DATAGRAMS:
                oldest = min(self._pending, key=lambda k: self._pending[k].first_ts_ns)
                self.incomplete_fragments += self._pending.pop(oldest).fragments
            p = self._pending[key] = _Pending(ts_ns, header_len)
        p.fragments += 1
        if offset + len(data) > MAX_DATAGRAM_BYTES:
            return None
        if offset in p.pieces and p.pieces[offset] != data:
            # Overlapping fragments with different content (RFC 5722 forbids them for IPv6);
            # the first copy is kept, as Linux does.
            return None
        p.pieces.setdefault(offset, data)
        if offset == 0:
            p.proto = proto
            p.header_len = header_len
        if not more:
            p.total_len = offset + len(data)
        if p.total_len < 0 or p.proto < 0:
            return None
        payload = bytearray()
        for off in sorted(p.pieces):
            piece = p.pieces[off]
            if off > len(payload):
                return None  # a hole
            payload[off : off + len(piece)] = piece
        if len(payload) < p.total_len:
            return None
        del self._pending[key]
        self.reassembled_datagrams += 1
        return bytes(payload[: p.total_len]), p.proto, p.header_len, p.fragments

    def _expire(self, now_ns: int) -> None:
        if not self._pending:
            return
        stale = [k for k, p in self._pending.items() if now_ns - p.first_ts_ns > FRAGMENT_TIMEOUT_NS]
        for k in stale:
            self.incomplete_fragments += self._pending.pop(k).fragments

    def finish(self) -> int:
        """Give up every pending datagram; returns how many fragments that was."""
        n = sum(p.fragments for p in self._pending.values())
        self._pending.clear()
        self.incomplete_fragments += n
        return n


def _link(linktype: int, pkt: bytes) -> tuple[int, int, int]:
    """(offset of the IP header, ethertype-like kind 4/6, vlan id) or raises _Skip."""
    vlan = 0
    if linktype == B.LINKTYPE_ETHERNET:
        if len(pkt) < 14:
            raise _Skip("short_link_header")
        pos = 12
        (etype,) = struct.unpack_from("!H", pkt, pos)
        while etype in ETHERTYPE_VLAN:
            if len(pkt) < pos + 6:
                raise _Skip("short_link_header")
            vlan = struct.unpack_from("!H", pkt, pos + 2)[0] & 0x0FFF
            pos += 4
            (etype,) = struct.unpack_from("!H", pkt, pos)
        pos += 2
        if etype == ETHERTYPE_PPPOE_SESSION:
            # PPPoE header (RFC 2516 §4): ver/type, code, session id, length; then PPP protocol.
            if len(pkt) < pos + 8:
                raise _Skip("short_link_header")
            (pproto,) = struct.unpack_from("!H", pkt, pos + 6)
            return pos + 8, _ppp_kind(pproto), vlan
        if etype == ETHERTYPE_IPV4:
            return pos, 4, vlan
        if etype == ETHERTYPE_IPV6:
            return pos, 6, vlan
        raise _Skip("non_ip")
    if linktype in (B.LINKTYPE_PPP, B.LINKTYPE_PPP_HDLC):
        pos = 2 if pkt[:2] == b"\xff\x03" else 0
        if len(pkt) < pos + 2:
            raise _Skip("short_link_header")
        (pproto,) = struct.unpack_from("!H", pkt, pos)
        return pos + 2, _ppp_kind(pproto), vlan
    if linktype == B.LINKTYPE_LINUX_SLL:
        if len(pkt) < 16:
            raise _Skip("short_link_header")
        return 16, _ether_kind(struct.unpack_from("!H", pkt, 14)[0]), vlan
    if linktype == B.LINKTYPE_LINUX_SLL2:
        if len(pkt) < 20:
            raise _Skip("short_link_header")
        return 20, _ether_kind(struct.unpack_from("!H", pkt, 0)[0]), vlan
    if linktype in (B.LINKTYPE_NULL, B.LINKTYPE_LOOP):
        if len(pkt) < 4:
            raise _Skip("short_link_header")
        return 4, 0, vlan
    if linktype in (B.LINKTYPE_RAW, B.LINKTYPE_RAW_12, B.LINKTYPE_RAW_14, B.LINKTYPE_IPV4, B.LINKTYPE_IPV6):
        return 0, 0, vlan
    raise _Skip("unsupported_link_type")


def _ether_kind(etype: int) -> int:
    if etype == ETHERTYPE_IPV4:
        return 4
    if etype == ETHERTYPE_IPV6:
        return 6
    raise _Skip("non_ip")


def _ppp_kind(pproto: int) -> int:
    if pproto == PPP_IPV4:
        return 4
    if pproto == PPP_IPV6:
        return 6
    raise _Skip("non_ip")


class SlowDecoder:
    """Decodes single packets; owns the fragment reassembly state of one capture."""

    def __init__(self) -> None:
        self.reassembler = Reassembler()

    def decode_rows(self, d: DecodedBatch, rows: np.ndarray, batch: B.PacketBatch) -> None:
        """Decode ``rows`` of ``batch`` in place into ``d``."""
        extra: list[bytes] = []
        extra_len = int(d.extra.shape[0])
        for i in rows.tolist():
            pkt = batch.packet(i)
            ts = int(batch.ts_ns[i])
            try:
                ip_off, kind, vlan = _link(int(batch.linktype[i]), pkt)
                r = self.decode_ip(pkt, ip_off, kind, ts, 0)
            except _Skip as s:
                d.state[i] = STATE_SKIPPED
                d.skip_reason[i] = SKIP[s.reason]
                continue
            if r is None:  # a fragment held for reassembly
                d.state[i] = STATE_MERGED
                d.skip_reason[i] = 0
                continue
            r.vlan_id = vlan or r.vlan_id
            d.state[i] = STATE_FLOW
            d.skip_reason[i] = 0
            d.ip_version[i] = r.ip_version
            d.proto[i] = r.proto
            s_hi, s_lo = _split(r.src)
            t_hi, t_lo = _split(r.dst)
            d.src_hi[i], d.src_lo[i], d.dst_hi[i], d.dst_lo[i] = s_hi, s_lo, t_hi, t_lo
            d.src_port[i] = r.src_port
            d.dst_port[i] = r.dst_port
            d.ip_bytes[i] = r.ip_bytes
            d.tcp_flags[i] = r.tcp_flags
            d.tcp_seq[i] = r.tcp_seq
            d.vlan_id[i] = r.vlan_id
            d.tunnel[i] = r.tunnel
            d.payload_len[i] = len(r.payload)
            if r.payload_offset >= 0:
                d.payload_off[i] = int(batch.offset[i]) + r.payload_offset
                d.payload_in_extra[i] = False
            else:
                d.payload_off[i] = extra_len
                d.payload_in_extra[i] = True
                extra.append(r.payload)
                extra_len += len(r.payload)
        if extra:
            d.extra = np.concatenate([d.extra, np.frombuffer(b"".join(extra), dtype=np.uint8)])

    def decode_ip(self, pkt: bytes, off: int, kind: int, ts_ns: int, depth: int) -> Decoded | None:
        """Decode the IP packet at ``pkt[off:]``; None when it is a fragment still held."""
        if len(pkt) <= off:
            raise _Skip("short_ip_header")
        version = pkt[off] >> 4
        if kind and version != kind:
            raise _Skip("bad_ip_version")
        if version == 4:
            return self._ipv4(pkt, off, ts_ns, depth)
        if version == 6:
            return self._ipv6(pkt, off, ts_ns, depth)
        raise _Skip("bad_ip_version")

    def _ipv4(self, pkt: bytes, off: int, ts_ns: int, depth: int) -> Decoded | None:
        if len(pkt) < off + 20:
            raise _Skip("short_ip_header")
        ihl = (pkt[off] & 0x0F) * 4
        if ihl < 20 or off + ihl > len(pkt):
            raise _Skip("bad_ipv4_header_length")
        (total,) = struct.unpack_from("!H", pkt, off + 2)
        if total < ihl:
            raise _Skip("bad_ip_total_length")
        ident, frag = struct.unpack_from("!HH", pkt, off + 4)
        proto = pkt[off + 9]
        src = pkt[off + 12 : off + 16]
        dst = pkt[off + 16 : off + 20]
        end = min(off + total, len(pkt))
        if frag & 0x3FFF:
            more = bool(frag & 0x2000)
            frag_off = (frag & 0x1FFF) * 8
            done = self.reassembler.add((4, src, dst, ident, proto), ts_ns, frag_off, more, pkt[off + ihl : end], ihl, proto)
            if done is None:
                return None
            payload, proto, hdr, _ = done
            return self._transport(4, proto, src, dst, payload, -1, hdr + len(payload), ts_ns, depth)
        return self._transport(4, proto, src, dst, pkt[off + ihl : end], off + ihl, total, ts_ns, depth)

    def _ipv6(self, pkt: bytes, off: int, ts_ns: int, depth: int) -> Decoded | None:
        if len(pkt) < off + 40:
            raise _Skip("short_ip_header")
        (plen,) = struct.unpack_from("!H", pkt, off + 4)
        nh = pkt[off + 6]
        src = pkt[off + 8 : off + 24]
        dst = pkt[off + 24 : off + 40]
        total = 40 + plen
        end = min(off + total, len(pkt))
        pos = off + 40
        # Walk the extension header chain (RFC 8200 §4): each has next-header and a length in
        # 8-octet units not counting the first 8 (AH, RFC 4302, counts 4-octet units minus 2).
        frag_info = None
        hops = 0
        while nh in IPV6_EXTENSION_HEADERS:
            hops += 1
            if hops > 16 or pos + 8 > end:
                raise _Skip("bad_ipv6_extension_header")
            next_nh = pkt[pos]
            if nh == 44:  # Fragment header: fixed 8 bytes
                (fo, ident) = struct.unpack_from("!HI", pkt, pos + 2)
                frag_info = (fo & 0xFFF8, bool(fo & 1), ident)
                length = 8
            elif nh == 51:
                length = (pkt[pos + 1] + 2) * 4
            else:
                length = (pkt[pos + 1] + 1) * 8
            pos += length
            nh = next_nh
            if pos > end:
                raise _Skip("bad_ipv6_extension_header")
            if frag_info is not None:
                break  # what follows the fragment header is the fragmentable part
        if frag_info is not None:
            frag_off, more, ident = frag_info
            if frag_off == 0 and not more:
                # An "atomic fragment" (RFC 6946): a whole datagram with a fragment header.
                return self._transport(6, nh, src, dst, pkt[pos:end], pos, total, ts_ns, depth)
            done = self.reassembler.add((6, src, dst, ident), ts_ns, frag_off, more, pkt[pos:end], pos - off, nh if frag_off == 0 else -1)
            if done is None:
                return None
            payload, proto, hdr, _ = done
            return self._transport(6, proto, src, dst, payload, -1, hdr + len(payload), ts_ns, depth)
        return self._transport(6, nh, src, dst, pkt[pos:end], pos, total, ts_ns, depth)

    def _transport(self, version, proto, src, dst, seg: bytes, seg_off: int, ip_bytes: int, ts_ns: int, depth: int):
        sport = dport = flags = seq = 0
        header = 0
        if proto == IPPROTO_TCP:
            if len(seg) < 20:
                raise _Skip("short_transport_header")
            sport, dport, seq = struct.unpack_from("!HHI", seg, 0)
            header = (seg[12] >> 4) * 4
            if header < 20 or header > len(seg):
                raise _Skip("bad_tcp_data_offset")
            flags = seg[13]
        elif proto == IPPROTO_UDP:
            if len(seg) < 8:
                raise _Skip("short_transport_header")
            sport, dport = struct.unpack_from("!HH", seg, 0)
            header = 8
            if (sport == GTP_U_PORT or dport == GTP_U_PORT) and len(seg) > 8 and seg[8] & 0xE0 == 0x20:
                inner = self._gtp(seg[8:], ts_ns, depth)
                if inner is not False:
                    if inner is not None and inner.payload_offset >= 0:
                        inner.payload_offset = inner.payload_offset + seg_off + 8 if seg_off >= 0 else -1
                    return inner
        payload = seg[header:]
        return Decoded(
            ip_version=version,
            proto=proto,
            src=src,
            dst=dst,
            src_port=sport,
            dst_port=dport,
            ip_bytes=ip_bytes,
            tcp_flags=flags,
            tcp_seq=seq,
            payload=payload,
            payload_offset=(seg_off + header) if seg_off >= 0 else -1,
            tunnel=0,
            vlan_id=0,
        )

    def _gtp(self, gtp: bytes, ts_ns: int, depth: int):
        """GTP-U v1 (3GPP TS 29.281 §5.1): 8-byte header, +4 when E, S or PN is set, then
        extension headers chained by their next-type byte. Message type 0xFF (G-PDU) carries an
        IP packet. Returns the inner Decoded, None (inner fragment held), or False (not a G-PDU:
        the outer UDP packet is the flow, e.g. GTP echo)."""
        if depth >= MAX_TUNNEL_DEPTH:
            raise _Skip("tunnel_too_deep")
        if len(gtp) < 8:
            raise _Skip("bad_gtp_header")
        flags, mtype = gtp[0], gtp[1]
        if mtype != 0xFF:
            return False
        pos = 8
        if flags & 0x07:
            if len(gtp) < 12:
                raise _Skip("bad_gtp_header")
            next_ext = gtp[11]
            pos = 12
            while next_ext:
                if pos >= len(gtp):
                    raise _Skip("bad_gtp_header")
                ext_len = gtp[pos] * 4
                if ext_len == 0 or pos + ext_len > len(gtp):
                    raise _Skip("bad_gtp_header")
                next_ext = gtp[pos + ext_len - 1]
                pos += ext_len
        inner = self.decode_ip(gtp, pos, 0, ts_ns, depth + 1)
        if inner is not None:
            inner.tunnel = TUNNEL_GTP  # payload_offset is within ``gtp``; the caller shifts it
        return inner


def _split(addr: bytes) -> tuple[int, int]:
    if len(addr) == 4:
        return 0, int.from_bytes(addr, "big")
    return int.from_bytes(addr[:8], "big"), int.from_bytes(addr[8:], "big")
