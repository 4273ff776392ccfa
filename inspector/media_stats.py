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

import numpy as np

from inspector.dissect.rtp import ReportBlock, RtcpPacket, parse_rtcp_compound

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

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


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
    closed form J_n = sum_k (1/16) (15/16)^(n-k) |D_k|, computed here as one dot product.
    Packets are taken in arrival order, as the RFC's receiver would see them.
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
    return float(np.dot(weights, transit_delta))


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
STATIC_CLOCK_RATES = {
    0: 8000, 3: 8000, 4: 8000, 5: 8000, 6: 16000, 7: 8000, 8: 8000, 9: 8000,
    10: 44100, 11: 44100, 12: 8000, 13: 8000, 14: 90000, 15: 8000, 16: 11025,
    17: 22050, 18: 8000, 25: 90000, 26: 90000, 28: 90000, 31: 90000, 32: 90000,
    33: 90000, 34: 90000,
}  # fmt: skip
STATIC_AUDIO = frozenset(pt for pt in STATIC_CLOCK_RATES if pt <= 18)
STATIC_VIDEO = frozenset(pt for pt in STATIC_CLOCK_RATES if pt >= 25)
#: nDPI rtp_get_stream_type hints for dynamic payload types (facts §3.4), plus 120 (Discord's
#: Opus, facts §1.11; also WhatsApp's audio in wa_voice.pcap); only hints.
DYNAMIC_AUDIO_HINTS = frozenset({96, 97, 98, 101, 103, 104, 111, 112, 114, 115, 116, 117, 118, 120})
DYNAMIC_VIDEO_HINTS = frozenset({121, 122, 123, 127})
#: Zoom inner media type byte (facts §2.3).
ZOOM_KIND = {0x0F: "audio", 0x10: "video", 0x0D: "screen", 0x1E: "screen"}
#: Mean RTP payload size above which a dynamic-PT stream is taken as video, below which audio.
VIDEO_MIN_MEAN_PAYLOAD = 400
AUDIO_MAX_MEAN_PAYLOAD = 300


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
