"""TLS handshake parsing from hand-built byte literals (RFC 8446 §4.1.2 layouts built with struct)."""

from __future__ import annotations

import datetime
import ssl
import struct

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from inspector.dissect import tls
from inspector.dissect.tls import (
    ClientHello,
    TlsError,
    TlsHandshakeReader,
    parse_certificate_list,
    parse_client_hello,
    parse_server_hello,
)

# --- builders (also used by test_dtls, test_naming and the fuzz tests) ------------------------


def extension(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def sni_extension(name: bytes) -> bytes:
    entry = struct.pack("!BH", 0, len(name)) + name
    return extension(0, struct.pack("!H", len(entry)) + entry)


def alpn_extension(*protocols: bytes) -> bytes:
    body = b"".join(struct.pack("!B", len(p)) + p for p in protocols)
    return extension(16, struct.pack("!H", len(body)) + body)


def supported_versions_extension(*versions: int) -> bytes:
    body = b"".join(struct.pack("!H", v) for v in versions)
    return extension(43, struct.pack("!B", len(body)) + body)


def use_srtp_extension(*profiles: int) -> bytes:
    body = b"".join(struct.pack("!H", p) for p in profiles)
    return extension(14, struct.pack("!H", len(body)) + body + b"\x00")


def handshake(msg_type: int, body: bytes, dtls: bool = False, message_seq: int = 0) -> bytes:
    length = len(body).to_bytes(3, "big")
    if dtls:
        header = bytes([msg_type]) + length + struct.pack("!H", message_seq)
        return header + (0).to_bytes(3, "big") + length + body
    return bytes([msg_type]) + length + body


def client_hello(
    extensions: bytes = b"",
    *,
    version: int = 0x0303,
    dtls: bool = False,
    cookie: bytes = b"",
    session_id: bytes = b"\x11" * 32,
    with_extensions_block: bool = True,
) -> bytes:
    body = struct.pack("!H", version) + bytes(range(32))
    body += struct.pack("!B", len(session_id)) + session_id
    if dtls:
        body += struct.pack("!B", len(cookie)) + cookie
    suites = struct.pack("!HHH", 0x1301, 0xC02B, 0x002F)
    body += struct.pack("!H", len(suites)) + suites + b"\x01\x00"
    if with_extensions_block:
        body += struct.pack("!H", len(extensions)) + extensions
    return handshake(1, body, dtls=dtls)


def server_hello(version: int = 0x0303, extensions: bytes = b"", random: bytes = b"\x22" * 32,
                 dtls: bool = False, message_seq: int = 0) -> bytes:
    body = struct.pack("!H", version) + random + b"\x00" + struct.pack("!HB", 0x1301, 0)
    body += struct.pack("!H", len(extensions)) + extensions
    return handshake(2, body, dtls=dtls, message_seq=message_seq)


def certificate_message(*ders: bytes, dtls: bool = False, message_seq: int = 1) -> bytes:
    entries = b"".join(len(d).to_bytes(3, "big") + d for d in ders)
    return handshake(11, len(entries).to_bytes(3, "big") + entries, dtls=dtls,
                     message_seq=message_seq)


def record(payload: bytes, content_type: int = 22, version: int = 0x0301) -> bytes:
    return struct.pack("!BHH", content_type, version, len(payload)) + payload


def make_certificate(common_name: str, dns_names: tuple[str, ...] = ()) -> bytes:
    """A self-signed certificate (DER) made for the test with ``cryptography``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1234)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    from cryptography.hazmat.primitives.serialization import Encoding

    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


ZOOM_HELLO_EXTENSIONS = (
    sni_extension(b"zoomfrn99mmr.zoom.us")
    + extension(10, b"\x00\x04\x00\x1d\x00\x17")
    + alpn_extension(b"h2", b"http/1.1")
    + supported_versions_extension(0x0A0A, 0x0304, 0x0303)
)

# --- ClientHello ------------------------------------------------------------------------------


def test_client_hello_fields() -> None:
    hello = parse_client_hello(client_hello(ZOOM_HELLO_EXTENSIONS))
    assert hello == ClientHello(
        server_name="zoomfrn99mmr.zoom.us",
        alpn=("h2", "http/1.1"),
        legacy_version=0x0303,
        supported_versions=(0x0A0A, 0x0304, 0x0303),
        has_ech=False,
        use_srtp=(),
        extensions=(0, 10, 16, 43),
    )


def test_client_hello_from_openssl() -> None:
    """A real ClientHello produced by the local OpenSSL through ssl.MemoryBIO."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    connection = context.wrap_bio(incoming, outgoing, server_hostname="meet.google.com")
    with pytest.raises(ssl.SSLWantReadError):
        connection.do_handshake()
    first_record = outgoing.read()
    assert first_record[0] == 22
    hello = parse_client_hello(first_record[5:])
    assert hello.server_name == "meet.google.com"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.extensions[0] == 0
    assert 0x0304 in hello.supported_versions


def test_ech_and_legacy_esni_are_flagged() -> None:
    assert parse_client_hello(client_hello(extension(0xFE0D, b"\x00" * 8))).has_ech
    assert parse_client_hello(client_hello(extension(0xFFCE, b"\x01"))).has_ech
    assert not parse_client_hello(client_hello(extension(23, b""))).has_ech


def test_no_sni_no_extensions_block() -> None:
    hello = parse_client_hello(client_hello(with_extensions_block=False, version=0x0301))
    assert hello.server_name == ""
    assert hello.extensions == ()
    assert hello.legacy_version == 0x0301


def test_sni_with_only_non_host_name_entry_is_empty() -> None:
    entry = struct.pack("!BH", 7, 3) + b"abc"
    ext = extension(0, struct.pack("!H", len(entry)) + entry)
    assert parse_client_hello(client_hello(ext)).server_name == ""


def test_garbage_after_the_message_is_ignored() -> None:
    message = client_hello(sni_extension(b"a.example"))
    assert parse_client_hello(message + b"\xff" * 40).server_name == "a.example"


def test_every_truncation_raises_tls_error_only() -> None:
    message = client_hello(ZOOM_HELLO_EXTENSIONS)
    for cut in range(len(message)):
        with pytest.raises(TlsError):
            parse_client_hello(message[:cut])


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (client_hello(b"\x00\x00\x00\x09abc"), "bad_extension_length"),
        (client_hello(b"\x00"), "bad_extension_length"),
        (client_hello(extension(16, b"\x00\x05\x02h2")), "bad_alpn"),
        (client_hello(extension(16, b"\x00\x01\x00")), "bad_alpn"),
        (client_hello(extension(0, b"\x00\x09\x00\x00\x03abc")), "bad_sni"),
        (client_hello(extension(43, b"\x03\x03\x04\x03")), "bad_supported_versions"),
        (client_hello(extension(14, b"\x00\x02\x00")), "bad_use_srtp"),
        (client_hello(session_id=b"\x00" * 33), "bad_session_id"),
        (server_hello(), "unexpected_handshake_type"),
        (b"\x01\x00\x00\x50" + b"\x03\x03", "truncated"),
    ],
)
def test_malformed_client_hello_reasons(message: bytes, reason: str) -> None:
    with pytest.raises(TlsError) as caught:
        parse_client_hello(message)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


