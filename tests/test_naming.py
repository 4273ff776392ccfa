"""Naming: hostname rules, the DNS name map with time, and FlowNamer over crafted flows."""

from __future__ import annotations

import struct
import types

import pytest

from inspector import naming
from tests.conftest import pure_python_only
from inspector.dissect.dns import DnsMessage, DnsQuestion, DnsRecord
from inspector.naming import DnsName, FlowNamer, NameMap, normalise_hostname
from tests.dissect.test_dns import CNAME_CHAIN_RESPONSE, QUESTION, header
from tests.dissect.test_dtls import WEBRTC_HELLO, dtls_record
from tests.dissect.test_tls import (
    ZOOM_HELLO_EXTENSIONS,
    alpn_extension,
    certificate_message,
    client_hello,
    extension,
    make_certificate,
    record,
    server_hello,
    sni_extension,
)

# --- normalise_hostname ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ZoomFRN99mmr.Zoom.US.", "zoomfrn99mmr.zoom.us"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        ("a" * 64 + ".com", None),
        (("a" * 63 + ".") * 3 + "a" * 61, ("a" * 63 + ".") * 3 + "a" * 61),  # 253 chars
        (("a" * 63 + ".") * 3 + "a" * 62, None),  # 254 chars
        ("a..b", None),
        ("", None),
        (".", None),
        ("bad name.com", None),
        ("tab\t.com", None),
        ("-lead.example", None),
        ("trail-.example", None),
        ("*.zoom.us", None),
        ("192.168.1.1", None),
        ("2001:db8::1", None),
        ("bücher.example", None),
        ("ev\x00il.com", None),
    ],
)
def test_normalise_hostname(raw: str, expected: str | None) -> None:
    assert normalise_hostname(raw) == expected


# --- NameMap -----------------------------------------------------------------------------------


def response(question: str, *answers: DnsRecord) -> DnsMessage:
    return DnsMessage(id=1, is_response=True, rcode=0,
                      questions=(DnsQuestion(question, 1),), answers=answers)


def a_record(name: str, address: str) -> DnsRecord:
    return DnsRecord(name, 1, 60, address, (address,))


def test_name_map_reports_the_question_and_keeps_the_cname_chain() -> None:
    from inspector.dissect.dns import parse_dns

    names = NameMap()
    names.add(parse_dns(CNAME_CHAIN_RESPONSE), ts_ns=1_000)
    assert names.lookup("203.0.113.7", at_ns=1_000) == DnsName(
        name="www.zoom.us",
        chain=("zoom.cdn.example.net", "edge.cdn.example.net"),
        answered_at_ns=1_000,
    )


def test_name_map_time_semantics() -> None:
    names = NameMap()
    names.add(response("a.example", a_record("a.example", "192.0.2.1")), ts_ns=100)
    names.add(response("b.example", a_record("b.example", "192.0.2.1")), ts_ns=200)
    assert names.lookup("192.0.2.1", at_ns=99) is None  # a later answer never applies backwards
    assert names.lookup("192.0.2.1", at_ns=100).name == "a.example"
    assert names.lookup("192.0.2.1", at_ns=150).name == "a.example"
    assert names.lookup("192.0.2.1", at_ns=10**18).name == "b.example"
    # An answer seen out of time order is still placed by time.
    names.add(response("c.example", a_record("c.example", "192.0.2.1")), ts_ns=150)
    assert names.lookup("192.0.2.1", at_ns=170).name == "c.example"
    assert names.lookup("192.0.2.9", at_ns=170) is None
    assert names.lookup("not an ip", at_ns=170) is None


