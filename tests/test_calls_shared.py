"""The calls stage on the shared nDPI captures: call counts and services checked by hand, and
golden sessions/destinations/media CSV per capture in ``tests/golden/calls/``.

The expectations below were checked against the packets (tshark ``-z conv,udp``, dpkt/scapy
dumps of the payloads, ``inspector.dissect.zoom`` on every Zoom datagram) and against nDPI's
expected output (``expected/flows.tsv``). nDPI is a peer: it labels flows, it does not detect
calls, so "nDPI says LineCall" means the flow is call media, not that there was a call window.

Golden files are the CSV the CLI writes (``Analysis.write``, formula-safe), except that
destinations leave out ``organisation`` and ``evidence`` (as tests/test_golden.py does for flows):
rewording a signature's organisation or a detector's evidence must not churn every call golden,
while the service, kind, counts and times stay pinned. After an intended change regenerate them
with ``python3 -m pytest tests/test_calls_shared.py --regen-golden`` and review the diff like code.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

import inspector

GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "calls"
TABLES = ("sessions", "destinations", "media")
#: Wording columns left out of the golden files (module docstring).
UNPINNED = {"destinations": ("organisation", "evidence")}


def golden_text(table: str, text: str) -> str:
    """The CSV text as written, without the table's ``UNPINNED`` columns."""
    drop = UNPINNED.get(table, ())
    if not drop:
        return text
    rows = list(csv.reader(io.StringIO(text)))
    keep = [i for i, name in enumerate(rows[0]) if name not in drop]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow([row[i] for i in keep])
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Expected:
    """Per capture: the calls as (service, is_p2p) in session order, and streams per call."""

    calls: tuple[tuple[str, bool], ...]
    media_streams: tuple[int, ...] = ()


