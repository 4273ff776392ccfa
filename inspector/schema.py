"""The output contract (DESIGN.md §2): every table's columns, their dtypes, one line each.

Tests, the CSV writer and the Python API all read these tuples, so a column is named, typed and
documented in exactly one place. dtypes are pandas dtypes; ``datetime64[ns, UTC]`` columns are
written to CSV as ISO-8601 UTC with microseconds and a ``Z``.
"""

from __future__ import annotations

TIME = "datetime64[ns, UTC]"

# (name, dtype, meaning)
FLOW_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("capture", "string", "capture file name (several inputs keep their rows apart by it)"),
    ("flow_id", "int64", "flow number within its capture, from 1 in order of first packet"),
    ("transport", "string", "tcp, udp, icmp, icmpv6, or the IP protocol name/number"),
    ("client_ip", "string", "address of the side that started the flow"),
    ("client_port", "int64", "client port (0 for protocols without ports)"),
    ("server_ip", "string", "address of the side that was contacted"),
    ("server_port", "int64", "server port (0 for protocols without ports)"),
    ("first_seen", TIME, "earliest packet timestamp of the flow"),
    ("last_seen", TIME, "latest packet timestamp of the flow"),
    ("duration_s", "float64", "last_seen - first_seen in seconds"),
    ("client_to_server_packets", "int64", "packets sent by the client"),
    ("client_to_server_bytes", "int64", "IP-layer bytes sent by the client (from IP length fields)"),
    ("server_to_client_packets", "int64", "packets sent by the server"),
    ("server_to_client_bytes", "int64", "IP-layer bytes sent by the server"),
    ("app_protocol", "string", "dns, tls, quic, http, stun, turn, dtls, rtp, rtcp, zoom-media ... or empty"),
    ("server_name", "string", "who the server is: lower-case hostname without trailing dot, or empty"),
    ("name_source", "string", "where server_name came from: sni, quic-sni, http-host, certificate, stun-realm, dns; dns-query on a DNS flow: the name looked up"),
    ("service", "string", "signature id of the service or organisation (zoom, teams ...), or empty"),
    ("organisation", "string", "organisation operating the destination"),
    ("kind", "string", "conferencing, telemetry, other, or empty when unknown"),
    ("category", "string", "signature category (video-conferencing, analytics, advertising ...)"),
    ("role", "string", "signalling, media, relay, telemetry, web ..."),
    ("evidence", "string", "';'-separated source:detail items, strongest first"),
    ("confidence", "string", "high (payload or name seen in the flow), medium (DNS or range), low (port)"),
    ("session_id", "string", "call this flow belongs to, or empty"),
    ("vlan_id", "int64", "innermost 802.1Q VLAN id, 0 when untagged"),
    ("tunnel", "string", "encapsulation the flow was found in (gtp), or empty"),
)

FLOW_COLUMN_NAMES = tuple(c[0] for c in FLOW_COLUMNS)
FLOW_DTYPES = {name: dtype for name, dtype, _ in FLOW_COLUMNS}

# Columns whose values do not depend on signatures, dissectors or the tool version: the golden
# files hold only these.
FLOW_STABLE_COLUMNS = (
    "flow_id",
    "transport",
    "client_ip",
    "client_port",
    "server_ip",
    "server_port",
    "first_seen",
    "last_seen",
    "client_to_server_packets",
    "client_to_server_bytes",
    "server_to_client_packets",
    "server_to_client_bytes",
    "vlan_id",
    "tunnel",
)


def empty_frame(columns: tuple[tuple[str, str, str], ...]):
    """An empty DataFrame with the table's columns and dtypes."""
    import pandas as pd

    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype, _ in columns})


