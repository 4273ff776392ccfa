"""Issue 4: conferencing services and telemetry endpoints through the full pipeline against nDPI.

* Of the flows nDPI labels with a conferencing or calling application, the share that gets the
  same service from us (Skype_Teams/Skype_TeamsCall may be teams or skype; GoogleCall/GoogleMeet
  are google-meet). Every flow left out of the denominator and every miss is listed with its
  reason; the issue's 97% target is asserted.
* Every flow where we say ``conferencing`` and nDPI does not, with the evidence for our verdict.
* Every telemetry host of the captures is flagged telemetry with the right organisation through
  the pipeline; CDNs, fonts and login pages are not.

Analyses: the session fixture ``ndpi_analyses``; the join to nDPI: test_accuracy_naming.py.
"""

from __future__ import annotations

from collections import Counter

import pytest

from inspector.signatures import load_signatures
from tests.test_accuracy_naming import ndpi_pairs
from tests.test_classify import CONFERENCING_APPS, NDPI_DISAGREEMENTS, NOT_TELEMETRY_HOSTS, TELEMETRY_HOSTS


@pytest.fixture(scope="module")
def pairs(ndpi_dir, ndpi_analyses):
    return ndpi_pairs(ndpi_dir, ndpi_analyses)


@pytest.fixture(scope="module")
def sigs():
    return load_signatures()


# --- the denominator ---------------------------------------------------------------------------
# Left out, with the reason:
#  * nDPI's DNS.<App> rows (DNS.Zoom, DNS.Teams ...): the flow goes to the resolver; nDPI labels
#    the subject of the question. We name such flows by the question (name_source dns-query) but
#    the classifier deliberately does not make the resolver Zoom (lead's decision, issue 3).
#  * NDPI_DISAGREEMENTS (tests/test_classify.py): gate.hockeyapp.net is HockeyApp crash reporting
#    (Microsoft App Center telemetry; we say microsoft-appcenter, kind telemetry), and
#    api.microsoftstream.com / euno-1.api.microsoftstream.com are Microsoft Stream (recordings),
#    not Teams: nDPI's Skype_Teams host list is wider than the service.


def _conferencing_rows(pairs):
    rows, excluded = [], Counter()
    for p in pairs:
        if p.app not in CONFERENCING_APPS:
            continue
        if p.master == "DNS":
            excluded["dns-to-resolver"] += 1
        elif p.ndpi_host in NDPI_DISAGREEMENTS:
            excluded["ndpi-wrong"] += 1
        else:
            rows.append(p)
    return rows, excluded


# Misses today: (capture, nDPI flow number) -> why, and what would fix it. Counted as misses.
KNOWN_MISSES = {
    # WhatsApp chat (2015 client) over TCP 5222/443 to SoftLayer addresses WhatsApp no longer uses:
    # no SNI, no DNS, no published range. The client's first bytes are the FunXMPP stream header
    # "WA" 0x01 0x05 (57 41 01 05), which nDPI's whatsapp.c matches. Needs a payload detector in
    # inspector/dissect/detectors.py (not this test's owner's file).
    # LINE calls: UDP to 147.92.169.90:29070 and 125.209.252.210:20610. nDPI uses its LINE IP list
    # (AS38631); LINE publishes 147.92.128.0/17 only as its Messaging-API webhook source, which
    # does not say media servers live there, so line.toml has no range. Needs a LineCall detector.
    ("line.pcap", "1"): "line: media to LINE's AS, no published media range",
    ("line.pcap", "4"): "line: media to NAVER's AS, no published media range (we say generic rtp)",
    ("line.pcap", "5"): "line: media to LINE's AS, no published media range",
    # KakaoTalk voice: SRTCP to 1.201.1.174; the RTP flows beside it are generic RTP for nDPI too.
    ("KakaoTalk_talk.pcap", "6"): "kakaotalk: no published Kakao media range; generic srtcp",
    ("KakaoTalk_talk.pcap", "7"): "kakaotalk: no published Kakao media range; generic srtcp",
    # Snapchat call over QUIC without SNI to AWS: nDPI's snapchat heuristics; we see srtcp-like
    # datagrams (generic) and no name.
    ("snapchat_call.pcapng", "1"): "snapchat: no SNI, no range; needs a detector",
}
# Viber's flows (viber.pcap: TCP 4244/5242, UDP 7985/7987 to AWS, no name) are decided by nDPI's
# default Viber ports (signatures/viber.toml, low confidence); nDPI's own UDP payload check
# (viber.c) would be the stronger evidence and belongs in a detector.
# Floor measured today (and held); the issue's target is TARGET_RATE.
FLOOR_RATE = 0.95
TARGET_RATE = 0.97


