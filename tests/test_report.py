"""The terminal answer per call (inspector/report.py)."""

from __future__ import annotations

import pytest

from inspector.report import call_summaries, display_names, format_bytes, format_duration
from inspector.sessions import build_calls
from tests.test_destinations import scenario
from tests.test_sessions import activity_frame, buckets, flows_frame

NAMES = {
    "zoom": "Zoom Meetings",
    "google-analytics": "Google Analytics",
    "teams": "Microsoft Teams (and Skype for Business Online)",
}


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (999, "999 B"), (12_345, "12 KB"), (45_123_456, "45.1 MB"), (1_250_000_000, "1.25 GB")],
)
def test_format_bytes(count, text):
    assert format_bytes(count) == text


@pytest.mark.parametrize(("seconds", "text"), [(5.2, "5s"), (2573.4, "42m53s"), (3723, "1h02m03s"), (60, "1m00s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_display_names_drop_trailing_parenthesis():
    shown = display_names(NAMES)
    assert shown["teams"] == "Microsoft Teams"
    assert shown["zoom"] == "Zoom Meetings"


def test_call_line_sorted_by_bytes_sent_with_telemetry_flagged():
    lines = call_summaries(scenario(), NAMES)
    assert lines[0] == (
        "s1 Zoom Meetings call 2025-11-25 14:02:10-14:02:30 UTC (20s) from 10.0.0.2, "
        "media via 1 Zoom Meetings server; during it, data went to: "
        "Zoom Meetings call traffic 201 KB, "
        "Google Analytics www.googletagmanager.com 400 B (third-party telemetry: tag-manager), "
        "Zoom Meetings log.zoom.us 300 B (first-party telemetry)"
    )
    assert lines[1] == (
        "Outside calls (a.pcap): data went to: Zoom Meetings log.zoom.us 777 B (vendor telemetry), "
        "Google Analytics www.googletagmanager.com 500 B (third-party telemetry: tag-manager)"
    )
    assert len(lines) == 2


def test_no_calls_and_hostile_names():
    hostile = {
        "flow_id": 1,
        "transport": "tcp",
        "app_protocol": "tls",
        "server_name": "{0}{size}.evil.example",
        "service": "",
        "kind": "",
        "role": "",
        "organisation": "",
        "category": "",
    }
    tables = build_calls(flows_frame([hostile]), activity_frame(buckets(1, 0, 0, sent=(1, 1500))), None, None)
    lines = call_summaries(tables, NAMES)
    assert lines == [
        "No calls detected.",
        "Outside calls (a.pcap): data went to: {0}{size}.evil.example 2 KB (unidentified)",
    ]


def test_empty_run():
    assert call_summaries(build_calls(None, None, None, None), {}) == [
        "No calls detected.",
        "Outside calls: no data to any destination.",
    ]


def test_p2p_call_and_streams_text():
    peer = {"flow_id": 1, "server_ip": "198.51.100.7", "server_port": 61000, "app_protocol": "rtp",
            "evidence": "p2p-stun:170.114.52.1; payload:rtp"}  # fmt: skip
    tables = build_calls(flows_frame([peer]), activity_frame(buckets(1, 0, 65)), None, None)
    line = call_summaries(tables, NAMES)[0]
    assert "(1m05s)" in line
    assert ", media peer-to-peer; during it, data went to: Zoom Meetings call traffic 651 KB" in line


def test_default_names_come_from_the_signatures():
    line = call_summaries(scenario())[0]
    assert line.startswith("s1 Zoom Meetings call ")


def test_one_outside_line_per_capture_in_text_order():
    web = {"transport": "tcp", "app_protocol": "tls", "server_name": "example.org", "service": "", "kind": "",
           "role": "", "organisation": "", "category": "", "server_port": 443}  # fmt: skip
    flows = [{"flow_id": 1, **web}, {"flow_id": 1, "capture": "B.pcap", **web}]
    activity = buckets(1, 0, 0, sent=(1, 2500)) + buckets(1, 0, 0, sent=(1, 1500), capture="B.pcap")
    lines = call_summaries(build_calls(flows_frame(flows), activity_frame(activity), None, None), NAMES)
    assert lines == [
        "No calls detected.",
        "Outside calls (B.pcap): data went to: example.org 2 KB (unidentified)",
        "Outside calls (a.pcap): data went to: example.org 2 KB (unidentified)",
    ]


@pytest.mark.parametrize("tz", ["UTC", None])
def test_call_windows_read_as_strftime_reads_them(tz):
    import pandas as pd

    from inspector.report import _window_texts

    starts = pd.Series(pd.to_datetime(
        ["2025-11-25 14:02:10.999999999", "2025-12-31 23:59:59.5", "2024-02-28 00:00:00.0"]
    )).dt.tz_localize(tz)
    ends = pd.Series(pd.to_datetime(
        ["2025-11-25 14:45:03.000000001", "2026-01-01 00:00:00.25", "2024-03-01 12:00:00.0"]
    )).dt.tz_localize(tz)
    texts = _window_texts(starts, ends)
    assert texts[0] == "2025-11-25 14:02:10-14:45:03 UTC"
    assert texts[1] == "2025-12-31 23:59:59-2026-01-01 00:00:00 UTC"  # the end's date when it differs
    for start, end, text in zip(starts, ends, texts):  # the per-call strftime it replaces
        end_format = "%H:%M:%S" if start.date() == end.date() else "%Y-%m-%d %H:%M:%S"
        assert text == f"{start:%Y-%m-%d %H:%M:%S}-{end.strftime(end_format)} UTC"
