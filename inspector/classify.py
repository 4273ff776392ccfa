"""Flow facts x signatures -> a verdict: which service or organisation, what kind, and why.

Precedence (DESIGN.md §3), strongest first:

1. payload   a detector that names a service (``zoom-media``; a STUN REALM hit carrying
             ``service="google-meet"``; MS-TURN attributes -> ``teams``)           confidence high
2. name      a name seen in this flow: TLS SNI, QUIC SNI, HTTP Host, certificate   confidence high
3. dns       a name a DNS answer gave for the server address                      confidence medium
4. cidr      the server address is in a published range                          confidence medium
5. port      a port-only rule (never 53/80/443/STUN, the loader refuses those)    confidence low

The first level that names a service decides; the verdict's evidence lists the deciding item first,
then every other item that matched, strongest first, marking the ones that pointed elsewhere
(``cidr:teams (says teams)``). Generic media detectors (STUN, DTLS, RTP ...) say *what* a flow carries, not
*whose* it is: they set the role to media, and only when nothing else names a service does the flow
get the generic ``webrtc`` verdict. A flow nothing recognises gets ``EMPTY`` and is kept.

``classify_all`` adds one cross-flow rule, P2P attribution (protocol-facts.md §1.15; Michel et al.,
IMC '22, zoom-analysis ``zoom_flow_tracker.cc``, ``stun_expiration = 300``): a client (IP, port) that
talked STUN to service X's servers and, within the following 300 s, exchanges media with a peer from
the same (IP, port) is in an X call. Weakness: two WebRTC applications on one host never share a
local UDP port at the same time, but a NAT in front of the capture point could map two clients onto
one (IP, port) pair over time; the 300 s window bounds that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from inspector.facts import FlowFacts
from inspector.fastinit import frozen_init
from inspector.signatures import EndpointMatch, SignatureSet

STRONG_NAME_SOURCES: Final = frozenset({"sni", "quic-sni", "http-host", "certificate", "stun-realm"})
# Media detectors that mark a UDP flow as a candidate for P2P attribution.
P2P_MEDIA_DETECTORS: Final = frozenset({"stun", "turn-channel", "dtls", "rtp", "rtcp", "zoom-p2p"})
# Detectors showing that a client talked STUN/TURN to a server.
STUN_DETECTORS: Final = frozenset({"stun", "turn", "ms-turn"})
P2P_WINDOW_NS: Final = 300 * 1_000_000_000
# How long before a socket's STUN to a named server its other gathering requests may start.
ICE_GATHERING_NS: Final = 5 * 1_000_000_000
_MAX_DETAIL: Final = 200


@dataclass(frozen=True, slots=True, init=False)
class Verdict:
    """Who a flow's server is and why (the flows.csv columns of the same names, DESIGN.md §2).

    service       signature id (``zoom``, ``google-analytics`` ...), "" when unknown
    organisation  the operator (``Zoom Video Communications, Inc.``)
    kind          ``conferencing``, ``telemetry``, ``other`` or ""
    category      closed vocabulary of signatures/README.md (``video-conferencing``, ``analytics`` ...)
    role          ``signalling``, ``media``, ``relay``, ``telemetry``, ``web``, ``content`` ...
    evidence      "; "-separated ``source:detail`` items, the deciding one first
    confidence    ``high`` (payload or a name seen in the flow), ``medium`` (DNS name or address
                  range, or P2P attribution), ``low`` (port only), "" when unknown
    party         telemetry only: ``first`` (the vendor's own) or ``third``
    """

    service: str = ""
    organisation: str = ""
    kind: str = ""
    category: str = ""
    role: str = ""
    evidence: str = ""
    confidence: str = ""
    party: str = ""

    def __init__(
        self,
        service: str = "",
        organisation: str = "",
        kind: str = "",
        category: str = "",
        role: str = "",
        evidence: str = "",
        confidence: str = "",
        party: str = "",
    ) -> None:
        # Built per packet or per flow: assigned field by field so that compiled this is native code.
        self.service = service  # type: ignore[misc]
        self.organisation = organisation  # type: ignore[misc]
        self.kind = kind  # type: ignore[misc]
        self.category = category  # type: ignore[misc]
        self.role = role  # type: ignore[misc]
        self.evidence = evidence  # type: ignore[misc]
        self.confidence = confidence  # type: ignore[misc]
        self.party = party  # type: ignore[misc]


frozen_init(Verdict)


EMPTY: Final = Verdict()


@dataclass(frozen=True, slots=True)
class _Item:
    """One piece of evidence: its text, the service it points to ("" = none), its strength level."""

    label: str
    detail: str
    service: str
    level: int  # 0 payload, 1 name, 2 dns, 3 cidr, 4 port
    match: EndpointMatch | None = None
    role: str = ""
    claimants: tuple[str, ...] = ()

    def text(self, decided: str) -> str:
        points_elsewhere = self.service and decided and self.service != decided
        if decided in self.claimants or (self.match is not None and decided in self.match.shared_with):
            points_elsewhere = False  # a shared claim that includes the decided service agrees
        tail = f" (says {self.service})" if points_elsewhere else ""
        shared = ""
        if self.match is not None and self.match.shared_with:
            shared = f" (shared with {','.join(self.match.shared_with)})"
        return f"{self.label}:{self.detail}{shared}{tail}"


_CONFIDENCE: Final = {0: "high", 1: "high", 2: "medium", 3: "medium", 4: "low"}


def _clean(text: str) -> str:
    """Evidence comes from the wire (SNI, STUN REALM): keep it one line and free of separators."""
    if not text.isprintable():  # rare: only then is each character looked at
        text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text.replace(";", ",")[:_MAX_DETAIL]


def _payload_role(sigs: SignatureSet, service: str, detector: str) -> str:
    sig = sigs.get(service)
    if sig is not None:
        for rule in sig.payloads:
            if rule.detector == detector:
                return rule.role
    return "media"


def _payload_items(facts: FlowFacts, sigs: SignatureSet) -> tuple[list[_Item], str]:
    """Payload items (level 0) and the role generic media payloads imply ("" if there are none).

    A hit names a service when the detector itself attributed it (``DetectorHit.service``) or when
    the detector belongs to specific services (``zoom-media`` -> zoom); generic detectors (``stun``,
    ``rtp`` ... claimed by the generic signature) only say that the flow carries real-time media.
    """
    items: list[_Item] = []
    generic_role = ""
    for hit in facts.detectors:
        detail = hit.detector + (f" {_clean(hit.detail)}" if hit.detail else "")
        if hit.service in sigs and not sigs.is_generic(hit.service):
            role = _payload_role(sigs, hit.service, hit.detector)
            items.append(_Item("payload", detail, hit.service, 0, role=role))
            continue
        owners = sigs.services_for_detector(hit.detector)
        claimants = tuple(s for s in owners if not sigs.is_generic(s))
        if claimants:
            role = _payload_role(sigs, claimants[0], hit.detector)
            items.append(_Item("payload", detail, claimants[0], 0, role=role, claimants=claimants))
            continue
        role = _payload_role(sigs, owners[0], hit.detector) if owners else "media"
        items.append(_Item("payload", detail, "", 0, role=role))
        if owners and (not generic_role or role == "relay"):
            generic_role = role  # TURN says more (a relay) than STUN/RTP alone (media)
    return items, generic_role


# The name a DNS flow asked about (naming.py): what was looked up, not who the resolver is.
QUERY_NAME_SOURCES: Final = frozenset({"dns-query"})


def _plain_dtls(facts: FlowFacts) -> bool:
    """DTLS and nothing else, without the DTLS-SRTP offer: a VPN or IoT tunnel, not call media.

    WebRTC keys its media with DTLS-SRTP (RFC 8827 §6.5), whose ClientHello carries the use_srtp
    extension (RFC 5764 §4.1.1); Cisco AnyConnect's pre-standard DTLS 0x0100 (anyconnect-vpn.pcap,
    dtls_old_version.pcapng) and plain DTLS 1.2 services do not. Weakness: a flow whose ClientHello
    was not captured loses the generic verdict (STUN/RTP beside it still give it one).
    """
    if {h.detector for h in facts.detectors} != {"dtls"}:
        return False
    return not any(key == "dtls_srtp" for key, _ in facts.attributes)


def _match_items(facts: FlowFacts, sigs: SignatureSet) -> list[_Item]:
    """Name, DNS, address-range and port items for the flow's server.

    A ``dns-query`` server_name is skipped: a DNS flow goes to the resolver, and ``zoom.us`` asked
    of 8.8.8.8 does not make 8.8.8.8 Zoom (RFC 1034 §2.4: the resolver answers for any name).
    """
    items: list[_Item] = []
    name = "" if facts.name_source in QUERY_NAME_SOURCES else facts.server_name
    if name:
        level = 1 if facts.name_source in STRONG_NAME_SOURCES else 2
        label = facts.name_source if facts.name_source in STRONG_NAME_SOURCES else "dns"
        m = sigs.match_domain(name)
        if m is None and facts.name_source == "certificate":
            name, m = _other_certificate_name(facts, sigs, name)
        if m is not None:
            items.append(_Item(label, _clean(name), m.service, level, m))
    if facts.dns_name and facts.dns_name != name:
        m = sigs.match_domain(facts.dns_name)
        if m is not None:
            items.append(_Item("dns", _clean(facts.dns_name), m.service, 2, m))
    if facts.server_ip:
        m = sigs.match_ip(facts.server_ip, facts.transport, facts.server_port)
        if m is not None:
            items.append(_Item("cidr", m.service, m.service, 3, m))
    if facts.server_port:
        m = sigs.match_port(facts.transport, facts.server_port)
        if m is not None:
            items.append(_Item("port", f"{facts.transport}/{facts.server_port}", m.service, 4, m))
    return items


def _other_certificate_name(
    facts: FlowFacts, sigs: SignatureSet, first: str
) -> tuple[str, EndpointMatch | None]:
    """The first certificate name after ``first`` that a signature claims, else (first, None).

    A certificate vouches for every name it lists (RFC 6125 §6.4: each DNS-ID is a reference
    identity the server may present), so Cisco's certificate that lists ``www.webex.com.au`` first
    and ``webex.com`` later (webex.pcap) names Webex. A wildcard ``*.x`` is matched as ``x``.
    Weakness: shared-hosting certificates list unrelated customers; only names a signature claims
    count, and naming.py already prefers the first name for server_name.
    """
    raw = next((value for key, value in facts.attributes if key == "cert_names"), "")
    for candidate in raw.split(",")[:64]:
        candidate = candidate.strip().lower()
        if candidate.startswith("*."):
            candidate = candidate[2:]
        if not candidate or candidate == first:
            continue
        m = sigs.match_domain(candidate)
        if m is not None:
            return candidate, m
    return first, None


def classify(facts: FlowFacts, sigs: SignatureSet) -> Verdict:
    """The verdict for one flow, from its own facts only (see the module docstring)."""
    payload_items, generic_role = _payload_items(facts, sigs)
    if generic_role and _plain_dtls(facts):
        generic_role = ""
    match_items = _match_items(facts, sigs)
    items = payload_items + match_items
    decider = next((it for it in items if it.service), None)
    if decider is None:
        if not generic_role:
            return EMPTY
        return _generic_verdict(facts, sigs, items, generic_role)

    service = decider.service
    if decider.claimants and len(decider.claimants) > 1:
        # A detector several services share (MS-TURN: Teams and Skype): a weaker item may say which.
        service = next((it.service for it in match_items if it.service in decider.claimants), service)
    sig = sigs.get(service)
    assert sig is not None  # matches and claimants only name loaded signatures
    if decider.match is not None:
        m = decider.match
        kind, category, role, party = m.kind, m.category, m.role, m.party
        if generic_role and kind != "telemetry" and role not in ("media", "relay"):
            role = generic_role  # the flow carries STUN/RTP/DTLS whatever the name's usual role
    else:
        same = next((it.match for it in match_items if it.service == service and it.match), None)
        kind, category, party = sig.kind, sig.category, ""
        role = decider.role or "media"
        if same is not None and same.kind == "telemetry":
            kind, category, party = same.kind, same.category, same.party
    ordered = [decider] + [it for it in items if it is not decider]
    evidence = "; ".join(it.text(service) for it in ordered)
    return Verdict(
        service=service,
        organisation=sig.organisation,
        kind=kind,
        category=category,
        role=role,
        evidence=evidence,
        confidence=_CONFIDENCE[decider.level],
        party=party,
    )


def _generic_verdict(facts: FlowFacts, sigs: SignatureSet, items: list[_Item], role: str) -> Verdict:
    """Real-time media nobody names: the generic ``webrtc`` signature, if loaded."""
    generic = sigs.get(sigs.generic_id)
    if generic is None:
        return EMPTY
    return Verdict(
        service=generic.id,
        organisation=generic.organisation,
        kind=generic.kind,
        category=generic.category,
        role=role,
        evidence="; ".join(it.text("") for it in items),
        confidence="high",
        party="",
    )


@dataclass(frozen=True, slots=True, init=False)
class _StunEvent:
    first_seen_ns: int
    last_seen_ns: int
    service: str
    server_ip: str

    def __init__(self, first_seen_ns: int, last_seen_ns: int, service: str, server_ip: str) -> None:
        # Built per packet or per flow: assigned field by field so that compiled this is native code.
        self.first_seen_ns = first_seen_ns  # type: ignore[misc]
        self.last_seen_ns = last_seen_ns  # type: ignore[misc]
        self.service = service  # type: ignore[misc]
        self.server_ip = server_ip  # type: ignore[misc]


frozen_init(_StunEvent)


def _attribute(v: Verdict, sig, evidence: str) -> Verdict:
    return replace(
        v,
        service=sig.id,
        organisation=sig.organisation,
        kind=sig.kind,
        category=sig.category,
        role="relay" if v.role == "relay" else "media",
        evidence=evidence + (f"; {v.evidence}" if v.evidence else ""),
        confidence="medium",
        party="",
    )


def _verdict_key(f: FlowFacts) -> tuple:
    """Everything ``classify`` reads of a flow's facts (not the client side, not the times)."""
    cert_names = ""
    dtls_srtp = False
    for key, value in f.attributes:
        if key == "cert_names":
            cert_names = value
        elif key == "dtls_srtp":
            dtls_srtp = True
    return (
        f.transport, f.server_ip, f.server_port, f.app_protocol, f.server_name, f.name_source, f.dns_name,
        f.detectors, cert_names, dtls_srtp,
    )


