"""QUIC client Initial packets: remove their protection and read the TLS ClientHello inside.

Any on-path observer can remove Initial protection: the keys derive from the client's Destination
Connection ID and a salt published per version (RFC 9001 §5.2; §7: "Initial packets are not
protected with a secret key"). This module does that for:

- QUIC v1 (RFC 9000 / RFC 9001), QUIC v2 (RFC 9369: Initial type bits 0b01, own salt, ``quicv2 ``
  labels), IETF drafts 22-34 (0xff000016..0xff000022; salts per protocol-facts.md §3.6),
- Facebook mvfst 0xfaceb001 (draft-22 salt) and 0xfaceb002 / 0xfaceb00e (draft-23..28 salt)
  — the mapping nDPI ``quic.c`` (``get_u8_quic_ver``) uses,
- Google QUIC Q050 / T050 / T051, whose Initials use the IETF long header and protection with
  Google's own salts (nDPI ``quic.c`` ``quic_derive_initial_secrets``); Q050 carries a gQUIC CHLO
  (see ``gquic.py``), T05x a TLS ClientHello in gQUIC CRYPTO frames.

Pipeline per datagram (RFC 9000 §12.2, §17.2; RFC 9001 §5.3-5.4): walk the coalesced long-header
packets by their Length field; for each client Initial remove header protection (AES-128-ECB on a
16-byte sample), decrypt the payload (AEAD_AES_128_GCM, 16-byte tag), read the frames (PADDING,
PING, ACK, CRYPTO, CONNECTION_CLOSE are the only ones allowed in Initials, RFC 9000 §12.4 Table 3),
and reassemble CRYPTO data by offset (Chrome "chaos protection" splits and reorders it). The
reassembled handshake bytes go to ``tls.parse_client_hello``.

Untrusted input: every length is checked before use; only ``QuicError`` is raised by the parsing
helpers, and ``QuicInitialCollector.feed`` / ``parse_gquic`` never raise. Work per datagram is
bounded by its size (a handful of key derivations and one AEAD per packet); memory per flow by the
64 KiB CRYPTO cap.

Weaknesses: a ClientHello larger than 64 KiB or spread over more than ``max_datagrams`` datagrams
is not recovered; with ECH the SNI is the provider's public name (protocol-facts.md §3.7); versions
not listed here (future or private) are counted as ``unknown_version`` and skipped.
"""

from __future__ import annotations

import collections
import functools
import re
from dataclasses import dataclass
from hashlib import sha256 as _sha256
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from inspector.dissect import ErrorCounts, gquic
from inspector.dissect.gquic import GQuicError, GQuicHello
from inspector.dissect.tls import ClientHello, TlsError, parse_client_hello
from inspector.fastinit import frozen_init, positional_constructor

__all__ = [
    "QuicError",
    "QuicInitialCollector",
    "InitialKeys",
    "GQuicHello",
    "is_quic_long_header",
    "parse_gquic",
    "read_varint",
    "initial_secret",
    "client_initial_keys",
    "hkdf_expand_label",
    "header_protection_mask",
    "decrypt_client_initial",
    "parse_initial_frames",
    "parse_gquic_crypto_frames",
    "parse_long_header",
    "LongHeader",
    "CryptoReassembler",
    "VersionProfile",
    "version_profile",
]