def _score(pairs):
    rows, excluded = _conferencing_rows(pairs)
    ok = [p for p in rows if p.ours.service in CONFERENCING_APPS[p.app]]
    missed = {(p.pcap, p.ndpi_flow): (p.app, p.ours.service, p.ours.evidence) for p in rows if p not in ok}
    return rows, ok, missed, excluded


@pytest.mark.shared
def test_conferencing_services_agree_with_ndpi(pairs, capsys):
    rows, ok, missed, excluded = _score(pairs)
    per_app = Counter(p.app for p in rows)
    per_app_ok = Counter(p.app for p in ok)
    with capsys.disabled():
        print(f"\n[issue 4] same service as nDPI: {len(ok)}/{len(rows)} = {len(ok) / len(rows):.1%}"
              f" (left out: {dict(excluded)})")  # fmt: skip
        for app in sorted(per_app):
            print(f"  {app:18s} {per_app_ok[app]:3d}/{per_app[app]}")
    assert excluded == {"dns-to-resolver": 22, "ndpi-wrong": 4}
    # Every miss is known and explained, and every listed miss still is one.
    assert set(missed) - set(KNOWN_MISSES) == set(), {k: missed[k] for k in set(missed) - set(KNOWN_MISSES)}
    assert set(KNOWN_MISSES) <= set(missed), "a known miss is fixed: remove it from KNOWN_MISSES"
    assert len(rows) == 243 and len(ok) / len(rows) >= FLOOR_RATE


@pytest.mark.shared
def test_no_conferencing_flow_gets_another_named_service(pairs):
    """A wrong service is worse than none: a miss may be unknown or generic media, never another
    vendor (the documented nDPI disagreements aside)."""
    rows, _, missed, _ = _score(pairs)
    wrong = {k: v for k, v in missed.items() if v[1] not in ("", "webrtc")}
    assert wrong == {}


@pytest.mark.shared
def test_conferencing_agreement_reaches_the_issue_target(pairs):
    rows, ok, _, _ = _score(pairs)
    print(f"conferencing service agreement with nDPI: {len(ok)}/{len(rows)} = {len(ok) / len(rows):.1%}")
    assert len(ok) / len(rows) >= TARGET_RATE


@pytest.mark.shared
def test_signal_flows_before_the_realm_are_signal(pairs):
    """stun_signal.pcapng: the client asks Google's public STUN server and Signal's TURN server on
    443 (no REALM yet) from the same socket, tens of ms before the REALM signal.org shows up on
    3478; all 21 are Signal's (ICE candidate gathering, classify._stun_events)."""
    signal = [p for p in pairs if p.pcap == "stun_signal.pcapng" and p.app == "SignalVoip"]
    assert len(signal) == 21 and {p.ours.service for p in signal} == {"signal"}
    gathering = [p.ours for p in signal if p.ours.server_port == 19302]
    # Those whose own socket reached Signal's TURN only *after* them are attributed by gathering.
    assert sum("(ice-gathering)" in r.evidence for r in gathering) == 5


