"""Host names a server certificate claims: SAN dNSNames and the subject CN of the leaf.

Used when a TLS 1.2-or-older / DTLS 1.0-1.2 flow has no SNI: the Certificate message travels in
clear (RFC 5246 §7.4.2) and its names say which host the server claims to be. SAN dNSName is
RFC 5280 §4.2.1.6; the CN fallback is the legacy practice RFC 6125 §6.4.4 describes.

Weakness: a certificate is what the server presented, not proof of identity (nothing validates the
chain), and wildcard or multi-domain certificates name many hosts; the first name is a guess.
"""

from __future__ import annotations

import functools


class CertificateError(ValueError):
    """The DER bytes are not a readable X.509 certificate; the reason is in ``.reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Certificates already read, by their DER bytes. Every connection to the same server presents
# the same certificate, and a capture holds many connections to a few servers, while X.509
# parsing is the costliest step of naming a TLS 1.2 flow. Bounded; each entry is the
# certificate's bytes (a few KB) and its names.
CERTIFICATE_CACHE_SIZE = 512


def certificate_names(der: bytes) -> tuple[str, ...]:
    """SAN dNSNames in certificate order, then the subject CN if not already listed.

    Raises CertificateError only. ``cryptography`` raises ValueError and a few library-specific
    exceptions for malformed DER and extensions; every one of them is converted here because the
    bytes come from the network. A certificate seen before is answered from a bounded cache
    (the same names, or the same error).
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


def _read_names(der: bytes) -> tuple[str, ...]:
    # Imported at the first certificate: ~25 ms of module code that a capture of TLS 1.3 and QUIC
    # flows (whose certificates travel encrypted) never needs, in every process that names flows.
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        certificate = x509.load_der_x509_certificate(der)
    except Exception as exc:  # noqa: BLE001 - untrusted DER, any parse failure is "bad_der"
        raise CertificateError("bad_der") from exc
    names: list[str] = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names.extend(str(name) for name in san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    except Exception:  # noqa: BLE001 - malformed extensions in untrusted input
        pass
    try:
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = attribute.value
            common_name = value if isinstance(value, str) else value.decode("latin-1")
            if common_name not in names:
                names.append(common_name)
    except Exception as exc:  # noqa: BLE001 - malformed subject in untrusted input
        if not names:
            raise CertificateError("bad_subject") from exc
    return tuple(names)
