"""The pandas boundary: finished flows (and later calls) become the DataFrames of DESIGN.md §2.

Each table is built once, column by column from plain lists, with the dtypes declared in
``inspector.schema``; nothing here touches packets.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from inspector.decode import TUNNEL_NAMES
from inspector.flows import Flow
from inspector.schema import FLOW_COLUMNS, FLOW_DTYPES

#: The flows.csv columns later stages fill (naming, classification, the call stage).
LABEL_NAMES = (
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


def flows_frame(
    capture: str, flows: Sequence[Flow], labels: Mapping[str, Sequence] | Sequence[dict] | None = None
) -> pd.DataFrame:
    """One row per flow, columns and dtypes of ``schema.FLOW_COLUMNS``.

    ``labels``: the naming/classification columns (app_protocol ... session_id) that later stages
    filled, as columns (name -> one value per flow) or as one dict per flow; missing ones stay
    empty. Numbers go straight into int64 arrays (no Python list of int objects per column).
    """
    n = len(flows)
    text = _address_text_cached

    def ints(attribute: str) -> np.ndarray:
        return np.fromiter((getattr(f, attribute) for f in flows), dtype=np.int64, count=n)

    data: dict[str, object] = {}
    first = ints("first_seen_ns")
    last = ints("last_seen_ns")
    if labels is None:
        label_columns: Mapping[str, Sequence] = {}
    elif isinstance(labels, Mapping):
        label_columns = labels
    else:
        label_columns = {name: [lab.get(name, "") for lab in labels] for name in LABEL_NAMES}
    for name, dtype, _ in FLOW_COLUMNS:
        if name == "transport":
            values: object = [transport_name(f.proto) for f in flows]
        elif name == "client_ip":
            values = [text(f.ip_version, f.client_hi, f.client_lo) for f in flows]
        elif name == "server_ip":
            values = [text(f.ip_version, f.server_hi, f.server_lo) for f in flows]
        elif name == "tunnel":
            values = [TUNNEL_NAMES[f.tunnel] if f.tunnel < len(TUNNEL_NAMES) else str(f.tunnel) for f in flows]
        elif name == "first_seen":
            data[name] = pd.to_datetime(first, unit="ns", utc=True)
            continue
        elif name == "last_seen":
            data[name] = pd.to_datetime(last, unit="ns", utc=True)
            continue
        elif name == "duration_s":
            data[name] = pd.Series((last - first) / 1e9, dtype="float64")
            continue
        elif name == "capture":
            values = [capture] * n
        elif name in LABEL_NAMES:
            values = label_columns.get(name)
            if values is None:
                values = [""] * n
        else:
            values = ints(name)  # the Flow attribute of the same name
        data[name] = pd.Series(values, dtype=dtype)
    frame = pd.DataFrame(data)
    return frame.astype(FLOW_DTYPES)
