"""The flow table: bidirectional flows across batches, with per-direction counters and expiry.

Per batch, packets are grouped by their canonical 5-tuple (plus VLAN and tunnel) with numpy; the
Python loop runs once per (flow, batch), not once per packet. Flow state carries across batches, so
results never depend on the batch size (tested with sizes 1, 7 and 65536).

Rules (documented in docs/ARCHITECTURE.md):

* **Key**: IP version, transport protocol, VLAN id, tunnel, and the two (address, port) endpoints
  in canonical order. ICMP and other port-less protocols use port 0.
* **Client**: the side that sent a TCP SYN without ACK; the receiver of a SYN+ACK; otherwise the
  sender of the first packet, unless that packet comes *from* a service port (below 1024, or a
  well-known media/signalling port) *to* a port that is not one — then the capture started
  mid-flow and the receiver is the client. Weakness: two ephemeral ports give no hint, so the
  first sender wins.
* **End**: a flow ends after ``idle_timeout_s`` without packets (default 120 s, the value nfstream
  and many flow exporters use), or when a TCP connection closed (RST, or FIN from both sides) and a
  new SYN (without ACK) arrives for the same 5-tuple; stray ACKs and retransmissions after the close
  stay in the closed flow. The same 5-tuple after either is a new flow with a new id.
* **Ids**: numbered from 1 in the order the flows' first packets appear in the capture.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Final, cast

import numpy as np

from inspector.decode import IPPROTO_TCP, IPPROTO_UDP, STATE_FLOW, DecodedBatch
from inspector.ordering import index_bits, sorted_runs

TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_ACK: Final = 0x10

# Ports at or above 1024 that are servers' (media relays, STUN/TURN, Zoom, QUIC alt ports ...),
# used only to correct the client/server guess when a capture starts mid-flow.
# Sources: IANA registry (3478/5349 STUN/TURN, 5222/5223 XMPP, 5228 Google push), facts file §1
# (Zoom 8801-8810, Teams 3478-3481, Google 19302-19309).
SERVICE_PORTS_ABOVE_1024: Final = frozenset(
    [1194, 1935, 3478, 3479, 3480, 3481, 5060, 5061, 5222, 5223, 5228, 5349, 8080, 8443]
    + list(range(8801, 8811))
    + list(range(19302, 19310))
)

DEFAULT_IDLE_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """Flow table settings.

    idle_timeout_s   a flow with no packet for this long ends; the next packet starts a new flow
    """

    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S


class Flow:
    """One bidirectional flow while it is being counted. Addresses as (hi, lo) 64-bit halves."""

    __slots__ = (
        "flow_id",
        "ip_version",
        "proto",
        "vlan_id",
        "tunnel",
        "client_hi",
        "client_lo",
        "client_port",
        "server_hi",
        "server_lo",
        "server_port",
        "client_is_a",
        "first_seen_ns",
        "last_seen_ns",
        "prev_ts_ns",  # capture clock (running max of timestamps) at the flow's last packet
        "client_to_server_packets",
        "client_to_server_bytes",
        "server_to_client_packets",
        "server_to_client_bytes",
        "fin_from_client",
        "fin_from_server",
        "rst",
        "state",  # per-flow dissection state owned by the pipeline (None when not inspected)
    )
    # For the type checker, and for mypyc-compiled readers (``inspector.native``), which then
    # read them as plain objects: FlowTable fills them with ints and bools.
    flow_id: Any
    ip_version: Any
    proto: Any
    vlan_id: Any
    tunnel: Any
    client_hi: Any
    client_lo: Any
    client_port: Any
    server_hi: Any
    server_lo: Any
    server_port: Any
    client_is_a: Any
    first_seen_ns: Any
    last_seen_ns: Any
    prev_ts_ns: Any
    client_to_server_packets: Any
    client_to_server_bytes: Any
    server_to_client_packets: Any
    server_to_client_bytes: Any
    fin_from_client: Any
    fin_from_server: Any
    rst: Any
    state: Any

    def __init__(self) -> None:
        self.state = None

    @property
    def closed(self) -> bool:
        return self.rst or (self.fin_from_client and self.fin_from_server)


#: What a dissect worker reads of an ended flow (``payloads.PayloadStage.facts`` and its
#: labeller): who talked to whom and when. The counters stay with the reading process's store.
IDENTITY_FIELDS: Final = (
    "flow_id", "ip_version", "proto", "client_hi", "client_lo", "client_port",
    "server_hi", "server_lo", "server_port", "first_seen_ns", "last_seen_ns",
)  # fmt: skip


def identity_columns(flows: list[Flow]) -> list[list[Any]]:
    """One list per ``IDENTITY_FIELDS`` over ``flows``: how ended flows travel to their dissect
    worker (``parallel.PayloadShipper``). Lists of ints pickle in C in bulk; the flows
    themselves would pickle one ``__reduce__`` call each (0.11 s to dump and 0.16 s to load the
    benchmark's 60 k flows, against 0.01 s each way as columns)."""
    columns: list[list[Any]] = [[] for _ in IDENTITY_FIELDS]
    flow_id, ip_version, proto, client_hi, client_lo, client_port = columns[:6]
    server_hi, server_lo, server_port, first_seen_ns, last_seen_ns = columns[6:]
    for f in flows:
        flow_id.append(f.flow_id)
        ip_version.append(f.ip_version)
        proto.append(f.proto)
        client_hi.append(f.client_hi)
        client_lo.append(f.client_lo)
        client_port.append(f.client_port)
        server_hi.append(f.server_hi)
        server_lo.append(f.server_lo)
        server_port.append(f.server_port)
        first_seen_ns.append(f.first_seen_ns)
        last_seen_ns.append(f.last_seen_ns)
    return columns


def flows_of_identities(columns: list[list[Any]]) -> list[Flow]:
    """The flows ``identity_columns`` shipped, with only those fields: the others are None (a
    worker never reads them) and ``state`` is None."""
    flow_id, ip_version, proto, client_hi, client_lo, client_port = columns[:6]
    server_hi, server_lo, server_port, first_seen_ns, last_seen_ns = columns[6:]
    flows: list[Flow] = []
    for i in range(len(flow_id)):
        f = Flow()
        f.flow_id = flow_id[i]
        f.ip_version = ip_version[i]
        f.proto = proto[i]
        f.vlan_id = f.tunnel = f.client_is_a = f.prev_ts_ns = None
        f.client_hi = client_hi[i]
        f.client_lo = client_lo[i]
        f.client_port = client_port[i]
        f.server_hi = server_hi[i]
        f.server_lo = server_lo[i]
        f.server_port = server_port[i]
        f.first_seen_ns = first_seen_ns[i]
        f.last_seen_ns = last_seen_ns[i]
        f.client_to_server_packets = f.client_to_server_bytes = None
        f.server_to_client_packets = f.server_to_client_bytes = None
        f.fin_from_client = f.fin_from_server = f.rst = None
        flows.append(f)
    return flows


# IANA protocol numbers (www.iana.org/assignments/protocol-numbers) for the names users know.
IP_PROTOCOL_NAMES: Final = {
    1: "icmp",
    2: "igmp",
    4: "ipip",
    6: "tcp",
    17: "udp",
    41: "ipv6",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "icmpv6",
    89: "ospf",
    103: "pim",
    112: "vrrp",
    132: "sctp",
}


def transport_name(proto: int) -> str:
    return IP_PROTOCOL_NAMES.get(proto, str(proto))


def address_text(version: int, hi: int, lo: int) -> str:
    """Textual form of an address held as two 64-bit halves (IPv4 in ``lo``)."""
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, lo.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, hi.to_bytes(8, "big") + lo.to_bytes(8, "big"))


