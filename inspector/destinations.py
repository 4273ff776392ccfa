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
bytes inside the window, then the flow whose first bucket there comes first.

Memory: the buckets arrive in chunks that never split a flow (``sessions.BucketSource.chunks``)
and are matched to the windows a slice at a time (``SLICE_BUCKETS``). Text columns of
``sides`` are coded once per distinct string (``_SideCodes``); each slice's (window, flow) runs
carry integer codes only and are folded into groups at once (``_GroupFolder``), so what is held
grows with the number of groups, not of runs, and strings are built for the final rows only.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from inspector.ordering import run_changes, run_starts
from inspector.schema import DESTINATION_COLUMNS, empty_frame

#: The capture name of every row when the run's captures are merged into one timeline.
MERGED_CAPTURE = "merged"


class SortedGroups:
    """Rows sorted by (key, value), prepared once for many ``grouped_searchsorted`` questions.

    Values are replaced by their rank among the rows' distinct values, so one int64 search over
    ``key * (distinct + 1) + rank`` answers every group at once, whatever the values' range
    (nanosecond timestamps included).
    """

    def __init__(self, keys: np.ndarray, values: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        values = np.asarray(values)
        self.distinct = np.unique(values)
        self.stride = np.int64(self.distinct.size + 1)
        self.row_codes = keys * self.stride + np.searchsorted(self.distinct, values, side="left") + 1

    def rows_before(self, query_keys: np.ndarray, query_values: np.ndarray, side: str = "left") -> np.ndarray:
        # A row (k, v) counts when k < qk, or k == qk and rank(v) + 1 <= #{distinct values below
        # the query} ("left": v < qv) or <= #{distinct values at most the query} ("right": v <= qv).
        query_keys = np.asarray(query_keys, dtype=np.int64)
        query_codes = query_keys * self.stride + np.searchsorted(self.distinct, query_values, side=side)
        return np.searchsorted(self.row_codes, query_codes, side="right")


def grouped_searchsorted(
    keys: np.ndarray, values: np.ndarray, query_keys: np.ndarray, query_values: np.ndarray, side: str = "left"
) -> np.ndarray:
    """``np.searchsorted`` over rows sorted by (key, value), for (key, value) queries at once.

    ``keys`` are non-negative integers and the rows are sorted by key, then value. Returns per
    query the number of rows before it: rows with (key, value) lexicographically below the query
    (``side="left"``) or at most the query (``side="right"``). See ``SortedGroups``.
    """
    return SortedGroups(keys, values).rows_before(query_keys, query_values, side)


def expand_ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, index) for every index in the ranges [starts[i], starts[i] + counts[i]), owner i."""
    counts = np.asarray(counts, dtype=np.int64)
    owner = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    offsets = np.cumsum(counts) - counts
    index = np.arange(owner.size, dtype=np.int64) - offsets[owner] + np.asarray(starts, dtype=np.int64)[owner]
    return owner, index


class WindowIndex:
    """Windows [start_ns, end_ns] per integer key, prepared once for ``windows_containing``
    questions (asked once per slice of buckets).

    Keys are non-negative integers (a window with a negative key matches nothing). Windows of
    one key may overlap, so a point can be in several. The windows' edges cut each key's
    timeline into elementary segments inside which the set of open windows does not change;
    each point finds its segment with one search and takes that segment's windows.
    """

    def __init__(self, window_keys: np.ndarray, start_ns: np.ndarray, end_ns: np.ndarray) -> None:
        window_keys = np.asarray(window_keys, dtype=np.int64)
        self.n_windows = window_keys.size
        self.usable = np.flatnonzero(window_keys >= 0)
        if self.usable.size == 0:
            return
        window_keys = window_keys[self.usable]
        start_ns = np.asarray(start_ns, dtype=np.int64)[self.usable]
        stop_ns = np.asarray(end_ns, dtype=np.int64)[self.usable] + 1  # [start, end] as [start, end + 1)
        edge_keys = np.concatenate([window_keys, window_keys])
        edge_ns = np.concatenate([start_ns, stop_ns])
        order = np.lexsort((edge_ns, edge_keys))
        edge_keys, edge_ns = edge_keys[order], edge_ns[order]
        keep = run_changes(edge_keys, edge_ns)
        self.edge_keys, edge_ns = edge_keys[keep], edge_ns[keep]
        self.edges = SortedGroups(self.edge_keys, edge_ns)
        # Window w is open in the segments from the one its start opens up to the one its stop opens.
        first_segment = self.edges.rows_before(window_keys, start_ns, "left")
        stop_segment = self.edges.rows_before(window_keys, stop_ns, "left")
        window_of_pair, segment_of_pair = expand_ranges(first_segment, stop_segment - first_segment)
        by_segment = np.lexsort((window_of_pair, segment_of_pair))
        self.segment_windows = window_of_pair[by_segment]
        self.segment_bounds = np.searchsorted(segment_of_pair[by_segment], np.arange(edge_ns.size + 1))

    def containing(self, point_keys: np.ndarray, point_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (point, window) pair with the same key and start_ns <= point_ns <= end_ns, as
        (point rows, window rows), sorted by point, then window."""
        point_keys = np.asarray(point_keys, dtype=np.int64)
        point_ns = np.asarray(point_ns, dtype=np.int64)
        if self.usable.size == 0 or point_ns.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        # A point's segment is the last edge at or before it, of the point's own key.
        segment = self.edges.rows_before(point_keys, point_ns, "right") - 1
        found = segment >= 0
        found[found] = self.edge_keys[segment[found]] == point_keys[found]
        segment = np.where(found, segment, 0)
        counts = np.where(found, self.segment_bounds[segment + 1] - self.segment_bounds[segment], 0)
        points, at = expand_ranges(self.segment_bounds[segment], counts)
        return points, self.usable[self.segment_windows[at]]


