"""A userspace relay that impairs a WebRTC call: loss and delay with jitter, without tc netem.

Runs in the middle namespace R of ``A - R - B`` (scripts/netns_topology.py, ``relayed=True``). R does
not forward in the kernel, so A and B can only reach each other through this relay:

* signalling: a TCP listener on R's A-side address, connected through to B's signalling port.
  Messages are JSON lines; in every SDP the ``a=candidate`` lines (RFC 8839 §5.1) are rewritten so
  that each peer sees the other's host candidate as a relay socket ("face") on its own subnet;
* media: every datagram arriving at the face that stands for endpoint E is sent on to E from the
  face that stands for the sender, so each peer only ever talks to relay addresses.

Impairment: RTP and RTCP datagrams (first byte 0x80-0xBF: RTP version 2, RFC 3550 §5.1 and
RFC 7983 §7 demultiplexing) are dropped with probability ``loss`` from a seeded generator; every
datagram (STUN and DTLS included) is delayed by ``delay_ms`` +- uniform ``jitter_ms``, so jitter
reorders packets as netem does. STUN and DTLS are never dropped: the handshake must succeed for
the loss to be measured on media (the facts in live-capture-notes.md: 40 % loss can break DTLS).

Weaknesses: candidates other than UDP host candidates are passed through unrewritten (aiortc with
``iceServers=[]`` only gathers host candidates); one relay serves one call.
Usage (inside R): python3 scripts/impair_relay.py --listen 10.77.1.1:7000 --target 10.77.2.2:7000
    --face-a 10.77.1.1 --face-b 10.77.2.1 --loss 0.05 --delay-ms 40 --jitter-ms 20 --stats s.json
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import re
import signal
from pathlib import Path

_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ (?:udp|UDP) \d+ )(\S+) (\d+)( .*)$")


class Relay:
    def __init__(self, face_a_ip: str, face_b_ip: str, loss: float, delay_ms: float, jitter_ms: float,
                 seed: int) -> None:
        self.face_ip = {"a": face_a_ip, "b": face_b_ip}
        self.subnet = {side: ipaddress.ip_network(f"{ip}/24", strict=False) for side, ip in self.face_ip.items()}
        self.loss = loss
        self.delay_s = delay_ms / 1000
        self.jitter_s = jitter_ms / 1000
        self.random = random.Random(seed)
        self.faces: dict[tuple[str, int], tuple[asyncio.DatagramTransport, int]] = {}
        self.stats = {"a_to_b": _counters(), "b_to_a": _counters(), "faces": 0}

    def side_of(self, host: str) -> str:
        return "a" if ipaddress.ip_address(host) in self.subnet["a"] else "b"

    async def face_for(self, endpoint: tuple[str, int]) -> int:
        """The relay port that stands for ``endpoint`` on the subnet of the other side."""
        if endpoint not in self.faces:
            other = "b" if self.side_of(endpoint[0]) == "a" else "a"
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Face(self, endpoint), local_addr=(self.face_ip[other], 0))
            self.faces[endpoint] = (transport, transport.get_extra_info("sockname")[1])
            self.stats["faces"] += 1
        return self.faces[endpoint][1]

    async def rewrite_sdp(self, sdp: str) -> str:
        lines = []
        default_mapping: dict[tuple[str, str], tuple[str, str]] = {}
        for line in sdp.split("\r\n"):
            match = _CANDIDATE.match(line)
            if match and ":" not in match.group(2):
                host, port = match.group(2), int(match.group(3))
                face_port = await self.face_for((host, port))
                face_host = self.face_ip["b" if self.side_of(host) == "a" else "a"]
                default_mapping[(host, str(port))] = (face_host, str(face_port))
                line = f"{match.group(1)}{face_host} {face_port}{match.group(4)}"
            lines.append(line)
        # The c= line and m= port carry the default candidate (RFC 8839 §4.2.1.2): rewrite them too.
        hosts = {host: new[0] for (host, _), new in default_mapping.items()}
        ports = {port: new[1] for (_, port), new in default_mapping.items()}
        out = []
        for line in lines:
            if line.startswith("c=IN IP4 ") and line[9:] in hosts:
                line = "c=IN IP4 " + hosts[line[9:]]
            elif line.startswith("m="):
                parts = line.split(" ")
                if len(parts) > 1 and parts[1] in ports:
                    parts[1] = ports[parts[1]]
                    line = " ".join(parts)
            out.append(line)
        return "\r\n".join(out)

    def forward(self, data: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
        direction = "a_to_b" if self.side_of(source[0]) == "a" else "b_to_a"
        counters = self.stats[direction]
        is_media = len(data) >= 2 and 0x80 <= data[0] <= 0xBF
        if is_media and self.loss > 0 and self.random.random() < self.loss:
            counters["media_dropped"] += 1
            return
        counters["media_forwarded" if is_media else "other_forwarded"] += 1
        delay = self.delay_s + (self.random.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0)
        asyncio.ensure_future(self._send_later(data, source, destination, max(0.0, delay)))

    async def _send_later(self, data: bytes, source: tuple[str, int], destination: tuple[str, int],
                          delay: float) -> None:
        await self.face_for(source)
        if delay:
            await asyncio.sleep(delay)
        transport, _ = self.faces[source]
        transport.sendto(data, destination)


def _counters() -> dict[str, int]:
    return {"media_forwarded": 0, "media_dropped": 0, "other_forwarded": 0}


class _Face(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay, stands_for: tuple[str, int]) -> None:
        self.relay = relay
        self.stands_for = stands_for

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.forward(data, (addr[0], addr[1]), self.stands_for)


async def _pump(relay: Relay, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        message = json.loads(line)
        if "sdp" in message:
            message["sdp"] = await relay.rewrite_sdp(message["sdp"])
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
    writer.close()


async def serve(args: argparse.Namespace) -> dict:
    relay = Relay(args.face_a, args.face_b, args.loss, args.delay_ms, args.jitter_ms, args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    target_host, target_port = args.target.rsplit(":", 1)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target_host, int(target_port))
        await asyncio.gather(_pump(relay, reader, up_writer), _pump(relay, up_reader, writer),
                             return_exceptions=True)

    listen_host, listen_port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(on_client, listen_host, int(listen_port))
    if args.ready:
        Path(args.ready).write_text("ready\n")
    await stop.wait()
    server.close()
    return relay.stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="signalling address on the A side, host:port")
    parser.add_argument("--target", required=True, help="B's signalling address, host:port")
    parser.add_argument("--face-a", required=True, help="relay address on A's subnet")
    parser.add_argument("--face-b", required=True, help="relay address on B's subnet")
    parser.add_argument("--loss", type=float, default=0.0, help="share of RTP/RTCP datagrams dropped")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stats", help="write the relay's counters here (JSON) at the end")
    parser.add_argument("--ready", help="touch this file once listening")
    args = parser.parse_args(argv)
    stats = asyncio.run(serve(args))
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
