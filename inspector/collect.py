"""Columnar per-batch collectors for the call stage: activity buckets and RTP/RTCP headers.

Both run on every batch over numpy columns, with no per-packet Python (except the parse of
datagrams that may be plain RTCP: a few percent of media packets):

* ``ActivityCollector`` sums each flow's packets and IP-layer bytes per direction in 100 ms buckets
  (schema.ACTIVITY_COLUMNS), so the call stage can count bytes *inside* a call window.
* ``RtpCollector`` reads the RTP header of every UDP packet that can carry RTP: plain RTP/SRTP
  (RFC 3550 §5.1: version 2 in the top two bits; SRTP leaves the header in clear, RFC 3711 §3.1)
  and RTP inside Zoom's media encapsulation (protocol-facts.md §2, the layouts of
  ``inspector.dissect.zoom``: outer type 0x05 with the inner header at 8 (2022 clients, direction
  byte 7 = 0x00/0x04) or at 1 (2019 clients) on server flows; the inner header at 0 on P2P flows), and
  folds the header fields into per-stream running state (``media_stats.RunningStreams``), so it
  holds O(streams) whatever the capture length. RTCP packets (second byte 200-207 per RFC 3550
  §12.1, the RFC 5761 §4 demultiplexing rule) are parsed as they arrive into the report blocks
  the call stage reads (``media_stats.RunningReports``).
  Weakness: the first-byte test admits non-RTP payloads that start with 0b10; the call stage keeps
  only streams of flows the classifier judged media (RTP validation over several packets happened
  in the detectors), and the running state forgets streams of under 5 packets once they end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

from inspector import spill
from inspector.decode import IPPROTO_UDP, DecodedBatch
from inspector.dissect import zoom
from inspector.flows import BatchFlows
from inspector.media_stats import (
    RunningReports,
    RunningStreams,
    report_frame,
    segment_frame,
)
from inspector.ordering import unique_inverse
from inspector.schema import (
    ACTIVITY_BUCKET_NS,
    ACTIVITY_COLUMNS,
    CALL_MAX_GAP_S,
    RTP_COLUMNS,
)
from inspector.spill import PartitionedRecords

if TYPE_CHECKING:  # pandas is imported where frames are made: the packet path never needs it
    import pandas as pd

# Zoom's layouts (protocol-facts.md §2.3, Michel et al. IMC '22), one table in dissect/zoom.py.
ZOOM_AUDIO: Final = zoom.INNER_AUDIO
ZOOM_VIDEO: Final = zoom.INNER_VIDEO
ZOOM_SCREEN_SERVER: Final = zoom.INNER_SCREEN_SERVER
ZOOM_SCREEN_P2P: Final = zoom.INNER_SCREEN_P2P
ZOOM_RTCP_TYPES: Final = zoom.INNER_RTCP
ZOOM_UNKNOWN_RTP: Final = zoom.INNER_UNKNOWN_RTP
ZOOM_OUTER_MEDIA: Final = zoom.SFU_MEDIA
ZOOM_OUTER_LEN: Final = zoom.SFU_OUTER_LEN
ZOOM_LEGACY_OUTER_LEN: Final = zoom.SFU_LEGACY_OUTER_LEN
ZOOM_DIRECTIONS: Final = (zoom.DIRECTION_TO_SERVER, zoom.DIRECTION_FROM_SERVER)  # byte 7, 2022 layout
#: The inner types whose packets embed an RTP header: ``_zoom_rtp_offset`` is -1 for any other.
ZOOM_RTP_TYPES: Final = (ZOOM_AUDIO, ZOOM_VIDEO, ZOOM_SCREEN_P2P, ZOOM_SCREEN_SERVER, ZOOM_UNKNOWN_RTP)


def _zoom_rtp_offset(inner_type: np.ndarray, byte20: np.ndarray, byte7: np.ndarray) -> np.ndarray:
    """Offset of the embedded RTP header from the inner header, -1 for types without RTP
    (dissect.zoom ``_inner_rtp_offset``; RTCP types are left to the RTCP path)."""
    return np.select(
        [
            inner_type == ZOOM_AUDIO,
            (inner_type == ZOOM_VIDEO) & (byte20 == 0x02),
            inner_type == ZOOM_VIDEO,
            inner_type == ZOOM_SCREEN_P2P,
            (inner_type == ZOOM_SCREEN_SERVER) & (byte7 == 0x1E),
            inner_type == ZOOM_UNKNOWN_RTP,
        ],
        [19, 24, 20, 20, 27, 26],
        default=-1,
    )


#: One (flow, 100 ms bucket) row as the collector keeps it, 40 bytes instead of eight int64
#: columns (the buckets are the largest thing the call stage keeps that grows with capture
#: length). ``bucket`` is the bucket number (ts_ns // ACTIVITY_BUCKET_NS); the first and last
#: packet times are offsets from the bucket's start (< 10^8 ns, so 32 bits). Packets and IP-layer
#: bytes per direction per bucket fit 32 bits: 2^32 bytes in 100 ms would be 343 Gbit/s on one
#: flow. Weakness: past that rate a bucket's byte count would wrap.
BUCKET_DTYPE: Final = np.dtype(
    [
        ("flow_id", "<i8"),
        ("bucket", "<i8"),
        ("first_offset_ns", "<u4"),
        ("last_offset_ns", "<u4"),
        ("client_to_server_packets", "<u4"),
        ("client_to_server_bytes", "<u4"),
        ("server_to_client_packets", "<u4"),
        ("server_to_client_bytes", "<u4"),
    ]
)
_COUNT_FIELDS: Final = ("client_to_server_packets", "client_to_server_bytes", "server_to_client_packets", "server_to_client_bytes")


#: Buckets are kept per range of 2^13 flow ids: a flow's buckets all fall in one range, so the
#: call stage reads, sorts and counts one range at a time (``ActivityBuckets.partitions``).
#: A range is read and sorted whole, so its size bounds that step's memory: on the 5x benchmark
#: capture (247 k flows) ranges of 2^16 flows peaked at 358 MiB for the run, 2^13 at 337 MiB
#: (2^11 no lower), in the same time.
PARTITION_BITS = 13


class ActivityBuckets:
    """One capture's activity buckets, per range of flow ids (``PARTITION_BITS``), in memory or
    in a temporary file (``spill.PartitionedRecords``). ``partitions()`` gives each range's rows
    sorted by (flow_id, bucket), one row per pair, ranges in flow-id order; it can be gone over
    more than once and never holds more than one range. The temporary file goes with the object.
    """

    def __init__(self, capture: str, store: PartitionedRecords, sorted_keys: set[int] | None = None) -> None:
        """``sorted_keys``: ranges of ``store`` already stored sorted and folded
        (``ActivityCollector.sort_ranges``)."""
        self.capture = capture
        self._store = store
        self._sorted: set[int] = set() if sorted_keys is None else sorted_keys

    def __len__(self) -> int:
        """Rows held: a range not yet gone over by ``partitions`` counts a pair split over two
        batches twice."""
        return len(self._store)

    def partitions(self):
        """The first time over a range, its sorted and folded rows replace those stored, so a
        later pass only reads them: the call stage goes over every range twice (the media
        flows' buckets, then every destination's), and the sort was ~0.05 s of each pass on
        the benchmark capture."""
        for key in self._store.keys():
            if key in self._sorted:
                yield self._store.read(key)
                continue
            rows = _sorted_folded(self._store.take(key))
            self._store.append(key, rows)
            self._sorted.add(key)
            yield rows

    def sorted_rows(self) -> np.ndarray:
        """Every row, sorted by (flow_id, bucket) and folded."""
        parts = list(self.partitions())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=BUCKET_DTYPE)


def _pair_order(rows: np.ndarray) -> np.ndarray:
    """Rows in (flow_id, bucket) order: one int64 key when flow x bucket span fits, else lexsort."""
    flow, bucket = rows["flow_id"], rows["bucket"]
    low = int(bucket.min())
    span = int(bucket.max()) - low + 1
    if int(flow.max()) < (1 << 62) // span and int(flow.min()) >= 0:
        key = flow * span + (bucket - low)
        # The rows come as sorted runs (one per batch or file block): timsort merges them in
        # near-linear time, faster here than a full sort (``ordering`` module docstring).
        return np.argsort(key, kind="stable")
    return np.lexsort((bucket, flow))


def _sorted_folded(rows: np.ndarray) -> np.ndarray:
    """``BUCKET_DTYPE`` rows sorted by (flow_id, bucket), rows of the same pair folded into one
    (a pair whose packets straddle two batches arrives twice)."""
    if rows.shape[0] == 0:
        return rows
    order = _pair_order(rows)
    if (order[1:] < order[:-1]).any():
        rows = rows[order]
    del order
    flow, bucket = rows["flow_id"], rows["bucket"]
    repeat = (flow[1:] == flow[:-1]) & (bucket[1:] == bucket[:-1])
    if not repeat.any():
        return rows
    starts = np.flatnonzero(np.r_[True, ~repeat])
    folded = rows[starts]
    folded["first_offset_ns"] = np.minimum.reduceat(rows["first_offset_ns"], starts)
    folded["last_offset_ns"] = np.maximum.reduceat(rows["last_offset_ns"], starts)
    for name in _COUNT_FIELDS:
        folded[name] = np.add.reduceat(rows[name], starts)
    return folded


def _append_by_partition(store: PartitionedRecords, rows: np.ndarray) -> None:
    """Add rows sorted by flow_id to their flow-id ranges' parts."""
    if rows.shape[0] == 0:
        return
    key = rows["flow_id"] >> PARTITION_BITS
    bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        store.append(int(key[lo]), rows[lo:hi])