def windows_containing(
    point_keys: np.ndarray, point_ns: np.ndarray, window_keys: np.ndarray, start_ns: np.ndarray, end_ns: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every (point, window) pair with the same key and start_ns <= point_ns <= end_ns
    (``WindowIndex`` for a single question). Cost: O((points + windows) x log windows + pairs),
    instead of one pass over the points per window.

    Returns (point rows, window rows), sorted by point, then window.
    """
    return WindowIndex(window_keys, start_ns, end_ns).containing(point_keys, point_ns)


#: Initial hash-table size when a column of ``sides`` is factorised. pandas sizes the table for
#: every row by default (16 MB for 250,000 flows); it grows with the distinct values instead, and
#: a column has far fewer distinct values (names, addresses, captures) than flows.
FACTORIZE_SIZE_HINT = 1 << 10


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize`` (codes by first appearance, distinct values) with a hash table that
    grows with the distinct values rather than being sized for every row."""
    values = np.asarray(values)
    return pd.factorize(values, size_hint=min(values.size, FACTORIZE_SIZE_HINT))


def _window_keys(sides: pd.DataFrame, windows: pd.DataFrame, merge: bool) -> tuple[np.ndarray, np.ndarray]:
    """(key per row of ``sides``, key per window): equal keys for the same machine in the same
    capture (the same machine only, with merge); -1 for a window whose machine or capture has no
    flow."""
    capture_codes, capture_names = _factorize(sides["capture"].to_numpy(dtype=object))
    local_codes, local_names = _factorize(sides["local_ip"].to_numpy(dtype=object))
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
    start_ns, end_ns = windows["start_ns"].to_numpy(dtype=np.int64), windows["end_ns"].to_numpy(dtype=np.int64)
    index = WindowIndex(window_key, start_ns, end_ns)
    parts = [_chunk_runs(chunk, side_key, index) for chunk in chunks]
    runs = {name: np.concatenate([p[name] for p in parts] or [np.zeros(0, dtype=np.int64)]) for name in RUN_FIELDS}
    by_position = np.lexsort((runs["position"], runs["label"]))
    return {name: values[by_position] for name, values in runs.items()}


RUN_FIELDS = (
    "label", "side", "position", "sent_bytes", "received_bytes", "sent_packets", "received_packets", "first_ns",
    "last_ns",
)  # fmt: skip


#: Buckets matched to the windows at once (``_flow_slices``): the matching makes about a dozen
#: int64 temporaries per bucket, so a slice of 2^16 buckets costs ~6 MB whatever the chunk size.
SLICE_BUCKETS = 1 << 16


def _flow_slices(directed, max_rows: int = SLICE_BUCKETS):
    """``directed`` (rows sorted by side) as views of at most ``max_rows`` rows that never split
    a flow; a flow with more rows is one slice of its own."""
    side = directed.side
    lo = 0
    while lo < side.size:
        hi = min(lo + max_rows, side.size)
        if hi < side.size:  # cut at the start of the flow holding row hi
            hi = int(np.searchsorted(side, side[hi], side="left"))
            if hi <= lo:
                hi = int(np.searchsorted(side, side[lo], side="right"))
        yield directed.take(slice(lo, hi))
        lo = hi


def _chunk_runs(directed, side_key: np.ndarray, index: WindowIndex) -> dict[str, np.ndarray]:
    """``_flow_runs`` of one chunk of buckets, in (label, flow, position) order; ``side_key``
    per row of ``sides`` and ``index`` over the windows' keys from ``_window_keys``."""
    n_windows = index.n_windows
    points, hits = index.containing(side_key[directed.side], directed.first_ns)
    outside = np.ones(directed.side.size, dtype=bool)
    outside[points] = False
    rows = np.concatenate([points, np.flatnonzero(outside)])
    label = np.concatenate([hits, np.full(rows.size - points.size, n_windows, dtype=np.int64)])
    # Bucket rows are sorted by flow, then position, and each label's rows come from one part,
    # in row order: a stable sort by label gives (label, flow, position) order.
    order = np.argsort(label, kind="stable")
    rows, label = rows[order], label[order]
    side = directed.side[rows]
    starts = run_starts(label, side)
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
    codes, distinct = _factorize(np.asarray(values, dtype=object))
    if codes.size == 0:
        return np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64)
    order = np.argsort(np.asarray(distinct, dtype=object), kind="stable")
    rank_of_distinct = np.empty(order.size, dtype=np.int64)
    rank_of_distinct[order] = np.arange(order.size)
    return np.asarray(distinct, dtype=object)[order], rank_of_distinct[codes]


