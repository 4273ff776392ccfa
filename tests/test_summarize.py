"""The flows table from finished-flow records: values, dtypes, its compact form (FinishedFlows).

The reference here is deliberately naive (one Python value per flow and cell); the module under
test converts text once per distinct value and must give the same table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from inspector.decode import TUNNEL_NAMES
from inspector.flowstore import RECORD_DTYPE
from inspector.labels import LABEL_COLUMNS
from inspector.schema import FLOW_COLUMN_NAMES, FLOW_DTYPES
from inspector.sessions import flow_sides
from inspector.flows import address_text, transport_name
from inspector.summarize import (
    LABEL_NAMES,
    CaptureFlows,
    FinishedFlows,
    flows_frame,
)

V4_ONE = (4, 0, 1)  # 0.0.0.1
V6_ONE = (6, 0, 1)  # ::1: the same (hi, lo) as V4_ONE, another address


def _set_addresses(records: np.ndarray, row: int, values: tuple[int, ...]) -> None:
    for name, value in zip(("ip_version", "client_hi", "client_lo", "server_hi", "server_lo"), values):
        records[name][row] = value


def _records(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    records = np.zeros(n, dtype=RECORD_DTYPE)
    records["flow_id"] = np.arange(1, n + 1)
    addresses = [V4_ONE, V6_ONE, (4, 0, 0x0A000002), (4, 0, 0xC0000201), (6, 0x20010DB8 << 32, 7), (6, 2**64 - 1, 2**64 - 1)]
    client = rng.integers(0, len(addresses), n)
    server = rng.integers(0, len(addresses), n)
    for i in range(n):
        # A flow's two sides share one IP version.
        version, chi, clo = addresses[client[i]]
        _, shi, slo = next(a for a in addresses[server[i]:] + addresses if a[0] == version)
        _set_addresses(records, i, (version, chi, clo, shi, slo))
    records["proto"] = rng.choice([6, 17, 1, 58, 250], n)
    records["tunnel"] = rng.choice([0, 1, 7], n)
    records["vlan_id"] = rng.integers(0, 4096, n)
    records["client_port"] = rng.integers(0, 65536, n)
    records["server_port"] = rng.integers(0, 65536, n)
    records["first_seen_ns"] = 1_700_000_000_000_000_000 + rng.integers(0, 10**12, n)
    records["last_seen_ns"] = records["first_seen_ns"] + rng.integers(0, 10**10, n)
    for name in ("client_to_server_packets", "client_to_server_bytes", "server_to_client_packets", "server_to_client_bytes"):
        records[name] = rng.integers(0, 2**40, n)
    records["label"] = rng.integers(0, 3, n)
    return records


LABELS = {
    name: np.array(["", f"={name}-one", f"{name}-two\r\n"], dtype=object) for name in LABEL_COLUMNS
}


def _naive_frame(capture: str, records: np.ndarray, labels) -> pd.DataFrame:
    rows = []
    for r in records.tolist():
        row = dict(zip(RECORD_DTYPE.names, r))
        tunnel = row["tunnel"]
        out = {
            "capture": capture,
            "flow_id": row["flow_id"],
            "transport": transport_name(row["proto"]),
            "client_ip": address_text(row["ip_version"], row["client_hi"], row["client_lo"]),
            "client_port": row["client_port"],
            "server_ip": address_text(row["ip_version"], row["server_hi"], row["server_lo"]),
            "server_port": row["server_port"],
            "first_seen": pd.Timestamp(row["first_seen_ns"], unit="ns", tz="UTC"),
            "last_seen": pd.Timestamp(row["last_seen_ns"], unit="ns", tz="UTC"),
            "duration_s": (row["last_seen_ns"] - row["first_seen_ns"]) / 1e9,
            "vlan_id": row["vlan_id"],
            "tunnel": TUNNEL_NAMES[tunnel] if tunnel < len(TUNNEL_NAMES) else str(tunnel),
        }
        for name in ("client_to_server_packets", "client_to_server_bytes", "server_to_client_packets", "server_to_client_bytes"):
            out[name] = row[name]
        for name in LABEL_NAMES:
            out[name] = labels[name][row["label"]] if labels is not None and name in labels else ""
        rows.append(out)
    frame = pd.DataFrame(rows, columns=list(FLOW_COLUMN_NAMES))
    return frame.astype(FLOW_DTYPES)


def _assert_contract(frame: pd.DataFrame) -> None:
    assert tuple(frame.columns) == FLOW_COLUMN_NAMES
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        c: str(pd.Series([], dtype=t).dtype) for c, t in FLOW_DTYPES.items()
    }


@pytest.mark.parametrize("labels", [LABELS, None, {"service": LABELS["service"]}])
def test_flows_frame_equals_the_per_flow_conversion(labels):
    records = _records(500)
    frame = flows_frame("cap.pcap", records, labels)
    _assert_contract(frame)
    pd.testing.assert_frame_equal(frame, _naive_frame("cap.pcap", records, labels), check_exact=True)


@pytest.mark.parametrize("range_rows", [1, 7, 64])
def test_addresses_coded_range_by_range_give_the_same_table(monkeypatch, range_rows):
    from inspector import summarize

    records = _records(300)
    expected = flows_frame("cap.pcap", records, LABELS)
    monkeypatch.setattr(summarize, "ADDRESS_RANGE_ROWS", range_rows)
    pd.testing.assert_frame_equal(flows_frame("cap.pcap", records, LABELS), expected, check_exact=True)
    table = FinishedFlows([CaptureFlows("cap.pcap", records, LABELS)])
    values, (client, server) = table.coded("client_ip", "server_ip")
    assert values[client].tolist() == expected["client_ip"].tolist()
    assert values[server].tolist() == expected["server_ip"].tolist()


def test_addresses_of_both_versions_with_the_same_halves_stay_apart():
    records = _records(2)
    _set_addresses(records, 0, (4, 0, 1, 0, 2))
    _set_addresses(records, 1, (6, 0, 2, 0, 1))
    frame = flows_frame("c", records)
    assert list(frame["client_ip"]) == ["0.0.0.1", "::2"]
    assert list(frame["server_ip"]) == ["0.0.0.2", "::1"]


def test_empty_records_give_an_empty_table_with_the_contract_dtypes():
    frame = flows_frame("c", np.zeros(0, dtype=RECORD_DTYPE), LABELS)
    _assert_contract(frame)
    assert len(frame) == 0


def test_unlabelled_flows_are_refused_when_labels_are_given():
    records = _records(3)
    records["label"][1] = -1
    with pytest.raises(ValueError, match="1 flows have no label"):
        flows_frame("c", records, LABELS)


def test_each_column_is_its_own_block_and_no_view_of_the_records():
    """Assembled without consolidation: a column can be dropped (and its memory freed) alone,
    and later writes into the records never reach the table."""
    records = _records(50)
    frame = flows_frame("c", records, LABELS)
    assert frame._mgr.nblocks == len(FLOW_COLUMN_NAMES)
    before = frame["client_to_server_bytes"].copy()
    records["client_to_server_bytes"] += 1
    pd.testing.assert_series_equal(frame["client_to_server_bytes"], before)


def _table(sizes, names) -> FinishedFlows:
    return FinishedFlows([CaptureFlows(name, _records(n, seed=n), LABELS) for n, name in zip(sizes, names)])


def _frames(sizes, names):
    return [flows_frame(name, _records(n, seed=n), LABELS) for n, name in zip(sizes, names)]


def test_the_table_of_several_captures_is_their_frames_concatenated():
    expected = pd.concat(_frames([40, 0, 25], ["a", "b", "a"]), ignore_index=True)
    joined = _table([40, 0, 25], ["a", "b", "a"]).frame()
    _assert_contract(joined)
    pd.testing.assert_frame_equal(joined, expected, check_exact=True)
    _assert_contract(FinishedFlows([]).frame())


@pytest.mark.parametrize("rows", [1, 7, 16384])
def test_chunks_are_the_frame_in_slices(rows):
    table = _table([40, 0, 25], ["a", "b", "c"])
    chunks = list(table.chunks(rows))
    assert all(0 < len(c) <= rows for c in chunks)
    for chunk in chunks:
        _assert_contract(chunk)
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), table.frame(), check_exact=True)


def test_an_empty_table_gives_one_empty_chunk_with_the_columns():
    for table in (FinishedFlows([]), _table([0], ["a"])):
        (chunk,) = list(table.chunks(16384))
        assert len(chunk) == 0
        _assert_contract(chunk)


def test_text_and_int_columns_equal_the_frames():
    table = _table([30, 12], ["a", "b"])
    frame = table.frame()
    for name in FLOW_COLUMN_NAMES:
        dtype = str(frame[name].dtype)
        if dtype in ("string", "str"):
            assert table.text(name).tolist() == frame[name].fillna("").tolist(), name
        elif dtype in ("int64", "int32", "uint16", "uint8", "Int64"):
            assert table.ints(name).tolist() == frame[name].astype("int64").tolist(), name


def test_flow_sides_of_the_compact_table_equal_those_of_the_frame():
    table = _table([60, 25], ["a", "b"])
    pd.testing.assert_frame_equal(flow_sides(table), flow_sides(table.frame()), check_exact=True)


def test_largest_flows_are_nlargest_of_the_frame():
    records = _records(50)
    records["client_to_server_bytes"][[3, 9, 20]] = 10**13  # a tie: table order decides
    other = _records(9, seed=1)
    # The second capture's flows rank between the first's: the rows come back in rank order.
    other["client_to_server_bytes"][[2, 6]] = [10**14, 10**13 - 1]
    table = FinishedFlows([CaptureFlows("a", records, LABELS), CaptureFlows("b", other, LABELS)])
    frame = table.frame()
    total = frame["client_to_server_bytes"] + frame["server_to_client_bytes"]
    for n in (1, 2, 3, 5, 7, 200):  # 2 and 3 cut through the tie
        expected = frame.assign(_t=total).nlargest(n, "_t").drop(columns="_t").reset_index(drop=True)
        pd.testing.assert_frame_equal(table.largest(n), expected, check_exact=True)
    assert table.largest(5)["capture"].tolist()[:2] == ["b", "a"]
    assert len(FinishedFlows([]).largest(3)) == 0 and len(table.largest(0)) == 0


def _reindexed_session_ids(flows: pd.DataFrame, flow_session: pd.DataFrame) -> pd.Series:
    """The lookup as a (capture, flow_id) reindex: the reference."""
    keyed = flow_session.set_index(["capture", "flow_id"])["session_id"]
    index = pd.MultiIndex.from_arrays([flows["capture"], flows["flow_id"]])
    return pd.Series(keyed.reindex(index).fillna("").to_numpy(), dtype="string", name="session_id")


def test_session_ids_are_looked_up_per_capture_and_flow():
    table = _table([30, 20, 5], ["a.pcap", "b.pcap", "c.pcap"])
    flow_session = pd.DataFrame(
        {
            # unsorted ids, the same id in two captures, a capture with no flows, ids past the end
            "capture": ["b.pcap", "a.pcap", "a.pcap", "b.pcap", "z.pcap", "a.pcap", "a.pcap"],
            "flow_id": [3, 17, 2, 17, 1, 30, 99],
            "session_id": ["s3", "s1;s2", "s1", "s4", "s9", "s2", "s5"],
        }
    ).astype({"capture": "string", "flow_id": "int64", "session_id": "string"})
    table.set_session_ids(flow_session)
    flows = table.frame()
    got = flows["session_id"]
    pd.testing.assert_series_equal(got, _reindexed_session_ids(flows, flow_session), check_exact=True)
    assert got[(flows["capture"] == "a.pcap") & (flows["flow_id"] == 17)].tolist() == ["s1;s2"]
    assert (got[flows["capture"] == "c.pcap"] == "").all()
    assert table.text("session_id").tolist() == got.tolist()


def test_a_flow_twice_in_the_session_table_is_refused():
    table = FinishedFlows([CaptureFlows("a", _records(5), LABELS)])
    flow_session = pd.DataFrame({"capture": ["a", "a"], "flow_id": [2, 2], "session_id": ["s1", "s2"]})
    with pytest.raises(ValueError, match="twice"):
        table.set_session_ids(flow_session)


def test_a_parked_table_reads_back_the_same(monkeypatch):
    from inspector import summarize

    monkeypatch.setattr(summarize, "PARK_ROWS", 7)  # several file blocks per capture
    flow_session = pd.DataFrame({"capture": ["a", "b"], "flow_id": [3, 5], "session_id": ["s1", "s2"]})
    reference = _table([40, 0, 25], ["a", "b", "c"])
    reference.set_session_ids(flow_session)
    table = _table([40, 0, 25], ["a", "b", "c"])
    values, codes = table.coded("client_ip", "service")
    table.park()
    assert all(p.records is None for p in table.parts if len(p))
    table.set_session_ids(flow_session)
    pd.testing.assert_frame_equal(table.frame(), reference.frame(), check_exact=True)
    pd.testing.assert_frame_equal(pd.concat(list(table.chunks(9)), ignore_index=True), reference.frame())
    pd.testing.assert_frame_equal(table.largest(4), reference.largest(4), check_exact=True)
    assert table.ints("server_to_client_bytes").tolist() == reference.ints("server_to_client_bytes").tolist()
    parked_values, parked_codes = table.coded("client_ip", "service")
    for before, after in zip(codes, parked_codes):
        assert values[before].tolist() == parked_values[after].tolist()


def test_a_table_pickles_parked_or_not():
    import pickle

    flow_session = pd.DataFrame({"capture": ["a"], "flow_id": [3], "session_id": ["s1"]})
    table = _table([40, 25], ["a", "b"])
    table.set_session_ids(flow_session)
    expected = table.frame()
    pd.testing.assert_frame_equal(pickle.loads(pickle.dumps(table)).frame(), expected, check_exact=True)
    table.park()
    pd.testing.assert_frame_equal(pickle.loads(pickle.dumps(table)).frame(), expected, check_exact=True)


@pytest.mark.parametrize("rows", [1, 7, 16384])
def test_plain_chunks_hold_the_values_of_the_frames(rows):
    """``plain_chunks`` (the flows.csv writer's input) gives, column by column, what ``chunks``
    makes into dtyped frames: text as values and codes, numbers and times as arrays."""
    table = _table([40, 0, 25], ["a", "b", "c"])
    table.parts[0].set_session_ids(np.array(["s1", "=s2", ""], dtype=object), np.arange(40, dtype=np.int32) % 3)
    plain = list(table.plain_chunks(rows))
    frames = list(table.chunks(rows))
    assert len(plain) == len(frames)
    for columns, frame in zip(plain, frames):
        assert [name for name, _, _ in columns] == list(FLOW_COLUMN_NAMES)
        for name, kind, data in columns:
            column = frame[name]
            if kind == "text":
                values, codes = data
                assert [values[c] for c in codes.tolist()] == column.fillna("").tolist(), name
            elif kind == "time":
                assert data.tolist() == column.array.asi8.tolist(), name
            else:
                assert data.tolist() == column.tolist(), name
                assert data.dtype == np.dtype(np.int64 if kind == "int" else np.float64), name


def test_an_empty_table_gives_one_empty_plain_chunk_with_the_columns():
    for table in (FinishedFlows([]), _table([0], ["a"])):
        (columns,) = list(table.plain_chunks(16384))
        assert [name for name, _, _ in columns] == list(FLOW_COLUMN_NAMES)
        assert all(len(data[1] if kind == "text" else data) == 0 for _, kind, data in columns)
