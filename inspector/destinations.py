"""Who received data while each call ran (``destinations.csv``), and outside every call.

For each call: every flow of the call's machine (its ``client_ip`` on either side of the flow) in
the call's capture (any capture with ``merge``), counted from the flow's 100 ms activity buckets
**inside the call window only**, grouped by (capture, session, destination, service).
``destination`` is the server name when known, else the remote address.

Bucket rule: a bucket counts for a window when its first packet (``first_ns``) lies in
[start, end]. A bucket entirely inside counts whole; one straddling the end counts whole (its
first packet is inside); one straddling the start does not count. Since a call's start and end
are its first and last media packets, the error is at most one bucket (100 ms,
``schema.ACTIVITY_BUCKET_NS``) of another flow's traffic at each edge. Weakness: a single
telemetry burst that began in the last 100 ms before the call counts as outside.

Outside rows (session_id empty, ``during_call`` False): every flow of the capture, buckets whose
first packet lies inside no call window of that capture *of the flow's own machine*, grouped by
(capture, destination, service). With one machine in the capture (the usual case) that is every
call window of the capture; with several (a gateway capture), another machine's traffic during
this machine's call is outside any call rather than lost, so every bucket is counted at least
once. A bucket inside two overlapping calls of one machine (two services at once) counts in both.

Sent means from this machine: the flow's client-to-server direction, swapped for flows where this
machine is the server (``sessions.flow_sides``). ``organisation``, ``kind``, ``category`` and
``evidence`` are those of the strongest flow of the group: the highest confidence, then the most
bytes inside the window.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from inspector.schema import DESTINATION_COLUMNS, empty_frame

GROUP_KEYS = ["out_capture", "session_id", "destination", "service"]
#: The capture name of every row when the run's captures are merged into one timeline.
MERGED_CAPTURE = "merged"


def _inside(first_ns: np.ndarray, start_ns: int, end_ns: int) -> np.ndarray:
    return (first_ns >= start_ns) & (first_ns <= end_ns)


def _flow_totals(directed, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per flow among ``rows`` (indexes into the side-sorted buckets): sums, first/last packet
    and the flow's first bucket position, one entry per flow in side order."""
    side = directed.side[rows]
    if side.size == 0:
        return {}
    change = np.ones(side.size, dtype=bool)
    change[1:] = side[1:] != side[:-1]
    starts = np.flatnonzero(change)
    return {
        "side": side[starts],
        "position": directed.position[rows][starts],
        "sent_bytes": np.add.reduceat(directed.sent_bytes[rows], starts),
        "received_bytes": np.add.reduceat(directed.received_bytes[rows], starts),
        "sent_packets": np.add.reduceat(directed.sent_packets[rows], starts),
        "received_packets": np.add.reduceat(directed.received_packets[rows], starts),
        "first_ns": np.minimum.reduceat(directed.first_ns[rows], starts),
        "last_ns": np.maximum.reduceat(directed.last_ns[rows], starts),
    }


