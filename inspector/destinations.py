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
Every bucket finds the calls containing it in one search over the calls' edges
(``windows_containing``), so the cost does not grow with buckets x calls.

Sent means from this machine: the flow's client-to-server direction, swapped for flows where this
machine is the server (``sessions.flow_sides``). ``organisation``, ``kind``, ``category`` and
``evidence`` are those of the strongest flow of the group: the highest confidence, then the most
bytes inside the window.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from inspector.schema import DESTINATION_COLUMNS, empty_frame

GROUP_KEYS = ["out_capture", "session_id", "destination", "service"]
#: The capture name of every row when the run's captures are merged into one timeline.
MERGED_CAPTURE = "merged"


def grouped_searchsorted(
    keys: np.ndarray, values: np.ndarray, query_keys: np.ndarray, query_values: np.ndarray, side: str = "left"
) -> np.ndarray:
    """``np.searchsorted`` over rows sorted by (key, value), for (key, value) queries at once.

    ``keys`` are non-negative integers and the rows are sorted by key, then value. Returns per
    query the number of rows before it: rows with (key, value) lexicographically below the query
    (``side="left"``) or at most the query (``side="right"``). Values are replaced by their rank
    among the rows' distinct values, so one int64 search over ``key * (distinct + 1) + rank``
    answers every group at once, whatever the values' range (nanosecond timestamps included).
    """
    keys = np.asarray(keys, dtype=np.int64)
    values = np.asarray(values)
    query_keys = np.asarray(query_keys, dtype=np.int64)
    distinct = np.unique(values)
    stride = np.int64(distinct.size + 1)
    row_codes = keys * stride + np.searchsorted(distinct, values, side="left") + 1
    # A row (k, v) counts when k < qk, or k == qk and rank(v) + 1 <= #{distinct values below the
    # query} ("left": v < qv) or <= #{distinct values at most the query} ("right": v <= qv).
    query_codes = query_keys * stride + np.searchsorted(distinct, query_values, side=side)
    return np.searchsorted(row_codes, query_codes, side="right")


def expand_ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, index) for every index in the ranges [starts[i], starts[i] + counts[i]), owner i."""
    counts = np.asarray(counts, dtype=np.int64)
    owner = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    offsets = np.cumsum(counts) - counts
    index = np.arange(owner.size, dtype=np.int64) - offsets[owner] + np.asarray(starts, dtype=np.int64)[owner]
    return owner, index


def windows_containing(
    point_keys: np.ndarray, point_ns: np.ndarray, window_keys: np.ndarray, start_ns: np.ndarray, end_ns: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every (point, window) pair with the same key and start_ns <= point_ns <= end_ns.

    Keys are non-negative integers (a window with a negative key matches nothing). Windows of
    one key may overlap, so a point can be in several. The windows' edges cut each key's
    timeline into elementary segments inside which the set of open windows does not change;
    each point finds its segment with one search and takes that segment's windows. Cost:
    O((points + windows) x log windows + pairs), instead of one pass over the points per window.

    Returns (point rows, window rows), sorted by point, then window.
    """
    point_keys = np.asarray(point_keys, dtype=np.int64)
    point_ns = np.asarray(point_ns, dtype=np.int64)
    usable = np.flatnonzero(np.asarray(window_keys, dtype=np.int64) >= 0)
    empty = np.zeros(0, dtype=np.int64)
    if usable.size == 0 or point_ns.size == 0:
        return empty, empty
    window_keys = np.asarray(window_keys, dtype=np.int64)[usable]
    start_ns = np.asarray(start_ns, dtype=np.int64)[usable]
    stop_ns = np.asarray(end_ns, dtype=np.int64)[usable] + 1  # [start, end] as [start, end + 1)
    edge_keys = np.concatenate([window_keys, window_keys])
    edge_ns = np.concatenate([start_ns, stop_ns])
    order = np.lexsort((edge_ns, edge_keys))
    keep = np.ones(order.size, dtype=bool)
    keep[1:] = (edge_keys[order][1:] != edge_keys[order][:-1]) | (edge_ns[order][1:] != edge_ns[order][:-1])
    edge_keys, edge_ns = edge_keys[order][keep], edge_ns[order][keep]
    # Window w is open in the segments from the one its start opens up to the one its stop opens.
    first_segment = grouped_searchsorted(edge_keys, edge_ns, window_keys, start_ns, "left")
    stop_segment = grouped_searchsorted(edge_keys, edge_ns, window_keys, stop_ns, "left")
    window_of_pair, segment_of_pair = expand_ranges(first_segment, stop_segment - first_segment)
    by_segment = np.lexsort((window_of_pair, segment_of_pair))
    segment_windows = window_of_pair[by_segment]
    segment_bounds = np.searchsorted(segment_of_pair[by_segment], np.arange(edge_ns.size + 1))
    # A point's segment is the last edge at or before it, of the point's own key.
    segment = grouped_searchsorted(edge_keys, edge_ns, point_keys, point_ns, "right") - 1
    found = segment >= 0
    found[found] = edge_keys[segment[found]] == point_keys[found]
    segment = np.where(found, segment, 0)
    counts = np.where(found, segment_bounds[segment + 1] - segment_bounds[segment], 0)
    points, at = expand_ranges(segment_bounds[segment], counts)
    return points, usable[segment_windows[at]]


