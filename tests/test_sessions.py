"""Call windows (inspector/sessions.py): the window rule, P2P vs relay, merge mode, empty inputs.

The helpers here build flows/activity/rtp frames by hand; test_media, test_destinations and
test_report import them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from inspector.schema import (
    ACTIVITY_BUCKET_NS,
    ACTIVITY_COLUMNS,
    DESTINATION_COLUMNS,
    FLOW_COLUMNS,
    MEDIA_COLUMNS,
    RTP_COLUMNS,
    SESSION_COLUMNS,
    empty_frame,
)
from inspector.sessions import (
    FLOW_SESSION_COLUMNS,
    CallOptions,
    _endpoints_text,
    _endpoints_texts,
    _window_starts,
    build_calls,
    endpoint_text,
    flow_sides,
    fold_generic_media,
    server_identified,
)

T0 = 1_764_079_330_000_000_000  # 2025-11-25T14:02:10Z in ns
SECOND = 1_000_000_000
ME = "10.0.0.2"
ZOOM_MMR = "170.114.10.5"


def flows_frame(rows: list[dict]) -> pd.DataFrame:
    """A flows table with the classifier's columns; unspecified columns get plausible defaults."""
    defaults = {
        "capture": "a.pcap",
        "transport": "udp",
        "client_ip": ME,
        "client_port": 50000,
        "server_ip": ZOOM_MMR,
        "server_port": 8801,
        "first_seen": T0,
        "last_seen": T0,
        "duration_s": 0.0,
        "client_to_server_packets": 0,
        "client_to_server_bytes": 0,
        "server_to_client_packets": 0,
        "server_to_client_bytes": 0,
        "app_protocol": "zoom-media",
        "server_name": "",
        "name_source": "",
        "service": "zoom",
        "organisation": "Zoom Video Communications, Inc.",
        "kind": "conferencing",
        "category": "video-conferencing",
        "role": "media",
        "evidence": "payload:zoom-media",
        "confidence": "high",
        "session_id": "",
        "vlan_id": 0,
        "tunnel": "",
    }
    data = {name: [] for name, _, _ in FLOW_COLUMNS}
    for row in rows:
        for name, _, _ in FLOW_COLUMNS:
            data[name].append(row.get(name, defaults.get(name)))
    frame = pd.DataFrame(data)
    for name in ("first_seen", "last_seen"):
        frame[name] = pd.to_datetime(frame[name], unit="ns", utc=True)
    return frame.astype({name: dtype for name, dtype, _ in FLOW_COLUMNS})


def buckets(
    flow_id: int,
    start_s: float,
    end_s: float,
    *,
    capture: str = "a.pcap",
    sent: tuple[int, int] = (5, 1000),
    received: tuple[int, int] = (5, 1000),
    step_s: float = 0.1,
) -> list[dict]:
    """Activity buckets of one flow every ``step_s`` from start_s to end_s (inclusive), each with
    ``sent``/``received`` = (packets, bytes) client-to-server / server-to-client; the bucket's
    packets span [bucket + 10 ms, bucket + 90 ms]."""
    rows = []
    count = int(round((end_s - start_s) / step_s)) + 1
    for i in range(count):
        bucket = T0 + int(round((start_s + i * step_s) * SECOND))
        bucket -= bucket % ACTIVITY_BUCKET_NS
        rows.append(
            {
                "capture": capture,
                "flow_id": flow_id,
                "bucket_ns": bucket,
                "first_ns": bucket + 10_000_000,
                "last_ns": bucket + 90_000_000,
                "client_to_server_packets": sent[0],
                "client_to_server_bytes": sent[1],
                "server_to_client_packets": received[0],
                "server_to_client_bytes": received[1],
            }
        )
    return rows


def activity_frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return empty_frame(ACTIVITY_COLUMNS)
    frame = pd.DataFrame(rows)[[name for name, _, _ in ACTIVITY_COLUMNS]]
    return frame.astype({name: dtype for name, dtype, _ in ACTIVITY_COLUMNS})


def rtp_frame(rows: list[dict]) -> pd.DataFrame:
    defaults = {"capture": "a.pcap", "marker": False, "rtp_len": 120, "ip_bytes": 148, "zoom_type": -1}
    if not rows:
        return empty_frame(RTP_COLUMNS)
    data = {name: [row.get(name, defaults.get(name)) for row in rows] for name, _, _ in RTP_COLUMNS}
    return pd.DataFrame(data).astype({name: dtype for name, dtype, _ in RTP_COLUMNS})