class VerdictCache:
    """``classify`` once per distinct ``_verdict_key``: a client opens many connections to the
    same server under the same name (browsers up to six per host, telemetry beacons every minute,
    a call's reconnects), and each gets the same verdict. Holds at most ``max_entries`` verdicts
    (it starts afresh when full), so a days-long live capture does not grow it without bound."""

    def __init__(self, sigs: SignatureSet, max_entries: int = 65536) -> None:
        self.sigs = sigs
        self.max_entries = max_entries
        self._seen: dict[tuple, Verdict] = {}

    def __call__(self, f: FlowFacts) -> Verdict:
        key = _verdict_key(f)
        v = self._seen.get(key)
        if v is None:
            if len(self._seen) >= self.max_entries:
                self._seen.clear()
            v = self._seen[key] = classify(f, self.sigs)
        return v


def _classify_each(facts: Sequence[FlowFacts], sigs: SignatureSet) -> list[Verdict]:
    """``classify`` for every flow (``VerdictCache``)."""
    cache = VerdictCache(sigs)
    return [cache(f) for f in facts]


#: What a flow with a final verdict lends the cross-flow rules (``cross_flow_source``), as a plain
#: tuple (it is pickled between processes and spilled to disk): (client IP, client port, server
#: IP, first seen ns, last seen ns, service, STUN/TURN to the service's server (rule 1), STUN
#: USERNAME it lends rule 2 or "").
CrossFlowSource = tuple[str, int, str, int, int, str, bool, str]


