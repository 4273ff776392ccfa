"""A real aiortc call between network namespaces, captured live: what the evidence must hold.

Two calls run (about 25 s together): a clean 8 s call, and an 8 s call through the impairing relay at
5 % media loss and 40 +- 20 ms delay. The packet checks here read the capture with plain dpkt
(tests/e2e/harness.py); the inspector's own tables get checked against the same calls once the
pipeline lands.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e import harness

LOSS = 0.05
STUN_BINDING_REQUEST, STUN_BINDING_SUCCESS = 0x0001, 0x0101  # RFC 8489 §6, §18.2
RTCP_RTPFB = 205  # transport-layer feedback, FMT 1 = generic NACK (RFC 4585 §6.2)


@pytest.fixture(scope="module")
def clean_call(tmp_path_factory):
    reason = harness.unavailable_reason()
    if reason:
        pytest.skip(f"the WebRTC call {reason}")
    result = harness.run_call(tmp_path_factory.mktemp("clean-call"), duration_s=8)
    udp, tcp = harness.read_evidence(result.evidence_path)
    return result, udp, tcp


@pytest.fixture(scope="module")
def impaired_call(tmp_path_factory):
    reason = harness.unavailable_reason()
    if reason:
        pytest.skip(f"the WebRTC call {reason}")
    result = harness.run_call(tmp_path_factory.mktemp("impaired-call"), duration_s=8, loss=LOSS,
                              delay_ms=40, jitter_ms=20)
    udp, tcp = harness.read_evidence(result.evidence_path)
    return result, udp, tcp


def _media_tuple(result) -> set:
    return {(result.local_ip, result.local_media_port), (result.remote_ip, result.remote_media_port)}


def _on_media_tuple(result, packet) -> bool:
    return {packet.src, packet.dst} == _media_tuple(result)


@pytest.mark.netns
def test_stun_connectivity_checks_both_ways_with_the_magic_cookie(clean_call):
    result, udp, _ = clean_call
    stun = [p for p in udp if harness.is_stun(p.payload) and _on_media_tuple(result, p)]
    local = (result.local_ip, result.local_media_port)
    kinds = {(p.src == local, harness.stun_type(p.payload)) for p in stun}
    assert {(True, STUN_BINDING_REQUEST), (False, STUN_BINDING_REQUEST),
            (True, STUN_BINDING_SUCCESS), (False, STUN_BINDING_SUCCESS)} <= kinds
    assert all(p.payload[4:8] == b"\x21\x12\xa4\x42" for p in stun)


@pytest.mark.netns
def test_dtls_handshake_on_the_media_tuple(clean_call):
    result, udp, _ = clean_call
    dtls = [p for p in udp if harness.is_dtls(p.payload) and _on_media_tuple(result, p)]
    handshake_senders = {p.src for p in dtls if p.payload[0] == 22}  # content type handshake
    assert handshake_senders == _media_tuple(result)
    first_rtp = min(p.ts_ns for p in udp if harness.is_rtp_or_rtcp(p.payload))
    assert min(p.ts_ns for p in dtls) < first_rtp  # keys come before media (RFC 5764 §4.1)


@pytest.mark.netns
def test_rtp_audio_and_video_share_one_udp_tuple_with_the_sdp_payload_types(clean_call):
    result, udp, _ = clean_call
    opus, vp8 = result.payload_types["opus"], result.payload_types["vp8"]
    assert opus != vp8
    media = [p for p in udp if harness.is_rtp_or_rtcp(p.payload)]
    assert len(media) > 500
    assert all(_on_media_tuple(result, p) for p in media)  # bundled: one 5-tuple (RFC 8843)
    streams = harness.rtp_streams(udp)
    local = (result.local_ip, result.local_media_port)
    by_direction = {(s.src == local, s.payload_type) for s in streams}
    assert by_direction == {(True, opus), (True, vp8), (False, opus), (False, vp8)}
    assert len({s.ssrc for s in streams}) == 4
    for stream in streams:
        assert stream.loss_rate() == 0.0, stream  # nothing drops packets on a bare veth
        # opus at 20 ms frames: ~50 packets a second each way for 8 s
        if stream.payload_type == opus:
            assert 300 <= len(stream.sequence_numbers) <= 500
    assert any(harness.is_rtcp(p.payload) for p in media if p.src == local)
    assert any(harness.is_rtcp(p.payload) for p in media if p.src != local)


@pytest.mark.netns
def test_telemetry_dns_answer_and_client_hello_fall_inside_the_call(clean_call):
    result, udp, tcp = clean_call
    assert result.telemetry_name == "app-measurement.com" and result.telemetry_status == 204
    answers = harness.dns_answers(udp)
    assert [(name, ip) for _, name, ip in answers] == [(result.telemetry_name, result.telemetry_ip)]
    hellos = [(p.ts_ns, p.dst, harness.tls_client_hello_sni(p.payload)) for p in tcp
              if harness.tls_client_hello_sni(p.payload)]
    assert len(hellos) == 1
    hello_ts, hello_dst, sni = hellos[0]
    assert sni == result.telemetry_name
    assert hello_dst == (result.telemetry_ip, 443)
    assert result.call_start_ns < answers[0][0] < hello_ts < result.call_end_ns
    assert result.telemetry_ip not in {result.local_ip, result.remote_ip}  # its own destination


@pytest.mark.netns
def test_the_evidence_file_matches_the_capture_stats(clean_call):
    result, udp, tcp = clean_call
    stats = result.capture_stats
    assert stats["evidence_sha256"] == hashlib.sha256(result.evidence_path.read_bytes()).hexdigest()
    with open(result.evidence_path, "rb") as f:
        import dpkt

        frames = list(dpkt.pcapng.Reader(f))
    assert stats["evidence_packets"] == stats["packets_captured"] == stats["batched_packets"] == len(frames)
    assert stats["packets_dropped_by_kernel"] == 0
    assert stats["first_ts_ns"] < result.call_start_ns < result.call_end_ns < stats["last_ts_ns"]


@pytest.mark.netns
def test_relay_loss_shows_as_rtp_sequence_gaps_near_the_rate(impaired_call):
    result, udp, _ = impaired_call
    local = (result.local_ip, result.local_media_port)
    assert result.remote_ip != "10.77.2.2"  # A only ever sees the relay's face on its own subnet
    wanted = {result.payload_types["opus"], result.payload_types["vp8"]}
    streams = [s for s in harness.rtp_streams(udp) if s.payload_type in wanted]
    incoming = [s for s in streams if s.dst == local]
    outgoing = [s for s in streams if s.src == local]
    assert len(incoming) == 2 and len(outgoing) == 2
    # A's own packets are captured before the relay: no gaps. B's arrive after it: ~LOSS missing.
    assert all(s.loss_rate() == 0.0 for s in outgoing)
    expected = sum(s.expected_and_received()[0] for s in incoming)
    received = sum(s.expected_and_received()[1] for s in incoming)
    observed_loss = 1 - received / expected
    assert expected > 600
    assert LOSS * 0.5 <= observed_loss <= LOSS * 1.7, observed_loss
    relay = result.relay_stats["b_to_a"]
    assert relay["media_dropped"] / (relay["media_dropped"] + relay["media_forwarded"]) == pytest.approx(LOSS, abs=0.02)


@pytest.mark.netns
def test_impaired_call_shows_nacks_and_the_relay_delay(impaired_call):
    result, udp, _ = impaired_call
    local = (result.local_ip, result.local_media_port)
    # A asks for the lost packets again: RTCP transport feedback (generic NACK) from A. Under
    # SRTCP only the first header of a compound packet is clear text (RFC 3711 §3.4); aiortc sends
    # its NACKs as packets of their own, so the clear packet type is enough.
    first_types = {p.payload[1] for p in udp if p.src == local and harness.is_rtcp(p.payload)}
    assert RTCP_RTPFB in first_types, first_types
    # Every datagram waits 40 +- 20 ms each way: a STUN transaction takes at least ~40 ms.
    requests = {p.payload[8:20]: p.ts_ns for p in udp
                if harness.is_stun(p.payload) and p.src == local and harness.stun_type(p.payload) == STUN_BINDING_REQUEST}
    rtts = [p.ts_ns - requests[p.payload[8:20]] for p in udp
            if harness.is_stun(p.payload) and p.dst == local and harness.stun_type(p.payload) == STUN_BINDING_SUCCESS
            and p.payload[8:20] in requests]
    assert rtts and min(rtts) >= 38_000_000, rtts



@pytest.mark.netns
def test_interrupting_a_call_removes_its_namespaces():
    """Ctrl-C (SIGINT) in the middle of a call: the script exits and leaves no namespace behind."""
    reason = harness.unavailable_reason()
    if reason:
        pytest.skip(f"the WebRTC call {reason}")

    def namespaces() -> set[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return {line.split()[0] for line in listed.splitlines() if line.startswith("insp-")}

    before = namespaces()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, str(harness.SCRIPTS / "webrtc_call.py"), "--duration", "30",
                                 "--capture", f"{tmp}/c.pcapng", "--workdir", tmp],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            while not Path(tmp, "capture.ready").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert namespaces() - before, "the call never created its namespaces"
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert namespaces() - before == set()
    assert not [p for p in Path("/etc/netns").glob("insp-*") if p.name not in before]


# -- the pieces of the harness, without root ---------------------------------------------------

def test_sequence_loss_unwraps_16_bit_numbers_and_ignores_reordering():
    around_wrap = (65533, 65534, 65535, 0, 2, 1, 3, 5)  # 4 missing, 1 and 2 swapped
    stream = harness.RtpStream(("a", 1), ("b", 2), 1, 96, around_wrap)
    assert stream.expected_and_received() == (9, 8)
    assert stream.loss_rate() == pytest.approx(1 / 9)
    late_across_wrap = (65534, 0, 65535, 1)
    assert harness.RtpStream(("a", 1), ("b", 2), 1, 96, late_across_wrap).expected_and_received() == (4, 4)


def test_dns_responder_answers_the_telemetry_name_only():
    import dpkt

    def ask(name: str, qtype: int = dpkt.dns.DNS_A) -> dpkt.dns.DNS:
        query = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name=name, type=qtype, cls=dpkt.dns.DNS_IN)])
        return dpkt.dns.DNS(harness.webrtc_call._dns_answer(bytes(query), "app-measurement.com", "10.77.0.80"))

    answer = ask("App-Measurement.com")
    assert (answer.id, answer.qr, answer.rcode) == (7, 1, 0)
    assert [(rr.type, rr.rdata) for rr in answer.an] == [(dpkt.dns.DNS_A, bytes([10, 77, 0, 80]))]
    assert ask("example.com").rcode == dpkt.dns.DNS_RCODE_NXDOMAIN
    assert ask("app-measurement.com", dpkt.dns.DNS_AAAA).an == []
    assert harness.webrtc_call._dns_answer(b"\x00\x01garbage", "x", "10.0.0.1") is None


def test_relay_rewrites_candidates_and_drops_only_media(tmp_path):
    """The relay on loopback addresses: 127.0.0.0/24 plays A's subnet, 127.0.1.0/24 B's."""
    import asyncio
    import socket

    import impair_relay

    async def scenario() -> tuple[str, list[bytes], dict]:
        relay = impair_relay.Relay("127.0.0.1", "127.0.1.1", loss=0.5, delay_ms=0, jitter_ms=0, seed=3)
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind(("127.0.0.5", 0))
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b.bind(("127.0.1.5", 0))
        b.setblocking(False)
        b_port = b.getsockname()[1]
        sdp = ("v=0\r\nm=audio " + str(b_port) + " UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.1.5\r\n"
               "a=candidate:1 1 udp 2130706431 127.0.1.5 " + str(b_port) + " typ host\r\n")
        rewritten = await relay.rewrite_sdp(sdp)
        face_port = int(rewritten.split("a=candidate:1 1 udp 2130706431 127.0.0.1 ")[1].split()[0])
        stun = bytes([0, 1, 0, 0]) + b"\x21\x12\xa4\x42" + bytes(12)
        rtp = [bytes([0x80, 96]) + i.to_bytes(2, "big") + bytes(8) for i in range(200)]
        for packet in [stun, *rtp]:
            a.sendto(packet, ("127.0.0.1", face_port))
        await asyncio.sleep(0.3)
        got = []
        while True:
            try:
                data, source = b.recvfrom(2048)
            except BlockingIOError:
                break
            assert source[0] == "127.0.1.1"  # B only ever sees the relay
            got.append(data)
        a.close()
        b.close()
        return rewritten, got, relay.stats

    rewritten, got, stats = asyncio.run(scenario())
    assert "127.0.1.5" not in rewritten and "c=IN IP4 127.0.0.1" in rewritten
    assert got[0][4:8] == b"\x21\x12\xa4\x42"  # STUN is never dropped
    assert stats["a_to_b"]["media_dropped"] + stats["a_to_b"]["media_forwarded"] == 200
    assert len(got) - 1 == stats["a_to_b"]["media_forwarded"]
    assert 60 <= stats["a_to_b"]["media_dropped"] <= 140  # seeded 50 %
