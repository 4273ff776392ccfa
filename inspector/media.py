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

**Loss and jitter** come from ``inspector.media_stats.rtp_stream_stats`` (RFC 3550 A.1/A.3 and
§6.4.1; wrap-around, duplicates and reordering handled there), with packets in arrival order.
The clock rate for jitter: RFC 3551's table for static types; for dynamic types the rate the
stream itself shows (RTP timestamp advance / arrival time over >= 1 s, snapped to a standard
rate within 5%), else ``media_stats.clock_rate_for`` (48 kHz audio, 90 kHz video).

**RTCP**: for *sent* streams, a capture on the sender sees no loss in the sequence numbers. When
the remote side's plain (unencrypted, ``rtcp_coverage == 0``) RTCP SR/RR blocks report on the
stream's SSRC inside the window, the largest plausible cumulative loss reported (RFC 3550 §6.4.1)
is used when it exceeds the sequence-gap count. SRTCP report blocks are ciphertext and ignored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from inspector.dissect.rtp import RTCP_RR, RTCP_SR, parse_rtcp_compound, rtcp_coverage
from inspector.media_stats import (
    STATIC_AUDIO,
    STATIC_CLOCK_RATES,
    STATIC_VIDEO,
    ZOOM_KIND,
    clock_rate_for,
    rtp_stream_stats,
)
from inspector.schema import MEDIA_COLUMNS, empty_frame