def cross_flow_relevant(f: FlowFacts) -> bool:
    """Whether ``classify_all``'s cross-flow rules may read or change this flow's verdict, from
    its facts alone (before its verdict is known: the cheap test every ended flow takes).

    They read UDP flows with a STUN/TURN hit (``_stun_events``) and flows with a STUN USERNAME
    (``_ice_username_links``), and change only UDP flows with a P2P media hit
    (``_unattributed_media``). Any other flow's verdict is ``classify`` of its own facts, final
    when the flow ends. Of the relevant ones (a few per call), the verdict decides which the
    rules may change (``cross_flow_target``) and which lend them something (``cross_flow_source``).
    """
    if f.transport == "udp" and any(
        h.detector in STUN_DETECTORS or h.detector in P2P_MEDIA_DETECTORS for h in f.detectors
    ):
        return True
    return any(key == "stun_username" for key, _ in f.attributes)


def classify_all(facts: Sequence[FlowFacts], sigs: SignatureSet) -> list[Verdict]:
    """Verdicts for every flow, in order, with P2P media attributed through STUN (module docstring).

    Two cross-flow rules, applied in order to media flows that have no service of their own
    (``cross_flow_target``), from what the flows with a service lend them (``cross_flow_source``):

    1. Same local socket: STUN/TURN to service X's server from the flow's local (IP, port) before
       the flow began, up to ``P2P_WINDOW_NS`` before; for a flow that carries only STUN/TURN
       itself, also up to ``ICE_GATHERING_NS`` after it began.
    2. Same ICE session (``_ice_username_links``): the flow's STUN USERNAME equals that of a flow
       of the same host already attributed to X.

    No other flow's verdict changes, and a flow's own verdict decides whether it is a target, a
    source or neither: ``labels.FlowLabeller`` labels every flow but the targets as it ends.
    """
    verdicts = _classify_each(facts, sigs)
    targets: list[tuple[int, FlowFacts, Verdict]] = []
    sources: list[tuple[int, CrossFlowSource]] = []
    for i, (f, v) in enumerate(zip(facts, verdicts)):
        if cross_flow_target(f, v, sigs):
            targets.append((i, f, v))
        else:
            source = cross_flow_source(f, v, sigs)
            if source is not None:
                sources.append((i, source))
    for (i, _, _), v in zip(targets, attribute_across_flows(targets, sources, sigs)):
        verdicts[i] = v
    return verdicts


