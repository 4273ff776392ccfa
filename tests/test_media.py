"""Media streams (inspector/media.py): loss from sequence gaps, RFC 3550 jitter, kinds, directions."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inspector.media import (
    REPAIR_MAX_COVERAGE,
    REPAIR_MIN_SHARED_TIMESTAMPS,
    _repair_streams,
    _window_segments,
    estimated_clock_rate,
    median_at_least,
    pattern_kind,
    stream_kind,
)
from inspector.schema import MEDIA_COLUMNS
from inspector.sessions import build_calls
from tests.test_sessions import (
    SECOND,
    T0,
    activity_frame,
    assert_schema,
    buckets,
    flows_frame,
    rtp_frame,
)

MS = 1_000_000


def stream(flow_id, ssrc, seqs, arrival_ms, rtp_ts, *, pt=0, from_client=True, rtp_len=120, marker=False,
           zoom_type=-1, capture="a.pcap"):  # fmt: skip
    """RTP rows of one stream; ``rtp_len``/``marker`` may be scalars or per-packet lists."""
    n = len(seqs)
    lens = rtp_len if isinstance(rtp_len, list) else [rtp_len] * n
    markers = marker if isinstance(marker, list) else [marker] * n
    return [
        {
            "capture": capture,
            "flow_id": flow_id,
            "from_client": from_client,
            "ts_ns": T0 + SECOND + int(arrival_ms[i] * MS),  # the call window starts at T0 + 10 ms
            "ssrc": ssrc,
            "seq": seqs[i],
            "rtp_ts": rtp_ts[i] % (1 << 32),
            "payload_type": pt,
            "marker": markers[i],
            "rtp_len": lens[i],
            "ip_bytes": lens[i] + 28,
            "zoom_type": zoom_type,
        }
        for i in range(n)
    ]


def media_of(rtp_rows, flow_rows=({"flow_id": 1},), activity=None, rtcp=None):
    activity = activity if activity is not None else buckets(1, 0, 10)
    tables = build_calls(flows_frame(list(flow_rows)), activity_frame(activity), rtp_frame(rtp_rows), rtcp)
    return tables


def video_frames(frames, per_frame=3, fps=30):
    """seqs, arrival_ms, rtp_ts of a 90 kHz video stream: ``per_frame`` packets per frame, 2 ms apart."""
    seqs, arrival, ts = [], [], []
    for f in range(frames):
        for k in range(per_frame):
            seqs.append(len(seqs))
            arrival.append(f * 1000 / fps + 2 * k)
            ts.append(f * 90000 // fps)
    return seqs, arrival, ts


def regular(n, step_ms=20.0, ts_step=160, first_seq=0, first_ts=1000):
    seqs = [(first_seq + i) % 65536 for i in range(n)]
    return seqs, [i * step_ms for i in range(n)], [first_ts + i * ts_step for i in range(n)]


# -- loss, duplicates, reordering, jitter -------------------------------------------------------


def test_loss_across_sequence_wrap():
    seqs = [65530, 65531, 65532, 65534, 65535, 0, 1, 3, 4, 5]  # 65533 and 2 missing
    arrival = [i * 20 for i in range(10)]
    ts = [i * 160 for i in range(10)]
    media = media_of(stream(1, 0xAABB, seqs, arrival, ts)).media
    assert len(media) == 1
    row = media.iloc[0]
    assert row["packets"] == 10
    assert row["lost_packets"] == 2
    assert row["loss_rate"] == pytest.approx(2 / 12)
    assert row["direction"] == "sent"
    assert row["ssrc"] == 0xAABB
    assert row["session_id"] == "s1"


def test_reordering_and_duplicates_are_not_loss():
    seqs = [10, 11, 13, 12, 14, 14, 15]
    arrival = [i * 20 for i in range(7)]
    ts = [s * 160 for s in seqs]
    row = media_of(stream(1, 7, seqs, arrival, ts)).media.iloc[0]
    assert row["packets"] == 7
    assert row["lost_packets"] == 0
    assert row["loss_rate"] == 0.0


def test_jitter_hand_computed_rfc3550():
    # PCMU (PT 0, 8 kHz, RFC 3551): 160 timestamp units every 20 ms. Arrivals 0, 20, 45, 60, 80 ms:
    # D = 0, then |200 - 160| = 40, then |120 - 160| = 40, then |160 - 160| = 0 units.
    # J = 0; 0 + (40 - 0)/16 = 2.5; 2.5 + (40 - 2.5)/16 = 4.84375; 4.84375 + (0 - 4.84375)/16
    # = 4.541015625 units = 0.567626953125 ms at 8000 units/s.
    row = media_of(stream(1, 1, [1, 2, 3, 4, 5], [0, 20, 45, 60, 80], [0, 160, 320, 480, 640])).media.iloc[0]
    assert row["jitter_ms"] == pytest.approx(0.567626953125)
    assert row["media_kind"] == "audio"
    assert row["payload_type"] == 0


def test_jitter_uses_the_clock_rate_the_stream_shows_for_dynamic_pt():
    # Opus-like PT 111 at 48 kHz (960 units per 20 ms) over 2 s, every 10th packet 8 ms late.
    n = 101
    seqs, arrival, ts = regular(n, ts_step=960)
    arrival = [a + (8 if i % 10 == 5 else 0) for i, a in enumerate(arrival)]
    assert estimated_clock_rate(np.array(ts), np.array(arrival) * MS) == 48000
    assert estimated_clock_rate(np.array(ts[:5]), np.array(arrival[:5]) * MS) is None  # too short
    row = media_of(stream(1, 1, seqs, arrival, ts, pt=111)).media.iloc[0]
    # Reference value: the RFC 3550 recursion run packet by packet at 48 kHz.
    jitter = 0.0
    for i in range(1, n):
        d = (arrival[i] - arrival[i - 1]) * 48 - (ts[i] - ts[i - 1])
        jitter += (abs(d) - jitter) / 16
    assert row["jitter_ms"] == pytest.approx(jitter / 48)
    assert row["jitter_ms"] > 0


def test_bytes_duration_and_bitrate():
    seqs, arrival, ts = regular(51)  # 1.0 s
    row = media_of(stream(1, 1, seqs, arrival, ts, rtp_len=172)).media.iloc[0]
    assert row["bytes"] == 51 * 200
    assert row["duration_s"] == pytest.approx(1.0)
    assert row["bitrate_kbps"] == pytest.approx(51 * 200 * 8 / 1000)


# -- direction, windows -------------------------------------------------------------------------


def test_direction_and_ssrc_split():
    seqs, arrival, ts = regular(10)
    rows = stream(1, 100, seqs, arrival, ts) + stream(1, 200, seqs, arrival, ts, from_client=False)
    media = media_of(rows).media
    assert list(zip(media["direction"], media["ssrc"])) == [("received", 200), ("sent", 100)]


def test_swapped_flow_turns_directions_round():
    dns = {"flow_id": 9, "server_ip": "10.0.0.1", "server_port": 53, "app_protocol": "dns", "service": "",
           "kind": "", "role": ""}  # fmt: skip
    peer_started = {"flow_id": 1, "client_ip": "10.0.0.7", "server_ip": "10.0.0.2", "service": "webrtc",
                    "app_protocol": "rtp"}  # fmt: skip
    seqs, arrival, ts = regular(10)
    media = media_of(stream(1, 5, seqs, arrival, ts, from_client=True), [dns, peer_started]).media
    assert list(media["direction"]) == ["received"]


def test_packets_outside_the_window_or_not_media_are_ignored():
    seqs, arrival, ts = regular(10)
    inside = stream(1, 5, seqs, arrival, ts)
    # 81 s: after the call (ends 10.09 s) and after a silence longer than the 60 s call gap, as
    # every packet outside a window is (sessions rule 3; media_stats.RunningStreams segments).
    late = stream(1, 5, [10, 11], [80_000, 80_020], [1600, 1760])
    not_media = stream(2, 6, seqs, arrival, ts)
    flows = [{"flow_id": 1}, {"flow_id": 2, "transport": "tcp", "app_protocol": "tls", "role": "signalling"}]
    media = media_of(inside + late + not_media, flows).media
    assert list(media["ssrc"]) == [5]
    assert media.iloc[0]["packets"] == 10


def test_flow_in_two_calls_splits_its_streams():
    activity = buckets(1, 0, 10) + buckets(1, 100, 110)
    seqs, arrival, ts = regular(20)
    first = stream(1, 5, seqs[:10], arrival[:10], ts[:10])
    second = stream(1, 5, seqs[10:], [100_000 + a for a in arrival[10:]], ts[10:])
    media = media_of(first + second, activity=activity).media
    assert list(media["session_id"]) == ["s1", "s2"]
    assert list(media["packets"]) == [10, 10]
    assert list(media["lost_packets"]) == [0, 0]


# -- media kinds ---------------------------------------------------------------------------------


def test_zoom_inner_type_decides_kind_and_counts_streams():
    seqs, arrival, ts = regular(20)
    rows = (
        stream(1, 1, seqs, arrival, ts, pt=112, zoom_type=15)
        + stream(1, 2, seqs, arrival, ts, pt=98, zoom_type=16, rtp_len=1000)
        + stream(1, 3, seqs, arrival, ts, pt=99, zoom_type=13, rtp_len=1000, from_client=False)
        + stream(1, 4, seqs, [a + 1 for a in arrival], [t + 7 for t in ts], pt=110, zoom_type=16)  # FEC
    )
    tables = media_of(rows)
    kinds = dict(zip(tables.media["ssrc"], tables.media["media_kind"]))
    assert kinds == {1: "audio", 2: "video", 3: "screen", 4: ""}
    session = tables.sessions.iloc[0]
    assert (session["audio_streams"], session["video_streams"], session["screen_streams"]) == (1, 1, 1)


def test_dynamic_pts_by_pattern_not_by_number():
    # aiortc-like: PT 96 Opus (small, one packet per timestamp), PT 97 VP8 (frames of 3 packets,
    # marker on the last). The numbers alone would say nothing.
    seqs, arrival, ts = regular(60, ts_step=960)
    audio = stream(1, 11, seqs, arrival, ts, pt=96, rtp_len=90)
    vseqs, varrival, vts = video_frames(20)
    video = stream(1, 22, vseqs, varrival, vts, pt=97, rtp_len=[1100, 1100, 500] * 20,
                   marker=[False, False, True] * 20)  # fmt: skip
    tables = media_of(audio + video)
    kinds = dict(zip(tables.media["ssrc"], tables.media["media_kind"]))
    assert kinds == {11: "audio", 22: "video"}
    assert dict(zip(tables.media["ssrc"], tables.media["payload_type"])) == {11: 96, 22: 97}


def test_pattern_kind_rules():
    one_per_ts = np.arange(50)
    assert pattern_kind(np.full(50, 100), one_per_ts, np.zeros(50, bool)) == "audio"
    assert pattern_kind(np.full(50, 350), one_per_ts, np.ones(50, bool)) == "video"  # a frame per packet
    assert pattern_kind(np.full(50, 250), one_per_ts, np.ones(50, bool)) == ""  # small and all marked
    assert pattern_kind(np.full(50, 900), one_per_ts, np.zeros(50, bool)) == "video"
    assert pattern_kind(np.full(50, 350), one_per_ts, np.zeros(50, bool)) == ""
    assert pattern_kind(np.full(50, 200), np.arange(50) // 2, np.zeros(50, bool)) == "video"
    assert pattern_kind(np.zeros(0), np.zeros(0), np.zeros(0, bool)) == ""
    assert stream_kind(8, -1, False, "video") == "audio"  # PCMA, static
    assert stream_kind(26, -1, True, "") == "video"  # JPEG, static
    assert stream_kind(100, -1, True, "video") == ""  # repair stream


def test_rtx_stream_sharing_timestamps_is_kept_but_not_video():
    seqs, arrival, frame_ts = video_frames(20)
    video = stream(1, 22, seqs, arrival, frame_ts, pt=97, rtp_len=1100)
    picks = [4, 17, 31, 32, 50]  # retransmissions carry the original timestamps (RFC 4588 §4)
    rtx = stream(1, 23, [500 + i for i in range(5)], [arrival[i] + 50 for i in picks],
                 [frame_ts[i] for i in picks], pt=98, rtp_len=1102)  # fmt: skip
    tables = media_of(video + rtx)
    kinds = dict(zip(tables.media["ssrc"], tables.media["media_kind"]))
    assert kinds == {22: "video", 23: ""}
    assert tables.sessions.iloc[0]["video_streams"] == 1


def test_repair_and_simulcast_are_told_apart_beyond_the_timestamp_sketch():
    # 9 s of 30 fps video (270 frames): more distinct timestamps than media_stats.TIMESTAMP_SKETCH
    # holds, so the shares come from the bottom-k samples, not the whole sets.
    seqs, arrival, frame_ts = video_frames(270)
    n = len(seqs)
    video = stream(1, 22, seqs, arrival, frame_ts, pt=97, rtp_len=1100)
    picks = list(range(7, n, 3 * 9))  # one retransmission every 9 frames (~11% of frames)
    rtx = stream(1, 23, [500 + i for i in range(len(picks))], [arrival[i] + 50 for i in picks],
                 [frame_ts[i] for i in picks], pt=98, rtp_len=1102)  # fmt: skip
    low_picks = list(range(0, n, 3))
    low = stream(1, 24, list(range(len(low_picks))), [arrival[i] + 1 for i in low_picks],
                 [frame_ts[i] for i in low_picks], pt=97, rtp_len=600, marker=True)  # fmt: skip
    tables = media_of(video + rtx + low)
    assert dict(zip(tables.media["ssrc"], tables.media["media_kind"])) == {22: "video", 23: "", 24: "video"}


# -- RTCP -----------------------------------------------------------------------------------------


def receiver_report(reporter_ssrc: int, about_ssrc: int, cumulative_lost: int) -> bytes:
    header = struct.pack("!BBH", 0x81, 201, 7)  # V=2, RC=1, RR, 8 words
    block = struct.pack("!IIIIII", about_ssrc, (10 << 24) | cumulative_lost, 1000, 5, 0, 0)
    return header + struct.pack("!I", reporter_ssrc) + block


def test_remote_receiver_report_gives_loss_of_sent_stream():
    seqs, arrival, ts = regular(50)
    rows = stream(1, 0x1234, seqs, arrival, ts)
    rtcp = pd.DataFrame(
        {
            "capture": ["a.pcap", "a.pcap", "a.pcap"],
            "flow_id": [1, 1, 1],
            "from_client": [False, False, True],
            "ts_ns": [T0 + 2 * SECOND, T0 + 3 * SECOND, T0 + 3 * SECOND],
            "payload": [
                receiver_report(9, 0x1234, 2),
                receiver_report(9, 0x1234, 4),
                receiver_report(0x1234, 0x1234, 40),  # our own report: not about what the peer got
            ],
        }
    )
    row = media_of(rows, rtcp=rtcp).media.iloc[0]
    assert row["lost_packets"] == 4
    assert row["loss_rate"] == pytest.approx(4 / 50)
    # without RTCP the sequence numbers show no loss
    assert media_of(rows).media.iloc[0]["lost_packets"] == 0


def test_srtcp_report_blocks_are_ignored():
    seqs, arrival, ts = regular(50)
    rtcp = pd.DataFrame(
        {
            "capture": ["a.pcap"],
            "flow_id": [1],
            "from_client": [False],
            "ts_ns": [T0 + 2 * SECOND],
            "payload": [receiver_report(9, 0x1234, 4) + b"\x80\x00\x00\x01" + b"\x00" * 10],  # SRTCP trailer
        }
    )
    assert media_of(stream(1, 0x1234, seqs, arrival, ts), rtcp=rtcp).media.iloc[0]["lost_packets"] == 0


def test_media_schema():
    seqs, arrival, ts = regular(10)
    assert_schema(media_of(stream(1, 1, seqs, arrival, ts)).media, MEDIA_COLUMNS)
    assert_schema(media_of([]).media, MEDIA_COLUMNS)


def test_simulcast_layer_sharing_every_timestamp_stays_video():
    seqs, arrival, frame_ts = video_frames(60)  # 2 s
    n = len(seqs)
    high = stream(1, 22, seqs, arrival, frame_ts, pt=97, rtp_len=1100)
    low_picks = list(range(0, n, 3))  # one packet per frame: every frame of the high layer
    low = stream(1, 24, list(range(len(low_picks))), [arrival[i] + 1 for i in low_picks],
                 [frame_ts[i] for i in low_picks], pt=97, rtp_len=600, marker=True)  # fmt: skip
    tables = media_of(high + low)
    assert dict(zip(tables.media["ssrc"], tables.media["media_kind"])) == {22: "video", 24: "video"}
    assert tables.sessions.iloc[0]["video_streams"] == 2


def test_non_rtp_noise_does_not_make_streams():
    rng = np.random.default_rng(7)
    noise = [
        {"capture": "a.pcap", "flow_id": 1, "from_client": True, "ts_ns": T0 + SECOND + i * 20 * MS,
         "ssrc": int(rng.integers(0, 1 << 32)), "seq": int(rng.integers(0, 1 << 16)),
         "rtp_ts": int(rng.integers(0, 1 << 32)), "payload_type": int(rng.integers(0, 128))}
        for i in range(200)
    ]  # fmt: skip
    seqs, arrival, ts = regular(5)
    tables = media_of(noise + stream(1, 42, seqs, arrival, ts))
    assert list(tables.media["ssrc"]) == [42]
    assert len(media_of(noise + stream(1, 42, seqs[:4], arrival[:4], ts[:4])).media) == 0


def test_audio_with_marker_on_every_packet_reads_audio_by_its_clock():
    # whatsapp_login_call.pcap (2015): PT 120, one packet per 160 ms, 2560 units each (16 kHz),
    # the marker bit set on every packet.
    seqs, arrival, ts = regular(43, step_ms=160, ts_step=2560)
    assert estimated_clock_rate(np.array(ts), np.array(arrival) * MS) == 16000
    row = media_of(stream(1, 9, seqs, arrival, ts, pt=120, rtp_len=221, marker=True)).media.iloc[0]
    assert row["media_kind"] == "audio"
    # one small packet per frame at 90 kHz with the marker set: video
    vseqs, varrival, vts = video_frames(45, per_frame=1, fps=15)
    row = media_of(stream(1, 9, vseqs, varrival, vts, pt=120, rtp_len=221, marker=True)).media.iloc[0]
    assert row["media_kind"] == "video"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 1500), min_size=1, max_size=40), st.sampled_from([300, 400]))
def test_median_threshold_from_running_values_is_exact(sizes, threshold):
    values = np.asarray(sizes)
    above = values[values >= threshold]
    below = values[values < threshold]
    got = median_at_least(
        values.size, int(above.size), int(below.max()) if below.size else -1,
        int(above.min()) if above.size else np.iinfo(np.int64).max, threshold,
    )  # fmt: skip
    assert got == (float(np.median(values)) >= threshold)


_CAPTURES = ["a.pcap", "b.pcap", "ü 1.pcapng"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(_CAPTURES), st.integers(0, 4), st.integers(0, 100), st.integers(0, 50)), max_size=30),
    st.lists(st.tuples(st.sampled_from(_CAPTURES), st.integers(0, 5), st.integers(0, 120), st.integers(0, 60)), max_size=20),
)
def test_window_segments_join_equals_a_per_call_scan(segment_rows, member_rows):
    # The join on (capture, flow_id) against its definition: per membership row, in order, the
    # segments of its flow overlapping its window, in segment row order.
    segments = pd.DataFrame(
        [(c, f, first, first + span) for c, f, first, span in segment_rows],
        columns=["capture", "flow_id", "first_ns", "last_ns"],
    )
    membership = pd.DataFrame(
        [(c, f, start, start + span) for c, f, start, span in member_rows],
        columns=["capture", "flow_id", "start_ns", "end_ns"],
    )
    expected_rows, expected_members = [], []
    for m, (capture, flow_id, start, end) in enumerate(membership.itertuples(index=False)):
        for row, (s_capture, s_flow, first, last) in enumerate(segments.itertuples(index=False)):
            if (s_capture, s_flow) == (capture, flow_id) and first <= end and last >= start:
                expected_rows.append(row)
                expected_members.append(m)
    rows, members = _window_segments(segments, membership)
    assert rows.tolist() == expected_rows
    assert members.tolist() == expected_members
    assert rows.dtype == members.dtype == np.int64


def _sorted_sketch(values, limit):
    kept = sorted({v for v in values if v <= limit})
    return np.asarray(kept, dtype=np.int64), limit


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_repair_streams_count_shared_timestamps_below_both_limits(data):
    # Against a set-based count: a stream is repair when some larger stream of its flow and
    # direction holds at least half of its timestamps below the lower limit, yet it covers under
    # 30% of that stream's.
    n = data.draw(st.integers(1, 5))
    base = data.draw(st.lists(st.integers(0, 200), max_size=60))
    keys, packets, sketches = [], [], []
    for i in range(n):
        own = [v for v in base if data.draw(st.booleans())] + data.draw(st.lists(st.integers(0, 200), max_size=30))
        limit = data.draw(st.sampled_from([1 << 32, max(own, default=0), 120]))
        sketches.append(_sorted_sketch(own, limit))
        keys.append(("s1", "a.pcap", 7, data.draw(st.sampled_from(["sent", "received"])), i, False))
        packets.append(data.draw(st.integers(5, 100)))
    asked = []

    def sketch_of(index):
        asked.append(index)
        return sketches[index]

    expected = set()
    for i in range(n):
        for j in range(n):
            if i == j or keys[i][:4] != keys[j][:4] or packets[j] <= packets[i]:
                continue
            limit = min(sketches[i][1], sketches[j][1])
            mine = {int(v) for v in sketches[i][0] if v <= limit}
            theirs = {int(v) for v in sketches[j][0] if v <= limit}
            if mine and theirs:
                common = len(mine & theirs)
                if common / len(mine) >= REPAIR_MIN_SHARED_TIMESTAMPS and common / len(theirs) < REPAIR_MAX_COVERAGE:
                    expected.add(i)
    assert _repair_streams(keys, packets, sketch_of) == expected
    # Only streams sharing a flow and direction with another are sketched, each once.
    alone = {i for i in range(n) if sum(k[:4] == keys[i][:4] for k in keys) == 1}
    assert sorted(asked) == sorted(set(range(n)) - alone)
