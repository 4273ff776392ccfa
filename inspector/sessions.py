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
import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from inspector import forked
from inspector.destinations import (
    MERGED_CAPTURE,
    destinations_table,
    expand_ranges,
    grouped_searchsorted,
    string_ranks,
)
from inspector.media import media_table
from inspector.ordering import run_starts
from inspector.schema import (
    ACTIVITY_BUCKET_NS,
    CALL_MAX_GAP_S,
    FLOW_COLUMNS,
    RTP_COLUMNS,
    SESSION_COLUMNS,
    empty_frame,
)
from inspector.summarize import FinishedFlows

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

    max_gap_s: float = CALL_MAX_GAP_S
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
    """A column as an object array of str, missing values as "".

    Each distinct value becomes one Python str that every row holding it shares: a flows table's
    text columns repeat the same few names, services and addresses, and converting an Arrow
    string column row by row made a str object per row (~50 MB for the benchmark's 59 k flows).
    """
    if column not in frame.columns:
        return np.full(len(frame), "", dtype=object)
    values = frame[column]
    if not isinstance(values.dtype, pd.StringDtype):
        values = values.astype(object).where(values.notna(), "").astype(str)
    codes, distinct = pd.factorize(values, use_na_sentinel=True)
    table = np.append(np.asarray(distinct, dtype=object), "")  # code -1 (missing) -> ""
    return table[codes]


