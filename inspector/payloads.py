"""The dissect stage: which payloads go to which per-flow dissector, and what comes out.

Per batch, only the payload packets of flows whose dissectors still want more are touched in
Python; once a flow's naming (``naming.FlowNamer``) and payload detectors
(``dissect.detectors.MediaFlowState``) are both done, none of its later packets cost anything.
DNS answers are drained into one ``naming.NameMap`` per run, so a flow can be named from the latest
answer seen before it started. At the end, every flow's facts become an ``inspector.facts.FlowFacts``.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from inspector.decode import IPPROTO_TCP, IPPROTO_UDP
from inspector.facts import FlowFacts
from inspector.fastinit import positional_constructor
from inspector.flows import Flow, flow_endpoints, flows_of_identities, transport_name
from inspector.ordering import run_first_positions, sorted_runs, unique_first

if TYPE_CHECKING:
    from inspector.dissect.detectors import MediaFlowState
    from inspector.naming import FlowNamer, NameMap


# How a flow is routed, decided from its first payload packet (vectorised over the batch).
ROUTE_NOTHING: Final = 0  # link-local discovery chatter (mDNS, LLMNR, NetBIOS, SSDP): nothing to learn
ROUTE_DNS: Final = 1  # DNS: every packet to the namer (answers build the name map)
ROUTE_NAMER: Final = 2  # TLS, HTTP, QUIC: the namer alone
ROUTE_MEDIA: Final = 3  # STUN, TURN, RTP/RTCP, Zoom, DTLS: detectors, and the namer for DTLS records only
ROUTE_BOTH: Final = 4  # nothing recognisable yet: both, within their caps

DNS_PORTS: Final = (53,)
HTTP_METHOD_INITIALS: Final = tuple(b"GPHDOCT")
# mDNS 5353 (RFC 6762), LLMNR 5355 (RFC 4795), NetBIOS 137/138 (RFC 1002), SSDP 1900 (UPnP).
# Names in them are the local network's, not destinations the machine sends data to.
QUIET_UDP_PORTS: Final = (137, 138, 1900, 5353, 5355)

# Caps per flow on payload packets handed to Python. The dissectors stop earlier on their own
# when they have their answer; these bound the worst case (an unrecognisable flow).
NAMER_CAP_PACKETS: Final = 8
MEDIA_CAP_PACKETS: Final = 10


@functools.cache
def _media_state_class() -> type:
    """``detectors.MediaFlowState``, imported on first use (once, not once per flow)."""
    from inspector.dissect.detectors import MediaFlowState

    return MediaFlowState


#: What a flow's namer found, kept once it is done (``FlowInspection.namer_found``): app
#: protocol, server name and its source, attributes.
NamerFound = tuple[str, str, str, tuple]
#: What a flow's payload detectors found, kept once they are done (``media_found``): detector
#: hits, app protocol, attributes, the operator named by a TURN server's REALM ("" when none).
MediaFound = tuple[tuple, str, tuple, str]
_NOTHING_NAMED: Final[NamerFound] = ("", "", "", ())


class FlowInspection:
    """The dissection state of one flow: its namer, its payload detectors, and how it is routed.

    Each dissector, once done, is replaced by what it found (``namer_found``, ``media_found``;
    ``PayloadStage.dissect``).

    Why: a flow's facts are taken when it ends, often long after its last inspected packet (on
    the benchmark capture most flows end together, at the end of the capture), when its
    dissectors' objects have left the processor's caches: ``PayloadStage.facts`` took ~9 us a
    flow there, and ~4 us called again at once on the same flow. Taken just after the packet
    that completes a dissector, while its objects are in cache, the findings wait as one tuple,
    and the dissector's memory is freed as soon as the flow no longer needs it.
    """

    __slots__ = (
        "namer", "media", "route", "namer_packets", "media_packets", "namer_done", "media_done", "ports",
        "namer_found", "media_found",
    )

    def __init__(self, route: int, transport: str, client_port: int, server_port: int) -> None:
        self.route = route
        use_namer = route in (ROUTE_DNS, ROUTE_NAMER, ROUTE_MEDIA, ROUTE_BOTH)
        use_media = route == ROUTE_MEDIA or route == ROUTE_BOTH
        # The namer is built on its first packet: most media flows never send it one.
        self.namer: FlowNamer | None = None
        self.ports = (transport, client_port, server_port)
        self.media: MediaFlowState | None = _media_state_class()(transport, client_port, server_port) if use_media else None
        self.namer_packets = 0
        self.media_packets = 0
        self.namer_done = not use_namer
        self.media_done = not use_media
        self.namer_found: NamerFound | None = None
        self.media_found: MediaFound | None = None

    @property
    def done(self) -> bool:
        return self.namer_done and self.media_done

    def keep_namer_findings(self, errors: Counter[str]) -> None:
        """The namer is done: keep what it found and free it (its error counts go to ``errors``)."""
        if self.namer is not None:
            self.namer_found = _namer_found(self.namer, errors)
            self.namer = None

    def keep_media_findings(self, errors: Counter[str]) -> None:
        """The detectors are done: keep what they found and free them (errors to ``errors``)."""
        if self.media is not None:
            self.media_found = _media_found(self.media, errors)
            self.media = None


def _namer_found(namer: FlowNamer, errors: Counter[str]) -> NamerFound:
    naming = namer.result()
    for reason, n in namer.errors.items():
        errors[reason] += n
    return (naming.app_protocol, naming.server_name, naming.name_source, tuple(naming.attributes))


def _media_found(media: MediaFlowState, errors: Counter[str]) -> MediaFound:
    for reason, n in media.errors.items():
        errors[reason] += n
    # A TURN server's REALM (RFC 8489 §14.9) names its operator: signal.org, telegram.org.
    realm_raw = media.stun_realm()
    realm = _stun_realm_name(realm_raw) if realm_raw else ""
    return (tuple(media.hits()), media.app_protocol(), tuple(media.attributes()), realm)


def _routes(proto: np.ndarray, sport: np.ndarray, dport: np.ndarray, b0: np.ndarray) -> np.ndarray:
    """Route of each flow from its first payload packet's ports and first byte.

    First-byte rules: RFC 7983/9443 demultiplexing (0-3 STUN, 20-63 DTLS, 64-79 TURN ChannelData,
    128-191 RTP/RTCP, 192-255 QUIC long header); TLS records start with content type 22 (RFC 8446
    §5.1); HTTP/1 requests with a method's first letter. Zoom's media starts 0x05 (server) or
    its inner type 15/16/13/30 (P2P) (protocol-facts.md §2). Weakness: one packet decides; a flow
    whose first payload misleads is only looked at through the chosen dissectors.
    """
    is_udp = proto == IPPROTO_UDP
    is_tcp = proto == IPPROTO_TCP
    route = np.full(proto.shape[0], ROUTE_BOTH, dtype=np.int8)
    quiet = is_udp & (np.isin(sport, QUIET_UDP_PORTS) | np.isin(dport, QUIET_UDP_PORTS))
    dns = (is_udp | is_tcp) & (np.isin(sport, DNS_PORTS) | np.isin(dport, DNS_PORTS))
    # First letters of the HTTP/1 methods (RFC 9110 §9, RFC 5789 PATCH, RFC 9113 §3.4 "PRI").
    tls_or_http = is_tcp & ((b0 == 0x16) | np.isin(b0, HTTP_METHOD_INITIALS))
    quic_long = is_udp & (b0 >= 0xC0)
    media = is_udp & (
        (b0 <= 3) | ((b0 >= 20) & (b0 <= 79)) | ((b0 >= 128) & (b0 <= 191)) | np.isin(b0, (0x05, 15, 16, 13, 30))
    )
    route[media] = ROUTE_MEDIA
    # gQUIC's public-flags byte (0x00-0x0F on a client's first packets: version flag 0x01,
    # connection-id flags 0x08/0x0C) collides with STUN (0-3) and Zoom's inner type 13 (0x0D):
    # on UDP 443 (QUIC's port) let both the namer and the detectors look.
    route[is_udp & ((sport == 443) | (dport == 443)) & (b0 < 20)] = ROUTE_BOTH
    route[quic_long | tls_or_http] = ROUTE_NAMER
    route[dns] = ROUTE_DNS
    route[quiet] = ROUTE_NOTHING
    route[~(is_udp | is_tcp)] = ROUTE_NOTHING
    return route


# A budget larger than any batch: DNS flows feed every packet to the namer.
_UNCAPPED: Final = 1 << 40


def _budgets(flows: list[Flow], slots: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per flow slot: how many more packets its namer and its detectors may take (0 once done
    or capped, and for slots not in ``slots``), and whether its namer takes DTLS records only
    (a media flow)."""
    n = len(flows)
    namer_left = np.zeros(n, dtype=np.int64)
    media_left = np.zeros(n, dtype=np.int64)
    namer_dtls_only = np.zeros(n, dtype=bool)
    for slot in slots:
        st = flows[slot].state
        if st is None:
            continue
        if not st.namer_done:
            if st.route == ROUTE_DNS:
                namer_left[slot] = _UNCAPPED
            else:
                namer_left[slot] = NAMER_CAP_PACKETS - st.namer_packets
                namer_dtls_only[slot] = st.route == ROUTE_MEDIA
        if not st.media_done:
            media_left[slot] = MEDIA_CAP_PACKETS - st.media_packets
    return namer_left, media_left, namer_dtls_only