def assert_schema(frame: pd.DataFrame, columns) -> None:
    assert list(frame.columns) == [name for name, _, _ in columns]
    assert {name: str(frame[name].dtype) for name in frame.columns} == {
        name: str(pd.Series([], dtype=dtype).dtype) for name, dtype, _ in columns
    }


def calls(flow_rows, activity_rows, rtp_rows=(), merge=False, options=CallOptions()):
    flows = flows_frame(list(flow_rows))
    return build_calls(flows, activity_frame(list(activity_rows)), rtp_frame(list(rtp_rows)), None, merge, options)


# -- the window rule ---------------------------------------------------------------------------


def test_gap_below_max_gap_stays_one_call():
    tables = calls([{"flow_id": 1}], buckets(1, 0, 10) + buckets(1, 50, 60))  # 40 s silence
    sessions = tables.sessions
    assert len(sessions) == 1
    row = sessions.iloc[0]
    assert row["session_id"] == "s1"
    assert row["service"] == "zoom"
    assert row["client_ip"] == ME
    assert row["start"] == pd.Timestamp(T0 + 10_000_000, unit="ns", tz="UTC")
    assert row["end"] == pd.Timestamp(T0 + 60 * SECOND + 90_000_000, unit="ns", tz="UTC")
    assert row["duration_s"] == pytest.approx(60.08)
    # 101 buckets each side, 1000 bytes each way per bucket
    assert row["bytes_sent"] == 202 * 1000
    assert row["bytes_received"] == 202 * 1000


def test_gap_above_max_gap_starts_a_new_call():
    tables = calls([{"flow_id": 1}], buckets(1, 0, 10) + buckets(1, 80, 90))  # 70 s silence
    assert list(tables.sessions["session_id"]) == ["s1", "s2"]
    assert list(tables.sessions["bytes_sent"]) == [101_000, 101_000]
    # the flow carried media for both calls
    assert list(tables.flow_session["session_id"]) == ["s1;s2"]


def test_max_gap_is_an_option():
    tables = calls([{"flow_id": 1}], buckets(1, 0, 10) + buckets(1, 50, 60), options=CallOptions(max_gap_s=30))
    assert len(tables.sessions) == 2


def test_ice_restart_with_new_flows_stays_one_call():
    flows = [{"flow_id": 1, "client_port": 50000}, {"flow_id": 2, "client_port": 50002, "server_port": 8802}]
    tables = calls(flows, buckets(1, 0, 10) + buckets(2, 15, 30))
    assert len(tables.sessions) == 1
    row = tables.sessions.iloc[0]
    assert row["media_flows"] == 2
    assert row["peers"] == f"{ZOOM_MMR}:8801;{ZOOM_MMR}:8802"
    assert row["relay_servers"] == row["peers"]
    assert not row["is_p2p"]
    assert list(tables.flow_session["flow_id"]) == [1, 2]
    assert list(tables.flow_session["session_id"]) == ["s1", "s1"]


def test_lone_stun_probe_is_not_a_call():
    stun = {"flow_id": 1, "app_protocol": "stun", "server_port": 3478, "service": "webrtc", "evidence": "payload:stun"}
    probe = buckets(1, 0, 0.3, sent=(1, 120), received=(1, 100))  # 4 packets each way, 0.4 s
    tables = calls([stun], probe)
    assert len(tables.sessions) == 0
    assert_schema(tables.sessions, SESSION_COLUMNS)
    # still reported as activity outside any call
    outside = tables.destinations
    assert list(outside["session_id"]) == [""]
    assert outside["bytes_sent"].iloc[0] == 4 * 120


def test_few_packets_over_a_long_time_is_not_a_call():
    # one packet each way per second: 9 buckets carry 18 packets, 10 buckets 20 (min_packets)
    no_peak = CallOptions(min_peak_packets_per_s=0)
    tables = calls([{"flow_id": 1}], buckets(1, 0, 8, sent=(1, 100), received=(1, 100), step_s=1.0), options=no_peak)
    assert len(tables.sessions) == 0  # 18 packets
    tables = calls([{"flow_id": 1}], buckets(1, 0, 9, sent=(1, 100), received=(1, 100), step_s=1.0), options=no_peak)
    assert len(tables.sessions) == 1  # 20 packets over 9 s


