"""Call windows: which calls happened, with which service, from which machine, when.

A call is detected from its media, never from signalling (a client keeps its signalling and
telemetry connections open all day). The rule, with ``CallOptions`` defaults:

1. **Media flows** are flows the classifier judged a service's media: kind ``conferencing`` with
   role ``media`` or ``relay`` *and* media-capable (UDP, a media app_protocol, or a ``payload:``
   evidence item), or service ``webrtc`` (generic STUN/DTLS/RTP), or kind ``conferencing`` with a
   media app_protocol (``rtp``, ``rtcp``, ``zoom-media``, ``stun``, ``turn``, ``dtls``). A TCP
   flow whose only evidence is the service's address range is not media: a vendor's media ranges
   also serve its TLS web and signalling (webex.pcap: 15 TLS/443 connections to Webex's
   published ranges with 4-12 packets each, a join's control traffic, not a call), while real
   media over TCP (TURN-TCP/TLS fallback, RFC 6062) shows STUN/TURN framing that a payload
   detector names. Weakness: a vendor's proprietary media over TLS/443 with no detector is missed.
2. They are grouped per (capture, this machine's address, service); with ``merge=True`` the
   captures form one timeline and the capture is left out of the key.
3. In each group, the flows' 100 ms activity buckets (``schema.ACTIVITY_COLUMNS``) are sorted by
   time; a silence longer than ``max_gap_s`` (**60 s**) on *every* media flow of the group starts a
   new call. Shorter gaps and ICE restarts (new media flows on new ports, RFC 8445 §2.4) stay one
   call, because the new flows join the same group.
4. A candidate shorter than ``min_duration_s`` (**2 s**) or with fewer than ``min_packets``
   (**20**) media packets both ways is not a call: a lone STUN connectivity probe or a
   pre-call network test. Nor is one whose busiest second (counted by the buckets' first
   packet) has fewer than ``min_peak_packets_per_s`` (**10**) media packets: audio alone sends
   50 packets/s with 20 ms frames (the WebRTC default ptime, RFC 7587 §4.2 allows 2.5-120 ms),
   while STUN keep-alives and consent checks (RFC 7675 §5.1, every ~5 s) that can run for hours
   never reach it. Weakness: a call whose media never exceeds 10 packets/s in any second (audio
   with 120 ms frames and DTX, muted from the first second) is missed.
5. Generic ``webrtc`` media overlapping one named service's media from the same machine is
   folded into that service's call (``fold_generic_media``).
6. Session ids ``s1``, ``s2`` ... are numbered by start time over the whole run.

Why 60 s: a client in a call keeps its media path alive even when muted with video off: RTCP
every few seconds (RFC 3550 §6.2), STUN consent checks every ~5 s whose absence ends consent after
30 s (RFC 7675 §5.1), Zoom's keep-alive types (facts §2.1). A minute without a single packet on any
media flow therefore means the media path is gone, while reconnects after a network change (ICE
restart) take seconds. Weakness: two calls of the same service from the same machine less than a
minute apart read as one call; a client that sends nothing at all while on hold for over a minute
reads as two calls.

This machine: the flow's client is taken as this machine, unless the server address is one of
this capture's *local hosts* and the client address is not (then the flow is swapped: a peer
started it, typical for P2P media). Local hosts are the client addresses of flows that evidently
went from a machine under observation to a server: DNS/TLS/QUIC/HTTP flows, flows with a server
name, and flows the classifier attributed to a named service's servers without P2P evidence (a
client resolves, names and contacts its servers; peers and scanners reaching in do not).
Weakness: in a capture from a gateway every LAN host is local, and a P2P flow between two of
them keeps the side that started it; a machine serving TLS to the outside makes its clients
local hosts.

``build_calls`` is the stage's entry point; media streams are ``inspector.media``, destinations
during each call ``inspector.destinations``, the terminal answer ``inspector.report``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np
import pandas as pd

from inspector.destinations import MERGED_CAPTURE, destinations_table
from inspector.media import media_table
from inspector.schema import (
    ACTIVITY_COLUMNS,
    FLOW_COLUMNS,
    RTP_COLUMNS,
    SESSION_COLUMNS,
    empty_frame,
)

#: app_protocol values that carry real-time media or its connectivity checks (facts §3.1-§3.4).
MEDIA_APP_PROTOCOLS = frozenset({"rtp", "rtcp", "zoom-media", "stun", "turn", "dtls"})
MEDIA_ROLES = frozenset({"media", "relay"})
#: Protocols this machine speaks as a client towards servers: their client side is local.
CLIENT_APP_PROTOCOLS = frozenset({"dns", "tls", "quic", "http"})
CONFIDENCE_RANK = {"high": 3, "medium": 2, "low": 1}
FLOW_SESSION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("capture", "string", "real capture name (also with merge)"),
    ("flow_id", "int64", "flow"),
    ("session_id", "string", "call(s) whose media the flow carried, ';'-separated in start order"),
)


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Thresholds of the call-window rule (module docstring says why each default).

    max_gap_s       a silence longer than this on all media flows of a group starts a new call
    min_duration_s  media lasting less than this is not a call
    min_packets     media with fewer packets (both directions) is not a call
    min_peak_packets_per_s  a call has at least one second with this many media packets
    """

    max_gap_s: float = 60.0
    min_duration_s: float = 2.0
    min_packets: int = 20
    min_peak_packets_per_s: int = 10


