"""Who a server is: names from the flow itself (SNI, QUIC SNI, HTTP Host, certificate) and from DNS.

Two pieces:

``FlowNamer``  one per flow; the pipeline feeds it the flow's first payload packets and reads a
               ``FlowNaming``. It runs the DNS, TLS, HTTP, DTLS and (through a lazy hook) QUIC
               dissectors, reassembling just enough TCP stream, and never raises.
``NameMap``    IP -> name learned from DNS answers, with time: a flow is named by the answer
               seen at or before its start, never by one seen later.

Precedence (issue 3): SNI / QUIC SNI > HTTP Host > certificate > STUN REALM > DNS. A name that is not a valid
hostname (``normalise_hostname`` returns None) is kept in ``raw_names`` for the evidence but never
used for matching.

A DNS flow (port 53) is named by the first question it carries, with ``name_source`` ``dns-query``:
that tells the investigator what was looked up. The flow goes to the resolver, so that name is
*not* the destination's identity; the classifier ignores it (classify.py).
"""

from __future__ import annotations

import collections
import functools
import socket
from dataclasses import dataclass
from typing import Any, Final

from inspector.dissect import ErrorCounts, x509names
from inspector.dissect import dns as dns_dissect
from inspector.dissect import dtls as dtls_dissect
from inspector.dissect import http as http_dissect
from inspector.dissect import stun as stun_dissect
from inspector.dissect import tls as tls_dissect
from inspector.dissect.dns import DnsMessage
from inspector.fastinit import frozen_init, positional_constructor

# --- host names -----------------------------------------------------------------------------

MAX_HOSTNAME_LENGTH: Final = 253
MAX_LABEL_LENGTH: Final = 63
_LABEL_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


@functools.lru_cache(maxsize=4096)
def normalise_hostname(raw: str) -> str | None:
    """Lower-cased name without its trailing dot, or None when it is not a usable hostname.

    Rules: RFC 1123 §2.1 labels (letters, digits, hyphen; not starting or ending with a hyphen;
    1-63 chars), ``_`` allowed as DNS allows it in practice (``_dmarc``, SRV owners; RFC 2181 §11),
    at most 253 characters, at least one label. A name whose last label is all digits is an
    address literal, not a hostname (RFC 3696 §2: top-level domains are not all-numeric).
    Weakness: internationalised names are accepted only in their ``xn--`` A-label form.
    Results are cached (a capture names the same few hundred hosts in thousands of flows).
    """
    if not raw:
        return None
    name = raw[:-1] if raw.endswith(".") else raw
    if not name or len(name) > MAX_HOSTNAME_LENGTH or not name.isascii():
        return None
    name = name.lower()
    labels = name.split(".")
    for label in labels:
        if not label or len(label) > MAX_LABEL_LENGTH:
            return None
        if label[0] == "-" or label[-1] == "-":
            return None
        if not _LABEL_CHARS.issuperset(label):
            return None
    if labels[-1].isdigit():
        return None
    return name


# --- DNS: IP -> name with time --------------------------------------------------------------


@dataclass(frozen=True, slots=True, init=False)
class DnsName:
    """A DNS-learned name for an address.

    name            the name the client asked for (the question), normalised
    chain           CNAME targets followed from the question to the address record, in order
                    (``()`` when the question itself had the address)
    answered_at_ns  capture time of the answer, ns since the epoch
    """

    name: str
    chain: tuple[str, ...]
    answered_at_ns: int

    def __init__(self, name: str, chain: tuple[str, ...], answered_at_ns: int) -> None:
        # Built per packet or per flow: assigned field by field so that compiled this is native code.
        self.name = name  # type: ignore[misc]
        self.chain = chain  # type: ignore[misc]
        self.answered_at_ns = answered_at_ns  # type: ignore[misc]


frozen_init(DnsName)


