"""Golden flows: one ``tests/golden/<capture>.flows.csv`` per shared nDPI capture, compared exactly.

Each file holds the stable flow columns (``schema.FLOW_STABLE_COLUMNS``: flow ids, endpoints, times,
counters, VLAN, tunnel) plus what naming and classification decided (app_protocol, server_name,
name_source, service, kind, role). Evidence, organisation and confidence wording are left out so
that rewording them does not churn every file. After an intended change, regenerate with

    python3 -m pytest tests/test_golden.py --regen-golden

and review the diff like code (tests/golden/README.md). The analyses come from the session fixture
``ndpi_analyses`` (tests/conftest.py), shared with the accuracy tests.
"""

from __future__ import annotations

import csv
import difflib
import io
from pathlib import Path

import pandas as pd
import pytest

from inspector.schema import FLOW_DTYPES, FLOW_STABLE_COLUMNS, TIME

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
LABEL_COLUMNS = ("app_protocol", "server_name", "name_source", "service", "kind", "role")
GOLDEN_COLUMNS = FLOW_STABLE_COLUMNS + LABEL_COLUMNS


def _cell(value, dtype: str) -> str:
    if dtype == TIME:
        return pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def render(flows: pd.DataFrame) -> str:
    """The golden CSV text of one capture's flows: fixed columns, rows by flow_id, '\\n' endings."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(GOLDEN_COLUMNS)
    ordered = flows.sort_values("flow_id", kind="stable")
    columns = [ordered[c].tolist() for c in GOLDEN_COLUMNS]
    dtypes = [FLOW_DTYPES[c] for c in GOLDEN_COLUMNS]
    for row in zip(*columns):
        writer.writerow(_cell(v, t) for v, t in zip(row, dtypes))
    return out.getvalue()


def golden_path(capture: str) -> Path:
    return GOLDEN_DIR / f"{capture}.flows.csv"


@pytest.mark.shared
def test_golden_flows(ndpi_analyses, request):
    regen = request.config.getoption("--regen-golden")
    stale, missing = [], []
    for capture, flows in sorted(ndpi_analyses.items()):
        text = render(flows)
        path = golden_path(capture)
        if regen:
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
            continue
        if not path.exists():
            missing.append(capture)
            continue
        want = path.read_text()
        if want != text:
            lines = (want.splitlines(), text.splitlines(), str(path), "pipeline now")
            diff = difflib.unified_diff(*lines, n=0, lineterm="")
            stale.append("\n".join(list(diff)[:40]))
    if regen:
        known = {golden_path(c).name for c in ndpi_analyses}
        extra = {p.name for p in GOLDEN_DIR.glob("*.flows.csv")} - known
        assert not extra, f"golden files without a capture (delete them): {sorted(extra)}"
        pytest.skip(f"regenerated {len(ndpi_analyses)} golden files in {GOLDEN_DIR}")
    assert not missing, f"no golden file for {missing}: run pytest tests/test_golden.py --regen-golden"
    assert not stale, "golden flows differ (review, then --regen-golden if intended):\n" + "\n\n".join(stale)


@pytest.mark.shared
def test_every_golden_file_belongs_to_a_shared_capture(ndpi_dir):
    captures = {p.name for p in ndpi_dir.glob("*.pcap*")}
    names = {p.name.removesuffix(".flows.csv") for p in GOLDEN_DIR.glob("*.flows.csv")}
    assert names == captures


def test_render_is_exact_and_stable():
    flows = pd.DataFrame(
        {
            "flow_id": pd.Series([2, 1], dtype="int64"),
            "transport": pd.Series(["udp", "tcp"], dtype="string"),
            "client_ip": pd.Series(["10.0.0.2", "10.0.0.2"], dtype="string"),
            "client_port": pd.Series([53000, 50000], dtype="int64"),
            "server_ip": pd.Series(["192.168.1.1", "192.0.2.9"], dtype="string"),
            "server_port": pd.Series([53, 443], dtype="int64"),
            "first_seen": pd.to_datetime([1_700_000_000_000_001_000, 1_700_000_000_000_000_000], utc=True),
            "last_seen": pd.to_datetime([1_700_000_000_500_000_000, 1_700_000_001_000_000_000], utc=True),
            "client_to_server_packets": pd.Series([1, 3], dtype="int64"),
            "client_to_server_bytes": pd.Series([60, 300], dtype="int64"),
            "server_to_client_packets": pd.Series([1, 2], dtype="int64"),
            "server_to_client_bytes": pd.Series([120, 4000], dtype="int64"),
            "vlan_id": pd.Series([0, 7], dtype="int64"),
            "tunnel": pd.Series(["", "gtp"], dtype="string"),
            "app_protocol": pd.Series(["dns", "tls"], dtype="string"),
            "server_name": pd.Series(["zoom.us", "a,b.example"], dtype="string"),
            "name_source": pd.Series(["dns-query", "sni"], dtype="string"),
            "service": pd.Series(["", "zoom"], dtype="string"),
            "kind": pd.Series(["", "conferencing"], dtype="string"),
            "role": pd.Series(["", "signalling"], dtype="string"),
        }
    )
    assert render(flows).splitlines() == [
        ",".join(GOLDEN_COLUMNS),
        '1,tcp,10.0.0.2,50000,192.0.2.9,443,2023-11-14T22:13:20.000000Z,2023-11-14T22:13:21.000000Z,'
        '3,300,2,4000,7,gtp,tls,"a,b.example",sni,zoom,conferencing,signalling',
        "2,udp,10.0.0.2,53000,192.168.1.1,53,2023-11-14T22:13:20.000001Z,2023-11-14T22:13:20.500000Z,"
        "1,60,1,120,0,,dns,zoom.us,dns-query,,,",
    ]
