"""The call stage's running RTP state (inspector/media_stats.RunningStreams, fed by
inspector/collect.RtpCollector): independent of batching, equal to the per-stream reference
statistics, and bounded whatever the stream's length."""

from __future__ import annotations

import numpy as np
import pytest

from inspector.media_stats import (
    CANDIDATE_CLOCK_RATES,
    JITTER_CHUNK,
    SEQUENCE_WINDOW,
    RunningReports,
    RunningStreams,
    rtp_stream_stats,
)

MS = 1_000_000
SECOND = 1_000_000_000
GAP_NS = 60 * SECOND
T0 = 1_700_000_000 * SECOND
COLUMNS = ("flow_id", "from_client", "ts_ns", "ssrc", "seq", "rtp_ts", "payload_type", "marker", "rtp_len",
           "ip_bytes", "zoom_type")  # fmt: skip


def one_stream(n: int, *, flow_id=1, from_client=True, ssrc=7, first_seq=65000, step_ms=20, ts_step=160,
               pt=0, seed=0, silence_at=None) -> dict[str, np.ndarray]:  # fmt: skip
    """Rows of one audio-like stream with jittered arrivals, a few losses, swaps and duplicates,
    a sequence wrap, and (``silence_at``) a 90 s silence that starts a second segment."""
    rng = np.random.default_rng(seed)
    seq = (first_seq + np.arange(n)) % 65536
    ts = (1000 + np.arange(n) * ts_step) % (1 << 32)
    arrival = T0 + np.arange(n) * step_ms * MS + rng.integers(0, 5 * MS, n)
    if silence_at is not None:
        arrival[silence_at:] += 90 * SECOND
    keep = rng.random(n) > 0.02  # 2% loss
    order = list(np.flatnonzero(keep))
    for i in range(1, len(order) - 1):  # reordering: 3% swapped with the next packet
        if rng.random() < 0.03:
            order[i], order[i + 1] = order[i + 1], order[i]
    with_copies = []
    for packet in order:  # 1% sent twice in a row
        with_copies += [packet, packet] if rng.random() < 0.01 else [packet]
    order = np.asarray(with_copies)
    size = np.where(rng.random(n) < 0.5, 120, 420)
    return {
        "flow_id": np.full(order.size, flow_id),
        "from_client": np.full(order.size, from_client),
        "ts_ns": np.sort(arrival[order]),  # capture order is arrival order
        "ssrc": np.full(order.size, ssrc),
        "seq": seq[order],
        "rtp_ts": ts[order],
        "payload_type": np.full(order.size, pt),
        "marker": (np.arange(order.size) % 9) == 0,
        "rtp_len": size[order],
        "ip_bytes": size[order] + 28,
        "zoom_type": np.full(order.size, -1),
    }


def mixed_rows() -> dict[str, np.ndarray]:
    """Three streams interleaved in arrival order, one with a long silence."""
    parts = [
        one_stream(400, seed=1, silence_at=250),
        one_stream(300, ssrc=8, from_client=False, first_seq=10, seed=2, pt=111, ts_step=960),
        one_stream(200, flow_id=2, ssrc=9, seed=3, step_ms=10, ts_step=3000, pt=96),
    ]
    rows = {name: np.concatenate([p[name] for p in parts]) for name in COLUMNS}
    order = np.argsort(rows["ts_ns"], kind="stable")
    return {name: values[order] for name, values in rows.items()}


def fold(rows: dict[str, np.ndarray], batch: int) -> RunningStreams:
    streams = RunningStreams(GAP_NS)
    n = rows["ts_ns"].size
    for lo in range(0, n, batch):
        streams.add(*(rows[name][lo : lo + batch] for name in COLUMNS))
    return streams


def canonical(segments: dict) -> dict:
    """Segments in (flow, side, SSRC, FEC, first arrival) order: slots are numbered as
    segments appear, which depends on how rows are batched."""
    order = np.lexsort(tuple(segments[k] for k in ("first_ns", "zoom_fec", "ssrc", "from_client", "flow_id")))
    out = {}
    for name, values in segments.items():
        if isinstance(values, list):
            out[name] = [values[int(i)] for i in order]
        else:
            out[name] = values[order]
    return out