@functools.lru_cache(maxsize=16384)
def _address_key(ip: str) -> str | None:
    """Canonical text of an address (RFC 5952 for IPv6), the form flows.csv uses; None if bad.
    Cached: a capture's flows go to, and its DNS answers name, the same addresses again."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, ip))
    except (OSError, ValueError):
        return None


class NameMap:
    """IP -> DNS names over time, from DNS responses seen in the capture.

    ``lookup(ip, at_ns)`` returns the latest answer seen at or before ``at_ns`` that mapped ``ip``;
    an answer seen after a flow began does not name it. A/AAAA records and HTTPS/SVCB
    ipv4hint/ipv6hint (RFC 9460 §7.3) map addresses; the reported name is the question, with the
    CNAME chain kept (protocol-facts.md §3.8).

    Memory is bounded: at most ``max_addresses`` addresses (the address updated longest ago is
    dropped first) and ``max_names_per_address`` entries each (the oldest dropped first). A repeat
    of the address's latest name is not stored again, so the earliest time of a run is kept and
    lookups inside the run still find it.
    Weakness: TTLs are not enforced (a capture's flows often outlive short TTLs while the
    address stays the same); CDN addresses shared by many names get whichever was asked last.
    """

    def __init__(self, max_addresses: int = 200_000, max_names_per_address: int = 8) -> None:
        self.max_addresses = max_addresses
        self.max_names_per_address = max_names_per_address
        self._by_address: dict[str, list[DnsName]] = {}

    def __len__(self) -> int:
        return len(self._by_address)

    def add(self, message: DnsMessage, ts_ns: int) -> None:
        """Learns the address records of a DNS response seen at ``ts_ns``; queries are ignored."""
        if not message.is_response:
            return
        cname_targets: dict[str, str] = {}
        for record in message.answers:
            if record.type == dns_dissect.TYPE_CNAME:
                owner = normalise_hostname(record.name)
                target = normalise_hostname(record.value)
                if owner and target and owner not in cname_targets:
                    cname_targets[owner] = target
        # For each question: every name reachable by CNAMEs, with the chain that reached it.
        reachable: dict[str, tuple[str, tuple[str, ...]]] = {}
        for question in message.questions:
            asked = normalise_hostname(question.name)
            if asked is None:
                continue
            chain: list[str] = []
            current = asked
            reachable.setdefault(current, (asked, ()))
            while current in cname_targets and len(chain) < len(cname_targets):
                current = cname_targets[current]
                if current == asked or current in chain:
                    break  # a CNAME loop in the answer
                chain.append(current)
                reachable.setdefault(current, (asked, tuple(chain)))
        for record in message.answers:
            if not record.addresses:
                continue
            owner = normalise_hostname(record.name)
            if owner is None:
                continue
            # An address for a name no question leads to is still what the client was told.
            name, chain_to_owner = reachable.get(owner, (owner, ()))
            entry = DnsName(name=name, chain=chain_to_owner, answered_at_ns=ts_ns)
            for address in record.addresses:
                self._store(address, entry)

    def _store(self, address: str, entry: DnsName) -> None:
        key = _address_key(address)
        if key is None:
            return
        entries = self._by_address.pop(key, None)
        if entries is None:
            entries = []
            if len(self._by_address) >= self.max_addresses:
                del self._by_address[next(iter(self._by_address))]
        self._by_address[key] = entries  # re-inserted last: most recently updated
        if entries and entries[-1].answered_at_ns <= entry.answered_at_ns:
            latest = entries[-1]
            if latest.name == entry.name and latest.chain == entry.chain:
                return
            entries.append(entry)
        else:
            # Answers normally arrive in time order; keep the list sorted when they do not.
            position = len(entries)
            while position and entries[position - 1].answered_at_ns > entry.answered_at_ns:
                position -= 1
            entries.insert(position, entry)
        if len(entries) > self.max_names_per_address:
            del entries[0]

    def lookup(self, ip: str, at_ns: int) -> DnsName | None:
        """The latest answer at or before ``at_ns`` mapping ``ip``; None if none (or a bad ip)."""
        entries = self._by_address.get(ip)  # canonical text (as flows.csv writes it) hits directly
        if entries is None:
            key = _address_key(ip)
            if key is None:
                return None
            entries = self._by_address.get(key)
            if entries is None:
                return None
        for entry in reversed(entries):
            if entry.answered_at_ns <= at_ns:
                return entry
        return None


# --- TCP stream reassembly ------------------------------------------------------------------

MAX_STREAM_BYTES: Final = 65536
MAX_STREAM_SEGMENTS: Final = 256


class _TcpStream:
    """One direction's TCP payload, rebuilt by sequence number just far enough to parse.

    Segments are kept by their offset relative to the first sequence number seen (modulo 2^32,
    RFC 9293 §3.4). Until the parser consumes bytes, the stream starts at the lowest offset seen,
    so a first segment that arrives late still becomes the start. Overlaps (retransmissions) keep
    the first copy's bytes. Memory: at most MAX_STREAM_BYTES of window and MAX_STREAM_SEGMENTS
    segments; segments beyond are refused (``add`` returns False).
    Weakness: without the SYN the true stream start is a guess (the lowest sequence seen).

    The lowest offset and the highest end of the kept segments are tracked as segments arrive
    (only ``consume`` drops segments, and only those ending at or before the new start, so the
    highest end survives it), and a stream of one segment is returned without copying: most
    directions never hold more than one (a ClientHello, an HTTP request).
    """

    __slots__ = ("_origin", "_segments", "_start", "_consumed", "_append_at", "_low", "_high")

    def __init__(self) -> None:
        self._origin: int | None = None
        self._segments: dict[int, bytes] = {}
        self._start = 0
        self._consumed = False
        self._append_at = 0
        self._low = 0  # lowest offset kept (meaningful while segments are kept and none consumed)
        self._high = 0  # highest end kept (meaningful while segments are kept)

    def add(self, data: bytes, seq: int | None) -> bool:
        if seq is None:
            offset = self._append_at  # no sequence number: trust capture order
        else:
            if self._origin is None:
                self._origin = seq & 0xFFFFFFFF
            offset = ((seq - self._origin + 2**31) % 2**32) - 2**31
        end = offset + len(data)
        self._append_at = max(self._append_at, end)
        if self._consumed and end <= self._start:
            return True  # an old retransmission of consumed bytes
        segments = self._segments
        if segments:
            low = self._start if self._consumed else min(self._low, offset)
            high = max(self._high, end)
            if high - low > MAX_STREAM_BYTES or len(segments) >= MAX_STREAM_SEGMENTS:
                return False
            if len(data) > len(segments.get(offset, b"")):
                segments[offset] = data
                self._low = min(self._low, offset)
                self._high = high
        elif len(data) > MAX_STREAM_BYTES:
            return False
        elif data:
            segments[offset] = data
            self._low, self._high = offset, end
        return True

    def start_offset(self) -> int | None:
        """Where the stream currently starts (relative offset), None before any segment."""
        if not self._segments:
            return self._start if self._consumed else None
        return self._start if self._consumed else self._low

    def contiguous(self) -> bytes:
        """The bytes from the stream start up to the first gap."""
        segments = self._segments
        if not segments:
            return b""
        start = self._start if self._consumed else self._low
        if len(segments) == 1:
            for offset, data in segments.items():
                if offset == start:
                    return data
                if offset > start or offset + len(data) <= start:
                    return b""
                return data[start - offset :]
        out = bytearray()
        cursor = start
        for offset, data in sorted(segments.items()):
            if offset > cursor:
                break
            if offset + len(data) > cursor:
                out += data[cursor - offset :]
                cursor = offset + len(data)
        return bytes(out)

    def consume(self, count: int) -> None:
        """Drops the first ``count`` contiguous bytes (the parser has used them)."""
        if count <= 0 or not self._segments:
            return
        start = self._start if self._consumed else self._low
        self._start = start + count
        self._consumed = True
        self._segments = {
            offset: data
            for offset, data in self._segments.items()
            if offset + len(data) > self._start
        }


# --- per-flow naming ------------------------------------------------------------------------

# Budget per direction before naming gives up (issue 3): payload packets and payload bytes.
MAX_PACKETS_PER_DIRECTION: Final = 16
MAX_BYTES_PER_DIRECTION: Final = 65536
DNS_PORT: Final = 53


@dataclass(frozen=True, slots=True, init=False)
class FlowNaming:
    """What the flow's own packets say about the server.

    app_protocol  ``dns``, ``tls``, ``http``, ``dtls``, ``quic`` or "" when none recognised
    server_name   normalised hostname by precedence (SNI/QUIC SNI > HTTP Host > certificate),
                  > STUN REALM; for a DNS flow the first question's name; "" if none or none valid
    name_source   ``sni``, ``quic-sni``, ``http-host``, ``certificate``, ``stun-realm``,
                  ``dns-query`` or ""
    raw_names     every name seen, as sent (even invalid ones), for the evidence
    attributes    (key, value) facts: ``alpn``, ``tls_version``, ``ech``, ``dtls_srtp``,
                  ``cert_names``, ``quic_version``
    """

    app_protocol: str
    server_name: str
    name_source: str
    raw_names: tuple[str, ...]
    attributes: tuple[tuple[str, str], ...]

    def __init__(
        self,
        app_protocol: str,
        server_name: str,
        name_source: str,
        raw_names: tuple[str, ...],
        attributes: tuple[tuple[str, str], ...],
    ) -> None:
        # One per flow: assigned field by field so that compiled this is native code.
        self.app_protocol = app_protocol  # type: ignore[misc]
        self.server_name = server_name  # type: ignore[misc]
        self.name_source = name_source  # type: ignore[misc]
        self.raw_names = raw_names  # type: ignore[misc]
        self.attributes = attributes  # type: ignore[misc]


frozen_init(FlowNaming)


#: ``FlowNaming(...)`` at the cost of the fewest calls (``fastinit``): one per flow.
_new_naming: Final = positional_constructor(FlowNaming)


@functools.cache
def _load_quic() -> Any:
    """The QUIC module when it is importable (it is written separately), else None; looked up
    once per process (every UDP flow's namer asks)."""
    try:
        from inspector.dissect import quic
    except Exception:  # noqa: BLE001 - a missing or broken optional dissector must not stop naming
        return None
    return quic


class _Direction:
    """What a namer keeps for one direction of its flow: the packets and bytes it took (its
    budget), whether parsing failed, the TCP stream, the TLS record reader (with the stream start
    it began at) and the DTLS handshake collector. Plain fields rather than one dict per field
    keyed by direction: a namer is built for tens of thousands of flows."""

    __slots__ = ("packets_taken", "bytes_taken", "failed", "stream", "stream_full", "tls", "dtls")

    def __init__(self, stream: _TcpStream | None) -> None:
        self.packets_taken = 0
        self.bytes_taken = 0
        self.failed = False
        self.stream: _TcpStream | None = stream
        self.stream_full = False
        # (stream start, reader); reader None once the records from that start failed to parse.
        self.tls: tuple[int | None, tls_dissect.TlsHandshakeReader | None] | None = None
        self.dtls: dtls_dissect.DtlsHandshakeCollector | None = None

    def spent(self) -> bool:
        """The direction's budget is used up (MAX_PACKETS_PER_DIRECTION or MAX_BYTES_PER_DIRECTION)."""
        return self.packets_taken >= MAX_PACKETS_PER_DIRECTION or self.bytes_taken >= MAX_BYTES_PER_DIRECTION


class FlowNamer:
    """Names one flow from its first payload packets; see the module docstring.

    ``feed`` takes the flow's payload packets in capture order (TCP with the segment's raw
    sequence number). It never raises: parse failures are counted in ``errors`` by
    ``protocol:reason``. ``dns_messages`` collects (ts_ns, DnsMessage) from a DNS flow (port 53)
    for the pipeline to drain into a NameMap.

    ``done`` is True when more packets cannot change the result: a TLS flow once the SNI and the
    server's reply (version, certificate) are in or the server side is exhausted; an HTTP or QUIC
    flow once its name is found; any flow once both directions spent their budget
    (MAX_PACKETS_PER_DIRECTION packets or MAX_BYTES_PER_DIRECTION bytes), or the client's when
    nothing is awaited from the server. A DNS flow is never done: every answer matters.
    """

    # Scalar state starts as these class-level defaults and becomes per-instance on first
    # assignment: a namer is built for tens of thousands of flows, most of which set few of them.
    _http_done = False
    _client_hello: tls_dissect.ClientHello | None = None
    _server_hello: tls_dissect.ServerHello | None = None
    _certificate_seen = False
    _server_encrypted = False
    _sni_raw: str | None = None
    _quic_sni_raw: str | None = None
    _host_raw: str | None = None
    _cert_names: tuple[str, ...] = ()
    _quic_collector: Any = None
    _quic_version: str = ""
    _quic_tried = False
    _malformed_hello = ""
    _dns_query_raw: str | None = None
    _stun_realm_raw: str | None = None

    def __init__(self, transport: str, client_port: int, server_port: int) -> None:
        self.transport = transport.lower()
        self.client_port = client_port
        self.server_port = server_port
        self.dns_messages: list[tuple[int, DnsMessage]] = []
        self.errors: collections.Counter[str] = ErrorCounts()
        self._is_dns = DNS_PORT in (client_port, server_port)
        self._app = "dns" if self._is_dns else ""
        # Only TCP payloads are rebuilt as streams (TLS, HTTP, DNS and STUN over TCP).
        tcp = self.transport == "tcp"
        self._client = _Direction(_TcpStream() if tcp else None)
        self._server = _Direction(_TcpStream() if tcp else None)

    def _side(self, from_client: bool) -> _Direction:
        return self._client if from_client else self._server

    def _stream(self, from_client: bool) -> _TcpStream:
        stream = self._side(from_client).stream
        assert stream is not None  # TCP flows only
        return stream

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, from_client: bool, payload: bytes, ts_ns: int, tcp_seq: int | None = None) -> None:
        """Feeds one payload-carrying packet. Never raises."""
        if not payload:
            return
        try:
            self._feed(bool(from_client), bytes(payload), ts_ns, tcp_seq)
        except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; fuzz tests pin it
            self.errors[f"naming:internal_{type(exc).__name__}"] += 1
            self._side(bool(from_client)).failed = True

    def _budget_spent(self, from_client: bool) -> bool:
        return self._side(from_client).spent()

    def _feed(self, from_client: bool, payload: bytes, ts_ns: int, tcp_seq: int | None) -> None:
        if self._is_dns:
            self._feed_dns(from_client, payload, ts_ns, tcp_seq)
            return
        side = self._side(from_client)
        if side.spent() or side.failed:
            return
        side.packets_taken += 1
        side.bytes_taken += len(payload)
        if self.transport == "tcp":
            self._feed_tcp(from_client, payload, tcp_seq)
        elif self.transport == "udp":
            self._feed_udp(from_client, payload)

    def _feed_dns(self, from_client: bool, payload: bytes, ts_ns: int, tcp_seq: int | None) -> None:
        if self.transport == "udp":
            self._parse_dns(payload, ts_ns)
            return
        if self.transport != "tcp":
            return
        side = self._side(from_client)
        stream = side.stream
        if stream is None:
            return
        if not stream.add(payload, tcp_seq):
            if not side.stream_full:
                self.errors["dns:tcp_stream_gap"] += 1
                side.stream_full = True
            return
        messages, used = dns_dissect.split_tcp_messages(stream.contiguous())
        stream.consume(used)
        for message in messages:
            self._parse_dns(message, ts_ns)

    def _parse_dns(self, message: bytes, ts_ns: int) -> None:
        try:
            parsed = dns_dissect.parse_dns(message)
        except dns_dissect.DnsError as exc:
            self.errors[f"dns:{exc.reason}"] += 1
            return
        self.dns_messages.append((ts_ns, parsed))
        if self._dns_query_raw is None and parsed.questions:
            # RFC 1035 §4.1.2: a response repeats the question, so a flow whose query was not
            # captured still shows what was asked.
            self._dns_query_raw = parsed.questions[0].name

    def _feed_tcp(self, from_client: bool, payload: bytes, tcp_seq: int | None) -> None:
        stream = self._stream(from_client)
        if not stream.add(payload, tcp_seq):
            self.errors["tcp:stream_cap"] += 1
            return
        data = stream.contiguous()
        if not data:
            return
        if from_client:
            if self._app == "http" and not self._http_done and tls_dissect.looks_like_tls_record(data):
                self._app = ""  # an earlier segment arrived late: the stream starts with TLS
            if self._app in ("", "tls") and tls_dissect.looks_like_tls_record(data):
                self._app = "tls"
                self._read_tls(from_client, data)
            elif self._app in ("", "http") and http_dissect.looks_like_request(data[:8]):
                self._app = "http"
                self._read_http(data)
            elif self._app == "" and data[0] < 0x40:
                self._read_stun_stream(data)
        elif tls_dissect.looks_like_tls_record(data) and self._app in ("", "tls"):
            # The server side is read even when the ClientHello was missed.
            self._app = "tls"
            self._read_tls(from_client, data)
        elif self._app == "" and data[0] < 0x40:
            self._read_stun_stream(data)

    def _read_stun_stream(self, stream: bytes) -> None:
        """STUN/TURN over TCP (RFC 8489 §6.2.2: messages back to back, each sized by its own
        header): whole messages from the stream start are read, at most 16; only the REALM is
        kept. A message cut by the end of what has arrived waits for the next segment."""
        if self._stun_realm_raw is not None:
            return
        messages: list[stun_dissect.StunMessage] = []
        pos = 0
        while len(messages) < 16 and pos < len(stream):
            message = stun_dissect.parse_stun(stream[pos:], allow_trailing=True)
            if message is None:
                break
            messages.append(message)
            pos += message.total_len
        self._note_stun_realm(messages)

    def _read_tls(self, from_client: bool, stream: bytes) -> None:
        """Runs the direction's record reader; a reader is tied to the stream start it began at.

        Without the SYN the lowest sequence seen is a guess: if an earlier segment arrives later
        the start moves and the stream is re-read from it, and an error seen under the old start
        does not condemn the direction.
        """
        side = self._side(from_client)
        start = self._stream(from_client).start_offset()
        known = side.tls
        if known is None or known[0] != start:
            known = side.tls = (start, tls_dissect.TlsHandshakeReader())
        reader = known[1]
        if reader is None:
            return  # this start already failed to parse
        try:
            messages = reader.feed(stream)
        except tls_dissect.TlsError as exc:
            self.errors[f"tls:{exc.reason}"] += 1
            side.tls = (start, None)
            return
        if not from_client and reader.encrypted:
            self._server_encrypted = True
        for message in messages:
            self._handshake_message(from_client, message, dtls=False)

    def _handshake_message(self, from_client: bool, message: bytes, dtls: bool) -> None:
        protocol = "dtls" if dtls else "tls"
        msg_type = message[0]
        try:
            if from_client and msg_type == tls_dissect.HANDSHAKE_CLIENT_HELLO:
                if self._client_hello is None:
                    self._read_client_hello(message, dtls)
            elif not from_client and msg_type == tls_dissect.HANDSHAKE_SERVER_HELLO:
                server_hello = tls_dissect.parse_server_hello(message, dtls=dtls)
                if self._server_hello is None or self._server_hello.is_hello_retry:
                    self._server_hello = server_hello
            elif not from_client and msg_type == tls_dissect.HANDSHAKE_CERTIFICATE:
                if not self._certificate_seen:
                    self._certificate_seen = True
                    if self._sni_raw and normalise_hostname(self._sni_raw):
                        # The client named the server with a usable name: the certificate's names
                        # would only be a weaker source, and X.509 parsing is the costliest step.
                        return
                    chain = tls_dissect.parse_certificate_list(message, dtls=dtls)
                    if chain:
                        self._cert_names = x509names.certificate_names(chain[0])
        except tls_dissect.TlsError as exc:
            self.errors[f"{protocol}:{exc.reason}"] += 1
        except x509names.CertificateError as exc:
            self.errors[f"{protocol}:certificate_{exc.reason}"] += 1

    def _read_client_hello(self, message: bytes, dtls: bool) -> None:
        """Strict parse first; a damaged extension list is counted, then read leniently.

        The lenient read (tls.parse_client_hello_lenient) keeps the well-formed extensions, as
        nDPI does; the flow is marked with the attribute ``tls_malformed``.
        """
        try:
            hello = tls_dissect.parse_client_hello(message, dtls=dtls)
        except tls_dissect.TlsError as exc:
            self.errors[f"{'dtls' if dtls else 'tls'}:{exc.reason}"] += 1
            try:
                hello = tls_dissect.parse_client_hello_lenient(message, dtls=dtls)
            except tls_dissect.TlsError:
                return  # the fixed fields are broken too: already counted
            self._malformed_hello = exc.reason
        self._client_hello = hello
        if hello.server_name:
            self._sni_raw = hello.server_name

    def _read_http(self, stream: bytes) -> None:
        if self._http_done:
            return
        try:
            request = http_dissect.parse_request_head(stream)
        except http_dissect.HttpError as exc:
            # Not (yet) an HTTP request: without the SYN the stream start is a guess, and an
            # earlier segment arriving later may show a TLS record instead. Stay undecided.
            self.errors[f"http:{exc.reason}"] += 1
            self._app = ""
            return
        if request is None:
            return
        self._http_done = True
        if not request.host and request.method == "CONNECT":
            self._host_raw = request.target.rpartition(":")[0] or request.target
        elif request.host:
            self._host_raw = request.host

    def _note_stun_realm(self, messages: list[stun_dissect.StunMessage]) -> None:
        """Keeps the first REALM a STUN/TURN message carries (RFC 8489 §14.9).

        The realm names the authentication domain of a TURN server's long-term credentials
        (RFC 8489 §9.2; its digest ancestor RFC 2617 §3.2.1 says it should name the host or
        domain doing the authentication): ``signal.org``, ``telegram.org``, ``viber.com`` in the
        shared captures, which nDPI reports as the flow's host name too.
        Weakness: the server picks the string freely; it names the operator's domain, not the
        relay host itself, and a value that is not a hostname is kept for the evidence only.
        """
        if self._stun_realm_raw is not None:
            return
        for message in messages:
            realm = message.text(stun_dissect.ATTR_REALM)
            if realm:
                self._stun_realm_raw = realm.strip('"')
                return

    def _feed_udp(self, from_client: bool, payload: bytes) -> None:
        if self._app == "" and self._stun_realm_raw is None and payload[0] < 0x40:
            # RFC 8489 §5: the two most significant bits of every STUN message are zero.
            message = stun_dissect.parse_stun(payload)
            if message is not None:
                self._note_stun_realm([message])
                return
        if self._app in ("", "dtls") and dtls_dissect.looks_like_dtls(payload):
            self._app = "dtls"
            side = self._side(from_client)
            collector = side.dtls
            if collector is None:
                collector = side.dtls = dtls_dissect.DtlsHandshakeCollector()
            try:
                handshakes = collector.feed(payload)
            except dtls_dissect.DtlsError as exc:
                self.errors[f"dtls:{exc.reason}"] += 1
                return
            for handshake in handshakes:
                self._handshake_message(from_client, handshake, dtls=True)
            return
        if from_client and self._app in ("", "quic"):
            self._feed_quic(payload)

    def _feed_quic(self, datagram: bytes) -> None:
        """QUIC hook: hands client datagrams to inspector.dissect.quic when it is importable.

        The first client datagram decides: a long-header packet (RFC 9000 §17.2, checked by
        quic.is_quic_long_header) starts a QuicInitialCollector; otherwise parse_gquic gets a
        chance at a Google QUIC (Q043 and older) CHLO. Anything the module raises is counted.
        """
        if self._quic_collector is None:
            if self._quic_tried:
                return
            self._quic_tried = True
            quic = _load_quic()
            if quic is None:
                return
            is_long = getattr(quic, "is_quic_long_header", None)
            long_header = is_long(datagram) if is_long else (datagram[0] & 0xC0) == 0xC0
            if not long_header:
                hello = quic.parse_gquic(datagram)
                if hello is not None:
                    self._app = "quic"
                    self._quic_version = str(getattr(hello, "version", "") or "")
                    if hello.server_name:
                        self._quic_sni_raw = hello.server_name
                return
            self._quic_collector = quic.QuicInitialCollector()
        collector = self._quic_collector
        if collector.done:
            return
        before = dict(collector.errors) if collector.errors else None
        collector.feed(datagram)
        if collector.errors:
            # The reasons this datagram added (the collector's counts only grow).
            for reason, count in collector.errors.items():
                added = count - (before.get(reason, 0) if before else 0)
                if added > 0:
                    self.errors[f"quic:{reason}"] += added
        if collector.version is not None:
            self._app = "quic"
            self._quic_version = f"0x{collector.version:08x}"
        hello = collector.client_hello
        gquic_hello = getattr(collector, "gquic_hello", None)
        if hello is not None:
            self._app = "quic"
            self._client_hello = hello
            if hello.server_name:
                self._quic_sni_raw = hello.server_name
        elif gquic_hello is not None:
            self._app = "quic"
            if gquic_hello.server_name:
                self._quic_sni_raw = gquic_hello.server_name

    # -- state -----------------------------------------------------------------------------

    def _awaiting_server(self) -> bool:
        """TLS/DTLS: the server's hello or clear certificate may still come."""
        if self._app not in ("tls", "dtls"):
            return False
        if self._server.failed or self._budget_spent(False) or self._server_encrypted:
            return False
        server_reader = self._server.tls
        if self._app == "tls" and server_reader is not None and server_reader[1] is None:
            return False  # the server's records did not parse
        if self._server_hello is None:
            return True
        version = self._server_hello.selected_version
        if version in (0x0304, 0xFEFC):
            return False  # TLS/DTLS 1.3: the certificate is encrypted
        if self._sni_raw and normalise_hostname(self._sni_raw):
            return False  # the client named the server; parsing its certificate adds no name
        return not self._certificate_seen

    @property
    def done(self) -> bool:
        if self._is_dns:
            return False
        if self._quic_sni_raw is not None or (self._app == "http" and self._http_done):
            return True
        if self._app == "quic" and self._quic_collector is not None and self._quic_collector.done:
            return True
        server_spent = self._server.failed or self._budget_spent(False)
        if self._client_hello is not None or self._client.failed or self._budget_spent(True):
            return server_spent or not self._awaiting_server()
        return server_spent and self._app == ""

    def result(self) -> FlowNaming:
        raw_names: list[str] = []
        for name in (self._sni_raw, self._quic_sni_raw, self._host_raw, *self._cert_names):
            if name is not None and name not in raw_names:
                raw_names.append(name)
        server_name, name_source = "", ""
        candidates = (
            (self._sni_raw, "sni"),
            (self._quic_sni_raw, "quic-sni"),
            (self._host_raw, "http-host"),
        )
        for raw, source in candidates:
            name = normalise_hostname(raw) if raw else None
            if name:
                server_name, name_source = name, source
                break
        if not server_name:
            name = _certificate_name(self._cert_names)
            if name:
                server_name, name_source = name, "certificate"
        if not server_name and self._stun_realm_raw is not None:
            if self._stun_realm_raw not in raw_names:
                raw_names.append(self._stun_realm_raw)
            name = stun_realm_name(self._stun_realm_raw)
            if name:
                server_name, name_source = name, "stun-realm"
        if not server_name and self._dns_query_raw is not None:
            if self._dns_query_raw not in raw_names:
                raw_names.append(self._dns_query_raw)
            name = normalise_hostname(self._dns_query_raw)
            if name:
                server_name, name_source = name, "dns-query"
        return _new_naming(self._app, server_name, name_source, tuple(raw_names), self._attributes())

    def _attributes(self) -> tuple[tuple[str, str], ...]:
        attributes: list[tuple[str, str]] = []
        hello = self._client_hello
        if hello is not None and hello.alpn:
            attributes.append(("alpn", ",".join(hello.alpn)))
        if self._server_hello is not None and not self._server_hello.is_hello_retry:
            version = tls_dissect.version_name(self._server_hello.selected_version)
            attributes.append(("tls_version", version))
        if hello is not None and hello.has_ech:
            attributes.append(("ech", "1"))
        if hello is not None and hello.use_srtp:
            attributes.append(("dtls_srtp", ",".join(f"0x{p:04x}" for p in hello.use_srtp)))
        if self._cert_names:
            attributes.append(("cert_names", ",".join(self._cert_names)))
        if self._quic_version:
            attributes.append(("quic_version", self._quic_version))
        if self._malformed_hello:
            attributes.append(("tls_malformed", self._malformed_hello))
        return tuple(attributes)