def _still_wanted(flows: list[Flow], slot_of: np.ndarray, first_byte: np.ndarray) -> np.ndarray | None:
    """Positions (in capture order) of the payload packets a dissector may still take.

    ``PayloadStage.dissect`` feeds a flow's namer every candidate packet until it is done or
    capped, and its detectors every packet likewise, so what they can take in this batch lies
    within the flow's first ``namer_left`` namer candidates and first ``media_left`` packets.
    Namer candidates are every payload, except on a media flow where only DTLS records
    (first byte 20-63, RFC 7983) go to the namer. A superset: ``dissect`` still asks each
    dissector, which may finish earlier. None when nothing is wanted.
    """
    # Only flows with a payload packet in this batch matter.
    present = np.flatnonzero(np.bincount(slot_of, minlength=len(flows)))
    namer_left, media_left, namer_dtls_only = _budgets(flows, present.tolist())
    live = (namer_left > 0) | (media_left > 0)
    at = np.flatnonzero(live[slot_of])
    if at.shape[0] == 0:
        return None
    # Group the live packets by flow, keeping capture order inside each group.
    slots = slot_of[at]
    order, group_start = sorted_runs(slots)
    at, slots = at[order], slots[order]
    first_of_group = run_first_positions(group_start)
    rank = np.arange(at.shape[0]) - first_of_group  # packets of the flow before this one in the batch
    b0 = first_byte[at]
    namer_candidate = ~namer_dtls_only[slots] | ((b0 >= 20) & (b0 <= 63))
    seen = np.cumsum(namer_candidate)
    namer_rank = seen - namer_candidate - (seen - namer_candidate)[first_of_group]
    wanted = (rank < media_left[slots]) | (namer_candidate & (namer_rank < namer_left[slots]))
    if not wanted.any():
        return None
    return np.sort(at[wanted])