def buckets_of_sorted_rows(capture: str, rows: np.ndarray) -> ActivityBuckets:
    """ActivityBuckets holding ``rows``, one capture's ``ActivityBuckets.sorted_rows`` (how the
    buckets of a capture read in another process travel, ``apart.py``): sorted and folded
    already, so no range is sorted again."""
    store = PartitionedRecords(BUCKET_DTYPE, spill.DEFAULT_LIMIT_BYTES)
    _append_by_partition(store, rows)
    return ActivityBuckets(capture, store, set(store.keys()))


def buckets_from_frame(activity: pd.DataFrame) -> list[ActivityBuckets]:
    """``schema.ACTIVITY_COLUMNS`` rows as ActivityBuckets, one per capture in order of first
    appearance (tests and callers holding frames)."""
    import pandas as pd
    out = []
    captures = activity["capture"].to_numpy(dtype=object)
    codes, names = pd.factorize(captures)
    for code, name in enumerate(names):
        part = activity.iloc[np.flatnonzero(codes == code)]
        bucket_ns = part["bucket_ns"].to_numpy(dtype=np.int64)
        rows = np.zeros(len(part), dtype=BUCKET_DTYPE)
        rows["flow_id"] = part["flow_id"].to_numpy(dtype=np.int64)
        rows["bucket"] = bucket_ns // ACTIVITY_BUCKET_NS
        start = rows["bucket"] * ACTIVITY_BUCKET_NS
        rows["first_offset_ns"] = part["first_ns"].to_numpy(dtype=np.int64) - start
        rows["last_offset_ns"] = part["last_ns"].to_numpy(dtype=np.int64) - start
        for field in _COUNT_FIELDS:
            rows[field] = part[field].to_numpy(dtype=np.int64)
        store = PartitionedRecords(BUCKET_DTYPE, spill.DEFAULT_LIMIT_BYTES)
        _append_by_partition(store, rows[np.argsort(rows["flow_id"], kind="stable")])
        out.append(ActivityBuckets(str(name), store))
    return out