#: Fewer packets under one SSRC are not a stream: the collector reads an RTP header from every
#: UDP payload starting 0b10 of a media flow, and in non-RTP payloads the 32-bit "SSRC" is noise
#: that rarely repeats (RFC 3550 §8.1: SSRCs are random), while a real stream of a call repeats
#: its SSRC in every packet. Weakness: a stream of 1-4 packets inside the window is left out.
MIN_STREAM_PACKETS = 5
#: Zoom's FEC payload type (facts §2.3, zoom-analysis zoom.cc ``stream_type::fec``).
ZOOM_FEC_PT = 110
VIDEO_MIN_PACKETS_PER_TIMESTAMP = 1.2
VIDEO_MIN_MARKER_FRACTION = 0.5
VIDEO_MIN_MEDIAN_RTP_BYTES = 400
AUDIO_MAX_MEDIAN_RTP_BYTES = 300
#: Share of a stream's RTP timestamps found in a larger stream that makes it a repair stream.
REPAIR_MIN_SHARED_TIMESTAMPS = 0.5
#: ... while covering less than this share of the larger stream's frames: a lower simulcast layer
#: may share the capturer's timestamps but carries (nearly) every frame; repairs cover a few.
REPAIR_MAX_COVERAGE = 0.3
#: RTP clock rates in use (RFC 3551 §4.5, RFC 7587 Opus 48 kHz, 90 kHz video formats).
STANDARD_CLOCK_RATES = (8000, 16000, 24000, 32000, 44100, 48000, 90000)
#: Every RTP video payload format uses a 90 kHz clock (RFC 6184 §8.2.1, RFC 7741 §6.1, RFC 7798
#: §7.1); audio formats use their sampling rate (RFC 3551 §4.5, RFC 7587).
VIDEO_CLOCK_RATE = 90000
CLOCK_ESTIMATE_MIN_SPAN_NS = 1_000_000_000
CLOCK_ESTIMATE_TOLERANCE = 0.05
TS_MOD = 1 << 32


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (``np.unique`` by one sort, faster on long int streams)."""
    ordered = np.sort(np.asarray(values))
    if ordered.size == 0:
        return ordered
    keep = np.ones(ordered.size, dtype=bool)
    keep[1:] = ordered[1:] != ordered[:-1]
    return ordered[keep]


def pattern_kind(
    rtp_len: np.ndarray, rtp_ts: np.ndarray, marker: np.ndarray, arrival_ns: np.ndarray | None = None
) -> str:
    """Rule 4 of the module docstring: audio/video from frames, clock rate, marker bits, sizes."""
    packets = rtp_len.size
    if packets == 0:
        return ""
    per_timestamp = packets / _distinct(rtp_ts).size
    if per_timestamp >= VIDEO_MIN_PACKETS_PER_TIMESTAMP:
        return "video"
    rate = estimated_clock_rate(rtp_ts, arrival_ns) if arrival_ns is not None else None
    if rate is not None:
        return "video" if rate == VIDEO_CLOCK_RATE else "audio"
    median = float(np.median(rtp_len))
    if median >= VIDEO_MIN_MEDIAN_RTP_BYTES:
        return "video"
    if np.count_nonzero(marker) / packets >= VIDEO_MIN_MARKER_FRACTION:
        return "video" if median >= AUDIO_MAX_MEDIAN_RTP_BYTES else ""
    if median < AUDIO_MAX_MEDIAN_RTP_BYTES:
        return "audio"
    return ""


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


def estimated_clock_rate(rtp_ts: np.ndarray, arrival_ns: np.ndarray) -> int | None:
    """The RTP clock rate a stream shows, snapped to a standard rate, or None.

    RTP timestamps advance at the sampling clock (RFC 3550 §5.1) also across silence, so over a
    second or more their advance divided by the arrival span is the clock rate. Weakness: a
    sender whose timestamps jump (a new source after a mixer switch) gives no estimate.
    """
    if rtp_ts.size < 10:
        return None
    span_ns = int(arrival_ns.max() - arrival_ns.min())
    if span_ns < CLOCK_ESTIMATE_MIN_SPAN_NS:
        return None
    ts = np.asarray(rtp_ts, dtype=np.int64) % TS_MOD
    steps = (np.diff(ts) + TS_MOD // 2) % TS_MOD - TS_MOD // 2
    unwrapped = np.concatenate(([0], np.cumsum(steps)))
    first, last = int(np.argmin(arrival_ns)), int(np.argmax(arrival_ns))
    rate = (unwrapped[last] - unwrapped[first]) * 1e9 / span_ns
    for standard in STANDARD_CLOCK_RATES:
        if abs(rate - standard) <= CLOCK_ESTIMATE_TOLERANCE * standard:
            return standard
    return None


def clock_rate(payload_type: int, kind: str, rtp_ts: np.ndarray, arrival_ns: np.ndarray) -> int:
    """Clock rate for jitter: static table, else the stream's own rate, else media_stats' guess."""
    if payload_type in STATIC_CLOCK_RATES:
        return STATIC_CLOCK_RATES[payload_type]
    return estimated_clock_rate(rtp_ts, arrival_ns) or clock_rate_for(payload_type, kind)


def _repair_streams(keys: list[tuple], timestamps: list[np.ndarray]) -> set[int]:
    """Indexes of streams whose timestamps mostly belong to a larger stream of the same flow/direction."""
    by_flow: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        by_flow.setdefault(key[:4], []).append(i)  # session, capture, flow, direction
    repair: set[int] = set()
    for members in by_flow.values():
        if len(members) < 2:
            continue
        distinct = {i: _distinct(timestamps[i]) for i in members}
        for i in members:
            for j in members:
                if i == j or timestamps[j].size <= timestamps[i].size:
                    continue
                common = np.isin(distinct[i], distinct[j]).sum()
                shared = common / distinct[i].size
                coverage = common / distinct[j].size
                if shared >= REPAIR_MIN_SHARED_TIMESTAMPS and coverage < REPAIR_MAX_COVERAGE:
                    repair.add(i)
                    break
    return repair


def reported_losses(rtcp: pd.DataFrame | None, membership: pd.DataFrame) -> dict[tuple, int]:
    """(session_id, capture, flow_id, ssrc) -> the largest cumulative loss the remote side reported.

    Only RTCP from the remote side, inside the call window, plain (no SRTCP trailer), and with a
    cumulative loss that is not negative (RFC 3550 §6.4.1 allows negative values for duplicates).
    """
    losses: dict[tuple, int] = {}
    if rtcp is None or len(rtcp) == 0 or len(membership) == 0:
        return losses
    joined = rtcp.merge(
        membership[["capture", "flow_id", "session_id", "start_ns", "end_ns", "swapped"]],
        on=["capture", "flow_id"],
    )
    from_me = joined["from_client"].to_numpy(dtype=bool) ^ joined["swapped"].to_numpy(dtype=bool)
    ts = joined["ts_ns"].to_numpy(dtype=np.int64)
    keep = ~from_me & (ts >= joined["start_ns"].to_numpy()) & (ts <= joined["end_ns"].to_numpy())
    for row in joined[keep].itertuples():
        if not isinstance(row.payload, (bytes, bytearray, memoryview)):
            continue
        payload = bytes(row.payload)
        packets = parse_rtcp_compound(payload)
        if rtcp_coverage(payload, packets) != 0:
            continue
        for packet in packets:
            if packet.packet_type not in (RTCP_SR, RTCP_RR):
                continue
            for block in packet.report_blocks:
                if block.cumulative_lost < 0:
                    continue
                key = (row.session_id, row.capture, int(row.flow_id), int(block.ssrc))
                losses[key] = max(losses.get(key, 0), block.cumulative_lost)
    return losses


def _member_rows(rtp: pd.DataFrame, membership: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(rtp rows, membership rows) of every RTP packet of a call's media flow inside the call's
    window: an inner join on (capture, flow_id) with integer keys, rows in membership order then
    RTP order."""
    from inspector.sessions import side_rows

    member_of_rtp = side_rows(membership, rtp["capture"], rtp["flow_id"].to_numpy(dtype=np.int64))
    # side_rows maps to a flow's first membership row; a flow in several calls has several rows.
    flow_keys = list(zip(membership["capture"].to_numpy(dtype=object), membership["flow_id"].to_numpy(dtype=np.int64)))
    first_row: dict[tuple, int] = {}
    for i, key in enumerate(flow_keys):
        first_row.setdefault(key, i)
    known = np.flatnonzero(member_of_rtp >= 0)
    order = known[np.argsort(member_of_rtp[known], kind="stable")]
    grouped = member_of_rtp[order]
    ts = rtp["ts_ns"].to_numpy(dtype=np.int64)
    start = membership["start_ns"].to_numpy(dtype=np.int64)
    end = membership["end_ns"].to_numpy(dtype=np.int64)
    rtp_parts, member_parts = [], []
    for m, key in enumerate(flow_keys):
        lo, hi = np.searchsorted(grouped, [first_row[key], first_row[key] + 1])
        rows = order[lo:hi]
        rows = rows[(ts[rows] >= start[m]) & (ts[rows] <= end[m])]
        rtp_parts.append(rows)
        member_parts.append(np.full(rows.size, m, dtype=np.int64))
    if not rtp_parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rtp_parts), np.concatenate(member_parts)