#: Most address texts ``flow_endpoints`` keeps (~4 Python objects each); past it the cache starts
#: over. An IPv4 address is keyed by its value (an int), an IPv6 one by its halves (a tuple), so
#: ``::a.b.c.d`` and ``a.b.c.d`` stay apart.
ENDPOINT_TEXTS_KEPT: Final = 65536
_endpoint_texts: dict[object, str] = {}


def _endpoint_text(version: int, hi: int, lo: int) -> str:
    key: object = lo if version == 4 else (hi, lo)
    text = _endpoint_texts.get(key)
    if text is None:
        if len(_endpoint_texts) >= ENDPOINT_TEXTS_KEPT:
            _endpoint_texts.clear()
        text = _endpoint_texts[key] = address_text(version, hi, lo)
    return text


def flow_endpoints(f: Flow) -> tuple[str, str]:
    """(client address, server address) as text; each address's text is made once while it
    recurs (a run's flows share a few thousand addresses)."""
    client = _endpoint_text(f.ip_version, f.client_hi, f.client_lo)
    return client, _endpoint_text(f.ip_version, f.server_hi, f.server_lo)


def forget_endpoint_texts() -> None:
    """Empty ``flow_endpoints``' cache of address texts: it serves flows as they end, and the
    tables built after do not use it."""
    _endpoint_texts.clear()