@dataclass(frozen=True, slots=True)
class CallTables:
    """The call stage's output, each frame with exactly its schema columns and dtypes.

    sessions      ``schema.SESSION_COLUMNS``, one row per call
    destinations  ``schema.DESTINATION_COLUMNS``, per call and destination plus outside-call rows
    media         ``schema.MEDIA_COLUMNS``, one row per (flow, direction, SSRC) of a call
    flow_session  ``FLOW_SESSION_COLUMNS``: media flows and the call(s) they belong to
    """

    sessions: pd.DataFrame
    destinations: pd.DataFrame
    media: pd.DataFrame
    flow_session: pd.DataFrame


def _text(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as an object array of str, missing values as ""."""
    if column not in frame.columns:
        return np.full(len(frame), "", dtype=object)
    return frame[column].astype(object).where(frame[column].notna(), "").astype(str).to_numpy(dtype=object)


def _ints(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.zeros(len(frame), dtype=np.int64)
    return frame[column].fillna(0).to_numpy(dtype=np.int64)


def _normalise(frame: pd.DataFrame | None, columns) -> pd.DataFrame:
    if frame is None or len(frame) == 0:
        return empty_frame(columns)
    return frame.reset_index(drop=True)


#: Where a peer on this machine's network (or behind the same carrier NAT) sits, never a
#: service's server: RFC 1918, RFC 4193 unique-local, link-local (RFC 3927, RFC 4291 §2.5.6) and
#: RFC 6598 shared address space. Python's ``is_private`` is not used: it also covers the
#: documentation ranges (RFC 5737), which stand for public addresses in examples and tests.
LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
              "fc00::/7", "fe80::/10")
)  # fmt: skip


def _is_private(address: str) -> bool:
    """RFC 1918 / RFC 4193 / link-local / RFC 6598 shared space (``LOCAL_NETWORKS``)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in LOCAL_NETWORKS)


def endpoint_text(address: str, port: int) -> str:
    """``ip:port``, with IPv6 addresses in brackets (RFC 3986 §3.2.2)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _endpoints_text(addresses, ports) -> str:
    """';'-joined distinct ``ip:port`` endpoints in address order (IPv4 before IPv6)."""
    pairs = {(str(a), int(p)) for a, p in zip(addresses, ports)}

    def key(pair: tuple[str, int]) -> tuple:
        try:
            ip = ipaddress.ip_address(pair[0])
            return (ip.version, int(ip), pair[1], "")
        except ValueError:
            return (9, 0, pair[1], pair[0])

    return ";".join(endpoint_text(a, p) for a, p in sorted(pairs, key=key))


#: Evidence labels that identify the flow's *server* as the service's (classify.py item labels):
#: its name (sni, quic-sni, http-host, certificate, dns), its address range or its port.
SERVER_EVIDENCE = ("sni:", "quic-sni:", "http-host:", "certificate:", "dns:", "cidr:", "port:")
#: Payloads only ever exchanged with a server: Zoom's outer SFU header is only on client-server
#: (MMR) flows (facts §2.1); Discord's IP discovery is asked of the voice server the gateway
#: assigned (facts §1.11, Discord voice-connections docs).
SERVER_PAYLOADS = ("payload:zoom-media", "payload:discord-ip-discovery")


def _has_payload_evidence(evidence: str) -> bool:
    """The verdict rests on a payload detector (``payload:`` item), not only on names/ranges."""
    return any(item.strip().startswith("payload:") for item in evidence.split(";"))


def server_identified(evidence: str) -> bool:
    """The verdict's evidence names or places the remote server, not only the payload."""
    items = [item.strip() for item in evidence.split(";")]
    return any(item.startswith(SERVER_EVIDENCE + SERVER_PAYLOADS) for item in items)