def test_hours_of_stun_keepalives_are_not_a_call():
    # a STUN binding each way every 15 s for an hour: 482 packets, never 10 in one second
    keepalive = {"flow_id": 1, "app_protocol": "stun", "server_port": 3478, "service": "webrtc"}
    activity = buckets(1, 0, 3600, sent=(1, 100), received=(1, 100), step_s=15.0)
    assert len(calls([keepalive], activity).sessions) == 0
    # the same flow with one busy second (5 buckets of 1+1 packets) is a call
    busy = buckets(1, 600, 600.4, sent=(1, 100), received=(1, 100))
    assert len(calls([keepalive], activity + busy).sessions) == 1


def test_generic_webrtc_media_overlapping_a_named_call_joins_it():
    zoom = {"flow_id": 1}
    turn = {"flow_id": 2, "service": "webrtc", "server_ip": "192.0.2.50", "server_port": 3478, "role": "relay",
            "app_protocol": "turn", "organisation": "unknown operator"}  # fmt: skip
    later = {"flow_id": 3, "service": "webrtc", "server_ip": "192.0.2.51", "server_port": 3478, "role": "relay",
             "app_protocol": "turn"}  # fmt: skip
    tables = calls([zoom, turn, later], buckets(1, 0, 30) + buckets(2, 20, 50) + buckets(3, 500, 520))
    sessions = tables.sessions
    assert list(sessions["service"]) == ["zoom", "webrtc"]
    assert list(sessions["media_flows"]) == [2, 1]
    assert sessions.iloc[0]["relay_servers"] == f"{ZOOM_MMR}:8801;192.0.2.50:3478"
    assert list(tables.flow_session["session_id"]) == ["s1", "s1", "s2"]


def test_short_media_burst_is_not_a_call():
    tables = calls([{"flow_id": 1}], buckets(1, 0, 1.5))  # many packets, 1.58 s
    assert len(tables.sessions) == 0


def test_two_clients_are_two_calls():
    flows = [{"flow_id": 1}, {"flow_id": 2, "client_ip": "10.0.0.3"}]
    tables = calls(flows, buckets(1, 0, 10) + buckets(2, 5, 20))
    sessions = tables.sessions
    assert list(sessions["client_ip"]) == [ME, "10.0.0.3"]
    assert list(sessions["session_id"]) == ["s1", "s2"]


def test_two_services_are_two_calls():
    teams = {
        "flow_id": 2,
        "service": "teams",
        "server_ip": "52.112.0.9",
        "server_port": 3478,
        "app_protocol": "stun",
        "role": "relay",
        "organisation": "Microsoft Corporation",
    }
    tables = calls([{"flow_id": 1}, teams], buckets(2, 0, 10) + buckets(1, 3, 20))
    sessions = tables.sessions
    assert list(sessions["service"]) == ["teams", "zoom"]
    assert list(sessions["session_id"]) == ["s1", "s2"]
    assert sessions.iloc[0]["relay_servers"] == "52.112.0.9:3478"


def test_signalling_and_telemetry_do_not_make_a_call():
    flows = [
        {"flow_id": 1, "transport": "tcp", "app_protocol": "tls", "role": "signalling", "server_port": 443},
        {"flow_id": 2, "app_protocol": "quic", "kind": "telemetry", "role": "telemetry", "server_port": 443},
    ]
    tables = calls(flows, buckets(1, 0, 30) + buckets(2, 0, 30))
    assert len(tables.sessions) == 0
    assert set(tables.destinations["session_id"]) == {""}


def test_sessions_numbered_by_start_over_the_run():
    flows = [{"flow_id": 1, "capture": "a.pcap"}, {"flow_id": 1, "capture": "b.pcap"}]
    activity = buckets(1, 100, 110, capture="a.pcap") + buckets(1, 0, 10, capture="b.pcap")
    sessions = calls(flows, activity).sessions
    assert list(sessions["capture"]) == ["b.pcap", "a.pcap"]
    assert list(sessions["session_id"]) == ["s1", "s2"]


# -- P2P vs relay, this machine's side ---------------------------------------------------------


