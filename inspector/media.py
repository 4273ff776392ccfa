"""Media streams of each call (``media.csv``): one row per (flow, direction, SSRC).

(One exception: Zoom's FEC packets get a row of their own beside their SSRC's media, rule 1.)

Only RTP packets of a call's media flows that arrived inside the call's window count, and only
SSRCs seen in at least ``MIN_STREAM_PACKETS`` (5) of them. The header fields used here (SSRC,
sequence, timestamp, PT, marker) are clear text even under SRTP (RFC 3711 §3.1), and Zoom's
inner header is clear (facts §2.3).

**Media kind**, first rule that applies (``stream_kind``):

1. Zoom's inner media type byte (facts §2.3): 15 audio, 16 video, 13/30 screen share. Zoom's FEC
   (PT 110, zoom-analysis ``zoom.cc``) shares the media's SSRC but has its own sequence numbers
   (seen in zoom_p2p.pcapng: PT 98 seq 26654... and PT 110 seq 32178... under one SSRC), so Zoom
   packets with PT 110 form their own row (same SSRC, payload_type 110) with kind "", and do not
   count as loss or as a stream of the media's kind.
2. Static payload types (RFC 3551 Tables 4/5): 0-18 audio, 25-34 video.
3. Repair streams: a stream whose RTP timestamps are mostly those of a larger stream in the same
   flow and direction (at least half of its timestamps), yet covers few of that stream's frames
   (under 30%), is a retransmission stream (RFC 4588 §4: an RTX packet carries the original
   packet's timestamp) or FEC sharing the media timestamps; kind "", so it counts neither as audio
   nor video. The coverage bound keeps a lower simulcast layer, which may share the capturer's
   timestamps but carries every frame, as video. Weakness: heavy retransmission (over 30% of
   frames) makes the RTX stream read as a second video stream; the SDP that would map an RTX
   payload type to its "apt" is encrypted, so an RTX stream whose timestamps do not coincide
   with its media stream's stays unrecognised and goes through rule 4.
4. Packet pattern, for dynamic payload types (never a fixed dynamic PT: aiortc sends Opus as 96
   and VP8 as 97, others use 111/96):
   - several packets per RTP timestamp (>= 1.2 on average): video (a video frame is split over
     packets sharing one timestamp, the marker ends the frame: RFC 3550 §5.1, RFC 7741 §4.1);
   - the clock rate the stream shows (``estimated_clock_rate``, >= 10 packets over >= 1 s):
     90 kHz is video (every RTP video format), any audio sampling rate is audio. This catches
     audio that sets the marker on every packet (WhatsApp 2015 in whatsapp_login_call.pcap:
     16 kHz, 160 ms packets, all marked) and one-packet-per-frame video;
   - median RTP size >= 400 bytes: video (video fills packets towards the MTU);
   - the marker bit on most packets: video when the median size is >= 300 bytes, else "" (audio
     should set it only at a talkspurt start, RFC 3551 §4.1, but WhatsApp's marks every packet,
     so small marked packets are either);
   - median RTP size < 300 bytes: audio (speech codecs send 20-200-byte frames, typically 50
     packets/s for 20 ms frames);
   - otherwise "". Weakness: only Zoom marks screen sharing, elsewhere it reads as video; a
     thumbnail-sized video stream with one small packet per frame and the marker unset reads as audio.

**Input: running per-stream state, not packets.** The collector folds every RTP header into
per-stream *segments* as batches arrive (``media_stats.RunningStreams``, memory O(streams)); a
segment is a stream's packets between silences longer than the call gap, so it lies inside a
call window exactly when it overlaps it (the argument is in that class's docstring). A stream's
row combines the segments inside the window: counts add, first/last arrival take the extremes,
the payload type and Zoom type are the most common over the summed counts.

**Loss and jitter**: loss from RFC 3550 A.1 extended sequence numbers (wrap-around, duplicates
and reordering handled in ``RunningStreams``; expected = highest - lowest + 1); jitter by
RFC 3550 §6.4.1/A.8, carried per segment at every candidate clock rate and chained over the
silences between segments with one recurrence step each. The clock rate: RFC 3551's table for
static types; for dynamic types the rate the stream itself shows in the window (RTP timestamp
advance / arrival time over >= 1 s, snapped to a standard rate within 5%), else
``media_stats.clock_rate_for`` (48 kHz audio, 90 kHz video). Rule 4 reads exact running values
(packets per timestamp up to the lookback bound, marker count, median size against its two
thresholds) and rule 3 reads bottom-k timestamp sketches (exact up to 64 distinct timestamps per
stream); their bounds and weaknesses are in ``RunningStreams``.

**RTCP**: for *sent* streams, a capture on the sender sees no loss in the sequence numbers. When
the remote side's plain (unencrypted, ``rtcp_coverage == 0``) RTCP SR/RR blocks report on the
stream's SSRC inside the window, the largest plausible cumulative loss reported (RFC 3550 §6.4.1)
is used when it exceeds the sequence-gap count. SRTCP report blocks are ciphertext and ignored.
The collector parses report blocks as they arrive and keeps per (flow, side, SSRC) only the
largest loss per segment of reports (``media_stats.RunningReports``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from inspector.destinations import string_ranks
from inspector.media_stats import (
    CANDIDATE_CLOCK_RATES,
    MEDIAN_THRESHOLDS,
    NO_HASH,
    PRUNE_BELOW_PACKETS,
    STATIC_AUDIO,
    STATIC_CLOCK_RATES,
    STATIC_VIDEO,
    TIMESTAMP_SKETCH,
    ZOOM_FEC_PT,
    ZOOM_KIND,
    RunningReports,
    RunningStreams,
    clock_rate_for,
    report_frame,
    segment_frame,
)
from inspector.ordering import run_changes, run_starts
from inspector.schema import CALL_MAX_GAP_S, MEDIA_COLUMNS, empty_frame

#: Fewer packets under one SSRC are not a stream: the collector reads an RTP header from every
#: UDP payload starting 0b10 of a media flow, and in non-RTP payloads the 32-bit "SSRC" is noise
#: that rarely repeats (RFC 3550 §8.1: SSRCs are random), while a real stream of a call repeats
#: its SSRC in every packet. Weakness: a stream of 1-4 packets inside the window is left out.
MIN_STREAM_PACKETS: Final = PRUNE_BELOW_PACKETS
VIDEO_MIN_PACKETS_PER_TIMESTAMP: Final = 1.2
VIDEO_MIN_MARKER_FRACTION: Final = 0.5
VIDEO_MIN_MEDIAN_RTP_BYTES: Final = 400
AUDIO_MAX_MEDIAN_RTP_BYTES: Final = 300
#: Share of a stream's RTP timestamps found in a larger stream that makes it a repair stream.
REPAIR_MIN_SHARED_TIMESTAMPS: Final = 0.5
#: ... while covering less than this share of the larger stream's frames: a lower simulcast layer
#: may share the capturer's timestamps but carries (nearly) every frame; repairs cover a few.
REPAIR_MAX_COVERAGE: Final = 0.3
#: RTP clock rates in use (RFC 3551 §4.5, RFC 7587 Opus 48 kHz, 90 kHz video formats).
STANDARD_CLOCK_RATES: Final = (8000, 16000, 24000, 32000, 44100, 48000, 90000)
#: Every RTP video payload format uses a 90 kHz clock (RFC 6184 §8.2.1, RFC 7741 §6.1, RFC 7798
#: §7.1); audio formats use their sampling rate (RFC 3551 §4.5, RFC 7587).
VIDEO_CLOCK_RATE: Final = 90000
CLOCK_ESTIMATE_MIN_SPAN_NS: Final = 1_000_000_000
CLOCK_ESTIMATE_TOLERANCE: Final = 0.05
TS_MOD: Final = 1 << 32


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (``np.unique`` by one sort, faster on long int streams)."""
    ordered = np.sort(np.asarray(values))
    return ordered[run_changes(ordered)]