SESSION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("capture", "string", "capture file name (or 'merged' with --merge)"),
    ("session_id", "string", "call id, unique within the run (e.g. s1)"),
    ("service", "string", "signature id of the call's service (zoom, teams ... or webrtc)"),
    ("start", TIME, "first media packet of the call"),
    ("end", TIME, "last media packet of the call"),
    ("duration_s", "float64", "end - start in seconds"),
    ("client_ip", "string", "address of this machine's side of the call"),
    ("media_flows", "int64", "flows carrying the call's media"),
    ("peers", "string", "';'-separated remote media endpoints (ip:port)"),
    ("is_p2p", "boolean", "media went directly to another participant, not via the service's servers"),
    ("relay_servers", "string", "';'-separated media/TURN servers of the service (ip:port)"),
    ("bytes_sent", "int64", "IP-layer bytes the client sent on the call's media flows inside the window"),
    ("bytes_received", "int64", "IP-layer bytes the client received on them inside the window"),
    ("audio_streams", "int64", "media streams judged audio"),
    ("video_streams", "int64", "media streams judged video"),
    ("screen_streams", "int64", "media streams judged screen sharing"),
)

DESTINATION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("capture", "string", "capture file name"),
    ("session_id", "string", "call the row belongs to; empty for activity outside any call"),
    ("destination", "string", "server name, else the server address"),
    ("server_ips", "string", "';'-separated addresses this destination used"),
    ("service", "string", "signature id, or empty when unknown"),
    ("organisation", "string", "organisation operating the destination"),
    ("kind", "string", "conferencing, telemetry, other, or empty"),
    ("category", "string", "signature category"),
    ("flows", "int64", "flows to this destination with packets inside the window"),
    ("bytes_sent", "int64", "IP-layer bytes sent by this machine inside the window"),
    ("bytes_received", "int64", "IP-layer bytes received inside the window"),
    ("packets_sent", "int64", "packets sent inside the window"),
    ("packets_received", "int64", "packets received inside the window"),
    ("first_seen", TIME, "first packet inside the window"),
    ("last_seen", TIME, "last packet inside the window"),
    ("during_call", "boolean", "the row is about a call window (session_id set)"),
    ("evidence", "string", "the evidence of the flows' verdicts, strongest first"),
)

MEDIA_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("capture", "string", "capture file name"),
    ("session_id", "string", "call the stream belongs to"),
    ("flow_id", "int64", "flow carrying the stream"),
    ("direction", "string", "sent (client to server) or received"),
    ("ssrc", "int64", "RTP synchronisation source (or the vendor's equivalent)"),
    ("media_kind", "string", "audio, video, screen, or empty when the evidence does not allow"),
    ("payload_type", "int64", "RTP payload type (the most common one of the stream)"),
    ("packets", "int64", "RTP packets received for the stream"),
    ("bytes", "int64", "IP-layer bytes of those packets"),
    ("duration_s", "float64", "last - first packet of the stream in seconds"),
    ("bitrate_kbps", "float64", "IP-layer bit rate over the stream's duration"),
    ("lost_packets", "int64", "expected - received, from RTP sequence numbers (never negative)"),
    ("loss_rate", "float64", "lost_packets / expected packets"),
    ("jitter_ms", "float64", "RFC 3550 §6.4.1 interarrival jitter at the end of the stream"),
)

#: The call-window rule's default longest silence inside one call (``sessions.CallOptions``),
#: which the RTP collector's stream segments follow (``collect.RtpCollector``). Kept here, beside
#: the activity buckets, so the packet path reads it without importing the call stage.
CALL_MAX_GAP_S = 60.0

# The per-flow activity the call stage reads: IP-layer bytes and packets per flow per time bucket
# (ACTIVITY_BUCKET_NS), so bytes can be counted inside a call window, not over the whole flow.
ACTIVITY_BUCKET_NS = 100_000_000
ACTIVITY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("capture", "string", "capture file name"),
    ("flow_id", "int64", "flow"),
    ("bucket_ns", "int64", "start of the 100 ms bucket, ns since the epoch"),
    ("first_ns", "int64", "first packet of the flow inside the bucket"),
    ("last_ns", "int64", "last packet of the flow inside the bucket"),
    ("client_to_server_packets", "int64", "packets the client sent in the bucket"),
    ("client_to_server_bytes", "int64", "IP-layer bytes the client sent in the bucket"),
    ("server_to_client_packets", "int64", "packets the server sent in the bucket"),
    ("server_to_client_bytes", "int64", "IP-layer bytes the server sent in the bucket"),
)