def _string_ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each string in sorted (code point) order, equal strings equal ranks."""
    _, inverse = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def media_table(
    rtp: pd.DataFrame, rtcp: pd.DataFrame | None, membership: pd.DataFrame, merge: bool
) -> pd.DataFrame:
    """One row per (call, flow, direction, SSRC), columns and dtypes of ``schema.MEDIA_COLUMNS``.

    ``membership``: the calls' media flows, one row per (capture, flow_id, session_id) with the
    call's ``scope``, ``start_ns``, ``end_ns`` and the flow's ``swapped`` (this machine is the
    flow's server, so ``from_client`` means received). Streams come in (session_id, capture,
    flow_id, direction, ssrc) order, strings compared as text.
    """
    if len(rtp) == 0 or len(membership) == 0:
        return empty_frame(MEDIA_COLUMNS)
    # Cheap integer pre-filter before the join: most RTP-looking rows may belong to other flows.
    rtp = rtp[np.isin(rtp["flow_id"].to_numpy(dtype=np.int64), membership["flow_id"].to_numpy(dtype=np.int64))]
    rows, member = _member_rows(rtp, membership)
    if rows.size == 0:
        return empty_frame(MEDIA_COLUMNS)
    column = {name: rtp[name].to_numpy(dtype=np.int64)[rows] for name in
              ("ts_ns", "ssrc", "seq", "rtp_ts", "payload_type", "rtp_len", "ip_bytes", "zoom_type")}  # fmt: skip
    from_client = rtp["from_client"].to_numpy(dtype=bool)[rows]
    marker = rtp["marker"].to_numpy(dtype=bool)[rows]
    sent = from_client ^ membership["swapped"].to_numpy(dtype=bool)[member]
    zoom_fec = (column["zoom_type"] >= 0) & (column["payload_type"] == ZOOM_FEC_PT)
    session_ids = membership["session_id"].to_numpy(dtype=object)
    captures = membership["capture"].to_numpy(dtype=object)
    flow_ids = membership["flow_id"].to_numpy(dtype=np.int64)
    # Stream order (session_id, capture, flow_id, direction, ssrc, zoom_fec) as two integer keys:
    # the membership row's rank in (session_id, capture, flow_id) order with the direction
    # ("received" before "sent"), and the 32-bit SSRC with the FEC flag.
    member_order = np.lexsort((flow_ids, _string_ranks(captures), _string_ranks(session_ids)))
    member_rank = np.empty(member_order.size, dtype=np.int64)
    member_rank[member_order] = np.arange(member_order.size)
    high = member_rank[member] * 2 + sent
    low = column["ssrc"] * 2 + zoom_fec
    order = np.lexsort((column["ts_ns"], low, high))
    keys = (high[order], low[order])
    change = np.zeros(order.size, dtype=bool)
    change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], order.size)
    big = (ends - starts) >= MIN_STREAM_PACKETS
    starts, ends = starts[big], ends[big]
    if starts.size == 0:
        return empty_frame(MEDIA_COLUMNS)
    stream_keys: list[tuple] = []
    slices: list[np.ndarray] = []
    for lo, hi in zip(starts, ends):
        at = order[lo:hi]
        m = member[at[0]]
        stream_keys.append(
            (session_ids[m], captures[m], int(flow_ids[m]), "sent" if sent[at[0]] else "received",
             int(column["ssrc"][at[0]]), bool(zoom_fec[at[0]]), m)
        )  # fmt: skip
        slices.append(at)
    repair = _repair_streams([k[:6] for k in stream_keys], [column["rtp_ts"][at] for at in slices])
    losses = reported_losses(rtcp, membership)
    scopes = membership["scope"].to_numpy(dtype=object)
    out: dict[str, list] = {name: [] for name, _, _ in MEDIA_COLUMNS}
    for index, (key, at) in enumerate(zip(stream_keys, slices)):
        session_id, capture, flow_id, direction, ssrc, _, m = key
        seq = column["seq"][at]
        rtp_ts = column["rtp_ts"][at]
        arrival = column["ts_ns"][at]
        sizes = column["rtp_len"][at]
        payload_type = int(np.bincount(column["payload_type"][at] & 0x7F, minlength=128).argmax())
        zoom_types = column["zoom_type"][at]
        zoom_types = zoom_types[zoom_types >= 0]
        zoom_type = -1
        if zoom_types.size:
            values, counts = np.unique(zoom_types, return_counts=True)
            zoom_type = int(values[counts.argmax()])
        pattern = pattern_kind(sizes, rtp_ts, marker[at], arrival)
        kind = stream_kind(payload_type, zoom_type, index in repair, pattern)
        stats = rtp_stream_stats(seq, rtp_ts, arrival, clock_rate(payload_type, kind, rtp_ts, arrival))
        lost, expected = stats.lost_packets, stats.expected
        if direction == "sent":
            reported = losses.get((session_id, capture, flow_id, ssrc), 0)
            if reported > lost and reported <= expected:
                lost = reported
        ip_bytes = int(column["ip_bytes"][at].sum())
        duration_s = (int(arrival.max()) - int(arrival.min())) / 1e9
        out["capture"].append(scopes[m] if merge else capture)
        out["session_id"].append(session_id)
        out["flow_id"].append(flow_id)
        out["direction"].append(direction)
        out["ssrc"].append(ssrc)
        out["media_kind"].append(kind)
        out["payload_type"].append(payload_type)
        out["packets"].append(stats.packets)
        out["bytes"].append(ip_bytes)
        out["duration_s"].append(duration_s)
        out["bitrate_kbps"].append(ip_bytes * 8 / duration_s / 1000 if duration_s > 0 else 0.0)
        out["lost_packets"].append(int(lost))
        out["loss_rate"].append(lost / expected if expected else 0.0)
        out["jitter_ms"].append(stats.jitter_ms)
    frame = pd.DataFrame({name: pd.Series(out[name], dtype=object) for name, _, _ in MEDIA_COLUMNS})
    return frame.astype({name: dtype for name, dtype, _ in MEDIA_COLUMNS})


__all__ = [
    "clock_rate",
    "estimated_clock_rate",
    "media_table",
    "pattern_kind",
    "reported_losses",
    "stream_kind",
]