def test_dtls_client_hello_with_cookie_and_use_srtp() -> None:
    message = client_hello(
        use_srtp_extension(0x0007, 0x0001) + extension(23, b""),
        version=0xFEFD,
        dtls=True,
        cookie=b"\xc0" * 20,
    )
    hello = parse_client_hello(message, dtls=True)
    assert hello.legacy_version == 0xFEFD
    assert hello.use_srtp == (0x0007, 0x0001)
    assert hello.extensions == (14, 23)


def test_dtls_fragment_header_must_be_whole() -> None:
    message = bytearray(client_hello(dtls=True, version=0xFEFD))
    message[11] -= 1  # fragment_length != length
    with pytest.raises(TlsError, match="fragmented"):
        parse_client_hello(bytes(message), dtls=True)


# --- ServerHello, Certificate ------------------------------------------------------------------


def test_server_hello_tls13_selected_version() -> None:
    hello = parse_server_hello(server_hello(extensions=extension(43, b"\x03\x04")))
    assert hello.legacy_version == 0x0303
    assert hello.selected_version == 0x0304
    assert hello.cipher_suite == 0x1301
    assert not hello.is_hello_retry
    assert tls.version_name(hello.selected_version) == "1.3"


def test_server_hello_retry_request_is_flagged() -> None:
    message = server_hello(extensions=extension(43, b"\x03\x04"),
                           random=tls.HELLO_RETRY_REQUEST_RANDOM)
    assert parse_server_hello(message).is_hello_retry