class _SideCodes:
    """Integer codes per row of ``sides`` and per group label, computed once per distinct string
    so that each (window or outside, flow) run carries integers only.

    A run's *label* is its window row, or for outside ``len(windows)`` plus the code of the
    flow's capture (just ``len(windows)`` with merge): the label alone fixes the row's capture and
    session_id. ``pair`` numbers the distinct (destination, service) of the sides; a group is
    one (label, pair).
    """

    def __init__(self, sides: pd.DataFrame, windows: pd.DataFrame, merge: bool) -> None:
        n_windows = len(windows)
        self.n_windows = n_windows
        self.side_key, window_key = _window_keys(sides, windows, merge)
        start_ns, end_ns = windows["start_ns"].to_numpy(dtype=np.int64), windows["end_ns"].to_numpy(dtype=np.int64)
        self.windows = WindowIndex(window_key, start_ns, end_ns)
        if merge:
            capture_codes, outside_captures = np.zeros(len(sides), dtype=np.int64), [MERGED_CAPTURE]
        else:
            capture_codes, outside_captures = _factorize(sides["capture"].to_numpy(dtype=object))
        # Codes per side as int32 (they count distinct values of at most len(sides) rows): they
        # are held while every chunk of buckets is read.
        self.outside_label = (n_windows + capture_codes).astype(np.int32)
        self.label_capture = np.concatenate([windows["capture"].to_numpy(dtype=object),
                                             np.asarray(outside_captures, dtype=object)])  # fmt: skip
        self.label_session = np.concatenate([windows["session_id"].to_numpy(dtype=object),
                                             np.full(len(outside_captures), "", dtype=object)])  # fmt: skip
        self.destination_names, destination_rank = string_ranks(sides["destination"].to_numpy(dtype=object))
        service_codes, self.service_names = _factorize(sides["service"].to_numpy(dtype=object))
        n_services = max(len(self.service_names), 1)
        pair_of_side, pairs = _factorize(destination_rank * n_services + service_codes)
        self.pair = pair_of_side.astype(np.int32)
        self.n_pairs = max(len(pairs), 1)
        self.pair_destination_rank, self.pair_service = np.divmod(np.asarray(pairs, dtype=np.int64), n_services)
        self.ip_names, ip_rank = string_ranks(sides["remote_ip"].to_numpy(dtype=object))
        self.ip_rank = ip_rank.astype(np.int32)
        self.confidence_rank = sides["confidence_rank"].to_numpy(dtype=np.int64)

    def group_key(self, label: np.ndarray, side: np.ndarray) -> np.ndarray:
        """Group per run: (label, pair) as one integer (the outside label from the flow); at most
        (windows + captures) x len(sides), far inside int64."""
        label = np.where(label < self.n_windows, label, self.outside_label[side]).astype(np.int64)
        return label * self.n_pairs + self.pair[side]