def _window_keys(sides: pd.DataFrame, windows: pd.DataFrame, merge: bool) -> tuple[np.ndarray, np.ndarray]:
    """(key per row of ``sides``, key per window): equal keys for the same machine in the same
    capture (the same machine only, with merge); -1 for a window whose machine or capture has no
    flow."""
    capture_codes, capture_names = pd.factorize(sides["capture"].to_numpy(dtype=object))
    local_codes, local_names = pd.factorize(sides["local_ip"].to_numpy(dtype=object))
    window_local = pd.Index(local_names).get_indexer(windows["client_ip"].to_numpy(dtype=object))
    if merge:
        return local_codes.astype(np.int64), window_local.astype(np.int64)
    window_capture = pd.Index(capture_names).get_indexer(windows["capture"].to_numpy(dtype=object))
    n_locals = max(len(local_names), 1)
    side_key = capture_codes.astype(np.int64) * n_locals + local_codes
    window_key = np.where((window_capture >= 0) & (window_local >= 0), window_capture * n_locals + window_local, -1)
    return side_key, window_key.astype(np.int64)


def _flow_runs(directed, sides: pd.DataFrame, windows: pd.DataFrame, merge: bool) -> dict[str, np.ndarray]:
    """Per (window or outside, flow) with buckets there: the buckets' sums, first/last packet,
    the window row (``len(windows)`` for outside) and the flow's first bucket position; rows
    per window in ``windows`` order, then outside, each in order of the flow's first bucket.

    ``directed``: ``sessions.DirectedBuckets``, or an iterable of them that never splits a flow
    over two (``sessions.BucketSource.chunks``): each is counted on its own and the runs joined.
    """
    chunks = [directed] if hasattr(directed, "side") else directed
    side_key, window_key = _window_keys(sides, windows, merge)
    start_ns = windows["start_ns"].to_numpy(dtype=np.int64)
    end_ns = windows["end_ns"].to_numpy(dtype=np.int64)
    parts = [_chunk_runs(chunk, side_key, window_key, start_ns, end_ns) for chunk in chunks]
    runs = {name: np.concatenate([p[name] for p in parts] or [np.zeros(0, dtype=np.int64)]) for name in RUN_FIELDS}
    by_position = np.lexsort((runs["position"], runs["label"]))
    return {name: values[by_position] for name, values in runs.items()}


RUN_FIELDS = (
    "label", "side", "position", "sent_bytes", "received_bytes", "sent_packets", "received_packets", "first_ns",
    "last_ns",
)  # fmt: skip


