"""The pandas boundary: finished flows become the flows table of DESIGN.md §2.

``FinishedFlows`` holds the run's flows in compact form (records plus codes into distinct
texts) and makes DataFrames from them on demand, whole or in row slices, column by column in the
dtypes declared in ``inspector.schema``; nothing here touches packets. (Not to be confused with
``flows.FlowTable``, the table of flows still being counted.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from inspector.decode import TUNNEL_NAMES
from inspector.flows import address_text, transport_name
from inspector.flowstore import RECORD_DTYPE
from inspector.ordering import run_changes
from inspector.schema import FLOW_COLUMNS, empty_frame
from inspector.spill import SpillFile

if TYPE_CHECKING:  # pandas is imported where frames are made: the packet path never needs it
    import pandas as pd
    from pandas.api.extensions import ExtensionArray

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

def _distinct_rows(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a row of each distinct key, each row's distinct-key number) of equal-length key columns.

    ``np.unique(..., axis=0)`` does the same through a structured sort that is ~50x slower than
    this lexsort of plain integer columns.
    """
    order = np.lexsort(columns[::-1])
    starts = run_changes(*(column[order] for column in columns))
    inverse = np.empty(order.size, dtype=np.intp)
    inverse[order] = np.cumsum(starts) - 1
    return order[starts], inverse


#: Records written to or read from the temporary file at a time once a table is parked.
PARK_ROWS = 1 << 15
#: Flows whose addresses ``_distinct_addresses`` sorts at a time.
ADDRESS_RANGE_ROWS = 1 << 15


def _distinct_addresses(records: np.ndarray, rows: int) -> tuple[np.ndarray, ...]:
    """(version, hi, lo) of every distinct address on either side of the records, and each
    record's client and server code (int32) into them: both sides share one table, so a client
    and a server code compare.

    Worked out range by range of ``rows`` records, then once more over the ranges' distinct
    addresses: the sorting temporaries stay in proportion to a range, not to the capture
    (~30 MB for 247 k flows at once).
    """
    n = records.shape[0]
    client = np.zeros(n, dtype=np.int32)
    server = np.zeros(n, dtype=np.int32)
    if n == 0:
        empty = np.zeros(0, dtype=np.uint64)
        return np.zeros(0, dtype=np.uint8), empty, empty, client, server
    keys, inverses = [], []
    for start in range(0, n, rows):
        part = records[start : start + rows]
        version = np.concatenate([part["ip_version"], part["ip_version"]])
        hi = np.concatenate([part["client_hi"], part["server_hi"]])
        lo = np.concatenate([part["client_lo"], part["server_lo"]])
        at, inverse = _distinct_rows(version, hi, lo)
        keys.append((version[at], hi[at], lo[at]))
        inverses.append(inverse.astype(np.int32))
    version, hi, lo = (np.concatenate([k[i] for k in keys]) for i in range(3))
    at, codes_of_key = _distinct_rows(version, hi, lo)
    offset = 0
    for start, key, inverse in zip(range(0, n, rows), keys, inverses):
        codes = codes_of_key[offset + inverse]
        half = inverse.size // 2
        client[start : start + half], server[start : start + half] = codes[:half], codes[half:]
        offset += key[0].size
    return version[at], hi[at], lo[at], client, server


def _named_codes(name: str, records) -> tuple[list[str], np.ndarray]:
    """(the name of each distinct value, each row's code) of the ``transport`` (IP protocol) or
    ``tunnel`` column of ``records`` (anything indexable by the record field: "proto", "tunnel")."""
    if name == "transport":
        distinct, codes = np.unique(records["proto"], return_inverse=True)
        return [transport_name(int(p)) for p in distinct.tolist()], codes.reshape(-1)
    distinct, codes = np.unique(records["tunnel"], return_inverse=True)
    return [TUNNEL_NAMES[t] if t < len(TUNNEL_NAMES) else str(t) for t in distinct.tolist()], codes.reshape(-1)


def _timestamps(ns: np.ndarray) -> ExtensionArray:
    import pandas as pd
    return pd.to_datetime(ns.astype(np.int64), unit="ns", utc=True).array


