"""Destinations during each call and outside calls (inspector/destinations.py), byte for byte."""

from __future__ import annotations

import pandas as pd

from inspector.schema import DESTINATION_COLUMNS
from inspector.sessions import build_calls
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