class PayloadPackets:
    """A batch's payload-carrying packets, in capture order: where they sit in ``bf.rows``
    (``index``), their flow's slot in ``bf.flows``, their decoded row, and their first byte."""

    __slots__ = ("index", "slot", "row", "first_byte")

    def __init__(self, d, bf) -> None:
        self.index = np.flatnonzero(d.payload_len[bf.rows] > 0)
        self.slot = bf.flow_slot[self.index]
        self.row = bf.rows[self.index]
        self.first_byte = d.payload_byte(self.row, 0)


def _payloads(d, rows: np.ndarray) -> list[bytes]:
    """The payload bytes of decoded rows ``rows`` (reassembled ones from ``d.extra``). The
    selection (``_still_wanted``) is tight enough that copying them all up front costs less
    than fetching each through a function call."""
    return payloads_at(
        memoryview(d.buffer), memoryview(d.extra), d.payload_off[rows], d.payload_len[rows], d.payload_in_extra[rows]
    )


def payloads_at(
    main: memoryview | None, other: bytes | memoryview, at: np.ndarray, lengths: np.ndarray, in_other: np.ndarray
) -> list[bytes]:
    """Payload ``k``: ``lengths[k]`` bytes at ``at[k]`` of ``other`` where ``in_other[k]``, else
    of ``main``. One process reads a batch's buffer and its reassembled bytes (``_payloads``);
    a parallel worker reads the capture's mapped bytes and its message's blob
    (``parallel.PayloadShipper.feed``; ``main`` None when all is in the blob). Slicing
    memoryviews copies just the payloads, without a numpy call per packet."""
    starts = at.tolist()
    ends = (at + lengths).tolist()
    if main is None or in_other.all():
        view = memoryview(other)
        return [bytes(view[start:end]) for start, end in zip(starts, ends)]
    if not in_other.any():
        return [bytes(main[start:end]) for start, end in zip(starts, ends)]
    sources = [memoryview(other), main]
    return [
        bytes(sources[0 if b else 1][start:end]) for start, end, b in zip(starts, ends, in_other.tolist())
    ]


