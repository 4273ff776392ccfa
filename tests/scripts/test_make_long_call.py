"""scripts/make_long_call.py: a capture of a call's media streams, which the analysis reads as one
WebRTC session of sixteen clean streams."""

import importlib.util
from pathlib import Path

import inspector
from inspector import AnalyzeOptions

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_long_call.py"


def _module():
    spec = importlib.util.spec_from_file_location("make_long_call", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_long_call_is_one_session_of_clean_streams(tmp_path):
    path = tmp_path / "call.pcap"
    _module().write_long_call(str(path), 8_000)
    first = path.read_bytes()
    _module().write_long_call(str(path), 8_000)
    assert path.read_bytes() == first  # the same arguments, the same bytes
    analysis = inspector.analyze([path], AnalyzeOptions(workers=1))
    assert analysis.manifest["inputs"][0]["packets"] == 8_000
    assert analysis.manifest["inputs"][0]["decode"]["packets_skipped"] == 0
    assert len(analysis.flows) == 8
    media = analysis.media
    assert len(media) == 16 and set(media["direction"]) == {"sent", "received"}
    assert (media["packets"] == 500).all() and (media["lost_packets"] == 0).all()
    assert (media["jitter_ms"] == 0).all()  # a packet every 20 ms, timestamps to match
    assert sorted(set(media["media_kind"])) == ["audio", "video"]
    assert len(analysis.sessions) == 1