def test_name_map_ignores_queries_and_invalid_names_and_normalises_ipv6() -> None:
    names = NameMap()
    query = DnsMessage(1, False, 0, (DnsQuestion("q.example", 28),),
                       (DnsRecord("q.example", 28, 1, "2001:db8::5", ("2001:db8::5",)),))
    names.add(query, ts_ns=1)
    assert len(names) == 0
    names.add(response("bad name", a_record("bad name", "192.0.2.3")), ts_ns=1)
    assert names.lookup("192.0.2.3", 5) is None
    names.add(DnsMessage(1, True, 0, (DnsQuestion("v6.example", 28),),
                         (DnsRecord("V6.Example.", 28, 1, "2001:db8::5", ("2001:db8::5",)),)), 3)
    assert names.lookup("2001:0db8:0000::0005", 3).name == "v6.example"


def test_name_map_https_hints_and_cname_loop() -> None:
    names = NameMap()
    https = DnsRecord("svc.example", 65, 60, "", ("192.0.2.10", "2001:db8::10"))
    loop = (DnsRecord("svc.example", 5, 1, "x.example"), DnsRecord("x.example", 5, 1, "svc.example"))
    names.add(response("svc.example", *loop, https), ts_ns=7)
    assert names.lookup("192.0.2.10", 7) == DnsName("svc.example", (), 7)
    assert names.lookup("2001:db8::10", 7).name == "svc.example"


def test_name_map_is_bounded() -> None:
    names = NameMap(max_addresses=3, max_names_per_address=2)
    for index in range(5):
        names.add(response("h.example", a_record("h.example", f"192.0.2.{index}")), ts_ns=index)
    assert len(names) == 3
    assert names.lookup("192.0.2.0", 100) is None  # oldest address evicted
    for index in range(4):
        names.add(response(f"n{index}.example", a_record(f"n{index}.example", "192.0.2.4")),
                  ts_ns=10 + index)
    assert names.lookup("192.0.2.4", 100).name == "n3.example"
    assert names.lookup("192.0.2.4", 12).name == "n2.example"
    assert names.lookup("192.0.2.4", 11) is None  # older names of this address dropped
    # Repeating the latest name keeps its first time instead of filling the list.
    for repeat in range(10):
        names.add(response("n3.example", a_record("n3.example", "192.0.2.4")), ts_ns=20 + repeat)
    assert names.lookup("192.0.2.4", 100).answered_at_ns == 13


# --- FlowNamer: TLS ----------------------------------------------------------------------------


def tls_client_stream(extensions: bytes = ZOOM_HELLO_EXTENSIONS) -> bytes:
    return record(client_hello(extensions))


def test_client_hello_split_over_three_segments_out_of_order() -> None:
    stream = tls_client_stream()
    isn = 0xFFFFFF00  # the sequence numbers wrap past 2^32 inside the hello
    cuts = [0, 100, 160, len(stream)]
    segments = [(isn + cuts[i]) % 2**32 for i in range(3)]
    namer = FlowNamer("tcp", 51000, 443)
    order = [2, 0, 1]
    for step, index in enumerate(order):
        namer.feed(True, stream[cuts[index] : cuts[index + 1]], ts_ns=step, tcp_seq=segments[index])
        if step < 2:
            assert namer.result().server_name == ""
    namer.feed(True, stream[100:160], ts_ns=9, tcp_seq=segments[1])  # retransmission
    result = namer.result()
    assert result.app_protocol == "tls"
    assert result.server_name == "zoomfrn99mmr.zoom.us"
    assert result.name_source == "sni"
    assert ("alpn", "h2,http/1.1") in result.attributes
    assert not namer.done  # the ServerHello is still awaited
    namer.feed(False, record(server_hello(extensions=extension(43, b"\x03\x04"))), 10, 5000)
    assert ("tls_version", "1.3") in namer.result().attributes
    assert namer.done
    assert not namer.errors


def test_certificate_names_when_no_sni_tls12() -> None:
    der = make_certificate("*.zoom.us", ("*.zoom.us", "zoom.us"))
    server_flight = record(server_hello() + certificate_message(der), version=0x0303)
    namer = FlowNamer("tcp", 51000, 443)
    namer.feed(True, tls_client_stream(alpn_extension(b"http/1.1")), 1, 1)
    namer.feed(False, server_flight[:50], 2, 7000)
    assert not namer.done
    namer.feed(False, server_flight[50:], 3, 7050)
    result = namer.result()
    assert (result.server_name, result.name_source) == ("zoom.us", "certificate")
    assert result.raw_names == ("*.zoom.us", "zoom.us")
    assert ("tls_version", "1.2") in result.attributes
    assert ("cert_names", "*.zoom.us,zoom.us") in result.attributes
    assert namer.done