def stun_realm_name(raw: str) -> str:
    """A STUN/TURN REALM as a server name (name_source ``stun-realm``), or "" when it is not one.

    The REALM of a TURN server's long-term credentials (RFC 8489 §9.2, §14.9) names the operator's
    domain: ``signal.org``, ``telegram.org``, ``viber.com`` in the shared captures, which nDPI
    reports as the flow's host name too. Quotes are dropped (RFC 8489 §14.9 defines the value as
    a quoted-string's content; some servers send the quotes). A single label (``relay``) names
    nothing and is refused. Weakness: the server chooses the string; it names a domain, not the
    relay host.
    """
    name = normalise_hostname(raw.strip().strip('"')) if raw else None
    return name if name and "." in name else ""


def _certificate_name(names: tuple[str, ...]) -> str:
    """The first valid certificate name with at least two labels; a wildcard only as a fallback.

    A wildcard ``*.zoom.us`` (RFC 6125 §6.4.3) is reported as ``zoom.us``: the server is some
    host under that domain, which is what suffix matching needs. Single-label names are skipped:
    WebRTC peers present self-signed certificates with CN ``WebRTC`` (RFC 8827 §6.5 leaves the
    name free), which names nothing. Weakness: multi-domain certificates list unrelated names
    and the first one wins.
    """
    for raw in names:
        name = normalise_hostname(raw)
        if name and "." in name:
            return name
    for raw in names:
        if raw.startswith("*."):
            name = normalise_hostname(raw[2:])
            if name and "." in name:
                return name
    return ""