@dataclass(frozen=True, slots=True)
class StreamShape:
    """What rule 4 reads of a stream: exact running counts, no per-packet arrays.

    packets          RTP packets in the window
    timestamps       distinct RTP timestamps
    marker_packets   packets with the marker bit
    clock_rate       the clock rate the stream shows (``estimated_clock_rate``), or None
    median_at_least  threshold -> whether the median RTP size is >= it (MEDIAN_THRESHOLDS)
    """

    packets: int
    timestamps: int
    marker_packets: int
    clock_rate: int | None
    median_at_least: dict[int, bool]


def median_at_least(packets: int, at_or_above: int, largest_below: int, smallest_from: int, threshold: int) -> bool:
    """``np.median(sizes) >= threshold`` from three running values (exact).

    With k of n sizes at or above the threshold: an odd n has its middle at or above it when
    k > n/2; an even n averages the two middle sizes, which straddle the threshold exactly when
    k == n/2, and are then the largest size below it and the smallest at or above it.
    """
    if packets == 0:
        return False
    if packets % 2:
        return at_or_above > packets // 2
    if at_or_above != packets // 2:
        return at_or_above > packets // 2
    return (largest_below + smallest_from) / 2 >= threshold


def shape_kind(shape: StreamShape) -> str:
    """Rule 4 of the module docstring: audio/video from frames, clock rate, marker bits, sizes."""
    if shape.packets == 0:
        return ""
    if shape.packets / shape.timestamps >= VIDEO_MIN_PACKETS_PER_TIMESTAMP:
        return "video"
    if shape.clock_rate is not None:
        return "video" if shape.clock_rate == VIDEO_CLOCK_RATE else "audio"
    if shape.median_at_least[VIDEO_MIN_MEDIAN_RTP_BYTES]:
        return "video"
    small = not shape.median_at_least[AUDIO_MAX_MEDIAN_RTP_BYTES]
    if shape.marker_packets / shape.packets >= VIDEO_MIN_MARKER_FRACTION:
        return "" if small else "video"
    if small:
        return "audio"
    return ""


