"""A real WebRTC call between two network namespaces, captured live, with a telemetry request in it.

    python3 scripts/webrtc_call.py --duration 8 --capture out.pcapng [--loss 0.05 --delay-ms 40 --jitter-ms 20]

What happens (all addresses live in namespaces this script creates; nothing leaves the machine):

1. namespaces A and B joined by a veth pair (10.77.0.1 - 10.77.0.2), or, with any impairment,
   A - R - B with the userspace relay of scripts/impair_relay.py in R (netns_topology.py);
2. next to the captured side, a DNS responder (x.x.x.53, UDP 53, built with dpkt) and an HTTPS server
   (x.x.x.80:443) presenting a self-signed certificate for the telemetry name (default
   ``app-measurement.com``, Google Analytics for Firebase's collection host);
3. a live capture (inspector.capture.live.LiveCapture) on the captured side's veth, in its namespace;
4. two aiortc peers: B answers, A offers; ``RTCConfiguration(iceServers=[])`` so ICE uses host
   candidates only (STUN connectivity checks, RFC 8445), then DTLS-SRTP (RFC 5764) with opus audio
   (a sine tone) and VP8 video (a moving test pattern), both ways, signalling as JSON lines over TCP;
5. half-way through the call the captured side asks the DNS responder for the telemetry name and
   POSTs to https://<name>/a — so the capture holds a DNS answer and a TLS ClientHello with the SNI;
6. the call ends, the capture stops (SIGTERM), everything is torn down, even on Ctrl-C.

Tests import ``run_call`` through tests/e2e/harness.py. Needs root, iproute2 and aiortc.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import fractions
import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for _path in (str(REPO), str(SCRIPTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import netns_topology  # noqa: E402

SIGNAL_PORT = 7000
DNS_HOST_OCTET = 53
HTTPS_HOST_OCTET = 80
DEFAULT_TELEMETRY_NAME = "app-measurement.com"


@dataclass(frozen=True, slots=True)
class CallResult:
    """What a call run did, for tests to check the capture against.

    evidence_path           the live capture of the captured side (pcapng)
    call_start_ns           when the offerer's connection became "connected" (ns since the epoch)
    call_end_ns             when the offerer started closing the connection
    telemetry_name          the name asked in DNS and sent as TLS SNI
    telemetry_ip            the address the DNS answer gave (the HTTPS server)
    dns_server_ip           where the DNS query went
    telemetry_request_ns    when the HTTPS request started; telemetry_status its HTTP status
    captured_side           'a' or 'b'
    local_ip, local_media_port     the captured side's media socket
    remote_ip, remote_media_port   the peer as the captured side sees it (a relay face when impaired)
    payload_types           codec name (lower case: opus, vp8, rtx ...) -> RTP payload type, from the SDP answer
    offer_sdp, answer_sdp   the SDPs as the captured side sent / received them
    loss, delay_ms, jitter_ms   the impairment asked for
    relay_stats             the relay's counters (forwarded / dropped per direction), {} when direct
    capture_stats           the live capture's LiveStats as a dict
    frames_received         frames the offerer decoded: {'audio': n, 'video': n}
    """

    evidence_path: Path
    call_start_ns: int
    call_end_ns: int
    telemetry_name: str
    telemetry_ip: str
    dns_server_ip: str
    telemetry_request_ns: int
    telemetry_status: int
    captured_side: str
    local_ip: str
    local_media_port: int
    remote_ip: str
    remote_media_port: int
    payload_types: dict = field(default_factory=dict)
    offer_sdp: str = ""
    answer_sdp: str = ""
    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    relay_stats: dict = field(default_factory=dict)
    capture_stats: dict = field(default_factory=dict)
    frames_received: dict = field(default_factory=dict)

    @property
    def media_ports(self) -> tuple[int, int]:
        return self.local_media_port, self.remote_media_port


class CallError(RuntimeError):
    """The call could not be set up or did not complete; the message points at the log file."""


# ---------------------------------------------------------------------------------------------
# Orchestration (root namespace)
# ---------------------------------------------------------------------------------------------

class _Children:
    """Processes started in the namespaces; ended by their own pid, in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, prefix: list[str], args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([*prefix, sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def wait_ready(self, name: str, proc: subprocess.Popen, ready: Path, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if proc.poll() is not None:
                raise CallError(f"{name} exited with {proc.returncode}: see {self.workdir / (name + '.log')}")
            if time.monotonic() > deadline:
                raise CallError(f"{name} not ready after {timeout_s} s: see {self.workdir / (name + '.log')}")
            time.sleep(0.02)

    def terminate(self, proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def end_all(self) -> None:
        for _name, proc in reversed(self.procs):
            self.terminate(proc, 5.0)


def run_call(workdir: Path, duration_s: float = 8.0, loss: float = 0.0, delay_ms: float = 0,
             jitter_ms: float = 0, capture_iface_side: str = "a", capture_path: Path | None = None,
             width: int = 640, height: int = 480, fps: int = 30, max_video_bitrate: int | None = None,
             telemetry_name: str = DEFAULT_TELEMETRY_NAME, telemetry_at_s: float | None = None,
             seed: int = 1, relayed: bool | None = None) -> CallResult:
    """Run one call and capture it; see the module docstring. Everything is removed at the end.

    The relay (A - R - B) is used when any impairment is asked for, or when ``relayed`` is True.
    ``telemetry_at_s`` defaults to half the duration. Raises CallError when the call fails."""
    if capture_iface_side not in ("a", "b"):
        raise ValueError("capture_iface_side must be 'a' or 'b'")
    reason = netns_topology.netns_available()
    if reason:
        raise CallError(reason)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    capture_path = Path(capture_path) if capture_path else workdir / "call.pcapng"
    if relayed is None:
        relayed = bool(loss or delay_ms or jitter_ms)
    telemetry_at_s = duration_s / 2 if telemetry_at_s is None else telemetry_at_s
    script = str(Path(__file__).resolve())
    topo = netns_topology.create(relayed=relayed)
    children = _Children(workdir)
    try:
        side = topo.a if capture_iface_side == "a" else topo.b
        services_ns, services_iface, subnet = topo.neighbour(capture_iface_side)
        dns_ip, https_ip = f"{subnet}{DNS_HOST_OCTET}", f"{subnet}{HTTPS_HOST_OCTET}"
        topo.add_address(services_ns, services_iface, dns_ip)
        topo.add_address(services_ns, services_iface, https_ip)
        cert_path = workdir / "telemetry-cert.pem"
        key_path = workdir / "telemetry-key.pem"
        _write_self_signed(telemetry_name, cert_path, key_path)

        services = children.start("services", services_ns.exec_prefix(), [
            script, "_services", "--dns-ip", dns_ip, "--https-ip", https_ip, "--name", telemetry_name,
            "--cert", str(cert_path), "--key", str(key_path), "--ready", str(workdir / "services.ready")])
        children.wait_ready("services", services, workdir / "services.ready")

        answer_listen = f"{topo.b.ip}:{SIGNAL_PORT}"
        offer_connect = answer_listen
        relay_stats_path = workdir / "relay-stats.json"
        if topo.r is not None:
            offer_connect = f"{topo.r.ip}:{SIGNAL_PORT}"
            faces = list(topo.r.extra_ifaces.values())
            relay = children.start("relay", topo.r.exec_prefix(), [
                str(SCRIPTS / "impair_relay.py"), "--listen", offer_connect, "--target", answer_listen,
                "--face-a", faces[0], "--face-b", faces[1], "--loss", str(loss), "--delay-ms", str(delay_ms),
                "--jitter-ms", str(jitter_ms), "--seed", str(seed), "--stats", str(relay_stats_path),
                "--ready", str(workdir / "relay.ready")])
            children.wait_ready("relay", relay, workdir / "relay.ready")

        capture_stats_path = workdir / "capture-stats.json"
        capture = children.start("capture", side.exec_prefix(), [
            script, "_capture", "--iface", side.iface, "--out", str(capture_path),
            "--stats", str(capture_stats_path), "--ready", str(workdir / "capture.ready")])
        children.wait_ready("capture", capture, workdir / "capture.ready")

        common = ["--duration", str(duration_s), "--width", str(width), "--height", str(height),
                  "--fps", str(fps)]
        if max_video_bitrate:
            common += ["--max-video-bitrate", str(max_video_bitrate)]
        telemetry_args = ["--dns-server", dns_ip, "--telemetry-name", telemetry_name,
                          "--telemetry-at", str(telemetry_at_s), "--cafile", str(cert_path)]
        results = {s: workdir / f"peer-{s}.json" for s in "ab"}
        answerer = children.start("peer-b", topo.b.exec_prefix(), [
            script, "_peer", "--role", "answer", "--signal", answer_listen, "--result", str(results["b"]),
            "--ready", str(workdir / "peer-b.ready"), *common,
            *(telemetry_args if capture_iface_side == "b" else [])])
        children.wait_ready("peer-b", answerer, workdir / "peer-b.ready")
        offerer = children.start("peer-a", topo.a.exec_prefix(), [
            script, "_peer", "--role", "offer", "--signal", offer_connect, "--result", str(results["a"]),
            *common, *(telemetry_args if capture_iface_side == "a" else [])])
        try:
            offerer.wait(duration_s + 45)
            answerer.wait(15)
        except subprocess.TimeoutExpired as e:
            raise CallError(f"the call did not end in time: see {workdir}/peer-*.log") from e
        if offerer.returncode or answerer.returncode:
            raise CallError(f"a peer failed (offer {offerer.returncode}, answer {answerer.returncode}): "
                            f"see {workdir}/peer-a.log and peer-b.log")
        time.sleep(0.3)  # let the last packets (RTCP BYE, DTLS close_notify) reach the capture
        children.terminate(capture)
        if capture.returncode:
            raise CallError(f"the capture failed ({capture.returncode}): see {workdir}/capture.log")
        children.end_all()
        peer = {s: json.loads(results[s].read_text()) for s in "ab"}
        captured = peer[capture_iface_side]
        return CallResult(
            evidence_path=capture_path,
            call_start_ns=peer["a"]["connected_ns"],
            call_end_ns=peer["a"]["closing_ns"],
            telemetry_name=telemetry_name,
            telemetry_ip=captured["telemetry"]["ip"],
            dns_server_ip=dns_ip,
            telemetry_request_ns=captured["telemetry"]["request_ns"],
            telemetry_status=captured["telemetry"]["status"],
            captured_side=capture_iface_side,
            local_ip=captured["local"][0],
            local_media_port=captured["local"][1],
            remote_ip=captured["remote"][0],
            remote_media_port=captured["remote"][1],
            payload_types=peer["a"]["payload_types"],
            offer_sdp=captured["sent_sdp"],
            answer_sdp=captured["received_sdp"],
            loss=loss, delay_ms=delay_ms, jitter_ms=jitter_ms,
            relay_stats=json.loads(relay_stats_path.read_text()) if relay_stats_path.exists() else {},
            capture_stats=json.loads(capture_stats_path.read_text()),
            frames_received=peer["a"]["frames"],
        )
    finally:
        children.end_all()
        topo.destroy()


def _write_self_signed(name: str, cert_path: Path, key_path: Path) -> None:
    """A self-signed certificate for ``name`` (ECDSA P-256, SAN dNSName), valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


# ---------------------------------------------------------------------------------------------
# Inside a namespace: local services (DNS responder + HTTPS "telemetry" server)
# ---------------------------------------------------------------------------------------------

def _dns_answer(query: bytes, name: str, address: str) -> bytes | None:
    """Answer A queries for ``name`` with ``address`` (TTL 60); NXDOMAIN for any other name
    (RFC 1035 §4.1). Returns None for bytes that are not a query."""
    import dpkt

    try:
        message = dpkt.dns.DNS(query)
    except (dpkt.UnpackError, IndexError, ValueError):
        return None
    if message.qr != dpkt.dns.DNS_Q or not message.qd:
        return None
    message.qr = dpkt.dns.DNS_R
    message.aa = 1
    message.ra = 0
    question = message.qd[0]
    if question.name.rstrip(".").lower() != name:
        message.rcode = dpkt.dns.DNS_RCODE_NXDOMAIN
        message.an = []
    elif question.type == dpkt.dns.DNS_A:
        answer = dpkt.dns.DNS.RR(name=question.name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN, ttl=60,
                                 rdata=socket.inet_aton(address))
        message.an = [answer]
    else:
        message.an = []  # NOERROR, no data (AAAA and the rest)
    message.ns = []
    message.ar = []
    return bytes(message)


def _services_main(args: argparse.Namespace) -> int:
    import http.server

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind((args.dns_ip, 53))
    dns.settimeout(0.2)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = min(int(self.headers.get("Content-Length", "0") or 0), 1 << 20)
            self.rfile.read(length)
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST

        def log_message(self, fmt: str, *fargs: object) -> None:
            sys.stdout.write("https: " + (fmt % fargs) + "\n")

    httpd = http.server.ThreadingHTTPServer((args.https_ip, 443), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    Path(args.ready).write_text("ready\n")
    while not stop.is_set():
        try:
            query, client = dns.recvfrom(4096)
        except socket.timeout:
            continue
        reply = _dns_answer(query, args.name, args.https_ip)
        if reply is not None:
            dns.sendto(reply, client)
            print(f"dns: answered {client}", flush=True)
    httpd.shutdown()
    return 0


# ---------------------------------------------------------------------------------------------
# Inside a namespace: the live capture
# ---------------------------------------------------------------------------------------------

def _capture_main(args: argparse.Namespace) -> int:
    from inspector.capture.live import LiveCapture

    capture = LiveCapture(args.iface, evidence_path=Path(args.out), batch_size=512)
    batches = capture.batches()
    # The socket opens on the first step of the generator; signal readiness from a timer so the
    # orchestrator starts the call only once the capture is listening.
    threading.Timer(0.3, lambda: Path(args.ready).write_text("ready\n")).start()
    packets = 0
    for batch in batches:
        packets += len(batch)
    stats = capture.stats
    Path(args.stats).write_text(json.dumps({**asdict(stats), "batched_packets": packets}, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------
# Inside a namespace: one aiortc peer
# ---------------------------------------------------------------------------------------------

def _media_tracks(width: int, height: int, fps: int):
    import av
    import numpy as np
    from aiortc import MediaStreamTrack

    class SineAudioTrack(MediaStreamTrack):
        """A 440 Hz tone, 48 kHz mono, 20 ms frames, paced in real time."""

        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._start: float | None = None
            self._samples_sent = 0

        async def recv(self):
            rate, samples = 48000, 960
            if self._start is None:
                self._start = time.time()
            else:
                self._samples_sent += samples
                await asyncio.sleep(max(0.0, self._start + self._samples_sent / rate - time.time()))
            t = (np.arange(samples) + self._samples_sent) / rate
            pcm = (8000 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = self._samples_sent
            frame.time_base = fractions.Fraction(1, rate)
            return frame

    class PatternVideoTrack(MediaStreamTrack):
        """A moving colour gradient with a bouncing square, ``fps`` frames a second."""

        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self._start: float | None = None
            self._index = 0
            y, x = np.mgrid[0:height, 0:width]
            self._x, self._y = x, y

        async def recv(self):
            if self._start is None:
                self._start = time.time()
            else:
                self._index += 1
                await asyncio.sleep(max(0.0, self._start + self._index / fps - time.time()))
            i = self._index
            image = np.empty((height, width, 3), dtype=np.uint8)
            image[..., 0] = (self._x + 4 * i) % 256
            image[..., 1] = (self._y + 2 * i) % 256
            image[..., 2] = 128
            side = max(8, height // 6)
            left = (5 * i) % max(1, width - side)
            top = (3 * i) % max(1, height - side)
            image[top:top + side, left:left + side] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = int(i * 90000 / fps)
            frame.time_base = fractions.Fraction(1, 90000)
            return frame

    return SineAudioTrack(), PatternVideoTrack()


def _telemetry_request(dns_server: str, name: str, cafile: str) -> dict:
    """Resolve ``name`` at ``dns_server`` (one A query, RFC 1035) and POST to https://name/a."""
    import dpkt

    query = dpkt.dns.DNS(id=0x4A11, qr=dpkt.dns.DNS_Q, rd=1,
                         qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN)])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(3)
        udp.sendto(bytes(query), (dns_server, 53))
        answer = dpkt.dns.DNS(udp.recv(4096))
    addresses = [socket.inet_ntoa(rr.rdata) for rr in answer.an if rr.type == dpkt.dns.DNS_A]
    if not addresses:
        raise RuntimeError(f"no A record for {name} from {dns_server}")
    request_ns = time.time_ns()
    context = ssl.create_default_context(cafile=cafile)
    body = json.dumps({"app_instance_id": "0123456789abcdef", "events": ["session_start"]}).encode()
    with socket.create_connection((addresses[0], 443), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(b"POST /a HTTP/1.1\r\nHost: " + name.encode() +
                        b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() +
                        b"\r\nConnection: close\r\n\r\n" + body)
            reply = b""
            while chunk := tls.recv(4096):
                reply += chunk
                if b"\r\n\r\n" in reply:
                    break
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    return {"ip": addresses[0], "request_ns": request_ns, "status": status}


def _payload_types(sdp: str) -> dict[str, int]:
    """codec name (lower case) -> payload type, from the a=rtpmap lines (RFC 8866 §6.6)."""
    types: dict[str, int] = {}
    for line in sdp.splitlines():
        if line.startswith("a=rtpmap:"):
            number, _, rest = line[len("a=rtpmap:"):].partition(" ")
            types.setdefault(rest.split("/")[0].lower(), int(number))
    return types


async def _peer(args: argparse.Namespace) -> dict:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.codecs import vpx

    if args.max_video_bitrate:
        # aiortc's VP8 encoder starts at DEFAULT_BITRATE and follows REMB within [MIN, MAX].
        vpx.MAX_BITRATE = args.max_video_bitrate
        vpx.DEFAULT_BITRATE = min(vpx.DEFAULT_BITRATE, args.max_video_bitrate)
        vpx.MIN_BITRATE = min(vpx.MIN_BITRATE, args.max_video_bitrate // 2)

    result: dict = {"frames": {"audio": 0, "video": 0}, "telemetry": {}}
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    connected = asyncio.Event()
    consumers: list[asyncio.Task] = []

    @pc.on("connectionstatechange")
    async def _on_state() -> None:
        if pc.connectionState == "connected" and not connected.is_set():
            result["connected_ns"] = time.time_ns()
            connected.set()

    @pc.on("track")
    def _on_track(track) -> None:
        async def consume() -> None:
            try:
                while True:
                    await track.recv()
                    result["frames"][track.kind] += 1
            except Exception:  # MediaStreamError when the call ends
                return
        consumers.append(asyncio.ensure_future(consume()))

    audio, video = _media_tracks(args.width, args.height, args.fps)
    pc.addTrack(audio)
    pc.addTrack(video)
    host, port = args.signal.rsplit(":", 1)

    if args.role == "answer":
        got_peer = asyncio.Event()
        streams: dict = {}

        async def on_client(reader, writer) -> None:
            streams["r"], streams["w"] = reader, writer
            got_peer.set()

        server = await asyncio.start_server(on_client, host, int(port))
        Path(args.ready).write_text("ready\n")
        await asyncio.wait_for(got_peer.wait(), 30)
        server.close()
        reader, writer = streams["r"], streams["w"]
        offer = json.loads(await reader.readline())
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        writer.write(json.dumps({"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}).encode() + b"\n")
        await writer.drain()
        result["received_sdp"], result["sent_sdp"] = offer["sdp"], pc.localDescription.sdp
    else:
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"cannot reach signalling at {args.signal}")
        await pc.setLocalDescription(await pc.createOffer())
        writer.write(json.dumps({"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}).encode() + b"\n")
        await writer.drain()
        answer = json.loads(await reader.readline())
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        result["sent_sdp"], result["received_sdp"] = pc.localDescription.sdp, answer["sdp"]
    # The answer's payload types are the ones used on the wire (RFC 3264 §6.1).
    result["payload_types"] = _payload_types(result["received_sdp"] if args.role == "offer" else result["sent_sdp"])

    await asyncio.wait_for(connected.wait(), 20)
    pair = _selected_pair(pc)
    result["local"], result["remote"] = pair

    telemetry_task = None
    if args.telemetry_name:
        async def telemetry() -> None:
            await asyncio.sleep(args.telemetry_at)
            result["telemetry"] = await asyncio.to_thread(
                _telemetry_request, args.dns_server, args.telemetry_name, args.cafile)
        telemetry_task = asyncio.ensure_future(telemetry())

    if args.role == "offer":
        await asyncio.sleep(args.duration)
        if telemetry_task is not None:
            await telemetry_task
        writer.write(b'{"type": "bye"}\n')
        await writer.drain()
    else:
        # The answerer ends when the offerer says bye or hangs up (or after a generous timeout).
        try:
            await asyncio.wait_for(reader.readline(), args.duration + 30)
        except asyncio.TimeoutError:
            pass
        if telemetry_task is not None:
            await telemetry_task
    result["closing_ns"] = time.time_ns()
    await pc.close()
    for task in consumers:
        task.cancel()
    writer.close()
    return result


def _selected_pair(pc) -> tuple[tuple[str, int], tuple[str, int]]:
    """The nominated ICE candidate pair of the (bundled) media transport.

    aiortc exposes it only through aioice's Connection (a private attribute), so this reads
    ``_nominated``; when that changes, it falls back to the first local and remote candidates."""
    transceiver = pc.getTransceivers()[0]
    ice = transceiver.sender.transport.transport
    connection = ice.iceGatherer._connection
    pair = getattr(connection, "_nominated", {}).get(1)
    if pair is not None:
        return ((pair.local_candidate.host, pair.local_candidate.port),
                (pair.remote_candidate.host, pair.remote_candidate.port))
    local = connection.local_candidates[0]
    remote = ice.getRemoteCandidates()[0]
    return (local.host, local.port), (remote.ip, remote.port)


def _peer_main(args: argparse.Namespace) -> int:
    result = asyncio.run(_peer(args))
    Path(args.result).write_text(json.dumps(result, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_peer", "_services", "_capture"):
        return _internal(argv)
    parser = argparse.ArgumentParser(description="Run a WebRTC call between namespaces and capture it.")
    parser.add_argument("--duration", type=float, default=8.0, help="call length in seconds (default 8)")
    parser.add_argument("--capture", type=Path, required=True, help="evidence pcapng to write")
    parser.add_argument("--side", choices=("a", "b"), default="a", help="which end to capture")
    parser.add_argument("--loss", type=float, default=0.0, help="share of media packets dropped (0-1)")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--max-video-bitrate", type=int, default=None, help="bits/s cap for VP8")
    parser.add_argument("--telemetry-name", default=DEFAULT_TELEMETRY_NAME)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="logs and intermediate files (default: a temp dir)")
    args = parser.parse_args(argv)
    import tempfile

    def interrupted(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # so run_call's finally tears the namespaces down

    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="webrtc-call-") as tmp:
        workdir = args.workdir or Path(tmp)
        result = run_call(workdir, args.duration, args.loss, args.delay_ms, args.jitter_ms, args.side,
                          args.capture, args.width, args.height, args.fps, args.max_video_bitrate,
                          args.telemetry_name, seed=args.seed)
    summary = {k: v for k, v in asdict(result).items() if k not in ("offer_sdp", "answer_sdp")}
    summary["evidence_path"] = str(result.evidence_path)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _internal(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    peer = sub.add_parser("_peer")
    peer.add_argument("--role", choices=("offer", "answer"), required=True)
    peer.add_argument("--signal", required=True)
    peer.add_argument("--result", required=True)
    peer.add_argument("--ready", default="")
    peer.add_argument("--duration", type=float, required=True)
    peer.add_argument("--width", type=int, default=640)
    peer.add_argument("--height", type=int, default=480)
    peer.add_argument("--fps", type=int, default=30)
    peer.add_argument("--max-video-bitrate", type=int, default=None)
    peer.add_argument("--dns-server", default="")
    peer.add_argument("--telemetry-name", default="")
    peer.add_argument("--telemetry-at", type=float, default=0.0)
    peer.add_argument("--cafile", default="")
    services = sub.add_parser("_services")
    for option in ("--dns-ip", "--https-ip", "--name", "--cert", "--key", "--ready"):
        services.add_argument(option, required=True)
    capture = sub.add_parser("_capture")
    for option in ("--iface", "--out", "--stats", "--ready"):
        capture.add_argument(option, required=True)
    args = parser.parse_args(argv)
    return {"_peer": _peer_main, "_services": _services_main, "_capture": _capture_main}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