@pytest.mark.shared
def test_telegram_peer_checked_from_a_second_socket_is_telegram(pairs):
    """telegram_videocall.pcapng: one peer is checked from two local ports with the same ICE
    USERNAME; only one port also talked to Telegram's relays (classify._ice_username_links)."""
    peers = [p for p in pairs if p.pcap == "telegram_videocall.pcapng" and p.ours.client_port == 42405]
    assert len(peers) == 2
    assert {p.ours.service for p in peers} == {"telegram"}
    assert all("ice-username l/wc:SuU3" in p.ours.evidence for p in peers)


# --- we say conferencing, nDPI does not ------------------------------------------------------
# (capture, our flow_id) -> (our service, the deciding evidence item, nDPI's label or transport).
# Groups, with the reason our verdict stands:
#  * webrtc: generic real-time media (STUN/TURN/DTLS-SRTP/RTP/RTCP) whose operator nothing names.
#    nDPI says RTP/RTCP/DTLS/STUN: the same finding in its vocabulary (our "conferencing" kind is
#    the generic signature's; signatures/webrtc.toml). dtls.pcap 1-2 offer DTLS-SRTP (use_srtp,
#    RFC 5764 §4.1.1); plain DTLS without it is not media (classify._plain_dtls, anyconnect-vpn).
#    sip.pcap 6 is the RTCP beside the RTP of flow 5 (nDPI: Unknown).
#  * cidr: the server address is in the vendor's published range (Webex: Cisco's Webex ranges;
#    Zoom: Zoom's list; Telegram: Telegram's cidr.txt; GoToMeeting: GoTo's ranges). nDPI has no
#    IP list entry for these or labels the TLS alone. The ICMP flows are to the same relays
#    during the call.
#  * names: hangouts.google.com is Google's calling product (google-meet signature); WhatsApp's
#    media CDN hosts (*.cdn.whatsapp.net, *.fna.whatsapp.net) are WhatsApp's (role content), which
#    nDPI calls WhatsAppFiles, an app outside its conferencing set.
CONFERENCING_NOT_IN_NDPI = {
    ("KakaoTalk_talk.pcap", 12): ("webrtc", "payload:rtp rtp pt=108 ssrcs=1", "87/RTP"),
    ("KakaoTalk_talk.pcap", 13): ("webrtc", "payload:rtp rtp pt=108 ssrcs=1", "87/RTP"),
    ("dtls.pcap", 1): ("webrtc", "payload:dtls dtls version=1.0", "30/DTLS"),
    ("dtls.pcap", 2): ("webrtc", "payload:dtls dtls version=1.0", "GTP:30/DTLS"),
    ("false_positives.pcapng", 2): ("webrtc", "payload:rtp rtp pt=8 ssrcs=1", "87/RTP"),
    ("false_positives.pcapng", 3): ("webrtc", "payload:rtp rtp pt=102 ssrcs=1", "GTP:87/RTP"),
    ("false_positives.pcapng", 4): ("webrtc", "payload:rtp rtp pt=8 ssrcs=1", "87/RTP"),
    ("false_positives.pcapng", 5): ("webrtc", "payload:rtp rtp pt=118 ssrcs=1", "GTP:87/RTP"),
    ("quic_frags_ch_out_of_order_same_packet_craziness.pcapng", 104): (
        "whatsapp", "quic-sni:media.fmct2-1.fna.whatsapp.net", "188.242/QUIC.WhatsAppFiles"),
    ("rtcp_multiple_pkts_in_the_same_datagram.pcap", 1): ("webrtc", "payload:rtcp rtcp compound", "165/RTCP"),
    ("rtp.pcapng", 1): ("webrtc", "payload:rtp rtp pt=34 ssrcs=1", "87/RTP"),
    ("rtp.pcapng", 2): ("webrtc", "payload:rtp rtp pt=8 ssrcs=1", "87/RTP"),
    ("rtp.pcapng", 4): ("webrtc", "payload:rtp rtp pt=111 ssrcs=1", "87/RTP"),
    ("sip.pcap", 5): ("webrtc", "payload:rtp rtp pt=8 ssrcs=1", "87/RTP"),
    ("sip.pcap", 6): ("webrtc", "payload:rtcp rtcp compound", "0/Unknown"),
    ("sites.pcapng", 42): ("google-meet", "quic-sni:hangouts.google.com", "188.126/QUIC.Google"),
    ("stun_classic.pcap", 1): ("webrtc", "payload:stun stun classic", "78.87/STUN.RTP"),
    ("stun_dtls_unidirectional_client.pcap", 1): ("webrtc", "payload:stun stun", "30/DTLS"),
    ("stun_tcp_multiple_msgs_same_pkt.pcap", 1): ("webrtc", "payload:turn turn methods=allocate", "78/STUN"),
    ("telegram_videocall.pcapng", 31): ("telegram", "cidr:telegram", "icmp"),
    ("telegram_videocall.pcapng", 32): ("telegram", "cidr:telegram", "icmp"),
    ("telegram_videocall.pcapng", 33): ("telegram", "cidr:telegram", "icmp"),
    ("tls_invalid_reads.pcap", 2): ("gotomeeting", "cidr:gotomeeting", "91/TLS"),
    ("wa_voice.pcap", 7): ("whatsapp", "sni:media-mxp1-1.cdn.whatsapp.net", "91.242/TLS.WhatsAppFiles"),
    ("webex.pcap", 10): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 26): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 27): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 28): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 29): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 30): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 31): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 32): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 40): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 43): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 54): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 55): ("webex", "cidr:webex", "91/TLS"),
    ("webex.pcap", 57): ("webex", "cidr:webex", "91/TLS"),
    ("zoom.pcap", 17): ("zoom", "cidr:zoom", "icmp"),
}  # fmt: skip