def pattern_kind(
    rtp_len: np.ndarray, rtp_ts: np.ndarray, marker: np.ndarray, arrival_ns: np.ndarray | None = None
) -> str:
    """Rule 4 over one stream's packet arrays (``shape_kind`` of their exact shape)."""
    sizes = np.asarray(rtp_len, dtype=np.int64)
    if sizes.size == 0:
        return ""
    rate = estimated_clock_rate(rtp_ts, arrival_ns) if arrival_ns is not None else None
    median = float(np.median(sizes))
    shape = StreamShape(
        packets=int(sizes.size),
        timestamps=int(_distinct(rtp_ts).size),
        marker_packets=int(np.count_nonzero(marker)),
        clock_rate=rate,
        median_at_least={t: median >= t for t in MEDIAN_THRESHOLDS},
    )
    return shape_kind(shape)


def stream_kind(payload_type: int, zoom_type: int, repair: bool, pattern: str) -> str:
    """The module docstring's rules 1-4 in order (``pattern`` is rule 4's answer)."""
    if zoom_type >= 0:
        if payload_type == ZOOM_FEC_PT:
            return ""
        if zoom_type in ZOOM_KIND:
            return ZOOM_KIND[zoom_type]
    if payload_type in STATIC_AUDIO:
        return "audio"
    if payload_type in STATIC_VIDEO:
        return "video"
    if repair:
        return ""
    return pattern


def snapped_clock_rate(packets: int, span_ns: int, timestamp_advance: int) -> int | None:
    """The standard rate within 5% of ``timestamp_advance`` over ``span_ns``, or None (needs
    >= 10 packets over >= 1 s)."""
    if packets < 10 or span_ns < CLOCK_ESTIMATE_MIN_SPAN_NS:
        return None
    rate = timestamp_advance * 1e9 / span_ns
    for standard in STANDARD_CLOCK_RATES:
        if abs(rate - standard) <= CLOCK_ESTIMATE_TOLERANCE * standard:
            return standard
    return None