def cross_flow_target(f: FlowFacts, v: Verdict, sigs: SignatureSet) -> bool:
    """Whether the cross-flow rules may change this flow's verdict ``v`` (its own): UDP media
    with no service of its own (``_unattributed_media``)."""
    return f.transport == "udp" and _unattributed_media(f, v, sigs)


def _lends_service(v: Verdict, sigs: SignatureSet) -> bool:
    # A port-only guess is too weak to attribute other flows, and a generic verdict names no one.
    return bool(v.service) and v.kind == "conferencing" and v.confidence != "low" and not sigs.is_generic(v.service)


def cross_flow_source(f: FlowFacts, v: Verdict, sigs: SignatureSet) -> CrossFlowSource | None:
    """What flow ``f``, whose verdict ``v`` the rules never change (not a ``cross_flow_target``),
    lends them: its STUN/TURN exchange with a named conferencing service's server (rule 1,
    only UDP), its STUN USERNAME (rule 2); None when neither."""
    if not f.detectors and not f.attributes:
        return None
    if not _lends_service(v, sigs):
        return None
    stun_event = f.transport == "udp" and any(h.detector in STUN_DETECTORS for h in f.detectors)
    username = _stun_username(f)
    if not stun_event and not username:
        return None
    return (f.client_ip, f.client_port, f.server_ip, f.first_seen_ns, f.last_seen_ns, v.service, stun_event, username)


