"""Host names a server certificate claims: SAN dNSNames and the subject CN of the leaf.

Used when a TLS 1.2-or-older / DTLS 1.0-1.2 flow has no SNI: the Certificate message travels in
clear (RFC 5246 §7.4.2) and its names say which host the server claims to be. SAN dNSName is
RFC 5280 §4.2.1.6; the CN fallback is the legacy practice RFC 6125 §6.4.4 describes.

The DER is read here, only as far as the names need (X.690 §8.1 and §10 for the encoding,
RFC 5280 §4.1 for the layout): the certificate's outer structure, the subject, and the
extensions' list with the subjectAltName's content. ``cryptography``'s x509 module, which parses
every field, cost ~22 ms of import in every process that met a certificate, most of the time
this took; its answers are the reference of the tests, including for damaged certificates.

Weakness: a certificate is what the server presented, not proof of identity (nothing validates
the chain), and wildcard or multi-domain certificates name many hosts; the first name is a
guess. Fields the names do not need (validity, key, signature, other extensions' contents) are
not checked, so a certificate damaged only there still gives its names where a full parser
would refuse it.
"""

from __future__ import annotations

import functools


class CertificateError(ValueError):
    """The DER bytes are not a readable X.509 certificate; the reason is in ``.reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Certificates already read, by their DER bytes. Every connection to the same server presents
# the same certificate, and a capture holds many connections to a few servers. Bounded; each
# entry is the certificate's bytes (a few KB) and its names.
CERTIFICATE_CACHE_SIZE = 512

# Universal tags (X.690 §8.1.2, X.680 §8.4) and the context-specific ones of RFC 5280 §4.1.
_BOOLEAN, _INTEGER, _BIT_STRING, _OCTET_STRING, _OID = 0x01, 0x02, 0x03, 0x04, 0x06
_SEQUENCE, _SET = 0x30, 0x31
_UNIVERSAL_STRING, _BMP_STRING = 0x1C, 0x1E
_VERSION, _ISSUER_UID, _SUBJECT_UID, _EXTENSIONS = 0xA0, 0x81, 0x82, 0xA3
# GeneralName (RFC 5280 §4.2.1.6), implicitly tagged: [0] otherName, [1] rfc822Name, [2] dNSName,
# [4] directoryName (explicit), [6] uniformResourceIdentifier, [7] iPAddress, [8] registeredID.
# [3] x400Address and [5] ediPartyName are refused, as the reference parser refuses them.
_OTHER_NAME, _RFC822_NAME, _DNS_NAME, _DIRECTORY_NAME = 0xA0, 0x81, 0x82, 0xA4
_URI, _IP_ADDRESS, _REGISTERED_ID = 0x86, 0x87, 0x88
_IA5_NAMES = (_RFC822_NAME, _DNS_NAME, _URI)
# An address (4 or 16 bytes) or an address with its mask (8 or 32: name constraints' form).
_IP_LENGTHS = (4, 8, 16, 32)
# Attribute value types a Name may hold (X.520 DirectoryString and the other string and time
# types in use): OCTET STRING, UTF8String, NumericString, PrintableString, TeletexString,
# IA5String, UTCTime, GeneralizedTime, VisibleString, UniversalString, BMPString, and BIT STRING
# (x500UniqueIdentifier). Any other tag refuses the subject, as the reference parser does.
_NAME_VALUE_TAGS = frozenset((0x03, 0x04, 0x0C, 0x12, 0x13, 0x14, 0x16, 0x17, 0x18, 0x1A, 0x1C, 0x1E))
_PRINTABLE_STRING = 0x13
_WIDE_STRINGS = {_BMP_STRING: "utf-16-be", _UNIVERSAL_STRING: "utf-32-be"}
# PrintableString's characters (X.680 §41.4, Table 10).
_PRINTABLE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")
# Contents of the OIDs 2.5.4.3 (id-at-commonName, RFC 5280 Appendix A.1) and 2.5.29.17
# (id-ce-subjectAltName, §4.2.1.6).
_COMMON_NAME = b"\x55\x04\x03"
_SUBJECT_ALT_NAME = b"\x55\x1d\x11"


def certificate_names(der: bytes) -> tuple[str, ...]:
    """SAN dNSNames in certificate order, then the subject CN if not already listed.

    Raises CertificateError only: "bad_der" when the certificate's structure is not DER X.509,
    "bad_subject" when its subject cannot be read and it has no SAN names. A malformed
    subjectAltName extension gives no SAN names. A certificate seen before is answered from a
    bounded cache (the same names, or the same error).
    """
    names, error = _names_or_error(bytes(der))
    if error:
        raise CertificateError(error)
    return names


@functools.lru_cache(maxsize=CERTIFICATE_CACHE_SIZE)
def _names_or_error(der: bytes) -> tuple[tuple[str, ...], str]:
    """(names, "") or ((), reason) for ``certificate_names``: a failure is remembered too."""
    try:
        return _read_names(der), ""
    except CertificateError as exc:
        return (), exc.reason


def _element(der: bytes, pos: int, end: int, reason: str = "bad_der") -> tuple[int, int, int]:
    """(tag, first byte of the contents, end of the contents) of the element at ``pos``, which
    must lie within ``end``. One identifier byte (every tag read here has a low number) and a
    definite length in the fewest bytes, as DER requires (X.690 §10.1)."""
    if pos + 2 > end:
        raise CertificateError(reason)
    tag = der[pos]
    if tag & 0x1F == 0x1F:  # a high tag number form: nothing of a certificate's layout
        raise CertificateError(reason)
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        # 0x80 is BER's indefinite length; more than four bytes of length is past any capture.
        if count == 0 or count > 4 or pos + count > end or der[pos] == 0:
            raise CertificateError(reason)
        length = int.from_bytes(der[pos : pos + count], "big")
        if length < 0x80:  # the short form was required
            raise CertificateError(reason)
        pos += count
    if pos + length > end:
        raise CertificateError(reason)
    return tag, pos, pos + length


def _expect(der: bytes, pos: int, end: int, tag: int, reason: str = "bad_der") -> tuple[int, int]:
    """(contents start, contents end) of the element at ``pos``, which must carry ``tag``."""
    found, start, stop = _element(der, pos, end, reason)
    if found != tag:
        raise CertificateError(reason)
    return start, stop


def _read_names(der: bytes) -> tuple[str, ...]:
    # Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }
    start, end = _expect(der, 0, len(der), _SEQUENCE)
    if end != len(der):
        raise CertificateError("bad_der")
    tbs, tbs_end = _expect(der, start, end, _SEQUENCE)
    _, algorithm_end = _expect(der, tbs_end, end, _SEQUENCE)
    _, signature_end = _expect(der, algorithm_end, end, _BIT_STRING)
    if signature_end != end:
        raise CertificateError("bad_der")
    subject, extensions = _tbs_fields(der, tbs, tbs_end)
    names: list[str] = []
    if extensions is not None:
        try:
            names.extend(_san_dns_names(der, *extensions))
        except CertificateError:
            pass  # a malformed subjectAltName names nothing; the subject may still
    try:
        for value in _common_names(subject):
            if value not in names:
                names.append(value)
    except CertificateError:
        if not names:
            raise CertificateError("bad_subject") from None
    return tuple(names)


def _tbs_fields(der: bytes, pos: int, end: int) -> tuple[list[tuple[bytes, int, bytes]], tuple[int, int] | None]:
    """The subject's attributes (``_name_attributes``) and the extension list's (start, end) in
    a TBSCertificate (RFC 5280 §4.1):
    [0] version, serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo,
    [1] issuerUniqueID, [2] subjectUniqueID, [3] extensions."""
    tag, start, stop = _element(der, pos, end)
    if tag == _VERSION:
        # v1 (0, and then left out) or v3 (2) are the versions in use; v2 certificates are
        # refused as the reference parser refuses them.
        value_start, value_end = _expect(der, start, stop, _INTEGER)
        if value_end != stop or der[value_start:value_end] not in (b"\x00", b"\x02"):
            raise CertificateError("bad_der")
        tag, start, stop = _element(der, stop, end)
    if tag != _INTEGER:  # serialNumber
        raise CertificateError("bad_der")
    _, pos = _expect(der, stop, end, _SEQUENCE)  # signature
    issuer_start, pos = _expect(der, pos, end, _SEQUENCE)
    _name_attributes(der, issuer_start, pos)
    _, pos = _expect(der, pos, end, _SEQUENCE)  # validity
    subject_start, pos = _expect(der, pos, end, _SEQUENCE)
    subject = _name_attributes(der, subject_start, pos)
    _, pos = _expect(der, pos, end, _SEQUENCE)  # subjectPublicKeyInfo
    extensions = None
    for optional in (_ISSUER_UID, _SUBJECT_UID, _EXTENSIONS):
        if pos < end and der[pos] == optional:
            start, pos = _expect(der, pos, end, optional)
            if optional == _EXTENSIONS:
                extensions = _expect(der, start, pos, _SEQUENCE)
                if extensions[1] != pos:
                    raise CertificateError("bad_der")
    if pos != end:
        raise CertificateError("bad_der")
    return subject, extensions


def _san_dns_names(der: bytes, pos: int, end: int) -> list[str]:
    """dNSNames of the subjectAltName in an Extensions list (RFC 5280 §4.1, §4.2.1.6); none
    when it has no such extension. Raises CertificateError (the caller then keeps no SAN name)
    for a list holding an extension twice (§4.2: "a certificate MUST NOT include more than one
    instance of a particular extension") and for a GeneralName the reference parser refuses:
    a text one that is not UTF-8, an address of another length or with host bits past its
    mask, a malformed OID, otherName or directoryName, an x400Address or ediPartyName."""
    seen: set[bytes] = set()
    san: tuple[int, int] | None = None
    while pos < end:
        start, pos = _expect(der, pos, end, _SEQUENCE)
        # Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
        oid_start, at = _expect(der, start, pos, _OID)
        oid = der[oid_start:at]
        _check_oid(oid, "bad_der")
        if oid in seen:
            raise CertificateError("duplicate_extension")
        seen.add(oid)
        if at < pos and der[at] == _BOOLEAN:
            _, at = _expect(der, at, pos, _BOOLEAN)
        value = _expect(der, at, pos, _OCTET_STRING)
        if value[1] != pos:
            raise CertificateError("bad_der")
        if oid == _SUBJECT_ALT_NAME:
            san = value
    if san is None:
        return []
    # GeneralNames ::= SEQUENCE SIZE (1..MAX) OF GeneralName, which fills the OCTET STRING.
    pos, end = _expect(der, san[0], san[1], _SEQUENCE)
    if end != san[1]:
        raise CertificateError("bad_san")
    names = []
    while pos < end:
        tag, start, pos = _element(der, pos, end)
        raw = der[start:pos]
        if tag in _IA5_NAMES:
            # IA5String is ASCII (X.680 §41.4); the reference parser takes any UTF-8 here, so
            # a name with UTF-8 bytes is kept as it does, and other bytes refuse the extension.
            text = _decoded(raw, "utf-8", "bad_san")
            if tag == _DNS_NAME:
                names.append(text)
        elif tag == _IP_ADDRESS:
            if len(raw) not in _IP_LENGTHS:
                raise CertificateError("bad_san")
            if len(raw) in (8, 32):  # address and mask: a prefix's mask, and no host bits
                half = len(raw) // 2
                host_bits = ~int.from_bytes(raw[half:], "big") & ((1 << (8 * half)) - 1)
                if host_bits & (host_bits + 1) or int.from_bytes(raw[:half], "big") & host_bits:
                    raise CertificateError("bad_san")
        elif tag == _REGISTERED_ID:
            _check_oid(raw, "bad_san")
        elif tag == _OTHER_NAME:
            # OtherName ::= SEQUENCE { type-id OID, value [0] EXPLICIT ANY }
            oid_start, at = _expect(der, start, pos, _OID, "bad_san")
            _check_oid(der[oid_start:at], "bad_san")
            value_start, value_end = _expect(der, at, pos, 0xA0, "bad_san")
            if value_end != pos or _element(der, value_start, value_end, "bad_san")[2] != value_end:
                raise CertificateError("bad_san")
        elif tag == _DIRECTORY_NAME:
            name_start, name_end = _expect(der, start, pos, _SEQUENCE, "bad_san")
            if name_end != pos:
                raise CertificateError("bad_san")
            _common_names(_name_attributes(der, name_start, name_end))
        else:
            raise CertificateError("bad_san")
    return names


def _check_oid(raw: bytes, reason: str) -> None:
    """An OBJECT IDENTIFIER's contents as DER has them (X.690 §8.19): at least one byte, each
    subidentifier in base 128 without a leading 0x80, the last byte ending one."""
    if not raw or raw[-1] & 0x80:
        raise CertificateError(reason)
    leading = True
    for byte in raw:
        if leading and byte == 0x80:
            raise CertificateError(reason)
        leading = not byte & 0x80


def _name_attributes(der: bytes, pos: int, end: int) -> list[tuple[bytes, int, bytes]]:
    """(type OID, value tag, value contents) of each attribute of a Name (RDNSequence of SETs
    of AttributeTypeAndValue, RFC 5280 §4.1.2.4), in order; "bad_der" where the structure is
    not that (the reference parser refuses such a certificate outright)."""
    attributes = []
    while pos < end:
        rdn, pos = _expect(der, pos, end, _SET)
        while rdn < pos:
            attribute, rdn = _expect(der, rdn, pos, _SEQUENCE)
            oid_start, at = _expect(der, attribute, rdn, _OID)
            _check_oid(der[oid_start:at], "bad_der")
            tag, start, stop = _element(der, at, rdn)
            if stop != rdn:
                raise CertificateError("bad_der")
            raw = der[start:stop]
            # These three string types are checked with the structure; other values are
            # decoded only when the names are read (``_common_names``).
            if tag == _PRINTABLE_STRING and not _PRINTABLE.issuperset(raw):
                raise CertificateError("bad_der")
            if tag in _WIDE_STRINGS:
                _decoded(raw, _WIDE_STRINGS[tag], "bad_der")
            attributes.append((der[oid_start:at], tag, raw))
    return attributes


def _common_names(attributes: list[tuple[bytes, int, bytes]]) -> list[str]:
    """The commonName values among a Name's ``attributes`` (``_name_attributes``), in order.
    Every attribute's value is decoded, so that any unreadable one refuses the whole subject
    ("bad_subject"): BMPString as UTF-16 and UniversalString as UTF-32 (big-endian, X.690
    §8.23.7-8), a BIT STRING's bytes as Latin-1, any other type as UTF-8 (of which
    PrintableString and IA5String are subsets)."""
    names = []
    for oid, tag, raw in attributes:
        if tag not in _NAME_VALUE_TAGS:
            raise CertificateError("bad_subject")
        if tag in _WIDE_STRINGS:
            codec = _WIDE_STRINGS[tag]
        elif tag == _BIT_STRING:
            _check_bit_string(raw)
            codec = "latin-1"  # its bytes, the unused-bits count first
        else:
            codec = "utf-8"
        value = _decoded(raw, codec, "bad_subject")
        if oid == _COMMON_NAME:
            names.append(value)
    return names


def _decoded(raw: bytes, codec: str, reason: str) -> str:
    """``raw`` decoded as ``codec``; CertificateError(``reason``) where its bytes are not that."""
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        raise CertificateError(reason) from None


def _check_bit_string(raw: bytes) -> None:
    """A BIT STRING's contents as DER has them (X.690 §8.6, §11.2): the count of unused bits
    (0-7, 0 when there are no bits) and then the bits, the unused ones zero."""
    if not raw or raw[0] > 7 or (len(raw) == 1 and raw[0]) or (raw[0] and raw[-1] & ((1 << raw[0]) - 1)):
        raise CertificateError("bad_subject")