#: Per group (or part of one, while chunks are counted): its key, sums, first/last packet, the
#: earliest first-bucket position of its flows (the order in which groups first appear) and its
#: strongest flow so far (side, confidence, bytes, position).
GROUP_FIELDS = (
    "key", "flows", "sent_bytes", "received_bytes", "sent_packets", "received_packets", "first_ns", "last_ns",
    "first_position", "strongest_side", "strongest_rank", "strongest_bytes", "strongest_position",
)  # fmt: skip
_SUMMED = ("flows", "sent_bytes", "received_bytes", "sent_packets", "received_packets")


def _run_groups(runs: dict[str, np.ndarray], codes: _SideCodes) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each run as a one-flow group part, and its (key, remote address rank) pair."""
    side = runs["side"]
    key = codes.group_key(runs["label"], side)
    parts = {name: runs[name] for name in GROUP_FIELDS if name in runs}
    parts.update(
        key=key,
        flows=np.ones(side.size, dtype=np.int64),
        first_position=runs["position"],
        strongest_side=side,
        strongest_rank=codes.confidence_rank[side],
        strongest_bytes=runs["sent_bytes"] + runs["received_bytes"],
        strongest_position=runs["position"],
    )
    return parts, np.stack([key, codes.ip_rank[side]])


def _fold_groups(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Parts with the same key folded into one, sorted by key. The strongest flow: the highest
    confidence, then the most bytes inside the window, then the first to appear. The parts are
    emptied column by column as they are read, so their columns are released one by one."""

    def joined(name: str) -> np.ndarray:
        return np.concatenate([part.pop(name) for part in parts])

    key = joined("key")
    strongest_fields = {name: joined(name) for name in ("strongest_rank", "strongest_bytes", "strongest_position")}
    order = np.lexsort((strongest_fields["strongest_position"], -strongest_fields["strongest_bytes"],
                        -strongest_fields["strongest_rank"], key))  # fmt: skip
    key = key[order]
    bounds = run_starts(key)
    strongest = order[bounds]
    folded = {"key": key[bounds]}
    del key
    for name, values in strongest_fields.items():
        folded[name] = values[strongest]
    del strongest_fields
    folded["strongest_side"] = joined("strongest_side")[strongest]
    for name in _SUMMED:
        folded[name] = np.add.reduceat(joined(name)[order], bounds)
    for name, reduce in (("first_ns", np.minimum), ("last_ns", np.maximum), ("first_position", np.minimum)):
        folded[name] = reduce.reduceat(joined(name)[order], bounds)
    return folded


def _distinct_pairs(pairs: np.ndarray) -> np.ndarray:
    """Distinct columns of a (2, n) array, sorted by row 0, then row 1."""
    order = np.lexsort((pairs[1], pairs[0]))
    pairs = pairs[:, order]
    keep = np.ones(order.size, dtype=bool)
    keep[1:] = (pairs[0, 1:] != pairs[0, :-1]) | (pairs[1, 1:] != pairs[1, :-1])
    return pairs[:, keep]


