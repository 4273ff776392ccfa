"""FlowLabeller: labelling each flow as it ends gives exactly classify_all over every flow."""

from __future__ import annotations

import pytest

from inspector.classify import classify_all, cross_flow_relevant
from inspector.facts import DetectorHit, FlowFacts
from inspector.labels import EMPTY, LABEL_COLUMNS, PENDING, FlowLabeller, LabelBook, label_row
from inspector.payloads import PayloadStage
from inspector.pipeline import AnalyzeOptions, process_capture
from inspector.signatures import load_signatures


@pytest.fixture(scope="module")
def signatures():
    return load_signatures(())


def test_book_codes_are_stable_and_remappable():
    book = LabelBook()
    empty = ("",) * len(LABEL_COLUMNS)
    row = ("tls", "zoom.us", "sni", "zoom", "Zoom", "conferencing", "video-conferencing", "signalling", "sni:zoom.us", "high")
    assert book.code(empty) == EMPTY
    assert book.code(row) == 1 == book.code(tuple(row))
    other = LabelBook()
    other.code(("x",) * len(LABEL_COLUMNS))
    other.code(row)
    assert book.codes_of(other.rows).tolist() == [EMPTY, 2, 1]
    assert book.columns()["server_name"].tolist() == ["", "zoom.us", "x"]


def test_only_stun_and_p2p_media_flows_wait_for_the_cross_flow_rules(signatures):
    tls = FlowFacts("tcp", "10.0.0.2", 50000, "170.114.9.9", 443, "tls", "zoom.us", "sni")
    stun = FlowFacts("udp", "10.0.0.2", 50001, "170.114.9.9", 3478, "stun", detectors=(DetectorHit("stun"),))
    username = FlowFacts("tcp", "10.0.0.2", 50002, "1.2.3.4", 443, attributes=(("stun_username", "a:b"),))
    labeller = FlowLabeller(signatures)
    assert labeller.label(1, tls) >= 0
    assert labeller.label(2, stun) == PENDING and labeller.label(3, username) == PENDING
    assert [cross_flow_relevant(f) for f in (tls, stun, username)] == [False, True, True]
    ids, codes = labeller.resolve()
    assert ids.tolist() == [2, 3] and (codes >= 0).all()
    assert labeller.deferred_count == 0 and list(labeller.take_deferred_pickled()) == []


# Captures where P2P media is attributed through another flow's STUN (the cross-flow rules: the
# socket rule in all four, the ICE USERNAME rule in telegram_videocall), and a STUN-heavy one.
CROSS_FLOW_CAPTURES = ["telegram_videocall.pcapng", "stun_signal.pcapng", "wa_voice.pcap", "whatsapp_login_call.pcap"]


@pytest.mark.parametrize("name", CROSS_FLOW_CAPTURES)
def test_labels_as_flows_end_equal_classify_all_over_every_flow(ndpi_dir, signatures, name):
    path = ndpi_dir / name
    if not path.exists():
        pytest.skip(f"{path} is not in this copy of ../shared")
    # Short idle timeout: flows end throughout the capture, in another order than their ids.
    result = process_capture(path, AnalyzeOptions(idle_timeout_s=5.0), None, PayloadStage())
    records = result.flows.records()
    facts = [result.facts[flow_id] for flow_id in records["flow_id"].tolist()]
    expected = [label_row(f, v) for f, v in zip(facts, classify_all(facts, signatures))]
    labeller = FlowLabeller(signatures)
    ending = sorted(zip(records["flow_id"].tolist(), facts), key=lambda item: item[1].last_seen_ns)
    codes = {flow_id: labeller.label(flow_id, f) for flow_id, f in ending}
    codes.update(zip(*(a.tolist() for a in labeller.resolve())))
    got = [labeller.book.rows[codes[flow_id]] for flow_id in records["flow_id"].tolist()]
    assert got == expected
    assert any("p2p-stun" in row[LABEL_COLUMNS.index("evidence")] for row in got)


def test_resolve_builds_facts_equal_to_facts_from_row_and_sorts_by_flow_id(signatures):
    from inspector.facts import facts_from_row, facts_to_row
    from inspector.labels import _deferred_facts_by_flow_id

    stun = FlowFacts(
        "udp", "10.0.0.2", 50001, "170.114.9.9", 3478, "stun", detectors=(DetectorHit("stun", "zoom", "realm", 3),),
        attributes=(("stun_username", "a:b"),), first_seen_ns=5, last_seen_ns=9,
    )  # fmt: skip
    media = FlowFacts("udp", "10.0.0.2", 50001, "10.9.9.9", 61000, "rtp", detectors=(DetectorHit("rtp", packets=9),))
    blocks = [[(7, facts_to_row(media)), (3, facts_to_row(stun))], [(5, facts_to_row(media))]]
    ids, facts = _deferred_facts_by_flow_id(iter(blocks))
    assert ids.tolist() == [3, 5, 7]
    assert facts == [facts_from_row(facts_to_row(f)) for f in (stun, media, media)]
    assert facts[1].detectors is facts[2].detectors and facts[0].client_ip is facts[1].client_ip
    labeller = FlowLabeller(signatures)
    for block in blocks:
        for flow_id, row in block:
            labeller.defer(flow_id, facts_from_row(row))
    ids, codes = labeller.resolve()
    expected = classify_all([stun, media, media], signatures)
    assert ids.tolist() == [3, 5, 7]
    assert [labeller.book.rows[c] for c in codes.tolist()] == [label_row(f, v) for f, v in zip(facts, expected)]
    assert _deferred_facts_by_flow_id(iter([]))[0].dtype.kind == "i"
