"""The dissect stage: which payloads go to which per-flow dissector, and what comes out.

Per batch, only the payload packets of flows whose dissectors still want more are touched in
Python; once a flow's naming (``naming.FlowNamer``) and payload detectors
(``dissect.detectors.MediaFlowState``) are both done, none of its later packets cost anything.
DNS answers are drained into one ``naming.NameMap`` per run, so a flow can be named from the latest
answer seen before it started. At the end, every flow's facts become an ``inspector.facts.FlowFacts``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from inspector.decode import IPPROTO_TCP, IPPROTO_UDP
from inspector.facts import FlowFacts
from inspector.flows import Flow
from inspector.summarize import flow_endpoints, transport_name


# How a flow is routed, decided from its first payload packet (vectorised over the batch).
ROUTE_NOTHING = 0  # link-local discovery chatter (mDNS, LLMNR, NetBIOS, SSDP): nothing to learn
ROUTE_DNS = 1  # DNS: every packet to the namer (answers build the name map)
ROUTE_NAMER = 2  # TLS, HTTP, QUIC: the namer alone
ROUTE_MEDIA = 3  # STUN, TURN, RTP/RTCP, Zoom, DTLS: detectors, and the namer for DTLS records only
ROUTE_BOTH = 4  # nothing recognisable yet: both, within their caps

DNS_PORTS = (53,)
HTTP_METHOD_INITIALS = tuple(b"GPHDOCT")
# mDNS 5353 (RFC 6762), LLMNR 5355 (RFC 4795), NetBIOS 137/138 (RFC 1002), SSDP 1900 (UPnP).
# Names in them are the local network's, not destinations the machine sends data to.
QUIET_UDP_PORTS = (137, 138, 1900, 5353, 5355)

# Caps per flow on payload packets handed to Python. The dissectors stop earlier on their own
# when they have their answer; these bound the worst case (an unrecognisable flow).
NAMER_CAP_PACKETS = 8
MEDIA_CAP_PACKETS = 10


class FlowInspection:
    """The dissection state of one flow: its namer, its payload detectors, and how it is routed."""

    __slots__ = (
        "namer", "media", "route", "namer_packets", "media_packets", "namer_done", "media_done", "ports"
    )

    def __init__(self, route: int, transport: str, client_port: int, server_port: int) -> None:
        from inspector.dissect.detectors import MediaFlowState

        self.route = route
        use_namer = route in (ROUTE_DNS, ROUTE_NAMER, ROUTE_MEDIA, ROUTE_BOTH)
        use_media = route in (ROUTE_MEDIA, ROUTE_BOTH)
        # The namer is built on its first packet: most media flows never send it one.
        self.namer = None
        self.ports = (transport, client_port, server_port)
        self.media = MediaFlowState(transport, client_port, server_port) if use_media else None
        self.namer_packets = 0
        self.media_packets = 0
        self.namer_done = not use_namer
        self.media_done = not use_media

    @property
    def done(self) -> bool:
        return self.namer_done and self.media_done


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


class PayloadPackets:
    """A batch's payload-carrying packets, in capture order: where they sit in ``bf.rows``
    (``index``), their flow's slot in ``bf.flows``, their decoded row, and their first byte."""

    __slots__ = ("index", "slot", "row", "first_byte")

    def __init__(self, d, bf) -> None:
        self.index = np.flatnonzero(d.payload_len[bf.rows] > 0)
        self.slot = bf.flow_slot[self.index]
        self.row = bf.rows[self.index]
        self.first_byte = d.payload_byte(self.row, 0)


def first_payload_routes(d, bf, packets: PayloadPackets) -> list[tuple[int, int]]:
    """(slot, route) of every flow whose first payload packet is in this batch (its ``state``
    is still None), routed by that packet (``_routes``)."""
    flows = bf.flows
    fresh = np.fromiter((f.state is None for f in flows), dtype=bool, count=len(flows))
    if not fresh.any():
        return []
    first_slot, first_at = np.unique(packets.slot, return_index=True)
    keep = fresh[first_slot]
    first_slot, first_at = first_slot[keep], first_at[keep]
    if first_slot.shape[0] == 0:
        return []
    r = packets.row[first_at]
    routes = _routes(d.proto[r], d.src_port[r], d.dst_port[r], packets.first_byte[first_at])
    return list(zip(first_slot.tolist(), routes.tolist()))


