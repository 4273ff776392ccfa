"""RTP stream statistics: loss with gaps, wrap, reordering, duplicates; RFC 3550 jitter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inspector import media_stats
from inspector.dissect import rtp
from inspector.media_stats import (
    StreamStats,
    clock_rate_for,
    extended_sequence,
    interarrival_jitter,
    media_kind_for,
    rtp_stream_stats,
)

MS = 1_000_000  # ns


def stats(seq: list[int], clock: int = 8000, step_ms: int = 20) -> StreamStats:
    n = len(seq)
    ts = (np.asarray(seq, dtype=np.int64) * 160) % (1 << 32)
    arrivals = np.arange(n, dtype=np.int64) * step_ms * MS
    return rtp_stream_stats(np.asarray(seq, dtype=np.uint16), ts.astype(np.uint32), arrivals, clock)


def test_gaps() -> None:
    result = stats([1, 2, 3, 5, 6, 9])
    assert (result.packets, result.expected, result.lost_packets) == (6, 9, 3)
    assert result.loss_rate == pytest.approx(3 / 9)
    assert (result.duplicates, result.reordered) == (0, 0)


def test_wrap_at_65535() -> None:
    result = stats([65533, 65534, 65535, 0, 1, 3])
    assert extended_sequence(np.array([65533, 65534, 65535, 0, 1, 3], dtype=np.uint16)).tolist() == [
        65533, 65534, 65535, 65536, 65537, 65539,
    ]  # fmt: skip
    assert (result.expected, result.lost_packets) == (7, 1)


def test_reordering_is_not_loss() -> None:
    result = stats([1, 2, 4, 3, 5])
    assert (result.expected, result.lost_packets, result.reordered, result.duplicates) == (5, 0, 1, 0)


def test_reordering_across_the_wrap() -> None:
    result = stats([65535, 1, 0, 2])
    assert (result.expected, result.lost_packets, result.reordered) == (4, 0, 1)


def test_duplicates_never_make_loss_negative() -> None:
    result = stats([1, 2, 2, 3, 3, 3])
    assert (result.packets, result.expected, result.lost_packets, result.duplicates) == (6, 3, 0, 3)
    # RFC 3550 A.3 would compute expected - received = 3 - 6 = -3; distinct counting gives 0.


def test_late_duplicate_is_a_duplicate_not_a_reordering() -> None:
    result = stats([1, 2, 3, 2])
    assert (result.duplicates, result.reordered) == (1, 0)


def test_empty_and_single() -> None:
    assert stats([]) == StreamStats(0, 0, 0, 0.0, 0, 0, 0.0)
    assert stats([7]) == StreamStats(1, 1, 0, 0.0, 0, 0, 0.0)


def test_jitter_hand_computed_rfc3550_example() -> None:
    # 8 kHz audio, 160 timestamp units (20 ms) per packet. Arrivals at 0, 20, 45, 60 ms.
    # R in timestamp units = ms * 8: 0, 160, 360, 480. S: 0, 160, 320, 480.
    # D1 = (160-0) - (160-0) = 0      J1 = 0 + (0 - 0)/16         = 0
    # D2 = (360-160) - (320-160) = 40 J2 = 0 + (40 - 0)/16        = 2.5
    # D3 = (480-360) - (480-320) = -40, |D3| = 40
    #                                  J3 = 2.5 + (40 - 2.5)/16    = 4.84375 timestamp units
    # In ms: 4.84375 / 8000 * 1000 = 0.60546875 ms.
    seq = np.array([0, 1, 2, 3], dtype=np.uint16)
    ts = np.array([0, 160, 320, 480], dtype=np.uint32)
    arrivals = np.array([0, 20, 45, 60], dtype=np.int64) * MS
    assert interarrival_jitter(ts, arrivals, 8000) == pytest.approx(4.84375)
    assert rtp_stream_stats(seq, ts, arrivals, 8000).jitter_ms == pytest.approx(0.60546875)


def test_jitter_zero_for_perfect_pacing_across_timestamp_wrap() -> None:
    ts = np.array([(1 << 32) - 320, (1 << 32) - 160, 0, 160], dtype=np.uint32)
    arrivals = np.arange(4, dtype=np.int64) * 20 * MS
    assert interarrival_jitter(ts, arrivals, 8000) == pytest.approx(0.0, abs=1e-9)


def reference_jitter(ts: np.ndarray, arrivals: np.ndarray, clock: int) -> float:
    """RFC 3550 A.8 as a plain loop (float arithmetic), to check the closed form against."""
    jitter = 0.0
    for i in range(1, len(ts)):
        step = (int(ts[i]) - int(ts[i - 1]) + (1 << 31)) % (1 << 32) - (1 << 31)
        d = (int(arrivals[i]) - int(arrivals[i - 1])) * clock / 1e9 - step
        jitter += (abs(d) - jitter) / 16
    return jitter


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 80)), min_size=0, max_size=300))
def test_closed_form_matches_the_recursion(steps: list[tuple[int, int]]) -> None:
    ts = np.cumsum([0] + [960 * (1 + s % 3) for s, _ in steps]).astype(np.int64) % (1 << 32)
    arrivals = np.cumsum([0] + [MS * a for _, a in steps]).astype(np.int64)
    expected = reference_jitter(ts, arrivals, 48000)
    assert interarrival_jitter(ts.astype(np.uint32), arrivals, 48000) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 65535), st.integers(2, 400), st.data())
def test_loss_properties(start: int, count: int, data: st.DataObject) -> None:
    keep = data.draw(st.lists(st.booleans(), min_size=count, max_size=count))
    keep[0] = keep[-1] = True  # range endpoints received, so expected == count
    received = [(start + i) % 65536 for i in range(count) if keep[i]]
    shuffled = data.draw(st.permutations(received)) if count < 30 else received
    duplicated = shuffled + shuffled[: data.draw(st.integers(0, 3))]
    # A permutation may start mid-range; extension stays right while steps are < 32768.
    result = stats(duplicated)
    assert result.expected == count
    assert result.lost_packets == count - len(received)
    assert result.duplicates == len(duplicated) - len(received)
    assert result.lost_packets >= 0


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="same length"):
        rtp_stream_stats(np.array([1, 2], dtype=np.uint16), np.array([1], dtype=np.uint32), np.array([1, 2]), 8000)
    with pytest.raises(ValueError, match="positive"):
        rtp_stream_stats(np.array([1], dtype=np.uint16), np.array([1], dtype=np.uint32), np.array([1]), 0)


@pytest.mark.parametrize(
    ("payload_type", "kind", "rate"),
    [
        (0, "audio", 8000),  # PCMU
        (8, "audio", 8000),  # PCMA
        (9, "audio", 8000),  # G.722: 8000 by RFC 3551's historical choice
        (10, "audio", 44100),  # L16 stereo
        (14, "audio", 90000),  # MPA
        (34, "video", 90000),  # H.263
        (111, "audio", 48000),  # dynamic: Opus guess
        (96, "video", 90000),
        (100, "", 90000),
    ],
)
def test_clock_rate_for(payload_type: int, kind: str, rate: int) -> None:
    assert clock_rate_for(payload_type, kind) == rate


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [
        ({"payload_type": 98, "zoom_inner_type": 0x0D}, "screen"),
        ({"payload_type": 98, "zoom_inner_type": 0x1E}, "screen"),
        ({"payload_type": 98, "zoom_inner_type": 0x0F}, "audio"),
        ({"payload_type": 98, "zoom_inner_type": 0x10}, "video"),
        ({"payload_type": 0}, "audio"),
        ({"payload_type": 26}, "video"),
        ({"payload_type": 96, "mean_payload_bytes": 1000.0}, "video"),
        ({"payload_type": 96, "mean_payload_bytes": 90.0}, "audio"),
        ({"payload_type": 111}, "audio"),
        ({"payload_type": 127}, "video"),
        ({"payload_type": 100, "mean_payload_bytes": 350.0}, ""),
        ({}, ""),
    ],
)
def test_media_kind_for(kwargs: dict, kind: str) -> None:
    assert media_kind_for(**kwargs) == kind


def test_rtcp_parser_is_reexported() -> None:
    assert media_stats.parse_rtcp_compound is rtp.parse_rtcp_compound


def reference_loss(seqs: list[int]) -> tuple[int, int, int]:
    """RFC 3550 A.1-style bookkeeping as a plain loop: (expected, lost, duplicates)."""
    max_seq, cycles = seqs[0], 0
    extended = []
    for seq in seqs:
        delta = (seq - max_seq) % 65536
        if delta < 32768:  # in order (possibly with a gap); a numeric drop means a wrap
            if seq < max_seq:
                cycles += 65536
            max_seq = seq
            extended.append(cycles + seq)
        else:  # late packet; if it belongs before the last wrap it is from the previous cycle
            extended.append(cycles + seq - (65536 if seq > max_seq else 0))
    distinct = len(set(extended))
    expected = max(extended) - min(extended) + 1
    return expected, expected - distinct, len(seqs) - distinct


@pytest.mark.parametrize(
    ("capture", "flow"),
    [
        ("sip.pcap", ("udp", ("192.168.1.2", 30000), ("212.242.33.36", 40392))),
        ("KakaoTalk_talk.pcap", ("udp", ("10.24.82.188", 11320), ("1.201.1.174", 23044))),
        ("whatsapp_login_call.pcap", ("udp", ("192.168.2.4", 51518), ("91.253.176.65", 9344))),
    ],
)
def test_real_streams_match_the_reference_loop(ndpi_dir, capture: str, flow: tuple) -> None:
    from tests.dissect.test_detectors import capture_flows

    streams: dict[tuple, list[tuple[int, int, int]]] = {}
    for from_client, payload, ts_ns in capture_flows(ndpi_dir / capture)[flow]:
        header = rtp.parse_rtp(payload)
        if header is not None:
            streams.setdefault((from_client, header.ssrc), []).append((header.sequence, header.timestamp, ts_ns))
    checked = 0
    for packets in streams.values():
        if len(packets) < 5:
            continue
        seq, ts, arrivals = (np.array(column, dtype=np.int64) for column in zip(*packets))
        result = rtp_stream_stats(seq.astype(np.uint16), ts.astype(np.uint32), arrivals, 48000)
        assert (result.expected, result.lost_packets, result.duplicates) == reference_loss(seq.tolist())
        assert result.jitter_ms == pytest.approx(reference_jitter(ts, arrivals, 48000) * 1000 / 48000)
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("max_steps", [1, 700, 1500, 5000])
def test_the_jitter_fold_gives_the_same_bits_however_many_steps_go_at_once(max_steps) -> None:
    # Three segments' units as RunningStreams queues them: three chunks of the first (ranks 0-2,
    # the last a closed rest), one of the second, two of the third; each segment's rows in a run.
    rng = np.random.default_rng(4)
    units = [(0, 0, 1024), (0, 1, 1024), (0, 2, 300), (1, 0, 500), (2, 0, 1024), (2, 1, 10)]
    first_row = {0: 0, 1: 2349, 2: 2850}
    n = 3885
    arrival = np.cumsum(rng.integers(15 * MS, 25 * MS, n))
    stamp = np.cumsum(np.full(n, 160)) % (1 << 32)
    segment = np.array([u[0] for u in units], dtype=np.int64)
    rank = np.array([u[1] for u in units], dtype=np.int64)
    steps = np.array([u[2] for u in units], dtype=np.int64)
    start = np.array([first_row[s] + r * media_stats.JITTER_CHUNK for s, r, _ in units], dtype=np.int64)
    rates = len(media_stats.CANDIDATE_CLOCK_RATES)
    at_once = np.zeros((3, rates))
    media_stats._fold_jitter(at_once, arrival, stamp, segment, rank, start, steps)
    in_pieces = np.zeros((3, rates))
    media_stats._fold_jitter(in_pieces, arrival, stamp, segment, rank, start, steps, max_steps=max_steps)
    np.testing.assert_array_equal(in_pieces, at_once)
    # And the value is the closed form over each segment's steps (the second one, a single unit,
    # the reference's very bits).
    rate = media_stats.CANDIDATE_CLOCK_RATES.index(8000)
    lo, hi = first_row[1], first_row[1] + 501
    assert at_once[1, rate] == interarrival_jitter(stamp[lo:hi], arrival[lo:hi], 8000)
    lo, hi = first_row[0], first_row[0] + 2349
    assert at_once[0, rate] == pytest.approx(interarrival_jitter(stamp[lo:hi], arrival[lo:hi], 8000), rel=1e-12)