def _is_service_port(port: int) -> bool:
    return port < 1024 or port in SERVICE_PORTS_ABOVE_1024


def _mix(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One round of a 64-bit multiplicative hash (splitmix64 finaliser constants)."""
    h = (h ^ v.astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
    return h ^ (h >> np.uint64(31))


def _key_bytes(rows: np.ndarray, columns: tuple[np.ndarray, ...]) -> list[bytes]:
    """The flow key of each of ``rows`` as one bytes object: the key columns' values as 8-byte
    words side by side (each column's values are kept whole, so distinct keys give distinct
    bytes). A dict key that is one object a flow, hashed and compared as one string, where a
    tuple of seven ints took eight objects and seven comparisons (~5x faster to make and look
    up for 20 k flows)."""
    words = np.empty((rows.shape[0], len(columns)), dtype=np.uint64)
    for i, column in enumerate(columns):
        words[:, i] = column[rows]
    keys = words.view(np.dtype((np.void, 8 * len(columns)))).reshape(-1).tolist()
    return cast(list[bytes], keys)  # void items become bytes


def _group_runs(keys: np.ndarray):
    """Group equal keys: (order, new_group, group_of_sorted, first_sorted) where ``order`` sorts
    the rows by key keeping capture order inside a group, ``new_group`` marks each group's first
    sorted row, ``group_of_sorted`` numbers the groups, ``first_sorted`` is where each starts."""
    order, new_group = sorted_runs(keys)
    return order, new_group, np.cumsum(new_group) - 1, np.flatnonzero(new_group)


@dataclass(slots=True)
class BatchFlows:
    """What the flow table says about one DecodedBatch.

    rows          int64[m]  the batch rows that belong to flows (state == STATE_FLOW), capture order
    flow_slot     int64[m]  index into ``flows`` for each of those rows
    from_client   bool[m]   the row's packet was sent by the flow's client
    flows         list[Flow] the flows touched by this batch
    """

    rows: np.ndarray
    flow_slot: np.ndarray
    from_client: np.ndarray
    flows: list
    _flow_ids: np.ndarray | None = field(default=None, repr=False, compare=False)

    def flow_ids(self) -> np.ndarray:
        """int64 flow id of each slot of ``flows`` (built once per batch, for every stage)."""
        if self._flow_ids is None:
            self._flow_ids = np.fromiter((f.flow_id for f in self.flows), dtype=np.int64, count=len(self.flows))
        return self._flow_ids


class FlowTable:
    """Active flows of one capture; finished flows are handed out by ``expire`` and ``finish``."""

    def __init__(self, config: FlowConfig = FlowConfig()) -> None:
        self.config = config
        self.idle_ns = int(config.idle_timeout_s * 1e9)
        self._active: dict[bytes, Flow] = {}  # by ``_key_bytes``
        self._next_id = 1
        self._finished: list[Flow] = []
        self._now_ns: int | None = None
        self._last_sweep_ns: int | None = None

    @property
    def active_count(self) -> int:
        return len(self._active)

    def active_flows(self) -> list[Flow]:
        """The flows being counted right now (a snapshot list; the Flow objects are live: read
        them on the thread that feeds the table)."""
        return list(self._active.values())

    def add(self, d: DecodedBatch) -> BatchFlows:
        """Count the flow packets of ``d``; returns which flow and direction each one is."""
        rows = np.flatnonzero(d.state == STATE_FLOW)
        m = rows.shape[0]
        if m == 0:
            empty = np.zeros(0, dtype=np.int64)
            return BatchFlows(rows, empty, np.zeros(0, dtype=bool), [])
        ver = d.ip_version[rows]
        proto = d.proto[rows]
        vlan = d.vlan_id[rows]
        tun = d.tunnel[rows]
        s_hi, s_lo, sp = d.src_hi[rows], d.src_lo[rows], d.src_port[rows]
        t_hi, t_lo, tp = d.dst_hi[rows], d.dst_lo[rows], d.dst_port[rows]
        ts = d.ts_ns[rows]
        ip_bytes = d.ip_bytes[rows]
        flags = d.tcp_flags[rows]

        # Canonical endpoint order: "a" is the smaller (address, port).
        src_is_a = (s_hi < t_hi) | (
            (s_hi == t_hi) & ((s_lo < t_lo) | ((s_lo == t_lo) & (sp <= tp)))
        )
        a_hi = np.where(src_is_a, s_hi, t_hi)
        a_lo = np.where(src_is_a, s_lo, t_lo)
        a_p = np.where(src_is_a, sp, tp)
        b_hi = np.where(src_is_a, t_hi, s_hi)
        b_lo = np.where(src_is_a, t_lo, s_lo)
        b_p = np.where(src_is_a, tp, sp)

        meta = (ver.astype(np.uint64) << np.uint64(56)) | (proto.astype(np.uint64) << np.uint64(48)) | (
            vlan.astype(np.uint64) << np.uint64(8)
        ) | tun.astype(np.uint64)
        ports = (a_p.astype(np.uint64) << np.uint64(16)) | b_p.astype(np.uint64)
        h = np.full(m, 0x243F6A8885A308D3, dtype=np.uint64)
        for col in (meta, a_hi, a_lo, b_hi, b_lo, ports):
            h = _mix(h, col)

        # Grouped by the hash's top bits, which leave a row index room in a 64-bit word
        # (``ordering.stable_argsort``); two keys that share them fail the check below.
        order, new_group, group_of_sorted, first_sorted = _group_runs(h >> np.uint64(index_bits(m)))
        # Guard against hash collisions: inside a group every row must carry the key of the row
        # before it (so all carry the group's first key): one gather per key column.
        inside = ~new_group[1:]
        collided = False
        for column in (meta, a_hi, a_lo, b_hi, b_lo, ports):
            ordered = column[order]
            if (inside & (ordered[1:] != ordered[:-1])).any():
                collided = True
                break
        if collided:
            keys = np.rec.fromarrays([meta, a_hi, a_lo, b_hi, b_lo, ports])
            _, inverse = np.unique(keys, return_inverse=True)
            order, new_group, group_of_sorted, first_sorted = _group_runs(inverse.reshape(-1))

        # The capture clock: the running maximum of timestamps in capture order. Idle gaps are
        # measured on it, so timestamps that jump backwards never split or merge flows
        # differently depending on how the capture is cut into batches.
        clock = np.maximum.accumulate(ts)
        if self._now_ns is not None:
            clock = np.maximum(clock, self._now_ns)
        ts_s = ts[order]
        clock_s = clock[order]
        from_a_s = src_is_a[order]
        flags_s = flags[order]
        is_tcp_s = proto[order] == IPPROTO_TCP
        # Idle splits inside the batch: gap to the previous packet of the same key.
        split = new_group.copy()
        gap = np.zeros(m, dtype=np.int64)
        gap[1:] = clock_s[1:] - clock_s[:-1]
        split |= (~new_group) & (gap > self.idle_ns)

        # TCP groups that hold a bare SYN may need a close-then-reopen split: done per packet.
        syn_only_s = is_tcp_s & ((flags_s & (TCP_SYN | TCP_ACK)) == TCP_SYN)
        group_bounds = np.append(first_sorted, m)
        group_keys = _key_bytes(order[first_sorted], (meta, a_hi, a_lo, a_p, b_hi, b_lo, b_p))
        # Only a bare SYN after the group's first packet in this batch can split it here (a SYN
        # opening the batch's run is checked against the stored flow in the segment loop).
        late_syn = syn_only_s & ~new_group
        if late_syn.any():
            for g in np.unique(group_of_sorted[late_syn]).tolist():
                self._tcp_reopen_splits(group_keys[g], int(group_bounds[g]), int(group_bounds[g + 1]), from_a_s, flags_s, syn_only_s, split)

        seg_start = np.flatnonzero(split)
        seg_bounds = np.append(seg_start, m)
        seg_of_sorted = np.cumsum(split) - 1
        n_seg = seg_start.shape[0]

        # Per-segment sums (reduceat over contiguous runs of the sorted order).
        fa = from_a_s.astype(np.int64)
        by_s = ip_bytes[order]
        pkts_a = np.add.reduceat(fa, seg_start)
        pkts_all = np.diff(seg_bounds)
        bytes_a = np.add.reduceat(by_s * fa, seg_start)
        bytes_all = np.add.reduceat(by_s, seg_start)
        ts_min = np.minimum.reduceat(ts_s, seg_start)
        ts_max = np.maximum.reduceat(ts_s, seg_start)
        clock_last = clock_s[seg_bounds[1:] - 1]
        fin_s = ((flags_s & TCP_FIN) != 0) & is_tcp_s
        rst_s = ((flags_s & TCP_RST) != 0) & is_tcp_s
        fin_a = np.maximum.reduceat((fin_s & from_a_s).astype(np.int8), seg_start).astype(bool)
        fin_b = np.maximum.reduceat((fin_s & ~from_a_s).astype(np.int8), seg_start).astype(bool)
        rst_any = np.maximum.reduceat(rst_s.astype(np.int8), seg_start).astype(bool)

        # Python loop once per segment.
        seg_group = group_of_sorted[seg_start]
        seg_first_row = order[seg_start]
        seg_is_group_first = new_group[seg_start]
        seg_flow: list[Flow | None] = [None] * n_seg
        new_segments: list[int] = []
        seg_first_syn = syn_only_s[seg_start].tolist()
        seg_first_clock = clock_s[seg_start].tolist()
        seg_group_l: list[int] = seg_group.tolist()
        for s, (g, is_first) in enumerate(zip(seg_group_l, seg_is_group_first.tolist())):
            if not is_first:
                new_segments.append(s)
                continue
            flow = self._active.get(group_keys[g])
            if flow is not None:
                gap0 = seg_first_clock[s] - flow.prev_ts_ns
                reopened = flow.closed and seg_first_syn[s]
                if gap0 > self.idle_ns or reopened:
                    del self._active[group_keys[g]]
                    self._finished.append(flow)
                    flow = None
            if flow is None:
                new_segments.append(s)
            else:
                seg_flow[s] = flow

        # New flows get ids in the order their first packets appear in the capture.
        if new_segments:
            # In the order of their first rows (distinct rows: no ties), sorted in numpy.
            chosen = np.asarray(new_segments, dtype=np.int64)
            chosen = chosen[np.argsort(seg_first_row[chosen])]
            new_segments = chosen.tolist()
            first = seg_first_row[chosen]
            r = rows[first]
            columns = zip(
                d.ip_version[r].tolist(), d.proto[r].tolist(), d.vlan_id[r].tolist(), d.tunnel[r].tolist(),
                d.src_hi[r].tolist(), d.src_lo[r].tolist(), d.src_port[r].tolist(),
                d.dst_hi[r].tolist(), d.dst_lo[r].tolist(), d.dst_port[r].tolist(),
                d.tcp_flags[r].tolist(), d.ts_ns[r].tolist(), src_is_a[first].tolist(),
            )
            for s, first_packet in zip(new_segments, columns):
                key = group_keys[seg_group_l[s]]
                old = self._active.pop(key, None)
                if old is not None:
                    self._finished.append(old)
                flow = self._new_flow(first_packet)
                self._active[key] = flow
                seg_flow[s] = flow
        # The active entry of a key must be its last segment's flow: a later segment of the same
        # group replaced an earlier one above only if processed later, so fix it up explicitly.
        for s in range(n_seg):
            g = seg_group_l[s]
            if s + 1 == n_seg or seg_group_l[s + 1] != g:
                last = seg_flow[s]
                assert last is not None  # every segment got its flow above
                self._active[group_keys[g]] = last

        slots: dict[int, int] = {}
        flows: list[Flow] = []
        seg_slot_l: list[int] = []
        client_is_a_l: list[bool] = []
        pkts_a_l, pkts_all_l = pkts_a.tolist(), pkts_all.tolist()
        bytes_a_l, bytes_all_l = bytes_a.tolist(), bytes_all.tolist()
        fin_a_l, fin_b_l, rst_l = fin_a.tolist(), fin_b.tolist(), rst_any.tolist()
        ts_min_l, ts_max_l, clock_last_l = ts_min.tolist(), ts_max.tolist(), clock_last.tolist()
        for s in range(n_seg):
            f = seg_flow[s]
            assert f is not None  # every segment got its flow above
            slot = slots.get(id(f))
            if slot is None:
                slot = slots[id(f)] = len(flows)
                flows.append(f)
            seg_slot_l.append(slot)
            client_is_a_l.append(f.client_is_a)
            pa, pall = pkts_a_l[s], pkts_all_l[s]
            ba, ball = bytes_a_l[s], bytes_all_l[s]
            if f.client_is_a:
                f.client_to_server_packets += pa
                f.client_to_server_bytes += ba
                f.server_to_client_packets += pall - pa
                f.server_to_client_bytes += ball - ba
                f.fin_from_client |= fin_a_l[s]
                f.fin_from_server |= fin_b_l[s]
            else:
                f.client_to_server_packets += pall - pa
                f.client_to_server_bytes += ball - ba
                f.server_to_client_packets += pa
                f.server_to_client_bytes += ba
                f.fin_from_client |= fin_b_l[s]
                f.fin_from_server |= fin_a_l[s]
            f.rst |= rst_l[s]
            if ts_min_l[s] < f.first_seen_ns:
                f.first_seen_ns = ts_min_l[s]
            if ts_max_l[s] > f.last_seen_ns:
                f.last_seen_ns = ts_max_l[s]
            f.prev_ts_ns = clock_last_l[s]

        seg_slot = np.array(seg_slot_l, dtype=np.int64)
        client_is_a = np.array(client_is_a_l, dtype=bool)
        flow_slot_sorted = seg_slot[seg_of_sorted]
        from_client_sorted = from_a_s == client_is_a[seg_of_sorted]
        flow_slot = np.empty(m, dtype=np.int64)
        from_client = np.empty(m, dtype=bool)
        flow_slot[order] = flow_slot_sorted
        from_client[order] = from_client_sorted

        self._now_ns = int(clock[-1])
        return BatchFlows(rows, flow_slot, from_client, flows)

    def _tcp_reopen_splits(self, key, lo, hi, from_a_s, flags_s, syn_only_s, split) -> None:
        """Mark a split before a bare SYN that follows a completed close (RST, or FIN both ways)."""
        existing = self._active.get(key)
        fin_a = fin_b = rst = False
        if existing is not None:
            if existing.client_is_a:
                fin_a, fin_b = existing.fin_from_client, existing.fin_from_server
            else:
                fin_a, fin_b = existing.fin_from_server, existing.fin_from_client
            rst = existing.rst
        for pos in range(lo, hi):
            f = int(flags_s[pos])
            if split[pos] and pos != lo:
                fin_a = fin_b = rst = False  # an idle split already started a new flow here
            if syn_only_s[pos] and pos != lo and (rst or (fin_a and fin_b)):
                split[pos] = True
                fin_a = fin_b = rst = False
            if f & TCP_RST:
                rst = True
            if f & TCP_FIN:
                if from_a_s[pos]:
                    fin_a = True
                else:
                    fin_b = True

    def _new_flow(self, first_packet: tuple) -> Flow:
        """A flow from its first packet's (ip_version, proto, vlan_id, tunnel, src_hi, src_lo,
        sport, dst_hi, dst_lo, dport, flags, ts_ns, src_is_a). One tuple, not ``*first_packet``:
        compiled, a call with star-arguments goes through CPython's generic call."""
        (ip_version, proto, vlan_id, tunnel, src_hi, src_lo, sport, dst_hi, dst_lo, dport, flags, ts_ns,
         src_is_a) = first_packet  # fmt: skip
        f = Flow()
        f.flow_id = self._next_id
        self._next_id += 1
        f.ip_version = ip_version
        f.proto = proto
        f.vlan_id = vlan_id
        f.tunnel = tunnel
        src_is_client = True
        if proto == IPPROTO_TCP and flags & TCP_SYN:
            src_is_client = not (flags & TCP_ACK)
        elif proto in (IPPROTO_TCP, IPPROTO_UDP):
            if _is_service_port(sport) and not _is_service_port(dport):
                src_is_client = False
        if src_is_client:
            f.client_hi, f.client_lo, f.client_port = src_hi, src_lo, sport
            f.server_hi, f.server_lo, f.server_port = dst_hi, dst_lo, dport
        else:
            f.client_hi, f.client_lo, f.client_port = dst_hi, dst_lo, dport
            f.server_hi, f.server_lo, f.server_port = src_hi, src_lo, sport
        f.client_is_a = src_is_a == src_is_client
        f.first_seen_ns = ts_ns
        f.last_seen_ns = ts_ns
        f.prev_ts_ns = 0  # set from the capture clock when the segment is counted
        f.client_to_server_packets = f.client_to_server_bytes = 0
        f.server_to_client_packets = f.server_to_client_bytes = 0
        f.fin_from_client = f.fin_from_server = f.rst = False
        return f

    def expire(self) -> list[Flow]:
        """Hand out the flows that finished: replaced by a new flow, or idle past the timeout."""
        now = self._now_ns
        if now is not None and (self._last_sweep_ns is None or now - self._last_sweep_ns >= self.idle_ns // 4):
            self._last_sweep_ns = now
            stale = [k for k, f in self._active.items() if now - f.prev_ts_ns > self.idle_ns]
            for k in stale:
                self._finished.append(self._active.pop(k))
        out, self._finished = self._finished, []
        return out

    def finish(self) -> list[Flow]:
        """End of capture: every flow is finished."""
        out = self._finished + list(self._active.values())
        self._finished = []
        self._active.clear()
        return out
