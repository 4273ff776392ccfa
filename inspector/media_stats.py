"""Per-stream RTP statistics: loss, duplicates, reordering and interarrival jitter.

Inputs are one stream's packets (one SSRC, one direction) as numpy columns in arrival order.
Everything is vectorised, including the jitter filter (see ``interarrival_jitter``).

Sources: RFC 3550 §6.4.1 (jitter), Appendix A.1 (extended sequence numbers), A.3 (expected and
lost packets), A.8 (jitter estimate); RFC 3551 §6 (static payload-type clock rates); RFC 7587
(Opus' 48 kHz RTP clock); ../shared/research/protocol-facts.md §2.3 and §3.4 (Zoom inner types,
nDPI's payload-type table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final

import numpy as np

from inspector.dissect.rtp import ReportBlock, RtcpPacket, parse_rtcp_compound
from inspector.fastinit import attribute_state, rebuilt
from inspector.ordering import run_starts

__all__ = [
    "ReportBlock",
    "RtcpPacket",
    "StreamStats",
    "clock_rate_for",
    "extended_sequence",
    "interarrival_jitter",
    "media_kind_for",
    "parse_rtcp_compound",
    "rtp_stream_stats",
]

SEQ_MOD: Final = 1 << 16
TS_MOD: Final = 1 << 32


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Reception statistics of one RTP stream.

    packets        packets received (duplicates included)
    expected       extended highest - extended lowest sequence number + 1 (RFC 3550 A.3)
    lost_packets   expected - distinct sequence numbers received; never negative
    loss_rate      lost_packets / expected (0.0 for an empty stream)
    duplicates     packets whose extended sequence number was already received
    reordered      packets that arrived after a higher sequence number (first copies only)
    jitter_ms      RFC 3550 interarrival jitter after the last packet, in milliseconds
    """

    packets: int
    expected: int
    lost_packets: int
    loss_rate: float
    duplicates: int
    reordered: int
    jitter_ms: float