def window_flows(directed, sides: pd.DataFrame, windows: pd.DataFrame, merge: bool) -> pd.DataFrame:
    """Per (call or outside, flow): the flow's buckets counted there, with ``out_capture`` and
    ``session_id`` and the flow's ``sessions.flow_sides`` columns.

    ``directed``: ``sessions.DirectedBuckets`` (rows sorted by flow). ``windows``: capture
    ("merged" with merge), session_id, client_ip, start_ns, end_ns. Rows come per window in
    ``windows`` order, then outside, each in order of the flow's first bucket.
    """
    first = directed.first_ns
    captures = sides["capture"].to_numpy(dtype=object)
    locals_ = sides["local_ip"].to_numpy(dtype=object)
    capture_codes, capture_names = pd.factorize(captures)
    local_codes, local_names = pd.factorize(locals_)
    capture_lookup = {name: i for i, name in enumerate(capture_names)}
    local_lookup = {name: i for i, name in enumerate(local_names)}
    row_capture = capture_codes[directed.side]
    row_local = local_codes[directed.side]
    parts: list[dict[str, np.ndarray]] = []
    labels: list[tuple[str | None, str]] = []
    outside = np.ones(first.size, dtype=bool)
    for window in windows.itertuples():
        mask = row_local == local_lookup.get(window.client_ip, -2)
        if not merge:
            mask &= row_capture == capture_lookup.get(window.capture, -2)
        mask &= _inside(first, int(window.start_ns), int(window.end_ns))
        outside &= ~mask
        totals = _flow_totals(directed, np.flatnonzero(mask))
        if totals:
            parts.append(totals)
            labels.append((window.capture, window.session_id))
    totals = _flow_totals(directed, np.flatnonzero(outside))
    if totals:
        parts.append(totals)
        labels.append((MERGED_CAPTURE if merge else None, ""))
    columns: dict[str, list[np.ndarray]] = {}
    out_captures, session_ids = [], []
    for totals, (out_capture, session_id) in zip(parts, labels):
        order = np.argsort(totals["position"], kind="stable")
        for name, values in totals.items():
            columns.setdefault(name, []).append(values[order])
        side = totals["side"][order]
        out_captures.append(captures[side] if out_capture is None else np.full(side.size, out_capture, dtype=object))
        session_ids.append(np.full(side.size, session_id, dtype=object))
    side = np.concatenate(columns.pop("side"))
    del columns["position"]
    frame = sides.iloc[side].reset_index(drop=True)
    for name, values in columns.items():
        frame[name] = np.concatenate(values)
    frame["out_capture"] = np.concatenate(out_captures)
    frame["session_id"] = np.concatenate(session_ids)
    return frame


def destinations_table(directed, sides: pd.DataFrame, windows: pd.DataFrame, merge: bool) -> pd.DataFrame:
    """Rows of ``schema.DESTINATION_COLUMNS`` (rules in the module docstring).

    ``directed``: activity buckets counted from this machine's side (``sessions.directed_activity``);
    ``sides``: ``sessions.flow_sides``.
    """
    if directed.side.size == 0:
        return empty_frame(DESTINATION_COLUMNS)
    per_flow = window_flows(directed, sides, windows, merge)
    per_flow["total_bytes"] = per_flow["sent_bytes"] + per_flow["received_bytes"]
    strongest = (
        per_flow.sort_values(["confidence_rank", "total_bytes"], ascending=False, kind="stable")
        .groupby(GROUP_KEYS, sort=False)[["organisation", "kind", "category", "evidence"]]
        .first()
    )
    grouped = per_flow.groupby(GROUP_KEYS, sort=False).agg(
        flows=("flow_id", "size"),
        bytes_sent=("sent_bytes", "sum"),
        bytes_received=("received_bytes", "sum"),
        packets_sent=("sent_packets", "sum"),
        packets_received=("received_packets", "sum"),
        first_ns=("first_ns", "min"),
        last_ns=("last_ns", "max"),
        server_ips=("remote_ip", lambda ips: ";".join(sorted(set(ips)))),
    )
    table = grouped.join(strongest).reset_index()
    order = {sid: i for i, sid in enumerate(windows["session_id"])}
    table["_order"] = table["session_id"].map(order).fillna(len(order)).astype(np.int64)
    table = table.sort_values(
        ["out_capture", "_order", "bytes_sent", "bytes_received", "destination"],
        ascending=[True, True, False, False, True],
        kind="stable",
    )
    data = {
        "capture": table["out_capture"].to_numpy(dtype=object),
        "first_seen": pd.to_datetime(table["first_ns"].to_numpy(dtype=np.int64), unit="ns", utc=True),
        "last_seen": pd.to_datetime(table["last_ns"].to_numpy(dtype=np.int64), unit="ns", utc=True),
        "during_call": (table["session_id"] != "").to_numpy(dtype=bool),
    }
    for name, _, _ in DESTINATION_COLUMNS:
        if name not in data:
            data[name] = table[name].to_numpy()
    frame = pd.DataFrame({name: data[name] for name, _, _ in DESTINATION_COLUMNS})
    return frame.astype({name: dtype for name, dtype, _ in DESTINATION_COLUMNS}).reset_index(drop=True)


__all__ = ["MERGED_CAPTURE", "destinations_table", "window_flows"]
