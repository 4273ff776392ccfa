"""pytest-benchmark suite for the hot stages. Not part of the default test run (testpaths is tests/);
run it with

    python3 -m pytest benchmarks --benchmark-enable [--benchmark-compare]

It uses the small benchmark capture (43,626 packets), built from ../shared/bench when missing, so a
regression in one stage is visible on its own line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inspector.capture.files import open_capture
from inspector.decode import decode_batch
from inspector.flows import FlowTable
from inspector.pipeline import AnalyzeOptions, process_capture
from inspector.slowpath import SlowDecoder

REPO = Path(__file__).resolve().parents[1]
SMALL = Path("/tmp/bench-small.pcap")


@pytest.fixture(scope="session")
def capture() -> Path:
    if not SMALL.exists():
        maker = REPO.parent / "shared" / "bench" / "make_bench_capture.py"
        if not maker.exists():
            pytest.skip(f"{maker} is absent: cannot build the benchmark capture")
        subprocess.run([sys.executable, str(maker), "--small", "--out", str(SMALL)], check=True, cwd=maker.parent)
    return SMALL


@pytest.fixture(scope="session")
def batches(capture):
    return list(open_capture(capture).batches())


def test_read(benchmark, capture):
    benchmark(lambda: sum(len(b) for b in open_capture(capture).batches()))


def test_decode(benchmark, batches):
    def run():
        slow = SlowDecoder()
        for b in batches:
            d, rows = decode_batch(b)
            slow.decode_rows(d, rows, b)
    benchmark(run)


def test_flow_table(benchmark, batches):
    decoded = []
    slow = SlowDecoder()
    for b in batches:
        d, rows = decode_batch(b)
        slow.decode_rows(d, rows, b)
        decoded.append(d)

    def run():
        table = FlowTable()
        for d in decoded:
            table.add(d)
        return table.finish()
    benchmark(run)


def test_flows_only(benchmark, capture):
    benchmark(lambda: process_capture(capture, AnalyzeOptions(inspect_payloads=False)))


def test_payload_stage(benchmark, capture):
    from inspector.payloads import PayloadStage

    benchmark(lambda: process_capture(capture, AnalyzeOptions(), None, PayloadStage()))


@pytest.fixture(scope="session")
def flow_batches(batches):
    """(decoded batch, its flows) pairs: the collectors' input."""
    table = FlowTable()
    slow = SlowDecoder()
    out = []
    for b in batches:
        d, rows = decode_batch(b)
        slow.decode_rows(d, rows, b)
        out.append((d, table.add(d)))
    return out


def test_rtp_collector(benchmark, flow_batches):
    """RTP headers folded into per-stream running state, and RTCP report blocks parsed."""
    from inspector.collect import RtpCollector

    def run():
        collector = RtpCollector()
        for d, bf in flow_batches:
            collector.add(d, bf)
        return collector.frame("bench"), collector.rtcp_frame("bench")
    benchmark(run)


def test_full_analysis(benchmark, capture):
    import inspector

    benchmark.pedantic(lambda: inspector.analyze([capture], AnalyzeOptions(workers=1)), rounds=3, iterations=1)


@pytest.fixture(scope="session")
def call_inputs(capture):
    """(args, kwargs) of ``sessions.build_calls`` for the small capture, kept from one analysis."""
    import inspector
    from inspector import sessions

    kept = {}
    build_calls = sessions.build_calls

    def keep(*args, **kwargs):
        kept["inputs"] = (args, kwargs)
        return build_calls(*args, **kwargs)

    sessions.build_calls = keep  # api._call_tables imports it at call time
    try:
        inspector.analyze([capture], AnalyzeOptions(workers=1))
    finally:
        sessions.build_calls = build_calls
    return kept["inputs"]


def test_call_stage(benchmark, call_inputs):
    from inspector.sessions import build_calls

    args, kwargs = call_inputs
    benchmark(lambda: build_calls(*args, **kwargs))


def test_call_summaries(benchmark, call_inputs):
    from inspector.report import call_summaries
    from inspector.sessions import build_calls

    args, kwargs = call_inputs
    tables = build_calls(*args, **kwargs)
    benchmark(lambda: call_summaries(tables, {}))