def test_p2p_call_through_stun_attribution():
    stun = {"flow_id": 1, "server_ip": "170.114.52.1", "server_port": 3478, "app_protocol": "stun", "role": "relay"}
    peer = {
        "flow_id": 2,
        "server_ip": "198.51.100.7",
        "server_port": 61000,
        "app_protocol": "rtp",
        "evidence": "p2p-stun:170.114.52.1; payload:rtp",
        "confidence": "medium",
    }
    tables = calls([stun, peer], buckets(1, 0, 1, sent=(1, 100), received=(1, 100)) + buckets(2, 1, 20))
    row = tables.sessions.iloc[0]
    assert bool(row["is_p2p"]) is True
    assert row["relay_servers"] == "170.114.52.1:3478"
    assert row["peers"] == "170.114.52.1:3478;198.51.100.7:61000"
    assert row["media_flows"] == 2


def test_relay_only_call_is_not_p2p():
    relay = {"flow_id": 1, "service": "webrtc", "server_ip": "192.0.2.80", "server_port": 3478, "role": "relay"}
    row = calls([relay], buckets(1, 0, 10)).sessions.iloc[0]
    assert bool(row["is_p2p"]) is False
    assert row["relay_servers"] == "192.0.2.80:3478"


def test_webrtc_to_private_peer_started_by_the_peer_is_p2p_from_this_machine():
    # The peer (192.168.1.20) started the media flow; this machine also resolved a name over DNS,
    # which makes 192.168.1.10 a local host, so the flow is swapped.
    dns = {"flow_id": 1, "client_ip": "192.168.1.10", "server_ip": "192.168.1.1", "server_port": 53,
           "app_protocol": "dns", "service": "", "kind": "", "role": "", "evidence": ""}  # fmt: skip
    media = {"flow_id": 2, "client_ip": "192.168.1.20", "client_port": 40000, "server_ip": "192.168.1.10",
             "server_port": 50555, "app_protocol": "rtp", "service": "webrtc", "role": "media"}  # fmt: skip
    activity = buckets(1, 0, 0) + buckets(2, 1, 11, sent=(5, 1000), received=(3, 300))
    tables = calls([dns, media], activity)
    row = tables.sessions.iloc[0]
    assert row["client_ip"] == "192.168.1.10"
    assert bool(row["is_p2p"]) is True
    assert row["peers"] == "192.168.1.20:40000"
    assert row["relay_servers"] == ""
    # swapped: this machine sent the server-to-client bytes
    assert row["bytes_sent"] == 101 * 300
    assert row["bytes_received"] == 101 * 1000


def test_flow_sides_ipv6_endpoint_text():
    assert endpoint_text("2001:db8::1", 3478) == "[2001:db8::1]:3478"
    sides = flow_sides(flows_frame([{"flow_id": 1, "server_ip": "2001:db8::1"}]))
    assert sides.loc[0, "remote_ip"] == "2001:db8::1"
    assert bool(sides.loc[0, "is_media"]) is True


# -- merge mode --------------------------------------------------------------------------------


def test_merge_joins_captures_into_one_timeline():
    flows = [{"flow_id": 1, "capture": "a.pcap"}, {"flow_id": 1, "capture": "b.pcap", "client_port": 50010}]
    activity = buckets(1, 0, 10, capture="a.pcap") + buckets(1, 30, 40, capture="b.pcap")
    separate = calls(flows, activity)
    assert list(separate.sessions["capture"]) == ["a.pcap", "b.pcap"]
    merged = calls(flows, activity, merge=True)
    assert len(merged.sessions) == 1
    row = merged.sessions.iloc[0]
    assert row["capture"] == "merged"
    assert row["media_flows"] == 2
    assert row["bytes_sent"] == 202 * 1000
    assert list(merged.flow_session["capture"]) == ["a.pcap", "b.pcap"]
    assert list(merged.flow_session["session_id"]) == ["s1", "s1"]
    assert set(merged.destinations["capture"]) == {"merged"}


