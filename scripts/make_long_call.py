#!/usr/bin/env python3
"""Write a long call as a capture: RTP in a few UDP flows for as many packets as asked.

The benchmark capture (``../shared/bench``) repeats a mix of short captures, so most of its
flows live within one batch of packets. A recorded call is the other shape: a handful of media
flows that last the whole capture, whose dissectors are done after their first packets. This
file lets ``scripts/bench --capture`` measure that shape:

    python3 scripts/make_long_call.py /tmp/long-call.pcap            # 1,000,000 packets, 700 MB
    scripts/bench --capture /tmp/long-call.pcap --interleave --runs 5

Layout: classic pcap (microseconds, Ethernet). Eight flows between 10.0.0.1 and
203.0.113.10-17 (TEST-NET-3, RFC 5737), four Opus-sized (160-byte payload, PT 111) and four
video-sized (1,100 bytes, PT 96); each flow's two directions alternate, each with its own SSRC,
sequence numbers and timestamps (RFC 3550 §5.1), a packet every 20 ms per stream (+960 at Opus's
48 kHz clock, +1,800 at video's 90 kHz): 800 packets a second over the 16 streams, so the default
million packets are a call of ~21 minutes. IPv4 header checksums are computed; UDP checksums are
zero (allowed over IPv4, RFC 768). The same arguments always give the same bytes.
"""

from __future__ import annotations

import argparse
import struct

FLOWS = 8
PACKETS_PER_SECOND = 800  # 16 streams at 50 packets a second
START_US = 1_700_000_000 * 1_000_000


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def write_long_call(path: str, packets: int) -> None:
    local = bytes([10, 0, 0, 1])
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        seq = [[0, 0] for _ in range(FLOWS)]
        for i in range(packets):
            flow = i % FLOWS
            direction = (i // FLOWS) % 2  # 0: sent by 10.0.0.1, 1: received
            remote = bytes([203, 0, 113, 10 + flow])
            local_port, remote_port = 50000 + flow, 3478 + flow
            src, dst, sport, dport = (local, remote, local_port, remote_port) if direction == 0 else (remote, local, remote_port, local_port)
            audio = flow % 2 == 0
            n = seq[flow][direction]
            seq[flow][direction] += 1
            rtp = struct.pack(
                "!BBHII", 0x80, 111 if audio else 96, n & 0xFFFF, (n * (960 if audio else 1800)) & 0xFFFFFFFF, 0x1000 + flow * 2 + direction
            ) + bytes(160 if audio else 1100)
            udp = struct.pack("!HHHH", sport, dport, 8 + len(rtp), 0) + rtp
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0, src, dst)
            header = header[:10] + struct.pack("!H", _ipv4_checksum(header)) + header[12:]
            frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + header + udp
            at_us = START_US + i * 1_000_000 // PACKETS_PER_SECOND
            out.write(struct.pack("<IIII", at_us // 1_000_000, at_us % 1_000_000, len(frame), len(frame)) + frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the pcap file to write")
    parser.add_argument("--packets", type=int, default=1_000_000)
    args = parser.parse_args()
    write_long_call(args.out, args.packets)


if __name__ == "__main__":
    main()