class ActivityCollector:
    """Per flow and 100 ms bucket: packets and bytes each way, first/last packet time."""

    def __init__(self, limit_bytes: int | None = None) -> None:
        """At most ``limit_bytes`` of buckets stay in memory while packets arrive; older ones
        wait in a temporary file (``spill.PartitionedRecords``) until the call stage reads them."""
        self._limit_bytes = spill.DEFAULT_LIMIT_BYTES if limit_bytes is None else limit_bytes
        self._store = PartitionedRecords(BUCKET_DTYPE, self._limit_bytes)
        self._sorted_keys: set[int] = set()

    @property
    def spilled(self) -> int:
        """Bucket rows written to the temporary file so far."""
        return self._store.spilled

    def add(self, d: DecodedBatch, bf: BatchFlows) -> None:
        if bf.rows.shape[0] == 0:
            return
        if self._sorted_keys:  # rows after ``sort_ranges``: the ranges are sorted again when read
            self._sorted_keys.clear()
        fid = bf.flow_ids()[bf.flow_slot]
        ts = d.ts_ns[bf.rows]
        bucket = ts // ACTIVITY_BUCKET_NS
        # One int64 key per (flow, bucket), ordered as (flow, bucket): the batch's buckets span
        # few values, so flow * span + (bucket - lowest) cannot overflow; a 1-D unique sorts
        # ~10x faster than a unique over rows.
        low = int(bucket.min())
        span = int(bucket.max()) - low + 1
        key = fid * span + (bucket - low)
        uniq, inverse = unique_inverse(key)
        n = uniq.shape[0]
        by = d.ip_bytes[bf.rows]
        c2s = bf.from_client
        part = np.empty(n, dtype=BUCKET_DTYPE)
        part["flow_id"] = uniq // span
        part["bucket"] = uniq % span + low
        start = part["bucket"] * ACTIVITY_BUCKET_NS
        first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, inverse, ts)
        last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, inverse, ts)
        part["first_offset_ns"] = first - start
        part["last_offset_ns"] = last - start
        part["client_to_server_packets"] = np.bincount(inverse, weights=c2s, minlength=n)
        part["client_to_server_bytes"] = np.bincount(inverse, weights=by * c2s, minlength=n)
        part["server_to_client_packets"] = np.bincount(inverse, weights=~c2s, minlength=n)
        part["server_to_client_bytes"] = np.bincount(inverse, weights=by * ~c2s, minlength=n)
        _append_by_partition(self._store, part)  # rows come sorted by (flow, bucket)

    def sort_ranges(self) -> None:
        """Sort and fold every range of buckets held now, as the call stage's first read would
        (``ActivityBuckets.partitions``). The reading process of a parallel run calls it while
        it waits for its workers' last batches (~0.05 s of the benchmark's serial end)."""
        for _ in ActivityBuckets("", self._store, self._sorted_keys).partitions():
            pass

    def buckets(self, capture: str) -> ActivityBuckets:
        """The capture's buckets, handed over (the collector starts empty again)."""
        store, self._store = self._store, PartitionedRecords(BUCKET_DTYPE, self._limit_bytes)
        sorted_keys, self._sorted_keys = self._sorted_keys, set()
        return ActivityBuckets(capture, store, sorted_keys)

    def frame(self, capture: str) -> pd.DataFrame:
        """The buckets as a ``schema.ACTIVITY_COLUMNS`` frame (the collector is emptied)."""
        return buckets_frame(self.buckets(capture))