def test_invalid_sni_is_evidence_only_and_certificate_wins() -> None:
    der = make_certificate("edge.example.net")
    namer = FlowNamer("tcp", 51000, 443)
    namer.feed(True, tls_client_stream(sni_extension(b"bad name\x07.com")), 1, 1)
    namer.feed(False, record(server_hello() + certificate_message(der)), 2, 1)
    result = namer.result()
    assert result.server_name == "edge.example.net"
    assert result.name_source == "certificate"
    assert result.raw_names[0] == "bad name\x07.com"


def test_ech_flag() -> None:
    namer = FlowNamer("tcp", 51000, 443)
    namer.feed(True, tls_client_stream(sni_extension(b"public.example") + extension(0xFE0D, b"\x00")),
               1, 1)
    assert ("ech", "1") in namer.result().attributes


def test_malformed_tls_is_counted_not_raised() -> None:
    stream = bytearray(tls_client_stream())
    stream[5 + 4 + 2 + 32] = 0xF0  # session id length beyond the message
    namer = FlowNamer("tcp", 51000, 443)
    namer.feed(True, bytes(stream), 1, 1)
    assert namer.errors == {"tls:bad_session_id": 1}
    assert namer.result().server_name == ""


# --- FlowNamer: HTTP, DNS, DTLS, QUIC hook --------------------------------------------------------


def test_http_host_over_two_segments() -> None:
    request = b"GET /wc/join HTTP/1.1\r\nHost: Zoom.US:80\r\nAccept: */*\r\n\r\n"
    namer = FlowNamer("tcp", 40000, 80)
    namer.feed(True, request[:20], 1, 1000)
    assert not namer.done
    namer.feed(True, request[20:], 2, 1020)
    result = namer.result()
    assert (result.app_protocol, result.server_name, result.name_source) == (
        "http", "zoom.us", "http-host")
    assert namer.done


def test_sni_beats_nothing_else_in_precedence_order() -> None:
    # SNI > HTTP Host > certificate: a flow with a valid SNI reports it even with a certificate,
    # and the certificate is then not parsed at all (it could only be a weaker source).
    der = make_certificate("other.example.org")
    namer = FlowNamer("tcp", 51000, 443)
    namer.feed(True, tls_client_stream(sni_extension(b"meet.google.com")), 1, 1)
    namer.feed(False, record(server_hello() + certificate_message(der)), 2, 1)
    assert namer.result().server_name == "meet.google.com"
    assert namer.result().raw_names == ("meet.google.com",)
    assert namer.done


def test_certificate_still_names_a_flow_whose_sni_is_not_a_hostname() -> None:
    # An IP literal in the SNI (RFC 6066 §3 forbids it, teams.pcap has it) is no name: the
    # certificate is parsed and names the flow.
    der = make_certificate("tr.teams.example.com")
    namer = FlowNamer("tcp", 51001, 443)
    namer.feed(True, tls_client_stream(sni_extension(b"52.114.250.152")), 1, 1)
    namer.feed(False, record(server_hello() + certificate_message(der)), 2, 1)
    result = namer.result()
    assert (result.server_name, result.name_source) == ("tr.teams.example.com", "certificate")


def test_dns_udp_messages_and_errors() -> None:
    namer = FlowNamer("udp", 53000, 53)
    namer.feed(True, header(flags=0x0100) + QUESTION, 1)
    namer.feed(False, CNAME_CHAIN_RESPONSE, 2)
    namer.feed(False, b"\x00\x01\x02", 3)
    assert [ts for ts, _ in namer.dns_messages] == [1, 2]
    assert namer.dns_messages[1][1].answers[2].value == "203.0.113.7"
    assert namer.errors == {"dns:truncated_header": 1}
    assert namer.result().app_protocol == "dns"
    assert not namer.done