def flow_sides(flows: pd.DataFrame) -> pd.DataFrame:
    """Per flow: which side is this machine, the remote end, and whether the flow is call media.

    Columns: capture, flow_id, local_ip, remote_ip, remote_port, swapped (this machine is the
    flow's server), destination, service, organisation, kind, category, role, evidence,
    confidence_rank, is_media, is_p2p. The local-host rule is in the module docstring.

    ``is_p2p`` (media flows only, never with role ``relay``): evidence of a P2P attribution
    (``p2p-stun`` from the classifier's STUN rule, facts §1.15; Zoom's ``zoom-p2p`` detector,
    facts §2.2); or a named service's media whose verdict has nothing identifying the remote as
    the service's server (``server_identified``: payload evidence only, e.g. Teams' MS-STUN to a
    participant's public address); or generic ``webrtc`` media to a private or shared address.
    Weakness: generic WebRTC to a public peer address is indistinguishable from an SFU and counts
    as a server; a service server outside the signature's ranges, reached by address only, reads
    as a peer.
    """
    captures = _text(flows, "capture")
    client_ip = _text(flows, "client_ip")
    server_ip = _text(flows, "server_ip")
    app = _text(flows, "app_protocol")
    server_name = _text(flows, "server_name")
    service = _text(flows, "service")
    kind = _text(flows, "kind")
    role = _text(flows, "role")
    evidence = _text(flows, "evidence")
    client_port = _ints(flows, "client_port")
    server_port = _ints(flows, "server_port")

    p2p_evidence = np.array(["p2p-stun" in e or "zoom-p2p" in e for e in evidence], dtype=bool)
    identified = np.array([server_identified(e) for e in evidence], dtype=bool)
    named = (service != "") & (service != "webrtc")
    named_server = named & identified & ~p2p_evidence
    initiated = np.isin(app, list(CLIENT_APP_PROTOCOLS)) | (server_name != "") | named_server
    local_hosts = {(c, ip) for c, ip, ok in zip(captures, client_ip, initiated) if ok}
    swapped = np.array(
        [(c, s) in local_hosts and (c, cl) not in local_hosts for c, cl, s in zip(captures, client_ip, server_ip)],
        dtype=bool,
    )
    local_ip = np.where(swapped, server_ip, client_ip)
    remote_ip = np.where(swapped, client_ip, server_ip)
    remote_port = np.where(swapped, client_port, server_port)
    # A DNS flow's server_name is the name looked up (name_source dns-query), not the resolver's.
    looked_up = _text(flows, "name_source") == "dns-query"
    destination = np.where(swapped | (server_name == "") | looked_up, remote_ip, server_name)

    conferencing = kind == "conferencing"
    transport = _text(flows, "transport")
    media_payload = np.array([_has_payload_evidence(e) for e in evidence], dtype=bool)
    media_capable = (transport == "udp") | np.isin(app, list(MEDIA_APP_PROTOCOLS)) | media_payload
    is_media = (conferencing & np.isin(role, list(MEDIA_ROLES)) & media_capable) | (service == "webrtc")
    is_media |= conferencing & np.isin(app, list(MEDIA_APP_PROTOCOLS))
    candidates = is_media & (service == "webrtc")
    private_remote = np.array([ok and _is_private(ip) for ok, ip in zip(candidates, remote_ip)], dtype=bool)
    peer = (role != "relay") & np.where(named, ~identified, private_remote)
    is_p2p = is_media & (p2p_evidence | peer)
    confidence = _text(flows, "confidence")
    return pd.DataFrame(
        {
            "capture": captures,
            "flow_id": _ints(flows, "flow_id"),
            "local_ip": local_ip,
            "remote_ip": remote_ip,
            "remote_port": remote_port.astype(np.int64),
            "swapped": swapped,
            "destination": destination,
            "service": service,
            "organisation": _text(flows, "organisation"),
            "kind": kind,
            "category": _text(flows, "category"),
            "role": role,
            "evidence": evidence,
            "confidence_rank": np.array([CONFIDENCE_RANK.get(c, 0) for c in confidence], dtype=np.int64),
            "is_media": is_media,
            "is_p2p": is_p2p,
        }
    )