@pytest.mark.parametrize("batch", [1, 7])
def test_batches_of_any_size_give_the_same_segments(batch):
    rows = mixed_rows()
    whole = canonical(fold(rows, rows["ts_ns"].size).segments())
    split = canonical(fold(rows, batch).segments())
    assert whole["packets"].size == 4  # the silent stream has two segments
    for name, values in whole.items():
        if name == "stream":
            continue  # a slot number, in order of appearance
        if isinstance(values, list):
            assert split[name] == values, name
        else:
            np.testing.assert_array_equal(split[name], values, err_msg=name)


def test_segment_stats_match_the_reference_over_the_stream():
    rows = one_stream(3000, seed=5)
    segments = fold(rows, 1000).segments()
    assert segments["packets"].size == 1
    ref = rtp_stream_stats(rows["seq"], rows["rtp_ts"], rows["ts_ns"], 8000)
    assert ref.reordered > 0 and ref.duplicates > 0 and ref.lost_packets > 0  # the data has them all
    assert segments["packets"][0] == ref.packets
    assert segments["seq_high"][0] - segments["seq_low"][0] + 1 == ref.expected
    assert ref.expected - segments["seq_distinct"][0] == ref.lost_packets
    assert segments["reordered"][0] == ref.reordered
    # Folded in chunks of JITTER_CHUNK steps: the same closed form, summed in another order.
    jitter_ms = segments["jitter"][0][CANDIDATE_CLOCK_RATES.index(8000)] * 1000 / 8000
    assert jitter_ms == pytest.approx(ref.jitter_ms, rel=1e-12)
    assert segments["ip_bytes"][0] == rows["ip_bytes"].sum()
    assert segments["marker_packets"][0] == rows["marker"].sum()


@pytest.mark.parametrize("batch", [1, 7, 10_000])
def test_a_segment_within_one_chunk_gives_the_reference_jitter_bit_for_bit(batch):
    rows = one_stream(500, seed=6)
    segments = fold(rows, batch).segments()
    ref = rtp_stream_stats(rows["seq"], rows["rtp_ts"], rows["ts_ns"], 8000)
    assert segments["jitter"][0][CANDIDATE_CLOCK_RATES.index(8000)] * 1000.0 / 8000 == ref.jitter_ms


def recursive_jitter(rows: dict[str, np.ndarray], rate: int) -> float:
    """RFC 3550 §6.4.1 as written: J += (|D| - J) / 16, packet by packet."""
    jitter = 0.0
    for i in range(1, rows["ts_ns"].size):
        ts_step = (int(rows["rtp_ts"][i]) - int(rows["rtp_ts"][i - 1]) + (1 << 31)) % (1 << 32) - (1 << 31)
        arrival_step = (int(rows["ts_ns"][i]) - int(rows["ts_ns"][i - 1])) * rate / 1e9
        jitter += (abs(arrival_step - ts_step) - jitter) / 16
    return jitter


@pytest.mark.parametrize("batch", [1, 500, 1_000_000])
def test_a_segment_of_several_chunks_folds_them_in_order_however_it_closes(batch):
    # A stream of 2.6 chunks, then 90 s later another stream's packet: read as one batch, the
    # first segment closes with three chunks to fold at once (two full, then the rest); read a
    # packet at a time, each full chunk folds as it fills and the rest when the stream goes idle.
    long = one_stream(int(JITTER_CHUNK * 2.6), seed=7)
    later = one_stream(1, flow_id=3, seed=8)
    later["ts_ns"] = long["ts_ns"][-1:] + 90 * SECOND
    rows = {name: np.concatenate([long[name], later[name]]) for name in COLUMNS}
    streams = fold(rows, batch)
    if batch > rows["ts_ns"].size:
        # Folded when the batch closed the segment, before the end of the run.
        assert streams._pending[0].size == 1
    segments = canonical(streams.segments())
    whole = canonical(fold(rows, 1).segments())
    np.testing.assert_array_equal(segments["jitter"], whole["jitter"])  # the same float operations
    rate = CANDIDATE_CLOCK_RATES.index(8000)
    assert segments["jitter"][0][rate] == pytest.approx(recursive_jitter(long, 8000), rel=1e-12)