def _ints(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.zeros(len(frame), dtype=np.int64)
    return frame[column].fillna(0).to_numpy(dtype=np.int64)


class _FrameColumns:
    """A flows DataFrame read as ``summarize.FinishedFlows`` is (``text``, ``ints``, ``len``)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def __len__(self) -> int:
        return len(self.frame)

    def coded(self, *columns: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """(distinct values, codes per column) in one code space, as ``FinishedFlows.coded``."""
        texts = [_text(self.frame, column) for column in columns]
        codes, distinct = pd.factorize(np.concatenate(texts))
        codes = codes.astype(np.int32)
        bounds = np.cumsum([0] + [t.size for t in texts])
        return np.asarray(distinct, dtype=object), [codes[lo:hi] for lo, hi in itertools.pairwise(bounds)]

    def ints(self, column: str) -> np.ndarray:
        return _ints(self.frame, column)


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


def _of_values(values: np.ndarray, function, dtype=bool) -> np.ndarray:
    """``function`` of each value (a column's distinct values: index the result by code)."""
    return np.array([function(value) for value in values.tolist()], dtype=dtype).reshape(-1)


def _pair_codes(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One integer per (first, second) value pair, equal pairs equal integers."""
    first_codes = pd.factorize(np.asarray(first, dtype=object))[0].astype(np.int64)
    second_codes = pd.factorize(np.asarray(second, dtype=object))[0].astype(np.int64)
    return first_codes * (int(second_codes.max(initial=0)) + 1) + second_codes


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


def _address_sort_keys(addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class, tiebreak) per address, ordering endpoints as ``_endpoints_text`` does: valid
    addresses by (version, integer value), each its own class; then every other string in one
    last class, ordered by port first and the string only as a tiebreak."""
    parsed = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
            parsed.append((ip.version, int(ip), address))
        except ValueError:
            parsed.append(None)
    valid = sorted((i for i, p in enumerate(parsed) if p is not None), key=lambda i: parsed[i])
    invalid = sorted((i for i, p in enumerate(parsed) if p is None), key=lambda i: addresses[i])
    klass = np.full(len(parsed), len(valid), dtype=np.int64)
    klass[valid] = np.arange(len(valid))
    tiebreak = np.zeros(len(parsed), dtype=np.int64)
    tiebreak[invalid] = np.arange(len(invalid))
    return klass, tiebreak


def _endpoints_texts(owner: np.ndarray, addresses: np.ndarray, ports: np.ndarray, n_owners: int) -> np.ndarray:
    """``_endpoints_text`` of each owner's rows (owners 0 .. n_owners - 1) at once."""
    texts = np.full(n_owners, "", dtype=object)
    if owner.size == 0:
        return texts
    codes, distinct = pd.factorize(np.asarray(addresses, dtype=object))
    distinct = np.asarray(distinct, dtype=object)
    klass, tiebreak = _address_sort_keys(distinct)
    ports = np.asarray(ports, dtype=np.int64)
    order = np.lexsort((tiebreak[codes], ports, klass[codes], owner))
    owner, codes, ports = owner[order], codes[order], ports[order]
    distinct_rows = run_starts(owner, codes, ports)  # equal endpoints of an owner are adjacent
    owner, codes, ports = owner[distinct_rows], codes[distinct_rows], ports[distinct_rows]
    endpoints = [endpoint_text(a, p) for a, p in zip(distinct[codes].tolist(), ports.tolist())]
    bounds = np.searchsorted(owner, np.arange(n_owners + 1))
    for index in np.flatnonzero(np.diff(bounds)):
        texts[index] = ";".join(endpoints[bounds[index] : bounds[index + 1]])
    return texts


#: Evidence labels that identify the flow's *server* as the service's (classify.py item labels):
#: its name (sni, quic-sni, http-host, certificate, dns), its address range or its port.
SERVER_EVIDENCE = ("sni:", "quic-sni:", "http-host:", "certificate:", "stun-realm:", "dns:", "cidr:", "port:")
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


def flow_sides(flows: pd.DataFrame | FinishedFlows) -> pd.DataFrame:
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

    ``flows``: the flows table as a DataFrame, or in compact form (``summarize.FinishedFlows``: its
    text columns come as codes into distinct values, with no frame made).
    """
    table = _FrameColumns(flows) if isinstance(flows, pd.DataFrame) else flows
    # Each text column as codes into its distinct values: the rules below run once per distinct
    # value, then spread to the flows by code (a capture has far fewer values than flows).
    capture_values, (capture,) = table.coded("capture")
    ip_values, (client_ip, server_ip) = table.coded("client_ip", "server_ip")
    app_values, (app,) = table.coded("app_protocol")
    name_values, (server_name,) = table.coded("server_name")
    service_values, (service,) = table.coded("service")
    role_values, (role,) = table.coded("role")
    evidence_values, (evidence,) = table.coded("evidence")
    client_port = table.ints("client_port")
    server_port = table.ints("server_port")

    p2p_evidence = _of_values(evidence_values, lambda e: "p2p-stun" in e or "zoom-p2p" in e)[evidence]
    identified = _of_values(evidence_values, server_identified)[evidence]
    named = _of_values(service_values, lambda s: s not in ("", "webrtc"))[service]
    webrtc = _of_values(service_values, lambda s: s == "webrtc")[service]
    named_server = named & identified & ~p2p_evidence
    unnamed = _of_values(name_values, lambda name: name == "")[server_name]
    initiated = _of_values(app_values, lambda a: a in CLIENT_APP_PROTOCOLS)[app] | ~unnamed | named_server
    # (capture, address) pairs as integers; equal pairs, equal integers.
    n_ips = np.int64(max(ip_values.size, 1))
    client_pair = capture.astype(np.int64) * n_ips + client_ip
    server_pair = capture.astype(np.int64) * n_ips + server_ip
    local_hosts = np.unique(client_pair[initiated])
    swapped = np.isin(server_pair, local_hosts) & ~np.isin(client_pair, local_hosts)
    del client_pair, server_pair, local_hosts
    local_ip = ip_values[np.where(swapped, server_ip, client_ip)]
    remote_code = np.where(swapped, client_ip, server_ip)
    remote_ip = ip_values[remote_code]
    remote_port = np.where(swapped, client_port, server_port)
    # A DNS flow's server_name is the name looked up (name_source dns-query), not the resolver's.
    source_values, (name_source,) = table.coded("name_source")
    looked_up = _of_values(source_values, lambda source: source == "dns-query")[name_source]
    destination = np.where(swapped | unnamed | looked_up, remote_ip, name_values[server_name])

    kind_values, (kind,) = table.coded("kind")
    conferencing = _of_values(kind_values, lambda k: k == "conferencing")[kind]
    transport_values, (transport,) = table.coded("transport")
    media_app = _of_values(app_values, lambda a: a in MEDIA_APP_PROTOCOLS)[app]
    media_payload = _of_values(evidence_values, _has_payload_evidence)[evidence]
    media_capable = _of_values(transport_values, lambda t: t == "udp")[transport] | media_app | media_payload
    media_role = _of_values(role_values, lambda r: r in MEDIA_ROLES)[role]
    is_media = (conferencing & media_role & media_capable) | webrtc
    is_media |= conferencing & media_app
    candidates = is_media & webrtc
    private_ip = np.zeros(ip_values.size, dtype=bool)
    checked = np.unique(remote_code[candidates])
    private_ip[checked] = _of_values(ip_values[checked], _is_private)
    private_remote = candidates & private_ip[remote_code]
    relay = _of_values(role_values, lambda r: r == "relay")[role]
    peer = ~relay & np.where(named, ~identified, private_remote)
    is_p2p = is_media & (p2p_evidence | peer)
    confidence_values, (confidence,) = table.coded("confidence")
    organisation_values, (organisation,) = table.coded("organisation")
    category_values, (category,) = table.coded("category")
    columns = {
        "capture": capture_values[capture],
        "flow_id": table.ints("flow_id"),
        "local_ip": local_ip,
        "remote_ip": remote_ip,
        "remote_port": remote_port.astype(np.int64),
        "swapped": swapped,
        "destination": destination,
        "service": service_values[service],
        "organisation": organisation_values[organisation],
        "kind": kind_values[kind],
        "category": category_values[category],
        "role": role_values[role],
        "evidence": evidence_values[evidence],
        "confidence_rank": _of_values(confidence_values, lambda c: CONFIDENCE_RANK.get(c, 0), np.int64)[confidence],
        "is_media": is_media,
        "is_p2p": is_p2p,
    }
    # Text stays in object columns, uncopied (no conversion to pandas strings and back): the call
    # stage reads them as numpy arrays. Every column is its own block, none copied.
    return pd.DataFrame(
        {
            name: pd.Series(values, dtype=object, copy=False) if values.dtype == object else values
            for name, values in columns.items()
        },
        copy=False,
    )


@dataclass(frozen=True, slots=True)
class DirectedBuckets:
    """Activity buckets of known flows counted from this machine's side, as numpy columns.

    Rows are sorted by ``side`` (row of the ``flow_sides`` frame), then by ``position`` (row of
    the activity frame), so each flow's buckets are one contiguous run. Integer keys instead of
    string joins: the call stage runs on hour-long captures with ~10^6 buckets.

    side            row of the flow in ``flow_sides``
    position        row of the bucket in the activity frame (its order)
    first_ns/last_ns  first and last packet of the flow in the bucket
    sent_bytes/received_bytes/sent_packets/received_packets  from this machine's point of view
    (the flow's client-to-server direction, swapped for flows this machine served)
    """

    side: np.ndarray
    position: np.ndarray
    first_ns: np.ndarray
    last_ns: np.ndarray
    sent_bytes: np.ndarray
    received_bytes: np.ndarray
    sent_packets: np.ndarray
    received_packets: np.ndarray

    def take(self, rows: np.ndarray) -> "DirectedBuckets":
        return DirectedBuckets(*(getattr(self, name)[rows] for name in self.__slots__))


class SideIndex:
    """Finds the row of ``sides`` for (capture, flow_id) pairs: built once per ``sides``, asked
    many times (``BucketSource`` asks once per range of flow ids).

    A (capture, flow_id) pair present twice in ``sides`` maps to its first row.
    """

    def __init__(self, sides: pd.DataFrame) -> None:
        side_codes, names = pd.factorize(sides["capture"].to_numpy(dtype=object))
        self._capture_code = {name: i for i, name in enumerate(names)}
        side_keys = (side_codes.astype(np.int64) << 40) | sides["flow_id"].to_numpy(dtype=np.int64)
        self._keys, self._first_row = np.unique(side_keys, return_index=True)

    def rows(self, captures, flow_ids: np.ndarray) -> np.ndarray:
        """Row of ``sides`` for each (capture, flow_id) pair, -1 where no flow matches."""
        flow_ids = np.asarray(flow_ids, dtype=np.int64)
        if self._keys.size == 0 or flow_ids.size == 0:
            return np.full(flow_ids.size, -1, dtype=np.int64)
        codes, uniques = pd.factorize(captures)
        mapped = np.array([self._capture_code.get(u, -1) for u in uniques] + [-1], dtype=np.int64)
        cap = mapped[codes]  # factorize gives -1 for a missing capture: the extra -1 entry
        keys = (np.maximum(cap, 0) << 40) | flow_ids
        at = np.clip(np.searchsorted(self._keys, keys), 0, self._keys.size - 1)
        found = (self._keys[at] == keys) & (cap >= 0)
        return np.where(found, self._first_row[at], -1).astype(np.int64)


def side_rows(sides: pd.DataFrame, captures, flow_ids: np.ndarray) -> np.ndarray:
    """Row of ``sides`` for each (capture, flow_id) pair, -1 where no flow matches
    (``SideIndex`` for a single question)."""
    return SideIndex(sides).rows(captures, flow_ids)


#: Buckets per chunk when the destinations are counted (``BucketSource.chunks``): the call stage
#: never holds every bucket as int64 columns at once, only the compact rows and one chunk.
CHUNK_BUCKETS = 1 << 18


def _directed(rows: np.ndarray, side: np.ndarray, position: np.ndarray, swapped: np.ndarray) -> DirectedBuckets:
    """``collect.BUCKET_DTYPE`` rows of known flows as DirectedBuckets (``side`` and
    ``position`` per row; ``swapped`` per row of ``flow_sides``)."""
    flipped = swapped[side]

    def column(name: str) -> np.ndarray:
        return rows[name].astype(np.int64)

    start = column("bucket") * ACTIVITY_BUCKET_NS
    c2s_b, s2c_b = column("client_to_server_bytes"), column("server_to_client_bytes")
    c2s_p, s2c_p = column("client_to_server_packets"), column("server_to_client_packets")
    return DirectedBuckets(
        side=side,
        position=position,
        first_ns=start + column("first_offset_ns"),
        last_ns=start + column("last_offset_ns"),
        sent_bytes=np.where(flipped, s2c_b, c2s_b),
        received_bytes=np.where(flipped, c2s_b, s2c_b),
        sent_packets=np.where(flipped, s2c_p, c2s_p),
        received_packets=np.where(flipped, c2s_p, s2c_p),
    )


def _concat_directed(parts: list[DirectedBuckets]) -> DirectedBuckets:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return DirectedBuckets(*([empty] * len(DirectedBuckets.__slots__)))
    return DirectedBuckets(*(np.concatenate([getattr(p, name) for p in parts]) for name in DirectedBuckets.__slots__))


class BucketSource:
    """The activity buckets of the flows in ``sides``, in (side, position) order, read as
    ``DirectedBuckets`` on demand: the media flows' only (``of_sides``), or every bucket in
    chunks that never split a flow (``chunks``).

    ``activity``: ``collect.ActivityBuckets`` per capture, whose ranges of flow ids
    (``partitions``) are read one at a time, so every bucket is never in memory at once. That
    needs ``sides`` in the same order as the buckets (captures in the order given, flow ids
    rising), which is how the API builds the flows table; otherwise every bucket is read and
    sorted by side once. Buckets of flows missing from ``sides`` are left out. ``position``
    numbers every bucket in (capture, flow_id, bucket) order, captures in the order given.
    """

    def __init__(self, activity, sides: pd.DataFrame) -> None:
        self.activity = [a for a in activity if len(a)]
        self.sides = sides
        self._index = SideIndex(sides)
        self.swapped = sides["swapped"].to_numpy(dtype=bool)
        self._whole: tuple | None = None
        if not self._sides_in_bucket_order():
            pieces = list(self._pieces())
            rows = np.concatenate([p[0] for p in pieces]) if pieces else None
            side = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, dtype=np.int64)
            position = np.concatenate([p[2] for p in pieces]) if pieces else np.zeros(0, dtype=np.int64)
            order = np.argsort(side, kind="stable")
            self._whole = (rows[order] if rows is not None else None, side[order], position[order])

    def _sides_in_bucket_order(self) -> bool:
        """Whether the rows of ``sides`` whose capture has buckets run in (capture as given,
        flow_id) order."""
        rank = {a.capture: i for i, a in enumerate(self.activity)}
        codes, names = pd.factorize(self.sides["capture"].to_numpy(dtype=object))
        ranks = np.array([rank.get(name, -1) for name in names] + [-1], dtype=np.int64)[codes]
        keep = ranks >= 0
        key = (ranks[keep] << 40) | self.sides["flow_id"].to_numpy(dtype=np.int64)[keep]
        return not (key[1:] < key[:-1]).any()

    def _pieces(self):
        """(rows, side, position) per range of flow ids, in order, known flows only.

        Only the piece handed out stays referenced while the caller works on it: a range's
        other arrays are dropped before the next range is read (two ranges in memory at once
        were the call stage's peak on long captures).
        """
        offset = 0
        for a in self.activity:
            for rows in a.partitions():
                n = rows.shape[0]
                side = self._sides_of(a.capture, rows["flow_id"])
                known = np.flatnonzero(side >= 0)
                if known.size == n:
                    piece = (rows, side, np.arange(offset, offset + n, dtype=np.int64))
                elif known.size:
                    piece = (rows[known], side[known], known + offset)
                else:
                    piece = None
                del rows, side, known
                if piece is not None:
                    yield piece
                piece = None
                offset += n

    def _sides_of(self, capture: str, flow: np.ndarray) -> np.ndarray:
        """The ``sides`` row of each bucket's flow (-1: unknown flow); ``flow`` sorted."""
        starts = run_starts(flow)
        found = self._index.rows(np.full(starts.size, capture, dtype=object), flow[starts])
        return np.repeat(found, np.diff(np.append(starts, flow.size)))

    def _ordered_pieces(self):
        if self._whole is None:
            yield from self._pieces()
        elif self._whole[0] is not None:
            yield self._whole

    def of_sides(self, wanted: np.ndarray, fold=None) -> DirectedBuckets:
        """The buckets of the flows whose ``sides`` row is True in ``wanted``; ``fold`` (e.g.
        ``per_second``) is applied to each range's before they are joined (a range never
        splits a flow, so folds that stay within a flow give the same rows)."""
        parts = []
        for piece in self._ordered_pieces():
            rows, side, position = piece
            piece = None
            keep = np.flatnonzero(wanted[side])
            if keep.size:
                part = _directed(rows[keep], side[keep], position[keep], self.swapped)
                parts.append(part if fold is None else fold(part))
            del rows, side, position, keep  # before the next range is read
        return _concat_directed(parts)

    def chunks(self, max_rows: int = CHUNK_BUCKETS):
        """Every bucket as DirectedBuckets of at most about ``max_rows`` rows (a flow's buckets
        are never split over two chunks)."""
        for piece in self._ordered_pieces():
            rows, side, position = piece
            piece = None
            n = side.size
            lo = 0
            while lo < n:
                hi = min(lo + max_rows, n)
                if hi < n:  # move the cut to the start of the flow holding row hi
                    hi = int(np.searchsorted(side, side[hi], side="left"))
                    if hi <= lo:  # one flow larger than a chunk: take it whole
                        hi = int(np.searchsorted(side, side[lo], side="right"))
                yield _directed(rows[lo:hi], side[lo:hi], position[lo:hi], self.swapped)
                lo = hi
            del rows, side, position  # before the next range is read

    def all(self) -> DirectedBuckets:
        return _concat_directed(list(self.chunks(1 << 62)))


def bucket_source(activity, sides: pd.DataFrame) -> BucketSource:
    """``BucketSource`` over ``activity``: ``collect.ActivityBuckets`` per capture, or a
    ``schema.ACTIVITY_COLUMNS`` frame."""
    from inspector.collect import buckets_from_frame

    if isinstance(activity, pd.DataFrame):
        activity = buckets_from_frame(activity)
    return BucketSource(activity, sides)


def directed_activity(activity, sides: pd.DataFrame) -> DirectedBuckets:
    """Every bucket of ``bucket_source(activity, sides)``, counted from this machine's side."""
    return bucket_source(activity, sides).all()


def per_second(buckets: DirectedBuckets) -> DirectedBuckets:
    """A flow's buckets within one second folded into one row (first packet, last packet, sums;
    the first bucket's position): the call windows come out the same from fewer rows (45 k
    instead of 109 k on the benchmark).

    Why the same: the rule only reads intervals (a run of one flow's buckets inside one second
    has no silence in it, let alone one of ``max_gap_s``), sums, and packets per second of the
    first packet (every bucket of a run lies in that second: buckets are 100 ms, aligned to the
    second). ``buckets``' rows are sorted by side, then position (time), so each run is adjacent.
    """
    if buckets.side.size == 0:
        return buckets
    second = buckets.first_ns // 1_000_000_000
    starts = run_starts(buckets.side, second)
    if starts.size == buckets.side.size:
        return buckets
    return DirectedBuckets(
        side=buckets.side[starts],
        position=buckets.position[starts],
        first_ns=np.minimum.reduceat(buckets.first_ns, starts),
        last_ns=np.maximum.reduceat(buckets.last_ns, starts),
        sent_bytes=np.add.reduceat(buckets.sent_bytes, starts),
        received_bytes=np.add.reduceat(buckets.received_bytes, starts),
        sent_packets=np.add.reduceat(buckets.sent_packets, starts),
        received_packets=np.add.reduceat(buckets.received_packets, starts),
    )


def _window_starts(group: np.ndarray, first_ns: np.ndarray, last_ns: np.ndarray, max_gap_ns: int) -> np.ndarray:
    """First row of each candidate window, rows sorted by (group, first_ns): a window starts with
    each group and after a silence, from the latest packet so far in the group, of more than
    ``max_gap_ns``."""
    if group.size == 0:
        return np.zeros(0, dtype=np.int64)
    reach = pd.Series(last_ns).groupby(group, sort=False).cummax().to_numpy(dtype=np.int64)
    new = np.ones(group.size, dtype=bool)
    new[1:] = (group[1:] != group[:-1]) | (first_ns[1:] - reach[:-1] > max_gap_ns)
    return np.flatnonzero(new)


def _side_spans(media: DirectedBuckets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sides with media buckets, their first first_ns, their last last_ns): rows are side-sorted."""
    starts = run_starts(media.side)
    if starts.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return (
        media.side[starts],
        np.minimum.reduceat(media.first_ns, starts),
        np.maximum.reduceat(media.last_ns, starts),
    )


def fold_generic_media(
    services: np.ndarray, scopes: np.ndarray, locals_: np.ndarray, first_ns: np.ndarray, last_ns: np.ndarray,
    max_gap_ns: int,
) -> np.ndarray:  # fmt: skip
    """The service each media flow's call is grouped under (``call_service``), one per flow.

    Arguments are per media flow: its service, scope (capture, or "merged"), this machine's
    address, and its first/last media bucket time. A generic ``webrtc`` media flow (STUN/DTLS/RTP
    nothing named) whose activity overlaps, within ``max_gap_ns``, the media flows of exactly one
    named service from the same machine (and scope) is that service's call: a client's TURN or
    peer flows that escaped attribution (the classifier's P2P rule, facts §1.15, only covers STUN
    to a named server). Weakness: an unrelated WebRTC call (a browser tab) running at the same
    time as one named call is folded into it; with two named services at once the flow stays its
    own ``webrtc`` call.

    All flows at once: per (generic flow, named service of its machine) pair, two searches count
    that service's flows reaching into the generic flow's widened interval (first/last times
    need first_ns <= last_ns, true of bucket spans).
    """
    services = np.asarray(services, dtype=object).copy()
    generic = services == "webrtc"
    if not generic.any() or generic.all():
        return services
    first_ns = np.asarray(first_ns, dtype=np.int64)
    last_ns = np.asarray(last_ns, dtype=np.int64)
    machine = _pair_codes(scopes, locals_)  # (scope, this machine's address)
    service_codes, service_names = pd.factorize(services)
    named, generics = np.flatnonzero(~generic), np.flatnonzero(generic)
    # Named media as groups (machine, service); each generic flow is asked about every group of
    # its machine: one (generic flow, group) pair per service that machine used.
    group_keys = machine[named] * len(service_names) + service_codes[named]
    group_ids, group_of_named = np.unique(group_keys, return_inverse=True)
    group_of_named = group_of_named.reshape(-1)
    group_machine = group_ids // len(service_names)
    lo = np.searchsorted(group_machine, machine[generics], side="left")
    hi = np.searchsorted(group_machine, machine[generics], side="right")
    asking, group = expand_ranges(lo, hi - lo)
    flow = generics[asking]
    # Intervals [f, l] (f <= l) overlapping [a, b]: those with f <= b minus those with l < a
    # (which all have f <= l < a <= b), counted per group by searches in (group, time) order.
    by_first = np.lexsort((first_ns[named], group_of_named))
    by_last = np.lexsort((last_ns[named], group_of_named))
    starting_before_end = grouped_searchsorted(
        group_of_named[by_first], first_ns[named][by_first], group, last_ns[flow] + max_gap_ns, "right"
    )
    ending_before_start = grouped_searchsorted(
        group_of_named[by_last], last_ns[named][by_last], group, first_ns[flow] - max_gap_ns, "left"
    )
    near = starting_before_end > ending_before_start
    near_services = np.bincount(asking[near], minlength=generics.size)
    alone = np.flatnonzero(near_services == 1)
    result = services.copy()
    hit = near & np.isin(asking, alone)
    result[flow[hit]] = service_names[group_ids[group[hit]] % len(service_names)]
    return result


@dataclass(frozen=True, slots=True)
class CallWindows:
    """Accepted call windows and the media buckets inside them.

    windows   one row per call in session order: scope, client_ip, service, start_ns, end_ns,
              session_id
    buckets   the media rows of the accepted calls (buckets, or their ``per_second`` folds),
              sorted by call group then time
    session   per bucket of ``buckets``: row of ``windows`` it belongs to
    """

    windows: pd.DataFrame
    buckets: DirectedBuckets
    session: np.ndarray


def call_windows(
    media: DirectedBuckets, sides: pd.DataFrame, merge: bool, options: CallOptions
) -> CallWindows:
    """Call windows from the media flows' directed activity (the rule in the module docstring).

    Groups are (scope, this machine's address, call service) with scope the capture (or
    "merged"); a silence longer than ``max_gap_s`` splits a group; candidates failing the
    duration, packet or peak-rate thresholds are dropped. Sessions are numbered by start time,
    then scope, client address and service.
    """
    max_gap_ns = int(options.max_gap_s * 1e9)
    flows, span_first, span_last = _side_spans(media)
    captures = sides["capture"].to_numpy(dtype=object)
    scope_of_flow = np.full(flows.size, MERGED_CAPTURE, dtype=object) if merge else captures[flows]
    local_of_flow = sides["local_ip"].to_numpy(dtype=object)[flows]
    service_of_flow = fold_generic_media(
        sides["service"].to_numpy(dtype=object)[flows], scope_of_flow, local_of_flow, span_first, span_last,
        max_gap_ns,
    )  # fmt: skip
    # Group number = rank of (scope, local_ip, call_service) in string order.
    scope_names, scope_rank = string_ranks(scope_of_flow)
    local_names, local_rank = string_ranks(local_of_flow)
    service_names, service_rank = string_ranks(service_of_flow)
    n_locals, n_services = max(local_names.size, 1), max(service_names.size, 1)
    triple_keys, group_of_flow = np.unique(
        (scope_rank * n_locals + local_rank) * n_services + service_rank, return_inverse=True
    )
    group_of_side = np.full(len(sides), -1, dtype=np.int64)
    group_of_side[flows] = group_of_flow.reshape(-1)
    group_scope = scope_names[triple_keys // (n_locals * n_services)] if triple_keys.size else scope_names
    group_local = local_names[triple_keys // n_services % n_locals] if triple_keys.size else local_names
    group_service = service_names[triple_keys % n_services] if triple_keys.size else service_names

    group = group_of_side[media.side]
    order = np.lexsort((media.position, media.last_ns, media.first_ns, group))
    group = group[order]
    # Only the columns the rule reads are put in window order; the rows inside a call are taken
    # once, at the end (a whole sorted copy of the buckets was the call stage's peak memory).
    first_ns, last_ns = media.first_ns[order], media.last_ns[order]
    starts = _window_starts(group, first_ns, last_ns, max_gap_ns)  # a window: one run
    packets = media.sent_packets[order] + media.received_packets[order]
    window_start = np.minimum.reduceat(first_ns, starts) if starts.size else starts
    window_end = np.maximum.reduceat(last_ns, starts) if starts.size else starts
    window_packets = np.add.reduceat(packets, starts) if starts.size else starts
    # Busiest second: bucket packets summed per (window, second of the first packet).
    second = first_ns // 1_000_000_000
    del first_ns, last_ns
    window_of_row = np.repeat(np.arange(starts.size), np.diff(np.append(starts, group.size)))
    second_starts = run_starts(window_of_row, second)
    per_second = np.add.reduceat(packets, second_starts) if second_starts.size else second_starts
    peak = np.zeros(starts.size, dtype=np.int64)
    if second_starts.size:
        np.maximum.at(peak, window_of_row[second_starts], per_second)
    keep = (
        (window_end - window_start >= int(options.min_duration_s * 1e9))
        & (window_packets >= options.min_packets)
        & (peak >= options.min_peak_packets_per_s)
    )
    kept = np.flatnonzero(keep)
    first_rows = starts[kept]
    windows = pd.DataFrame(
        {
            "scope": group_scope[group[first_rows]],
            "client_ip": group_local[group[first_rows]],
            "service": group_service[group[first_rows]],
            "start_ns": window_start[kept].astype(np.int64),
            "end_ns": window_end[kept].astype(np.int64),
            "candidate": kept,
        }
    ).sort_values(["start_ns", "scope", "client_ip", "service"], kind="stable")
    windows["session_id"] = [f"s{i}" for i in range(1, len(windows) + 1)]
    session_of_candidate = np.full(starts.size, -1, dtype=np.int64)
    session_of_candidate[windows["candidate"].to_numpy(dtype=np.int64)] = np.arange(len(windows))
    session = session_of_candidate[window_of_row]
    inside = np.flatnonzero(session >= 0)
    windows = windows.drop(columns="candidate").reset_index(drop=True)
    return CallWindows(windows, media.take(order[inside]), session[inside])


def _sums_per(owner: np.ndarray, values: np.ndarray, n_owners: int) -> np.ndarray:
    """Exact int64 sum of ``values`` per owner 0 .. n_owners - 1."""
    sums = np.zeros(n_owners, dtype=np.int64)
    np.add.at(sums, owner, np.asarray(values, dtype=np.int64))
    return sums


def _sessions_frame(rows: dict[str, np.ndarray], media: pd.DataFrame) -> pd.DataFrame:
    if len(rows["session_id"]) == 0:
        return empty_frame(SESSION_COLUMNS)
    session_of_stream = pd.Index(rows["session_id"]).get_indexer(media["session_id"].to_numpy(dtype=object))
    stream_kind = media["media_kind"].to_numpy(dtype=object)
    counts = {
        f"{kind}_streams": np.bincount(session_of_stream[(stream_kind == kind) & (session_of_stream >= 0)],
                                       minlength=len(rows["session_id"])).astype(np.int64)
        for kind in ("audio", "video", "screen")
    }  # fmt: skip
    data = {**rows, **counts}
    start = np.asarray(data.pop("start_ns"), dtype=np.int64)
    end = np.asarray(data.pop("end_ns"), dtype=np.int64)
    data["start"] = pd.to_datetime(start, unit="ns", utc=True)
    data["end"] = pd.to_datetime(end, unit="ns", utc=True)
    data["duration_s"] = (end - start) / 1e9
    frame = pd.DataFrame({name: data[name] for name, _, _ in SESSION_COLUMNS})
    return frame.astype({name: dtype for name, dtype, _ in SESSION_COLUMNS})


def _membership(calls: CallWindows, sides: pd.DataFrame) -> pd.DataFrame:
    """One row per (media flow, call): the flow's ``flow_sides`` columns plus session_id, scope,
    start_ns and end_ns of the call (a flow silent for longer than max_gap_s between two calls
    belongs to both). Rows in order of the flow's first bucket in the call."""
    n_sessions = max(len(calls.windows), 1)
    pairs = calls.buckets.side * n_sessions + calls.session
    _, first = np.unique(pairs, return_index=True)
    first = np.sort(first)
    side = calls.buckets.side[first]
    session = calls.session[first]
    members = sides.iloc[side].reset_index(drop=True)
    windows = calls.windows
    for column in ("session_id", "scope", "start_ns", "end_ns"):
        members[column] = windows[column].to_numpy()[session]
    members["side"] = side
    members["session"] = session
    return members


def build_calls(
    flows: pd.DataFrame | FinishedFlows | None,
    activity: pd.DataFrame | None,
    rtp: pd.DataFrame | None,
    rtcp: pd.DataFrame | None,
    merge: bool = False,
    options: CallOptions = CallOptions(),
    fork_destinations: bool = False,
) -> CallTables:
    """Calls, their media streams and the destinations during each call (module docstring rule).

    flows     ``schema.FLOW_COLUMNS`` with the classifier's verdicts (all captures of the run), as
              a DataFrame or a ``summarize.FinishedFlows``
    activity  ``collect.ActivityBuckets`` per capture, or a ``schema.ACTIVITY_COLUMNS`` frame
    rtp       the RTP collector's stream segments (``schema.RTP_SEGMENT_COLUMNS``, cut at silences
              of at most ``options.max_gap_s``) or per-packet ``schema.RTP_COLUMNS`` rows; streams
              of flows that are not call media are ignored
    rtcp      report segments (``schema.RTCP_REPORT_COLUMNS``) or whole RTCP packets (capture,
              flow_id, from_client, ts_ns, payload) of those flows (may be None)
    merge     treat all captures as one timeline (capture "merged" in sessions/destinations/media)
    fork_destinations  count the destinations in a forked process (``forked.py``) while this one
              builds the media and sessions tables (a run that may use several cores)
    """
    if flows is None or isinstance(flows, pd.DataFrame):
        flows = _normalise(flows, FLOW_COLUMNS)
    if activity is None:
        activity = []
    rtp = _normalise(rtp, RTP_COLUMNS)
    sides = flow_sides(flows)
    if isinstance(flows, FinishedFlows):
        flows.park()  # the records wait on disk until the flows table is written
    source = bucket_source(activity, sides)
    # A caller's temporaries are freed here: the buckets now live in ``source``.
    del flows, activity
    media_buckets = source.of_sides(sides["is_media"].to_numpy(dtype=bool), fold=per_second)
    calls = call_windows(media_buckets, sides, merge, options)
    del media_buckets
    windows = calls.windows
    windows_for_destinations = windows.rename(columns={"scope": "capture"})[
        ["capture", "session_id", "client_ip", "start_ns", "end_ns"]
    ].reset_index(drop=True)
    # The destinations need only the buckets, the sides and the windows: they can be counted
    # apart while the media and sessions tables are built.
    job = None
    if fork_destinations:
        job = forked.start("destinations", _destinations, source, sides, windows_for_destinations, merge)
    try:
        media, sessions, membership = _media_and_sessions(calls, sides, rtp, rtcp, merge, options)
    except BaseException:
        if job is not None:
            job.discard()
        raise
    # The call media's buckets (~40 B per media flow-second) go before the destinations are
    # counted, the other working set of the call stage.
    del calls
    if job is not None:
        destinations = job.result()
    else:
        destinations = _destinations(source, sides, windows_for_destinations, merge)
    return CallTables(sessions, destinations, media, _flow_session(membership, windows))


def _destinations(source: BucketSource, sides: pd.DataFrame, windows: pd.DataFrame, merge: bool) -> pd.DataFrame:
    return destinations_table(source.chunks(), sides, windows, merge)


def _media_and_sessions(calls: CallWindows, sides: pd.DataFrame, rtp, rtcp, merge: bool, options: CallOptions):
    """(media, sessions, membership) of the call windows."""
    windows = calls.windows
    membership = _membership(calls, sides)
    media = media_table(rtp, rtcp, membership, merge, options.max_gap_s)

    n = len(windows)
    member_session = membership["session"].to_numpy(dtype=np.int64)
    is_p2p = membership["is_p2p"].to_numpy(dtype=bool)
    relay = ~is_p2p & np.isin(membership["role"].to_numpy(dtype=object), list(MEDIA_ROLES))
    remote_ip = membership["remote_ip"].to_numpy(dtype=object)
    remote_port = membership["remote_port"].to_numpy(dtype=np.int64)
    rows = {
        "capture": windows["scope"].to_numpy(dtype=object),
        "session_id": windows["session_id"].to_numpy(dtype=object),
        "service": windows["service"].to_numpy(dtype=object),
        "start_ns": windows["start_ns"].to_numpy(dtype=np.int64),
        "end_ns": windows["end_ns"].to_numpy(dtype=np.int64),
        "client_ip": windows["client_ip"].to_numpy(dtype=object),
        "media_flows": np.bincount(member_session, minlength=n).astype(np.int64),
        "peers": _endpoints_texts(member_session, remote_ip, remote_port, n),
        "is_p2p": np.bincount(member_session[is_p2p], minlength=n) > 0,
        "relay_servers": _endpoints_texts(member_session[relay], remote_ip[relay], remote_port[relay], n),
        "bytes_sent": _sums_per(calls.session, calls.buckets.sent_bytes, n),
        "bytes_received": _sums_per(calls.session, calls.buckets.received_bytes, n),
    }
    return media, _sessions_frame(rows, media), membership


def _flow_session(membership: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """Per media flow (capture, flow_id order, strings as text): its calls, ';'-joined in
    session order."""
    if len(membership) == 0:
        return empty_frame(FLOW_SESSION_COLUMNS)
    capture_names, capture_rank = string_ranks(membership["capture"].to_numpy(dtype=object))
    flow_id = membership["flow_id"].to_numpy(dtype=np.int64)
    order = np.lexsort((membership["session"].to_numpy(dtype=np.int64), flow_id, capture_rank))
    capture_rank, flow_id = capture_rank[order], flow_id[order]
    session_ids = membership["session_id"].to_numpy(dtype=object)[order]
    starts = run_starts(capture_rank, flow_id)
    joined = session_ids[starts].copy()
    lengths = np.diff(np.append(starts, order.size))
    for run in np.flatnonzero(lengths > 1):  # a flow silent between two calls belongs to both
        joined[run] = ";".join(session_ids[starts[run] : starts[run] + lengths[run]])
    frame = pd.DataFrame(
        {"capture": capture_names[capture_rank[starts]], "flow_id": flow_id[starts], "session_id": joined}
    )
    return frame.astype({name: dtype for name, dtype, _ in FLOW_SESSION_COLUMNS})


__all__ = [
    "CallOptions",
    "CallTables",
    "FLOW_SESSION_COLUMNS",
    "MERGED_CAPTURE",
    "CallWindows",
    "DirectedBuckets",
    "build_calls",
    "call_windows",
    "BucketSource",
    "bucket_source",
    "per_second",
    "directed_activity",
    "SideIndex",
    "side_rows",
    "fold_generic_media",
    "endpoint_text",
    "flow_sides",
    "server_identified",
]