def open_inspections(states: dict[int, FlowInspection], routes: list[tuple[int, int, str, int, int]]) -> None:
    """A parallel worker's new flows: a FlowInspection in ``states`` for each (flow id, route,
    transport, client port, server port) of ``ship_new_routes``."""
    for flow_id, route, transport, client_port, server_port in routes:
        states[flow_id] = FlowInspection(route, transport, client_port, server_port)


def first_payload_routes(d, bf, packets: PayloadPackets) -> list[tuple[int, int]]:
    """(slot, route) of every flow whose first payload packet is in this batch (its ``state``
    is still None), routed by that packet (``_routes``)."""
    flows = bf.flows
    fresh = np.fromiter((f.state is None for f in flows), dtype=bool, count=len(flows))
    if not fresh.any():
        return []
    # Only the packets of flows not yet routed are ordered (most of a batch's payload packets
    # belong to flows routed in an earlier batch).
    candidates = np.flatnonzero(fresh[packets.slot])
    if candidates.shape[0] == 0:
        return []
    first_slot, first_of = unique_first(packets.slot[candidates])
    first_at = candidates[first_of]
    r = packets.row[first_at]
    routes = _routes(d.proto[r], d.src_port[r], d.dst_port[r], packets.first_byte[first_at])
    return list(zip(first_slot.tolist(), routes.tolist()))


class ShippedFlow:
    """The reading process's view of one flow in a parallel run (``parallel.PayloadShipper``):
    its route and how many of its payload packets were shipped to its worker as namer and as
    detector candidates (``NAMER_CAP_PACKETS`` and ``MEDIA_CAP_PACKETS`` bound both)."""

    __slots__ = ("media_shipped", "namer_shipped", "route")

    def __init__(self, route: int) -> None:
        self.route = route
        self.namer_shipped = 0
        self.media_shipped = 0