def directed_activity(activity: pd.DataFrame, sides: pd.DataFrame) -> pd.DataFrame:
    """Activity buckets joined with their flow's sides, counted from this machine's point of view.

    Adds sent_bytes/received_bytes/sent_packets/received_packets (swapped for flows this machine
    served) and every ``flow_sides`` column.
    """
    joined = activity.merge(sides, on=["capture", "flow_id"], how="inner")
    swapped = joined["swapped"].to_numpy(dtype=bool)
    c2s_b = joined["client_to_server_bytes"].to_numpy(dtype=np.int64)
    s2c_b = joined["server_to_client_bytes"].to_numpy(dtype=np.int64)
    c2s_p = joined["client_to_server_packets"].to_numpy(dtype=np.int64)
    s2c_p = joined["server_to_client_packets"].to_numpy(dtype=np.int64)
    joined["sent_bytes"] = np.where(swapped, s2c_b, c2s_b)
    joined["received_bytes"] = np.where(swapped, c2s_b, s2c_b)
    joined["sent_packets"] = np.where(swapped, s2c_p, c2s_p)
    joined["received_packets"] = np.where(swapped, c2s_p, s2c_p)
    return joined


def _split_windows(first_ns: np.ndarray, last_ns: np.ndarray, max_gap_ns: int) -> np.ndarray:
    """Segment number per bucket (buckets sorted by first_ns): a new segment after a long silence."""
    if first_ns.size == 0:
        return np.zeros(0, dtype=np.int64)
    reach = np.maximum.accumulate(last_ns)
    new = np.zeros(first_ns.size, dtype=bool)
    new[1:] = first_ns[1:] - reach[:-1] > max_gap_ns
    return np.cumsum(new)


def fold_generic_media(frame: pd.DataFrame, max_gap_ns: int) -> np.ndarray:
    """The service each media bucket's call is grouped under (``call_service``).

    A generic ``webrtc`` media flow (STUN/DTLS/RTP nothing named) whose activity overlaps, within
    ``max_gap_ns``, the media flows of exactly one named service from the same machine (and scope)
    is that service's call: a client's TURN or peer flows that escaped attribution (the
    classifier's P2P rule, facts §1.15, only covers STUN to a named server). Weakness: an
    unrelated WebRTC call (a browser tab) running at the same time as one named call is folded
    into it; with two named services at once the flow stays its own ``webrtc`` call.
    """
    services = frame["service"].to_numpy(dtype=object).copy()
    generic = services == "webrtc"
    if not generic.any() or generic.all():
        return services
    spans = (
        frame.groupby(["scope", "local_ip", "capture", "flow_id"], sort=False)
        .agg(service=("service", "first"), first_ns=("first_ns", "min"), last_ns=("last_ns", "max"))
        .reset_index()
    )
    named = spans[spans["service"] != "webrtc"]
    new_service: dict[tuple, str] = {}
    for flow in spans[spans["service"] == "webrtc"].itertuples():
        near = named[
            (named["scope"] == flow.scope)
            & (named["local_ip"] == flow.local_ip)
            & (named["first_ns"] <= flow.last_ns + max_gap_ns)
            & (named["last_ns"] >= flow.first_ns - max_gap_ns)
        ]
        candidates = set(near["service"])
        if len(candidates) == 1:
            new_service[(flow.capture, flow.flow_id)] = candidates.pop()
    if not new_service:
        return services
    keys = zip(frame["capture"].to_numpy(dtype=object), frame["flow_id"].to_numpy(dtype=np.int64))
    return np.array([new_service.get((c, int(f)), s) for (c, f), s in zip(keys, services)], dtype=object)