def _chunk_runs(directed, side_key, window_key, start_ns, end_ns) -> dict[str, np.ndarray]:
    """``_flow_runs`` of one chunk of buckets, in (label, flow, position) order."""
    n_windows = window_key.size
    points, hits = windows_containing(side_key[directed.side], directed.first_ns, window_key, start_ns, end_ns)
    outside = np.ones(directed.side.size, dtype=bool)
    outside[points] = False
    rows = np.concatenate([points, np.flatnonzero(outside)])
    label = np.concatenate([hits, np.full(rows.size - points.size, n_windows, dtype=np.int64)])
    # Bucket rows are sorted by flow, then position, and each label's rows come from one part,
    # in row order: a stable sort by label gives (label, flow, position) order.
    order = np.argsort(label, kind="stable")
    rows, label = rows[order], label[order]
    side = directed.side[rows]
    change = np.ones(rows.size, dtype=bool)
    change[1:] = (label[1:] != label[:-1]) | (side[1:] != side[:-1])
    starts = np.flatnonzero(change)
    if starts.size == 0:
        return {name: np.zeros(0, dtype=np.int64) for name in RUN_FIELDS}
    return {
        "label": label[starts],
        "side": side[starts],
        "position": directed.position[rows[starts]],
        "sent_bytes": np.add.reduceat(directed.sent_bytes[rows], starts),
        "received_bytes": np.add.reduceat(directed.received_bytes[rows], starts),
        "sent_packets": np.add.reduceat(directed.sent_packets[rows], starts),
        "received_packets": np.add.reduceat(directed.received_packets[rows], starts),
        "first_ns": np.minimum.reduceat(directed.first_ns[rows], starts),
        "last_ns": np.maximum.reduceat(directed.last_ns[rows], starts),
    }


def _run_labels(runs, sides: pd.DataFrame, windows: pd.DataFrame, merge: bool) -> tuple[np.ndarray, np.ndarray]:
    """(out_capture, session_id) per run: the window's, or the flow's capture ("merged" with
    merge) and "" outside."""
    n = len(windows)
    inside = runs["label"] < n
    window_capture = np.append(windows["capture"].to_numpy(dtype=object), MERGED_CAPTURE)
    window_session = np.append(windows["session_id"].to_numpy(dtype=object), "")
    out_capture = window_capture[runs["label"]]
    if not merge:
        captures = sides["capture"].to_numpy(dtype=object)
        out_capture = np.where(inside, out_capture, captures[runs["side"]])
    return out_capture.astype(object), window_session[runs["label"]].astype(object)


def window_flows(directed, sides: pd.DataFrame, windows: pd.DataFrame, merge: bool) -> pd.DataFrame:
    """Per (call or outside, flow): the flow's buckets counted there, with ``out_capture`` and
    ``session_id`` and the flow's ``sessions.flow_sides`` columns.

    ``directed``: ``sessions.DirectedBuckets`` (rows sorted by flow). ``windows``: capture
    ("merged" with merge), session_id, client_ip, start_ns, end_ns. Rows come per window in
    ``windows`` order, then outside, each in order of the flow's first bucket.
    """
    runs = _flow_runs(directed, sides, windows, merge)
    out_capture, session_id = _run_labels(runs, sides, windows, merge)
    frame = sides.iloc[runs["side"]].reset_index(drop=True)
    for name in ("sent_bytes", "received_bytes", "sent_packets", "received_packets", "first_ns", "last_ns"):
        frame[name] = runs[name]
    frame["out_capture"] = out_capture
    frame["session_id"] = session_id
    return frame


def string_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct strings, rank of each value): code point order, as Python compares.

    Values are hashed into distinct ones first; only those are sorted with Python comparisons.
    """
    codes, distinct = pd.factorize(np.asarray(values, dtype=object))
    if codes.size == 0:
        return np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64)
    order = np.argsort(np.asarray(distinct, dtype=object), kind="stable")
    rank_of_distinct = np.empty(order.size, dtype=np.int64)
    rank_of_distinct[order] = np.arange(order.size)
    return np.asarray(distinct, dtype=object)[order], rank_of_distinct[codes]


def _group_codes(*codes: np.ndarray) -> np.ndarray:
    """Group number per row for the tuple of integer codes, numbered by first appearance."""
    group = np.zeros(codes[0].size, dtype=np.int64)
    for code in codes:
        group = pd.factorize(group * (int(code.max(initial=0)) + 1) + code)[0].astype(np.int64)
    return group


def _joined_server_ips(group: np.ndarray, remote_ip: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group: its distinct remote addresses in string order, ';'-joined."""
    names, rank = string_ranks(remote_ip)
    pairs = np.unique(group * np.int64(names.size) + rank)
    pair_group, pair_ip = pairs // names.size, pairs % names.size
    bounds = np.searchsorted(pair_group, np.arange(n_groups + 1))
    ips = names[pair_ip].tolist()
    return np.array([";".join(ips[lo:hi]) for lo, hi in itertools.pairwise(bounds)], dtype=object)