@pytest.mark.parametrize("batch", [1, 13, 1000, 1_000_000])
def test_every_segment_s_jitter_is_rfc_3550_s_recursion_however_batched(batch):
    # Three interleaved streams of 0.7-3 chunks, two of them with a silence that starts a new
    # segment: each segment's jitter at every candidate clock rate is the recursion over its
    # own packets, whichever batches fold its chunks and whenever it closes.
    parts = [
        one_stream(3000, seed=11, silence_at=1500),
        one_stream(2200, ssrc=8, from_client=False, first_seq=10, seed=12, pt=111, ts_step=960),
        one_stream(700, flow_id=2, ssrc=9, seed=13, step_ms=10, ts_step=3000, pt=96, silence_at=100),
    ]
    expected = []
    for part in parts:
        cuts = np.flatnonzero(np.diff(part["ts_ns"]) > GAP_NS) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), part["ts_ns"].size]):
            segment = {name: values[lo:hi] for name, values in part.items()}
            key = (int(part["flow_id"][0]), bool(part["from_client"][0]), int(part["ssrc"][0]), int(segment["ts_ns"][0]))
            expected.append((key, [recursive_jitter(segment, rate) for rate in CANDIDATE_CLOCK_RATES]))
    rows = {name: np.concatenate([p[name] for p in parts]) for name in COLUMNS}
    order = np.argsort(rows["ts_ns"], kind="stable")
    segments = canonical(fold({name: values[order] for name, values in rows.items()}, batch).segments())
    got = [((int(f), bool(c), int(s), int(t)), j.tolist()) for f, c, s, t, j in zip(
        segments["flow_id"], segments["from_client"], segments["ssrc"], segments["first_ns"], segments["jitter"])]  # fmt: skip
    assert [key for key, _ in got] == sorted(key for key, _ in expected)
    for (key, jitter), (_, want) in zip(got, sorted(expected)):
        assert jitter == pytest.approx(want, rel=1e-12), key


def test_a_silence_longer_than_the_gap_starts_a_segment():
    rows = one_stream(100, silence_at=60)
    segments = fold(rows, 33).segments()
    assert list(segments["packets"]) == [int((rows["ts_ns"] < rows["ts_ns"][0] + 80 * SECOND).sum()),
                                         int((rows["ts_ns"] >= rows["ts_ns"][0] + 80 * SECOND).sum())]  # fmt: skip
    assert segments["last_ns"][0] + 60 * SECOND < segments["first_ns"][1]


def test_state_does_not_grow_with_the_packets_of_a_long_stream():
    def state_after(n: int) -> int:
        streams = RunningStreams(GAP_NS)
        rows = one_stream(n, seed=7)
        for lo in range(0, rows["ts_ns"].size, 4096):
            streams.add(*(rows[name][lo : lo + 4096] for name in COLUMNS))
        return streams.state_bytes()

    small, large = state_after(10_000), state_after(100_000)
    # Only the set of sequence numbers still missing near the top varies (at most
    # SEQUENCE_WINDOW of them, 8 bytes each); the rest is fixed per stream and segment.
    assert abs(large - small) <= SEQUENCE_WINDOW * 8
    assert large < 64 * 1024 + SEQUENCE_WINDOW * 8


def test_reports_keep_the_largest_loss_per_segment():
    import struct

    def rr(about: int, lost: int) -> bytes:
        block = struct.pack("!IBBHIIII", about, 0, (lost >> 16) & 0xFF, lost & 0xFFFF, 0, 0, 0, 0)
        return struct.pack("!BBHI", 0x81, 201, 7, 0x1234) + block

    reports = RunningReports(GAP_NS)
    reports.add(3, False, T0, rr(9, 4))
    reports.add(3, False, T0 + SECOND, rr(9, 2))
    reports.add(3, False, T0 + 100 * SECOND, rr(9, 7))  # after a silence: its own segment
    reports.add(3, False, T0 + 101 * SECOND, rr(9, 1) + b"\0" * 14)  # SRTCP trailer: ignored
    assert reports.rows() == [(3, False, 9, T0, T0 + SECOND, 4), (3, False, 9, T0 + 100 * SECOND, T0 + 100 * SECOND, 7)]


