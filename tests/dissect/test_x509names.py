"""Certificate names read from DER here against ``cryptography``'s x509 reading of the same bytes."""

from __future__ import annotations

import datetime
import ipaddress
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID, ObjectIdentifier

from inspector.dissect import x509names
from inspector.dissect.x509names import CertificateError

CN = NameOID.COMMON_NAME
A = x509.NameAttribute
_KEY = ec.generate_private_key(ec.SECP256R1())
_NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def reference_names(der: bytes) -> tuple[str, ...] | str:
    """What the module returned when it read certificates with ``cryptography.x509``: the names,
    or the reason of its CertificateError."""
    try:
        with warnings.catch_warnings():  # a damaged serial number reads as negative: warned of
            warnings.simplefilter("ignore")
            certificate = x509.load_der_x509_certificate(der)
    except Exception:  # noqa: BLE001
        return "bad_der"
    names: list[str] = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names.extend(str(name) for name in san.value.get_values_for_type(x509.DNSName))
    except Exception:  # noqa: BLE001 - no SAN, or one that does not parse
        pass
    try:
        for attribute in certificate.subject.get_attributes_for_oid(CN):
            value = attribute.value
            common_name = value if isinstance(value, str) else value.decode("latin-1")
            if common_name not in names:
                names.append(common_name)
    except Exception:  # noqa: BLE001
        if not names:
            return "bad_subject"
    return tuple(names)


def read(der: bytes) -> tuple[str, ...] | str:
    try:
        return x509names._read_names(der)  # not the cached entry point: every call reads
    except CertificateError as error:
        return error.reason


def certificate(subject, alt_names=None, critical=False, other_extensions=()) -> bytes:
    name = x509.Name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(1234)
        .not_valid_before(_NOW)
        .not_valid_after(_NOW + datetime.timedelta(days=30))
    )
    if alt_names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=critical)
    for extension in other_extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(_KEY, hashes.SHA256()).public_bytes(Encoding.DER)


def der(tag: int, *parts: bytes) -> bytes:
    contents = b"".join(parts)
    n = len(contents)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + contents


def version_1_certificate(common_name: bytes) -> bytes:
    """A v1 certificate (no version field, no extensions: RFC 5280 §4.1.2.1), made by hand."""
    ec_key = der(0x30, der(0x06, bytes.fromhex("2a8648ce3d0201")), der(0x06, bytes.fromhex("2a8648ce3d030107")))
    point = _KEY.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    name = der(0x30, der(0x31, der(0x30, der(0x06, b"\x55\x04\x03"), der(0x0C, common_name))))
    algorithm = der(0x30, der(0x06, bytes.fromhex("2a8648ce3d040302")))  # ecdsa-with-SHA256
    tbs = der(
        0x30,
        der(0x02, b"\x05"),
        algorithm,
        name,
        der(0x30, der(0x17, b"260101000000Z"), der(0x17, b"270101000000Z")),
        name,
        der(0x30, ec_key, der(0x03, b"\x00" + point)),
    )
    return der(0x30, tbs, algorithm, der(0x03, b"\x00" + der(0x30, der(0x02, b"\x01"), der(0x02, b"\x01"))))


CERTIFICATES = {
    "cn and san": certificate([A(CN, "www.example.org")], [x509.DNSName("example.org"), x509.DNSName("*.example.org")]),
    "cn only": certificate([A(CN, "WebRTC")]),
    "san only": certificate([A(NameOID.ORGANIZATION_NAME, "Org")], [x509.DNSName("only.san.example")]),
    "two cns": certificate([A(CN, "a.example"), A(CN, "b.example")]),
    "bmp cn": certificate([A(CN, "bmp.example", _type=_ASN1Type.BMPString)]),
    "universal cn": certificate([A(CN, "uni.example", _type=_ASN1Type.UniversalString)]),
    "printable cn": certificate([A(CN, "print.example", _type=_ASN1Type.PrintableString)]),
    "teletex cn": certificate([A(CN, "t61.example", _type=_ASN1Type.T61String)]),
    "utf-8 cn": certificate([A(CN, "bücher.example")]),
    "cn repeats a san": certificate([A(CN, "dup.example")], [x509.DNSName("dup.example")]),
    "multi-valued rdn": certificate([x509.RelativeDistinguishedName([A(CN, "multi.example"), A(NameOID.ORGANIZATION_NAME, "O")])]),
    "several attributes": certificate([A(NameOID.COUNTRY_NAME, "DE"), A(NameOID.ORGANIZATION_NAME, "Ö Org"), A(CN, "z.example")]),
    "every general name": certificate(
        [A(CN, "x.example")],
        [
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
            x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
            x509.RFC822Name("a@b.example"),
            x509.DNSName("dns.example"),
            x509.UniformResourceIdentifier("https://u.example/"),
            x509.RegisteredID(ObjectIdentifier("1.2.3.4")),
            x509.OtherName(ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), der(0x0C, b"upn@example")),
            x509.DirectoryName(x509.Name([A(CN, "dir.example")])),
            x509.DNSName("second.example"),
        ],
        critical=True,
    ),
    "other extensions": certificate(
        [A(CN, "c.example")],
        [x509.DNSName("d.example")],
        other_extensions=[
            x509.BasicConstraints(ca=False, path_length=None),
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
        ],
    ),
    "version 1": version_1_certificate(b"v1.example"),
}