def destinations_table(directed, sides: pd.DataFrame, windows: pd.DataFrame, merge: bool) -> pd.DataFrame:
    """Rows of ``schema.DESTINATION_COLUMNS`` (rules in the module docstring).

    ``directed``: activity buckets counted from this machine's side (``sessions.DirectedBuckets``,
    or chunks of them that never split a flow: ``sessions.BucketSource.chunks``);
    ``sides``: ``sessions.flow_sides``; ``windows``: capture ("merged" with merge), session_id,
    client_ip, start_ns, end_ns, in session order. Rows per capture, then session (outside rows
    last), then most bytes sent, most received, destination name.
    """
    runs = _flow_runs(directed, sides, windows, merge)
    if runs["side"].size == 0:
        return empty_frame(DESTINATION_COLUMNS)
    out_capture, session_id = _run_labels(runs, sides, windows, merge)
    side = runs["side"]
    _, capture_rank = string_ranks(out_capture)
    destination_names, destination_rank = string_ranks(sides["destination"].to_numpy(dtype=object)[side])
    service_codes = pd.factorize(sides["service"].to_numpy(dtype=object)[side])[0].astype(np.int64)
    # Groups (capture, session, destination, service), numbered in order of first appearance.
    group = _group_codes(runs["label"], capture_rank, destination_rank, service_codes)
    n_groups = int(group.max()) + 1
    by_group = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[by_group], np.arange(n_groups))
    first_run = by_group[bounds]

    def total(name: str, reduce=np.add) -> np.ndarray:
        return reduce.reduceat(runs[name][by_group], bounds)

    # The strongest flow of a group: highest confidence, then most bytes inside the window.
    rank = sides["confidence_rank"].to_numpy(dtype=np.int64)[side]
    run_bytes = runs["sent_bytes"] + runs["received_bytes"]
    strongest = np.lexsort((np.arange(side.size), -run_bytes, -rank, group))[bounds]
    table = {
        "capture": out_capture[first_run],
        "session_id": session_id[first_run],
        "destination": destination_names[destination_rank[first_run]],
        "server_ips": _joined_server_ips(group, sides["remote_ip"].to_numpy(dtype=object)[side], n_groups),
        "service": sides["service"].to_numpy(dtype=object)[side[first_run]],
        "flows": np.diff(np.append(bounds, group.size)).astype(np.int64),
        "bytes_sent": total("sent_bytes"),
        "bytes_received": total("received_bytes"),
        "packets_sent": total("sent_packets"),
        "packets_received": total("received_packets"),
        "first_seen": pd.to_datetime(total("first_ns", np.minimum), unit="ns", utc=True),
        "last_seen": pd.to_datetime(total("last_ns", np.maximum), unit="ns", utc=True),
        "during_call": runs["label"][first_run] < len(windows),
    }
    for name in ("organisation", "kind", "category", "evidence"):
        table[name] = sides[name].to_numpy(dtype=object)[side[strongest]]
    order = np.lexsort((
        np.arange(n_groups), destination_rank[first_run], -table["bytes_received"], -table["bytes_sent"],
        runs["label"][first_run], capture_rank[first_run],
    ))  # fmt: skip
    frame = pd.DataFrame({name: pd.Series(table[name]).take(order).reset_index(drop=True)
                          for name, _, _ in DESTINATION_COLUMNS})  # fmt: skip
    return frame.astype({name: dtype for name, dtype, _ in DESTINATION_COLUMNS})


__all__ = [
    "MERGED_CAPTURE",
    "destinations_table",
    "expand_ranges",
    "grouped_searchsorted",
    "string_ranks",
    "window_flows",
    "windows_containing",
]