def test_dns_tcp_two_messages_in_one_segment_and_one_split() -> None:
    query = header(flags=0x0100) + QUESTION
    stream = (struct.pack("!H", len(query)) + query) * 2
    stream += struct.pack("!H", len(CNAME_CHAIN_RESPONSE)) + CNAME_CHAIN_RESPONSE
    namer = FlowNamer("tcp", 53001, 53)
    split_at = 2 * (2 + len(query)) + 30
    namer.feed(True, stream[split_at:], 2, 5000 + split_at)  # the second half arrives first
    assert namer.dns_messages == []
    namer.feed(True, stream[:split_at], 1, 5000)
    assert len(namer.dns_messages) == 3
    assert namer.dns_messages[2][1].is_response


def test_dtls_after_stun_with_use_srtp() -> None:
    stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x01" * 12
    namer = FlowNamer("udp", 50000, 3478)
    namer.feed(True, stun, 1)
    namer.feed(True, dtls_record(WEBRTC_HELLO), 2)
    namer.feed(False, dtls_record(server_hello(version=0xFEFD, dtls=True)), 3)
    result = namer.result()
    assert result.app_protocol == "dtls"
    assert ("dtls_srtp", "0x0007,0x0008,0x0001") in result.attributes
    assert ("tls_version", "dtls1.2") in result.attributes
    assert result.server_name == ""  # a WebRTC certificate names nothing useful
    webrtc_cert = make_certificate("WebRTC")
    namer.feed(False, dtls_record(certificate_message(webrtc_cert, dtls=True)), 4)
    assert namer.result().server_name == ""
    assert namer.result().raw_names == ("WebRTC",)
    assert namer.done


def test_quic_hook_with_a_stand_in_module(monkeypatch: pytest.MonkeyPatch) -> None:
    from inspector.dissect.tls import parse_client_hello

    hello = parse_client_hello(client_hello(sni_extension(b"Meet.Google.com")))

    class Collector:
        def __init__(self) -> None:
            self.client_hello = None
            self.version = None
            self.done = False
            self.errors: dict[str, int] = {}

        def feed(self, datagram: bytes) -> None:
            self.version = 1
            if datagram.endswith(b"2"):
                self.client_hello = hello
                self.done = True

    stand_in = types.SimpleNamespace(
        QuicInitialCollector=Collector,
        parse_gquic=lambda datagram: None,
        is_quic_long_header=lambda datagram: bool(datagram[0] & 0x80),
    )
    monkeypatch.setattr(naming, "_load_quic", lambda: stand_in)
    namer = FlowNamer("udp", 50000, 443)
    namer.feed(True, b"\xc0initial-1", 1)
    assert namer.result().app_protocol == "quic" and not namer.done
    namer.feed(True, b"\xc0initial-2", 2)
    result = namer.result()
    assert (result.server_name, result.name_source) == ("meet.google.com", "quic-sni")
    assert ("quic_version", "0x00000001") in result.attributes
    assert namer.done


def test_quic_hook_without_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(naming, "_load_quic", lambda: None)
    namer = FlowNamer("udp", 50000, 443)
    namer.feed(True, b"\xc0\x00\x00\x00\x01" + b"\x00" * 40, 1)
    assert namer.result().app_protocol == ""
    assert not namer.errors


def test_budget_makes_unknown_flows_done() -> None:
    namer = FlowNamer("tcp", 50000, 5222)
    for index in range(naming.MAX_PACKETS_PER_DIRECTION):
        assert not namer.done
        namer.feed(True, b"<stream:stream>", index, 1 + 15 * index)
    assert namer.done
    assert namer.result().app_protocol == ""


def test_stream_cap_counts_segments_far_beyond_the_window() -> None:
    namer = FlowNamer("tcp", 50000, 443)
    namer.feed(True, b"\x16\x03\x01\x40\x00" + b"\x01", 1, 1000)
    namer.feed(True, b"x" * 10, 2, 1000 + naming.MAX_STREAM_BYTES + 5)
    assert namer.errors["tcp:stream_cap"] == 1