def call_windows(media_activity: pd.DataFrame, merge: bool, options: CallOptions) -> pd.DataFrame:
    """Call windows from the media flows' directed activity (the rule in the module docstring).

    Returns one row per bucket that belongs to a call: the bucket's columns plus ``scope``
    (capture, or "merged"), ``call_service`` (``fold_generic_media``), ``window`` (a key) and
    ``start_ns``/``end_ns`` of its call; buckets of rejected candidates are dropped.
    """
    if len(media_activity) == 0:
        return media_activity.assign(scope=[], call_service=[], window=[], start_ns=[], end_ns=[])
    max_gap_ns = int(options.max_gap_s * 1e9)
    frame = media_activity.copy()
    frame["scope"] = MERGED_CAPTURE if merge else frame["capture"].astype(object)
    frame["call_service"] = fold_generic_media(frame, max_gap_ns)
    frame = frame.sort_values(["scope", "local_ip", "call_service", "first_ns", "last_ns"], kind="stable")
    segments = np.zeros(len(frame), dtype=np.int64)
    group_ids = frame.groupby(["scope", "local_ip", "call_service"], sort=False).ngroup().to_numpy()
    first = frame["first_ns"].to_numpy(dtype=np.int64)
    last = frame["last_ns"].to_numpy(dtype=np.int64)
    # Rows are sorted by group then time, so each group is one contiguous run.
    bounds = np.flatnonzero(np.diff(group_ids)) + 1
    for lo, hi in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(frame)]))):
        segments[lo:hi] = _split_windows(first[lo:hi], last[lo:hi], max_gap_ns)
    frame["window"] = group_ids * (1 << 32) + segments
    frame["packets"] = frame["sent_packets"] + frame["received_packets"]
    frame["second"] = frame["first_ns"] // 1_000_000_000
    per = frame.groupby("window").agg(
        start_ns=("first_ns", "min"), end_ns=("last_ns", "max"), packets=("packets", "sum")
    )
    per["peak"] = frame.groupby(["window", "second"])["packets"].sum().groupby(level="window").max()
    min_ns = int(options.min_duration_s * 1e9)
    keep = per[
        (per["end_ns"] - per["start_ns"] >= min_ns)
        & (per["packets"] >= options.min_packets)
        & (per["peak"] >= options.min_peak_packets_per_s)
    ]
    frame = frame[frame["window"].isin(keep.index)].drop(columns=["packets", "second"])
    return frame.merge(keep[["start_ns", "end_ns"]], left_on="window", right_index=True, how="left")


def _sessions_frame(rows: dict[str, list], media: pd.DataFrame) -> pd.DataFrame:
    if not rows["session_id"]:
        return empty_frame(SESSION_COLUMNS)
    counts = {k: [] for k in ("audio_streams", "video_streams", "screen_streams")}
    for sid in rows["session_id"]:
        kinds = media.loc[media["session_id"] == sid, "media_kind"]
        counts["audio_streams"].append(int((kinds == "audio").sum()))
        counts["video_streams"].append(int((kinds == "video").sum()))
        counts["screen_streams"].append(int((kinds == "screen").sum()))
    data = {**rows, **counts}
    start = np.asarray(data.pop("start_ns"), dtype=np.int64)
    end = np.asarray(data.pop("end_ns"), dtype=np.int64)
    data["start"] = pd.to_datetime(start, unit="ns", utc=True)
    data["end"] = pd.to_datetime(end, unit="ns", utc=True)
    data["duration_s"] = (end - start) / 1e9
    frame = pd.DataFrame({name: pd.Series(data[name]) for name, _, _ in SESSION_COLUMNS})
    return frame.astype({name: dtype for name, dtype, _ in SESSION_COLUMNS})


