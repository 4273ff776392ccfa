"""Finished flows as compact records: what is left of a flow once it has ended.

A ``flows.Flow`` is a Python object of ~23 slots and its ``FlowFacts`` another dozen strings,
~1 KB together; a long capture has hundreds of thousands of flows, and they used to stay alive
until the end of the run. When a flow ends, the pipeline takes its facts, labels it
(``labels.FlowLabeller``: one code into a table of distinct label tuples) and keeps only the
record below, 101 bytes, so the finished flows of a run cost about a tenth of what they did.
The records become the flows table at the end (``summarize.FinishedFlows``), which keeps them as they
are and makes DataFrames from them in slices.

Weakness: the records still grow with the number of flows (the flows table holds one row per
flow, so the run returns them all); 10^6 flows take ~100 MB.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from inspector import spill
from inspector.flows import Flow
from inspector.spill import PartitionedRecords

#: One finished flow. Addresses as (hi, lo) 64-bit halves (IPv4 in lo), as the flow table keeps
#: them; ``label``: code into the run's ``labels.LabelBook`` (``labels.PENDING`` until known).
RECORD_DTYPE: Final = np.dtype(
    [
        ("flow_id", "<i8"),
        ("ip_version", "u1"),
        ("proto", "u1"),
        ("tunnel", "u1"),
        ("vlan_id", "<u2"),
        ("client_port", "<u2"),
        ("server_port", "<u2"),
        ("client_hi", "<u8"),
        ("client_lo", "<u8"),
        ("server_hi", "<u8"),
        ("server_lo", "<u8"),
        ("first_seen_ns", "<i8"),
        ("last_seen_ns", "<i8"),
        ("client_to_server_packets", "<i8"),
        ("client_to_server_bytes", "<i8"),
        ("server_to_client_packets", "<i8"),
        ("server_to_client_bytes", "<i8"),
        ("label", "<i4"),
    ]
)

_CHUNK_RECORDS: Final = 4096


def _permute_in_place(records: np.ndarray, order: np.ndarray) -> None:
    """``records[:] = records[order]``, one field at a time: the sort needs one column's copy
    (8 bytes a flow) instead of a second copy of every record (101 bytes a flow)."""
    for name in records.dtype.names or ():
        records[name] = records[name][order]


class FlowStore:
    """The finished flows of one capture, appended as they end, read in flow-id order.

    At most ``limit_bytes`` (default ``spill.DEFAULT_LIMIT_BYTES``) of records stay in memory
    while the capture is read; older ones wait in a temporary file (``spill.PartitionedRecords``,
    one key) until ``records()``.
    """

    def __init__(self, limit_bytes: int | None = None) -> None:
        self._pending: list[tuple] = []
        limit = spill.DEFAULT_LIMIT_BYTES if limit_bytes is None else limit_bytes
        self._stored = PartitionedRecords(RECORD_DTYPE, limit)
        self._whole: np.ndarray | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def spilled(self) -> int:
        """Records written to the temporary file so far."""
        return self._stored.spilled

    def append(self, f: Flow, label: int) -> None:
        self._pending.append((
            f.flow_id, f.ip_version, f.proto, f.tunnel, f.vlan_id, f.client_port, f.server_port,
            f.client_hi, f.client_lo, f.server_hi, f.server_lo, f.first_seen_ns, f.last_seen_ns,
            f.client_to_server_packets, f.client_to_server_bytes,
            f.server_to_client_packets, f.server_to_client_bytes, label,
        ))  # fmt: skip
        self._count += 1
        if len(self._pending) >= _CHUNK_RECORDS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._stored.append(0, np.array(self._pending, dtype=RECORD_DTYPE))
            self._pending = []

    def records(self) -> np.ndarray:
        """Every record, sorted by flow id (flows end in another order than they start)."""
        self._flush()
        if len(self._stored):
            parts = [self._whole] if self._whole is not None else []
            taken = self._stored.take(0)
            whole = np.concatenate(parts + [taken]) if parts else taken
        elif self._whole is not None:
            whole = self._whole
        else:
            whole = np.zeros(0, dtype=RECORD_DTYPE)
        ids = whole["flow_id"]
        if ids.size > 1 and (ids[1:] < ids[:-1]).any():
            # Flows end nearly in id order: timsort's runs make this near-linear.
            _permute_in_place(whole, np.argsort(ids, kind="stable"))
        self._whole = whole
        return whole

    def set_labels(self, flow_ids: np.ndarray, codes: np.ndarray) -> None:
        """Give the flows ``flow_ids`` the label ``codes`` (labels decided after the flows ended:
        cross-flow rules, or a worker's verdicts in a parallel run). Unknown ids are ignored."""
        flow_ids = np.asarray(flow_ids, dtype=np.int64)
        if flow_ids.size == 0:
            return
        whole = self.records()
        ids = whole["flow_id"]
        at = np.clip(np.searchsorted(ids, flow_ids), 0, max(ids.size - 1, 0))
        found = ids[at] == flow_ids if ids.size else np.zeros(flow_ids.size, dtype=bool)
        whole["label"][at[found]] = np.asarray(codes, dtype=np.int32)[found]

    def release(self) -> None:
        """Drop every record (they are in the flows table now)."""
        self._pending, self._whole = [], None
        self._stored.close()


__all__ = ["FlowStore", "RECORD_DTYPE"]