@pytest.mark.parametrize("name", sorted(CERTIFICATES))
def test_names_are_the_reference_parsers(name):
    der_bytes = CERTIFICATES[name]
    assert read(der_bytes) == reference_names(der_bytes)
    assert isinstance(read(der_bytes), tuple) and read(der_bytes)


def test_the_order_is_san_names_then_new_common_names():
    assert read(CERTIFICATES["cn and san"]) == ("example.org", "*.example.org", "www.example.org")
    assert read(CERTIFICATES["every general name"]) == ("dns.example", "second.example", "x.example")
    assert read(CERTIFICATES["version 1"]) == ("v1.example",)


@pytest.mark.parametrize("name", sorted(CERTIFICATES))
def test_damaged_certificates_read_as_the_reference_reads_them(name):
    """Every truncation and single-byte change: only CertificateError is raised, and the answer
    is the reference's, except where the damage is in a part the names do not need (the
    reference then refuses a certificate whose names are still read here, or, for damage in
    another extension, drops its SAN names)."""
    original = CERTIFICATES[name]
    damaged = [original[:cut] for cut in range(len(original))]
    for position in range(len(original)):
        for flip in (0x01, 0x20, 0x80):
            changed = bytearray(original)
            changed[position] ^= flip
            damaged.append(bytes(changed))
    read_where_refused = 0
    for data in damaged:
        mine, theirs = read(data), reference_names(data)
        if isinstance(theirs, str) and isinstance(mine, tuple):
            read_where_refused += 1
            continue
        if name == "other extensions" and isinstance(theirs, tuple) and isinstance(mine, tuple):
            assert set(theirs) <= set(mine), data.hex()
            continue
        assert mine == theirs, data.hex()
    # Most damage is refused or read alike; what is read anyway stays the smaller part.
    assert read_where_refused < len(damaged) / 4


def test_malformed_encodings_are_refused():
    good = CERTIFICATES["cn only"]
    for data in (
        b"",
        b"\x30",
        b"\x30\x80" + good[2:],  # indefinite length: BER, not DER
        b"\x30\x81\x05" + bytes(5),  # a long form where the short one was required
        good + b"\x00",  # trailing bytes
        b"\x30\x03\x02\x01\x01",
        b"\x1f\x01\x00",  # a high tag number
    ):
        assert read(data) == "bad_der" == reference_names(data), data.hex()


def test_subject_errors_and_san_errors():
    # A PrintableString holding "*" is refused with the structure; a UTF8String that is not
    # UTF-8 only when the subject is read, so the SAN names still stand.
    star = version_1_certificate(b"xx.example").replace(b"\x0c\x0axx.example", b"\x13\x0a*x.example")
    assert read(star) == "bad_der" == reference_names(star)
    not_utf8 = version_1_certificate(b"\xff\xfe.example")
    assert read(not_utf8) == "bad_subject" == reference_names(not_utf8)
    with_san = CERTIFICATES["cn and san"].replace(b"www.example.org", b"\xffww.example.org")
    assert read(with_san) == ("example.org", "*.example.org") == reference_names(with_san)
    # A dNSName in UTF-8 (not IA5) is kept as the reference keeps it; one that is not UTF-8
    # drops the SAN names, and the CN stays.
    utf8_dns = CERTIFICATES["cn and san"].replace(b"*.example.org", b"\xc3\xa9example.org")
    assert read(utf8_dns) == ("example.org", "\xe9example.org", "www.example.org") == reference_names(utf8_dns)
    bad_dns = CERTIFICATES["cn and san"].replace(b"*.example.org", b"\xe9.example.org")
    assert read(bad_dns) == ("www.example.org",) == reference_names(bad_dns)
    # An x400Address or ediPartyName ([3], [5]) in place of the registeredID drops them too.
    every = CERTIFICATES["every general name"]
    for replacement in (b"\xa3\x03\x30\x01\x00", b"\xa5\x03\xa1\x01\x00", b"\x83\x03\x00\x00\x00"):
        changed = every.replace(b"\x88\x03\x2a\x03\x04", replacement)
        assert changed != every
        assert read(changed) == ("x.example",) == reference_names(changed)


def test_certificate_names_answers_from_its_cache_and_raises_only_certificate_error():
    der_bytes = CERTIFICATES["cn and san"]
    assert x509names.certificate_names(der_bytes) == x509names.certificate_names(bytearray(der_bytes))
    with pytest.raises(CertificateError) as error:
        x509names.certificate_names(b"\x30\x03\x02\x01\x02")
    assert error.value.reason == "bad_der"