class QuicError(ValueError):
    """A QUIC packet cannot be read; ``.reason`` is a short snake_case word for the manifest.

    Reasons: ``truncated``, ``empty``, ``not_long_header`` (short header or not QUIC),
    ``unknown_version``, ``version_negotiation``, ``bad_cid_length``, ``bad_token_length``,
    ``bad_packet_length``, ``no_initial`` (only 0-RTT/Handshake packets), ``too_short_for_sample``,
    ``too_short_for_tag``, ``decrypt_failed``, ``unexpected_frame``, ``bad_ack_frame``,
    ``bad_crypto_length``, ``bad_close_frame``, ``crypto_too_large``, ``not_client_hello``,
    ``no_chlo``. ``QuicInitialCollector.errors`` also counts ``tls.TlsError`` and
    ``gquic.GQuicError`` reasons, and ``internal_error`` for a bug (never expected).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- versions and their Initial salts -------------------------------------------------------

VERSION_1: Final = 0x00000001
VERSION_2: Final = 0x6B3343CF
VERSION_Q050: Final = 0x51303530
VERSION_T050: Final = 0x54303530
VERSION_T051: Final = 0x54303531

# RFC 9001 §5.2.
SALT_V1: Final = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
# RFC 9369 §3.3.1.
SALT_V2: Final = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
# draft-ietf-quic-tls-22 §5.2; draft-23..28; draft-29..32 (protocol-facts.md §3.6, nDPI quic.c).
SALT_DRAFT_22: Final = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")
SALT_DRAFT_23: Final = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
SALT_DRAFT_29: Final = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
# Google QUIC versions with IETF-style Initial protection (nDPI quic.c).
SALT_Q050: Final = bytes.fromhex("504574efd066fe2f9d945cfcdbd3a7f0d3b56b45")
SALT_T050: Final = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
SALT_T051: Final = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")

_LABELS_V1: Final = ("quic key", "quic iv", "quic hp")
_LABELS_V2: Final = ("quicv2 key", "quicv2 iv", "quicv2 hp")

# Long-header packet types (RFC 9000 §17.2 Table 5; RFC 9369 §3.2 remaps them for v2).
PACKET_INITIAL: Final = "initial"
PACKET_0RTT: Final = "0rtt"
PACKET_HANDSHAKE: Final = "handshake"
PACKET_RETRY: Final = "retry"
_TYPES_V1: Final = (PACKET_INITIAL, PACKET_0RTT, PACKET_HANDSHAKE, PACKET_RETRY)
_TYPES_V2: Final = (PACKET_RETRY, PACKET_INITIAL, PACKET_0RTT, PACKET_HANDSHAKE)

# RFC 9000 §17.2: connection IDs of version-1 style long headers are at most 20 bytes.
MAX_CID_LENGTH: Final = 20


@dataclass(frozen=True, slots=True)
class VersionProfile:
    """How one QUIC version protects and frames its Initial packets.

    name        human name for reports ("v1", "draft-29", "mvfst-27", "T051")
    salts       Initial salts to try in order (more than one only for greased versions)
    labels      HKDF labels for key, iv, hp
    types       long-header packet type for each value of bits 0x30
    frames      "ietf" (RFC 9000 §19) or "gquic" (Google's frame numbering, CRYPTO = 0x08)
    payload     "tls" (ClientHello) or "chlo" (Google crypto handshake message)
    """

    name: str
    salts: tuple[bytes, ...]
    labels: tuple[str, str, str]
    types: tuple[str, str, str, str]
    frames: str
    payload: str


def _ietf(name: str, salt: bytes) -> VersionProfile:
    return VersionProfile(name, (salt,), _LABELS_V1, _TYPES_V1, "ietf", "tls")


def version_profile(version: int) -> VersionProfile | None:
    """The Initial-protection profile of ``version``, or None when it is not one we can open.

    The profiles are built once at import (``_build_profile`` holds the rules and sources).
    """
    profile = _PROFILES.get(version)
    if profile is None and version & 0x0F0F0F0F == 0x0A0A0A0A:
        return _GREASED
    return profile


def _build_profile(version: int) -> VersionProfile | None:
    """The Initial-protection profile of ``version``, or None when it is not one we can open.

    Sources: RFC 9001 §5.2 (v1), RFC 9369 §3 (v2), protocol-facts.md §3.6 (draft salts), nDPI
    ``quic.c`` (mvfst and Google versions). Weakness: greased versions 0x?a?a?a?a (RFC 9000 §15)
    have no salt of their own; the v1 and draft-29 salts are tried and the AEAD tag decides.
    """
    if version == VERSION_1:
        return _ietf("v1", SALT_V1)
    if version == VERSION_2:
        return VersionProfile("v2", (SALT_V2,), _LABELS_V2, _TYPES_V2, "ietf", "tls")
    if version >> 8 == 0xFF0000:
        draft = version & 0xFF
        if 22 <= draft <= 34:
            if draft == 22:
                salt = SALT_DRAFT_22
            elif draft <= 28:
                salt = SALT_DRAFT_23
            elif draft <= 32:
                salt = SALT_DRAFT_29
            else:  # drafts 33 and 34 already use the RFC 9001 salt
                salt = SALT_V1
            return _ietf(f"draft-{draft}", salt)
        return None
    if version == 0xFACEB001:
        return _ietf("mvfst-22", SALT_DRAFT_22)
    if version in (0xFACEB002, 0xFACEB00E):
        return _ietf("mvfst-27", SALT_DRAFT_23)
    if version == VERSION_Q050:
        return VersionProfile("Q050", (SALT_Q050,), _LABELS_V1, _TYPES_V1, "gquic", "chlo")
    if version == VERSION_T050:
        return VersionProfile("T050", (SALT_T050,), _LABELS_V1, _TYPES_V1, "gquic", "tls")
    if version == VERSION_T051:
        return VersionProfile("T051", (SALT_T051,), _LABELS_V1, _TYPES_V1, "gquic", "tls")
    if version & 0x0F0F0F0F == 0x0A0A0A0A:
        return VersionProfile(
            "greased", (SALT_V1, SALT_DRAFT_29), _LABELS_V1, _TYPES_V1, "ietf", "tls"
        )
    return None


_PROFILES: Final[dict[int, VersionProfile]] = {
    version: profile
    for version in (
        VERSION_1,
        VERSION_2,
        *(0xFF000000 | draft for draft in range(22, 35)),
        0xFACEB001,
        0xFACEB002,
        0xFACEB00E,
        VERSION_Q050,
        VERSION_T050,
        VERSION_T051,
    )
    if (profile := _build_profile(version)) is not None
}
_GREASED: Final = _build_profile(0x0A0A0A0A)


# --- primitive readers ----------------------------------------------------------------------


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Variable-length integer at ``pos`` (RFC 9000 §16): 2-bit length prefix, 1/2/4/8 bytes.

    Returns (value, position after it); raises QuicError("truncated") past the end.
    """
    if pos >= len(data):
        raise QuicError("truncated")
    length = 1 << (data[pos] >> 6)
    end = pos + length
    if end > len(data):
        raise QuicError("truncated")
    value = int.from_bytes(data[pos:end], "big") & ((1 << (8 * length - 2)) - 1)
    return value, end


# --- key schedule (RFC 9001 §5.1-5.2, RFC 8446 §7.1) ----------------------------------------


def hkdf_expand_label(secret: bytes, label: str, length: int, context: bytes = b"") -> bytes:
    """TLS 1.3 HKDF-Expand-Label with SHA-256 (RFC 8446 §7.1): info = HkdfLabel{length,
    "tls13 " + label, context}."""
    return _hkdf_expand(secret, _hkdf_label(label, length, context), length)


@functools.lru_cache(maxsize=32)
def _hkdf_label(label: str, length: int, context: bytes) -> bytes:
    """The HkdfLabel structure (RFC 8446 §7.1); QUIC uses a handful of fixed labels, so the
    encoded structures are kept rather than rebuilt for every connection."""
    full_label = b"tls13 " + label.encode("ascii")
    return (
        length.to_bytes(2, "big")
        + bytes([len(full_label)])
        + full_label
        + bytes([len(context)])
        + context
    )


# HMAC's inner and outer pads (RFC 2104 §2) as byte translation tables: XOR-ing a 64-byte key
# block with 0x36 / 0x5C is then one C call.
_IPAD: Final = bytes(value ^ 0x36 for value in range(256))
_OPAD: Final = bytes(value ^ 0x5C for value in range(256))
_SHA256_BLOCK: Final = 64


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104): H((K ^ opad) | H((K ^ ipad) | message)).

    Written on ``hashlib.sha256``: QUIC Initial keys take five HMACs with five different keys,
    and the standard library's OpenSSL one-shot HMAC spends more setting up each key than the
    two hashes cost. Keys longer than the block are hashed first, as RFC 2104 §2 says.
    """
    if len(key) > _SHA256_BLOCK:
        key = _sha256(key).digest()
    block = key.ljust(_SHA256_BLOCK, b"\x00")
    inner = _sha256(block.translate(_IPAD) + message).digest()
    return _sha256(block.translate(_OPAD) + inner).digest()


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3) with HMAC-SHA256: T(i) = HMAC(PRK, T(i-1) | info | i).

    QUIC Initial keys need one block each (<= 32 bytes); building a ``cryptography`` HKDF
    object per label cost more than the hashing itself.
    """
    if length <= 32:  # one block, T(1) (every QUIC Initial key)
        return _hmac_sha256(prk, info + b"\x01")[:length]
    if length > 255 * 32:
        raise ValueError("HKDF-Expand output is limited to 255 hash lengths")
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        block = _hmac_sha256(prk, block + info + bytes([counter]))
        output += block
        counter += 1
    return output[:length]


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2): PRK = HMAC-SHA256(key=salt, msg=IKM)."""
    return _hmac_sha256(salt, ikm)


def initial_secret(salt: bytes, dcid: bytes) -> bytes:
    """initial_secret = HKDF-Extract(initial_salt, the client Destination Connection ID).

    Source: RFC 9001 §5.2.
    """
    return _hkdf_extract(salt, dcid)


@dataclass(frozen=True, slots=True, init=False)
class InitialKeys:
    """Client Initial packet-protection keys: AEAD key (16), IV (12), header-protection key (16)."""

    key: bytes
    iv: bytes
    hp: bytes

    def __init__(self, key: bytes, iv: bytes, hp: bytes) -> None:
        # Built per packet or per flow: assigned field by field so that compiled this is native code.
        self.key = key  # type: ignore[misc]
        self.iv = iv  # type: ignore[misc]
        self.hp = hp  # type: ignore[misc]


frozen_init(InitialKeys)


def client_initial_keys(
    dcid: bytes, salt: bytes = SALT_V1, labels: tuple[str, str, str] = _LABELS_V1
) -> InitialKeys:
    """Keys protecting the client's Initial packets.

    Source: RFC 9001 §5.2; RFC 9369 §3.3 for the v2 labels. Every output fits one HKDF-Expand
    block, so each is one HMAC over the encoded label (``_expand_infos``) and the counter 1.
    """
    client_in, key_info, iv_info, hp_info = _expand_infos(labels)
    client_secret = _hmac_sha256(_hmac_sha256(salt, dcid), client_in)
    # Three HMACs under the same key: its padded inner and outer blocks are hashed once and
    # the hash states copied (RFC 2104 §2 computes each HMAC from exactly these two prefixes).
    block = client_secret.ljust(_SHA256_BLOCK, b"\x00")
    inner, outer = _sha256(block.translate(_IPAD)), _sha256(block.translate(_OPAD))

    def expand(info: bytes) -> bytes:
        inner_hash = inner.copy()
        inner_hash.update(info)
        outer_hash = outer.copy()
        outer_hash.update(inner_hash.digest())
        return outer_hash.digest()

    return InitialKeys(key=expand(key_info)[:16], iv=expand(iv_info)[:12], hp=expand(hp_info)[:16])


@functools.lru_cache(maxsize=8)
def _expand_infos(labels: tuple[str, str, str]) -> tuple[bytes, bytes, bytes, bytes]:
    """HKDF-Expand inputs (HkdfLabel, RFC 8446 §7.1, followed by the block counter 1) for the
    client secret (32 bytes) and the key (16), iv (12) and hp (16) of one label set."""
    key_label, iv_label, hp_label = labels
    return (
        _hkdf_label("client in", 32, b"") + b"\x01",
        _hkdf_label(key_label, 16, b"") + b"\x01",
        _hkdf_label(iv_label, 12, b"") + b"\x01",
        _hkdf_label(hp_label, 16, b"") + b"\x01",
    )


def header_protection_mask(hp_key: bytes, sample: bytes, cipher: str = "aes") -> bytes:
    """The 5-byte header-protection mask (RFC 9001 §5.4.3 AES, §5.4.4 ChaCha20).

    AES: mask = AES-ECB(hp_key, sample)[:5]. ChaCha20: counter = sample[0:4] (little-endian),
    nonce = sample[4:16], mask = ChaCha20(hp_key, counter, nonce, zeros(5)); the ``cryptography``
    ChaCha20 takes exactly that 16-byte counter||nonce. Initials always use AES (RFC 9001 §5.3).
    """
    if len(sample) != 16:
        raise QuicError("bad_sample")
    if cipher == "aes":
        encryptor = Cipher(algorithms.AES(hp_key), modes.ECB()).encryptor()
        return (encryptor.update(sample) + encryptor.finalize())[:5]
    if cipher == "chacha20":
        encryptor = Cipher(algorithms.ChaCha20(hp_key, sample), mode=None).encryptor()
        return encryptor.update(bytes(5))
    raise QuicError("unknown_hp_cipher")


# --- long header ----------------------------------------------------------------------------


def is_quic_long_header(datagram: bytes) -> bool:
    """True when the datagram starts like a QUIC long-header packet of a version we know.

    Checks the header form bit 0x80 (RFC 8999 §5.1, the version-independent invariant) and that
    the 32-bit version is v1, v2, an IETF draft, mvfst, a greased version or Google Q046/Q05x/T05x,
    and that the connection-ID lengths fit. Weakness: a random UDP payload passes with
    probability about 2^-25 (one version value out of 2^32 times a few hundred known values).
    """
    if len(datagram) < 7 or not datagram[0] & 0x80:
        return False
    version = int.from_bytes(datagram[1:5], "big")
    if version_profile(version) is None and not gquic.is_gquic_version(version):
        return False
    if version == gquic.VERSION_Q046:
        return True  # Q046 packs both CID lengths into one byte (see gquic.py)
    dcid_len = datagram[5]
    if dcid_len > MAX_CID_LENGTH or 6 + dcid_len >= len(datagram):
        return False
    return datagram[6 + dcid_len] <= MAX_CID_LENGTH


@dataclass(frozen=True, slots=True, init=False)
class LongHeader:
    """One long-header packet inside a datagram (RFC 9000 §17.2).

    start / end     byte range of the whole packet in the datagram
    pn_offset       where the (protected) packet number starts
    first_byte      still protected (low 4 bits masked)
    """

    start: int
    end: int
    pn_offset: int
    first_byte: int
    version: int
    packet_type: str
    dcid: bytes
    scid: bytes
    token: bytes

    def __init__(
        self,
        start: int,
        end: int,
        pn_offset: int,
        first_byte: int,
        version: int,
        packet_type: str,
        dcid: bytes,
        scid: bytes,
        token: bytes,
    ) -> None:
        # Built per packet or per flow: assigned field by field so that compiled this is native code.
        self.start = start  # type: ignore[misc]
        self.end = end  # type: ignore[misc]
        self.pn_offset = pn_offset  # type: ignore[misc]
        self.first_byte = first_byte  # type: ignore[misc]
        self.version = version  # type: ignore[misc]
        self.packet_type = packet_type  # type: ignore[misc]
        self.dcid = dcid  # type: ignore[misc]
        self.scid = scid  # type: ignore[misc]
        self.token = token  # type: ignore[misc]


frozen_init(LongHeader)


def parse_long_header(datagram: bytes, start: int, profile: VersionProfile) -> LongHeader:
    """Reads the long header at ``start``; the packet ends at pn_offset + Length (RFC 9000 §17.2).

    Retry has no Length and takes the rest of the datagram. Raises QuicError on any field that
    does not fit.
    """
    pos = start
    if len(datagram) - pos < 7:
        raise QuicError("truncated")
    first_byte = datagram[pos]
    if not first_byte & 0x80:
        raise QuicError("not_long_header")
    version = int.from_bytes(datagram[pos + 1 : pos + 5], "big")
    pos += 5
    dcid_len = datagram[pos]
    pos += 1
    if dcid_len > MAX_CID_LENGTH or pos + dcid_len >= len(datagram):
        raise QuicError("bad_cid_length")
    dcid = datagram[pos : pos + dcid_len]
    pos += dcid_len
    scid_len = datagram[pos]
    pos += 1
    if scid_len > MAX_CID_LENGTH or pos + scid_len > len(datagram):
        raise QuicError("bad_cid_length")
    scid = datagram[pos : pos + scid_len]
    pos += scid_len
    packet_type = profile.types[(first_byte >> 4) & 0x03]
    token = b""
    if packet_type == PACKET_RETRY:
        end = len(datagram)
        return _new_long_header(start, end, pos, first_byte, version, packet_type, dcid, scid, b"")
    if packet_type == PACKET_INITIAL:
        token_len, pos = read_varint(datagram, pos)
        if token_len > len(datagram) - pos:
            raise QuicError("bad_token_length")
        token = datagram[pos : pos + token_len]
        pos += token_len
    length, pos = read_varint(datagram, pos)
    if length > len(datagram) - pos:
        raise QuicError("bad_packet_length")
    return _new_long_header(start, pos + length, pos, first_byte, version, packet_type, dcid, scid, token)


#: ``LongHeader(...)`` at the cost of the fewest calls (``fastinit``).
_new_long_header: Final = positional_constructor(LongHeader)


def decrypt_client_initial(packet: bytes, pn_offset: int, keys: InitialKeys) -> tuple[int, bytes]:
    """Removes header and payload protection from one whole Initial packet.

    ``packet`` is exactly the packet (header through tag); ``pn_offset`` is where its packet
    number starts. Returns (packet number, plaintext frames). RFC 9001 §5.4.2: the sample starts
    4 bytes after pn_offset whatever the real packet-number length; §5.3: nonce = iv XOR the
    left-padded packet number, AAD = the unprotected header. Initial packet numbers start at 0
    and stay small, so the truncated number is used as is (no §A.3 expansion is needed for the
    first packets of a connection). Raises QuicError("decrypt_failed") when the tag does not
    verify (wrong version salt, wrong DCID, or a corrupted packet).
    """
    return _decrypt_initial(packet, pn_offset, _InitialCipher(keys))


_ECB: Final = modes.ECB()  # a mode object holds no key or state: one serves every cipher


class _InitialCipher:
    """The AES contexts of one set of Initial keys, built once and reused for every packet.

    AES-ECB keeps no state between blocks, so one encryptor serves every 16-byte
    header-protection sample (RFC 9001 §5.4.3); it is built on the first packet whose header
    ``_decrypt_initial`` does not guess (most flows never need it). AESGCM holds only the key
    (RFC 9001 §5.3).
    """

    __slots__ = ("iv", "hp_key", "hp_encryptor", "aead")

    def __init__(self, keys: InitialKeys) -> None:
        self.iv = int.from_bytes(keys.iv, "big")
        self.hp_key = keys.hp
        self.hp_encryptor: Any = None
        self.aead = AESGCM(keys.key)

    def header_mask(self, sample: bytes) -> bytes:
        """AES-ECB(hp key, sample): the first 5 bytes are the header-protection mask."""
        encryptor = self.hp_encryptor
        if encryptor is None:
            encryptor = self.hp_encryptor = Cipher(algorithms.AES(self.hp_key), _ECB).encryptor()
        return encryptor.update(sample)


#: The packet number ``_decrypt_initial`` tries first, in one byte: Chromium numbers its
#: first Initial 1. Of the benchmark capture's 10,043 decrypted client Initials, 9,545 carried 1
#: in one byte, 332 carried 0 in one byte, 83 carried 0 in four bytes and 83 carried 5.
GUESSED_PACKET_NUMBER: Final = 1


def _decrypt_initial(packet: bytes, pn_offset: int, cipher: _InitialCipher) -> tuple[int, bytes]:
    """``decrypt_client_initial`` with prepared AES contexts (same checks, same errors).

    The header is first tried unprotected as the most common one (``GUESSED_PACKET_NUMBER`` in
    one byte, reserved bits 0): the AEAD authenticates the whole unprotected header, packet
    number included, as associated data (RFC 9001 §5.3, §5.4.1), so a wrong guess fails the
    tag check and cannot pass (a false pass needs a 128-bit tag forged); then the header
    protection is removed as always. Only the low four bits of a long header's first byte
    are protected (§5.4.1), so the guessed first byte is the received one's top four bits.
    Why: removing the protection needs an AES-ECB context per set of keys, ~3.7 µs to build
    through ``cryptography``, where a failed guess costs one AEAD attempt, ~2 µs; 95% of the
    benchmark's QUIC flows need no context.
    Weakness: a client that numbers its first Initial otherwise pays the failed attempt on
    every packet.
    """
    if len(packet) < pn_offset + 4 + 16:
        raise QuicError("too_short_for_sample")
    # The sample check leaves at least 19 bytes after a one-byte packet number: the tag fits.
    guessed_header = bytes([packet[0] & 0xF0]) + packet[1:pn_offset] + bytes([GUESSED_PACKET_NUMBER])
    guessed_nonce = (cipher.iv ^ GUESSED_PACKET_NUMBER).to_bytes(12, "big")
    try:
        return GUESSED_PACKET_NUMBER, cipher.aead.decrypt(guessed_nonce, packet[pn_offset + 1 :], guessed_header)
    except InvalidTag:
        pass
    mask = cipher.header_mask(packet[pn_offset + 4 : pn_offset + 20])
    first_byte = packet[0] ^ (mask[0] & 0x0F)
    pn_length = (first_byte & 0x03) + 1
    pn_end = pn_offset + pn_length
    packet_number = int.from_bytes(packet[pn_offset:pn_end], "big") ^ int.from_bytes(
        mask[1 : 1 + pn_length], "big"
    )
    if len(packet) - pn_end < 16:
        raise QuicError("too_short_for_tag")
    header = bytes([first_byte]) + packet[1:pn_offset] + packet_number.to_bytes(pn_length, "big")
    nonce = (cipher.iv ^ packet_number).to_bytes(12, "big")
    try:
        plaintext = cipher.aead.decrypt(nonce, packet[pn_end:], header)
    except InvalidTag:
        raise QuicError("decrypt_failed") from None
    return packet_number, plaintext


# --- frames ---------------------------------------------------------------------------------


def _skip_ack(data: bytes, pos: int, with_ecn: bool) -> int:
    """ACK frame body (RFC 9000 §19.3): Largest, Delay, Range Count, First Range, ranges, [ECN]."""
    _, pos = read_varint(data, pos)  # largest acknowledged
    _, pos = read_varint(data, pos)  # ack delay
    range_count, pos = read_varint(data, pos)
    _, pos = read_varint(data, pos)  # first ack range
    # Each range is two varints (>= 2 bytes), so a lying count runs out of bytes quickly.
    if range_count > (len(data) - pos) // 2:
        raise QuicError("bad_ack_frame")
    for _ in range(range_count):
        _, pos = read_varint(data, pos)  # gap
        _, pos = read_varint(data, pos)  # ack range length
    if with_ecn:
        for _ in range(3):  # ECT0, ECT1, ECN-CE counts
            _, pos = read_varint(data, pos)
    return pos


def _read_crypto(data: bytes, pos: int) -> tuple[int, bytes, int]:
    end = len(data)
    # Offset and Length varints (RFC 9000 §19.6). The one- and two-byte forms (prefix 0b00 and
    # 0b01: values below 2^14, every offset and length of an Initial) are read inline.
    first = data[pos] if pos < end else 0xFF
    if first < 0x40:
        offset = first
        pos += 1
    elif first < 0x80 and pos + 2 <= end:
        offset = (first & 0x3F) << 8 | data[pos + 1]
        pos += 2
    else:
        offset, pos = read_varint(data, pos)
    first = data[pos] if pos < end else 0xFF
    if first < 0x40:
        length = first
        pos += 1
    elif first < 0x80 and pos + 2 <= end:
        length = (first & 0x3F) << 8 | data[pos + 1]
        pos += 2
    else:
        length, pos = read_varint(data, pos)
    if length > end - pos:
        raise QuicError("bad_crypto_length")
    stop = pos + length
    return offset, data[pos:stop], stop


# A run of PADDING (0x00) and PING (0x01) frames, each one byte long (RFC 9000 §19.1, §19.2).
_PADDING_OR_PING_RUN: Final = re.compile(rb"[\x00\x01]+")


def parse_initial_frames(plaintext: bytes) -> list[tuple[int, bytes]]:
    """CRYPTO fragments (offset, data) of an Initial payload in IETF framing, in packet order.

    Initial packets may carry only PADDING 0x00, PING 0x01, ACK 0x02/0x03, CRYPTO 0x06 and
    CONNECTION_CLOSE 0x1c (RFC 9000 §12.4 Table 3, §19); anything else is a protocol violation
    and raises QuicError("unexpected_frame"). Chrome interleaves PADDING/PING/CRYPTO at random
    ("chaos protection", protocol-facts.md §3.6), so every frame is walked, not just the first.
    """
    fragments: list[tuple[int, bytes]] = []
    pos = 0
    end = len(plaintext)
    skip = _PADDING_OR_PING_RUN.match
    append = fragments.append
    while pos < end:
        frame_type = plaintext[pos]
        if frame_type == 0x06:
            offset, chunk, pos = _read_crypto(plaintext, pos + 1)
            append((offset, chunk))
            continue
        if frame_type == 0x00 or frame_type == 0x01:
            # One-byte frames: jump the whole run (a client pads its Initial to 1200 bytes).
            run = skip(plaintext, pos)  # matches at least the byte just read
            pos = run.end() if run is not None else pos + 1
            continue
        pos += 1
        if frame_type in (0x02, 0x03):
            pos = _skip_ack(plaintext, pos, frame_type == 0x03)
        elif frame_type == 0x1C:
            _, pos = read_varint(plaintext, pos)  # error code
            _, pos = read_varint(plaintext, pos)  # frame type
            reason_len, pos = read_varint(plaintext, pos)
            if reason_len > end - pos:
                raise QuicError("bad_close_frame")
            pos += reason_len
        else:
            raise QuicError("unexpected_frame")
    return fragments


def parse_gquic_crypto_frames(plaintext: bytes) -> list[tuple[int, bytes]]:
    """CRYPTO fragments of a Q050/T050/T051 Initial payload (Google's frame numbering).

    These versions keep gQUIC frame types inside IETF-style packets: 0x08 CRYPTO (varint offset,
    varint length, data; nDPI ``quic.c`` ``get_crypto_data``, confirmed by gquic.pcap and
    quic_q50.pcap), 0x00 PADDING to the end of the packet, 0x07 PING (gQUIC's numbering,
    PADDING 0x00 ... STOP_WAITING 0x06, PING 0x07, as public gQUIC parsers list it). Weakness: ACK frames (0x40-0x7f, only in a retransmitted CHLO) are not parsed and
    end the walk with QuicError("unexpected_frame").
    """
    fragments: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(plaintext):
        frame_type = plaintext[pos]
        pos += 1
        if frame_type == 0x00:
            break
        if frame_type == 0x07:
            continue
        if frame_type == 0x08:
            offset, chunk, pos = _read_crypto(plaintext, pos)
            fragments.append((offset, chunk))
        else:
            raise QuicError("unexpected_frame")
    return fragments


# --- CRYPTO stream reassembly ---------------------------------------------------------------

MAX_CRYPTO_BYTES: Final = 64 * 1024


class CryptoReassembler:
    """The Initial CRYPTO stream rebuilt from fragments at any offset, in any order.

    Holds at most ``MAX_CRYPTO_BYTES`` (a ClientHello with post-quantum key shares is ~2 KiB;
    64 KiB is generous). Overlapping retransmissions are allowed; the first copy wins, as a
    conforming sender repeats the same bytes (RFC 9000 §19.6).

    Which bytes have arrived is kept as a mask, one byte per stream byte (1 = arrived), so that
    finding the uncovered runs of a fragment and the first gap are ``bytearray.find`` calls
    rather than a Python walk over ranges (Chrome splits each Initial's CRYPTO data into about
    seven fragments).
    """

    __slots__ = ("_buffer", "_arrived", "_cap")

    def __init__(self, cap: int = MAX_CRYPTO_BYTES) -> None:
        self._buffer = bytearray()
        self._arrived = bytearray()  # 1 where the byte at that offset has arrived
        self._cap = cap

    def add(self, offset: int, data: bytes) -> None:
        if not data:
            return
        end = offset + len(data)
        if end > self._cap:
            raise QuicError("crypto_too_large")
        buffer, arrived = self._buffer, self._arrived
        if end > len(buffer):
            grow = bytes(end - len(buffer))
            buffer += grow
            arrived += grow
        # Write only the runs not yet arrived, so the first copy of every byte wins.
        gap = arrived.find(0, offset, end)
        while gap != -1:
            stop = arrived.find(1, gap, end)
            if stop == -1:
                stop = end
            buffer[gap:stop] = data[gap - offset : stop - offset]
            arrived[gap:stop] = b"\x01" * (stop - gap)
            if stop == end:
                break
            gap = arrived.find(0, stop, end)

    @property
    def empty(self) -> bool:
        """No byte has arrived yet."""
        return not self._arrived

    @property
    def cap(self) -> int:
        return self._cap

    def contiguous(self) -> bytes:
        """The bytes from offset 0 up to the first gap."""
        gap = self._arrived.find(0)
        if gap == -1:
            gap = len(self._arrived)
        return bytes(self._buffer[:gap])


def _whole_client_hello(fragments: list[tuple[int, bytes]], cap: int) -> bytes | None:
    """The CRYPTO stream of a connection's first Initial when that one packet settles the
    ClientHello, without building a reassembler; None when the reassembler is needed.

    Settles: its fragments, sorted by offset, tile [0, n) with neither gap nor overlap (Chrome's
    chaos protection only reorders them), and the stream is not a ClientHello or holds it whole
    (``_try_client_hello`` then ends the collection, so no later fragment is ever merged).
    The tiled bytes are then exactly what ``CryptoReassembler.contiguous`` would return.
    """
    chunks = sorted([(offset, chunk) for offset, chunk in fragments if chunk], key=_offset_of)
    position = 0
    for offset, chunk in chunks:
        if offset != position:
            return None
        position += len(chunk)
    if position > cap or position < 4:
        return None
    stream = b"".join([chunk for _, chunk in chunks])
    if stream[0] == 1 and 4 + int.from_bytes(stream[1:4], "big") > position:
        return None  # the hello continues in a later packet
    return stream


def _offset_of(fragment: tuple[int, bytes]) -> int:
    return fragment[0]


# --- Google QUIC entry point ----------------------------------------------------------------


def parse_gquic(datagram: bytes) -> GQuicHello | None:
    """The CHLO of a Google QUIC client packet: SNI, version and user agent; None otherwise.

    Handles the gQUIC public header (Q043 and older), Q046 (IETF-like header, cleartext gQUIC
    payload) — both in ``gquic.py`` — and Q050 (IETF Initial protection with Google's salt,
    gQUIC CHLO inside). For T050/T051 the hello is TLS: its SNI is returned here too (user agent
    empty) when the whole ClientHello fits in this one datagram. Never raises.
    Source: nDPI ``quic.c`` (header and frame layouts), checked against the shared captures.
    Weakness: a CHLO split over several packets is not reassembled (Chrome pads the first CHLO
    into one full-size packet, so this is rare).
    """
    try:
        hello = gquic.parse_cleartext(datagram)
        if hello is not None:
            return hello
        if len(datagram) < 7 or not datagram[0] & 0x80:
            return None
        version = int.from_bytes(datagram[1:5], "big")
        if version not in (VERSION_Q050, VERSION_T050, VERSION_T051):
            return None
        collector = QuicInitialCollector(max_datagrams=1)
        collector.feed(datagram)
        if collector.gquic_hello is not None:
            return collector.gquic_hello
        if collector.client_hello is not None:
            return GQuicHello(
                server_name=collector.client_hello.server_name,
                version=gquic.version_name(version),
                user_agent="",
            )
        return None
    except (QuicError, GQuicError, TlsError):
        return None


# --- the per-flow collector -----------------------------------------------------------------


class QuicInitialCollector:
    """Collects the client's Initial packets of one UDP flow until its ClientHello is whole.

    Feed it the client->server datagrams in capture order. After each ``feed``:

    client_hello    the TLS ClientHello once the CRYPTO stream holds all of it (IETF QUIC, T05x)
    gquic_hello     the gQUIC CHLO (Q043 and older, Q046, Q050) when the flow is Google QUIC
    version         the QUIC version of the first Initial (or gQUIC packet) seen
    done            a hello was found, the CRYPTO stream is hopeless, or ``max_datagrams`` were fed
    errors          Counter of failure reasons (``decrypt_failed``, ``unknown_version`` ...)

    ``feed`` never raises. Keys come from each packet's own DCID and, failing that, from the
    first Initial's DCID: a client that has heard the server's Initial switches DCID but keeps
    the original Initial keys (RFC 9000 §7.2, RFC 9001 §5.2).
    Weakness: only the first ``max_datagrams`` datagrams are examined (default 8); a capture
    that starts after the handshake yields nothing.
    """

    __slots__ = (
        "client_hello",
        "gquic_hello",
        "version",
        "done",
        "errors",
        "max_datagrams",
        "_datagrams",
        "_crypto",
        "_first_dcid",
        "_keys",
    )

    def __init__(self, max_datagrams: int = 8) -> None:
        self.client_hello: ClientHello | None = None
        self.gquic_hello: GQuicHello | None = None
        self.version: int | None = None
        self.done = False
        self.errors: collections.Counter[str] = ErrorCounts()
        self.max_datagrams = max_datagrams
        self._datagrams = 0
        self._crypto = CryptoReassembler()
        self._first_dcid: bytes | None = None
        self._keys: dict[tuple[bytes, bytes, str], _InitialCipher] = {}

    @property
    def server_name(self) -> str:
        """SNI from whichever hello was found, "" when none (or the client sent none)."""
        if self.client_hello is not None:
            return self.client_hello.server_name
        if self.gquic_hello is not None:
            return self.gquic_hello.server_name
        return ""

    @property
    def alpn(self) -> tuple[str, ...]:
        """ALPN offered in the TLS ClientHello (gQUIC CHLOs carry none)."""
        return self.client_hello.alpn if self.client_hello is not None else ()

    def feed(self, datagram: bytes) -> None:
        if self.done:
            return
        self._datagrams += 1
        try:
            self._feed(bytes(datagram))
        except (QuicError, GQuicError, TlsError) as error:
            self.errors[error.reason] += 1
        except Exception:  # noqa: BLE001 - the contract is "never raises"; fuzz tests pin this at 0
            self.errors["internal_error"] += 1
        if self._datagrams >= self.max_datagrams:
            self.done = True

    def _feed(self, datagram: bytes) -> None:
        if not datagram:
            raise QuicError("empty")
        if not datagram[0] & 0x80:
            hello = gquic.parse_cleartext(datagram)
            if hello is not None:
                self._found_gquic(hello, gquic.public_header_version(datagram))
                return
            raise QuicError("not_long_header")
        version = int.from_bytes(datagram[1:5], "big") if len(datagram) >= 5 else 0
        if version == gquic.VERSION_Q046:
            hello = gquic.parse_cleartext(datagram)
            if hello is None:
                raise QuicError("no_chlo")
            self._found_gquic(hello, version)
            return
        pos = 0
        decrypted = 0
        first_error: QuicError | None = None
        while pos < len(datagram) and not self.done:
            if not datagram[pos] & 0x80:
                break  # a short-header packet takes the rest of the datagram (RFC 9000 §12.2)
            if len(datagram) - pos < 7:
                raise QuicError("truncated")
            version = int.from_bytes(datagram[pos + 1 : pos + 5], "big")
            profile = version_profile(version)
            if profile is None:
                raise QuicError("version_negotiation" if version == 0 else "unknown_version")
            header = parse_long_header(datagram, pos, profile)
            pos = header.end
            if header.packet_type != PACKET_INITIAL:
                continue
            if self.version is None:
                self.version = version
            try:
                self._open_initial(datagram[header.start : header.end], header, profile)
                decrypted += 1
            except (QuicError, TlsError, GQuicError) as error:
                # One bad packet must not hide a good one coalesced after it.
                first_error = first_error or QuicError(error.reason)
        if first_error is not None:
            raise first_error
        if not decrypted and not self.done:
            raise QuicError("no_initial")

    def _open_initial(self, packet: bytes, header: LongHeader, profile: VersionProfile) -> None:
        if self._first_dcid is None:
            self._first_dcid = header.dcid
        pn_offset = header.pn_offset - header.start
        last_error = QuicError("decrypt_failed")
        dcids = [header.dcid]
        if header.dcid != self._first_dcid:
            dcids.append(self._first_dcid)
        for dcid in dcids:
            for salt in profile.salts:
                cipher = self._cipher_for(dcid, salt, profile)
                try:
                    _, plaintext = _decrypt_initial(packet, pn_offset, cipher)
                except QuicError as error:
                    last_error = error
                    continue
                self._consume_plaintext(plaintext, profile, header.version)
                return
        raise last_error

    def _cipher_for(self, dcid: bytes, salt: bytes, profile: VersionProfile) -> _InitialCipher:
        cache_key = (dcid, salt, profile.labels[0])
        cipher = self._keys.get(cache_key)
        if cipher is None:
            if len(self._keys) >= 8:  # bounded: a flow has one or two DCIDs in its Initials
                self._keys.clear()
            cipher = _InitialCipher(client_initial_keys(dcid, salt, profile.labels))
            self._keys[cache_key] = cipher
        return cipher

    def _consume_plaintext(self, plaintext: bytes, profile: VersionProfile, version: int) -> None:
        if profile.frames == "gquic":
            try:
                fragments = parse_gquic_crypto_frames(plaintext)
            except QuicError:
                # Which numbering each T05x build used is not pinned down by a source we have
                # (nDPI expects gQUIC CRYPTO 0x08); an authenticated payload may try both.
                fragments = parse_initial_frames(plaintext)
        else:
            fragments = parse_initial_frames(plaintext)
        stream = None
        if profile.payload == "tls" and self._crypto.empty:
            stream = _whole_client_hello(fragments, self._crypto.cap)
        if stream is None:
            for offset, chunk in fragments:
                self._crypto.add(offset, chunk)
            stream = self._crypto.contiguous()
        if profile.payload == "chlo":
            self._try_chlo(stream, version)
        else:
            self._try_client_hello(stream)

    def _try_chlo(self, stream: bytes, version: int) -> None:
        """Q050: the CHLO is read once its whole tag/value map has arrived."""
        if len(stream) >= 4 and stream[:4] != b"CHLO":
            self.done = True
            raise QuicError("no_chlo")
        total = gquic.chlo_length(stream)
        if total is None or len(stream) < total:
            if total is not None and total > MAX_CRYPTO_BYTES:
                self.done = True
                raise QuicError("crypto_too_large")
            return
        hello = gquic.parse_chlo(stream[:total], gquic.version_name(version))
        if hello is not None:
            self._found_gquic(hello, version)

    def _try_client_hello(self, stream: bytes) -> None:
        if len(stream) < 4:
            return
        if stream[0] != 1:
            self.done = True
            raise QuicError("not_client_hello")
        message_length = 4 + int.from_bytes(stream[1:4], "big")
        if message_length > MAX_CRYPTO_BYTES:
            self.done = True
            raise QuicError("crypto_too_large")
        if len(stream) < message_length:
            return
        self.done = True
        self.client_hello = parse_client_hello(stream[:message_length])

    def _found_gquic(self, hello: GQuicHello, version: int | None) -> None:
        self.gquic_hello = hello
        if self.version is None:
            self.version = version
        self.done = True