def test_server_hello_tls12_without_extensions() -> None:
    body = struct.pack("!H", 0x0303) + b"\x00" * 32 + b"\x00" + struct.pack("!HB", 0xC02F, 0)
    hello = parse_server_hello(handshake(2, body))
    assert hello.selected_version == 0x0303
    assert hello.extensions == ()


def test_certificate_list_leaf_first() -> None:
    chain = parse_certificate_list(certificate_message(b"leaf-der", b"ca-der"))
    assert chain == (b"leaf-der", b"ca-der")


def test_certificate_list_lying_length() -> None:
    message = handshake(11, b"\x00\x00\x10" + b"\x00\x00\x05abc")
    with pytest.raises(TlsError, match="bad_certificate_list"):
        parse_certificate_list(message)


# --- record layer ------------------------------------------------------------------------------


def test_reader_handles_message_split_over_records_and_several_per_record() -> None:
    hello = server_hello()
    certificate = certificate_message(b"x" * 10)
    stream = (
        record(hello + certificate[:7], version=0x0303)
        + record(certificate[7:], version=0x0303)
        + record(b"\x01", content_type=20, version=0x0303)
        + record(b"secret" * 4, content_type=23, version=0x0303)
    )
    reader = TlsHandshakeReader()
    assert reader.feed(stream[:9]) == []  # not even a whole record yet
    assert reader.feed(stream) == [hello, certificate]
    assert reader.encrypted


def test_reader_emits_messages_of_a_record_still_arriving() -> None:
    # A TLS 1.2 server's first flight in one record (ServerHello, Certificate): the ServerHello
    # is whole in the first segment, long before the record ends.
    hello = server_hello()
    certificate = certificate_message(b"x" * 3000)
    stream = record(hello + certificate, version=0x0303) + record(b"\x01", content_type=20, version=0x0303)
    reader = TlsHandshakeReader()
    first_segment = stream[: 5 + len(hello) + 100]
    assert reader.feed(first_segment) == [hello]
    assert not reader.encrypted
    assert reader.feed(stream[:-6]) == [certificate]  # the record is complete, the next not begun
    assert not reader.encrypted
    assert reader.feed(stream) == []
    assert reader.encrypted


def test_reader_caps_a_record_still_arriving() -> None:
    # Two 54-byte messages in one record, against a 100-byte cap: the first is read, and the
    # cap trips as the second's bytes arrive, before its record is whole.
    message = b"\x0b\x00\x00\x32" + b"\x00" * 50
    stream = record(message + message)
    reader = TlsHandshakeReader(max_bytes=100)
    assert reader.feed(stream[:70]) == [message]
    with pytest.raises(TlsError, match="handshake_too_large"):
        reader.feed(stream[:110])


def test_reader_rejects_non_tls_record() -> None:
    with pytest.raises(TlsError, match="not_tls_record"):
        TlsHandshakeReader().feed(b"GET / HTTP/1.1\r\n")


def test_reader_caps_handshake_size() -> None:
    reader = TlsHandshakeReader(max_bytes=100)
    with pytest.raises(TlsError, match="handshake_too_large"):
        reader.feed(record(b"\x01\x00\x10\x00" + b"\x00" * 60) + record(b"\x00" * 60))


