"""FlowStore: finished flows as compact records, read back in flow-id order."""

from __future__ import annotations

import numpy as np

from inspector.flows import Flow
from inspector.flowstore import _CHUNK_RECORDS, FlowStore


def _flow(flow_id: int, **fields) -> Flow:
    f = Flow()
    values = dict(
        flow_id=flow_id, ip_version=4, proto=17, tunnel=0, vlan_id=0, client_port=50000, server_port=3478,
        client_hi=0, client_lo=0x0A000002, server_hi=0, server_lo=0xC0000201, first_seen_ns=flow_id * 10,
        last_seen_ns=flow_id * 10 + 5, client_to_server_packets=1, client_to_server_bytes=100,
        server_to_client_packets=2, server_to_client_bytes=200,
    )  # fmt: skip
    values.update(fields)
    for name, value in values.items():
        setattr(f, name, value)
    return f


def test_records_come_back_in_flow_id_order_across_chunks():
    store = FlowStore()
    ids = np.random.default_rng(7).permutation(np.arange(1, 2 * _CHUNK_RECORDS + 100))
    for flow_id in ids.tolist():
        store.append(_flow(flow_id), label=flow_id % 5)
    records = store.records()
    assert len(store) == ids.size == records.shape[0]
    assert records["flow_id"].tolist() == sorted(ids.tolist())
    assert (records["label"] == records["flow_id"] % 5).all()
    assert (records["first_seen_ns"] == records["flow_id"] * 10).all()


def test_full_ranges_survive_the_narrow_types():
    store = FlowStore()
    top = 2**64 - 1
    store.append(_flow(1, ip_version=6, proto=255, tunnel=1, vlan_id=4095, client_port=65535, server_port=65535,
                       client_hi=top, client_lo=top, server_hi=2**63, server_lo=1,
                       client_to_server_bytes=2**40), label=3)  # fmt: skip
    r = store.records()[0]
    assert (int(r["client_hi"]), int(r["client_lo"]), int(r["server_hi"])) == (top, top, 2**63)
    assert (int(r["client_port"]), int(r["vlan_id"]), int(r["proto"])) == (65535, 4095, 255)
    assert int(r["client_to_server_bytes"]) == 2**40


def test_labels_set_later_by_flow_id():
    store = FlowStore()
    for flow_id in (5, 2, 9):
        store.append(_flow(flow_id), label=-1)
    store.set_labels(np.array([9, 2, 77]), np.array([4, 1, 8]))  # 77: no such flow, ignored
    records = store.records()
    assert records["flow_id"].tolist() == [2, 5, 9]
    assert records["label"].tolist() == [1, -1, 4]


def test_release_drops_the_records():
    store = FlowStore()
    store.append(_flow(1), label=0)
    store.release()
    assert store.records().shape[0] == 0
