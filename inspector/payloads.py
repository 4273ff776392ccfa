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

from inspector.decode import IPPROTO_TCP
from inspector.facts import FlowFacts
from inspector.flows import Flow
from inspector.summarize import flow_endpoints, transport_name


class FlowInspection:
    """The dissection state of one flow: its namer and its payload detectors."""

    __slots__ = ("namer", "media", "done")

    def __init__(self, transport: str, client_port: int, server_port: int) -> None:
        from inspector.dissect.detectors import MediaFlowState
        from inspector.naming import FlowNamer

        self.namer = FlowNamer(transport, client_port, server_port)
        self.media = MediaFlowState(transport, client_port, server_port)
        self.done = False


class PayloadStage:
    """Feeds payloads to per-flow dissectors for one capture (or one merged timeline)."""

    def __init__(self, name_map=None) -> None:
        from inspector.naming import NameMap

        self.name_map = name_map if name_map is not None else NameMap()
        self.errors: Counter = Counter()
        self.packets_inspected = 0

    def feed(self, d, bf) -> None:
        """Hand this batch's payloads to the flows that still want them, in capture order."""
        flows = bf.flows
        wants = np.zeros(len(flows), dtype=bool)
        for slot, f in enumerate(flows):
            st = f.state
            if st is None:
                st = f.state = FlowInspection(transport_name(f.proto), f.client_port, f.server_port)
            wants[slot] = not st.done
        if not wants.any():
            return
        rows = bf.rows
        pick = wants[bf.flow_slot] & (d.payload_len[rows] > 0)
        idx = np.flatnonzero(pick)
        if idx.shape[0] == 0:
            return
        slots = bf.flow_slot[idx].tolist()
        from_client = bf.from_client[idx].tolist()
        prow = rows[idx]
        is_tcp = (d.proto[prow] == IPPROTO_TCP).tolist()
        seqs = d.tcp_seq[prow].tolist()
        ts = d.ts_ns[prow].tolist()
        for k, row in enumerate(prow.tolist()):
            st = flows[slots[k]].state
            if st.done:
                continue
            payload = d.payload(row)
            self.packets_inspected += 1
            if not st.namer.done:
                st.namer.feed(from_client[k], payload, ts[k], seqs[k] if is_tcp[k] else None)
            if not st.media.done:
                st.media.feed(from_client[k], payload, ts[k])
            if st.namer.dns_messages:
                for when, message in st.namer.dns_messages:
                    self.name_map.add(message, when)
                st.namer.dns_messages.clear()
            st.done = st.namer.done and st.media.done

    def facts(self, f: Flow) -> FlowFacts:
        """What was learned about flow ``f`` (call after the capture was read)."""
        client_ip, server_ip = flow_endpoints(f)
        transport = transport_name(f.proto)
        st: FlowInspection | None = f.state
        dns = self.name_map.lookup(server_ip, f.first_seen_ns)
        dns_name = dns.name if dns is not None else ""
        app_protocol = server_name = name_source = ""
        detectors: tuple = ()
        attributes: list[tuple[str, str]] = []
        if st is not None:
            naming = st.namer.result()
            app_protocol = naming.app_protocol
            server_name, name_source = naming.server_name, naming.name_source
            attributes.extend(naming.attributes)
            detectors = st.media.hits()
            media_protocol = st.media.app_protocol()
            if media_protocol and not app_protocol:
                app_protocol = media_protocol
            attributes.extend(st.media.attributes())
            for reason, n in st.namer.errors.items():
                self.errors[reason] += n
            for reason, n in st.media.errors.items():
                self.errors[reason] += n
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