def attribute_across_flows(
    targets: Sequence[tuple[int, FlowFacts, Verdict]],
    sources: Sequence[tuple[int, CrossFlowSource]],
    sigs: SignatureSet,
) -> list[Verdict]:
    """The verdict of each target (order, facts, own verdict) after the two cross-flow rules, from
    the sources (order, ``cross_flow_source``); ``order`` places targets and sources in one
    sequence (flow ids, or positions in ``classify_all``), each list in that order."""
    events = _stun_events(sources)
    if not events:  # without an exchange for rule 1 neither rule runs: a USERNAME lent only over TCP links nothing
        return [v for _, _, v in targets]
    verdicts = []
    for _, f, v in targets:
        best = _socket_rule(f, events)
        if best is not None:
            sig = sigs.get(best.service)
            assert sig is not None
            detail = best.server_ip + (" (ice-gathering)" if best.first_seen_ns > f.first_seen_ns else "")
            v = _attribute(v, sig, f"p2p-stun:{detail}")
        verdicts.append(v)
    _ice_username_links(targets, verdicts, sources, sigs)
    return verdicts


def _socket_rule(f: FlowFacts, events: dict[tuple[str, int], list[_StunEvent]]) -> _StunEvent | None:
    """Rule 1 for one target: the latest STUN/TURN exchange from one of its sockets whose window
    holds the flow's start (the first of equally late ones). A target is never an exchange of
    its own: an exchange's flow has a service the rules do not change."""
    # Only STUN/TURN exchanges can belong to the same candidate gathering; media needs a
    # nominated pair, which comes after gathering (RFC 8445 §8.1.1).
    lead_ns = ICE_GATHERING_NS if _gathering_only(f) else 0
    best: _StunEvent | None = None
    for key in ((f.client_ip, f.client_port), (f.server_ip, f.server_port)):
        for ev in events.get(key, ()):
            if ev.first_seen_ns - lead_ns <= f.first_seen_ns <= ev.last_seen_ns + P2P_WINDOW_NS:
                if best is None or ev.first_seen_ns > best.first_seen_ns:
                    best = ev
    return best


