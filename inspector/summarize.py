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


def _address_texts(version: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Textual addresses of (version, hi, lo) columns, formatted once per distinct address."""
    n = version.shape[0]
    if n == 0:
        return np.zeros(0, dtype=object)
    triples = np.empty((n, 3), dtype=np.uint64)
    triples[:, 0], triples[:, 1], triples[:, 2] = version, hi, lo
    distinct, inverse = np.unique(triples, axis=0, return_inverse=True)
    text = np.array([address_text(int(v), int(h), int(l)) for v, h, l in distinct.tolist()], dtype=object)
    return text[inverse.reshape(-1)]


def _strings(distinct: Sequence[str], codes: np.ndarray) -> pd.Series:
    """A "string" column of ``distinct[codes]``: each distinct value converted once."""
    return pd.Series(pd.array(np.asarray(distinct, dtype=object), dtype="string").take(codes))


def flows_frame(capture: str, records: np.ndarray, labels: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """One row per flow, columns and dtypes of ``schema.FLOW_COLUMNS``.

    ``records``: ``flowstore.RECORD_DTYPE`` rows in flow-id order. ``labels``: per label column
    (``labels.LABEL_COLUMNS``), the value of each label code (``LabelBook.columns()``); without
    it, or for a column it lacks, the column stays empty. Text is converted once per distinct
    value (addresses, transports, labels), never once per flow.
    """
    n = records.shape[0]
    first = records["first_seen_ns"].astype(np.int64)
    last = records["last_seen_ns"].astype(np.int64)
    codes = records["label"].astype(np.int64)
    if labels is not None and n and int(codes.min()) < 0:
        raise ValueError(f"{capture}: {int((codes < 0).sum())} flows have no label")
    addresses = _address_texts(
        np.concatenate([records["ip_version"], records["ip_version"]]),
        np.concatenate([records["client_hi"], records["server_hi"]]),
        np.concatenate([records["client_lo"], records["server_lo"]]),
    )
    protocols, protocol_codes = np.unique(records["proto"], return_inverse=True)
    tunnels, tunnel_codes = np.unique(records["tunnel"], return_inverse=True)
    data: dict[str, object] = {}
    for name, dtype, _ in FLOW_COLUMNS:
        if name == "transport":
            data[name] = _strings([transport_name(int(p)) for p in protocols], protocol_codes.reshape(-1))
        elif name == "client_ip":
            data[name] = pd.Series(addresses[:n], dtype=dtype)
        elif name == "server_ip":
            data[name] = pd.Series(addresses[n:], dtype=dtype)
        elif name == "tunnel":
            names = [TUNNEL_NAMES[t] if t < len(TUNNEL_NAMES) else str(t) for t in tunnels.tolist()]
            data[name] = _strings(names, tunnel_codes.reshape(-1))
        elif name == "first_seen":
            data[name] = pd.to_datetime(first, unit="ns", utc=True)
        elif name == "last_seen":
            data[name] = pd.to_datetime(last, unit="ns", utc=True)
        elif name == "duration_s":
            data[name] = pd.Series((last - first) / 1e9, dtype="float64")
        elif name == "capture":
            data[name] = _strings([capture], np.zeros(n, dtype=np.int64))
        elif name in LABEL_NAMES:
            values = labels.get(name) if labels is not None else None
            data[name] = _strings([""], np.zeros(n, dtype=np.int64)) if values is None else _strings(values, codes)
        else:
            data[name] = pd.Series(records[name].astype(np.int64), dtype=dtype)
    frame = pd.DataFrame(data)
    return frame.astype(FLOW_DTYPES)