def test_grease_and_version_names() -> None:
    assert tls.is_grease(0x0A0A) and tls.is_grease(0xFAFA)
    assert not tls.is_grease(0x0A1A)
    assert tls.version_name(0xFEFD) == "dtls1.2"
    assert tls.version_name(0x7F1C) == "0x7f1c"


def test_certificate_builder_round_trip() -> None:
    from inspector.dissect.x509names import CertificateError, certificate_names

    der = make_certificate("www.example.org", ("example.org", "*.example.org"))
    assert certificate_names(der) == ("example.org", "*.example.org", "www.example.org")
    assert certificate_names(make_certificate("WebRTC")) == ("WebRTC",)
    with pytest.raises(CertificateError, match="bad_der"):
        certificate_names(b"\x30\x03\x02\x01\x01")


def test_lenient_parse_keeps_extensions_before_the_damage() -> None:
    from inspector.dissect.tls import parse_client_hello_lenient

    damaged = client_hello(
        sni_extension(b"e.crashlytics.com") + extension(16, b"\xb8\x89\xa5") + b"\x47\xe3\x4f"
    )
    with pytest.raises(TlsError, match="bad_extension_length"):
        parse_client_hello(damaged)
    hello = parse_client_hello_lenient(damaged)
    assert hello.server_name == "e.crashlytics.com"
    assert hello.alpn == ()  # the damaged ALPN is skipped
    assert hello.extensions == (0, 16)
    # Cut short: what is there is still read.
    assert parse_client_hello_lenient(damaged[:84]).extensions == ()  # block cut to one byte
    with pytest.raises(TlsError):
        parse_client_hello_lenient(damaged[:30])


def test_repeated_server_name_extension_first_wins() -> None:
    hello = parse_client_hello(client_hello(sni_extension(b"first.example")
                                            + sni_extension(b"second.example")))
    assert hello.server_name == "first.example"
    assert hello.extensions == (0, 0)


def test_fast_client_hello_constructor_fills_every_field_in_order() -> None:
    import dataclasses

    values = ("example.org", ("h2",), 0x0303, (0x0304,), True, (1,), (0, 16, 43))
    built = tls._new_client_hello(*values)
    assert built == ClientHello(*values)
    assert [getattr(built, f.name) for f in dataclasses.fields(ClientHello)] == list(values)


def test_repeated_extension_first_copy_counts_and_ech_anywhere_marks() -> None:
    def ext(ext_type: int, body: bytes) -> bytes:
        return struct.pack("!HH", ext_type, len(body)) + body

    def sni(name: bytes) -> bytes:
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        return struct.pack("!H", len(entry)) + entry

    extensions = ext(0, sni(b"first.example")) + ext(0xFE0D, b"") + ext(0, sni(b"second.example"))
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(extensions)) + extensions
    hello = parse_client_hello(b"\x01" + len(body).to_bytes(3, "big") + body)
    assert hello.server_name == "first.example"
    assert hello.has_ech
    assert hello.extensions == (0, 0xFE0D, 0)


def test_certificate_names_never_load_cryptographys_x509_module() -> None:
    """Certificates are read by the module's own DER reader: cryptography's x509 module (~22 ms
    of import a process) is loaded neither with the namer nor at the first certificate."""
    import subprocess
    import sys

    der = make_certificate("WebRTC", ("media.example.org",))
    code = f"""
import sys
import inspector.naming
from inspector.dissect.x509names import certificate_names
print(certificate_names({der!r}), "cryptography.x509" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["('media.example.org', 'WebRTC') False"]


def test_certificate_names_cache_repeats_names_and_errors() -> None:
    from inspector.dissect.x509names import CertificateError, certificate_names

    der = make_certificate("cache.example.org")
    assert certificate_names(der) == certificate_names(bytearray(der)) == ("cache.example.org",)
    for _ in range(2):
        with pytest.raises(CertificateError) as error:
            certificate_names(b"\x30\x03\x02\x01\x02")
        assert error.value.reason == "bad_der"