def _stun_events(sources: Sequence[tuple[int, CrossFlowSource]]) -> dict[tuple[str, int], list[_StunEvent]]:
    """Local (IP, port) -> STUN/TURN exchanges with a named conferencing service's server.

    The window also reaches ``ICE_GATHERING_NS`` *before* the exchange: an ICE agent gathers its
    server-reflexive and relayed candidates from one host candidate's socket at the same time
    (RFC 8445 §5.1.1.2, requests paced every Ta = 50 ms, §14.2), so Signal's client asks Google's
    public STUN server and Signal's TURN server (REALM ``signal.org``) from one port within tens of
    milliseconds (stun_signal.pcapng), and whichever is first is the same application's.
    Weakness: another application that reused the same local port within those seconds would be
    attributed too; ephemeral ports are rarely reused that fast (RFC 6056 §3.2 randomises them).
    """
    events: dict[tuple[str, int], list[_StunEvent]] = {}
    for _, source in sources:
        client_ip, client_port, server_ip, first_seen_ns, last_seen_ns, service, stun_event, _ = source
        if stun_event:
            events.setdefault((client_ip, client_port), []).append(
                _StunEvent(first_seen_ns, last_seen_ns, service, server_ip)
            )
    return events


def _gathering_only(f: FlowFacts) -> bool:
    """The flow carries only STUN/TURN (candidate gathering or connectivity checks), no media."""
    return bool(f.detectors) and all(h.detector in STUN_DETECTORS for h in f.detectors)