class _GroupFolder:
    """Group parts from chunk after chunk, folded whenever the unfolded parts outnumber the
    folded ones, so memory follows the number of groups rather than of runs, and each part is
    folded O(log chunks) times."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []
        self.pairs: list[np.ndarray] = []
        self.unfolded_rows = 0
        self.folded_rows = 0

    def add(self, parts: dict[str, np.ndarray], pairs: np.ndarray) -> None:
        self.parts.append(parts)
        self.pairs.append(pairs)
        self.unfolded_rows += parts["key"].size
        if self.unfolded_rows > self.folded_rows:
            self.fold()

    def fold(self) -> None:
        folded = _fold_groups(self.parts)
        self.parts = [folded]
        pairs = np.concatenate(self.pairs, axis=1)
        self.pairs = []  # the joined copy only, while it is sorted
        self.pairs = [_distinct_pairs(pairs)]
        self.folded_rows, self.unfolded_rows = folded["key"].size, 0

    def result(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if self.unfolded_rows:
            self.fold()
        return self.parts[0], self.pairs[0]


def _joined_server_ips(group_keys: np.ndarray, pairs: np.ndarray, ip_names: np.ndarray) -> np.ndarray:
    """Per group (``group_keys`` sorted): its distinct remote addresses in string order,
    ';'-joined. ``pairs``: distinct (group key, address rank) sorted by key, then rank."""
    bounds = np.searchsorted(pairs[0], group_keys, side="left")
    bounds = np.append(bounds, pairs.shape[1])
    ips = ip_names[pairs[1]].tolist()
    return np.array([";".join(ips[lo:hi]) for lo, hi in itertools.pairwise(bounds)], dtype=object)


def destinations_table(directed, sides: pd.DataFrame, windows: pd.DataFrame, merge: bool) -> pd.DataFrame:
    """Rows of ``schema.DESTINATION_COLUMNS`` (rules in the module docstring).

    ``directed``: activity buckets counted from this machine's side (``sessions.DirectedBuckets``,
    or chunks of them that never split a flow: ``sessions.BucketSource.chunks``);
    ``sides``: ``sessions.flow_sides``; ``windows``: capture ("merged" with merge), session_id,
    client_ip, start_ns, end_ns, in session order. Rows per capture, then session (outside rows
    last), then most bytes sent, most received, destination name, then the group whose first
    bucket comes first in the activity table (capture, flow id, time).

    Memory: strings are coded once per distinct value of ``sides``; each chunk's runs are folded
    into groups at once (``_GroupFolder``), and text is built for the final groups only.
    """
    chunks = [directed] if hasattr(directed, "side") else directed
    codes = _SideCodes(sides, windows, merge)
    folder = _GroupFolder()
    for chunk in chunks:
        for piece in _flow_slices(chunk):
            runs = _chunk_runs(piece, codes.side_key, codes.windows)
            if runs["side"].size:
                folder.add(*_run_groups(runs, codes))
            del piece, runs
        del chunk  # before the next chunk is made
    if not folder.parts:
        return empty_frame(DESTINATION_COLUMNS)
    groups, pairs = folder.result()
    label, pair = np.divmod(groups["key"], codes.n_pairs)
    destination_rank = codes.pair_destination_rank[pair]
    _, capture_rank = string_ranks(codes.label_capture)
    window_or_outside = np.minimum(label, codes.n_windows)  # outside rows after every window
    table = {
        "capture": codes.label_capture[label],
        "session_id": codes.label_session[label],
        "destination": codes.destination_names[destination_rank],
        "server_ips": _joined_server_ips(groups["key"], pairs, codes.ip_names),
        "service": np.asarray(codes.service_names, dtype=object)[codes.pair_service[pair]],
        "flows": groups["flows"],
        "bytes_sent": groups["sent_bytes"],
        "bytes_received": groups["received_bytes"],
        "packets_sent": groups["sent_packets"],
        "packets_received": groups["received_packets"],
        "first_seen": pd.to_datetime(groups["first_ns"], unit="ns", utc=True),
        "last_seen": pd.to_datetime(groups["last_ns"], unit="ns", utc=True),
        "during_call": label < codes.n_windows,
    }
    for name in ("organisation", "kind", "category", "evidence"):
        table[name] = sides[name].to_numpy(dtype=object)[groups["strongest_side"]]
    order = np.lexsort((
        groups["first_position"], destination_rank, -table["bytes_received"], -table["bytes_sent"], window_or_outside,
        capture_rank[label],
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