def flows_frame(capture: str, records: np.ndarray, labels: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """One row per flow, columns and dtypes of ``schema.FLOW_COLUMNS``.

    ``records``: ``flowstore.RECORD_DTYPE`` rows in flow-id order. ``labels``: per label column
    (``labels.LABEL_COLUMNS``), the value of each label code (``LabelBook.columns()``); without
    it, or for a column it lacks, the column stays empty. ``FinishedFlows`` (below) holds the same
    table in compact form and makes this frame, whole or in row slices.
    """
    return CaptureFlows(capture, records, labels).frame_of(0, records.shape[0])


class CaptureFlows:
    """One capture's flows table in compact form: records plus codes into distinct texts.

    As a pandas frame the flows table costs ~330 bytes a flow (15 text columns of Arrow strings,
    offsets included); held here it costs the 101-byte record, two 4-byte address codes and,
    once the call stage has run, a session code (``FinishedFlows`` docstring). Each distinct address
    and label value is formatted and converted to Arrow text once; a frame of any row slice is
    then one ``take`` per text column, so no per-flow Python string or object array exists.
    """

    __slots__ = (
        "capture", "records", "labels", "_address_values", "_address_text", "_client_address",
        "_server_address", "_label_text", "_session_values", "_session_codes", "_n", "_parked",
    )  # fmt: skip

    def __init__(self, capture: str, records: np.ndarray, labels: Mapping[str, Sequence[str]] | None = None) -> None:
        import pandas as pd
        n = records.shape[0]
        if labels is not None and n and int(records["label"].min()) < 0:
            raise ValueError(f"{capture}: {int((records['label'] < 0).sum())} flows have no label")
        self.capture = capture
        self.records: np.ndarray | None = records
        self._n = n
        self._parked: SpillFile | None = None
        self.labels = labels
        version, hi, lo, self._client_address, self._server_address = _distinct_addresses(records, ADDRESS_RANGE_ROWS)
        texts = [address_text(v, h, l) for v, h, l in zip(version.tolist(), hi.tolist(), lo.tolist())]
        self._address_values = np.asarray(texts, dtype=object)
        self._address_text = pd.array(self._address_values, dtype="string")
        self._label_text: dict[str, ExtensionArray] = {}
        self._session_values: np.ndarray | None = None
        self._session_codes: np.ndarray | None = None

    def __len__(self) -> int:
        return self._n

    def park(self) -> None:
        """Move the records to a temporary file (``spill.SpillFile``, in ``$TMPDIR``) until
        they are read again, a slice at a time (``frame_of``) or a column at a time: the call
        stage needs the flows' codes and a few columns, not the 101-byte records."""
        if self._parked is not None or self._n == 0:
            return
        parked = SpillFile(self.records.dtype)
        for start in range(0, self._n, PARK_ROWS):
            parked.append(self.records[start : start + PARK_ROWS])
        self._parked, self.records = parked, None

    def __reduce__(self):
        # A parked table's file does not pickle: its records travel as an array.
        records = self.records if self._parked is None else self._rows(0, self._n)
        state = (self.capture, records, self.labels, self._session_values, self._session_codes)
        return (_restored_capture_flows, state)

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Records ``start:stop`` (read back from the file once parked)."""
        if self._parked is None:
            return self.records[start:stop]
        out = np.empty(max(stop - start, 0), dtype=self._parked.dtype)
        self._parked.read_range(start, out)
        return out

    def _rows_at(self, rows: np.ndarray) -> np.ndarray:
        """The records at positions ``rows`` (read back one by one once parked: a few rows)."""
        if self._parked is None:
            return self.records[rows]
        out = np.empty(rows.shape[0], dtype=self._parked.dtype)
        for k, row in enumerate(rows.tolist()):
            self._parked.read_range(row, out[k : k + 1])
        return out

    def column(self, name: str) -> np.ndarray:
        """One record column over every flow (read a slice at a time once parked)."""
        if self._parked is None:
            return self.records[name]
        out = np.empty(self._n, dtype=self._parked.dtype[name])
        for start in range(0, self._n, PARK_ROWS):
            stop = min(start + PARK_ROWS, self._n)
            out[start:stop] = self._rows(start, stop)[name]
        return out

    def _label_values(self, name: str) -> np.ndarray | None:
        """The value of each label code for ``name`` (None: the column stays empty)."""
        if name == "session_id":
            return self._session_values
        values = self.labels.get(name) if self.labels is not None else None
        return None if values is None else np.asarray(values, dtype=object)

    def _label_codes(self, name: str) -> np.ndarray:
        return self._session_codes if name == "session_id" else self.column("label")

    def set_session_ids(self, values: np.ndarray, codes: np.ndarray) -> None:
        """Each flow's ``session_id``: ``values[codes]`` (``FinishedFlows.set_session_ids``)."""
        self._session_values, self._session_codes = values, codes
        self._label_text.pop("session_id", None)

    def frame_of(self, start: int, stop: int) -> pd.DataFrame:
        """Rows ``start:stop`` as a frame of ``schema.FLOW_COLUMNS``, made of ``plain_columns_of``.

        Memory: every column is made once, in its final dtype, and the frame is assembled from
        them without a copy (``copy=False``: pandas then neither copies nor consolidates the
        columns into 2-D blocks, and no ``astype`` pass is needed).
        """
        return self._frame(self.plain_columns_of(start, stop))

    def frame_of_rows(self, rows: np.ndarray) -> pd.DataFrame:
        """The flows at positions ``rows`` (in the order given) as ``frame_of`` makes a slice:
        a few rows without the frame of the range that holds them."""
        return self._frame(self._plain_columns(self._rows_at(rows), rows))

    def _frame(self, plain: list[tuple[str, str, object]]) -> pd.DataFrame:
        import pandas as pd
        columns: dict[str, object] = {}
        for name, kind, data in plain:
            if kind == "text":
                values, codes = data
                columns[name] = self._text_array(name, values).take(codes)
            elif kind == "time":
                columns[name] = _timestamps(data)
            else:  # int64 and float64, the schema's dtypes
                columns[name] = data
        return pd.DataFrame(columns, copy=False)

    def _text_array(self, name: str, values: np.ndarray) -> ExtensionArray:
        """The "string" array of a text column's distinct values: the address and label tables
        converted once per capture, the few values of the other columns per slice."""
        import pandas as pd
        if name in ("client_ip", "server_ip"):
            return self._address_text
        if name not in LABEL_NAMES:
            return pd.array(values, dtype="string")
        text = self._label_text.get(name)
        if text is None:
            text = self._label_text[name] = pd.array(values, dtype="string")
        return text

    def plain_columns_of(self, start: int, stop: int) -> list[tuple[str, str, object]]:
        """Rows ``start:stop`` as (name, kind, data) per ``schema.FLOW_COLUMNS`` column, without
        a frame: kind "text" with data (distinct values, codes), values str or None for missing;
        "int" an int64 array; "float" a float64 array; "time" int64 nanoseconds since the epoch,
        UTC. ``frame_of`` makes them into the dtyped columns; a writer that formats text per
        distinct value reads them as they are (``export.write_plain_csv``).
        """
        return self._plain_columns(self._rows(start, stop), slice(start, stop))

    def _plain_columns(self, records: np.ndarray, at: slice | np.ndarray) -> list[tuple[str, str, object]]:
        """``plain_columns_of`` of ``records``, the rows at ``at`` (a slice or positions)."""
        n = records.shape[0]
        out: list[tuple[str, str, object]] = []
        for name, dtype, _ in FLOW_COLUMNS:
            if name == "capture":
                out.append((name, "text", (np.array([self.capture], dtype=object), np.zeros(n, dtype=np.intp))))
            elif name in ("transport", "tunnel"):
                names, codes = _named_codes(name, records)
                out.append((name, "text", (np.asarray(names, dtype=object), codes)))
            elif name in ("client_ip", "server_ip"):
                codes = self._client_address if name == "client_ip" else self._server_address
                out.append((name, "text", (self._address_values, codes[at].astype(np.intp))))
            elif name in ("first_seen", "last_seen"):
                out.append((name, "time", records[f"{name}_ns"].astype(np.int64)))
            elif name == "duration_s":
                duration_ns = records["last_seen_ns"].astype(np.int64) - records["first_seen_ns"]
                out.append((name, "float", duration_ns / 1e9))
            elif name == "session_id":
                out.append((name, *self._session_column(at, n)))
            elif name in LABEL_NAMES:
                values = self._label_values(name)
                if values is None:
                    out.append((name, "text", (np.array([""], dtype=object), np.zeros(n, dtype=np.intp))))
                else:
                    out.append((name, "text", (values, records["label"].astype(np.intp))))
            else:
                out.append((name, "int", records[name].astype(np.int64)))
        return out

    def session_id_column(self, start: int, stop: int) -> tuple[str, tuple[np.ndarray, np.ndarray]]:
        """The session_id column of rows ``start:stop`` as ``plain_columns_of`` gives it."""
        return self._session_column(slice(start, stop), stop - start)

    def _session_column(self, at: slice | np.ndarray, n: int) -> tuple[str, tuple[np.ndarray, np.ndarray]]:
        if self._session_values is None:
            return "text", (np.array([""], dtype=object), np.zeros(n, dtype=np.intp))
        return "text", (self._session_values, self._session_codes[at].astype(np.intp))

    def session_codes(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(values, codes) of ``set_session_ids`` (None, None before it is called)."""
        return self._session_values, self._session_codes

    def coded(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A text column as (values, codes): ``values[codes]`` is the column, "" for missing.

        Both address columns index one table of this capture's distinct addresses. ``values``
        may hold a value twice (``FinishedFlows.coded`` makes codes compare as values do).
        """
        import pandas as pd
        n = len(self)
        if name == "capture":
            return np.array([self.capture], dtype=object), np.zeros(n, dtype=np.intp)
        if name in ("client_ip", "server_ip"):
            codes = self._client_address if name == "client_ip" else self._server_address
            return self._address_values, codes.astype(np.intp)
        if name in ("transport", "tunnel"):
            column = "proto" if name == "transport" else "tunnel"
            names, codes = _named_codes(name, {column: self.column(column)})
            return np.asarray(names, dtype=object), codes.astype(np.intp)
        values = self._label_values(name) if name in LABEL_NAMES else None
        if values is None:
            return np.array([""], dtype=object), np.zeros(n, dtype=np.intp)
        values = np.array(["" if v is None or v is pd.NA else str(v) for v in values.tolist()], dtype=object)
        return values, self._label_codes(name).astype(np.intp)


def _restored_capture_flows(capture, records, labels, session_values, session_codes) -> CaptureFlows:
    flows = CaptureFlows(capture, records, labels)
    if session_values is not None:
        flows.set_session_ids(session_values, session_codes)
    return flows


class FinishedFlows:
    """The run's flows table (every capture's ``CaptureFlows``, in run order), made into
    DataFrames only on demand.

    ``frame()`` is the whole table (the API's ``Analysis.flows``); ``chunks(rows)`` gives it in row
    slices of the same columns and dtypes, so the command writes flows.csv holding one slice at
    a time; ``text``/``ints`` give the call stage (``sessions.flow_sides``) numpy columns without
    a frame; ``largest`` the flows with the most bytes. On the 5x benchmark capture (247 k
    flows) the compact table is ~30 MB, the frame ~80 MB plus its build.
    """

    def __init__(self, parts: Sequence[CaptureFlows] = ()) -> None:
        self.parts = list(parts)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def park(self) -> None:
        """Move every capture's records to a temporary file until the table is read again
        (``CaptureFlows.park``): what the call stage holds of the flows is then its own
        per-flow columns, not the records (24 MB for 247 k flows)."""
        for part in self.parts:
            part.park()

    def frame(self) -> pd.DataFrame:
        """Every row, one frame (built column by column: each part's column dropped once copied)."""
        import pandas as pd
        if not self.parts:
            return empty_frame(FLOW_COLUMNS)
        frames = [p.frame_of(0, len(p)) for p in self.parts]
        if len(frames) == 1:
            return frames[0]
        columns = {}
        for name in frames[0].columns:
            columns[name] = pd.concat([f[name] for f in frames], ignore_index=True).array
            for f in frames:
                del f[name]
        return pd.DataFrame(columns, copy=False)

    def slices(self, rows: int) -> Iterator[tuple[CaptureFlows | None, int, int]]:
        """(part, start, stop) of consecutive slices of at most ``rows`` rows, in table order;
        once (first part or None, 0, 0) for an empty table (so a header is still written)."""
        yielded = False
        for part in self.parts:
            for start in range(0, len(part), rows):
                yield part, start, min(start + rows, len(part))
                yielded = True
        if not yielded:
            yield (self.parts[0] if self.parts else None), 0, 0

    def chunks(self, rows: int) -> Iterator[pd.DataFrame]:
        """The table in consecutive frames of at most ``rows`` rows, in table order; one empty
        frame for an empty table."""
        for part, start, stop in self.slices(rows):
            yield part.frame_of(start, stop) if part is not None else empty_frame(FLOW_COLUMNS)

    def plain_chunks(self, rows: int) -> Iterator[list[tuple[str, str, object]]]:
        """``chunks`` as ``CaptureFlows.plain_columns_of`` slices (no frame made); one empty slice
        for an empty table."""
        return plain_chunks_of(self.slices(rows))

    def coded(self, *names: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """Text columns as (distinct values, int32 codes per column), over every capture, in one
        code space: two rows of any of the columns hold the same text exactly when their codes
        are equal. No per-flow string is made; ``values[codes]`` shares one str per value."""
        import pandas as pd
        tables, codes, offset = [], [[] for _ in names], 0
        for part in self.parts:
            for k, name in enumerate(names):
                values, part_codes = part.coded(name)
                tables.append(values)
                codes[k].append(part_codes + offset)
                offset += values.size
        if not tables:
            return np.zeros(0, dtype=object), [np.zeros(0, dtype=np.intp) for _ in names]
        distinct_codes, distinct = pd.factorize(np.concatenate(tables))
        distinct_codes = distinct_codes.astype(np.int32)  # half the memory of intp per flow
        return np.asarray(distinct, dtype=object), [distinct_codes[np.concatenate(c)] for c in codes]

    def text(self, name: str) -> np.ndarray:
        """A text column as an object array of str ("" for missing); rows with equal values
        share one str object."""
        values, (codes,) = self.coded(name)
        return values[codes]

    def ints(self, name: str) -> np.ndarray:
        """A record column (flow_id, ports, counters ...) as int64 over every capture."""
        parts = [p.column(name).astype(np.int64) for p in self.parts]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def largest(self, n: int) -> pd.DataFrame:
        """The ``n`` flows with the most bytes both ways, most first (ties in table order, as
        ``DataFrame.nlargest`` keeps them), as a frame with the table's columns."""
        import pandas as pd
        total = self.ints("client_to_server_bytes") + self.ints("server_to_client_bytes")
        if 0 < n < total.shape[0]:
            # Only flows at least as large as the n-th largest can be chosen (ties included).
            candidates = np.flatnonzero(total >= np.partition(total, total.shape[0] - n)[total.shape[0] - n])
        else:
            candidates = np.arange(total.shape[0] if n > 0 else 0)
        chosen = candidates[np.argsort(-total[candidates], kind="stable")[:n]]
        if chosen.shape[0] == 0:
            return next(self.chunks(1)).iloc[0:0]
        # One frame per capture holding chosen flows, in run order, then the rows put back in
        # the order chosen.
        bounds = np.cumsum([0] + [len(p) for p in self.parts])
        part_of = np.searchsorted(bounds, chosen, side="right") - 1
        by_part = np.argsort(part_of, kind="stable")
        frames = []
        for k in np.unique(part_of).tolist():
            rows = chosen[by_part][part_of[by_part] == k] - bounds[k]
            frames.append(self.parts[k].frame_of_rows(rows))
        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        return frame.iloc[np.argsort(by_part)].reset_index(drop=True)

    def set_session_ids(self, flow_session: pd.DataFrame) -> None:
        """Fill ``session_id`` from ``flow_session`` (capture, flow_id, session_id: the media
        flows of calls, a small part of all flows); flows in no call get "".

        Looked up per capture with a binary search of the sorted flow ids; each flow keeps a
        code into the session texts, not a string.
        """
        session_texts = flow_session["session_id"].to_numpy(dtype=object)
        values = np.append(session_texts, "")
        no_session = session_texts.size  # the code of "" (appended after the session texts)
        session_flow_ids = flow_session["flow_id"].to_numpy(dtype=np.int64)
        by_capture = flow_session.groupby("capture", sort=False).indices
        for part in self.parts:
            flow_ids = part.column("flow_id").astype(np.int64)
            codes = np.full(flow_ids.size, no_session, dtype=np.int32)
            rows = by_capture.get(part.capture)
            if rows is not None:
                rows = rows[np.argsort(session_flow_ids[rows], kind="stable")]
                ids = session_flow_ids[rows]
                if ids.size > 1 and (ids[1:] == ids[:-1]).any():
                    raise ValueError(f"{part.capture}: a flow appears twice in the flows' session table")
                at = np.minimum(np.searchsorted(ids, flow_ids), ids.size - 1)
                found = ids[at] == flow_ids
                codes[found] = rows[at[found]]
            part.set_session_ids(values, codes)

    def session_codes(self) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        """Every capture's session ids as codes (``CaptureFlows.session_codes``), to hand to a
        copy of this table in another process (``set_session_codes``)."""
        return [part.session_codes() for part in self.parts]

    def set_session_codes(self, session_codes: list[tuple[np.ndarray | None, np.ndarray | None]]) -> None:
        """Take ``session_codes()`` of the same table, made elsewhere."""
        for part, (values, codes) in zip(self.parts, session_codes, strict=True):
            if values is not None and codes is not None:
                part.set_session_ids(values, codes)


def plain_chunks_of(slices) -> Iterator[list[tuple[str, str, object]]]:
    """``CaptureFlows.plain_columns_of`` of each (part, start, stop) of ``FinishedFlows.slices``."""
    for part, start, stop in slices:
        if part is None:
            part = CaptureFlows("", np.zeros(0, dtype=RECORD_DTYPE))
        yield part.plain_columns_of(start, stop)