def test_pruned_noise_keys_free_their_slots():
    """One-packet "streams" (random SSRCs of non-RTP payloads) are forgotten once a minute old."""
    streams = RunningStreams(GAP_NS)
    rng = np.random.default_rng(9)
    for second in range(0, 600, 10):  # ten minutes, 20 noise packets every 10 s
        n = 20
        rows = {
            "flow_id": np.full(n, 3), "from_client": np.ones(n, bool),
            "ts_ns": T0 + second * SECOND + np.arange(n) * MS, "ssrc": rng.integers(0, 1 << 32, n),
            "seq": rng.integers(0, 65536, n), "rtp_ts": rng.integers(0, 1 << 32, n),
            "payload_type": np.full(n, 96), "marker": np.zeros(n, bool), "rtp_len": np.full(n, 40),
            "ip_bytes": np.full(n, 68), "zoom_type": np.full(n, -1),
        }  # fmt: skip
        streams.add(*(rows[name] for name in COLUMNS))
    live = streams.segments()["packets"].size
    assert live <= 20 * 8  # the last ~70 s of noise, not all 1200 keys
    assert streams._segments <= 20 * 9  # slots were reused


@pytest.mark.parametrize("batch_size", [1, 7, 500])
def test_activity_buckets_split_across_batches_fold_to_the_same_frame(ndpi_dir, batch_size):
    """A (flow, 100 ms bucket) pair whose packets straddle a batch boundary is one row."""
    import pandas as pd

    from inspector.collect import ActivityCollector
    from inspector.pipeline import AnalyzeOptions, process_capture

    frames = []
    for size in (65536, batch_size):
        collector = ActivityCollector()
        process_capture(ndpi_dir / "zoom_p2p.pcapng", AnalyzeOptions(batch_size=size), None, None, (collector,))
        frames.append(collector.frame("zoom_p2p.pcapng"))
    whole, split = frames
    assert len(whole) > 100 and not whole.duplicated(["flow_id", "bucket_ns"]).any()
    pd.testing.assert_frame_equal(whole, split)


def test_activity_buckets_are_compact_and_round_trip_through_the_frame(ndpi_dir):
    """The collector keeps 40-byte rows; the frame form (tests, API) converts back unchanged."""
    from inspector.collect import BUCKET_DTYPE, ActivityCollector, buckets_frame, buckets_from_frame
    from inspector.pipeline import AnalyzeOptions, process_capture

    assert BUCKET_DTYPE.itemsize == 40
    collector = ActivityCollector()
    process_capture(ndpi_dir / "zoom_p2p.pcapng", AnalyzeOptions(batch_size=97), None, None, (collector,))
    buckets = collector.buckets("zoom_p2p.pcapng")
    assert len(buckets) > 100 and len(collector.buckets("x")) == 0  # handed over, emptied
    frame = buckets_frame(buckets)
    assert (frame["first_ns"] >= frame["bucket_ns"]).all()
    assert (frame["last_ns"] < frame["bucket_ns"] + 100_000_000).all()
    assert (frame["first_ns"] <= frame["last_ns"]).all()
    (again,) = buckets_from_frame(frame.sample(frac=1.0, random_state=7))  # any row order
    assert again.capture == "zoom_p2p.pcapng"
    assert again.sorted_rows().tobytes() == buckets.sorted_rows().tobytes()