EXPECTED: dict[str, Expected] = {
    # Zoom 2019 client joining a meeting: STUN to 162.255.37.14/162.255.38.14:3478-3479, SFU
    # setup on three UDP/8801 flows to 109.94.160.99 and 175 packets from it within ~1.5 s: one
    # 4 s call, server-relayed. No media rows: in the 2019 layout (1-byte outer 0x05, inner type
    # at byte 1) the datagrams carry inner type 0x15 (179 packets of 1029 bytes filled with 0x01,
    # a bandwidth probe), 0x0a/0x0c/0x0d control ("data_bind_re...") or 0x22 RTCP, none of the
    # audio/video/screen types with RTP (facts §2.3); dissect.zoom.parse_server_media finds RTP
    # in none of them (one RTCP packet only).
    "zoom.pcap": Expected(calls=(("zoom", False),), media_streams=(0,)),
    # Two Zoom 1:1 meetings. Call 1: STUN to 206.247.87.213:3478 every 2 s from 17:43:53.7
    # (20 requests on two ports, answered only by ICMP "host administratively prohibited": the
    # unnamed 206.247.87.213 row of destinations.csv) while the P2P path to 192.168.1.226:46757 carries
    # 322 packets for 1.67 s (tshark conversation duration 1.6682 s): the P2P flow 8 simply
    # lasts 1.7 s, so its RTP rows covering ~1.4 s of the 43 s window are all there is (44
    # audio + 203 video datagrams; the collector and dissect.zoom.parse_p2p_media agree on
    # every one; 63 inner-type-0x15 and 11 0x1f setup packets carry no RTP). Five streams: video
    # and its FEC (PT 110) each way, and received audio. Call 2 (17:48): STUN to 206.247.10.253
    # and 284 P2P setup packets (0x1f) to 10.78.14.178 that were never answered: the peer path
    # did not come up, so no RTP and 0 bytes received.
    "zoom_p2p.pcapng": Expected(calls=(("zoom", True), ("zoom", True)), media_streams=(5, 0)),
    # Teams: 4.5 s of ICE: MS-STUN to Teams relays 52.114.250.x:3478 and 52.114.252.x:3479-3480
    # and checks to the peer's public (93.71.110.205) and private (192.168.0.4) candidates; one
    # audio stream (18 packets) from the peer. P2P because media went to the participant.
    "teams.pcap": Expected(calls=(("teams", True),), media_streams=(1,)),
    # Webex: no call. The client joined (TLS to *.webex.com), and UDP/9000 to 62.109.229.158
    # got two answers to its 0x01 probe, then 14 unanswered 50-byte packets once a second: the
    # media path never carried media. 15 TCP/443 connections to Webex's ranges with 4-12
    # packets each are TLS, not media (a media role needs UDP or payload evidence, see
    # sessions.py rule 1); before that rule they made a 103 s "call".
    "webex.pcap": Expected(calls=()),
    # Google Meet: 12 packets in 0.26 s, TLS and QUIC to meet.google.com only: no media at all.
    "google_meet.pcapng": Expected(calls=()),
    # Two excerpts of a call setup (different hosts, 470 days apart): 0.88 s of STUN + DTLS +
    # 11 SRTP packets to 142.250.82.76:19305, and 0.89 s of TURN over TCP. Each is shorter than
    # min_duration_s (2 s): a cut capture of a handshake, not evidence of a call. A real call
    # sends audio for seconds (50 packets/s, RFC 7587 §4.2 20 ms frames); the threshold is what
    # keeps lone connectivity checks and pre-call network tests out of sessions.csv.
    "stun_dtls_rtp.pcapng": Expected(calls=()),
    # WhatsApp voice call 2019: STUN to five WhatsApp relays (…:3478) and RTP-like media to the
    # peer 91.252.56.51 and 1.60.78.64: P2P, three audio streams.
    "wa_voice.pcap": Expected(calls=(("whatsapp", True),), media_streams=(3,)),
    # WhatsApp 2015 login then a 72 s call: STUN to 14 WhatsApp relays, media to two peers.
    "whatsapp_login_call.pcap": Expected(calls=(("whatsapp", True),), media_streams=(7,)),
    # A voice *message*, not a call: the client probes five WhatsApp relays with STUN (5-9
    # packets per relay over 60 s) and never sends media.
    "whatsapp_voice_and_message.pcap": Expected(calls=()),
    # Discord voice over 24 min: IP discovery and RTP bursts to the voice servers
    # 35.214.238.161:50001 and 66.22.196.173:50004 on 27 UDP flows, gaps under 60 s: one call.
    "discord.pcap": Expected(calls=(("discord", False),), media_streams=(33,)),
    # Telegram video call: reflectors 91.108.x.x:1400 and the peer (P2P). Telegram's media is
    # in its own encrypted framing, no clear RTP header, so no media rows.
    "telegram_videocall.pcapng": Expected(calls=(("telegram", True),), media_streams=(0,)),
    # Signal: STUN/TURN to Signal's relays on 3478/443 and to Google's STUN, and RTP from the
    # peer 18.195.131.143: P2P, audio and video streams (2 + 2 over two flows).
    "stun_signal.pcapng": Expected(calls=(("signal", True),), media_streams=(4,)),
    # KakaoTalk voice call via relay 1.201.1.174:23044-23047 (45 s of 16 kb/s audio). Nothing
    # names KakaoTalk on those flows, so the call is generic WebRTC, relayed.
    "KakaoTalk_talk.pcap": Expected(calls=(("webrtc", False),), media_streams=(4,)),
    # Three unrelated RTP excerpts; the 2.4 s RTP over TCP (RFC 4571 framing) between two LAN
    # hosts 172.16.168.24 -> 172.16.168.64:5000 is a call by the rule (2 s, 20 packets, peak
    # 10/s). The collector reads RTP from UDP only, so it has no media rows. Weakness: RTP over
    # TCP streams are not broken down.
    "rtp.pcapng": Expected(calls=(("webrtc", True),), media_streams=(0,)),
    # 1.5 s excerpt of a Skype conference call (200 packets): shorter than min_duration_s.
    "skype-conference-call.pcap": Expected(calls=()),
    # Known misses, classifier side (the call stage only sees flows judged media):
    # LINE call media on UDP/29070 (121 packets, 8.7 s; nDPI LineCall) is unclassified;
    # Snapchat's call over QUIC to 18.184.138.142:443 (nDPI QUIC.SnapchatCall) is not named;
    # Viber's UDP/7985 flows (~6 packets/s; nDPI Viber VoIP) are port-only signalling.
    "line.pcap": Expected(calls=()),
    "snapchat_call.pcapng": Expected(calls=()),
    "viber.pcap": Expected(calls=()),
}


