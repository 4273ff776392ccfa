"""The end-to-end call harness for tests: run a real call (scripts/webrtc_call.py) and read its capture.

``run_call`` and ``CallResult`` come from scripts/webrtc_call.py; ``unavailable_reason`` says why a
call cannot run here (for ``pytest.skip``). The readers below walk the evidence pcapng with dpkt,
independently of the inspector's own pipeline, so tests can hold the pipeline against them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import dpkt

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import webrtc_call  # noqa: E402

run_call = webrtc_call.run_call
CallResult = webrtc_call.CallResult
CallError = webrtc_call.CallError

STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"  # RFC 8489 §5


def unavailable_reason() -> str:
    """'' when a call can run here; otherwise why not (not root, no ip netns, no aiortc)."""
    if os.geteuid() != 0:
        return "needs root: network namespaces and packet sockets"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip netns): apt-get install -y iproute2"
    if importlib.util.find_spec("aiortc") is None:
        return "needs aiortc: pip install aiortc"
    return webrtc_call.netns_topology.netns_available()


@dataclass(frozen=True, slots=True)
class UdpPacket:
    ts_ns: int
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


@dataclass(frozen=True, slots=True)
class TcpPacket:
    ts_ns: int
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def read_evidence(path: Path) -> tuple[list[UdpPacket], list[TcpPacket]]:
    """IPv4 UDP and TCP packets of an Ethernet pcapng, in capture order."""
    udp: list[UdpPacket] = []
    tcp: list[TcpPacket] = []
    with open(path, "rb") as f:
        for ts, frame in dpkt.pcapng.Reader(f):
            ts_ns = int(round(ts * 1e9))
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP):
                continue
            src, dst = dpkt.utils.inet_to_str(ip.src), dpkt.utils.inet_to_str(ip.dst)
            layer4 = ip.data
            if isinstance(layer4, dpkt.udp.UDP):
                udp.append(UdpPacket(ts_ns, (src, layer4.sport), (dst, layer4.dport), bytes(layer4.data)))
            elif isinstance(layer4, dpkt.tcp.TCP):
                tcp.append(TcpPacket(ts_ns, (src, layer4.sport), (dst, layer4.dport), bytes(layer4.data)))
    return udp, tcp


def is_stun(payload: bytes) -> bool:
    """STUN: first two bits 0 and the magic cookie at bytes 4-8 (RFC 8489 §5, RFC 7983 §7)."""
    return len(payload) >= 20 and payload[0] < 4 and payload[4:8] == STUN_MAGIC_COOKIE


def stun_type(payload: bytes) -> int:
    return int.from_bytes(payload[0:2], "big")


def is_dtls(payload: bytes) -> bool:
    """DTLS record: content type 20-63 (RFC 7983 §7) and version 0xFEFF / 0xFEFD (RFC 6347 §4.1)."""
    return len(payload) >= 13 and 20 <= payload[0] <= 63 and payload[1] == 0xFE


def is_rtp_or_rtcp(payload: bytes) -> bool:
    return len(payload) >= 12 and 128 <= payload[0] <= 191


def is_rtcp(payload: bytes) -> bool:
    """RTCP packet types 192-223 share the RTP version bits (RFC 5761 §4)."""
    return is_rtp_or_rtcp(payload) and 192 <= payload[1] <= 223


@dataclass(frozen=True, slots=True)
class RtpStream:
    src: tuple[str, int]
    dst: tuple[str, int]
    ssrc: int
    payload_type: int
    sequence_numbers: tuple[int, ...]  # in arrival order

    def expected_and_received(self) -> tuple[int, int]:
        """(expected, distinct received): expected from the extended highest and lowest sequence
        numbers (RFC 3550 §6.4.1 and A.3); duplicates count once."""
        extended = _extend(self.sequence_numbers)
        return max(extended) - min(extended) + 1, len(set(extended))

    def loss_rate(self) -> float:
        expected, received = self.expected_and_received()
        return 1.0 - received / expected


def _extend(sequence: tuple[int, ...]) -> list[int]:
    """Unwrap 16-bit sequence numbers into a monotone-ish integer line (RFC 3550 A.1)."""
    out: list[int] = []
    cycles = 0
    highest = None
    for s in sequence:
        if highest is None:
            highest = s
        else:
            delta = (s - highest) & 0xFFFF
            if delta < 0x8000:  # forward (possibly wrapped)
                if s < highest:
                    cycles += 1 << 16
                highest = s
                out.append(cycles + s)
                continue
            # a late packet from before ``highest``
            out.append(cycles + s - (1 << 16) if s > highest else cycles + s)
            continue
        out.append(cycles + s)
    return out


def rtp_streams(udp: list[UdpPacket]) -> list[RtpStream]:
    """RTP (not RTCP) packets grouped by 5-tuple direction, SSRC and payload type."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for p in udp:
        if is_rtp_or_rtcp(p.payload) and not is_rtcp(p.payload):
            ssrc = int.from_bytes(p.payload[8:12], "big")
            pt = p.payload[1] & 0x7F
            groups[(p.src, p.dst, ssrc, pt)].append(int.from_bytes(p.payload[2:4], "big"))
    return [RtpStream(src, dst, ssrc, pt, tuple(seqs)) for (src, dst, ssrc, pt), seqs in groups.items()]


def tls_client_hello_sni(payload: bytes) -> str | None:
    """The server_name of a TLS ClientHello that starts this TCP payload (RFC 8446 §4.1.2,
    RFC 6066 §3), or None."""
    try:
        record = dpkt.ssl.TLSRecord(payload)
        if record.type != 22:
            return None
        hello = dpkt.ssl.TLSHandshake(record.data)
        if hello.type != 1:
            return None
        for ext_type, ext_data in hello.data.extensions:
            if ext_type == 0 and len(ext_data) > 5:
                length = int.from_bytes(ext_data[3:5], "big")
                return ext_data[5:5 + length].decode("ascii", "replace")
    except (dpkt.UnpackError, dpkt.NeedData, ValueError, AttributeError, IndexError):
        return None
    return None


def dns_answers(udp: list[UdpPacket]) -> list[tuple[int, str, str]]:
    """(ts_ns, name, IPv4 address) for every A record in DNS responses on port 53."""
    out = []
    for p in udp:
        if p.src[1] != 53:
            continue
        try:
            message = dpkt.dns.DNS(p.payload)
        except (dpkt.UnpackError, IndexError, ValueError):
            continue
        for rr in message.an:
            if rr.type == dpkt.dns.DNS_A:
                out.append((p.ts_ns, rr.name.lower(), dpkt.utils.inet_to_str(rr.rdata)))
    return out