def extended_sequence(seq: np.ndarray) -> np.ndarray:
    """Extend 16-bit sequence numbers to int64 across wrap-arounds (RFC 3550 Appendix A.1).

    Each step is taken as the signed 16-bit difference to the previous packet (a jump of
    +65535 is read as -1), so a wrap from 65535 to 0 continues at 65536. Weakness: a gap or
    reordering of >= 32768 packets is mistaken for a step the other way; A.1 resets the source
    in that case, here the count just continues.
    """
    values = np.asarray(seq, dtype=np.int64) % SEQ_MOD
    if values.size == 0:
        return values
    steps = (np.diff(values) + SEQ_MOD // 2) % SEQ_MOD - SEQ_MOD // 2
    return values[0] + np.concatenate(([0], np.cumsum(steps)))


def interarrival_jitter(rtp_ts: np.ndarray, arrival_ns: np.ndarray, clock_rate_hz: int) -> float:
    """RFC 3550 §6.4.1 jitter after the last packet, in RTP timestamp units.

    D(i-1, i) = (R_i - R_{i-1}) - (S_i - S_{i-1}), with R the arrival time in timestamp units,
    S the RTP timestamp (differences taken mod 2^32, signed), and J_i = J_{i-1} + (|D| - J_{i-1})/16
    from J = 0. That recursion is a first-order linear filter, so its value after n steps has the
    closed form J_n = sum_k (1/16) (15/16)^(n-k) |D_k|, computed here as one weighted sum.
    Packets are taken in arrival order, as the RFC's receiver would see them.

    The sum is numpy's ``add.reduceat`` over the weighted steps, as ``RunningStreams`` sums each
    chunk of JITTER_CHUNK steps: a stream of at most that many steps gets the very same bits
    there (``np.sum`` and ``np.dot`` add in other orders, the latter varying with the BLAS).
    """
    timestamps = np.asarray(rtp_ts, dtype=np.int64) % TS_MOD
    arrivals = np.asarray(arrival_ns, dtype=np.int64)
    if timestamps.size < 2:
        return 0.0
    ts_steps = (np.diff(timestamps) + TS_MOD // 2) % TS_MOD - TS_MOD // 2
    arrival_steps = np.diff(arrivals).astype(np.float64) * (clock_rate_hz / 1e9)
    transit_delta = np.abs(arrival_steps - ts_steps.astype(np.float64))
    n = transit_delta.size
    weights = np.power(15.0 / 16.0, np.arange(n - 1, -1, -1, dtype=np.float64)) / 16.0
    return float(np.add.reduceat(weights * transit_delta, _FIRST)[0])


def rtp_stream_stats(
    seq: np.ndarray, rtp_ts: np.ndarray, arrival_ns: np.ndarray, clock_rate_hz: int
) -> StreamStats:
    """Loss, duplicates, reordering and jitter of one stream (arrays in arrival order).

    Raises ValueError when the arrays differ in length or the clock rate is not positive (a
    caller's bug, never a property of the capture).
    """
    seq = np.asarray(seq)
    if not (len(seq) == len(rtp_ts) == len(arrival_ns)):
        raise ValueError("seq, rtp_ts and arrival_ns must have the same length")
    if clock_rate_hz <= 0:
        raise ValueError(f"clock_rate_hz must be positive, got {clock_rate_hz}")
    packets = int(seq.size)
    if packets == 0:
        return StreamStats(0, 0, 0, 0.0, 0, 0, 0.0)
    ext = extended_sequence(seq)
    unique, first_index = np.unique(ext, return_index=True)
    distinct = int(unique.size)
    expected = int(unique[-1] - unique[0] + 1)
    lost = max(expected - distinct, 0)
    first_copy = np.zeros(packets, dtype=bool)
    first_copy[first_index] = True
    running_max = np.maximum.accumulate(ext)
    late = np.zeros(packets, dtype=bool)
    late[1:] = ext[1:] < running_max[:-1]
    jitter_units = interarrival_jitter(rtp_ts, arrival_ns, clock_rate_hz)
    return StreamStats(
        packets=packets,
        expected=expected,
        lost_packets=lost,
        loss_rate=lost / expected if expected else 0.0,
        duplicates=packets - distinct,
        reordered=int(np.count_nonzero(late & first_copy)),
        jitter_ms=jitter_units * 1000.0 / clock_rate_hz,
    )


# RFC 3551 §6, Tables 4 and 5: static payload types and their RTP clock rates.
STATIC_CLOCK_RATES: Final = {
    0: 8000, 3: 8000, 4: 8000, 5: 8000, 6: 16000, 7: 8000, 8: 8000, 9: 8000,
    10: 44100, 11: 44100, 12: 8000, 13: 8000, 14: 90000, 15: 8000, 16: 11025,
    17: 22050, 18: 8000, 25: 90000, 26: 90000, 28: 90000, 31: 90000, 32: 90000,
    33: 90000, 34: 90000,
}  # fmt: skip
STATIC_AUDIO: Final = frozenset(pt for pt in STATIC_CLOCK_RATES if pt <= 18)
STATIC_VIDEO: Final = frozenset(pt for pt in STATIC_CLOCK_RATES if pt >= 25)
#: nDPI rtp_get_stream_type hints for dynamic payload types (facts §3.4), plus 120 (Discord's
#: Opus, facts §1.11; also WhatsApp's audio in wa_voice.pcap); only hints.
DYNAMIC_AUDIO_HINTS: Final = frozenset({96, 97, 98, 101, 103, 104, 111, 112, 114, 115, 116, 117, 118, 120})
DYNAMIC_VIDEO_HINTS: Final = frozenset({121, 122, 123, 127})
#: Zoom inner media type byte (facts §2.3).
ZOOM_KIND: Final = {0x0F: "audio", 0x10: "video", 0x0D: "screen", 0x1E: "screen"}
#: Mean RTP payload size above which a dynamic-PT stream is taken as video, below which audio.
VIDEO_MIN_MEAN_PAYLOAD: Final = 400
AUDIO_MAX_MEAN_PAYLOAD: Final = 300


def clock_rate_for(payload_type: int, media_kind: str) -> int:
    """RTP clock rate (Hz) for a payload type.

    Static types use RFC 3551's table (PT 14 MPA is 90 kHz, PT 9 G.722 is 8 kHz by the RFC's own
    historical error). Dynamic and unknown types are a guess: 48000 for audio (Opus, RFC 7587, is
    what WebRTC, Zoom, Discord and WhatsApp-era clients negotiate) and 90000 for video and screen
    (every RTP video payload format, e.g. RFC 6184, RFC 7741). Weakness: a dynamic audio codec
    at 8 or 16 kHz (G.722 remapped, SILK) gets jitter scaled by 3-6x; the SDP, which would say,
    is encrypted.
    """
    if payload_type in STATIC_CLOCK_RATES:
        return STATIC_CLOCK_RATES[payload_type]
    return 48000 if media_kind == "audio" else 90000


def media_kind_for(
    payload_type: int | None = None,
    *,
    zoom_inner_type: int | None = None,
    mean_payload_bytes: float | None = None,
) -> str:
    """``audio``, ``video``, ``screen`` or "" for a stream. First rule that applies wins:

    1. Zoom's inner media type byte (facts §2.3): 15 audio, 16 video, 13/30 screen share.
    2. A static RTP payload type (RFC 3551 Tables 4/5): audio PTs 0-18, video PTs 25-34.
    3. Packet size: mean RTP payload >= 400 bytes is video, <= 300 bytes audio (speech codecs
       send 20-200-byte frames; video fills packets towards the MTU).
    4. nDPI's hints for dynamic payload types (facts §3.4), e.g. 111 audio, 127 video.
    Weakness: only Zoom marks screen sharing, so elsewhere screen share reads as video; low-bitrate
    video (thumbnails, paused screen share) falls between the size thresholds or below them.
    """
    if zoom_inner_type is not None and zoom_inner_type in ZOOM_KIND:
        return ZOOM_KIND[zoom_inner_type]
    if payload_type is not None:
        if payload_type in STATIC_AUDIO:
            return "audio"
        if payload_type in STATIC_VIDEO:
            return "video"
    if mean_payload_bytes is not None:
        if mean_payload_bytes >= VIDEO_MIN_MEAN_PAYLOAD:
            return "video"
        if mean_payload_bytes <= AUDIO_MAX_MEAN_PAYLOAD:
            return "audio"
    if payload_type is not None:
        if payload_type in DYNAMIC_AUDIO_HINTS:
            return "audio"
        if payload_type in DYNAMIC_VIDEO_HINTS:
            return "video"
    return ""


# -- Running per-stream state (bounded memory for the call stage) -------------------------------
#
# ``RunningStreams`` folds RTP header rows batch by batch into per-stream *segments*, so the call
# stage holds O(streams) state instead of one row per packet. Everything is numpy over the batch's
# rows grouped by stream.

#: Every clock rate ``media.clock_rate`` can choose: RFC 3551's static table and the standard
#: rates a stream may show (RFC 3551 §4.5, RFC 7587, the 90 kHz video formats). The jitter is
#: carried at each of them, because the rate is only decided when the call window is known.
CANDIDATE_CLOCK_RATES: Final = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 90000)
#: Packet sizes media.pattern_kind compares the median RTP size with (its rule 4 thresholds).
MEDIAN_THRESHOLDS: Final = (300, 400)
#: How many previous packets of a segment a repeated RTP timestamp is looked for in (a video
#: frame's packets are consecutive; reordering across a frame boundary is a packet or two).
TIMESTAMP_LOOKBACK: Final = 4
#: Sequence numbers tracked behind a stream's highest one for late packets (reordering and
#: duplicates); an older late packet inside the seen range is taken as a duplicate.
SEQUENCE_WINDOW: Final = 2048
#: Bottom-k sketch size of a segment's RTP timestamps (the repair-stream test's sample).
TIMESTAMP_SKETCH: Final = 64
#: Jitter steps folded at once per segment (queued until then, so the value never depends on
#: how packets were batched; a segment of up to this many steps gets one closed-form sum).
JITTER_CHUNK: Final = 1024
#: Odd multiplier: a bijection on 32-bit values that scatters RTP timestamps for the sketch.
SKETCH_HASH: Final = 0x9E3779B1
NO_HASH: Final = 0xFFFFFFFF
_JITTER_WEIGHT: Final = 15.0 / 16.0
#: The closed form's weight (15/16)^k / 16 of each step of a chunk, k = JITTER_CHUNK - 1 .. 0: a
#: run of m steps takes the last m (its last step weighs 1/16).
_CHUNK_WEIGHTS: Final = np.power(_JITTER_WEIGHT, np.arange(JITTER_CHUNK - 1, -1, -1, dtype=np.float64)) / 16.0
#: (15/16)^m for m = 0 .. JITTER_CHUNK: how far a segment's jitter decays over m steps.
_DECAY: Final = np.array([_JITTER_WEIGHT**m for m in range(JITTER_CHUNK + 1)], dtype=np.float64)
#: Jitter steps folded at once at most (whole units): the fold's temporaries peak at ~200 bytes
#: a step (|D| at nine rates, twice, and the indexes), so at ~50 MiB however many segments are
#: still queued when a capture ends.
JITTER_FOLD_STEPS: Final = 1 << 18
#: ``add.reduceat``'s indices for one run that covers the whole array.
_FIRST: Final = np.zeros(1, dtype=np.int64)
#: Each candidate clock rate in ticks per nanosecond, as a column (``_fold_jitter``).
_RATES_PER_NS: Final = np.array([rate / 1e9 for rate in CANDIDATE_CLOCK_RATES], dtype=np.float64)[:, None]
_I64_MAX: Final = np.iinfo(np.int64).max
_I64_MIN: Final = np.iinfo(np.int64).min
_EXT_BIAS: Final = 1 << 39


def _signed(values: np.ndarray, modulus: int) -> np.ndarray:
    """Differences mod ``modulus`` read as signed (a wrap continues, RFC 3550 A.1)."""
    return (values + modulus // 2) % modulus - modulus // 2


def _fold_jitter(jitter: np.ndarray, arrival_ns: np.ndarray, stamp: np.ndarray, segment: np.ndarray,
                 rank: np.ndarray, start: np.ndarray, steps: np.ndarray,
                 max_steps: int = JITTER_FOLD_STEPS) -> None:  # fmt: skip
    """J = J * (15/16)^m + the closed form of ``interarrival_jitter`` over m steps, at every
    candidate clock rate, for each unit: ``segment``'s row of ``jitter`` (segments x rates) and
    the m = ``steps`` steps from row ``start`` of (``arrival_ns``, ``stamp``) on (a step: from a
    row to the next; m <= JITTER_CHUNK). A segment's units come in ``rank`` order (0, 1, ...)
    and are folded in it; a rank holds a segment once.

    |D| (RFC 3550 §6.4.1) is made for the folded steps only, and each unit's weighted steps are
    summed by one ``add.reduceat``, with the float operations of ``interarrival_jitter``: a
    segment folded in one unit from J = 0 gets its bits. Units go at most ``max_steps`` steps at
    a time (whole units, in order), which bounds the temporaries; the bits do not depend on it.
    """
    ends = np.cumsum(steps)
    lo = 0
    while lo < steps.size:
        hi = max(int(np.searchsorted(ends, ends[lo] - steps[lo] + max_steps, side="right")), lo + 1)
        _fold_units(jitter, arrival_ns, stamp, segment[lo:hi], rank[lo:hi], start[lo:hi], steps[lo:hi])
        lo = hi


def _fold_units(jitter: np.ndarray, arrival_ns: np.ndarray, stamp: np.ndarray, segment: np.ndarray,
                rank: np.ndarray, start: np.ndarray, steps: np.ndarray) -> None:  # fmt: skip
    """``_fold_jitter`` of some units at once."""
    at = _ranges(start, steps)  # each step goes from row ``at`` to row ``at + 1``
    weighted = np.abs((arrival_ns[at + 1] - arrival_ns[at]).astype(np.float64) * _RATES_PER_NS
                      - _signed(stamp[at + 1] - stamp[at], TS_MOD).astype(np.float64))  # fmt: skip
    weighted *= _CHUNK_WEIGHTS[_ranges(JITTER_CHUNK - steps, steps)]  # a unit of m takes the last m
    sums = np.add.reduceat(weighted, np.cumsum(steps) - steps, axis=1).T  # units x rates
    decay = _DECAY[steps][:, None]
    for r in range(int(rank.min()), int(rank.max()) + 1):
        in_rank = np.flatnonzero(rank == r)
        rows = segment[in_rank]
        jitter[rows] = jitter[rows] * decay[in_rank] + sums[in_rank]


def _group_cumsum(values: np.ndarray, starts: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarting at each group start (rows grouped)."""
    total = np.cumsum(values)
    before = total[starts] - values[starts]
    return total - before[group]


def _in_sorted(values: np.ndarray, ascending: np.ndarray) -> np.ndarray:
    """``np.isin(values, ascending)`` for an ascending ``ascending``: a binary search per value
    instead of sorting both together."""
    if ascending.size == 0:
        return np.zeros(values.size, dtype=bool)
    at = np.minimum(np.searchsorted(ascending, values), ascending.size - 1)
    return ascending[at] == values


def _group_running_max_before(values: np.ndarray, starts: np.ndarray, group: np.ndarray,
                              carried: np.ndarray) -> np.ndarray:  # fmt: skip
    """Per row: the maximum of ``carried[group]`` and the group's earlier rows (exclusive)."""
    base = values[starts][group]
    span = int(np.abs(values - base).max(initial=0)) * 2 + 2
    keyed = group.astype(np.int64) * span + (values - base) + span // 2
    inclusive = np.maximum.accumulate(keyed) - group.astype(np.int64) * span - span // 2 + base
    before = np.empty_like(values)
    before[1:] = inclusive[:-1]
    first = np.zeros(values.size, dtype=bool)
    first[starts] = True
    before[first] = _I64_MIN
    return np.maximum(before, carried[group])


class RunningStreams:
    """Per-(flow, direction, SSRC, FEC) RTP statistics folded batch by batch, split into segments.

    **Segments.** A stream's packets are cut into segments at every silence longer than
    ``max_gap_ns`` (a packet more than that before or after the stream's previous one). The call
    windows (sessions.call_windows, rule 3) are cut from the media flows' 100 ms activity buckets
    sorted by time: a new window starts only where a bucket begins more than ``max_gap_s`` after
    the latest end of every earlier bucket of the group, and every RTP packet lies in a bucket of
    its flow. Two packets of one flow at most ``max_gap_s`` apart therefore never fall in two
    windows, and by induction neither does a segment (the absolute gap is used, so a timestamp
    that runs backwards cannot stretch a segment over a boundary either). A segment is thus
    inside a window exactly when it overlaps it, and the window takes or leaves it whole.
    ``fold_generic_media`` only changes which group a flow joins, not the cut rule.

    **Exact running statistics per segment**: packets, IP-layer and RTP bytes, first/last
    arrival, marker bits, payload-type and Zoom-type counts, RFC 3550 A.1 extended sequence
    numbers (distinct, lowest, highest, duplicates, reordering; carried across segments of the
    stream), the unwrapped RTP timestamp at the first and last arrival (for the clock rate a
    stream shows), and for the median RTP size against each of ``MEDIAN_THRESHOLDS`` the count
    at or above it, the largest size below it and the smallest at or above it (enough to decide
    ``median >= threshold`` exactly). The A.8 jitter is carried at every candidate clock rate
    (``CANDIDATE_CLOCK_RATES``): the rate is decided only once the window is known (from the
    window's payload type, kind and timestamps, exactly as before), so no early guess is needed.
    Each segment's packets are queued and folded JITTER_CHUNK steps at a time (J = J * (15/16)^m
    + the closed form over the chunk's m steps); the rest is folded when the segment ends (silent
    for longer than the gap on the capture clock) or when the segments are read. Chunks are
    counted from the segment's first packet, so the value never depends on batching, and a
    segment of up to JITTER_CHUNK steps gets the very dot product ``interarrival_jitter`` computes.

    **Bounded approximations** (each with its bound and weakness):
    * distinct RTP timestamps: a packet starts a new timestamp unless one of the segment's
      previous ``TIMESTAMP_LOOKBACK`` packets carried it. Weakness: a timestamp recurring later
      (a late retransmission in the same SSRC) counts again, lowering packets per timestamp.
    * late sequence numbers more than ``SEQUENCE_WINDOW`` below the highest so far are taken as
      duplicates (if inside the seen range). Weakness: an original packet that late is loss.
      Distinct sequence numbers are counted against the stream's whole history, so a window
      holding a later segment only misses the rare copy of a number sent before the silence.
    * RTP timestamps for the repair-stream test: a bottom-k sketch (``TIMESTAMP_SKETCH``
      smallest hashes, a consistent sample across streams; exact while a segment has no more
      distinct timestamps). Weakness: above that, shares are estimates (~1/sqrt(k) error).
    * streams of fewer than PRUNE_BELOW_PACKETS packets are forgotten once their only segment
      has ended (``_prune``: noise "SSRCs" of non-RTP payloads).

    Memory, whatever the capture length: about 1 KB per segment, at most JITTER_CHUNK + 1 queued
    (arrival, timestamp) pairs per active segment, and at most SEQUENCE_WINDOW missing sequence
    numbers per stream. Packet order: within a batch rows are taken in timestamp order (stable),
    across batches in capture order (the old per-packet code sorted a whole window by timestamp;
    the two differ only where capture timestamps run backwards across a batch boundary).
    """

    def __init__(self, max_gap_ns: int) -> None:
        self.max_gap_ns = int(max_gap_ns)
        self._keys: dict[tuple[int, int], int] = {}
        self._stream: dict[str, np.ndarray] = {}
        self._segment: dict[str, np.ndarray] = {}
        self._streams = 0
        self._segments = 0
        self._missing = np.zeros(0, dtype=np.int64)  # stream << 40 | (ext + bias), sorted
        self._payload_types: dict[int, dict[int, int]] = {}  # segment -> {payload type: packets}
        self._zoom_types: dict[int, dict[int, int]] = {}  # segment -> {Zoom inner type: packets}
        self._free_streams: list[int] = []  # slots of pruned streams/segments, reused first
        self._free_segments: list[int] = []
        empty = np.zeros(0, dtype=np.int64)
        self._pending = (empty, empty, empty)  # segment, arrival, RTP timestamp of queued packets
        self._clock_ns = _I64_MIN

    def __reduce__(self) -> tuple:
        # A parallel run's RTP worker returns this state to the reading process (parallel.py).
        return (rebuilt, (RunningStreams, (self.max_gap_ns,), attribute_state(self)))

    # storage -------------------------------------------------------------------------------
    _STREAM_FIELDS: ClassVar[dict[str, tuple[type, object]]] = {
        "flow_id": (np.int64, 0), "from_client": (np.bool_, False), "ssrc": (np.int64, 0),
        "zoom_fec": (np.bool_, False), "segment": (np.int64, -1), "last_ns": (np.int64, 0),
        "last_rtp_ts": (np.int64, 0), "unwrapped": (np.int64, 0), "last_ext": (np.int64, 0),
        "seq_max": (np.int64, _I64_MIN), "seq_min": (np.int64, _I64_MAX), "segments": (np.int64, 0),
    }  # fmt: skip
    _SEGMENT_FIELDS: ClassVar[dict[str, tuple[type, object]]] = {
        "stream": (np.int64, 0), "packets": (np.int64, 0), "ip_bytes": (np.int64, 0),
        "rtp_bytes": (np.int64, 0), "marker_packets": (np.int64, 0), "timestamps": (np.int64, 0),
        "first_ns": (np.int64, _I64_MAX), "last_ns": (np.int64, _I64_MIN),
        "unwrapped_first": (np.int64, 0), "unwrapped_last": (np.int64, 0),
        "join_first_ns": (np.int64, 0), "join_first_rtp_ts": (np.int64, 0),
        "join_last_ns": (np.int64, 0), "join_last_rtp_ts": (np.int64, 0),
        "seq_low": (np.int64, _I64_MAX), "seq_high": (np.int64, _I64_MIN),
        "seq_distinct": (np.int64, 0), "reordered": (np.int64, 0), "jitter_steps": (np.int64, 0),
        "size_ge_300": (np.int64, 0), "size_below_300": (np.int64, -1), "size_from_300": (np.int64, _I64_MAX),
        "size_ge_400": (np.int64, 0), "size_below_400": (np.int64, -1), "size_from_400": (np.int64, _I64_MAX),
        "sketch_full": (np.bool_, False), "live": (np.bool_, False),
    }  # fmt: skip

    @staticmethod
    def _grow(table: dict, fields: dict, used: int, extra: int) -> None:
        need = used + extra
        have = next(iter(table.values())).shape[0] if table else 0
        if need <= have:
            return
        size = max(need, have * 2, 64)
        for name, (dtype, fill) in fields.items():
            column = np.full(size, fill, dtype=dtype)
            if name in table:
                column[:have] = table[name]
            table[name] = column
        for name, shape in (("context", TIMESTAMP_LOOKBACK), ("jitter", len(CANDIDATE_CLOCK_RATES)),
                            ("sketch", TIMESTAMP_SKETCH)):  # fmt: skip
            if ("segment" in fields) == (name == "context"):  # streams: context; segments: the rest
                fill = {"context": -1, "jitter": 0.0, "sketch": NO_HASH}[name]
                dtype = {"context": np.int64, "jitter": np.float64, "sketch": np.uint32}[name]
                column = np.full((size, shape), fill, dtype=dtype)
                if name in table:
                    column[:have] = table[name]
                table[name] = column

    def state_bytes(self) -> int:
        """Bytes held by the running state (numpy buffers and the count dictionaries)."""
        arrays = list(self._stream.values()) + list(self._segment.values()) + [self._missing, *self._pending]
        per_entry = 100  # a dict entry with its tuple key and int objects, roughly
        entries = len(self._keys) + sum(len(d) + 1 for d in self._payload_types.values())
        entries += sum(len(d) + 1 for d in self._zoom_types.values())
        return sum(a.nbytes for a in arrays) + per_entry * entries

    # folding -------------------------------------------------------------------------------
    def add(self, flow_id, from_client, ts_ns, ssrc, seq, rtp_ts, payload_type, marker, rtp_len,
            ip_bytes, zoom_type) -> None:  # fmt: skip
        """Fold one batch of RTP header rows (any order; equal-length numpy columns)."""
        if len(ts_ns) == 0:
            return
        fid = np.asarray(flow_id, dtype=np.int64)
        c2s = np.asarray(from_client, dtype=bool)
        ssrc = np.asarray(ssrc, dtype=np.int64)
        zoom = np.asarray(zoom_type, dtype=np.int64)
        pt = np.asarray(payload_type, dtype=np.int64) & 0x7F
        fec = (zoom >= 0) & (pt == ZOOM_FEC_PT)
        high = fid * 2 + c2s
        low = ssrc * 2 + fec
        ts_all = np.asarray(ts_ns, dtype=np.int64)
        order = np.lexsort((ts_all, low, high))
        high, low = high[order], low[order]
        starts = run_starts(high, low)
        group = np.repeat(np.arange(starts.size), np.diff(np.append(starts, order.size)))
        stream = self._stream_slots(high[starts], low[starts])
        row = {
            "ts": ts_all[order],
            "seq": np.asarray(seq, dtype=np.int64)[order] % SEQ_MOD,
            "rtp_ts": np.asarray(rtp_ts, dtype=np.int64)[order] % TS_MOD,
            "pt": pt[order],
            "marker": np.asarray(marker, dtype=bool)[order],
            "rtp_len": np.asarray(rtp_len, dtype=np.int64)[order],
            "ip_bytes": np.asarray(ip_bytes, dtype=np.int64)[order],
            "zoom": zoom[order],
        }
        self._fold(row, starts, group, stream)

    def _stream_slots(self, high: np.ndarray, low: np.ndarray) -> np.ndarray:
        """Stream slot per (flow*2+from_client, ssrc*2+fec) key, new slots for new keys."""
        keys = list(zip(high.tolist(), low.tolist()))
        known = self._keys
        slots = np.array([known.get(key, -1) for key in keys], dtype=np.int64)
        picked = np.flatnonzero(slots < 0)
        if picked.size:
            at = self._allocate(self._stream, self._STREAM_FIELDS, "_streams", self._free_streams, int(picked.size))
            slots[picked] = at
            for i, slot in zip(picked.tolist(), at.tolist()):
                known[keys[i]] = slot
            self._stream["flow_id"][at] = high[picked] // 2
            self._stream["from_client"][at] = (high[picked] % 2) == 1
            self._stream["ssrc"][at] = low[picked] // 2
            self._stream["zoom_fec"][at] = (low[picked] % 2) == 1
        return slots

    def _allocate(self, table: dict, fields: dict, used: str, free: list[int], count: int) -> np.ndarray:
        """``count`` slots with default values: pruned ones first, then new ones at the end."""
        reused = [free.pop() for _ in range(min(count, len(free)))]
        fresh = count - len(reused)
        start = getattr(self, used)
        self._grow(table, fields, start, fresh)
        setattr(self, used, start + fresh)
        slots = np.array(reused + list(range(start, start + fresh)), dtype=np.int64)
        if reused:
            at = np.asarray(reused, dtype=np.int64)
            for name, (_, fill) in fields.items():
                table[name][at] = fill
            for name, fill in (("context", -1), ("jitter", 0.0), ("sketch", NO_HASH)):
                if name in table:
                    table[name][at] = fill
        return slots

    def _fold(self, row: dict, starts: np.ndarray, group: np.ndarray, stream: np.ndarray) -> None:
        st = self._stream
        n = row["ts"].size
        slot = stream[group]
        first = np.zeros(n, dtype=bool)
        first[starts] = True
        known = st["segment"][stream] >= 0  # per group: the stream has a segment to continue
        ts, rtp, seq = row["ts"], row["rtp_ts"], row["seq"]
        prev_ts = np.empty(n, dtype=np.int64)
        prev_ts[1:] = ts[:-1]
        prev_ts[starts] = st["last_ns"][stream]
        prev_rtp = np.empty(n, dtype=np.int64)
        prev_rtp[1:] = rtp[:-1]
        prev_rtp[starts] = np.where(known, st["last_rtp_ts"][stream], rtp[starts])
        prev_seq = np.empty(n, dtype=np.int64)
        prev_seq[1:] = seq[:-1]
        prev_seq[starts] = np.where(known, st["last_ext"][stream] % SEQ_MOD, seq[starts])
        # Segments: a new one at the stream's first packet and after every long silence.
        new_segment = np.abs(ts - prev_ts) > self.max_gap_ns
        new_segment[starts] |= ~known
        continues = ~new_segment  # the row has a previous packet in its segment (for jitter)
        n_new = int(np.count_nonzero(new_segment))
        new_ids = np.full(n, -1, dtype=np.int64)
        new_ids[new_segment] = self._allocate(self._segment, self._SEGMENT_FIELDS, "_segments",
                                              self._free_segments, n_new)  # fmt: skip
        self._segment["stream"][new_ids[new_segment]] = slot[new_segment]
        self._segment["live"][new_ids[new_segment]] = True
        np.add.at(st["segments"], slot[new_segment], 1)
        self._segment["join_first_ns"][new_ids[new_segment]] = ts[new_segment]
        self._segment["join_first_rtp_ts"][new_ids[new_segment]] = rtp[new_segment]
        mark = np.where(new_segment | first, np.arange(n), 0)
        last_mark = np.maximum.accumulate(mark)
        segment = np.where(new_segment[last_mark], new_ids[last_mark], st["segment"][slot])
        # RTP timestamps and sequence numbers unwrapped along the stream (A.1), across segments.
        unwrapped = np.where(known, st["unwrapped"][stream], rtp[starts])[group] + _group_cumsum(
            _signed(rtp - prev_rtp, TS_MOD), starts, group)  # fmt: skip
        ext = np.where(known, st["last_ext"][stream], seq[starts])[group] + _group_cumsum(
            _signed(seq - prev_seq, SEQ_MOD), starts, group)  # fmt: skip
        is_new, reordered = self._sequence(ext, starts, group, stream, slot)
        runs = run_starts(segment)
        self._fold_segments(row, runs, segment, continues, prev_ts, prev_rtp, unwrapped, ext, is_new, reordered)
        self._fold_timestamps(row, starts, group, stream, segment, new_segment, runs)
        self._queue_jitter(segment, ts, rtp)
        self._prune()
        self._fold_sketch(rtp, segment)
        ends = np.append(starts[1:], n) - 1
        st["segment"][stream] = segment[ends]
        st["last_ns"][stream] = ts[ends]
        st["last_rtp_ts"][stream] = rtp[ends]
        st["unwrapped"][stream] = unwrapped[ends]
        st["last_ext"][stream] = ext[ends]
        st["seq_max"][stream] = np.maximum(st["seq_max"][stream], np.maximum.reduceat(ext, starts))
        st["seq_min"][stream] = np.minimum(st["seq_min"][stream], np.minimum.reduceat(ext, starts))

    def _missing_keys(self, slot: np.ndarray, ext: np.ndarray) -> np.ndarray:
        return (slot << 40) | (ext + _EXT_BIAS)

    def _sequence(self, ext, starts, group, stream, slot) -> tuple[np.ndarray, np.ndarray]:
        """(first copy of its sequence number in the stream, first copy that arrived late).

        A packet above every earlier one is new; a late one (at or below the highest so far)
        is new if its number is still missing: skipped by an earlier packet of this batch, or
        in the carried missing set, or below the lowest so far, and it is the first late copy.
        """
        st = self._stream
        carried_max = st["seq_max"][stream]
        carried_min = st["seq_min"][stream]
        highest_before = _group_running_max_before(ext, starts, group, carried_max)
        in_order = ext > highest_before
        late = np.flatnonzero(~in_order)
        is_new = in_order.copy()
        reordered = np.zeros(ext.size, dtype=bool)
        if late.size:
            g = group[late]
            e = ext[late]
            keys = self._missing_keys(slot[late], e)
            _, first_index = np.unique(keys, return_index=True)
            first_copy = np.zeros(late.size, dtype=bool)
            first_copy[first_index] = True
            # Seen in order earlier in this batch. Keyed by group, the in-order rows' keys rise
            # (groups in row order, each one's in-order numbers increasing): a binary search each.
            hit = _in_sorted((g << 40) | (e + _EXT_BIAS), (group[in_order] << 40) | (ext[in_order] + _EXT_BIAS))
            # Running minimum before the row, for "inside the seen range".
            lowest_before = -_group_running_max_before(-ext, starts, group, -carried_min)
            untracked = (e < highest_before[late] - SEQUENCE_WINDOW + 1) & (e >= lowest_before[late])
            was_missing = _in_sorted(keys, self._missing)
            fresh = (e > carried_max[g]) | (e < carried_min[g]) | was_missing
            new_late = first_copy & ~hit & ~untracked & fresh
            is_new[late] = new_late
            reordered[late] = new_late
        self._update_missing(ext, in_order, highest_before, late, is_new, starts, group, stream, slot)
        return is_new, reordered

    def _update_missing(self, ext, in_order, highest_before, late, is_new, starts, group, stream, slot) -> None:
        """Carry the sequence numbers still missing within SEQUENCE_WINDOW of each stream's top."""
        st = self._stream
        top = np.maximum(st["seq_max"][stream], np.maximum.reduceat(ext, starts))
        floor_of_row = top[group] - SEQUENCE_WINDOW + 1
        parts = [self._missing]
        # Numbers skipped by an in-order packet (not for a stream's very first packet).
        jump = in_order & (highest_before > _I64_MIN)
        lo = np.maximum(highest_before[jump] + 1, floor_of_row[jump])
        hi = ext[jump]
        count = np.maximum(hi - lo, 0)
        if count.sum():
            parts.append(self._missing_keys(np.repeat(slot[jump], count), _ranges(lo, count)))
        # Numbers between a new lowest (a late packet below the first) and the old lowest.
        old_min = st["seq_min"][stream]
        new_min = np.minimum(old_min, np.minimum.reduceat(ext, starts))
        below = (new_min < old_min) & (old_min < _I64_MAX)
        if below.any():
            lo = np.maximum(new_min[below] + 1, top[below] - SEQUENCE_WINDOW + 1)
            count = np.maximum(old_min[below] - lo, 0)
            parts.append(self._missing_keys(np.repeat(stream[below], count), _ranges(lo, count)))
        missing = np.unique(np.concatenate(parts)) if len(parts) > 1 else self._missing
        seen = self._missing_keys(slot[late], ext[late])
        if seen.size and missing.size:
            missing = missing[~np.isin(missing, seen)]
        if missing.size:
            owner = missing >> 40
            value = (missing & ((1 << 40) - 1)) - _EXT_BIAS
            st_max = st["seq_max"].copy()
            st_max[stream] = top
            missing = missing[value >= st_max[owner] - SEQUENCE_WINDOW + 1]
        self._missing = missing

    def _fold_segments(self, row, runs, segment, continues, prev_ts, prev_rtp, unwrapped, ext, is_new,
                       reordered) -> None:  # fmt: skip
        sg = self._segment
        seg = segment[runs]
        ts, size = row["ts"], row["rtp_len"]

        def add(name: str, values: np.ndarray) -> None:
            sg[name][seg] += np.add.reduceat(values.astype(np.int64), runs)

        add("packets", np.ones(ts.size, dtype=np.int64))
        add("ip_bytes", row["ip_bytes"])
        add("rtp_bytes", size)
        add("marker_packets", row["marker"])
        add("seq_distinct", is_new)
        add("reordered", reordered)
        add("jitter_steps", continues)
        for threshold in MEDIAN_THRESHOLDS:
            at_or_above = size >= threshold
            add(f"size_ge_{threshold}", at_or_above)
            below = np.maximum.reduceat(np.where(at_or_above, -1, size), runs)
            sg[f"size_below_{threshold}"][seg] = np.maximum(sg[f"size_below_{threshold}"][seg], below)
            above = np.minimum.reduceat(np.where(at_or_above, size, _I64_MAX), runs)
            sg[f"size_from_{threshold}"][seg] = np.minimum(sg[f"size_from_{threshold}"][seg], above)
        sg["seq_low"][seg] = np.minimum(sg["seq_low"][seg], np.minimum.reduceat(ext, runs))
        sg["seq_high"][seg] = np.maximum(sg["seq_high"][seg], np.maximum.reduceat(ext, runs))
        # First and last arrival (the first row holding the extreme, as an argmin/argmax would).
        run_of_row = np.repeat(np.arange(runs.size), np.diff(np.append(runs, ts.size)))
        run_min = np.minimum.reduceat(ts, runs)
        run_max = np.maximum.reduceat(ts, runs)
        at_min = _first_where(ts == run_min[run_of_row], run_of_row, runs.size)
        at_max = _first_where(ts == run_max[run_of_row], run_of_row, runs.size)
        earlier = run_min < sg["first_ns"][seg]
        sg["unwrapped_first"][seg[earlier]] = unwrapped[at_min[earlier]]
        sg["first_ns"][seg[earlier]] = run_min[earlier]
        later = run_max > sg["last_ns"][seg]
        sg["unwrapped_last"][seg[later]] = unwrapped[at_max[later]]
        sg["last_ns"][seg[later]] = run_max[later]
        ends = np.append(runs[1:], ts.size) - 1
        sg["join_last_ns"][seg] = ts[ends]
        sg["join_last_rtp_ts"][seg] = row["rtp_ts"][ends]
        self._count(self._payload_types, segment, row["pt"])
        zoom = row["zoom"] >= 0
        if zoom.any():
            self._count(self._zoom_types, segment[zoom], row["zoom"][zoom])

    def _queue_jitter(self, segment: np.ndarray, ts: np.ndarray, rtp: np.ndarray) -> None:
        """Queue the batch's (arrival, RTP timestamp) pairs per segment and fold every full chunk
        of JITTER_CHUNK steps; segments silent for longer than the gap are folded to the end."""
        pending = self._pending
        seg = np.concatenate([pending[0], segment])
        order = np.argsort(seg, kind="stable")  # queued rows first, then the batch's, per segment
        seg = seg[order]
        arrival = np.concatenate([pending[1], ts])[order]
        stamp = np.concatenate([pending[2], rtp])[order]
        self._clock_ns = max(self._clock_ns, int(ts.max()))
        runs = run_starts(seg)
        lengths = np.diff(np.append(runs, seg.size))
        idle = self._segment["join_last_ns"][seg[runs]] < self._clock_ns - self.max_gap_ns
        # Per segment: the rows folded now. Full chunks of JITTER_CHUNK steps go, each keeping
        # its last packet as the next chunk's first; a closed segment goes whole.
        chunks = (lengths - 1) // JITTER_CHUNK
        folded = np.where(idle, lengths, chunks * JITTER_CHUNK)
        todo = np.flatnonzero(folded > 0)
        if todo.size == 0:
            self._pending = (seg, arrival, stamp)
            return
        # Per segment to fold: its full chunks, then (closed) the steps after them, in that order.
        lo, full = runs[todo], chunks[todo]
        tail = np.where(idle[todo], lengths[todo] - full * JITTER_CHUNK - 1, 0)  # one packet is no step
        units = full + (tail > 0)
        owner = np.repeat(np.arange(todo.size, dtype=np.int64), units)
        rank = _ranges(np.zeros(todo.size, dtype=np.int64), units)
        _fold_jitter(self._segment["jitter"], arrival, stamp, seg[lo][owner], rank,
                     lo[owner] + rank * JITTER_CHUNK, np.where(rank < full[owner], JITTER_CHUNK, tail[owner]))  # fmt: skip
        keep = np.arange(seg.size) - np.repeat(runs, lengths) >= np.repeat(folded, lengths)
        self._pending = (seg[keep], arrival[keep], stamp[keep])

    def _prune(self) -> None:
        """Forget streams of fewer than PRUNE_BELOW_PACKETS packets, all in one segment that has
        ended (silent for longer than the gap on the capture clock).

        The collector reads an RTP header from every UDP payload starting 0b10, and in non-RTP
        payloads (DNS ids, random bytes) the "SSRC" is noise that rarely repeats: without this
        such keys would accumulate with the capture. media.py ignores streams of fewer than 5
        packets in a window anyway. Weakness: a stream that sent 1-4 packets, went silent for
        over a minute while other media kept the call open, then resumed, loses those packets.
        """
        n = self._segments
        sg, st = self._segment, self._stream
        dead = sg["live"][:n] & (sg["packets"][:n] < PRUNE_BELOW_PACKETS)
        dead &= sg["last_ns"][:n] < self._clock_ns - self.max_gap_ns
        dead &= st["segments"][sg["stream"][:n]] == 1
        if not dead.any():
            return
        segments = np.flatnonzero(dead)
        streams = sg["stream"][segments]
        sg["live"][segments] = False
        # The streams' keys as ``_stream_slots`` made them: (flow*2+from_client, ssrc*2+fec).
        high = st["flow_id"][streams] * 2 + st["from_client"][streams]
        low = st["ssrc"][streams] * 2 + st["zoom_fec"][streams]
        for key in zip(high.tolist(), low.tolist()):
            del self._keys[key]
        for segment_slot in segments.tolist():
            self._payload_types.pop(segment_slot, None)
            self._zoom_types.pop(segment_slot, None)
        self._free_streams.extend(streams.tolist())
        self._free_segments.extend(segments.tolist())
        gone = np.zeros(n, dtype=bool)
        gone[segments] = True
        seg, arrival, stamp = self._pending
        kept = ~gone[seg]
        self._pending = (seg[kept], arrival[kept], stamp[kept])
        if self._missing.size:
            dead_streams = np.zeros(self._streams, dtype=bool)
            dead_streams[streams] = True
            self._missing = self._missing[~dead_streams[self._missing >> 40]]

    def _final_jitter(self) -> np.ndarray:
        """Every segment's jitter with its queued steps folded in (the state is left as is)."""
        jitter = self._segment["jitter"][: self._segments].copy()
        seg, arrival, stamp = self._pending
        if seg.size < 2:
            return jitter
        runs = run_starts(seg)
        steps = np.diff(np.append(runs, seg.size)) - 1
        some = np.flatnonzero(steps > 0)
        _fold_jitter(jitter, arrival, stamp, seg[runs[some]], np.zeros(some.size, dtype=np.int64),
                     runs[some], steps[some])  # fmt: skip
        return jitter

    def _fold_timestamps(self, row, starts, group, stream, segment, new_segment, runs) -> None:
        """Distinct RTP timestamps: new unless one of the segment's previous few packets had it."""
        st, sg = self._stream, self._segment
        rtp = row["rtp_ts"]
        n = rtp.size
        pos = np.arange(n) - starts[group]
        context = st["context"][stream]  # per group, oldest first; -1 where empty
        carried_segment = st["segment"][stream][group] == segment
        seen = np.zeros(n, dtype=bool)
        for lag in range(1, TIMESTAMP_LOOKBACK + 1):
            inside = pos >= lag
            same = np.zeros(n, dtype=bool)
            same[lag:] = inside[lag:] & (segment[lag:] == segment[:-lag]) & (rtp[lag:] == rtp[:-lag])
            from_context = ~inside & carried_segment
            back = TIMESTAMP_LOOKBACK - (lag - pos[from_context])
            same[from_context] = context[group[from_context], back] == rtp[from_context]
            seen |= same
        self._segment["timestamps"][segment[runs]] += np.add.reduceat((~seen).astype(np.int64), runs)
        # New context: the last packets of each stream's last segment, after the old context.
        ends = np.append(starts[1:], n)
        fresh = np.full((starts.size, TIMESTAMP_LOOKBACK), -1, dtype=np.int64)
        broke = np.add.reduceat(new_segment.astype(np.int64), starts) > 0
        fresh[~broke] = context[~broke]
        for k in range(TIMESTAMP_LOOKBACK):
            at = ends - TIMESTAMP_LOOKBACK + k
            ok = at >= starts
            ok &= segment[np.maximum(at, 0)] == segment[ends - 1]
            shift = ~ok & ~broke  # older than this batch: from the old context
            back = TIMESTAMP_LOOKBACK + (at - starts)
            fresh[ok, k] = rtp[at[ok]]
            fresh[shift, k] = np.where(back[shift] >= 0, context[shift, np.clip(back[shift], 0, None)], -1)
            fresh[~ok & broke, k] = -1
        st["context"][stream] = fresh
        del sg

    def _fold_sketch(self, rtp: np.ndarray, segment: np.ndarray) -> None:
        """Keep each segment's TIMESTAMP_SKETCH smallest timestamp hashes (bottom-k)."""
        sketch = self._segment["sketch"]
        hashed = (rtp * SKETCH_HASH) & 0xFFFFFFFF
        touched = np.unique(segment)
        held = sketch[touched]
        threshold = held[:, -1].astype(np.int64)  # NO_HASH until full: every row qualifies
        local = np.searchsorted(touched, segment)
        keep = hashed <= threshold[local]
        # A hash above a full sketch's largest is a distinct timestamp the sketch cannot hold.
        over = np.bincount(local[~keep], minlength=touched.size) > 0
        self._segment["sketch_full"][touched[over]] = True
        if not keep.any():
            return
        owner = np.concatenate([np.repeat(np.arange(touched.size), TIMESTAMP_SKETCH), local[keep]])
        values = np.concatenate([held.reshape(-1).astype(np.int64), hashed[keep]])
        real = values != NO_HASH
        keys = np.unique((owner[real] << 32) | values[real])
        owner, values = keys >> 32, keys & 0xFFFFFFFF
        first = np.searchsorted(owner, np.arange(touched.size))
        rank = np.arange(keys.size) - first[owner]
        count = np.bincount(owner, minlength=touched.size)
        self._segment["sketch_full"][touched] |= count > TIMESTAMP_SKETCH
        fill = np.full((touched.size, TIMESTAMP_SKETCH), NO_HASH, dtype=np.uint32)
        small = rank < TIMESTAMP_SKETCH
        fill[owner[small], rank[small]] = values[small]
        sketch[touched] = fill

    @staticmethod
    def _count(table: dict, segment: np.ndarray, values: np.ndarray) -> None:
        keys, counts = np.unique((segment << 8) | values, return_counts=True)
        for key, count in zip(keys.tolist(), counts.tolist()):
            counts_of = table.setdefault(key >> 8, {})
            counts_of[key & 0xFF] = counts_of.get(key & 0xFF, 0) + count

    # output --------------------------------------------------------------------------------
    def segments(self) -> dict[str, object]:
        """Per live segment (rows in slot order): its stream's key columns, every running
        field, the per-rate jitter (``jitter``, columns in CANDIDATE_CLOCK_RATES order), the
        sketch, and the payload/Zoom type counts ({value: packets} per row)."""
        n = self._segments
        live = np.flatnonzero(self._segment["live"][:n]) if n else np.zeros(0, dtype=np.int64)
        stream = self._segment["stream"][live] if n else live
        out: dict[str, object] = {}
        for name in ("flow_id", "from_client", "ssrc", "zoom_fec"):
            dtype = self._STREAM_FIELDS[name][0]
            out[name] = self._stream[name][stream] if n else np.zeros(0, dtype=dtype)
        for name, (dtype, _) in self._SEGMENT_FIELDS.items():
            out[name] = self._segment[name][live] if n else np.zeros(0, dtype=dtype)
        out["jitter"] = self._final_jitter()[live] if n else np.zeros((0, len(CANDIDATE_CLOCK_RATES)))
        out["sketch"] = self._segment["sketch"][live] if n else np.zeros((0, TIMESTAMP_SKETCH), dtype=np.uint32)
        out["payload_types"] = [self._payload_types.get(i, {}) for i in live.tolist()]
        out["zoom_types"] = [self._zoom_types.get(i, {}) for i in live.tolist()]
        return out


def _ranges(lo: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Concatenated ranges lo[i] .. lo[i] + count[i] - 1."""
    total = int(count.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.cumsum(count) - count, count)
    return np.repeat(lo, count) + (np.arange(total) - offsets)


def _first_where(condition: np.ndarray, run_of_row: np.ndarray, runs: int) -> np.ndarray:
    """Per run: index of the first row where ``condition`` holds (it holds somewhere in each)."""
    rows = np.flatnonzero(condition)
    out = np.full(runs, -1, dtype=np.int64)
    out[run_of_row[rows][::-1]] = rows[::-1]
    return out


#: Zoom's FEC payload type (facts §2.3, zoom-analysis zoom.cc ``stream_type::fec``): Zoom packets
#: with it are a stream of their own beside their SSRC's media (media.py rule 1).
ZOOM_FEC_PT: Final = 110
#: Streams with fewer packets are forgotten once they end (``RunningStreams._prune``); the
#: same bound as media.MIN_STREAM_PACKETS, under which media.csv has no row anyway.
PRUNE_BELOW_PACKETS: Final = 5


class RunningReports:
    """RTCP report blocks as they arrive, reduced to what ``media.reported_losses`` reads.

    Per (flow, sender side, reported SSRC): segments of reports cut at silences longer than
    ``max_gap_ns`` (the same argument as ``RunningStreams``: a segment lies inside one call window
    or none), each with its first/last arrival and the largest cumulative loss reported. Only
    plain RTCP (``rtcp_coverage == 0``; SRTCP report blocks are ciphertext) and only losses that
    are not negative (RFC 3550 §6.4.1 allows negative values for duplicates) are kept.
    """

    def __init__(self, max_gap_ns: int) -> None:
        self.max_gap_ns = int(max_gap_ns)
        self._segments: dict[tuple[int, bool, int], list[list[int]]] = {}

    def add(self, flow_id: int, from_client: bool, ts_ns: int, payload: bytes) -> None:
        from inspector.dissect.rtp import RTCP_RR, RTCP_SR, rtcp_coverage

        packets = parse_rtcp_compound(payload)
        if not packets or rtcp_coverage(payload, packets) != 0:
            return
        for packet in packets:
            if packet.packet_type not in (RTCP_SR, RTCP_RR):
                continue
            for block in packet.report_blocks:
                if block.cumulative_lost >= 0:
                    self._note((int(flow_id), bool(from_client), int(block.ssrc)), int(ts_ns), block.cumulative_lost)

    def _note(self, key: tuple[int, bool, int], ts_ns: int, lost: int) -> None:
        segments = self._segments.setdefault(key, [])
        if segments and abs(ts_ns - segments[-1][2]) <= self.max_gap_ns:
            last = segments[-1]
            last[1], last[2], last[3] = min(last[1], ts_ns), ts_ns, max(last[3], lost)
            last[4] = max(last[4], ts_ns)
        else:
            segments.append([key[0], ts_ns, ts_ns, lost, ts_ns])

    def rows(self) -> list[tuple[int, bool, int, int, int, int]]:
        """(flow_id, from_client, ssrc, first_ns, last_ns, cumulative_lost) per segment."""
        out = []
        for (flow_id, from_client, ssrc), segments in self._segments.items():
            for _, first_ns, _, lost, last_ns in segments:
                out.append((flow_id, from_client, ssrc, first_ns, last_ns, lost))
        return out


def segment_frame(streams: RunningStreams, capture: str):
    """``schema.RTP_SEGMENT_COLUMNS`` plus the object columns, one row per segment."""
    import pandas as pd

    from inspector.schema import RTP_SEGMENT_COLUMNS

    columns: Any = streams.segments()
    n = len(columns["packets"])
    data = {"capture": pd.Series([capture] * n, dtype="string")}
    for name, dtype, _ in RTP_SEGMENT_COLUMNS[1:]:
        data[name] = pd.Series(columns[name], dtype=dtype)
    data["jitter"] = pd.Series(list(columns["jitter"]), dtype=object)
    data["sketch"] = pd.Series(list(columns["sketch"]), dtype=object)
    data["payload_types"] = pd.Series(columns["payload_types"], dtype=object)
    data["zoom_types"] = pd.Series(columns["zoom_types"], dtype=object)
    return pd.DataFrame(data)


def report_frame(reports: RunningReports, capture: str):
    """``schema.RTCP_REPORT_COLUMNS``, one row per report segment."""
    import pandas as pd

    from inspector.schema import RTCP_REPORT_COLUMNS

    names = [name for name, _, _ in RTCP_REPORT_COLUMNS]
    frame = pd.DataFrame(reports.rows(), columns=names[1:])
    frame.insert(0, "capture", capture)
    return frame.astype({name: dtype for name, dtype, _ in RTCP_REPORT_COLUMNS})
