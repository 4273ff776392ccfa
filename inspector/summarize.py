"""The pandas boundary: finished flows (and later calls) become the DataFrames of DESIGN.md §2.

Each table is built once, column by column from plain lists, with the dtypes declared in
``inspector.schema``; nothing here touches packets.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Sequence

import numpy as np
import pandas as pd

from inspector.decode import TUNNEL_NAMES
from inspector.flows import Flow
from inspector.schema import FLOW_COLUMNS, FLOW_DTYPES

# IANA protocol numbers (www.iana.org/assignments/protocol-numbers) for the names users know.
IP_PROTOCOL_NAMES = {
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


@functools.lru_cache(maxsize=65536)
def _address_text_cached(version: int, hi: int, lo: int) -> str:
    return address_text(version, hi, lo)


def flow_endpoints(f: Flow) -> tuple[str, str]:
    """(client address, server address) as text."""
    text = _address_text_cached
    return text(f.ip_version, f.client_hi, f.client_lo), text(f.ip_version, f.server_hi, f.server_lo)


def flows_frame(capture: str, flows: Sequence[Flow], labels: Sequence[dict] | None = None) -> pd.DataFrame:
    """One row per flow, columns and dtypes of ``schema.FLOW_COLUMNS``.

    ``labels``: per flow, the naming/classification columns (app_protocol ... session_id) that
    later stages filled; missing keys stay empty.
    """
    n = len(flows)
    cols: dict[str, list] = {}
    text = _address_text_cached
    cols["flow_id"] = [f.flow_id for f in flows]
    cols["transport"] = [transport_name(f.proto) for f in flows]
    cols["client_ip"] = [text(f.ip_version, f.client_hi, f.client_lo) for f in flows]
    cols["client_port"] = [f.client_port for f in flows]
    cols["server_ip"] = [text(f.ip_version, f.server_hi, f.server_lo) for f in flows]
    cols["server_port"] = [f.server_port for f in flows]
    cols["first_seen"] = [f.first_seen_ns for f in flows]
    cols["last_seen"] = [f.last_seen_ns for f in flows]
    cols["client_to_server_packets"] = [f.client_to_server_packets for f in flows]
    cols["client_to_server_bytes"] = [f.client_to_server_bytes for f in flows]
    cols["server_to_client_packets"] = [f.server_to_client_packets for f in flows]
    cols["server_to_client_bytes"] = [f.server_to_client_bytes for f in flows]
    cols["vlan_id"] = [f.vlan_id for f in flows]
    cols["tunnel"] = [TUNNEL_NAMES[f.tunnel] if f.tunnel < len(TUNNEL_NAMES) else str(f.tunnel) for f in flows]
    label_names = (
        "app_protocol",
        "server_name",
        "name_source",
        "service",
        "organisation",
        "kind",
        "category",
        "role",
        "evidence",
        "confidence",
        "session_id",
    )
    for name in label_names:
        if labels is None:
            cols[name] = [""] * n
        else:
            cols[name] = [lab.get(name, "") for lab in labels]
    cols["capture"] = [capture] * n
    first = np.asarray(cols["first_seen"], dtype=np.int64)
    last = np.asarray(cols["last_seen"], dtype=np.int64)
    data = {}
    for name, dtype, _ in FLOW_COLUMNS:
        if name in ("first_seen", "last_seen"):
            data[name] = pd.to_datetime(np.asarray(cols[name], dtype=np.int64), unit="ns", utc=True)
        elif name == "duration_s":
            data[name] = pd.Series((last - first) / 1e9, dtype="float64")
        else:
            data[name] = pd.Series(cols[name], dtype=dtype)
    frame = pd.DataFrame(data)
    return frame.astype(FLOW_DTYPES)