@pytest.mark.shared
def test_every_conferencing_verdict_ndpi_does_not_share_is_listed(pairs, ndpi_analyses):
    ndpi_label = {(p.pcap, p.ours.flow_id): p for p in pairs}
    ours = {}
    for capture, flows in ndpi_analyses.items():
        for r in flows[flows.kind == "conferencing"].itertuples():
            p = ndpi_label.get((capture, r.flow_id))
            if p is not None and p.app in CONFERENCING_APPS:
                continue
            label = p.ndpi_proto if p is not None else r.transport
            ours[(capture, r.flow_id)] = (r.service, r.evidence.split(";")[0], label)
    assert ours == CONFERENCING_NOT_IN_NDPI


@pytest.mark.shared
def test_plain_dtls_is_not_call_media(ndpi_analyses):
    """Cisco AnyConnect's pre-standard DTLS (version 0x0100) carries a VPN, not a call."""
    for capture in ("anyconnect-vpn.pcap", "dtls_old_version.pcapng"):
        flows = ndpi_analyses[capture]
        dtls = flows[flows.app_protocol == "dtls"]
        assert len(dtls) == 1 and set(dtls.kind) == {""} and set(dtls.service) == {""}, capture


# --- telemetry ---------------------------------------------------------------------------------

# Telemetry hosts the captures only look up (DNS question), never connect to by that name: the
# DNS flow goes to the resolver and is not telemetry. teams.pcap then reaches the address the
# answer gave; that flow is named gate.hockeyapp.net by its SNI.
DNS_ONLY_TELEMETRY_HOSTS = {"dc.applicationinsights.microsoft.com", "app.adjust.com"}


def _named_flows(ndpi_analyses):
    """host -> [(capture, flows row)] for names a flow is *to* (every source but dns-query)."""
    out: dict[str, list] = {}
    for capture, flows in ndpi_analyses.items():
        for r in flows.itertuples():
            if r.server_name and r.name_source != "dns-query":
                out.setdefault(r.server_name, []).append((capture, r))
    return out