def ship_new_routes(flows: list[Flow], routes: list[tuple[int, int]], n: int) -> list[list[tuple]]:
    """Give each flow routed for the first time (``first_payload_routes``: slot, route) its
    ``ShippedFlow`` state, and list per worker the routes it must set up: (flow id, route,
    transport, client port, server port), a DNS flow to every worker, any other to its owner
    (``owner_of``), a flow routed to nothing to none. Compiled: one per flow of the capture."""
    per_worker: list[list[tuple]] = [[] for _ in range(n)]
    for slot, route in routes:
        f = flows[slot]
        f.state = ShippedFlow(route)
        if route == ROUTE_NOTHING:
            continue
        entry = (f.flow_id, route, transport_name(f.proto), f.client_port, f.server_port)
        if route == ROUTE_DNS:
            for k in range(n):
                per_worker[k].append(entry)
        else:
            per_worker[owner_of(f.flow_id, n)].append(entry)
    return per_worker


def shipped_so_far(flows: list[Flow]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(route int8, namer_shipped int64, media_shipped int64) of each of a batch's flows (its
    ``ShippedFlow`` state; ROUTE_NOTHING and none for a flow without payload so far)."""
    routes: list[int] = []
    namer: list[int] = []
    media: list[int] = []
    for f in flows:
        st = f.state
        if isinstance(st, ShippedFlow):
            routes.append(st.route)
            namer.append(st.namer_shipped)
            media.append(st.media_shipped)
        else:
            routes.append(ROUTE_NOTHING)
            namer.append(0)
            media.append(0)
    return np.array(routes, dtype=np.int8), np.array(namer, dtype=np.int64), np.array(media, dtype=np.int64)


def add_shipped(flows: list[Flow], namer_added: np.ndarray, media_added: np.ndarray) -> None:
    """Count a batch's shipped candidates (per slot of ``flows``) into their flows' states,
    each capped as the dissectors are."""
    for slot in np.flatnonzero((namer_added > 0) | (media_added > 0)).tolist():
        st = flows[slot].state
        assert isinstance(st, ShippedFlow)
        st.namer_shipped = min(NAMER_CAP_PACKETS, st.namer_shipped + int(namer_added[slot]))
        st.media_shipped = min(MEDIA_CAP_PACKETS, st.media_shipped + int(media_added[slot]))


#: ``FlowFacts(...)`` at the cost of the fewest calls (``fastinit``): one per flow.
_new_facts: Final = positional_constructor(FlowFacts)


def _stun_realm_name(raw: str) -> str:
    from inspector.naming import stun_realm_name

    return stun_realm_name(raw)


#: How flows are shared among ``n`` dissect workers (``parallel.py``): by flow id, in a cycle of
#: ``FIRST_SHARE + OTHER_SHARE * (n - 1)`` ids, worker 0 taking ``FIRST_SHARE`` of them and each
#: other worker ``OTHER_SHARE``. Worker 0 also folds every RTP header of the capture
#: (``parallel.RTP_WORKER``, ~17% of the dissect work on the benchmark), so it takes fewer flows:
#: with two workers 5 of 12 (measured: the two then finish together instead of one idling 0.3 s).
#: Weakness: the right share depends on how much of a capture is RTP; this one is measured on
#: the benchmark's mix of calls and web traffic. Any split gives the same tables.
FIRST_SHARE: Final = 5
OTHER_SHARE: Final = 7


def owner_of(flow_id: int, n: int) -> int:
    """The dissect worker (0 .. n - 1) that owns flow ``flow_id`` among ``n``."""
    if n == 1:
        return 0
    position = flow_id % (FIRST_SHARE + OTHER_SHARE * (n - 1))
    return 0 if position < FIRST_SHARE else 1 + (position - FIRST_SHARE) // OTHER_SHARE


def owners_of(flow_ids: np.ndarray, n: int) -> np.ndarray:
    """``owner_of`` of every id in ``flow_ids``, looked up in one cycle of its rule."""
    cycle = np.array([owner_of(position, n) for position in range(FIRST_SHARE + OTHER_SHARE * (n - 1))], dtype=np.int64)
    return cycle[flow_ids.astype(np.int64) % cycle.shape[0]]


class PayloadStage:
    """Feeds payloads to per-flow dissectors for one capture (or one merged timeline)."""

    def __init__(self, name_map: NameMap | None = None, partition: tuple[int, int] = (0, 1)) -> None:
        """``partition = (k, n)``: dissect only the flows that worker k of n owns (``owner_of``:
        the parallel workers of ``inspector.parallel`` split one capture's flows this way). DNS
        flows are dissected by every partition, since every flow's naming needs all answers."""
        from inspector.naming import NameMap

        self.name_map: NameMap = name_map if name_map is not None else NameMap()
        self.errors: Counter = Counter()
        self.packets_inspected = 0
        self.partition = partition

    def owns(self, f: Flow) -> bool:
        k, n = self.partition
        return n == 1 or owner_of(f.flow_id, n) == k

    def feed(self, d, bf) -> None:
        """Hand this batch's payloads to the flows that still want them, in capture order.

        Only packets that can still reach a dissector are handed over: per flow, the first
        ``namer`` candidates within the namer's remaining budget and the first packets within
        the detectors' remaining budget (``_still_wanted``). A flow whose dissectors finish
        inside the batch leaves the rest of its packets in numpy.
        """
        packets = PayloadPackets(d, bf)
        if packets.index.shape[0] == 0:
            return
        idx, slot_of, prow, b0 = packets.index, packets.slot, packets.row, packets.first_byte
        flows = bf.flows
        # Flows seen with payload for the first time: route them by their first payload packet.
        for slot, route in first_payload_routes(d, bf, packets):
            f = flows[slot]
            if route != ROUTE_DNS and not self.owns(f):
                route = ROUTE_NOTHING  # another partition dissects this flow
            f.state = FlowInspection(route, transport_name(f.proto), f.client_port, f.server_port)
        sel = _still_wanted(flows, slot_of, b0)
        if sel is None:
            return
        slots = slot_of[sel].tolist()
        srows = prow[sel]
        is_tcp = d.proto[srows] == IPPROTO_TCP
        tcp_seqs = [seq if tcp else None for seq, tcp in zip(d.tcp_seq[srows].tolist(), is_tcp.tolist())]
        self.dissect(
            [flows[slot].state for slot in slots],
            bf.from_client[idx[sel]].tolist(),
            d.ts_ns[srows].tolist(),
            tcp_seqs,
            b0[sel].tolist(),
            _payloads(d, srows).__getitem__,
        )

    def dissect(
        self,
        inspections: list[FlowInspection],
        from_client: list[bool],
        ts: list[int],
        tcp_seqs: list[int | None],
        first_bytes: list[int],
        payload_of: Callable[[int], bytes],
    ) -> None:
        """The per-packet part of ``feed``: packet ``k`` (in capture order) belongs to the flow
        whose state is ``inspections[k]``; its payload is ``payload_of(k)``, fetched only when a
        dissector still wants it. ``tcp_seqs[k]`` is None for a packet that is not TCP.
        ``inspector.parallel`` calls this in its dissect workers with packets shipped to them."""
        from inspector.naming import FlowNamer

        name_map = self.name_map
        inspected = 0
        for k in range(len(inspections)):
            st = inspections[k]
            namer_wants = not st.namer_done and (st.route != ROUTE_MEDIA or 20 <= first_bytes[k] <= 63)
            media_wants = not st.media_done
            if not (namer_wants or media_wants):
                continue
            payload = payload_of(k)
            inspected += 1
            if namer_wants:
                namer = st.namer
                if namer is None:
                    transport, client_port, server_port = st.ports  # a direct call, not *st.ports
                    namer = st.namer = FlowNamer(transport, client_port, server_port)
                namer.feed(from_client[k], payload, ts[k], tcp_seqs[k])
                st.namer_packets += 1
                if namer.dns_messages:
                    for when, message in namer.dns_messages:
                        name_map.add(message, when)
                    namer.dns_messages.clear()
                if namer.done or (st.route != ROUTE_DNS and st.namer_packets >= NAMER_CAP_PACKETS):
                    st.namer_done = True
                    st.keep_namer_findings(self.errors)
            if media_wants:
                media = st.media
                assert media is not None  # media_done starts False only where there is a state
                media.feed(from_client[k], payload, ts[k])
                st.media_packets += 1
                if media.done or st.media_packets >= MEDIA_CAP_PACKETS:
                    st.media_done = True
                    st.keep_media_findings(self.errors)
        self.packets_inspected += inspected

    def dissect_shipped(
        self,
        states: dict[int, FlowInspection],
        flow_ids: np.ndarray,
        from_client: np.ndarray,
        ts: np.ndarray,
        tcp_seqs: np.ndarray,
        first_bytes: np.ndarray,
        payload_of: Callable[[int], bytes],
    ) -> None:
        """``dissect`` of the packets a parallel worker was shipped (``parallel.PayloadShipper``):
        columns, each packet's flow state found in ``states`` by flow id, a TCP sequence number
        below 0 meaning none. The per-packet lists are made here, in compiled code."""
        self.dissect(
            [states[flow_id] for flow_id in flow_ids.tolist()],
            from_client.tolist(),
            ts.tolist(),
            [seq if seq >= 0 else None for seq in tcp_seqs.tolist()],
            first_bytes.tolist(),
            payload_of,
        )

    def take_ended(
        self,
        identities: list[list[Any]],
        states: dict[int, FlowInspection],
        labeller: Any,
        pending: int,
        labelled_ids: Any,
        labelled_codes: Any,
    ) -> None:
        """A parallel worker's ended flows (``flows.identity_columns``): each takes its state
        from ``states``, gives its facts (the flows this partition owns) and is labelled by
        ``labeller`` (a ``labels.FlowLabeller``); the id and label code of each flow labelled at
        once (a code other than ``pending``) are appended to ``labelled_ids`` and
        ``labelled_codes``."""
        for f in flows_of_identities(identities):
            f.state = states.pop(f.flow_id, None)
            fact = self.facts(f)
            if fact is not None:
                code = labeller.label(f.flow_id, fact)
                if code != pending:
                    labelled_ids.append(f.flow_id)
                    labelled_codes.append(code)

    def facts(self, f: Flow) -> FlowFacts | None:
        """What was learned about flow ``f`` (None when another partition owns it)."""
        if not self.owns(f):
            return None
        client_ip, server_ip = flow_endpoints(f)
        transport = transport_name(f.proto)
        st: FlowInspection | None = f.state
        dns = self.name_map.lookup(server_ip, f.first_seen_ns)
        dns_name = dns.name if dns is not None else ""
        app_protocol, server_name, name_source, attributes = _NOTHING_NAMED
        detectors: tuple = ()
        if st is not None:
            named = st.namer_found
            if named is None and st.namer is not None:
                named = _namer_found(st.namer, self.errors)
            if named is not None:
                app_protocol, server_name, name_source, attributes = named
            found = st.media_found
            if found is None and st.media is not None:
                found = _media_found(st.media, self.errors)
            if found is not None:
                detectors, media_protocol, media_attributes, realm = found
                # A media verdict (RTP, TURN, Zoom ...) says more than the DTLS handshake beside it.
                if media_protocol and (not app_protocol or (app_protocol == "dtls" and media_protocol != "stun")):
                    app_protocol = media_protocol
                if media_attributes:
                    attributes = attributes + media_attributes
                if not server_name and realm:
                    server_name, name_source = realm, "stun-realm"
        if not server_name and dns_name:
            server_name, name_source = dns_name, "dns"
        if dns is not None and dns.chain:
            attributes = attributes + (("dns_chain", " > ".join(dns.chain)),)
        return _new_facts(
            transport,
            client_ip,
            f.client_port,
            server_ip,
            f.server_port,
            app_protocol,
            server_name,
            name_source,
            dns_name,
            detectors,
            attributes,
            f.first_seen_ns,
            f.last_seen_ns,
        )