class PayloadStage:
    """Feeds payloads to per-flow dissectors for one capture (or one merged timeline)."""

    def __init__(self, name_map=None, partition: tuple[int, int] = (0, 1)) -> None:
        """``partition = (k, n)``: dissect only the flows whose id is k modulo n (the parallel
        workers of ``inspector.parallel`` split one capture's flows this way). DNS flows are
        dissected by every partition, since every flow's naming needs all answers."""
        from inspector.naming import NameMap

        self.name_map = name_map if name_map is not None else NameMap()
        self.errors: Counter = Counter()
        self.packets_inspected = 0
        self.partition = partition

    def owns(self, f: Flow) -> bool:
        k, n = self.partition
        return n == 1 or f.flow_id % n == k

    def feed(self, d, bf) -> None:
        """Hand this batch's payloads to the flows that still want them, in capture order."""
        packets = PayloadPackets(d, bf)
        if packets.index.shape[0] == 0:
            return
        idx, slot_of, prow, b0 = packets.index, packets.slot, packets.row, packets.first_byte
        flows = bf.flows
        n = len(flows)
        # Flows seen with payload for the first time: route them by their first payload packet.
        for slot, route in first_payload_routes(d, bf, packets):
            f = flows[slot]
            if route != ROUTE_DNS and not self.owns(f):
                route = ROUTE_NOTHING  # another partition dissects this flow
            f.state = FlowInspection(route, transport_name(f.proto), f.client_port, f.server_port)
        want_any = np.zeros(n, dtype=bool)
        dtls_only = np.zeros(n, dtype=bool)
        for slot, f in enumerate(flows):
            st = f.state
            if st is None or st.done:
                continue
            want_any[slot] = True
            # Once the detectors are done with a media flow, its namer only wants DTLS records.
            dtls_only[slot] = st.route == ROUTE_MEDIA and st.media_done
        pick = want_any[slot_of] & (~dtls_only[slot_of] | ((b0 >= 20) & (b0 <= 63)))
        if not pick.any():
            return
        sel = np.flatnonzero(pick)
        slots = slot_of[sel].tolist()
        srows = prow[sel]
        is_tcp = d.proto[srows] == IPPROTO_TCP
        tcp_seqs = [seq if tcp else None for seq, tcp in zip(d.tcp_seq[srows].tolist(), is_tcp.tolist())]
        starts = d.payload_off[srows].tolist()
        ends = (d.payload_off[srows] + d.payload_len[srows]).tolist()
        in_extra = d.payload_in_extra[srows].tolist()
        # Slicing memoryviews copies just the payload, without a numpy call per packet.
        buffer, extra = memoryview(d.buffer), memoryview(d.extra)

        def payload_of(k: int) -> bytes:
            return bytes((extra if in_extra[k] else buffer)[starts[k] : ends[k]])

        self.dissect(
            [flows[slot].state for slot in slots],
            bf.from_client[idx[sel]].tolist(),
            d.ts_ns[srows].tolist(),
            tcp_seqs,
            b0[sel].tolist(),
            payload_of,
        )

    def dissect(self, inspections, from_client, ts, tcp_seqs, first_bytes, payload_of) -> None:
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
                    namer = st.namer = FlowNamer(*st.ports)
                namer.feed(from_client[k], payload, ts[k], tcp_seqs[k])
                st.namer_packets += 1
                if namer.dns_messages:
                    for when, message in namer.dns_messages:
                        name_map.add(message, when)
                    namer.dns_messages.clear()
                if namer.done or (st.route != ROUTE_DNS and st.namer_packets >= NAMER_CAP_PACKETS):
                    st.namer_done = True
            if media_wants:
                media = st.media
                media.feed(from_client[k], payload, ts[k])
                st.media_packets += 1
                if media.done or st.media_packets >= MEDIA_CAP_PACKETS:
                    st.media_done = True
        self.packets_inspected += inspected

    def facts(self, f: Flow) -> FlowFacts | None:
        """What was learned about flow ``f`` (None when another partition owns it)."""
        if not self.owns(f):
            return None
        client_ip, server_ip = flow_endpoints(f)
        transport = transport_name(f.proto)
        st: FlowInspection | None = f.state
        dns = self.name_map.lookup(server_ip, f.first_seen_ns)
        dns_name = dns.name if dns is not None else ""
        app_protocol = server_name = name_source = ""
        detectors: tuple = ()
        attributes: list[tuple[str, str]] = []
        if st is not None and st.namer is not None:
            naming = st.namer.result()
            app_protocol = naming.app_protocol
            server_name, name_source = naming.server_name, naming.name_source
            attributes.extend(naming.attributes)
            for reason, n in st.namer.errors.items():
                self.errors[reason] += n
        if st is not None and st.media is not None:
            detectors = st.media.hits()
            media_protocol = st.media.app_protocol()
            # A media verdict (RTP, TURN, Zoom ...) says more than the DTLS handshake beside it.
            if media_protocol and (not app_protocol or (app_protocol == "dtls" and media_protocol != "stun")):
                app_protocol = media_protocol
            attributes.extend(st.media.attributes())
            for reason, n in st.media.errors.items():
                self.errors[reason] += n
        if not server_name and st is not None and st.media is not None:
            # A TURN server's REALM (RFC 8489 §14.9) names its operator: signal.org, telegram.org.
            from inspector.naming import stun_realm_name

            realm = stun_realm_name(dict(st.media.attributes()).get("stun_realm", ""))
            if realm:
                server_name, name_source = realm, "stun-realm"
        if not server_name and dns_name:
            server_name, name_source = dns_name, "dns"
        if dns is not None and dns.chain:
            attributes.append(("dns_chain", " > ".join(dns.chain)))
        return FlowFacts(
            transport=transport,
            client_ip=client_ip,
            client_port=f.client_port,
            server_ip=server_ip,
            server_port=f.server_port,
            app_protocol=app_protocol,
            server_name=server_name,
            name_source=name_source,
            dns_name=dns_name,
            detectors=tuple(detectors),
            attributes=tuple(attributes),
            first_seen_ns=f.first_seen_ns,
            last_seen_ns=f.last_seen_ns,
        )