def _stun_username(f: FlowFacts) -> str:
    return next((value for key, value in f.attributes if key == "stun_username"), "")


def _ice_username_links(
    targets: Sequence[tuple[int, FlowFacts, Verdict]],
    verdicts: list[Verdict],
    sources: Sequence[tuple[int, CrossFlowSource]],
    sigs: SignatureSet,
) -> None:
    """Media flows sharing an attributed flow's STUN USERNAME on the same host inherit its service.

    ICE connectivity checks carry USERNAME ``remote-ufrag:local-ufrag`` (RFC 8445 §7.2.2), with
    fragments of at least 24 random bits (§5.3), and the agent checks every remote candidate from
    every local one (§6.1.2.2): the same USERNAME from another local port is the same call. TURN
    REST credentials (``expiry:user``) are issued per user and call the same way. In
    telegram_videocall.pcapng one peer is checked from two local ports; only one of them also
    talked to Telegram's relays. Weakness: a USERNAME is chosen by the endpoints, so a client
    could reuse one on purpose; the link is only as strong as the flow it comes from (medium).

    The attributed flows are the sources and the targets rule 1 attributed (``verdicts``, one
    per target), taken in their one order: the first flow of a (host, USERNAME) names the service.
    """
    lenders: list[tuple[int, CrossFlowSource]] = [(order, s) for order, s in sources if s[7]]
    for (order, f, _), v in zip(targets, verdicts):
        username = _stun_username(f)
        if username and _lends_service(v, sigs):
            lent: CrossFlowSource = (
                f.client_ip, f.client_port, f.server_ip, f.first_seen_ns, f.last_seen_ns, v.service, False, username
            )
            lenders.append((order, lent))
    if not lenders:
        return
    lenders.sort()  # orders are unique: only they are compared
    linked: dict[tuple[str, str], tuple[int, int, str, str]] = {}
    for _, (client_ip, _, server_ip, first_seen_ns, last_seen_ns, service, _, username) in lenders:
        key = (client_ip, username)
        seen = (first_seen_ns, last_seen_ns, service, server_ip)
        first, last, service, server = linked.get(key, seen)
        linked[key] = (min(first, first_seen_ns), max(last, last_seen_ns), service, server)
    for k, (_, f, _) in enumerate(targets):
        v = verdicts[k]
        if not _unattributed_media(f, v, sigs):
            continue
        username = _stun_username(f)
        hit = linked.get((f.client_ip, username)) if username else None
        if hit is None:
            continue
        first, last, service, server = hit
        if not first - ICE_GATHERING_NS <= f.first_seen_ns <= last + P2P_WINDOW_NS:
            continue
        sig = sigs.get(service)
        assert sig is not None
        verdicts[k] = _attribute(v, sig, f"p2p-stun:{server} (ice-username {_clean(username)[:64]})")


def _unattributed_media(f: FlowFacts, v: Verdict, sigs: SignatureSet) -> bool:
    """Media with no service of its own: unknown, generic ``webrtc``, or a port-only guess (a peer's
    random port can hit any port rule; STUN to a named server is the stronger evidence)."""
    if not any(h.detector in P2P_MEDIA_DETECTORS for h in f.detectors):
        return False
    return not v.service or sigs.is_generic(v.service) or v.confidence == "low"


__all__ = [
    "EMPTY",
    "CrossFlowSource",
    "Verdict",
    "VerdictCache",
    "attribute_across_flows",
    "classify",
    "classify_all",
    "cross_flow_relevant",
    "cross_flow_source",
    "cross_flow_target",
]
