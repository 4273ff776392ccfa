"""``inspector live`` on one end of a real aiortc call between network namespaces.

The call harness (scripts/webrtc_call.py ``run_call``) normally captures with a small script of its
own; here its capture process is replaced by the real command, ``python3 -m inspector live
--interface <A's veth> --write <evidence> --out <dir> --no-view``, started in A's namespace and
ended by the harness with SIGTERM, as a user's Ctrl-C would. The assertions read the command's
own tables. Two calls run (about 30 s together): a clean 8 s call on a bare veth pair, and an 8 s
call through the impairing relay (scripts/impair_relay.py) at 5 % media loss and 40 +- 20 ms
delay; the reported loss and jitter must move accordingly. Needs root, iproute2 and aiortc.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import dpkt
import pandas as pd
import pytest

from tests.e2e import harness

LOSS = 0.05
DELAY_MS, JITTER_MS = 40, 20
CALL_S = 8
TABLES = ("flows", "sessions", "destinations", "media")
SLACK_NS = 1_000_000_000  # ICE and DTLS run before "connected", RTCP BYE and close after "closing"


def _live_start(original):
    """A ``_Children.start`` that runs ``inspector live`` where the harness would run its capture."""

    def start(self, name, prefix, args):
        if name != "capture":
            return original(self, name, prefix, args)
        opts = dict(zip(args[2::2], args[3::2]))  # [script, "_capture", "--iface", X, "--out", P, ...]
        evidence = Path(opts["--out"])
        out_dir = evidence.parent / "live-out"
        proc = original(self, name, prefix, [
            "-m", "inspector", "live", "--interface", opts["--iface"], "--write", str(evidence),
            "--out", str(out_dir), "--no-view"])
        log = self.workdir / "capture.log"
        deadline = time.monotonic() + 30
        # The command prints "capturing on ..." just before its first read from the socket.
        while "capturing on" not in (log.read_text() if log.exists() else ""):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise harness.CallError(f"inspector live did not start: see {log}")
            time.sleep(0.05)
        time.sleep(0.5)
        Path(opts["--stats"]).write_text("{}")  # the harness reads it; the manifest is the record here
        Path(opts["--ready"]).write_text("ready\n")
        return proc

    return start


def _run(tmp_path_factory, label: str, **impairment):
    reason = harness.unavailable_reason()
    if reason:
        pytest.skip(f"the WebRTC call {reason}")
    workdir = tmp_path_factory.mktemp(label)
    with pytest.MonkeyPatch.context() as mp:
        children = harness.webrtc_call._Children
        mp.setattr(children, "start", _live_start(children.start))
        result = harness.run_call(workdir, duration_s=CALL_S, **impairment)
    out = result.evidence_path.parent / "live-out"
    tables = {name: pd.read_csv(out / f"{name}.csv", keep_default_na=False) for name in TABLES}
    manifest = json.loads((out / "manifest.json").read_text())
    return result, tables, manifest, out


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _run(tmp_path_factory, "live-clean")


@pytest.fixture(scope="module")
def impaired(tmp_path_factory):
    return _run(tmp_path_factory, "live-impaired", loss=LOSS, delay_ms=DELAY_MS, jitter_ms=JITTER_MS)


def _ns(text: str) -> int:
    return pd.Timestamp(text).value


def _the_call(tables) -> pd.Series:
    sessions = tables["sessions"]
    assert len(sessions) == 1, sessions
    return sessions.iloc[0]


@pytest.mark.netns
def test_one_webrtc_call_with_the_call_window(clean):
    result, tables, _, _ = clean
    call = _the_call(tables)
    assert call["service"] == "webrtc"
    assert call["client_ip"] == result.local_ip
    assert bool(call["is_p2p"])
    assert f"{result.remote_ip}:{result.remote_media_port}" in call["peers"]
    start, end = _ns(call["start"]), _ns(call["end"])
    assert abs(start - result.call_start_ns) < SLACK_NS
    assert abs(end - result.call_end_ns) < SLACK_NS
    assert CALL_S - 1.5 < call["duration_s"] < CALL_S + 2
    assert call["audio_streams"] >= 2 and call["video_streams"] >= 2  # each kind, both ways


@pytest.mark.netns
def test_audio_and_video_streams_have_plausible_bitrates_and_no_loss_on_a_clean_link(clean):
    result, tables, _, _ = clean
    media = tables["media"]
    session_id = _the_call(tables)["session_id"]
    assert set(media["session_id"]) == {session_id}
    kinds = {(row.direction, row.media_kind) for row in media.itertuples()}
    assert {("sent", "audio"), ("received", "audio"), ("sent", "video"), ("received", "video")} <= kinds
    opus, vp8 = result.payload_types["opus"], result.payload_types["vp8"]
    for row in media.itertuples():
        if row.media_kind == "audio":
            assert row.payload_type == opus
            # opus, 20 ms frames: 50 packets/s; IP-layer bitrate with SRTP/UDP/IP overhead
            assert 40 <= row.packets / row.duration_s <= 60, row
            assert 8 <= row.bitrate_kbps <= 300, row
        elif row.media_kind == "video":
            assert row.payload_type in (vp8, result.payload_types.get("rtx", -1))
            if row.payload_type == vp8:
                assert 30 <= row.bitrate_kbps <= 5000, row
        assert row.lost_packets == 0 and row.loss_rate == 0.0, row
        assert 0 <= row.jitter_ms < 20, row


@pytest.mark.netns
def test_the_telemetry_destination_is_inside_the_call_window(clean):
    result, tables, _, _ = clean
    call = _the_call(tables)
    flows = tables["flows"]
    (tele,) = flows[(flows["server_name"] == result.telemetry_name) & (flows["app_protocol"] == "tls")].itertuples()
    assert (tele.server_ip, tele.server_port, tele.name_source) == (result.telemetry_ip, 443, "sni")
    assert (tele.service, tele.kind) == ("google-analytics", "telemetry")
    assert _ns(call["start"]) < _ns(tele.first_seen) < _ns(call["end"])
    destinations = tables["destinations"]
    rows = destinations[destinations["destination"] == result.telemetry_name]
    assert len(rows) == 1, destinations
    row = rows.iloc[0]
    assert row["session_id"] == call["session_id"]
    assert bool(row["during_call"])
    assert (row["service"], row["kind"], row["server_ips"]) == ("google-analytics", "telemetry", result.telemetry_ip)
    assert row["bytes_sent"] > 200  # the ClientHello alone is a few hundred bytes


@pytest.mark.netns
def test_the_evidence_holds_every_packet_and_its_hash_is_in_the_manifest(clean):
    result, tables, manifest, _ = clean
    (entry,) = manifest["inputs"]
    evidence = result.evidence_path
    with open(evidence, "rb") as f:
        frames = sum(1 for _ in dpkt.pcapng.Reader(f))
    assert entry["source"] == "live"
    assert entry["evidence_path"] == str(evidence)
    assert entry["evidence_sha256"] == hashlib.sha256(evidence.read_bytes()).hexdigest()
    assert entry["evidence_packets"] == entry["packets"] == frames == entry["decode"]["packets_read"]
    assert entry["packets_dropped_by_kernel"] == 0
    flows = tables["flows"]
    counted = int((flows["client_to_server_packets"] + flows["server_to_client_packets"]).sum())
    assert counted == entry["decode"]["packets_decoded"]  # every decoded packet is in a flow


@pytest.mark.netns
def test_analyze_of_the_evidence_gives_the_same_tables(clean, tmp_path):
    import inspector

    result, tables, _, _ = clean
    inspector.analyze([result.evidence_path]).write(tmp_path)
    for name in TABLES:
        again = pd.read_csv(tmp_path / f"{name}.csv", keep_default_na=False)
        pd.testing.assert_frame_equal(tables[name], again, obj=name)


def _received(tables, kind: str) -> pd.DataFrame:
    media = tables["media"]
    return media[(media["direction"] == "received") & (media["media_kind"] == kind)]


@pytest.mark.netns
def test_relay_loss_and_delay_variation_move_the_reported_loss_and_jitter(clean, impaired):
    result, tables, _, _ = impaired
    call = _the_call(tables)
    assert call["service"] == "webrtc"
    # The relay drops ~5 % of B's media before it reaches A: gaps in the streams A receives.
    # (A's own packets are captured before the relay, so its sent streams show no gaps.)
    received = tables["media"][tables["media"]["direction"] == "received"]
    lost, packets = int(received["lost_packets"].sum()), int(received["packets"].sum())
    observed = lost / (lost + packets)
    assert LOSS * 0.5 <= observed <= LOSS * 1.7, received
    assert (tables["media"][tables["media"]["direction"] == "sent"]["lost_packets"] == 0).all()
    # Delay varying by +-20 ms per datagram: the RFC 3550 interarrival jitter of the audio A
    # receives grows well above the clean link's (a few ms).
    clean_jitter = _received(clean[1], "audio")["jitter_ms"].max()
    impaired_jitter = _received(tables, "audio")["jitter_ms"].max()
    assert impaired_jitter > max(5.0, clean_jitter + 4.0), (clean_jitter, impaired_jitter)
    # The telemetry request still lands inside the call.
    destinations = tables["destinations"]
    tele = destinations[destinations["destination"] == result.telemetry_name]
    assert list(tele["session_id"]) == [call["session_id"]]
