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


@pytest.fixture(scope="session")
def gzip_capture(capture, tmp_path_factory) -> Path:
    import gzip

    path = tmp_path_factory.mktemp("gz") / "bench-small.pcap.gz"
    path.write_bytes(gzip.compress(capture.read_bytes(), compresslevel=1))
    return path


def test_read_gzip(benchmark, gzip_capture):
    """Inflating (ISA-L's where the isal package is installed) and hashing the compressed bytes."""
    benchmark(lambda: sum(len(b) for b in open_capture(gzip_capture).batches()))


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
def split_captures(capture, tmp_path_factory) -> list[Path]:
    """The small capture cut into four pcap files of consecutive records (the rotated files of
    one capture), with a 24-byte global header each."""
    data = capture.read_bytes()
    little = data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
    starts, at = [], 24
    while at + 16 <= len(data):
        starts.append(at)
        at += 16 + int.from_bytes(data[at + 8 : at + 12], "little" if little else "big")
    starts.append(min(at, len(data)))
    folder = tmp_path_factory.mktemp("split")
    per = -(-(len(starts) - 1) // 4)
    paths = []
    for k in range(4):
        lo, hi = starts[min(k * per, len(starts) - 1)], starts[min((k + 1) * per, len(starts) - 1)]
        paths.append(folder / f"part-{k}.pcap")
        paths[-1].write_bytes(data[:24] + data[lo:hi])
    return paths


@pytest.mark.parametrize("workers", [1, 2])
def test_several_captures(benchmark, split_captures, workers):
    """Several captures in one run: one process, or two each reading whole captures in turn
    (``apart.py``)."""
    import inspector

    benchmark.pedantic(lambda: inspector.analyze(split_captures, AnalyzeOptions(workers=workers)), rounds=3, iterations=1)


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


# Records what the dissect stage hands each per-flow dissector, by wrapping the classes' __init__
# and feed. Run on the pure-Python modules (INSPECTOR_PURE=1, in a subprocess): a class compiled
# with mypyc (inspector.native) cannot be wrapped. The replay below times whichever build is in use.
_RECORD = """
import pickle, sys
from inspector import naming
from inspector.dissect import detectors
from inspector.payloads import PayloadStage
from inspector.pipeline import AnalyzeOptions, process_capture

kept = {"namer": [], "media": []}

def record(cls, kind):
    init, feed = cls.__init__, cls.feed

    def recording_init(self, *args):
        init(self, *args)
        self._bench_inputs = (args, [])
        kept[kind].append(self._bench_inputs)

    def recording_feed(self, *args):
        self._bench_inputs[1].append(args)
        return feed(self, *args)

    cls.__init__, cls.feed = recording_init, recording_feed

record(naming.FlowNamer, "namer")
record(detectors.MediaFlowState, "media")
process_capture(sys.argv[1], AnalyzeOptions(), None, PayloadStage())
with open(sys.argv[2], "wb") as fh:
    pickle.dump(kept, fh)
"""


@pytest.fixture(scope="session")
def dissector_inputs(capture, tmp_path_factory):
    """What the dissect stage handed each per-flow dissector on the small capture, kept from one
    run: [(constructor args, [feed args ...])] for the namers and for the media states. Replaying
    them times the dissectors alone, without reading, decoding or the packet selection."""
    import os
    import pickle

    out = tmp_path_factory.mktemp("dissector-inputs") / "kept.pickle"
    env = dict(os.environ, INSPECTOR_PURE="1")
    subprocess.run([sys.executable, "-c", _RECORD, str(capture), str(out)], check=True, cwd=REPO, env=env)
    with open(out, "rb") as fh:
        return pickle.load(fh)


def test_namers(benchmark, dissector_inputs):
    """FlowNamer over every flow's recorded namer packets (TLS, QUIC, DNS, HTTP, DTLS), as the
    dissect loop drives it (``done`` after every packet, ``result`` at the end)."""
    from inspector.naming import FlowNamer

    def run():
        for args, packets in dissector_inputs["namer"]:
            namer = FlowNamer(*args)
            for packet in packets:
                namer.feed(*packet)
                namer.dns_messages.clear()
                _ = namer.done
            namer.result()
    benchmark(run)


def test_media_detectors(benchmark, dissector_inputs):
    """MediaFlowState over every flow's recorded detector packets, hits and attributes read."""
    from inspector.dissect.detectors import MediaFlowState

    def run():
        for args, packets in dissector_inputs["media"]:
            state = MediaFlowState(*args)
            for packet in packets:
                state.feed(*packet)
                _ = state.done
            state.hits()
            state.attributes()
    benchmark(run)


@pytest.fixture(scope="session")
def ended_facts(capture):
    """(flow id, facts) of the small capture's flows in the order they ended (a short idle timeout
    ends them throughout the capture, as in a long one)."""
    from inspector.payloads import PayloadStage

    result = process_capture(capture, AnalyzeOptions(idle_timeout_s=5.0), None, PayloadStage())
    return sorted(result.facts.items(), key=lambda item: item[1].last_seen_ns)


def test_labeller(benchmark, ended_facts):
    """Every flow labelled as it ends, then the cross-flow targets resolved (``labels.py``)."""
    from inspector.api import _signature_set
    from inspector.labels import FlowLabeller

    signatures = _signature_set(AnalyzeOptions())

    def run():
        labeller = FlowLabeller(signatures)
        for flow_id, facts in ended_facts:
            labeller.label(flow_id, facts)
        return labeller.resolve()

    benchmark(run)