@pytest.mark.shared
def test_every_telemetry_host_is_telemetry_with_its_organisation(ndpi_analyses, sigs):
    named = _named_flows(ndpi_analyses)
    assert {h for h in TELEMETRY_HOSTS if h not in named} == DNS_ONLY_TELEMETRY_HOSTS
    wrong = {}
    for host, service in TELEMETRY_HOSTS.items():
        organisation = sigs.get(service).organisation
        for capture, r in named.get(host, ()):
            got = (r.service, r.kind, r.role, r.organisation)
            if got != (service, "telemetry", "telemetry", organisation):
                wrong[(capture, r.flow_id, host)] = got
    assert wrong == {}


@pytest.mark.shared
def test_cdns_fonts_and_login_pages_are_not_telemetry(ndpi_analyses):
    named = _named_flows(ndpi_analyses)
    flagged = {
        h: [r.service for _, r in named.get(h, ()) if r.kind == "telemetry"] for h in NOT_TELEMETRY_HOSTS
    }
    assert {h: s for h, s in flagged.items() if s} == {}
    # The list is about flows that exist: all but three names are reached by some flow.
    assert {h for h in NOT_TELEMETRY_HOSTS if h not in named} == {
        "captive.apple.com.edgekey.net", "1-courier.push.apple.com", "vcacrashplan01.hq.corp.viasat.com",
    }  # fmt: skip


@pytest.mark.shared
def test_every_telemetry_flow_is_a_listed_host_or_says_why(ndpi_analyses):
    """The reverse direction: nothing is telemetry by accident. A flow is telemetry because its
    name is a listed telemetry host, or a DNS-learned/address item of one (same organisation)."""
    stray = {}
    for capture, flows in ndpi_analyses.items():
        for r in flows[flows.kind == "telemetry"].itertuples():
            if r.server_name in TELEMETRY_HOSTS:
                continue
            stray[(capture, r.flow_id)] = (r.server_name, r.name_source, r.service, r.evidence.split(";")[0])
    assert stray == {}


# --- the mechanisms, with crafted facts (no shared captures needed) ----------------------------

S = 1_000_000_000
MS = 1_000_000
HOST = "192.168.12.169"


def _facts(server_ip, server_port, client_port, t_ns, detectors, attributes=(), transport="udp", **kw):
    from inspector.facts import FlowFacts

    return FlowFacts(transport, HOST, client_port, server_ip, server_port, detectors=detectors,
                     attributes=attributes, first_seen_ns=t_ns, last_seen_ns=t_ns + 2 * S, **kw)  # fmt: skip


def _stun(**kw):
    from inspector.facts import DetectorHit

    return (DetectorHit("stun", **kw),)


def _turn_signal():
    from inspector.facts import DetectorHit

    return (DetectorHit("turn", service="signal", detail="turn realm=signal.org"), DetectorHit("stun"))


def test_gathering_window_covers_stun_sent_just_before_the_realm(sigs):
    from inspector.classify import ICE_GATHERING_NS, classify_all

    google_stun = _facts("172.253.121.127", 19302, 47204, 0, _stun())
    signal_turn = _facts("35.158.183.167", 3478, 47204, 30 * MS, _turn_signal())
    too_early = _facts("172.253.121.127", 19302, 47204, 30 * MS - ICE_GATHERING_NS - 1, _stun())
    other_port = _facts("172.253.121.127", 19302, 47999, 0, _stun())
    v = classify_all([google_stun, signal_turn, too_early, other_port], sigs)
    assert [x.service for x in v] == ["signal", "signal", "webrtc", "webrtc"]
    assert v[0].evidence.startswith("p2p-stun:35.158.183.167 (ice-gathering)") and v[0].confidence == "medium"


def test_gathering_window_never_reaches_back_to_media(sigs):
    """Media needs a nominated pair, which comes after gathering (RFC 8445 §8.1.1)."""
    from inspector.classify import classify_all
    from inspector.facts import DetectorHit

    rtp_before = _facts("203.0.113.50", 61000, 47204, 0, (DetectorHit("rtp", packets=50),))
    signal_turn = _facts("35.158.183.167", 3478, 47204, 30 * MS, _turn_signal())
    assert classify_all([rtp_before, signal_turn], sigs)[0].service == "webrtc"