# -- empty inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("use_none", [False, True])
def test_empty_inputs_give_empty_tables_with_schema(use_none):
    if use_none:
        tables = build_calls(None, None, None, None)
    else:
        tables = build_calls(
            empty_frame(FLOW_COLUMNS), empty_frame(ACTIVITY_COLUMNS), empty_frame(RTP_COLUMNS), None, merge=True
        )
    assert_schema(tables.sessions, SESSION_COLUMNS)
    assert_schema(tables.destinations, DESTINATION_COLUMNS)
    assert_schema(tables.media, MEDIA_COLUMNS)
    assert_schema(tables.flow_session, FLOW_SESSION_COLUMNS)
    assert len(tables.sessions) == len(tables.destinations) == len(tables.media) == len(tables.flow_session) == 0


def test_non_empty_tables_have_schema_dtypes():
    tables = calls([{"flow_id": 1}], buckets(1, 0, 10))
    assert_schema(tables.sessions, SESSION_COLUMNS)
    assert_schema(tables.destinations, DESTINATION_COLUMNS)
    assert_schema(tables.flow_session, FLOW_SESSION_COLUMNS)


def test_named_service_peer_known_only_by_payload_is_p2p_and_not_a_local_host():
    # teams.pcap shape: a participant at a public address starts the media flow to this machine;
    # the verdict rests on payload evidence only (MS-STUN attributes), nothing names a server.
    dns = {"flow_id": 1, "server_ip": "192.168.1.1", "server_port": 53, "app_protocol": "dns", "service": "",
           "kind": "", "role": "", "evidence": ""}  # fmt: skip
    relay = {"flow_id": 2, "service": "teams", "server_ip": "52.114.250.141", "server_port": 3478,
             "app_protocol": "turn", "role": "media", "evidence": "payload:ms-turn x; cidr:teams"}  # fmt: skip
    peer = {"flow_id": 3, "service": "teams", "client_ip": "93.71.110.205", "client_port": 16332,
            "server_ip": ME, "server_port": 50016, "app_protocol": "stun",
            "evidence": "payload:stun stun attr=0x8036; payload:rtp rtp pt=104 ssrcs=1"}  # fmt: skip
    tables = calls([dns, relay, peer], buckets(1, 0, 0) + buckets(2, 0, 3) + buckets(3, 2, 12))
    assert len(tables.sessions) == 1
    row = tables.sessions.iloc[0]
    assert row["client_ip"] == ME
    assert bool(row["is_p2p"]) is True
    assert row["relay_servers"] == "52.114.250.141:3478"
    assert row["peers"] == "52.114.250.141:3478;93.71.110.205:16332"


def test_server_identified():
    assert server_identified("payload:ms-turn x; cidr:teams")
    assert server_identified("payload:zoom-media; sni:zoomfrn99mmr.zoom.us")
    assert server_identified("payload:zoom-media")  # outer SFU header: server flows only
    assert not server_identified("payload:stun stun attr=0x8036; payload:rtp rtp pt=104")
    assert not server_identified("")


# -- vectorised helpers ------------------------------------------------------------------------


def fold(services, first_s, last_s, scopes=None, locals_=None, max_gap_s=60):
    n = len(services)
    return fold_generic_media(
        np.array(services, dtype=object),
        np.array(scopes or ["a.pcap"] * n, dtype=object),
        np.array(locals_ or [ME] * n, dtype=object),
        np.array([int(s * SECOND) for s in first_s], dtype=np.int64),
        np.array([int(s * SECOND) for s in last_s], dtype=np.int64),
        int(max_gap_s * SECOND),
    ).tolist()


def test_fold_generic_media_reach_is_max_gap_inclusive():
    # zoom 0-10 s; webrtc starting exactly 60 s after zoom's last packet folds, 1 ns later not
    assert fold(["zoom", "webrtc"], [0, 70], [10, 80]) == ["zoom", "zoom"]
    assert fold(["zoom", "webrtc"], [0, 70 + 1e-9], [10, 80]) == ["zoom", "webrtc"]
    # the same reach backwards: webrtc ending 60 s before zoom starts
    assert fold(["webrtc", "zoom"], [0, 70], [10, 80]) == ["zoom", "zoom"]