@pure_python_only
def test_feed_never_raises_on_internal_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(naming.tls_dissect, "looks_like_tls_record", boom)
    namer = FlowNamer("tcp", 50000, 443)
    namer.feed(True, b"\x16\x03\x01", 1, 1)
    assert namer.errors == {"naming:internal_RuntimeError": 1}


# --- the shared nDPI captures: dissector-level agreement with nDPI's SNI / Host -------------------

AGREEMENT_FLOOR = 0.90


def _endpoint(text: str) -> tuple[str | None, int]:
    """``1.2.3.4:443`` / ``[v6]:443`` -> (address, port); address None when nDPI printed it wrong.

    nDPI's own output has malformed IPv6 text in places (pinterest.pcap: ``[2600:1901::7a0b::]``,
    two ``::``); such an endpoint is matched on its port alone.
    """
    import ipaddress

    address, _, port = text.rpartition(":")
    try:
        return str(ipaddress.ip_address(address.strip("[]"))), int(port)
    except ValueError:
        return None, int(port)


def _is_address(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _candidate_pairs(src: tuple[str, int], dst: tuple[str, int]) -> list[frozenset]:
    return [
        frozenset((src, dst)),
        frozenset(((None, src[1]), dst)),
        frozenset((src, (None, dst[1]))),
    ]


def _gtp_inner(payload: bytes):  # type: ignore[no-untyped-def]
    """The IP packet inside a GTP-U G-PDU (3GPP TS 29.281 §5.1), or None."""
    import dpkt

    if len(payload) < 8 or payload[0] >> 5 != 1 or payload[1] != 0xFF:
        return None
    offset = 8
    if payload[0] & 0x07:  # sequence / N-PDU / extension flags add 4 bytes
        if len(payload) < 12:
            return None
        offset = 12
        next_type = payload[11]
        while next_type and offset < len(payload):
            length = payload[offset] * 4
            if not length or offset + length > len(payload):
                return None
            next_type = payload[offset + length - 1]
            offset += length
    inner = payload[offset:]
    try:
        if inner and inner[0] >> 4 == 4:
            return dpkt.ip.IP(inner)
        if inner and inner[0] >> 4 == 6:
            return dpkt.ip6.IP6(inner)
    except (dpkt.UnpackError, IndexError):
        return None
    return None


def _tcp_packets(path, transport=None):  # type: ignore[no-untyped-def]
    """(ts_ns, (src, sport), (dst, dport), segment) for each TCP (or ``transport``, a dpkt class)
    packet of an Ethernet/SLL capture, also inside GTP-U (UDP 2152) tunnels."""
    import socket

    import dpkt

    from tests.dpkt_frames import dpkt_frames

    for ts, link, frame in dpkt_frames(path):
        try:
            layer2 = dpkt.sll.SLL(frame) if link == 113 else dpkt.ethernet.Ethernet(frame)
        except (dpkt.UnpackError, IndexError):
            continue
        packet = layer2.data
        for _ in range(2):  # the outer packet, then a GTP-U inner packet
            if isinstance(packet, dpkt.ip.IP):
                family = socket.AF_INET
            elif isinstance(packet, dpkt.ip6.IP6):
                family = socket.AF_INET6
            else:
                break
            src = socket.inet_ntop(family, packet.src)
            dst = socket.inet_ntop(family, packet.dst)
            segment = packet.data
            if isinstance(segment, dpkt.udp.UDP) and 2152 in (segment.sport, segment.dport):
                packet = _gtp_inner(bytes(segment.data))
                continue
            if isinstance(segment, transport or dpkt.tcp.TCP):
                yield int(ts * 1e9), (src, segment.sport), (dst, segment.dport), segment
                break
            break


@pytest.mark.shared
def test_sni_and_host_agree_with_ndpi(ndpi_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    """For each TCP flow nDPI names via TLS or HTTP, FlowNamer over the flow's packets agrees.

    nDPI is a peer, not an oracle: its hostname column holds the SNI for TLS and the Host header
    for HTTP (lower-cased by nDPI); both are compared after normalise_hostname.
    """
    import csv

    with open(ndpi_dir / "expected" / "flows.tsv", newline="") as handle:
        rows = [
            row
            for row in csv.DictReader(handle, delimiter="\t")
            if row["hostname_sni"] and row["l4"] == "TCP"
            and ("TLS" in row["ndpi_proto"] or "HTTP" in row["ndpi_proto"])
        ]
    assert rows, "flows.tsv lists no TLS/HTTP flows with a hostname"
    by_capture: dict[str, dict[frozenset, dict]] = {}
    for row in rows:
        pair = frozenset((_endpoint(row["endpoint_a"]), _endpoint(row["endpoint_b"])))
        by_capture.setdefault(row["pcap"], {})[pair] = row
    agreed, disagreements = 0, []
    for capture, wanted in sorted(by_capture.items()):
        namers: dict[frozenset, tuple[FlowNamer, tuple[str, int]]] = {}
        for ts_ns, src, dst, segment in _tcp_packets(ndpi_dir / capture):
            pair = next((p for p in _candidate_pairs(src, dst) if p in wanted), None)
            if pair is None:
                continue
            if pair not in namers:
                # The client is the SYN sender, else nDPI's endpoint_a.
                syn_only = segment.flags & 0x12 == 0x02
                endpoint_a = _endpoint(wanted[pair]["endpoint_a"])
                client = src if syn_only or endpoint_a in (src, (None, src[1])) else dst
                server = dst if client == src else src
                namers[pair] = (FlowNamer("tcp", client[1], server[1]), client)
            namer, client = namers[pair]
            if segment.data and not namer.done:
                namer.feed(src == client, bytes(segment.data), ts_ns, segment.seq)
        for pair, row in wanted.items():
            expected = normalise_hostname(row["hostname_sni"]) or row["hostname_sni"].lower()
            got = namers[pair][0].result() if pair in namers else None
            if got is not None and got.server_name == expected:
                agreed += 1
            elif got is not None and _is_address(expected) and expected in got.raw_names:
                # nDPI reports an address-literal SNI / Host as the hostname. RFC 6066 §3 forbids
                # literals in SNI and they name no host, so they are kept as evidence only
                # (raw_names); on teams.pcap the certificate then names tr.teams.microsoft.com.
                agreed += 1
            else:
                disagreements.append((capture, row["endpoint_b"], expected,
                                      got.server_name if got else "<no packets>",
                                      got.name_source if got else "",
                                      got.raw_names if got else ()))
    rate = agreed / len(rows)
    with capsys.disabled():
        print(f"\nnaming vs nDPI: {agreed}/{len(rows)} flows agree ({rate:.1%})")
        for item in disagreements:
            print("  disagree:", *item)
    assert rate >= AGREEMENT_FLOOR, disagreements


def test_damaged_extension_list_still_yields_the_sni() -> None:
    # Shape of nDPI's tls_invalid_reads.pcap hello: SNI, then an ALPN whose list length lies,
    # then an extension whose length overruns the block.
    extensions = sni_extension(b"e.crashlytics.com") + extension(16, b"\xb8\x89\xa5/V") + \
        b"\x47\xe3\x4f\xc6\x94"
    namer = FlowNamer("tcp", 58552, 443)
    namer.feed(True, tls_client_stream(extensions), 1, 1)
    result = namer.result()
    assert (result.server_name, result.name_source) == ("e.crashlytics.com", "sni")
    assert ("tls_malformed", "bad_extension_length") in result.attributes
    assert namer.errors == {"tls:bad_extension_length": 1}


@pytest.mark.shared
def test_quic_sni_and_dtls_agree_with_ndpi(ndpi_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    """UDP flows: QUIC SNI (through the QUIC module, skipped when it is absent) and DTLS detection.

    DTLS flows in these captures carry no SNI (nDPI flags "Missing SNI TLS Extn"), so for them the
    check is that FlowNamer calls the flow ``dtls``.
    """
    import csv

    import dpkt

    if naming._load_quic() is None:
        pytest.skip("inspector.dissect.quic is not importable")
    with open(ndpi_dir / "expected" / "flows.tsv", newline="") as handle:
        rows = [
            row for row in csv.DictReader(handle, delimiter="\t")
            if row["l4"] == "UDP" and (
                ("QUIC" in row["ndpi_proto"] and row["hostname_sni"]) or "DTLS" in row["ndpi_proto"])
        ]
    by_capture: dict[str, dict[frozenset, dict]] = {}
    for row in rows:
        pair = frozenset((_endpoint(row["endpoint_a"]), _endpoint(row["endpoint_b"])))
        by_capture.setdefault(row["pcap"], {})[pair] = row
    agreed, checked, disagreements = 0, 0, []
    for capture, wanted in sorted(by_capture.items()):
        namers: dict[frozenset, tuple[FlowNamer, tuple[str, int]]] = {}
        for ts_ns, src, dst, datagram in _tcp_packets(ndpi_dir / capture, dpkt.udp.UDP):
            pair = next((p for p in _candidate_pairs(src, dst) if p in wanted), None)
            if pair is None:
                continue
            if pair not in namers:
                endpoint_a = _endpoint(wanted[pair]["endpoint_a"])
                client = src if endpoint_a in (src, (None, src[1])) else dst
                server = dst if client == src else src
                namers[pair] = (FlowNamer("udp", client[1], server[1]), client)
            namer, client = namers[pair]
            if datagram.data and not namer.done:
                namer.feed(src == client, bytes(datagram.data), ts_ns)
        for pair, row in wanted.items():
            if pair not in namers:
                continue  # link types this test does not decode (PPP); not a naming result
            checked += 1
            result = namers[pair][0].result()
            if "DTLS" in row["ndpi_proto"]:
                good = result.app_protocol == "dtls"
            else:
                good = (result.server_name, result.name_source) == (
                    normalise_hostname(row["hostname_sni"]), "quic-sni")
            agreed += good
            if not good:
                disagreements.append((capture, row["endpoint_b"], row["hostname_sni"],
                                      result.server_name, result.app_protocol))
    rate = agreed / checked
    with capsys.disabled():
        print(f"\nnaming vs nDPI (UDP: QUIC SNI, DTLS): {agreed}/{checked} flows agree ({rate:.1%})")
        for item in disagreements:
            print("  disagree:", *item)
    assert rate >= AGREEMENT_FLOOR, disagreements


def test_late_first_segment_moves_the_stream_start() -> None:
    # The hello is cut at a record boundary: segment 2 starts with its own record header, so it
    # looks like a stream start until segment 1 (lower sequence numbers) arrives.
    message = client_hello(ZOOM_HELLO_EXTENSIONS)
    first, second = record(message[:40]), record(message[40:])
    namer = FlowNamer("tcp", 51000, 443)
    namer.feed(True, second, 1, 1000 + len(first))
    namer.feed(True, first, 2, 1000)
    assert namer.result().server_name == "zoomfrn99mmr.zoom.us"


def test_dtls_server_certificate_names_the_flow() -> None:
    der = make_certificate("turn.example.net", ("relay.example.net",))
    hello_only = client_hello(version=0xFEFD, dtls=True, cookie=b"\x01" * 16)
    flight = (
        dtls_record(server_hello(version=0xFEFD, dtls=True, message_seq=0))
        + dtls_record(certificate_message(der, dtls=True, message_seq=1), seq=1)
    )
    namer = FlowNamer("udp", 50000, 5349)
    namer.feed(True, dtls_record(hello_only), 1)
    namer.feed(False, flight, 2)
    result = namer.result()
    assert (result.app_protocol, result.server_name, result.name_source) == (
        "dtls", "relay.example.net", "certificate")
    assert ("cert_names", "relay.example.net,turn.example.net") in result.attributes
    assert namer.done


# --- _TcpStream against a plain model ----------------------------------------------------------


class _ModelStream:
    """The reassembly rules of naming._TcpStream written without its shortcuts (min/max over
    every segment, a full walk for the contiguous bytes)."""

    def __init__(self) -> None:
        self.origin = None
        self.segments: dict[int, bytes] = {}
        self.start = 0
        self.consumed = False
        self.append_at = 0

    def add(self, data: bytes, seq) -> bool:
        if seq is None:
            offset = self.append_at
        else:
            if self.origin is None:
                self.origin = seq & 0xFFFFFFFF
            offset = ((seq - self.origin + 2**31) % 2**32) - 2**31
        end = offset + len(data)
        self.append_at = max(self.append_at, end)
        if self.consumed and end <= self.start:
            return True
        if self.segments:
            low = min(min(self.segments), offset) if not self.consumed else self.start
            high = max(max(s + len(d) for s, d in self.segments.items()), end)
            if high - low > naming.MAX_STREAM_BYTES or len(self.segments) >= naming.MAX_STREAM_SEGMENTS:
                return False
        elif len(data) > naming.MAX_STREAM_BYTES:
            return False
        if len(data) > len(self.segments.get(offset, b"")):
            self.segments[offset] = data
        return True

    def start_offset(self):
        if not self.segments:
            return self.start if self.consumed else None
        return self.start if self.consumed else min(self.segments)

    def contiguous(self) -> bytes:
        if not self.segments:
            return b""
        start = self.start if self.consumed else min(self.segments)
        out, cursor = bytearray(), start
        for offset in sorted(self.segments):
            data = self.segments[offset]
            if offset > cursor:
                break
            if offset + len(data) > cursor:
                out += data[cursor - offset :]
                cursor = offset + len(data)
        return bytes(out)

    def consume(self, count: int) -> None:
        if count <= 0 or not self.segments:
            return
        start = self.start if self.consumed else min(self.segments)
        self.start = start + count
        self.consumed = True
        self.segments = {o: d for o, d in self.segments.items() if o + len(d) > self.start}


@pytest.mark.parametrize("seed", range(300))
def test_tcp_stream_matches_the_plain_model(seed: int) -> None:
    import random

    rng = random.Random(seed)
    stream, model = naming._TcpStream(), _ModelStream()
    base = rng.choice([0, 1000, 2**32 - 50])
    for _ in range(rng.randint(1, 12)):
        action = rng.random()
        if action < 0.15:
            count = rng.randint(0, 40)
            stream.consume(count)
            model.consume(count)
        else:
            seq = None if action < 0.2 else (base + rng.randint(-30, 120)) % 2**32
            data = rng.randbytes(rng.choice([0, 1, 5, 20, 60]))
            if rng.random() < 0.05:
                data = bytes(naming.MAX_STREAM_BYTES + 1)
            assert stream.add(data, seq) == model.add(data, seq)
        assert stream.contiguous() == model.contiguous()
        assert stream.start_offset() == model.start_offset()


def test_hostname_and_address_caches_answer_like_the_first_call() -> None:
    assert normalise_hostname("Example.ORG.") == "example.org"
    assert normalise_hostname("Example.ORG.") == "example.org"
    assert normalise_hostname("bad..name") is None and normalise_hostname("bad..name") is None
    assert naming._address_key("2001:0db8::0001") == "2001:db8::1" == naming._address_key("2001:0db8::0001")
    assert naming._address_key("not an ip") is None


def test_fast_naming_constructor_fills_every_field_in_order() -> None:
    import dataclasses

    from inspector.naming import FlowNaming

    values = ("tls", "example.org", "sni", ("Example.org",), (("alpn", "h2"),))
    built = naming._new_naming(*values)
    assert built == FlowNaming(*values)
    assert [getattr(built, f.name) for f in dataclasses.fields(FlowNaming)] == list(values)
