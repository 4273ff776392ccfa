"""What the dissectors learned about one flow: the boundary between dissect/naming and classify.

The pipeline fills one ``FlowFacts`` per flow from the flow table, the naming stage and the payload
detectors, and hands it to ``inspector.classify``. Every field is something seen in the capture,
never a conclusion; conclusions are ``classify.Verdict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inspector.fastinit import frozen_init


@dataclass(frozen=True, slots=True, init=False)
class DetectorHit:
    """A payload detector recognised this flow's bytes.

    detector  registered detector name (``stun``, ``rtp``, ``zoom-media``, ``dtls`` ...)
    service   service id the detector itself can attribute (``zoom`` from Zoom's outer header,
              ``teams`` from MS-TURN attributes, ``google-meet`` from a STUN REALM), or ""
    detail    short human-readable evidence (``stun realm=google.com``), goes into ``evidence``
    packets   how many packets of the flow matched (RTP is only trusted over several)
    """

    detector: str
    service: str = ""
    detail: str = ""
    packets: int = 1

    def __init__(self, detector: str, service: str = "", detail: str = "", packets: int = 1) -> None:
        # Each field assigned here, so that compiled this is native code (fastinit.frozen_init).
        self.detector = detector  # type: ignore[misc]
        self.service = service  # type: ignore[misc]
        self.detail = detail  # type: ignore[misc]
        self.packets = packets  # type: ignore[misc]

    # The two methods ``dataclass`` would make (a class that defines them keeps its own), written
    # here so that compiled they are native code: the classifier's cache keys every ended flow
    # by a tuple holding its hits (``classify._verdict_key``), and the generated methods were
    # interpreted calls, ~47 k a run on the benchmark capture (~15 ms).
    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, DetectorHit)
        return (
            self.detector == other.detector
            and self.service == other.service
            and self.detail == other.detail
            and self.packets == other.packets
        )

    def __hash__(self) -> int:
        return hash((self.detector, self.service, self.detail, self.packets))


frozen_init(DetectorHit)


@dataclass(frozen=True, slots=True, init=False)
class FlowFacts:
    """Facts about one bidirectional flow, as the classifier reads them.

    transport     ``tcp``, ``udp``, ``icmp``, ``icmpv6`` or another lower-case IP protocol name
    client_ip     textual address of the side that started the flow
    client_port   0 for protocols without ports
    server_ip, server_port
    app_protocol  ``dns``, ``tls``, ``quic``, ``http``, ``stun``, ``turn``, ``dtls``, ``rtp``,
                  ``rtcp``, ``zoom-media`` ... or "" when no dissector recognised the payload
    server_name   lower-case hostname without trailing dot, or ""
    name_source   ``sni``, ``quic-sni``, ``http-host``, ``certificate``, ``stun-realm``, ``dns``,
                  ``dns-query`` (a DNS flow: the name looked up, not the resolver's) or ""
    dns_name      the name a DNS answer seen before the flow gave for server_ip ("" if none),
                  kept even when a stronger source named the flow
    detectors     payload detector hits, strongest first
    attributes    other facts as (key, value) pairs: ``alpn``, ``tls_version``, ``ech``,
                  ``stun_software``, ``stun_realm``, ``stun_username``, ``dtls_srtp`` ...
    first_seen_ns, last_seen_ns   flow window, ns since the epoch
    """

    transport: str
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    app_protocol: str = ""
    server_name: str = ""
    name_source: str = ""
    dns_name: str = ""
    detectors: tuple[DetectorHit, ...] = ()
    attributes: tuple[tuple[str, str], ...] = field(default=())
    first_seen_ns: int = 0
    last_seen_ns: int = 0

    def __init__(
        self,
        transport: str,
        client_ip: str,
        client_port: int,
        server_ip: str,
        server_port: int,
        app_protocol: str = "",
        server_name: str = "",
        name_source: str = "",
        dns_name: str = "",
        detectors: tuple[DetectorHit, ...] = (),
        attributes: tuple[tuple[str, str], ...] = (),
        first_seen_ns: int = 0,
        last_seen_ns: int = 0,
    ) -> None:
        # One per flow: assigned field by field so that compiled this is native code.
        self.transport = transport  # type: ignore[misc]
        self.client_ip = client_ip  # type: ignore[misc]
        self.client_port = client_port  # type: ignore[misc]
        self.server_ip = server_ip  # type: ignore[misc]
        self.server_port = server_port  # type: ignore[misc]
        self.app_protocol = app_protocol  # type: ignore[misc]
        self.server_name = server_name  # type: ignore[misc]
        self.name_source = name_source  # type: ignore[misc]
        self.dns_name = dns_name  # type: ignore[misc]
        self.detectors = detectors  # type: ignore[misc]
        self.attributes = attributes  # type: ignore[misc]
        self.first_seen_ns = first_seen_ns  # type: ignore[misc]
        self.last_seen_ns = last_seen_ns  # type: ignore[misc]


frozen_init(FlowFacts)


def facts_to_row(f: FlowFacts) -> tuple:
    """FlowFacts as plain tuples of str and int: pickling frozen dataclasses goes through
    ``__reduce__`` per object (it cost a parallel worker ~0.7 s for the benchmark's 35 k flows);
    tuples are pickled in C. ``facts_from_row`` is the inverse."""
    hits = tuple((h.detector, h.service, h.detail, h.packets) for h in f.detectors)
    return (
        f.transport, f.client_ip, f.client_port, f.server_ip, f.server_port, f.app_protocol,
        f.server_name, f.name_source, f.dns_name, hits, f.attributes, f.first_seen_ns, f.last_seen_ns,
    )  # fmt: skip


def _as_is(value):
    return value


def _hits_of(raw: tuple) -> tuple[DetectorHit, ...]:
    return tuple(DetectorHit(*h) for h in raw)


def facts_from_row(row: tuple, value=_as_is, hits_of=_hits_of) -> FlowFacts:
    """The inverse of ``facts_to_row``. ``value`` maps each field but the two timestamps (e.g.
    to one shared object per distinct value, ``labels._SharedFacts``), ``hits_of`` makes the
    detector hits of their plain tuples."""
    return FlowFacts(
        value(row[0]), value(row[1]), value(row[2]), value(row[3]), value(row[4]), value(row[5]), value(row[6]),
        value(row[7]), value(row[8]), hits_of(row[9]), value(row[10]), row[11], row[12],
    )  # fmt: skip
