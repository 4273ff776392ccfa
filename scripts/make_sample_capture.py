"""Make the bundled sample capture: captures/sample-call.pcapng and its provenance captures/README.md.

    sudo python3 scripts/make_sample_capture.py [--out captures/sample-call.pcapng] [--duration 4.5]

Runs one short WebRTC call with scripts/webrtc_call.py (aiortc, two network namespaces, small video:
320x240 at 15 fps, VP8 capped at 200 kbit/s so the file stays at a few hundred KB), captured live on
side A with inspector.capture.live, with a DNS lookup and an HTTPS POST to the telemetry name in the
middle of the call. Then counts what is in the file (by a plain dpkt walk, independent of the
inspector's own pipeline) and writes the README next to the capture. Needs root, iproute2, aiortc.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import sys
import tempfile
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

import webrtc_call  # noqa: E402

WIDTH, HEIGHT, FPS, MAX_VIDEO_BITRATE = 320, 240, 15, 200_000


def classify_packets(path: Path) -> tuple[collections.Counter, int, int]:
    """Count packets by kind: stun (magic cookie 0x2112A442, RFC 8489 §5), dtls (first byte 20-63,
    RFC 7983 §7), rtcp (RTP version 2 with packet type 192-223), rtp/<payload type>, dns, tls
    (TCP 443), signalling (TCP 7000), arp, other. Returns (counts, first_ts_ns, last_ts_ns)."""
    import dpkt

    counts: collections.Counter = collections.Counter()
    first = last = 0
    with open(path, "rb") as f:
        for ts, frame in dpkt.pcapng.Reader(f):
            ts_ns = int(round(ts * 1e9)) if not isinstance(ts, int) else ts
            first = first or ts_ns
            last = ts_ns
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if isinstance(ip, dpkt.arp.ARP):
                counts["arp"] += 1
                continue
            if not isinstance(ip, dpkt.ip.IP):
                counts["other"] += 1
                continue
            layer4 = ip.data
            if isinstance(layer4, dpkt.udp.UDP):
                payload = bytes(layer4.data)
                if 53 in (layer4.sport, layer4.dport):
                    counts["dns"] += 1
                elif len(payload) >= 20 and payload[0] < 4 and payload[4:8] == b"\x21\x12\xa4\x42":
                    counts["stun"] += 1
                elif payload and 20 <= payload[0] <= 63:
                    counts["dtls"] += 1
                elif len(payload) >= 12 and 128 <= payload[0] <= 191:
                    if 192 <= payload[1] <= 223:
                        counts["rtcp"] += 1
                    else:
                        counts[f"rtp/{payload[1] & 0x7F}"] += 1
                else:
                    counts["udp-other"] += 1
            elif isinstance(layer4, dpkt.tcp.TCP):
                ports = (layer4.sport, layer4.dport)
                counts["tls" if 443 in ports else "signalling" if 7000 in ports else "tcp-other"] += 1
            elif isinstance(layer4, dpkt.icmp.ICMP):
                counts["icmp"] += 1
            else:
                counts["other"] += 1
    return counts, first, last


def rtp_sequence_gaps(path: Path) -> tuple[int, int]:
    """(RTP streams, missing sequence numbers over all of them): streams keyed by source and SSRC,
    missing = highest - lowest + 1 - distinct (RFC 3550 §6.4.1; a short call does not wrap)."""
    import dpkt

    seqs: dict[tuple, set[int]] = collections.defaultdict(set)
    with open(path, "rb") as f:
        for _, frame in dpkt.pcapng.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
                payload = bytes(ip.data.data)
                if len(payload) >= 12 and 128 <= payload[0] <= 191 and not 192 <= payload[1] <= 223:
                    seqs[(ip.src, ip.data.sport, payload[8:12])].add(int.from_bytes(payload[2:4], "big"))
    missing = sum(max(s) - min(s) + 1 - len(s) for s in seqs.values())
    return len(seqs), missing


def _iso(ts_ns: int) -> str:
    return datetime.datetime.fromtimestamp(ts_ns / 1e9, datetime.timezone.utc).isoformat(
        timespec="microseconds").replace("+00:00", "Z")


def write_readme(readme: Path, capture: Path, result: webrtc_call.CallResult, duration_s: float,
                 command: str) -> None:
    import aiortc
    import av

    counts, first, last = classify_packets(capture)
    streams, missing = rtp_sequence_gaps(capture)
    digest = hashlib.sha256(capture.read_bytes()).hexdigest()
    total = sum(counts.values())
    pts = result.payload_types
    names = {pts.get("opus"): "opus", pts.get("vp8"): "VP8", pts.get("rtx"): "rtx (retransmission)"}
    rows = []
    for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        label = kind
        if kind.startswith("rtp/"):
            label = f"{kind} ({names.get(int(kind[4:]), 'unknown')})"
        rows.append(f"| {label} | {n} |")
    text = f"""# Sample captures

