"""Property tests: the naming dissectors take any bytes and raise only their own error types.

Random bytes, and mutations (byte flips, truncation, insertions) of real DNS / TLS / HTTP / DTLS
payloads pulled from the shared nDPI captures with dpkt. FlowNamer must never raise and never hit
its internal-error guard.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.dissect import dns, dtls, http, tls, x509names
from inspector.naming import FlowNamer, NameMap, normalise_hostname
from tests.dissect.test_tls import client_hello, extension, record, sni_extension

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _expect_only(error_types: tuple[type[Exception], ...], function, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        function(*args)
    except error_types as exc:
        reason = getattr(exc, "reason", "")
        assert reason and reason.replace("_", "").isalnum(), reason


def _check_all_parsers(data: bytes) -> None:
    _expect_only((dns.DnsError,), dns.parse_dns, data)
    dns.split_tcp_messages(data)
    for dtls_mode in (False, True):
        _expect_only((tls.TlsError,), tls.parse_client_hello, data, dtls_mode)
        _expect_only((tls.TlsError,), tls.parse_client_hello_lenient, data, dtls_mode)
        _expect_only((tls.TlsError,), tls.parse_server_hello, data, dtls_mode)
        _expect_only((tls.TlsError,), tls.parse_certificate_list, data, dtls_mode)
    _expect_only((tls.TlsError,), tls.TlsHandshakeReader().feed, data)
    _expect_only((http.HttpError,), http.parse_request_head, data)
    _expect_only((dtls.DtlsError,), dtls.DtlsHandshakeCollector().feed, data)
    _expect_only((x509names.CertificateError,), x509names.certificate_names, data)


def _check_namer(transport: str, server_port: int, packets: list[tuple[bool, bytes, int]]) -> None:
    namer = FlowNamer(transport, 50000, server_port)
    for index, (from_client, payload, seq) in enumerate(packets):
        namer.feed(from_client, payload, index, seq if transport == "tcp" else None)
        _ = namer.done
    result = namer.result()
    assert not any(key.startswith("naming:internal") for key in namer.errors), namer.errors
    assert result.server_name == "" or normalise_hostname(result.server_name) == result.server_name
    names = NameMap(max_addresses=16)
    for ts_ns, message in namer.dns_messages:
        names.add(message, ts_ns)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_module_errors(data: bytes) -> None:
    _check_all_parsers(data)


@FUZZ
@given(
    st.sampled_from(["tcp", "udp"]),
    st.sampled_from([53, 443, 80, 3478]),
    st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=300),
                       st.integers(0, 2**32 - 1)), max_size=12),
)
def test_flow_namer_never_raises_on_random_packets(transport, server_port, packets) -> None:  # type: ignore[no-untyped-def]
    _check_namer(transport, server_port, packets)


# --- mutations of real payloads ------------------------------------------------------------------


def _udp_tcp_payloads(path: Path):  # type: ignore[no-untyped-def]
    import dpkt

    from tests.dpkt_frames import dpkt_frames

    for _, link, frame in dpkt_frames(path):
        try:
            layer2 = dpkt.sll.SLL(frame) if link == 113 else dpkt.ethernet.Ethernet(frame)
        except (dpkt.UnpackError, IndexError):
            continue
        packet = layer2.data
        if not isinstance(packet, (dpkt.ip.IP, dpkt.ip6.IP6)):
            continue
        segment = packet.data
        if isinstance(segment, (dpkt.udp.UDP, dpkt.tcp.TCP)) and segment.data:
            yield type(segment).__name__.lower(), segment.sport, segment.dport, bytes(segment.data)


@functools.lru_cache(maxsize=1)
def _real_samples(ndpi_dir: Path) -> dict[str, tuple[bytes, ...]]:
    samples: dict[str, list[bytes]] = {"dns": [], "tls": [], "http": [], "dtls": []}
    for name in ("zoom.pcap", "teams.pcap", "webex.pcap", "dtls.pcap", "http_ipv6.pcap"):
        path = ndpi_dir / name
        if not path.exists():
            continue
        for transport, sport, dport, payload in _udp_tcp_payloads(path):
            if transport == "udp" and 53 in (sport, dport) and len(samples["dns"]) < 20:
                samples["dns"].append(payload)
            elif transport == "tcp" and tls.looks_like_tls_record(payload) and len(samples["tls"]) < 20:
                samples["tls"].append(payload)
            elif transport == "tcp" and http.looks_like_request(payload[:8]) and len(samples["http"]) < 8:
                samples["http"].append(payload)
            elif transport == "udp" and dtls.looks_like_dtls(payload) and len(samples["dtls"]) < 12:
                samples["dtls"].append(payload)
    return {kind: tuple(found) for kind, found in samples.items()}


@pytest.fixture(scope="module")
def real_samples(ndpi_dir: Path) -> dict[str, tuple[bytes, ...]]:
    samples = _real_samples(ndpi_dir)
    for kind, found in samples.items():
        assert found, f"no real {kind} payload found in the shared captures"
    return samples


@pytest.mark.shared
def test_real_samples_parse_before_mutation(real_samples) -> None:  # type: ignore[no-untyped-def]
    """The unmutated payloads are good inputs: most parse, so mutations start from valid bytes."""
    parsed_dns = sum(1 for p in real_samples["dns"] if _parses(dns.parse_dns, p))
    assert parsed_dns >= len(real_samples["dns"]) - 1
    hellos = [p for p in real_samples["tls"] if len(p) > 9 and p[5] == 1]
    assert any(_parses(tls.parse_client_hello, p[5:]) for p in hellos)
    assert all(http.parse_request_head(p) is not None for p in real_samples["http"]
               if b"\r\n\r\n" in p)


def _parses(function, data: bytes) -> bool:  # type: ignore[no-untyped-def]
    try:
        function(data)
    except ValueError:
        return False
    return True


mutations = st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255), st.sampled_from("fid")),
                     min_size=1, max_size=6)


def _mutate(payload: bytes, edits: list[tuple[int, int, str]], cut: int) -> bytes:
    data = bytearray(payload)
    for position, value, kind in edits:
        if not data:
            break
        index = position % len(data)
        if kind == "f":
            data[index] = value
        elif kind == "i":
            data[index:index] = bytes([value]) * (value % 4 + 1)
        else:
            del data[index]
    return bytes(data[: max(1, len(data) - cut)])


@pytest.mark.shared
@FUZZ
@given(data=st.data(), edits=mutations, cut=st.integers(0, 40))
def test_mutated_real_payloads(real_samples, data, edits, cut) -> None:  # type: ignore[no-untyped-def]
    kind = data.draw(st.sampled_from(sorted(real_samples)))
    payload = data.draw(st.sampled_from(real_samples[kind]))
    mutated = _mutate(payload, edits, cut)
    _check_all_parsers(mutated)
    if kind == "tls":
        _check_all_parsers(mutated[5:])  # the handshake without the record header
    transport, port = {"dns": ("udp", 53), "tls": ("tcp", 443), "http": ("tcp", 80),
                       "dtls": ("udp", 3478)}[kind]
    half = len(mutated) // 2
    packets = [(True, mutated[half:], 1000 + half), (True, mutated[:half] or b"x", 1000),
               (False, mutated, 7)]
    _check_namer(transport, port, packets)


def test_dns_long_backward_pointer_chain_terminates() -> None:
    """2000 pointers, each jumping to the previous one, are followed once each and end."""
    import struct
    import time

    question = b"\x00" + struct.pack("!HH", 1, 1)  # root name at offset 12
    chain_start = 12 + len(question) + 1 + 10  # rdata of the first answer: root owner + fixed
    chain = bytearray()
    previous = 12
    for index in range(2000):
        chain += struct.pack("!H", 0xC000 | previous)
        previous = chain_start + 2 * index
    first = b"\x00" + struct.pack("!HHIH", 99, 1, 0, len(chain)) + chain
    second = b"\x00" + struct.pack("!HHIH", 5, 1, 0, 2) + struct.pack("!H", 0xC000 | previous)
    message = struct.pack("!HHHHHH", 1, 0x8180, 1, 2, 0, 0) + question + first + second
    began = time.perf_counter()
    parsed = dns.parse_dns(message)
    assert time.perf_counter() - began < 1.0
    assert parsed.answers[1].type == 5 and parsed.answers[1].value == ""


@FUZZ
@given(
    st.binary(min_size=1, max_size=80),
    st.lists(st.tuples(st.sampled_from([0, 10, 14, 16, 43, 0xFE0D, 0x0A0A, 65000]),
                       st.binary(max_size=40)), max_size=6),
    st.lists(st.integers(1, 2000), max_size=3),
    st.permutations(range(4)),
)
def test_built_client_hellos(sni, random_extensions, cuts, order) -> None:  # type: ignore[no-untyped-def]
    """Hand-built hellos with a real SNI and random extensions, split and reordered over TCP.

    The SNI is read back exactly (latin-1) or the hello is rejected with TlsError (a random
    extension body is malformed); either way FlowNamer stays inside its contract.
    """
    extensions = sni_extension(sni) + b"".join(extension(t, d) for t, d in random_extensions)
    message = client_hello(extensions)
    try:
        hello = tls.parse_client_hello(message)
    except tls.TlsError:
        hello = None
    if hello is not None:
        assert hello.server_name == sni.decode("latin-1")
        assert hello.extensions == (0, *(t for t, _ in random_extensions))
    stream = record(message)
    points = sorted({0, len(stream), *(c % len(stream) for c in cuts)})
    pieces = [(points[i], stream[points[i] : points[i + 1]]) for i in range(len(points) - 1)]
    ordered = [pieces[i] for i in order if i < len(pieces)]
    namer = FlowNamer("tcp", 50000, 443)
    for index, (offset, piece) in enumerate(ordered):
        namer.feed(True, piece, index, 4_000_000_000 + offset)
    result = namer.result()
    assert not any(key.startswith("naming:internal") for key in namer.errors)
    lenient = tls.parse_client_hello_lenient(message)
    assert lenient.server_name == sni.decode("latin-1")
    if lenient.server_name:
        assert result.raw_names[0] == sni.decode("latin-1")
    assert result.server_name == (normalise_hostname(sni.decode("latin-1")) or "")