def test_ice_username_links_a_peer_checked_from_another_socket(sigs):
    from inspector.classify import P2P_WINDOW_NS, classify_all

    telegram_relay = _facts("91.108.17.2", 1400, 40906, 0, _stun())  # Telegram's range
    user = (("stun_username", "l/wc:SuU3"),)
    attributed = _facts("10.46.103.200", 42554, 40906, S, _stun(), user)  # same socket: p2p-stun
    second_socket = _facts("10.46.103.200", 42554, 42405, S - 40 * MS, _stun(), user)
    other_session = _facts("10.46.103.200", 42554, 42406, S, _stun(), (("stun_username", "x:y"),))
    much_later = _facts("10.46.103.200", 42554, 42407, 3 * S + P2P_WINDOW_NS + 1, _stun(), user)
    v = classify_all([telegram_relay, attributed, second_socket, other_session, much_later], sigs)
    assert [x.service for x in v] == ["telegram", "telegram", "telegram", "webrtc", "webrtc"]
    assert v[2].evidence.startswith("p2p-stun:10.46.103.200 (ice-username l/wc:SuU3)")


def test_ice_username_on_another_host_does_not_link(sigs):
    from dataclasses import replace

    from inspector.classify import classify_all

    user = (("stun_username", "l/wc:SuU3"),)
    telegram_relay = _facts("91.108.17.2", 1400, 40906, 0, _stun())
    attributed = _facts("10.46.103.200", 42554, 40906, S, _stun(), user)
    elsewhere = replace(_facts("10.46.103.200", 42554, 42405, S, _stun(), user), client_ip="192.168.12.170")
    assert classify_all([telegram_relay, attributed, elsewhere], sigs)[2].service == "webrtc"


def test_any_certificate_name_a_signature_claims_decides(sigs):
    from inspector.classify import classify

    names = (("cert_names", "www.webex.com.au,www.webex.ca,*.webex.com,webex.com"),)
    facts = _facts("23.44.253.243", 443, 49048, 0, (), names, transport="tcp",
                   server_name="www.webex.com.au", name_source="certificate")  # fmt: skip
    v = classify(facts, sigs)
    assert (v.service, v.confidence) == ("webex", "high") and v.evidence.startswith("certificate:webex.com")
    # Only certificate-sourced names widen this way: an SNI names exactly one host.
    sni = _facts("23.44.253.243", 443, 49048, 0, (), names, transport="tcp",
                 server_name="www.webex.com.au", name_source="sni")  # fmt: skip
    assert classify(sni, sigs).service == ""


def test_dtls_without_srtp_is_not_webrtc_but_with_it_is(sigs):
    from inspector.classify import classify
    from inspector.facts import DetectorHit

    dtls = (DetectorHit("dtls", detail="dtls version=pre-rfc"),)
    vpn = _facts("8.37.102.91", 443, 54107, 0, dtls, (("dtls_versions", "0x0100"),))
    call = _facts("192.168.13.57", 56515, 40739, 0, dtls, (("dtls_srtp", "0x0001"),))
    with_stun = _facts("192.168.13.57", 56515, 40739, 0, dtls + _stun())
    assert classify(vpn, sigs).service == ""
    assert classify(call, sigs).service == "webrtc"
    assert classify(with_stun, sigs).service == "webrtc"


def test_stun_realm_is_a_name_seen_in_the_flow(sigs):
    from inspector.classify import classify

    facts = _facts("35.158.183.167", 3478, 47204, 0, (), transport="udp", server_name="signal.org",
                   name_source="stun-realm")  # fmt: skip
    v = classify(facts, sigs)
    assert (v.service, v.confidence) == ("signal", "high") and v.evidence.startswith("stun-realm:signal.org")


def test_viber_ports_are_low_confidence_signalling(sigs):
    from inspector.classify import classify

    v = classify(_facts("52.0.253.101", 4244, 33208, 0, (), transport="tcp"), sigs)
    assert (v.service, v.confidence, v.role) == ("viber", "low", "signalling")