def buckets_frame(activity: ActivityBuckets) -> pd.DataFrame:
    """ActivityBuckets as a ``schema.ACTIVITY_COLUMNS`` frame, in (flow_id, bucket) order."""
    import pandas as pd
    rows = activity.sorted_rows()
    start = rows["bucket"].astype(np.int64) * ACTIVITY_BUCKET_NS
    data = {
        "capture": pd.Series([activity.capture] * rows.shape[0], dtype="string"),
        "flow_id": rows["flow_id"].astype(np.int64),
        "bucket_ns": start,
        "first_ns": start + rows["first_offset_ns"],
        "last_ns": start + rows["last_offset_ns"],
    }
    for name in _COUNT_FIELDS:
        data[name] = rows[name].astype(np.int64)
    frame = pd.DataFrame(data)
    return frame.astype({c: t for c, t, _ in ACTIVITY_COLUMNS})


class RtpCollector:
    """RTP header fields of candidate media packets folded into per-stream running state
    (``media_stats.RunningStreams``: memory grows with streams and their silences, not packets),
    and RTCP report blocks parsed as they arrive (``media_stats.RunningReports``).

    ``max_gap_s`` must not exceed the call stage's ``CallOptions.max_gap_s`` (the default is that
    value): streams are cut into segments at silences longer than it, so that a call window takes
    or leaves a segment whole; a larger value could leave a segment across two windows.
    """

    def __init__(self, max_gap_s: float | None = None, keep_rows: bool = False, fold=None) -> None:
        """``keep_rows``: also keep every packet's header row for ``rows_frame`` (tests and
        debugging only: that memory grows with the capture). ``fold``: a callable that takes
        each batch's header columns instead of this process's ``RunningStreams`` (a parallel
        run folds them in a worker, ``parallel.PayloadShipper.fold_rtp``; the worker's streams
        come back through ``adopt_streams``)."""
        self._rows: list[tuple[np.ndarray, ...]] | None = [] if keep_rows else None
        self._fold = fold
        self.max_gap_s = float(CALL_MAX_GAP_S if max_gap_s is None else max_gap_s)
        self._streams = RunningStreams(int(self.max_gap_s * 1e9))
        self._reports = RunningReports(int(self.max_gap_s * 1e9))

    def add(self, d: DecodedBatch, bf: BatchFlows) -> None:
        rows_all = bf.rows
        udp = (d.proto[rows_all] == IPPROTO_UDP) & (d.payload_len[rows_all] >= 12)
        if not udp.any():
            return
        sel = np.flatnonzero(udp)
        rows = rows_all[sel]
        # These rows have at least 12 payload bytes, so every one holds the first 8.
        _, head = d.payload_window(rows, 0, 8)
        b0, b1, direction = head[:, 0], head[:, 1], head[:, 7]
        # Where the RTP header would start: 0 for plain RTP, else per Zoom's layout.
        start = np.full(rows.shape[0], -1, dtype=np.int64)
        zoom_type = np.full(rows.shape[0], -1, dtype=np.int64)
        plain = (b0 & 0xC0) == 0x80
        start[plain] = 0
        # Zoom, in dissect.zoom's order (parse_server_media, then parse_p2p_media): the 2022
        # server layout (outer 0x05, direction byte 7 = 0x00/0x04, inner at 8), the 2019 one
        # (outer 0x05, inner at 1), then P2P (inner at 0). The first whose embedded RTP header
        # shows version 2 wins.
        outer = (b0 == ZOOM_OUTER_MEDIA) & ~plain
        layouts = (
            (outer & np.isin(direction, ZOOM_DIRECTIONS) & (d.payload_len[rows] > ZOOM_OUTER_LEN), ZOOM_OUTER_LEN),
            (outer, ZOOM_LEGACY_OUTER_LEN),
            # Not inner type 1 at offset 0: a STUN success response starts 0x01 0x01 (RFC 8489
            # §5), and Zoom's P2P flows carry types 15/16/30 (facts §2.2). The inner type is the
            # first byte here, so only the types that embed RTP are read further (every other
            # UDP payload, QUIC, STUN, DNS ..., would be read for an offset of -1).
            (~outer & ~plain & (b0 != ZOOM_UNKNOWN_RTP) & np.isin(b0, ZOOM_RTP_TYPES), 0),
        )
        for candidate, inner_at in layouts:
            todo = candidate & (start < 0)
            if not todo.any():
                continue
            sub = rows[todo]
            at = np.full(sub.shape[0], inner_at, dtype=np.int64)
            inner_type = d.payload_bytes_at(sub, at).astype(np.int64)
            rel = _zoom_rtp_offset(
                inner_type, d.payload_bytes_at(sub, at + 20), d.payload_bytes_at(sub, at + 7)
            )
            zstart = np.where(rel >= 0, at + rel, -1)
            version_ok = (d.payload_bytes_at(sub, np.maximum(zstart, 0)) & 0xC0) == 0x80
            ok = (zstart >= 0) & version_ok
            index = np.flatnonzero(todo)[ok]
            start[index] = zstart[ok]
            zoom_type[index] = inner_type[ok]

        # RTCP (plain): second byte 200-207 (RFC 5761 §4). Only datagrams a whole number of
        # 32-bit words long can be plain RTCP (every RTCP packet is, RFC 3550 §6.4.1 "length"),
        # and only plain RTCP's report blocks are read: the rest is not parsed.
        is_rtcp = plain & (b1 >= 200) & (b1 <= 207)
        words = is_rtcp & (d.payload_len[rows] % 4 == 0)
        if words.any():
            fids = [bf.flows[s].flow_id for s in bf.flow_slot[sel[words]].tolist()]
            fc = bf.from_client[sel[words]].tolist()
            tss = d.ts_ns[rows[words]].tolist()
            for fid, c, t, r in zip(fids, fc, tss, rows[words].tolist()):
                self._reports.add(fid, c, t, d.payload(r))
        has = (start >= 0) & ~is_rtcp
        if not has.any():
            return
        r = rows[has]
        st = start[has]
        # The 12-byte fixed header (RFC 3550 §5.1), whole and of version 2.
        whole, hdr = d.payload_window(r, st, 12)
        version_2 = (hdr[:, 0] & 0xC0) == 0x80
        if not version_2.any():
            return
        ok = np.flatnonzero(whole)[version_2]
        hdr = hdr[version_2]
        # Big-endian 16- and 32-bit fields read as such from the (n, 12) bytes.
        words = hdr.view(">u4")
        slots = bf.flow_slot[sel[has][ok]]
        columns = (
            bf.flow_ids()[slots],
            bf.from_client[sel[has][ok]],
            d.ts_ns[r[ok]],
            words[:, 2].astype(np.int64),  # SSRC
            hdr.view(">u2")[:, 1].astype(np.int64),  # sequence number
            words[:, 1].astype(np.int64),  # RTP timestamp
            (hdr[:, 1] & 0x7F).astype(np.int64),  # payload type
            (hdr[:, 1] & 0x80) != 0,  # marker
            d.payload_len[r[ok]].astype(np.int64) - st[ok],
            d.ip_bytes[r[ok]],
            zoom_type[has][ok],
        )
        if self._rows is not None:
            self._rows.append(columns)
        if self._fold is not None:
            self._fold(columns)
        else:
            self._streams.add(*columns)

    def new_streams(self) -> RunningStreams:
        """Empty running stream state with this collector's gap (what a worker folds into)."""
        return RunningStreams(int(self.max_gap_s * 1e9))

    def adopt_streams(self, streams: RunningStreams) -> None:
        """Take the stream state a worker folded this collector's columns into."""
        self._streams = streams
        self._fold = None

    def rows_frame(self, capture: str) -> pd.DataFrame:
        """The kept header rows (``keep_rows=True``) as ``schema.RTP_COLUMNS``."""
        import pandas as pd

        from inspector.media import FOLD_COLUMNS

        parts = self._rows or []
        data = {name: np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
                for i, name in enumerate(FOLD_COLUMNS)}  # fmt: skip
        frame = pd.DataFrame(data)
        frame.insert(0, "capture", capture)
        return frame[[c for c, _, _ in RTP_COLUMNS]].astype({c: t for c, t, _ in RTP_COLUMNS})

    def state_bytes(self) -> int:
        """Bytes the running stream state holds (not counting RTCP report segments)."""
        return self._streams.state_bytes()

    def frame(self, capture: str) -> pd.DataFrame:
        """The streams' segments (``schema.RTP_SEGMENT_COLUMNS`` plus the object columns)."""
        return segment_frame(self._streams, capture)

    def take_frame(self, capture: str) -> pd.DataFrame:
        """``frame``, dropping the running stream state it came from (its per-stream objects
        would otherwise stay alive through the call stage: ~35 MB for 26 k streams)."""
        frame = self.frame(capture)
        self._streams = self.new_streams()
        return frame

    def rtcp_frame(self, capture: str) -> pd.DataFrame:
        """Report segments (``schema.RTCP_REPORT_COLUMNS``)."""
        return report_frame(self._reports, capture)
