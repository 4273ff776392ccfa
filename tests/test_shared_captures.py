"""Every real capture in ../shared/captures/real/ndpi: read without error, packet counts equal an
independent reader's (dpkt), and nDPI's TCP/UDP endpoint pairs appear in our flows."""

from __future__ import annotations

import csv
import ipaddress
from collections import defaultdict

import dpkt
import pytest

import inspector
from tests.dpkt_frames import dpkt_frames
from inspector.pipeline import AnalyzeOptions


def dpkt_count(path) -> int:
    return sum(1 for _ in dpkt_frames(path))


# nDPI's expected output prints this IPv6 address with two "::" runs, which is not an address
# (RFC 4291 §2.2 allows one). The packets hold 2600:1901:0:7a0b:: (checked below with dpkt), so
# the test reads nDPI's text as that address.
NDPI_MISPRINTS = {"2600:1901::7a0b::": "2600:1901:0:7a0b::"}


def endpoint(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    host = host.strip("[]")
    host = NDPI_MISPRINTS.get(host, host)
    return str(ipaddress.ip_address(host)), int(port)


@pytest.fixture(scope="module")
def expected(ndpi_dir):
    by_file = defaultdict(list)
    with open(ndpi_dir / "expected" / "flows.tsv", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["l4"] in ("TCP", "UDP"):
                by_file[row["pcap"]].append(row)
    return by_file


def test_every_capture_reads_counts_and_covers_ndpi_pairs(ndpi_dir, expected):
    files = sorted(ndpi_dir.glob("*.pcap*"))
    assert len(files) >= 50
    total = matched = 0
    for path in files:
        result = inspector.analyze([path], AnalyzeOptions(inspect_payloads=False))
        entry = result.manifest["inputs"][0]
        assert not entry["truncated"], path.name
        assert entry["packets"] == dpkt_count(path), path.name
        d = entry["decode"]
        assert d["packets_read"] == d["packets_decoded"] + d["packets_skipped"], path.name
        have = set()
        for r in result.flows.itertuples():
            have.add((r.transport.upper(), frozenset([(r.client_ip, r.client_port), (r.server_ip, r.server_port)])))
        rows = expected.get(path.name, [])
        misses = []
        for row in rows:
            key = (row["l4"], frozenset([endpoint(row["endpoint_a"]), endpoint(row["endpoint_b"])]))
            if key in have:
                matched += 1
            else:
                misses.append(row)
        total += len(rows)
        # The issue asks for >= 98% per file; every pair is found today, so hold that line.
        assert not misses, (path.name, [(m["endpoint_a"], m["endpoint_b"]) for m in misses])
    assert total > 1000 and matched == total


def test_ndpi_misprint_is_the_address_in_the_packets(ndpi_dir):
    seen = set()
    with open(ndpi_dir / "pinterest.pcap", "rb") as fh:
        for _, buf in dpkt.pcap.Reader(fh):
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip6.IP6):
                seen.add(str(ipaddress.ip_address(ip.dst)))
    assert "2600:1901:0:7a0b::" in seen


def test_gtp_flow_in_zoom_capture(ndpi_dir):
    flows = inspector.analyze([ndpi_dir / "zoom.pcap"], AnalyzeOptions(inspect_payloads=False)).flows
    gtp = flows[flows.tunnel == "gtp"]
    assert len(gtp) >= 1