Captures the inspector project made itself, on its own machines, between network namespaces it
created: no third party's traffic is in them, and they may be redistributed with the project.

## sample-call.pcapng

A real WebRTC call between two aiortc peers, captured live by `inspector.capture.live.LiveCapture`
on one end, with one request to a third-party telemetry name in the middle of the call.

- Made with: `{command}` (as root), on {datetime.date.today().isoformat()}, aiortc {aiortc.__version__},
  PyAV {av.__version__}, Python {sys.version.split()[0]}.
- Generator: `scripts/make_sample_capture.py`, which drives `scripts/webrtc_call.py`.
- File: {capture.stat().st_size} bytes, SHA-256 `{digest}`; pcapng, one interface,
  LINKTYPE_ETHERNET, nanosecond timestamps; {total} packets from {_iso(first)} to {_iso(last)}.
- Network: namespaces A and B joined by one veth pair, captured on A's end. A (the offerer,
  captured side) is `{result.local_ip}`, B (the answerer) `{result.remote_ip}`. Next to A, in B's
  namespace, a DNS responder at `{result.dns_server_ip}` (UDP 53) and an HTTPS server at
  `{result.telemetry_ip}` (TCP 443) with a self-signed certificate for `{result.telemetry_name}`.
- The call: {duration_s} s, audio (440 Hz tone, opus, payload type {pts.get('opus')}) and video (moving
  test pattern, {WIDTH}x{HEIGHT} at {FPS} fps, VP8 payload type {pts.get('vp8')}, capped at
  {MAX_VIDEO_BITRATE // 1000} kbit/s) both ways, bundled on one UDP 5-tuple
  `{result.local_ip}:{result.local_media_port} <-> {result.remote_ip}:{result.remote_media_port}`;
  ICE with host candidates only (STUN binding requests/responses), DTLS-SRTP; signalling as JSON
  lines over TCP port 7000 (plain text: the SDP offer and answer are readable in the capture).
  Call window (A connected -> A hung up): {_iso(result.call_start_ns)} -> {_iso(result.call_end_ns)}.
- Telemetry: at {_iso(result.telemetry_request_ns)}, inside the call, A asks `{result.dns_server_ip}` for
  `{result.telemetry_name}` (A record -> `{result.telemetry_ip}`) and POSTs a small JSON body to
  `https://{result.telemetry_name}/a` (TLS ClientHello with that SNI; HTTP status {result.telemetry_status}).
  `app-measurement.com` is the collection host of Google Analytics for Firebase.
- Packets by kind (a plain dpkt walk in the generator, not the inspector's verdicts):

| kind | packets |
|---|---|
{chr(10).join(rows)}

To make it again (root; nothing leaves the machine: every address is inside namespaces the script
creates and removes, even on Ctrl-C):

    apt-get install -y iproute2 libpcap0.8
    pip install aiortc            # brings PyAV with opus and libvpx
    python3 scripts/make_sample_capture.py

A new run gives a different file (keys, ports, timestamps, SSRCs) with the same structure. If a
run is killed with SIGKILL, `ip netns list | grep insp-` shows what to remove with `ip netns del`.

Expectations for the inspector: one call (peer-to-peer, WebRTC, no vendor service), one media
flow with an opus and a VP8 stream in each direction, and `{result.telemetry_name}` as a destination
that received data during the call. No loss was added: over the {streams} RTP streams, {missing}
sequence numbers are missing.
"""
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "captures" / "sample-call.pcapng")
    parser.add_argument("--duration", type=float, default=4.5)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sample-call-") as tmp:
        result = webrtc_call.run_call(Path(tmp), duration_s=args.duration, capture_path=args.out,
                                      width=WIDTH, height=HEIGHT, fps=FPS,
                                      max_video_bitrate=MAX_VIDEO_BITRATE)
    command = "python3 scripts/make_sample_capture.py"
    if args.duration != 4.5:
        command += f" --duration {args.duration}"
    write_readme(args.out.parent / "README.md", args.out, result, args.duration, command)
    print(f"{args.out}: {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