def test_fold_generic_media_needs_exactly_one_named_service_of_the_same_machine_and_scope():
    assert fold(["zoom", "teams", "webrtc"], [0, 0, 5], [10, 10, 6]) == ["zoom", "teams", "webrtc"]
    # a second zoom flow is still one service
    assert fold(["zoom", "zoom", "webrtc"], [0, 5, 5], [10, 20, 6]) == ["zoom", "zoom", "zoom"]
    assert fold(["zoom", "webrtc"], [0, 5], [10, 6], locals_=[ME, "10.0.0.3"]) == ["zoom", "webrtc"]
    assert fold(["zoom", "webrtc"], [0, 5], [10, 6], scopes=["a.pcap", "b.pcap"]) == ["zoom", "webrtc"]
    # merge=True: call_windows passes one scope ("merged") for every capture
    assert fold(["zoom", "webrtc"], [0, 5], [10, 6], scopes=["merged", "merged"]) == ["zoom", "zoom"]
    # all generic, or none: unchanged
    assert fold(["webrtc", "webrtc"], [0, 5], [10, 6]) == ["webrtc", "webrtc"]
    assert fold([], [], []) == []


def test_fold_generic_media_matches_a_pairwise_reference():
    rng = np.random.default_rng(3)
    for _ in range(100):
        n = int(rng.integers(1, 12))
        services = rng.choice(["zoom", "teams", "webrtc", "webrtc"], n).tolist()
        scopes = rng.choice(["a.pcap", "b.pcap"], n).tolist()
        locals_ = rng.choice([ME, "10.0.0.3"], n).tolist()
        first = rng.integers(0, 300, n)
        last = first + rng.integers(0, 60, n)
        expected = []
        for i in range(n):
            near = {
                services[j] for j in range(n)
                if services[j] != "webrtc" and scopes[j] == scopes[i] and locals_[j] == locals_[i]
                and first[j] <= last[i] + 30 and last[j] >= first[i] - 30
            }  # fmt: skip
            expected.append(near.pop() if services[i] == "webrtc" and len(near) == 1 else services[i])
        if "webrtc" not in services or set(services) == {"webrtc"}:
            expected = services
        assert fold(services, first.tolist(), last.tolist(), scopes, locals_, max_gap_s=30) == expected


def test_endpoints_texts_match_the_one_row_text():
    addresses = np.array(["10.0.0.9", "2001:db8::1", "9.9.9.9", "not-an-ip", "=cmd", "10.0.0.9", "::1", "9.9.9.9"],
                         dtype=object)  # fmt: skip
    ports = np.array([3478, 443, 80, 5, 1, 3478, 9, 79])
    owner = np.array([0, 0, 0, 2, 2, 0, 2, 2])
    texts = _endpoints_texts(owner, addresses, ports, 4).tolist()
    assert texts == [_endpoints_text(addresses[owner == o], ports[owner == o]) for o in range(4)]
    assert texts == ["9.9.9.9:80;10.0.0.9:3478;[2001:db8::1]:443", "", "9.9.9.9:79;[::1]:9;=cmd:1;not-an-ip:5", ""]


def test_window_starts_split_on_group_and_long_silence_only():
    group = np.array([0, 0, 0, 0, 1, 1])
    first = np.array([0, 10, 200, 400, 410, 500]) * SECOND
    last = np.array([5, 150, 210, 405, 420, 505]) * SECOND
    # row 2 starts 50 s after row 1's last packet (150 s): same window; row 3 190 s later: new;
    # row 4 another group; row 5 80 s after row 4.
    assert _window_starts(group, first, last, 60 * SECOND).tolist() == [0, 3, 4, 5]
    assert _window_starts(group[:0], first[:0], last[:0], 60 * SECOND).tolist() == []


def test_flow_session_lists_calls_in_session_order_per_flow_across_captures():
    flows = [{"flow_id": 1}, {"flow_id": 1, "capture": "B.pcap"}]
    activity = buckets(1, 0, 10) + buckets(1, 80, 90) + buckets(1, 40, 50, capture="B.pcap")
    tables = calls(flows, activity)
    assert list(tables.sessions["session_id"]) == ["s1", "s2", "s3"]
    assert list(tables.sessions["capture"]) == ["a.pcap", "B.pcap", "a.pcap"]
    # captures in text order ("B" before "a"), each flow's calls in session order
    assert tables.flow_session.values.tolist() == [["B.pcap", 1, "s2"], ["a.pcap", 1, "s1;s3"]]
    merged = calls(flows, activity, merge=True)
    assert list(merged.sessions["capture"]) == ["merged"]  # one timeline: gaps of 30 s
    assert merged.flow_session.values.tolist() == [["B.pcap", 1, "s1"], ["a.pcap", 1, "s1"]]