def build_calls(
    flows: pd.DataFrame | None,
    activity: pd.DataFrame | None,
    rtp: pd.DataFrame | None,
    rtcp: pd.DataFrame | None,
    merge: bool = False,
    options: CallOptions = CallOptions(),
) -> CallTables:
    """Calls, their media streams and the destinations during each call (module docstring rule).

    flows     ``schema.FLOW_COLUMNS`` with the classifier's verdicts (all captures of the run)
    activity  ``schema.ACTIVITY_COLUMNS``
    rtp       ``schema.RTP_COLUMNS`` (rows of flows that are not call media are ignored)
    rtcp      capture, flow_id, from_client, ts_ns, payload: RTCP of those flows (may be None)
    merge     treat all captures as one timeline (capture "merged" in sessions/destinations/media)
    """
    flows = _normalise(flows, FLOW_COLUMNS)
    activity = _normalise(activity, ACTIVITY_COLUMNS)
    rtp = _normalise(rtp, RTP_COLUMNS)
    sides = flow_sides(flows)
    directed = directed_activity(activity, sides)
    buckets = call_windows(directed[directed["is_media"]], merge, options)

    windows = (
        buckets.groupby("window")
        .agg(
            scope=("scope", "first"),
            client_ip=("local_ip", "first"),
            service=("call_service", "first"),
            start_ns=("start_ns", "first"),
            end_ns=("end_ns", "first"),
        )
        .sort_values(["start_ns", "scope", "client_ip", "service"], kind="stable")
    )
    windows["session_id"] = [f"s{i}" for i in range(1, len(windows) + 1)]
    buckets = buckets.merge(windows[["session_id"]], left_on="window", right_index=True)
    # The call's media flows, with the window each belongs to (a flow silent for longer than
    # max_gap_s between two calls belongs to both).
    membership = (
        buckets.groupby(["capture", "flow_id", "session_id"], sort=False)
        .size()
        .reset_index()[["capture", "flow_id", "session_id"]]
        .merge(windows[["session_id", "scope", "start_ns", "end_ns"]], on="session_id")
        .merge(sides, on=["capture", "flow_id"])
    )
    media = media_table(rtp, rtcp, membership, merge)

    rows: dict[str, list] = {
        name: []
        for name in (
            "capture", "session_id", "service", "start_ns", "end_ns", "client_ip", "media_flows",
            "peers", "is_p2p", "relay_servers", "bytes_sent", "bytes_received",
        )
    }  # fmt: skip
    for window in windows.itertuples():
        members = membership[membership["session_id"] == window.session_id]
        inside = buckets[buckets["session_id"] == window.session_id]
        relays = members[~members["is_p2p"] & members["role"].isin(list(MEDIA_ROLES))]
        rows["capture"].append(window.scope)
        rows["session_id"].append(window.session_id)
        rows["service"].append(window.service)
        rows["start_ns"].append(int(window.start_ns))
        rows["end_ns"].append(int(window.end_ns))
        rows["client_ip"].append(window.client_ip)
        rows["media_flows"].append(len(members))
        rows["peers"].append(_endpoints_text(members["remote_ip"], members["remote_port"]))
        rows["is_p2p"].append(bool(members["is_p2p"].any()))
        rows["relay_servers"].append(_endpoints_text(relays["remote_ip"], relays["remote_port"]))
        rows["bytes_sent"].append(int(inside["sent_bytes"].sum()))
        rows["bytes_received"].append(int(inside["received_bytes"].sum()))
    sessions = _sessions_frame(rows, media)

    windows_for_destinations = windows.rename(columns={"scope": "capture"})[
        ["capture", "session_id", "client_ip", "start_ns", "end_ns"]
    ].reset_index(drop=True)
    destinations = destinations_table(directed, windows_for_destinations, merge)
    return CallTables(sessions, destinations, media, _flow_session(membership, windows))


def _flow_session(membership: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    if len(membership) == 0:
        return empty_frame(FLOW_SESSION_COLUMNS)
    order = {sid: i for i, sid in enumerate(windows["session_id"])}
    rows = membership[["capture", "flow_id", "session_id"]].copy()
    rows["order"] = rows["session_id"].map(order)
    rows = rows.sort_values(["capture", "flow_id", "order"], kind="stable")
    joined = rows.groupby(["capture", "flow_id"], sort=True)["session_id"].agg(";".join).reset_index()
    return joined.astype({name: dtype for name, dtype, _ in FLOW_SESSION_COLUMNS})


__all__ = [
    "CallOptions",
    "CallTables",
    "FLOW_SESSION_COLUMNS",
    "MERGED_CAPTURE",
    "build_calls",
    "call_windows",
    "fold_generic_media",
    "endpoint_text",
    "flow_sides",
    "server_identified",
]