def test_activity_partitions_are_sorted_once_and_read_alike_after(ndpi_dir):
    """The first pass stores each range sorted and folded in place of the rows appended; a
    later pass (the destinations') reads those, also from the spill file, and gets the same."""
    from inspector import collect
    from inspector.collect import ActivityBuckets
    from inspector.pipeline import AnalyzeOptions, process_capture
    from inspector.spill import PartitionedRecords

    collector = collect.ActivityCollector()
    process_capture(ndpi_dir / "zoom_p2p.pcapng", AnalyzeOptions(batch_size=97), None, None, (collector,))
    rows = collector.buckets("zoom_p2p.pcapng").sorted_rows()
    # A pair split over two batches: its second row (no packets, same times) folds away.
    echo = rows[:10].copy()
    for name in collect._COUNT_FIELDS:
        echo[name] = 0
    for limit in (1 << 30, 4096):  # held in memory; spilled to the file
        store = PartitionedRecords(collect.BUCKET_DTYPE, limit_bytes=limit)
        shuffled = np.concatenate([rows, echo])[np.random.default_rng(3).permutation(rows.shape[0] + 10)]
        for part in np.array_split(shuffled, 9):  # out of order, as batches append them
            store.append(0, part)
        buckets = ActivityBuckets("c", store)
        assert len(buckets) == rows.shape[0] + 10
        first = [p.copy() for p in buckets.partitions()]
        assert b"".join(p.tobytes() for p in first) == rows.tobytes()
        assert len(buckets) == rows.shape[0]  # the folded rows replaced the appended ones
        assert store.read(0).tobytes() == rows.tobytes()
        assert [p.tobytes() for p in buckets.partitions()] == [p.tobytes() for p in first]
        store.close()


def test_ranges_sorted_by_the_collector_hand_over_alike_also_when_rows_follow(ndpi_dir):
    """``sort_ranges`` (a parallel run's reader, while its workers finish) gives the buckets the
    call stage would read anyway; rows added after it are still sorted and folded in."""
    from inspector.collect import ActivityCollector
    from inspector.pipeline import AnalyzeOptions, process_capture

    path = ndpi_dir / "zoom_p2p.pcapng"

    def rows(times: int, sort_between: bool) -> bytes:
        collector = ActivityCollector(limit_bytes=4096)  # spilled as well as held
        for _ in range(times):  # twice: the same (flow, bucket) pairs again, to fold
            process_capture(path, AnalyzeOptions(batch_size=97), None, None, (collector,))
            if sort_between:
                collector.sort_ranges()
        return collector.buckets("c").sorted_rows().tobytes()

    assert rows(1, True) == rows(1, False)
    assert rows(2, True) == rows(2, False) != rows(1, False)


def test_call_stage_gives_the_same_tables_from_buckets_and_from_frames(ndpi_dir):
    import pandas as pd

    from inspector.api import _flows_frame, _labeller, _payload_stage, _signature_set
    from inspector.collect import ActivityCollector, RtpCollector, buckets_frame
    from inspector.pipeline import AnalyzeOptions, process_capture
    from inspector.sessions import build_calls

    options = AnalyzeOptions()
    activity, rtp = ActivityCollector(), RtpCollector()
    path = ndpi_dir / "zoom_p2p.pcapng"
    result = process_capture(
        path, options, None, _payload_stage(options), (activity, rtp), _labeller(_signature_set(options))
    )
    flows = _flows_frame(result)
    buckets = activity.buckets(path.name)
    segments, reports = rtp.frame(path.name), rtp.rtcp_frame(path.name)
    from_buckets = build_calls(flows, [buckets], segments, reports)
    from_frame = build_calls(flows, buckets_frame(buckets), segments, reports)
    assert len(from_buckets.sessions) >= 1
    for name in ("sessions", "destinations", "media", "flow_session"):
        pd.testing.assert_frame_equal(getattr(from_buckets, name), getattr(from_frame, name))


def test_only_the_zoom_rtp_types_give_an_rtp_offset():
    """The RTP collector reads a P2P payload further only when its first byte is one of
    ZOOM_RTP_TYPES; that is exact as long as every other inner type gets offset -1 whatever
    the bytes the layouts look at (byte 20 and byte 7)."""
    from inspector.collect import ZOOM_RTP_TYPES, _zoom_rtp_offset

    types = np.repeat(np.arange(256, dtype=np.int64), 256 * 2)
    byte20 = np.tile(np.repeat(np.arange(256, dtype=np.int64), 2), 256)
    byte7 = np.tile(np.array([0x1E, 0x00], dtype=np.int64), 256 * 256)
    offset = _zoom_rtp_offset(types, byte20, byte7)
    assert set(np.unique(types[offset >= 0]).tolist()) == set(ZOOM_RTP_TYPES)