# Per RTP packet of candidate media flows (header fields are clear even under SRTP, RFC 3711 §3.1).
RTP_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("capture", "string", "capture file name"),
    ("flow_id", "int64", "flow"),
    ("from_client", "bool", "sent by the flow's client"),
    ("ts_ns", "int64", "arrival time, ns since the epoch"),
    ("ssrc", "int64", "RTP SSRC"),
    ("seq", "int64", "RTP sequence number (16 bits)"),
    ("rtp_ts", "int64", "RTP timestamp (32 bits)"),
    ("payload_type", "int64", "RTP payload type (7 bits)"),
    ("marker", "bool", "RTP marker bit"),
    ("rtp_len", "int64", "bytes from the RTP header to the end of the datagram"),
    ("ip_bytes", "int64", "IP-layer bytes of the packet"),
    ("zoom_type", "int64", "Zoom inner media type byte (15 audio, 16 video, 13/30 screen ...), -1 if not Zoom"),
)

# The call stage's RTP input after the collector's fold (inspector.media_stats.RunningStreams):
# one row per stream *segment* (a stream's packets between silences longer than the call gap), so
# memory grows with streams, not packets. Scalar columns here; the frame also carries the object
# columns ``jitter`` (float64 array, RFC 3550 jitter per CANDIDATE_CLOCK_RATES entry, timestamp
# units), ``sketch`` (uint32 array, bottom-k RTP timestamp hashes), ``payload_types`` and
# ``zoom_types`` ({value: packets}).
RTP_SEGMENT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("capture", "string", "capture file name"),
    ("flow_id", "int64", "flow"),
    ("from_client", "bool", "sent by the flow's client"),
    ("ssrc", "int64", "RTP SSRC"),
    ("zoom_fec", "bool", "Zoom FEC (payload type 110 inside Zoom's encapsulation): its own stream"),
    ("packets", "int64", "RTP packets of the segment"),
    ("ip_bytes", "int64", "IP-layer bytes of those packets"),
    ("rtp_bytes", "int64", "bytes from the RTP headers to the ends of the datagrams"),
    ("marker_packets", "int64", "packets with the RTP marker bit"),
    ("timestamps", "int64", "distinct RTP timestamps (a repeat within 4 packets is not new)"),
    ("first_ns", "int64", "first arrival, ns since the epoch"),
    ("last_ns", "int64", "last arrival"),
    ("unwrapped_first", "int64", "RTP timestamp unwrapped along the stream, at the first arrival"),
    ("unwrapped_last", "int64", "the same at the last arrival"),
    ("join_first_ns", "int64", "arrival of the segment's first packet (capture order)"),
    ("join_first_rtp_ts", "int64", "its RTP timestamp"),
    ("join_last_ns", "int64", "arrival of the segment's last packet (capture order)"),
    ("join_last_rtp_ts", "int64", "its RTP timestamp"),
    ("seq_low", "int64", "lowest extended sequence number (RFC 3550 A.1, along the stream)"),
    ("seq_high", "int64", "highest extended sequence number"),
    ("seq_distinct", "int64", "packets whose sequence number the stream had not seen"),
    ("reordered", "int64", "of those, packets that arrived after a higher sequence number"),
    ("jitter_steps", "int64", "packet pairs folded into the jitter (packets - 1)"),
    ("size_ge_300", "int64", "packets with an RTP size of at least 300 bytes"),
    ("size_below_300", "int64", "largest RTP size under 300 bytes, -1 if none"),
    ("size_from_300", "int64", "smallest RTP size of at least 300 bytes (int64 max if none)"),
    ("size_ge_400", "int64", "packets with an RTP size of at least 400 bytes"),
    ("size_below_400", "int64", "largest RTP size under 400 bytes, -1 if none"),
    ("size_from_400", "int64", "smallest RTP size of at least 400 bytes (int64 max if none)"),
    ("sketch_full", "bool", "the segment had more distinct timestamps than its sketch holds"),
)

# RTCP after the collector's parse (media_stats.RunningReports): one row per report segment.
RTCP_REPORT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("capture", "string", "capture file name"),
    ("flow_id", "int64", "flow"),
    ("from_client", "bool", "RTCP sent by the flow's client"),
    ("ssrc", "int64", "SSRC the report blocks are about"),
    ("first_ns", "int64", "first report of the segment"),
    ("last_ns", "int64", "last report of the segment"),
    ("cumulative_lost", "int64", "largest cumulative loss reported (RFC 3550 §6.4.1)"),
)
