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


def test_only_p2p_media_without_a_service_waits_for_the_cross_flow_rules(signatures):
    tls = FlowFacts("tcp", "10.0.0.2", 50000, "170.114.9.9", 443, "tls", "zoom.us", "sni")
    # STUN to a Zoom address: its own verdict is final, and it lends rule 1 its socket.
    stun = FlowFacts("udp", "10.0.0.2", 50001, "170.114.9.9", 3478, "stun", detectors=(DetectorHit("stun"),))
    # A USERNAME on a flow with no service lends nothing; RTP to a peer is a target.
    username = FlowFacts("tcp", "10.0.0.2", 50002, "1.2.3.4", 443, attributes=(("stun_username", "a:b"),))
    media = FlowFacts("udp", "10.0.0.2", 50001, "10.9.9.9", 61000, "rtp", detectors=(DetectorHit("rtp", packets=9),))
    labeller = FlowLabeller(signatures)
    assert labeller.label(1, tls) >= 0 and labeller.label(3, username) >= 0
    stun_code = labeller.label(2, stun)
    assert stun_code >= 0 and labeller.book.rows[stun_code][LABEL_COLUMNS.index("service")] == "zoom"
    assert labeller.label(4, media) == PENDING
    assert [cross_flow_relevant(f) for f in (tls, stun, username, media)] == [False, True, True, True]
    assert labeller.deferred_count == 2  # the target's facts and the STUN flow's source tuple
    ids, codes = labeller.resolve()
    assert ids.tolist() == [4]
    row = labeller.book.rows[codes[0]]
    assert row[LABEL_COLUMNS.index("service")] == "zoom"
    assert "p2p-stun:170.114.9.9" in row[LABEL_COLUMNS.index("evidence")]
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
    from inspector.classify import cross_flow_source
    from inspector.facts import facts_from_row, facts_to_row
    from inspector.labels import SOURCE, TARGET, _deferred_by_flow_id

    stun = FlowFacts(
        "udp", "10.0.0.2", 50001, "170.114.9.9", 3478, "stun", detectors=(DetectorHit("stun", "zoom", "realm", 3),),
        attributes=(("stun_username", "a:b"),), first_seen_ns=5, last_seen_ns=9,
    )  # fmt: skip
    media = FlowFacts(
        "udp", "10.0.0.2", 50001, "10.9.9.9", 61000, "rtp", detectors=(DetectorHit("rtp", packets=9),),
        first_seen_ns=20, last_seen_ns=30,
    )  # fmt: skip
    other = FlowFacts("udp", "10.0.0.3", 50009, "10.9.9.8", 61000, "rtp", detectors=(DetectorHit("rtp", packets=9),))
    source = cross_flow_source(stun, classify_all([stun], signatures)[0], signatures)
    assert source is not None and source[6] and source[7] == "a:b"
    blocks = [[(7, TARGET, facts_to_row(media)), (3, SOURCE, source)], [(5, TARGET, facts_to_row(other))]]
    ids, facts, sources = _deferred_by_flow_id(iter(blocks))
    assert ids.tolist() == [5, 7] and sources == [(3, source)]
    assert facts == [facts_from_row(facts_to_row(f)) for f in (other, media)]
    assert facts[0].detectors is facts[1].detectors  # equal values shared (_SharedFacts)
    labeller = FlowLabeller(signatures)
    # Ending out of id order, as flows do: the labels are classify_all's in flow-id order.
    codes = {flow_id: labeller.label(flow_id, f) for flow_id, f in ((7, media), (3, stun), (5, other))}
    assert codes[7] == codes[5] == PENDING and codes[3] >= 0
    ids, resolved = labeller.resolve()
    assert ids.tolist() == [5, 7]
    codes.update(zip(ids.tolist(), resolved.tolist()))
    expected = classify_all([stun, other, media], signatures)
    assert [labeller.book.rows[codes[i]] for i in (3, 5, 7)] == [
        label_row(f, v) for f, v in zip((stun, other, media), expected)
    ]
    assert expected[2].service == "zoom" and expected[1].service == "webrtc"
    assert _deferred_by_flow_id(iter([]))[0].dtype.kind == "i"


def test_a_target_attributed_by_the_socket_rule_lends_its_username_to_the_next(signatures):
    """Rule 2 reads targets rule 1 attributed: their facts wait with the other targets, and the
    labels equal classify_all's whatever order the flows end in."""
    stun = FlowFacts("udp", "10.0.0.2", 50001, "170.114.9.9", 3478, "stun", detectors=(DetectorHit("stun"),))
    hits = (DetectorHit("stun"), DetectorHit("rtp", packets=9))
    checked = (("stun_username", "peer:me"),)
    via_socket = FlowFacts(
        "udp", "10.0.0.2", 50001, "10.9.9.9", 61000, "rtp", detectors=hits, attributes=checked, first_seen_ns=20
    )
    via_username = FlowFacts(
        "udp", "10.0.0.2", 50002, "10.9.9.9", 61001, "rtp", detectors=hits, attributes=checked, first_seen_ns=25
    )
    flows = {1: stun, 2: via_socket, 3: via_username}
    verdicts = classify_all(list(flows.values()), signatures)
    expected = {flow_id: label_row(f, v) for (flow_id, f), v in zip(flows.items(), verdicts)}
    assert "ice-username" in expected[3][LABEL_COLUMNS.index("evidence")]
    labeller = FlowLabeller(signatures)
    codes = {flow_id: labeller.label(flow_id, flows[flow_id]) for flow_id in (3, 2, 1)}
    assert codes[2] == codes[3] == PENDING
    codes.update(zip(*(a.tolist() for a in labeller.resolve())))
    assert {flow_id: labeller.book.rows[code] for flow_id, code in codes.items()} == expected