def test_per_second_folds_a_flows_buckets_within_each_second():
    from inspector.sessions import DirectedBuckets, per_second

    s = 1_000_000_000
    rows = DirectedBuckets(
        side=np.array([0, 0, 0, 1, 1]),
        position=np.array([0, 1, 2, 3, 4]),
        first_ns=np.array([10 * s, 10 * s + 150_000_000, 11 * s + 5, 10 * s + 900_000_000, 10 * s + 950_000_000]),
        last_ns=np.array([10 * s + 90, 10 * s + 190_000_000, 11 * s + 9, 10 * s + 910_000_000, 10 * s + 999_000_000]),
        sent_bytes=np.array([100, 200, 300, 5, 6]),
        received_bytes=np.array([1, 2, 3, 4, 5]),
        sent_packets=np.array([1, 2, 3, 1, 1]),
        received_packets=np.array([0, 1, 0, 1, 1]),
    )
    folded = per_second(rows)
    assert folded.side.tolist() == [0, 0, 1]
    assert folded.position.tolist() == [0, 2, 3]
    assert folded.first_ns.tolist() == [10 * s, 11 * s + 5, 10 * s + 900_000_000]
    assert folded.last_ns.tolist() == [10 * s + 190_000_000, 11 * s + 9, 10 * s + 999_000_000]
    assert folded.sent_bytes.tolist() == [300, 300, 11] and folded.received_packets.tolist() == [1, 0, 2]


@pytest.mark.parametrize("name", ["zoom_p2p.pcapng", "teams.pcap", "wa_voice.pcap"])
def test_call_windows_are_the_same_from_buckets_and_from_per_second_rows(ndpi_dir, name):
    from inspector.api import _flows_frame, _labeller, _payload_stage, _signature_set
    from inspector.collect import ActivityCollector
    from inspector.pipeline import AnalyzeOptions, process_capture
    from inspector.sessions import bucket_source, call_windows, flow_sides, per_second

    options = AnalyzeOptions()
    activity = ActivityCollector()
    result = process_capture(
        ndpi_dir / name, options, None, _payload_stage(options), (activity,), _labeller(_signature_set(options))
    )
    sides = flow_sides(_flows_frame(result))
    media = bucket_source([activity.buckets(name)], sides).of_sides(sides["is_media"].to_numpy(dtype=bool))
    folded = per_second(media)
    assert folded.side.size < media.side.size
    exact, fast = call_windows(media, sides, False, CallOptions()), call_windows(folded, sides, False, CallOptions())
    assert len(exact.windows) >= 1
    pd.testing.assert_frame_equal(exact.windows, fast.windows)
    for name in ("sent_bytes", "received_bytes", "sent_packets", "received_packets"):
        assert np.bincount(exact.session, getattr(exact.buckets, name)).tolist() == np.bincount(
            fast.session, getattr(fast.buckets, name)
        ).tolist()


def test_bucket_source_reads_out_of_order_flows_tables_the_same(ndpi_dir):
    """A flows table not in (capture, flow_id) order makes the source sort every bucket by side
    once instead of reading ranges of flow ids; the call tables must not change."""
    from inspector.api import _flows_frame, _labeller, _payload_stage, _signature_set
    from inspector.collect import ActivityCollector, RtpCollector
    from inspector.pipeline import AnalyzeOptions, process_capture

    options = AnalyzeOptions()
    name = "zoom_p2p.pcapng"
    activity, rtp = ActivityCollector(), RtpCollector()
    result = process_capture(
        ndpi_dir / name, options, None, _payload_stage(options), (activity, rtp), _labeller(_signature_set(options))
    )
    flows = _flows_frame(result)
    buckets = activity.buckets(name)
    segments, reports = rtp.frame(name), rtp.rtcp_frame(name)
    in_order = build_calls(flows, [buckets], segments, reports)
    shuffled = flows.sample(frac=1.0, random_state=3).reset_index(drop=True)
    out_of_order = build_calls(shuffled, [buckets], segments, reports)
    assert len(in_order.sessions) >= 1
    for table in ("sessions", "destinations", "media"):
        pd.testing.assert_frame_equal(getattr(in_order, table), getattr(out_of_order, table))