@pytest.fixture(scope="module")
def call_outputs(ndpi_dir, tmp_path_factory):
    """capture -> (Analysis, {table: CSV text as the CLI writes it})."""
    outputs = {}
    for capture in EXPECTED:
        analysis = inspector.analyze([ndpi_dir / capture])
        out = tmp_path_factory.mktemp(capture.replace(".", "_"))
        analysis.write(out)
        outputs[capture] = (analysis, {t: golden_text(t, (out / f"{t}.csv").read_text()) for t in TABLES})
    return outputs


@pytest.mark.parametrize("capture", sorted(EXPECTED))
def test_calls_and_services(call_outputs, capture):
    analysis, _ = call_outputs[capture]
    expected = EXPECTED[capture]
    sessions = analysis.sessions
    got = tuple(zip(sessions["service"], (bool(v) for v in sessions["is_p2p"])))
    assert got == expected.calls
    assert list(sessions["session_id"]) == [f"s{i}" for i in range(1, len(expected.calls) + 1)]
    streams = tuple(int((analysis.media["session_id"] == sid).sum()) for sid in sessions["session_id"])
    assert streams == (expected.media_streams or (0,) * len(expected.calls))
    # Every media flow of a call is labelled with it in flows.csv, and nothing else is.
    labelled = analysis.flows[analysis.flows["session_id"] != ""]
    assert int(sessions["media_flows"].sum()) == len(labelled)
    # Destinations: every flow's bytes are counted at least once (inside a call or outside).
    destinations = analysis.destinations
    assert set(destinations.loc[destinations["during_call"], "session_id"]) == set(sessions["session_id"])
    assert (destinations.loc[~destinations["during_call"], "session_id"] == "").all()


def test_webex_tls_on_webex_ranges_is_not_call_media(call_outputs):
    analysis, _ = call_outputs["webex.pcap"]
    flows = analysis.flows
    tls_media = flows[(flows["transport"] == "tcp") & (flows["role"] == "media")]
    assert len(tls_media) > 0  # the classifier's verdict, by address range only
    assert (tls_media["evidence"] == "cidr:webex").all()
    assert (flows["session_id"] == "").all()


def test_zoom_p2p_media_rows_cover_the_p2p_flow(call_outputs):
    analysis, _ = call_outputs["zoom_p2p.pcapng"]
    flow8 = analysis.flows.set_index("flow_id").loc[8]
    media = analysis.media[analysis.media["flow_id"] == 8]
    assert flow8["duration_s"] == pytest.approx(1.668209, abs=1e-6)
    assert media["duration_s"].max() == pytest.approx(1.478502076, abs=1e-9)
    # 44 audio + 203 video datagrams with RTP at the documented P2P offsets (facts §2.3).
    assert int(media["packets"].sum()) == 44 + 203
    kinds = dict(zip(zip(media["direction"], media["payload_type"]), media["media_kind"]))
    assert kinds == {("received", 98): "video", ("received", 110): "", ("received", 113): "audio",
                     ("sent", 98): "video", ("sent", 110): ""}  # fmt: skip


@pytest.mark.parametrize("capture", sorted(EXPECTED))
def test_golden_call_tables(call_outputs, capture, request):
    _, texts = call_outputs[capture]
    regen = request.config.getoption("--regen-golden")
    for table in TABLES:
        path = GOLDEN_DIR / f"{capture}.{table}.csv"
        if regen:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(texts[table])
            continue
        assert path.exists(), f"{path} missing: run pytest {__file__} --regen-golden"
        assert texts[table] == path.read_text(), f"{path.name} differs from the pipeline's output"