def estimated_clock_rate(rtp_ts: np.ndarray, arrival_ns: np.ndarray) -> int | None:
    """The RTP clock rate a stream shows, snapped to a standard rate, or None.

    RTP timestamps advance at the sampling clock (RFC 3550 §5.1) also across silence, so over a
    second or more their advance divided by the arrival span is the clock rate. Weakness: a
    sender whose timestamps jump (a new source after a mixer switch) gives no estimate.
    """
    if rtp_ts.size < 10:
        return None
    span_ns = int(arrival_ns.max() - arrival_ns.min())
    ts = np.asarray(rtp_ts, dtype=np.int64) % TS_MOD
    steps = (np.diff(ts) + TS_MOD // 2) % TS_MOD - TS_MOD // 2
    unwrapped = np.concatenate(([0], np.cumsum(steps)))
    first, last = int(np.argmin(arrival_ns)), int(np.argmax(arrival_ns))
    return snapped_clock_rate(int(rtp_ts.size), span_ns, int(unwrapped[last] - unwrapped[first]))


def jitter_clock_rate(payload_type: int, kind: str, shown_rate: int | None) -> int:
    """Clock rate for jitter: static table, else the stream's own rate, else media_stats' guess."""
    if payload_type in STATIC_CLOCK_RATES:
        return STATIC_CLOCK_RATES[payload_type]
    return shown_rate or clock_rate_for(payload_type, kind)


def clock_rate(payload_type: int, kind: str, rtp_ts: np.ndarray, arrival_ns: np.ndarray) -> int:
    """``jitter_clock_rate`` with the rate shown by one stream's packet arrays."""
    if payload_type in STATIC_CLOCK_RATES:
        return STATIC_CLOCK_RATES[payload_type]
    return jitter_clock_rate(payload_type, kind, estimated_clock_rate(rtp_ts, arrival_ns))


def _sketch_union(sketches: list[np.ndarray], full: list[bool]) -> tuple[np.ndarray, int]:
    """(the bottom-k of the union of segment sketches, sorted and distinct; the hash up to which
    it is complete): a segment that overflowed its sketch is complete only up to its largest
    kept hash."""
    limit = 1 << 32
    if len(sketches) == 1:
        # One segment: its sketch row is already sorted, distinct and at most TIMESTAMP_SKETCH
        # long (``media_stats.RunningStreams._fold_sketch``), so it is its own union.
        real = sketches[0][sketches[0] != NO_HASH].astype(np.int64)
        return real, (int(real[-1]) if full[0] and real.size else limit)
    parts = []
    for sketch, overflowed in zip(sketches, full):
        real = sketch[sketch != NO_HASH].astype(np.int64)
        parts.append(real)
        if overflowed and real.size:
            limit = min(limit, int(real[-1]))
    values = _distinct(np.concatenate(parts))
    values = values[values <= limit]
    if values.size > TIMESTAMP_SKETCH:
        values = values[:TIMESTAMP_SKETCH]
        limit = int(values[-1])
    return values, limit


def _repair_streams(
    keys: list[tuple], packets: list[int], sketch_of: Callable[[int], tuple[np.ndarray, int]]
) -> set[int]:
    """Indexes of streams whose timestamps mostly belong to a larger stream of the same flow/direction.

    Timestamps come as bottom-k sketches (``media_stats.TIMESTAMP_SKETCH`` smallest hashes with
    the hash up to which each is complete), ``sketch_of(index)`` (``_sketch_union``), asked
    once and only for streams that share their flow and direction with another. Below the lower
    of two limits both sketches hold every timestamp of their stream, so the shares are counted
    there: exact while each stream has at most k distinct timestamps, a consistent sample
    (~1/sqrt(k) error) beyond.
    """
    by_flow: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        by_flow.setdefault(key[:4], []).append(i)  # session, capture, flow, direction
    repair: set[int] = set()
    for members in by_flow.values():
        if len(members) < 2:
            continue
        sketches = {i: sketch_of(i) for i in members}
        for i in members:
            for j in members:
                if i == j or packets[j] <= packets[i]:
                    continue
                (hashes_i, limit_i), (hashes_j, limit_j) = sketches[i], sketches[j]
                limit = min(limit_i, limit_j)
                # Sketches are sorted and distinct (``_sketch_union``): a sample is a prefix, and
                # a hash of one is in the other where a binary search lands on it.
                sample_i = hashes_i[: int(np.searchsorted(hashes_i, limit, side="right"))]
                sample_j = hashes_j[: int(np.searchsorted(hashes_j, limit, side="right"))]
                if sample_i.size == 0 or sample_j.size == 0:
                    continue
                landing = np.searchsorted(sample_j, sample_i)
                common = int(np.count_nonzero(sample_j[np.minimum(landing, sample_j.size - 1)] == sample_i))
                shared = common / sample_i.size
                coverage = common / sample_j.size
                if shared >= REPAIR_MIN_SHARED_TIMESTAMPS and coverage < REPAIR_MAX_COVERAGE:
                    repair.add(i)
                    break
    return repair


def _report_segments(rtcp: pd.DataFrame | None, max_gap_ns: int) -> pd.DataFrame | None:
    """``schema.RTCP_REPORT_COLUMNS`` rows: as given, or parsed from whole RTCP packets
    (capture, flow_id, from_client, ts_ns, payload) in arrival order."""
    if rtcp is None or len(rtcp) == 0 or "payload" not in rtcp.columns:
        return rtcp
    frames = []
    for capture, part in rtcp.groupby("capture", sort=False):
        reports = RunningReports(max_gap_ns)
        part = part.sort_values("ts_ns", kind="stable")
        for row in part.itertuples():
            if isinstance(row.payload, (bytes, bytearray, memoryview)):
                reports.add(int(row.flow_id), bool(row.from_client), int(row.ts_ns), bytes(row.payload))
        frames.append(report_frame(reports, str(capture)))
    return pd.concat(frames, ignore_index=True)


def reported_losses(rtcp: pd.DataFrame | None, membership: pd.DataFrame, max_gap_s: float = CALL_MAX_GAP_S) -> dict[tuple, int]:
    """(session_id, capture, flow_id, ssrc) -> the largest cumulative loss the remote side reported.

    Only RTCP from the remote side, inside the call window (a report segment overlapping it lies
    inside it, ``media_stats.RunningReports``), plain (no SRTCP trailer), and with a cumulative
    loss that is not negative (RFC 3550 §6.4.1 allows negative values for duplicates).
    """
    losses: dict[tuple, int] = {}
    rtcp = _report_segments(rtcp, int(max_gap_s * 1e9))
    if rtcp is None or len(rtcp) == 0 or len(membership) == 0:
        return losses
    joined = rtcp.merge(
        membership[["capture", "flow_id", "session_id", "start_ns", "end_ns", "swapped"]],
        on=["capture", "flow_id"],
    )
    from_me = joined["from_client"].to_numpy(dtype=bool) ^ joined["swapped"].to_numpy(dtype=bool)
    first = joined["first_ns"].to_numpy(dtype=np.int64)
    last = joined["last_ns"].to_numpy(dtype=np.int64)
    keep = ~from_me & (first <= joined["end_ns"].to_numpy()) & (last >= joined["start_ns"].to_numpy())
    for row in joined[keep].itertuples():
        key = (row.session_id, row.capture, int(row.flow_id), int(row.ssrc))
        losses[key] = max(losses.get(key, 0), int(row.cumulative_lost))
    return losses


def stream_segments(rtp: pd.DataFrame, max_gap_s: float = CALL_MAX_GAP_S) -> pd.DataFrame:
    """``schema.RTP_SEGMENT_COLUMNS`` frame: as given, or folded from per-packet
    ``schema.RTP_COLUMNS`` rows (one batch per capture, as the collector would)."""
    if "seq" not in rtp.columns:
        return rtp
    frames = []
    for capture, part in rtp.groupby("capture", sort=False):
        streams = RunningStreams(int(max_gap_s * 1e9))
        streams.add(*(part[name].to_numpy() for name in FOLD_COLUMNS))
        frames.append(segment_frame(streams, str(capture)))
    if not frames:
        return segment_frame(RunningStreams(int(max_gap_s * 1e9)), "")
    return pd.concat(frames, ignore_index=True)


#: RTP_COLUMNS in the order ``RunningStreams.add`` takes them.
FOLD_COLUMNS: Final = ("flow_id", "from_client", "ts_ns", "ssrc", "seq", "rtp_ts", "payload_type", "marker",
                "rtp_len", "ip_bytes", "zoom_type")  # fmt: skip


def _string_ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each string in sorted (code point) order, equal strings equal ranks (each distinct
    string sorted once, ``destinations.string_ranks``)."""
    return string_ranks(values)[1]


def _window_segments(segments: pd.DataFrame, membership: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(segment rows, membership rows): every segment of a call's media flow that overlaps the
    call's window (and so lies inside it, ``RunningStreams``), by membership row, each
    membership row's segments in row order.

    A join on (capture, flow_id) over whole columns: both tables' keys get one dense code, each
    membership row the run of segments of its code (``searchsorted`` in the segments sorted by
    code, rows in order inside a code), and the runs are laid end to end before the overlap test.
    """
    n_segments, n_members = len(segments), len(membership)
    if n_segments == 0 or n_members == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Equal captures get equal codes (their order does not matter for a join).
    capture_code, _ = pd.factorize(np.concatenate([segments["capture"].to_numpy(dtype=object),
                                                   membership["capture"].to_numpy(dtype=object)]))  # fmt: skip
    flow = np.concatenate([segments["flow_id"].to_numpy(dtype=np.int64), membership["flow_id"].to_numpy(dtype=np.int64)])
    by_key = np.lexsort((flow, capture_code))
    code = np.empty(by_key.size, dtype=np.int64)
    code[by_key] = np.cumsum(run_changes(capture_code[by_key], flow[by_key])) - 1
    segment_code, member_code = code[:n_segments], code[n_segments:]
    order = np.argsort(segment_code, kind="stable")  # stable: rows ascending inside a code
    sorted_code = segment_code[order]
    lo = np.searchsorted(sorted_code, member_code, side="left")
    count = np.searchsorted(sorted_code, member_code, side="right") - lo
    member = np.repeat(np.arange(n_members, dtype=np.int64), count)
    run_start = np.cumsum(count) - count
    rows = order[np.arange(member.size, dtype=np.int64) - np.repeat(run_start - lo, count)]
    first = segments["first_ns"].to_numpy(dtype=np.int64)[rows]
    last = segments["last_ns"].to_numpy(dtype=np.int64)[rows]
    inside = (first <= membership["end_ns"].to_numpy(dtype=np.int64)[member]) & (
        last >= membership["start_ns"].to_numpy(dtype=np.int64)[member]
    )
    return rows[inside].astype(np.int64, copy=False), member[inside]


def _mode(counts: list[dict[int, int]]) -> int:
    """The most common value over several {value: count} maps, the lowest on ties; -1 if none."""
    total: dict[int, int] = {}
    for part in counts:
        for value, count in part.items():
            total[value] = total.get(value, 0) + count
    if not total:
        return -1
    return min(total, key=lambda v: (-total[v], v))


#: Per MEDIAN_THRESHOLDS value: the segment columns holding the largest size below it, the
#: smallest size from it, and the count of sizes at or above it (``RunningStreams``).
_SIZE_COLUMNS: Final = {t: (f"size_below_{t}", f"size_from_{t}", f"size_ge_{t}") for t in MEDIAN_THRESHOLDS}


class _Window:
    """One stream's segments inside a window, combined (``RunningStreams`` columns as Python
    lists: a window holds one segment or a few, and list reads cost less than numpy calls)."""

    def __init__(self, columns: dict[str, list], rows: list[int]) -> None:
        self.c = columns
        self.rows = rows  # in time order
        # Most windows hold one segment (a stream without a silence longer than the call gap):
        # then every total, highest and lowest is that segment's value, read without a loop.
        self.only = rows[0] if len(rows) == 1 else -1

    def total(self, name: str) -> int:
        column = self.c[name]
        if self.only >= 0:
            return 0 + column[self.only]  # what sum() of one value gives
        return sum(column[s] for s in self.rows)

    def highest(self, name: str):
        column = self.c[name]
        if self.only >= 0:
            return column[self.only]
        return max(column[s] for s in self.rows)

    def lowest(self, name: str):
        column = self.c[name]
        if self.only >= 0:
            return column[self.only]
        return min(column[s] for s in self.rows)

    def shape(self) -> StreamShape:
        c, rows = self.c, self.rows
        packets = self.total("packets")
        first, last = [c["first_ns"][s] for s in rows], [c["last_ns"][s] for s in rows]
        # The first segment holding the earliest first packet and the latest last packet.
        at_first, at_last = rows[first.index(min(first))], rows[last.index(max(last))]
        advance = c["unwrapped_last"][at_last] - c["unwrapped_first"][at_first]
        rate = snapped_clock_rate(packets, max(last) - min(first), advance)
        at_least = {t: self.median_at_least(packets, t) for t in MEDIAN_THRESHOLDS}
        return StreamShape(packets, self.total("timestamps"), self.total("marker_packets"), rate, at_least)

    def median_at_least(self, packets: int, threshold: int) -> bool:
        below, smallest_from, at_or_above = _SIZE_COLUMNS[threshold]
        return median_at_least(packets, self.total(at_or_above), self.highest(below), self.lowest(smallest_from), threshold)

    def jitter_units(self, rate: int) -> float:
        """RFC 3550 jitter after the window's last packet: the segments' values chained by one
        recurrence step over each silence between them."""
        c = self.c
        r = CANDIDATE_CLOCK_RATES.index(rate)
        jitter = 0.0
        previous = None
        for s in self.rows:
            if previous is not None:
                arrival_step = float(c["join_first_ns"][s] - c["join_last_ns"][previous]) * (rate / 1e9)
                ts_step = (c["join_first_rtp_ts"][s] - c["join_last_rtp_ts"][previous] + TS_MOD // 2) % TS_MOD - TS_MOD // 2
                jitter = jitter * (15.0 / 16.0) + abs(arrival_step - ts_step) / 16.0
            jitter = jitter * (15.0 / 16.0) ** int(c["jitter_steps"][s]) + float(c["jitter"][s][r])
            previous = s
        return jitter


def _column_list(values: np.ndarray) -> list:
    """A column as a list of Python values (ints, floats, bools, or an object column's objects)."""
    return list(values) if values.dtype == object else values.tolist()


def media_table(
    rtp: pd.DataFrame, rtcp: pd.DataFrame | None, membership: pd.DataFrame, merge: bool, max_gap_s: float = CALL_MAX_GAP_S
) -> pd.DataFrame:
    """One row per (call, flow, direction, SSRC), columns and dtypes of ``schema.MEDIA_COLUMNS``.

    ``rtp``: the collector's stream segments (``schema.RTP_SEGMENT_COLUMNS``) or per-packet
    ``schema.RTP_COLUMNS`` rows (folded here the same way). ``rtcp``: report segments
    (``schema.RTCP_REPORT_COLUMNS``) or whole RTCP packets. ``max_gap_s``: the call-window gap
    the segments were cut at (``sessions.CallOptions.max_gap_s``).
    ``membership``: the calls' media flows, one row per (capture, flow_id, session_id) with the
    call's ``scope``, ``start_ns``, ``end_ns`` and the flow's ``swapped`` (this machine is the
    flow's server, so ``from_client`` means received). Streams come in (session_id, capture,
    flow_id, direction, ssrc) order, strings compared as text.
    """
    if len(rtp) == 0 or len(membership) == 0:
        return empty_frame(MEDIA_COLUMNS)
    segments = stream_segments(rtp, max_gap_s)
    # Cheap integer pre-filter before the join: most RTP-looking segments belong to other flows.
    member_flows = membership["flow_id"].to_numpy(dtype=np.int64)
    segments = segments[np.isin(segments["flow_id"].to_numpy(dtype=np.int64), member_flows)].reset_index(drop=True)
    rows, member = _window_segments(segments, membership)
    if rows.size == 0:
        return empty_frame(MEDIA_COLUMNS)
    c = {name: segments[name].to_numpy() for name in segments.columns if name != "capture"}
    sent = c["from_client"].astype(bool)[rows] ^ membership["swapped"].to_numpy(dtype=bool)[member]
    session_ids = membership["session_id"].to_numpy(dtype=object)
    captures = membership["capture"].to_numpy(dtype=object)
    flow_ids = membership["flow_id"].to_numpy(dtype=np.int64)
    # Stream order (session_id, capture, flow_id, direction, ssrc, zoom_fec) as two integer keys:
    # the membership row's rank in (session_id, capture, flow_id) order with the direction
    # ("received" before "sent"), and the 32-bit SSRC with the FEC flag; then time.
    member_order = np.lexsort((flow_ids, _string_ranks(captures), _string_ranks(session_ids)))
    member_rank = np.empty(member_order.size, dtype=np.int64)
    member_rank[member_order] = np.arange(member_order.size)
    high = member_rank[member] * 2 + sent
    low = c["ssrc"].astype(np.int64)[rows] * 2 + c["zoom_fec"].astype(bool)[rows]
    order = np.lexsort((rows, c["first_ns"].astype(np.int64)[rows], low, high))
    starts = run_starts(high[order], low[order])
    ends = np.append(starts[1:], order.size)
    # The window loops below read a few values per segment: as Python lists, once.
    listed = {name: _column_list(values) for name, values in c.items()}
    ordered_rows = rows[order].tolist()
    ordered_member = member[order].tolist()
    ordered_sent = sent[order].tolist()
    ssrc_of, fec_of = listed["ssrc"], listed["zoom_fec"]
    windows: list[tuple[tuple, _Window]] = []
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        window = _Window(listed, ordered_rows[lo:hi])
        if window.total("packets") < MIN_STREAM_PACKETS:
            continue
        m, first = ordered_member[lo], window.rows[0]
        key = (session_ids[m], captures[m], int(flow_ids[m]), "sent" if ordered_sent[lo] else "received",
               int(ssrc_of[first]), bool(fec_of[first]), m)  # fmt: skip
        windows.append((key, window))
    if not windows:
        return empty_frame(MEDIA_COLUMNS)
    c = listed

    def sketch_of(index: int) -> tuple[np.ndarray, int]:
        rows_of = windows[index][1].rows
        return _sketch_union([c["sketch"][s] for s in rows_of], [bool(c["sketch_full"][s]) for s in rows_of])

    repair = _repair_streams([k[:6] for k, _ in windows], [w.total("packets") for _, w in windows], sketch_of)
    losses = reported_losses(rtcp, membership, max_gap_s)
    scopes = membership["scope"].to_numpy(dtype=object)
    out: dict[str, list] = {name: [] for name, _, _ in MEDIA_COLUMNS}
    for index, (key, w) in enumerate(windows):
        session_id, capture, flow_id, direction, ssrc, _, m = key
        payload_type = max(_mode([c["payload_types"][s] for s in w.rows]), 0)
        zoom_type = _mode([c["zoom_types"][s] for s in w.rows])
        shape = w.shape()
        kind = stream_kind(payload_type, zoom_type, index in repair, shape_kind(shape))
        rate = jitter_clock_rate(payload_type, kind, shape.clock_rate)
        packets = w.total("packets")
        expected = int(w.highest("seq_high")) - int(w.lowest("seq_low")) + 1
        lost = max(expected - w.total("seq_distinct"), 0)
        if direction == "sent":
            reported = losses.get((session_id, capture, flow_id, ssrc), 0)
            if reported > lost and reported <= expected:
                lost = reported
        ip_bytes = w.total("ip_bytes")
        duration_s = (int(w.highest("last_ns")) - int(w.lowest("first_ns"))) / 1e9
        out["capture"].append(scopes[m] if merge else capture)
        out["session_id"].append(session_id)
        out["flow_id"].append(flow_id)
        out["direction"].append(direction)
        out["ssrc"].append(ssrc)
        out["media_kind"].append(kind)
        out["payload_type"].append(payload_type)
        out["packets"].append(packets)
        out["bytes"].append(ip_bytes)
        out["duration_s"].append(duration_s)
        out["bitrate_kbps"].append(ip_bytes * 8 / duration_s / 1000 if duration_s > 0 else 0.0)
        out["lost_packets"].append(int(lost))
        out["loss_rate"].append(lost / expected if expected else 0.0)
        out["jitter_ms"].append(w.jitter_units(rate) * 1000.0 / rate)
    frame = pd.DataFrame({name: pd.Series(out[name], dtype=object) for name, _, _ in MEDIA_COLUMNS})
    return frame.astype({name: dtype for name, dtype, _ in MEDIA_COLUMNS})


__all__ = [
    "StreamShape",
    "clock_rate",
    "estimated_clock_rate",
    "jitter_clock_rate",
    "media_table",
    "median_at_least",
    "pattern_kind",
    "reported_losses",
    "shape_kind",
    "stream_kind",
    "stream_segments",
]
