"""Destinations during each call and outside calls (inspector/destinations.py), byte for byte."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

import inspector.destinations as destinations_module
from inspector.destinations import (
    GROUP_FIELDS,
    WindowIndex,
    _flow_slices,
    _fold_groups,
    _GroupFolder,
    destinations_table,
    grouped_searchsorted,
    string_ranks,
    window_flows,
    windows_containing,
)
from inspector.schema import DESTINATION_COLUMNS
from inspector.sessions import build_calls, directed_activity, flow_sides
from tests.test_sessions import ME, SECOND, T0, ZOOM_MMR, activity_frame, assert_schema, buckets, flows_frame

MS = 1_000_000


def bucket(flow_id, bucket_ns, first_ns, last_ns, sent, received, capture="a.pcap"):
    return {
        "capture": capture,
        "flow_id": flow_id,
        "bucket_ns": bucket_ns,
        "first_ns": first_ns,
        "last_ns": last_ns,
        "client_to_server_packets": sent[0],
        "client_to_server_bytes": sent[1],
        "server_to_client_packets": received[0],
        "server_to_client_bytes": received[1],
    }


TELEMETRY = {
    "transport": "tcp",
    "server_port": 443,
    "app_protocol": "tls",
    "server_name": "log.zoom.us",
    "name_source": "sni",
    "server_ip": "170.114.4.4",
    "kind": "telemetry",
    "category": "vendor-telemetry",
    "role": "telemetry",
    "evidence": "sni:log.zoom.us",
}
GTM = {
    "transport": "tcp",
    "server_port": 443,
    "app_protocol": "tls",
    "server_name": "www.googletagmanager.com",
    "server_ip": "142.250.1.1",
    "service": "google-analytics",
    "organisation": "Google LLC",
    "kind": "telemetry",
    "category": "tag-manager",
    "role": "telemetry",
    "evidence": "sni:www.googletagmanager.com",
}


def scenario(merge=False, telemetry_capture="a.pcap"):
    flows = [
        {"flow_id": 1},  # Zoom media, 0-20 s: the call window is [T0+10 ms, T0+20.09 s]
        {"flow_id": 2, "client_port": 50001, "capture": telemetry_capture, **TELEMETRY},
        {"flow_id": 3, "client_port": 50002, **GTM},
        # another machine on the same capture talking to log.zoom.us during the call
        {"flow_id": 4, "client_port": 50003, "client_ip": "10.0.0.3", **TELEMETRY,
         "confidence": "medium", "evidence": "dns:log.zoom.us"},  # fmt: skip
    ]
    activity = buckets(1, 0, 20) + [
        # telemetry beacon inside the call and another at 100 s, outside it
        bucket(2, T0 + 5 * SECOND, T0 + 5010 * MS, T0 + 5090 * MS, (2, 300), (1, 120), capture=telemetry_capture),
        bucket(2, T0 + 100 * SECOND, T0 + 100010 * MS, T0 + 100020 * MS, (3, 700), (2, 200), capture=telemetry_capture),
        # straddles the start: its first packet (T0+5 ms) is before the call's first (T0+10 ms)
        bucket(3, T0, T0 + 5 * MS, T0 + 50 * MS, (1, 500), (1, 1500)),
        # straddles the end: first packet inside (T0+20.085 s), last after (T0+20.095 s)
        bucket(3, T0 + 20 * SECOND, T0 + 20085 * MS, T0 + 20095 * MS, (1, 400), (1, 60)),
        bucket(4, T0 + 5 * SECOND, T0 + 5020 * MS, T0 + 5030 * MS, (1, 77), (0, 0)),
    ]
    return build_calls(flows_frame(flows), activity_frame(activity), None, None, merge)


def ts(ns):
    return pd.Timestamp(ns, unit="ns", tz="UTC")


def test_destinations_counted_inside_the_window_only():
    tables = scenario()
    assert len(tables.sessions) == 1
    d = tables.destinations
    assert_schema(d, DESTINATION_COLUMNS)
    call = d[d["session_id"] == "s1"]
    assert list(call["destination"]) == [ZOOM_MMR, "www.googletagmanager.com", "log.zoom.us"]
    assert list(call["bytes_sent"]) == [201 * 1000, 400, 300]
    assert list(call["bytes_received"]) == [201 * 1000, 60, 120]
    assert list(call["packets_sent"]) == [201 * 5, 1, 2]
    assert list(call["packets_received"]) == [201 * 5, 1, 1]
    assert list(call["flows"]) == [1, 1, 1]
    assert list(call["service"]) == ["zoom", "google-analytics", "zoom"]
    assert list(call["kind"]) == ["conferencing", "telemetry", "telemetry"]
    assert list(call["category"]) == ["video-conferencing", "tag-manager", "vendor-telemetry"]
    zoom_inc = "Zoom Video Communications, Inc."
    assert list(call["organisation"]) == [zoom_inc, "Google LLC", zoom_inc]
    assert list(call["server_ips"]) == [ZOOM_MMR, "142.250.1.1", "170.114.4.4"]
    assert call["during_call"].all()
    assert set(call["capture"]) == {"a.pcap"}
    gtm = call.iloc[1]
    assert gtm["first_seen"] == ts(T0 + 20085 * MS)
    assert gtm["last_seen"] == ts(T0 + 20095 * MS)
    zoom = call.iloc[0]
    assert zoom["first_seen"] == ts(T0 + 10 * MS)
    assert zoom["last_seen"] == ts(T0 + 20 * SECOND + 90 * MS)


def test_activity_outside_calls_byte_for_byte():
    d = scenario().destinations
    outside = d[d["session_id"] == ""]
    assert not outside["during_call"].any()
    assert list(outside["destination"]) == ["log.zoom.us", "www.googletagmanager.com"]
    # log.zoom.us: this machine's beacon at 100 s (700/200) + the other machine's during the call (77/0)
    assert list(outside["bytes_sent"]) == [777, 500]
    assert list(outside["bytes_received"]) == [200, 1500]
    assert list(outside["packets_sent"]) == [4, 1]
    assert list(outside["packets_received"]) == [2, 1]
    assert list(outside["flows"]) == [2, 1]
    assert list(outside["server_ips"]) == ["170.114.4.4", "142.250.1.1"]
    # the strongest flow's evidence: high confidence beats more bytes
    assert outside.iloc[0]["evidence"] == "sni:log.zoom.us"
    assert outside.iloc[0]["first_seen"] == ts(T0 + 5020 * MS)
    assert outside.iloc[0]["last_seen"] == ts(T0 + 100020 * MS)
    # every byte of every bucket is counted exactly once
    assert d["bytes_sent"].sum() == 201 * 1000 + 300 + 700 + 500 + 400 + 77


def test_merge_counts_other_captures_during_the_call():
    separate = scenario(telemetry_capture="b.pcap").destinations
    s1 = separate[separate["session_id"] == "s1"]
    assert "log.zoom.us" not in set(s1["destination"])  # b.pcap has no call of its own
    merged = scenario(merge=True, telemetry_capture="b.pcap").destinations
    m1 = merged[merged["session_id"] == "s1"]
    assert m1.loc[m1["destination"] == "log.zoom.us", "bytes_sent"].tolist() == [300]
    assert set(merged["capture"]) == {"merged"}


def test_sent_is_from_this_machine_when_it_served_the_flow():
    dns = {"flow_id": 5, "server_ip": "10.0.0.1", "server_port": 53, "app_protocol": "dns", "service": "",
           "kind": "", "role": "", "transport": "udp"}  # fmt: skip
    inbound = {"flow_id": 6, "client_ip": "198.51.100.9", "client_port": 40000, "server_ip": ME,
               "server_port": 8080, "transport": "tcp", "app_protocol": "", "service": "", "kind": "",
               "role": "", "evidence": ""}  # fmt: skip
    activity = buckets(1, 0, 10) + buckets(5, 0, 0) + [
        bucket(6, T0 + 2 * SECOND, T0 + 2010 * MS, T0 + 2020 * MS, (1, 100), (4, 4000)),
    ]
    tables = build_calls(flows_frame([{"flow_id": 1}, dns, inbound]), activity_frame(activity), None, None)
    d = tables.destinations
    row = d[(d["session_id"] == "s1") & (d["destination"] == "198.51.100.9")].iloc[0]
    assert (row["bytes_sent"], row["bytes_received"]) == (4000, 100)
    assert (row["packets_sent"], row["packets_received"]) == (4, 1)


# -- interval lookups (destinations.grouped_searchsorted, windows_containing) -------------------


def test_grouped_searchsorted_is_searchsorted_within_each_group():
    keys = np.array([0, 0, 0, 2, 2, 5])
    values = np.array([10, 20, 20, -3, 7, 2**62])  # any int64 range, equal values
    query_keys = np.array([0, 0, 0, 0, 1, 2, 2, 5, 5, 9])
    query_values = np.array([5, 20, 21, 99, 0, -3, 8, 2**62, 0, 0])
    assert grouped_searchsorted(keys, values, query_keys, query_values, "left").tolist() == [
        0, 1, 3, 3, 3, 3, 5, 5, 5, 6,
    ]  # fmt: skip
    assert grouped_searchsorted(keys, values, query_keys, query_values, "right").tolist() == [
        0, 3, 3, 3, 3, 4, 5, 6, 5, 6,
    ]  # fmt: skip


def test_grouped_searchsorted_matches_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(50):
        keys = np.sort(rng.integers(0, 4, 30))
        values = rng.integers(-5, 5, 30)
        order = np.lexsort((values, keys))
        keys, values = keys[order], values[order]
        query_keys, query_values = rng.integers(0, 5, 40), rng.integers(-7, 7, 40)
        rows = list(zip(keys.tolist(), values.tolist()))
        queries = list(zip(query_keys.tolist(), query_values.tolist()))
        assert grouped_searchsorted(keys, values, query_keys, query_values, "left").tolist() == [
            sum(row < q for row in rows) for q in queries
        ]
        assert grouped_searchsorted(keys, values, query_keys, query_values, "right").tolist() == [
            sum(row <= q for row in rows) for q in queries
        ]


def pairs(points, windows):
    """windows_containing over (key, ns) points and (key, start, end) windows, as a pair list."""
    p, w = windows_containing(
        [k for k, _ in points], [t for _, t in points],
        [k for k, _, _ in windows], [s for _, s, _ in windows], [e for _, _, e in windows],
    )  # fmt: skip
    return list(zip(p.tolist(), w.tolist()))


def test_windows_containing_edges_are_inclusive():
    windows = [(0, 100, 200)]
    assert pairs([(0, 99), (0, 100), (0, 150), (0, 200), (0, 201)], windows) == [(1, 0), (2, 0), (3, 0)]


def test_windows_containing_touching_and_overlapping_windows():
    # two calls of one machine touching at 200 (both count the instant), a third overlapping
    # both (another service at the same time), and a window of another machine
    windows = [(0, 100, 200), (0, 200, 300), (0, 150, 250), (1, 0, 1000)]
    points = [(0, 120), (0, 200), (0, 260), (0, 301), (1, 200), (2, 200)]
    assert pairs(points, windows) == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 1), (4, 3)]


def test_windows_containing_ignores_windows_with_a_negative_key_and_empty_inputs():
    assert pairs([(0, 5)], [(-1, 0, 10), (0, 5, 5)]) == [(0, 1)]
    assert pairs([], [(0, 0, 10)]) == []
    assert pairs([(0, 5)], []) == []


def test_windows_containing_matches_brute_force():
    rng = np.random.default_rng(11)
    for _ in range(50):
        starts = rng.integers(0, 50, 6)
        windows = [(int(k), int(s), int(s + d)) for k, s, d in zip(rng.integers(-1, 3, 6), starts, rng.integers(0, 20, 6))]
        points = [(int(k), int(t)) for k, t in zip(rng.integers(0, 3, 40), rng.integers(-2, 75, 40))]
        expected = [
            (i, w) for i, (k, t) in enumerate(points) for w, (wk, s, e) in enumerate(windows) if wk == k and s <= t <= e
        ]
        assert pairs(points, windows) == expected


def test_window_index_built_once_answers_every_slice_of_points_alike():
    rng = np.random.default_rng(12)
    keys, starts = rng.integers(-1, 3, 8), rng.integers(0, 50, 8)
    index = WindowIndex(keys, starts, starts + rng.integers(0, 20, 8))
    point_keys, point_ns = rng.integers(0, 3, 60), rng.integers(-2, 75, 60)
    whole = index.containing(point_keys, point_ns)
    sliced = [index.containing(point_keys[lo:hi], point_ns[lo:hi]) for lo, hi in ((0, 7), (7, 8), (8, 60))]
    assert np.array_equal(np.concatenate([p + lo for (p, _), lo in zip(sliced, (0, 7, 8))]), whole[0])
    assert np.array_equal(np.concatenate([w for _, w in sliced]), whole[1])
    assert [a.size for a in index.containing([], [])] == [0, 0]


def test_flow_active_across_two_calls_counts_in_each_and_outside_between():
    # Zoom media 0-10 s and 80-90 s (two calls); a telemetry flow sending one beacon per 10 s
    # from 0 to 90 s: two beacons in each call (0 and 10 s; 80 and 90 s; the one at 0 s exactly
    # at the call's first packet, T0 + 10 ms), the six from 20 to 70 s outside.
    flows = [{"flow_id": 1}, {"flow_id": 2, "client_port": 50001, **TELEMETRY}]
    beacons = [bucket(2, T0 + s * SECOND, T0 + s * SECOND + 10 * MS, T0 + s * SECOND + 20 * MS, (1, 100), (1, 10))
               for s in range(0, 100, 10)]  # fmt: skip
    tables = build_calls(flows_frame(flows), activity_frame(buckets(1, 0, 10) + buckets(1, 80, 90) + beacons), None, None)
    d = tables.destinations
    telemetry = d[d["destination"] == "log.zoom.us"]
    assert list(telemetry["session_id"]) == ["s1", "s2", ""]
    assert list(telemetry["bytes_sent"]) == [200, 200, 600]
    assert list(telemetry["during_call"]) == [True, True, False]
    assert telemetry.iloc[2]["first_seen"] == ts(T0 + 20 * SECOND + 10 * MS)
    assert telemetry.iloc[2]["last_seen"] == ts(T0 + 70 * SECOND + 20 * MS)


def test_bucket_in_two_overlapping_calls_of_one_machine_counts_in_both():
    teams = {"flow_id": 2, "service": "teams", "server_ip": "52.112.0.9", "server_port": 3478, "app_protocol": "stun",
             "role": "relay", "organisation": "Microsoft Corporation"}  # fmt: skip
    beacon = bucket(3, T0 + 5 * SECOND, T0 + 5010 * MS, T0 + 5020 * MS, (1, 100), (1, 10))
    flows = [{"flow_id": 1}, teams, {"flow_id": 3, "client_port": 50001, **TELEMETRY}]
    activity = buckets(1, 0, 10) + buckets(2, 3, 20) + [beacon]
    d = build_calls(flows_frame(flows), activity_frame(activity), None, None).destinations
    telemetry = d[d["destination"] == "log.zoom.us"]
    assert list(telemetry["session_id"]) == ["s1", "s2"]
    assert list(telemetry["bytes_sent"]) == [100, 100]


def test_string_ranks_are_code_point_order_with_equal_ranks_for_equal_strings():
    names, ranks = string_ranks(np.array(["b", "B", "=x", "b", "é", ""], dtype=object))
    assert names.tolist() == ["", "=x", "B", "b", "é"]
    assert ranks.tolist() == [3, 2, 1, 3, 4, 0]
    names, ranks = string_ranks(np.array([], dtype=object))
    assert names.tolist() == [] and ranks.tolist() == []


def test_window_flows_rows_per_call_then_outside_in_order_of_first_bucket():
    flows = [{"flow_id": 1}, {"flow_id": 2, "client_port": 50001, **TELEMETRY},
             {"flow_id": 3, "client_port": 50002, "client_ip": "10.0.0.3", **TELEMETRY}]  # fmt: skip
    activity = buckets(1, 0, 2) + [  # activity rows 0-20
        bucket(2, T0 + 5 * SECOND, T0 + 5010 * MS, T0 + 5090 * MS, (2, 300), (1, 120)),  # row 21, after the call
        bucket(2, T0, T0 + 10 * MS, T0 + 20 * MS, (1, 50), (1, 5)),  # row 22, at the call's first packet
        bucket(3, T0, T0 + 10 * MS, T0 + 20 * MS, (1, 70), (1, 7)),  # row 23, another machine
    ]
    sides = flow_sides(flows_frame(flows))
    directed = directed_activity(activity_frame(activity), sides)
    windows = pd.DataFrame({"capture": ["a.pcap"], "session_id": ["s1"], "client_ip": [ME],
                            "start_ns": [T0 + 10 * MS], "end_ns": [T0 + 2090 * MS]})  # fmt: skip
    frame = window_flows(directed, sides, windows, merge=False)
    assert list(zip(frame["session_id"], frame["flow_id"])) == [("s1", 1), ("s1", 2), ("", 2), ("", 3)]
    assert list(frame["sent_bytes"]) == [21 * 1000, 50, 300, 70]
    assert list(frame["out_capture"]) == ["a.pcap"] * 4
    assert list(frame["first_ns"] - T0) == [10 * MS, 10 * MS, 5010 * MS, 10 * MS]


# -- memory-lean counting: chunks, slices and group folding (destinations_table) ----------------


def tie_case(first_service="zoom", second_service=""):
    """One call (flow 1, Zoom media 0-2 s) and, during it, flows 2-5 to log.zoom.us from this
    machine: 2 and 3 with the same bytes but different services (two groups that tie on every
    sort column); 4 and 5 in one group (service "google-analytics"), equal confidence and bytes,
    so the strongest is the one whose first bucket comes first (flow 4); then an outside beacon."""
    services = {2: first_service, 3: second_service, 4: "google-analytics", 5: "google-analytics"}
    flows = [{"flow_id": 1}] + [
        {"flow_id": flow_id, "client_port": 50000 + flow_id, **TELEMETRY, "service": service,
         "evidence": f"sni:log.zoom.us;flow:{flow_id}"}
        for flow_id, service in services.items()
    ]  # fmt: skip
    activity = buckets(1, 0, 2) + [
        bucket(flow_id, T0 + SECOND, T0 + 1010 * MS, T0 + 1020 * MS, (1, 100), (1, 10)) for flow_id in (2, 3, 4, 5)
    ] + [bucket(5, T0 + 50 * SECOND, T0 + 50010 * MS, T0 + 50020 * MS, (2, 200), (1, 10))]  # fmt: skip
    sides = flow_sides(flows_frame(flows))
    directed = directed_activity(activity_frame(activity), sides)
    windows = pd.DataFrame({"capture": ["a.pcap"], "session_id": ["s1"], "client_ip": [ME],
                            "start_ns": [T0 + 10 * MS], "end_ns": [T0 + 2090 * MS]})  # fmt: skip
    return directed, sides, windows


def test_groups_tied_on_every_sort_column_come_in_order_of_their_first_flow():
    for first, second in (("zoom", ""), ("", "zoom")):
        d = destinations_table(*tie_case(first, second), merge=False)
        telemetry = d[(d["session_id"] == "s1") & (d["bytes_sent"] == 100)]
        assert list(telemetry["service"]) == [first, second]


def test_strongest_flow_ties_go_to_the_flow_whose_first_bucket_comes_first():
    d = destinations_table(*tie_case(), merge=False)
    both = d[(d["session_id"] == "s1") & (d["service"] == "google-analytics")].iloc[0]
    assert (both["flows"], both["bytes_sent"], both["evidence"]) == (2, 200, "sni:log.zoom.us;flow:4")
    outside = d[d["session_id"] == ""].iloc[0]
    assert (outside["flows"], outside["evidence"]) == (1, "sni:log.zoom.us;flow:5")


def test_destinations_do_not_depend_on_chunks_or_slices(monkeypatch):
    directed, sides, windows = tie_case()
    whole = destinations_table(directed, sides, windows, merge=False)
    one_flow_per_chunk = [directed.take(piece) for piece in np.split(
        np.arange(directed.side.size), np.flatnonzero(np.diff(directed.side)) + 1)]  # fmt: skip
    pd.testing.assert_frame_equal(destinations_table(iter(one_flow_per_chunk), sides, windows, False), whole)
    for slice_rows in (1, 2, 5):
        monkeypatch.setattr(destinations_module, "SLICE_BUCKETS", slice_rows)
        pd.testing.assert_frame_equal(destinations_table(directed, sides, windows, False), whole)


def test_flow_slices_never_split_a_flow_and_cover_every_row():
    directed, _, _ = tie_case()
    side = directed.side  # flow 1 has 21 buckets, the others 1 or 2
    for max_rows in (1, 3, 21, 22, 1000):
        pieces = [piece.side for piece in _flow_slices(directed, max_rows)]
        assert np.array_equal(np.concatenate(pieces), side)
        assert all(p[0] != q[-1] for p, q in zip(pieces[1:], pieces[:-1]))  # no flow on both sides of a cut
        assert all(p.size <= max_rows or (p == p[0]).all() for p in pieces)  # bigger only for one whole flow


def test_group_folder_folds_parts_in_any_split_as_at_once():
    rng = np.random.default_rng(7)
    n = 500
    parts = {name: rng.integers(0, 1000, n) for name in GROUP_FIELDS}
    parts["key"] = rng.integers(0, 40, n)
    parts["strongest_rank"] = rng.integers(0, 3, n)
    parts["strongest_bytes"] = rng.integers(0, 5, n)  # many ties: decided by strongest_position
    parts["strongest_position"] = rng.permutation(n)
    pairs = np.stack([parts["key"], rng.integers(0, 7, n)])
    at_once = _fold_groups([{name: values.copy() for name, values in parts.items()}])
    folder = _GroupFolder()
    for lo, hi in itertools.pairwise([0, 3, 4, 60, 61, 200, 350, n]):
        folder.add({name: values[lo:hi].copy() for name, values in parts.items()}, pairs[:, lo:hi])
    folded, folded_pairs = folder.result()
    for name in GROUP_FIELDS:
        assert np.array_equal(folded[name], at_once[name]), name
    assert np.array_equal(folded["key"], np.unique(parts["key"]))
    assert folded["flows"].sum() == parts["flows"].sum()
    expected_pairs = sorted(set(zip(pairs[0].tolist(), pairs[1].tolist())))
    assert list(zip(*folded_pairs.tolist())) == expected_pairs


def test_destinations_counted_in_a_forked_process_are_the_same(ndpi_dir):
    """build_calls(fork_destinations=True) (a run with several workers) gives the same tables."""
    import inspector
    from inspector.pipeline import AnalyzeOptions

    one = inspector.analyze([ndpi_dir / "telegram_videocall.pcapng"], AnalyzeOptions(workers=1))
    two = inspector.analyze([ndpi_dir / "telegram_videocall.pcapng"], AnalyzeOptions(workers=2))
    assert len(one.destinations) > 5
    for table in ("sessions", "destinations", "media", "flows"):
        pd.testing.assert_frame_equal(getattr(one, table), getattr(two, table), obj=table)
