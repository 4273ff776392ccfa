"""QUIC Initial decryption, CRYPTO reassembly and gQUIC CHLOs (dissect/quic.py, dissect/gquic.py).

Vectors: RFC 9001 Appendix A (v1), RFC 9369 Appendix A (v2), RFC 9000 Appendix A.1 (varints).
Crafted packets are protected here with the same RFC 9001 §5 steps, so every path past the AEAD
(coalescing, split and reordered CRYPTO, ACK frames, a second DCID) is exercised with real crypto.
"""

from __future__ import annotations

import csv
import ipaddress
import socket
from pathlib import Path

import dpkt
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from inspector.dissect import gquic
from inspector.dissect.gquic import GQuicError, GQuicHello, parse_chlo
from inspector.dissect.quic import (
    SALT_DRAFT_22,
    SALT_DRAFT_23,
    SALT_DRAFT_29,
    SALT_Q050,
    SALT_T051,
    SALT_V1,
    SALT_V2,
    CryptoReassembler,
    QuicError,
    QuicInitialCollector,
    client_initial_keys,
    decrypt_client_initial,
    header_protection_mask,
    hkdf_expand_label,
    initial_secret,
    is_quic_long_header,
    parse_gquic,
    parse_initial_frames,
    read_varint,
    version_profile,
)

RFC_DCID = bytes.fromhex("8394c8f03e515708")

# RFC 9001 Appendix A.2: the protected client Initial (1200 bytes, packet number 2).
RFC9001_CLIENT_INITIAL = bytes.fromhex(
    """
   c000000001088394c8f03e5157080000 449e7b9aec34d1b1c98dd7689fb8ec11
   d242b123dc9bd8bab936b47d92ec356c 0bab7df5976d27cd449f63300099f399
   1c260ec4c60d17b31f8429157bb35a12 82a643a8d2262cad67500cadb8e7378c
   8eb7539ec4d4905fed1bee1fc8aafba1 7c750e2c7ace01e6005f80fcb7df6212
   30c83711b39343fa028cea7f7fb5ff89 eac2308249a02252155e2347b63d58c5
   457afd84d05dfffdb20392844ae81215 4682e9cf012f9021a6f0be17ddd0c208
   4dce25ff9b06cde535d0f920a2db1bf3 62c23e596d11a4f5a6cf3948838a3aec
   4e15daf8500a6ef69ec4e3feb6b1d98e 610ac8b7ec3faf6ad760b7bad1db4ba3
   485e8a94dc250ae3fdb41ed15fb6a8e5 eba0fc3dd60bc8e30c5c4287e53805db
   059ae0648db2f64264ed5e39be2e20d8 2df566da8dd5998ccabdae053060ae6c
   7b4378e846d29f37ed7b4ea9ec5d82e7 961b7f25a9323851f681d582363aa5f8
   9937f5a67258bf63ad6f1a0b1d96dbd4 faddfcefc5266ba6611722395c906556
   be52afe3f565636ad1b17d508b73d874 3eeb524be22b3dcbc2c7468d54119c74
   68449a13d8e3b95811a198f3491de3e7 fe942b330407abf82a4ed7c1b311663a
   c69890f4157015853d91e923037c227a 33cdd5ec281ca3f79c44546b9d90ca00
   f064c99e3dd97911d39fe9c5d0b23a22 9a234cb36186c4819e8b9c5927726632
   291d6a418211cc2962e20fe47feb3edf 330f2c603a9d48c0fcb5699dbfe58964
   25c5bac4aee82e57a85aaf4e2513e4f0 5796b07ba2ee47d80506f8d2c25e50fd
   14de71e6c418559302f939b0e1abd576 f279c4b2e0feb85c1f28ff18f58891ff
   ef132eef2fa09346aee33c28eb130ff2 8f5b766953334113211996d20011a198
   e3fc433f9f2541010ae17c1bf202580f 6047472fb36857fe843b19f5984009dd
   c324044e847a4f4a0ab34f719595de37 252d6235365e9b84392b061085349d73
   203a4a13e96f5432ec0fd4a1ee65accd d5e3904df54c1da510b0ff20dcc0c77f
   cb2c0e0eb605cb0504db87632cf3d8b4 dae6e705769d1de354270123cb11450e
   fc60ac47683d7b8d0f811365565fd98c 4c8eb936bcab8d069fc33bd801b03ade
   a2e1fbc5aa463d08ca19896d2bf59a07 1b851e6c239052172f296bfb5e724047
   90a2181014f3b94a4e97d117b4381303 68cc39dbb2d198065ae3986547926cd2
   162f40a29f0c3c8745c0f50fba3852e5 66d44575c29d39a03f0cda721984b6f4
   40591f355e12d439ff150aab7613499d bd49adabc8676eef023b15b65bfc5ca0
   6948109f23f350db82123535eb8a7433 bdabcb909271a6ecbcb58b936a88cd4e
   8f2e6ff5800175f113253d8fa9ca8885 c2f552e657dc603f252e1a8e308f76f0
   be79e2fb8f5d5fbbe2e30ecadd220723 c8c0aea8078cdfcb3868263ff8f09400
   54da48781893a7e49ad5aff4af300cd8 04a6b6279ab3ff3afb64491c85194aab
   760d58a606654f9f4400e8b38591356f bf6425aca26dc85244259ff2b19c41b9
   f96f3ca9ec1dde434da7d2d392b905dd f3d1f9af93d1af5950bd493f5aa731b4
   056df31bd267b6b90a079831aaf579be 0a39013137aac6d404f518cfd4684064
   7e78bfe706ca4cf5e9c5453e9f7cfd2b 8b4c8d169a44e55c88d4a9a7f9474241
   e221af44860018ab0856972e194cd934
    """
)

# RFC 9369 Appendix A.2: the same ClientHello in a QUIC v2 Initial.
RFC9369_CLIENT_INITIAL = bytes.fromhex(
    """
   d76b3343cf088394c8f03e5157080000 449ea0c95e82ffe67b6abcdb4298b485
   dd04de806071bf03dceebfa162e75d6c 96058bdbfb127cdfcbf903388e99ad04
   9f9a3dd4425ae4d0992cfff18ecf0fdb 5a842d09747052f17ac2053d21f57c5d
   250f2c4f0e0202b70785b7946e992e58 a59ac52dea6774d4f03b55545243cf1a
   12834e3f249a78d395e0d18f4d766004 f1a2674802a747eaa901c3f10cda5500
   cb9122faa9f1df66c392079a1b40f0de 1c6054196a11cbea40afb6ef5253cd68
   18f6625efce3b6def6ba7e4b37a40f77 32e093daa7d52190935b8da58976ff33
   12ae50b187c1433c0f028edcc4c2838b 6a9bfc226ca4b4530e7a4ccee1bfa2a3
   d396ae5a3fb512384b2fdd851f784a65 e03f2c4fbe11a53c7777c023462239dd
   6f7521a3f6c7d5dd3ec9b3f233773d4b 46d23cc375eb198c63301c21801f6520
   bcfb7966fc49b393f0061d974a2706df 8c4a9449f11d7f3d2dcbb90c6b877045
   636e7c0c0fe4eb0f697545460c806910 d2c355f1d253bc9d2452aaa549e27a1f
   ac7cf4ed77f322e8fa894b6a83810a34 b361901751a6f5eb65a0326e07de7c12
   16ccce2d0193f958bb3850a833f7ae43 2b65bc5a53975c155aa4bcb4f7b2c4e5
   4df16efaf6ddea94e2c50b4cd1dfe060 17e0e9d02900cffe1935e0491d77ffb4
   fdf85290fdd893d577b1131a610ef6a5 c32b2ee0293617a37cbb08b847741c3b
   8017c25ca9052ca1079d8b78aebd4787 6d330a30f6a8c6d61dd1ab5589329de7
   14d19d61370f8149748c72f132f0fc99 f34d766c6938597040d8f9e2bb522ff9
   9c63a344d6a2ae8aa8e51b7b90a4a806 105fcbca31506c446151adfeceb51b91
   abfe43960977c87471cf9ad4074d30e1 0d6a7f03c63bd5d4317f68ff325ba3bd
   80bf4dc8b52a0ba031758022eb025cdd 770b44d6d6cf0670f4e990b22347a7db
   848265e3e5eb72dfe8299ad7481a4083 22cac55786e52f633b2fb6b614eaed18
   d703dd84045a274ae8bfa73379661388 d6991fe39b0d93debb41700b41f90a15
   c4d526250235ddcd6776fc77bc97e7a4 17ebcb31600d01e57f32162a8560cacc
   7e27a096d37a1a86952ec71bd89a3e9a 30a2a26162984d7740f81193e8238e61
   f6b5b984d4d3dfa033c1bb7e4f0037fe bf406d91c0dccf32acf423cfa1e70710
   10d3f270121b493ce85054ef58bada42 310138fe081adb04e2bd901f2f13458b
   3d6758158197107c14ebb193230cd115 7380aa79cae1374a7c1e5bbcb80ee23e
   06ebfde206bfb0fcbc0edc4ebec30966 1bdd908d532eb0c6adc38b7ca7331dce
   8dfce39ab71e7c32d318d136b6100671 a1ae6a6600e3899f31f0eed19e3417d1
   34b90c9058f8632c798d4490da498730 7cba922d61c39805d072b589bd52fdf1
   e86215c2d54e6670e07383a27bbffb5a ddf47d66aa85a0c6f9f32e59d85a44dd
   5d3b22dc2be80919b490437ae4f36a0a e55edf1d0b5cb4e9a3ecabee93dfc6e3
   8d209d0fa6536d27a5d6fbb17641cde2 7525d61093f1b28072d111b2b4ae5f89
   d5974ee12e5cf7d5da4d6a31123041f3 3e61407e76cffcdcfd7e19ba58cf4b53
   6f4c4938ae79324dc402894b44faf8af bab35282ab659d13c93f70412e85cb19
   9a37ddec600545473cfb5a05e08d0b20 9973b2172b4d21fb69745a262ccde96b
   a18b2faa745b6fe189cf772a9f84cbfc
    """
)

# RFC 9001 Appendix A.2: the unprotected CRYPTO frame; the rest of the 1162-byte payload is PADDING.
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)

LABELS_V1 = ("quic key", "quic iv", "quic hp")
LABELS_V2 = ("quicv2 key", "quicv2 iv", "quicv2 hp")


# --- helpers that build protected packets (RFC 9001 §5.3-5.4, the sender's side) -------------


def varint(value: int) -> bytes:
    """Shortest RFC 9000 §16 encoding."""
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return (0x4000 | value).to_bytes(2, "big")
    if value < 0x40000000:
        return (0x80000000 | value).to_bytes(4, "big")
    return (0xC000000000000000 | value).to_bytes(8, "big")


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def protect_initial(
    frames: bytes,
    *,
    dcid: bytes = RFC_DCID,
    scid: bytes = b"",
    key_dcid: bytes | None = None,
    packet_number: int = 0,
    pn_length: int = 2,
    version: int = 1,
    salt: bytes = SALT_V1,
    labels: tuple[str, str, str] = LABELS_V1,
    type_bits: int = 0,
    token: bytes = b"",
) -> bytes:
    """A client Initial protected as RFC 9001 §5 describes (2-byte Length field always)."""
    keys = client_initial_keys(key_dcid if key_dcid is not None else dcid, salt, labels)
    if len(frames) + pn_length < 20:
        frames = frames + bytes(20 - pn_length - len(frames))  # PADDING so a sample exists
    length = pn_length + len(frames) + 16
    first_byte = 0xC0 | (type_bits << 4) | (pn_length - 1)
    header = (
        bytes([first_byte])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + varint(len(token))
        + token
        + (0x4000 | length).to_bytes(2, "big")
    )
    pn_bytes = packet_number.to_bytes(pn_length, "big")
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    ciphertext = AESGCM(keys.key).encrypt(nonce, frames, header + pn_bytes)
    sample = ciphertext[4 - pn_length : 20 - pn_length]
    mask = header_protection_mask(keys.hp, sample)
    protected_pn = bytes(b ^ m for b, m in zip(pn_bytes, mask[1:]))
    return bytes([first_byte ^ (mask[0] & 0x0F)]) + header[1:] + protected_pn + ciphertext


def client_hello(
    server_name: str = "meet.example.net", alpn: tuple[str, ...] = ("h3",), pad: int = 0
) -> bytes:
    """A minimal TLS 1.3 ClientHello handshake message (RFC 8446 §4.1.2) with SNI, ALPN and an
    optional padding extension (21, RFC 7685) to make it span several packets."""

    def ext(ext_type: int, body: bytes) -> bytes:
        return ext_type.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body

    name = server_name.encode()
    sni = ext(0, (len(name) + 3).to_bytes(2, "big") + b"\x00" + len(name).to_bytes(2, "big") + name)
    protocols = b"".join(bytes([len(p)]) + p.encode() for p in alpn)
    extensions = sni + ext(16, len(protocols).to_bytes(2, "big") + protocols)
    extensions += ext(43, b"\x02\x03\x04")
    if pad:
        extensions += ext(21, bytes(pad))
    body = (
        b"\x03\x03"
        + bytes(range(32))
        + b"\x00"
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def chlo(tags: list[tuple[bytes, bytes]]) -> bytes:
    """A gQUIC CHLO tag/value map (Chromium crypto_framer.cc layout)."""
    table = b""
    values = b""
    for tag, value in tags:
        values += value
        table += tag + len(values).to_bytes(4, "little")
    return b"CHLO" + len(tags).to_bytes(2, "little") + b"\x00\x00" + table + values


GOOGLE_CHLO = chlo(
    [
        (b"PAD\x00", bytes(40)),
        (b"SNI\x00", b"www.example.org"),
        (b"VER\x00", b"Q043"),
        (b"UAID", b"Chrome/99 Linux"),
    ]
)


def gquic_public_packet(
    version: bytes, message: bytes, *, big_endian: bool = True, private_flag: bool = False
) -> bytes:
    """Public-header gQUIC client packet: flags 0x09 (version, 8-byte CID, 1-byte pn), 12-byte hash,
    a STREAM frame 0xa0 (data length present, no offset, 1-byte stream ID 1) holding ``message``."""
    order = "big" if big_endian else "little"
    frame = b"\xa0\x01" + len(message).to_bytes(2, order) + message
    return (
        b"\x09"
        + bytes.fromhex("1122334455667788")
        + version
        + b"\x01"
        + bytes(12)
        + (b"\x00" if private_flag else b"")
        + frame
        + bytes(60)
    )


# --- varints and key schedule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "value"),
    [
        ("c2197c5eff14e88c", 151288809941952652),
        ("9d7f3e7d", 494878333),
        ("7bbd", 15293),
        ("25", 37),
        ("4025", 37),
    ],
)
def test_read_varint_rfc9000_appendix_a1(encoded: str, value: int) -> None:
    data = bytes.fromhex(encoded) + b"\xff"
    assert read_varint(data, 0) == (value, len(encoded) // 2)


def test_read_varint_truncated() -> None:
    with pytest.raises(QuicError) as error:
        read_varint(bytes.fromhex("9d7f3e"), 0)
    assert error.value.reason == "truncated"
    with pytest.raises(QuicError):
        read_varint(b"", 0)


def test_v1_key_schedule_rfc9001_a1() -> None:
    secret = initial_secret(SALT_V1, RFC_DCID)
    assert secret.hex() == "7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44"
    client = hkdf_expand_label(secret, "client in", 32)
    assert client.hex() == "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"
    server = hkdf_expand_label(secret, "server in", 32)
    assert server.hex() == "3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b"
    keys = client_initial_keys(RFC_DCID)
    assert keys.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert keys.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert keys.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


def test_v2_key_schedule_rfc9369_a1() -> None:
    client = hkdf_expand_label(initial_secret(SALT_V2, RFC_DCID), "client in", 32)
    assert client.hex() == "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b"
    keys = client_initial_keys(RFC_DCID, SALT_V2, LABELS_V2)
    assert keys.key.hex() == "8b1a0bc121284290a29e0971b5cd045d"
    assert keys.iv.hex() == "91f73e2351d8fa91660e909f"
    assert keys.hp.hex() == "45b95e15235d6f45a6b19cbcb0294ba9"


def test_header_protection_masks() -> None:
    # RFC 9001 A.2 (AES), RFC 9369 A.2 (AES, v2 key), RFC 9001 A.5 (ChaCha20).
    v1 = client_initial_keys(RFC_DCID)
    sample = bytes.fromhex("d1b1c98dd7689fb8ec11d242b123dc9b")
    assert header_protection_mask(v1.hp, sample).hex() == "437b9aec36"
    v2 = client_initial_keys(RFC_DCID, SALT_V2, LABELS_V2)
    sample = bytes.fromhex("ffe67b6abcdb4298b485dd04de806071")
    assert header_protection_mask(v2.hp, sample).hex() == "94a0c95e80"
    chacha_hp = bytes.fromhex("25a282b9e82f06f21f488917a4fc8f1b73573685608597d0efcb076b0ab7a7a4")
    sample = bytes.fromhex("5e5cd55c41f69080575d7999c25a5bfb")
    assert header_protection_mask(chacha_hp, sample, "chacha20").hex() == "aefefe7d03"
    with pytest.raises(QuicError):
        header_protection_mask(v1.hp, b"short")


def test_version_profiles_pick_the_published_salts() -> None:
    assert version_profile(0x00000001).salts == (SALT_V1,)
    assert version_profile(0x6B3343CF).labels == LABELS_V2
    assert version_profile(0x6B3343CF).types[1] == "initial"  # RFC 9369 §3.2: Initial is 0b01
    assert version_profile(0xFF00001B).salts == (SALT_DRAFT_23,)  # draft-27
    assert version_profile(0xFF00001D).salts == (SALT_DRAFT_29,)  # draft-29
    assert version_profile(0xFF000020).salts == (SALT_DRAFT_29,)  # draft-32
    assert version_profile(0xFF000022).salts == (SALT_V1,)  # draft-34
    assert version_profile(0xFACEB001).salts == (SALT_DRAFT_22,)
    assert version_profile(0xFACEB002).salts == (SALT_DRAFT_23,)
    assert version_profile(0x51303530).payload == "chlo"
    assert version_profile(0x54303531).salts == (SALT_T051,)
    assert version_profile(0x1A2A3A4A).salts == (SALT_V1, SALT_DRAFT_29)  # greased
    assert version_profile(0xFF000010) is None
    assert version_profile(0x12345678) is None


# --- the RFC client Initials ----------------------------------------------------------------


def test_rfc9001_client_initial_decrypts_to_the_crypto_frame() -> None:
    assert len(RFC9001_CLIENT_INITIAL) == 1200
    keys = client_initial_keys(RFC_DCID)
    packet_number, plaintext = decrypt_client_initial(RFC9001_CLIENT_INITIAL, 18, keys)
    assert packet_number == 2
    assert len(plaintext) == 1162
    assert plaintext == RFC_CRYPTO_FRAME + bytes(1162 - len(RFC_CRYPTO_FRAME))
    assert parse_initial_frames(plaintext) == [(0, RFC_CRYPTO_FRAME[4:])]


def test_rfc9001_client_initial_gives_the_client_hello() -> None:
    collector = QuicInitialCollector()
    collector.feed(RFC9001_CLIENT_INITIAL)
    assert collector.done
    assert collector.version == 1
    assert collector.client_hello is not None
    assert collector.client_hello.server_name == "example.com"
    assert collector.client_hello.alpn == ("alpn",)
    assert 57 in collector.client_hello.extensions  # quic_transport_parameters
    assert collector.server_name == "example.com"
    assert collector.alpn == ("alpn",)
    assert not collector.errors


def test_rfc9369_v2_client_initial_gives_the_client_hello() -> None:
    collector = QuicInitialCollector()
    collector.feed(RFC9369_CLIENT_INITIAL)
    assert collector.version == 0x6B3343CF
    assert collector.server_name == "example.com"
    assert not collector.errors


def test_packet_builder_reproduces_the_rfc_packets() -> None:
    frames = RFC_CRYPTO_FRAME + bytes(1162 - len(RFC_CRYPTO_FRAME))
    assert protect_initial(frames, packet_number=2, pn_length=4) == RFC9001_CLIENT_INITIAL
    v2 = protect_initial(
        frames,
        packet_number=2,
        pn_length=4,
        version=0x6B3343CF,
        salt=SALT_V2,
        labels=LABELS_V2,
        type_bits=1,
    )
    assert v2 == RFC9369_CLIENT_INITIAL


@pytest.mark.parametrize(
    ("packet_number", "pn_length", "guessed"),
    [(1, 1, True), (0, 1, False), (5, 1, False), (1, 2, False), (2, 4, False)],
)
def test_a_guessed_header_decrypts_without_removing_its_protection(packet_number, pn_length, guessed) -> None:
    """Packet number 1 in one byte (``GUESSED_PACKET_NUMBER``) is authenticated as guessed, with
    no header-protection context built; any other number or length fails the guess's tag check
    and is read through the protection. Both give the packet number and frames sent."""
    from inspector.dissect import quic

    frames = crypto_frame(0, client_hello()) + bytes(40)
    packet = protect_initial(frames, packet_number=packet_number, pn_length=pn_length)
    pn_offset = 1 + 4 + 1 + len(RFC_DCID) + 1 + 1 + 2  # no SCID, an empty token, 2-byte Length
    cipher = quic._InitialCipher(client_initial_keys(RFC_DCID))
    assert quic._decrypt_initial(packet, pn_offset, cipher) == (packet_number, frames)
    assert (cipher.hp_encryptor is None) is guessed
    assert decrypt_client_initial(packet, pn_offset, client_initial_keys(RFC_DCID)) == (packet_number, frames)


def test_a_damaged_packet_that_would_be_guessed_still_fails() -> None:
    """A guessable packet with one bit flipped fails the guess and the protected read alike."""
    from inspector.dissect import quic

    packet = bytearray(protect_initial(crypto_frame(0, client_hello()), packet_number=1, pn_length=1))
    packet[40] ^= 0x01
    cipher = quic._InitialCipher(client_initial_keys(RFC_DCID))
    with pytest.raises(QuicError) as error:
        quic._decrypt_initial(bytes(packet), 18, cipher)
    assert error.value.reason == "decrypt_failed"
    assert cipher.hp_encryptor is not None


def test_wrong_salt_fails_authentication() -> None:
    keys = client_initial_keys(RFC_DCID, SALT_DRAFT_29)
    with pytest.raises(QuicError) as error:
        decrypt_client_initial(RFC9001_CLIENT_INITIAL, 18, keys)
    assert error.value.reason == "decrypt_failed"


def test_corrupted_rfc_packet_is_counted_not_raised() -> None:
    damaged = bytearray(RFC9001_CLIENT_INITIAL)
    damaged[600] ^= 0x01
    collector = QuicInitialCollector()
    collector.feed(bytes(damaged))
    assert collector.client_hello is None
    assert collector.errors == {"decrypt_failed": 1}
    assert not collector.done


# --- crafted Initials: versions, coalescing, reassembly -------------------------------------


@pytest.mark.parametrize(
    ("version", "salt"),
    [
        (0xFF00001B, SALT_DRAFT_23),
        (0xFF00001D, SALT_DRAFT_29),
        (0xFF000022, SALT_V1),
        (0xFACEB001, SALT_DRAFT_22),
        (0xFACEB002, SALT_DRAFT_23),
        (0x5A6A7A8A, SALT_DRAFT_29),
    ],
)
def test_draft_and_mvfst_versions(version: int, salt: bytes) -> None:
    hello = client_hello("graph.example.com", ("h3-29",))
    datagram = protect_initial(crypto_frame(0, hello) + bytes(900), version=version, salt=salt)
    collector = QuicInitialCollector()
    collector.feed(datagram)
    assert collector.version == version
    assert collector.server_name == "graph.example.com"
    assert collector.alpn == ("h3-29",)


def test_coalesced_packets_are_walked_by_length() -> None:
    hello = client_hello("coalesced.example")
    initial = protect_initial(crypto_frame(0, hello))
    # A 0-RTT packet (type 1): header, Length 30, 30 opaque bytes.
    zero_rtt = b"\xd1\x00\x00\x00\x01\x08" + RFC_DCID + b"\x00\x40\x1e" + bytes(range(30))
    short_header = b"\x40short-header"
    for datagram in (zero_rtt + initial, initial + zero_rtt, zero_rtt + initial + short_header):
        collector = QuicInitialCollector()
        collector.feed(datagram)
        assert collector.server_name == "coalesced.example", datagram[:1]
        assert not collector.errors


def test_crypto_split_reordered_over_two_datagrams_with_chaos_frames() -> None:
    hello = client_hello("chaos.example", pad=1500)
    a, b, c = hello[:700], hello[700:1400], hello[1400:]
    first = protect_initial(
        b"\x01\x00\x00" + crypto_frame(1400, c) + b"\x01" + bytes(7) + crypto_frame(0, a) + b"\x01",
        packet_number=0,
    )
    second = protect_initial(b"\x00\x01" + crypto_frame(700, b) + bytes(3), packet_number=1)
    collector = QuicInitialCollector()
    collector.feed(first)
    assert collector.client_hello is None
    assert not collector.done
    collector.feed(second)
    assert collector.done
    assert collector.server_name == "chaos.example"
    assert not collector.errors


def test_later_initial_with_server_chosen_dcid_uses_the_original_keys() -> None:
    # RFC 9000 §7.2: after the server's Initial the client switches DCID, keeping its Initial keys.
    hello = client_hello("switch.example", pad=1300)
    first = protect_initial(crypto_frame(0, hello[:1000]))
    second = protect_initial(
        crypto_frame(1000, hello[1000:]),
        dcid=bytes.fromhex("f067a5502a4262b5"),
        key_dcid=RFC_DCID,
        packet_number=1,
    )
    collector = QuicInitialCollector()
    collector.feed(first)
    collector.feed(second)
    assert collector.server_name == "switch.example"


def test_ack_frames_are_parsed_not_guessed() -> None:
    # ACK: largest 5, delay 0x4010 (2-byte varint), 2 ranges, first range 1, (gap 0, len 0) x2.
    ack = b"\x02\x05\x40\x10\x02\x01\x00\x00\x00\x00"
    ack_ecn = b"\x03\x07\x00\x01\x00\x00\x00\x00\x01\x40\x02\x00"
    close = b"\x1c\x00\x00\x03abc"
    hello = client_hello("ack.example")
    plaintext = ack + ack_ecn + b"\x01" + crypto_frame(0, hello) + close + bytes(10)
    assert parse_initial_frames(plaintext) == [(0, hello)]
    collector = QuicInitialCollector()
    collector.feed(protect_initial(plaintext))
    assert collector.server_name == "ack.example"


def test_lying_ack_range_count_and_unknown_frames_raise() -> None:
    with pytest.raises(QuicError) as error:
        parse_initial_frames(b"\x02\x05\x00\xbf\xff\xff\xff\x01")
    assert error.value.reason == "bad_ack_frame"
    with pytest.raises(QuicError) as error:
        parse_initial_frames(b"\x08\x00\x01a")  # STREAM is not allowed in Initials
    assert error.value.reason == "unexpected_frame"
    with pytest.raises(QuicError) as error:
        parse_initial_frames(b"\x06\x00\x44\x00abc")  # CRYPTO length 1024, 3 bytes present
    assert error.value.reason == "bad_crypto_length"


def test_unexpected_frame_in_a_decrypted_initial_is_counted() -> None:
    collector = QuicInitialCollector()
    collector.feed(protect_initial(b"\x08\x00\x01a" + bytes(30)))
    assert collector.errors == {"unexpected_frame": 1}


def test_crypto_stream_that_is_not_a_client_hello_ends_the_flow() -> None:
    collector = QuicInitialCollector()
    collector.feed(protect_initial(crypto_frame(0, b"\x02\x00\x00\x10" + bytes(16))))
    assert collector.done
    assert collector.errors == {"not_client_hello": 1}


def test_reassembler_overlap_gap_and_cap() -> None:
    stream = CryptoReassembler(cap=100)
    stream.add(10, b"KLMNO")
    assert stream.contiguous() == b""
    stream.add(0, b"abcdefghijkl")  # overlaps 10..12: the first copy ("KL") wins
    assert stream.contiguous() == b"abcdefghijKLMNO"
    stream.add(20, b"xyz")
    assert stream.contiguous() == b"abcdefghijKLMNO"
    stream.add(15, b"pqrst")
    assert stream.contiguous() == b"abcdefghijKLMNOpqrstxyz"
    with pytest.raises(QuicError) as error:
        stream.add(90, bytes(11))
    assert error.value.reason == "crypto_too_large"


def test_huge_crypto_offset_is_refused() -> None:
    collector = QuicInitialCollector()
    collector.feed(protect_initial(crypto_frame(1 << 40, b"x") + bytes(30)))
    assert collector.errors == {"crypto_too_large": 1}


def test_budget_and_non_quic_datagrams() -> None:
    collector = QuicInitialCollector(max_datagrams=3)
    collector.feed(b"\x40" + bytes(30))  # short header
    collector.feed(b"\xc0\x12\x34\x56\x78" + bytes(30))  # unknown version
    assert not collector.done
    collector.feed(b"\xc0\x00\x00\x00\x00" + bytes(30))  # version negotiation
    assert collector.done
    assert collector.errors == {
        "not_long_header": 1,
        "unknown_version": 1,
        "version_negotiation": 1,
    }
    collector.feed(RFC9001_CLIENT_INITIAL)  # ignored once done
    assert collector.client_hello is None


def test_truncated_rfc_packet_is_counted() -> None:
    collector = QuicInitialCollector()
    collector.feed(RFC9001_CLIENT_INITIAL[:600])
    assert collector.errors == {"bad_packet_length": 1}


def test_is_quic_long_header() -> None:
    assert is_quic_long_header(RFC9001_CLIENT_INITIAL)
    assert is_quic_long_header(RFC9369_CLIENT_INITIAL)
    assert not is_quic_long_header(b"\x80\x60\x12\x34" + bytes(20))  # RTP
    assert not is_quic_long_header(b"\x40" + RFC9001_CLIENT_INITIAL[1:])  # short header
    assert not is_quic_long_header(b"\xc0\x00\x00\x00\x01\x15" + bytes(40))  # 21-byte DCID
    assert is_quic_long_header(b"\xc3Q046\x50" + bytes(40))


# --- Google QUIC ----------------------------------------------------------------------------


def test_parse_chlo_reads_sni_and_user_agent() -> None:
    expected = GQuicHello("www.example.org", "Q043", "Chrome/99 Linux")
    assert parse_chlo(GOOGLE_CHLO, "Q043") == expected
    assert parse_chlo(chlo([(b"PAD\x00", b"xx")]), "Q046") == GQuicHello("", "Q046", "")
    assert parse_chlo(b"SHLO" + bytes(20), "Q043") is None
    # A value that runs past the end (CHLO cut by the packet) is skipped, not read.
    cut = GOOGLE_CHLO[: len(GOOGLE_CHLO) - 10]
    assert parse_chlo(cut, "Q043") == GQuicHello("www.example.org", "Q043", "")


def test_parse_chlo_rejects_broken_tables() -> None:
    with pytest.raises(GQuicError) as error:
        parse_chlo(b"CHLO\x05\x00\x00\x00SNI\x00", "Q043")
    assert error.value.reason == "truncated_chlo"
    backwards = b"CHLO\x02\x00\x00\x00SNI\x00\x05\x00\x00\x00UAID\x02\x00\x00\x00hello"
    with pytest.raises(GQuicError) as error:
        parse_chlo(backwards, "Q043")
    assert error.value.reason == "bad_chlo_offsets"
    with pytest.raises(GQuicError) as error:
        parse_chlo(b"CHLO\xff\xff\x00\x00", "Q043")
    assert error.value.reason == "too_many_chlo_entries"


@pytest.mark.parametrize(
    ("version", "big_endian", "private_flag"),
    [
        (b"Q043", True, False),
        (b"Q039", True, False),
        (b"Q035", False, False),
        (b"Q033", False, True),
    ],
)
def test_gquic_public_header_versions(version: bytes, big_endian: bool, private_flag: bool) -> None:
    packet = gquic_public_packet(
        version, GOOGLE_CHLO, big_endian=big_endian, private_flag=private_flag
    )
    expected = GQuicHello("www.example.org", version.decode(), "Chrome/99 Linux")
    assert parse_gquic(packet) == expected
    collector = QuicInitialCollector()
    collector.feed(packet)
    assert collector.gquic_hello == expected
    assert collector.version == int.from_bytes(version, "big")
    assert collector.server_name == "www.example.org"
    assert collector.done


def test_gquic_q046_long_header() -> None:
    # 0xc3: long header, 4-byte packet number; 0x50: DCID 8 bytes (5+3), no SCID; 12-byte hash.
    frame = b"\xa0\x01" + len(GOOGLE_CHLO).to_bytes(2, "big") + GOOGLE_CHLO
    dcid = bytes.fromhex("b4a4f9f5f42edd39")
    packet = b"\xc3Q046\x50" + dcid + b"\x00\x00\x00\x01" + bytes(12) + frame
    assert parse_gquic(packet) == GQuicHello("www.example.org", "Q046", "Chrome/99 Linux")
    collector = QuicInitialCollector()
    collector.feed(packet)
    assert collector.version == gquic.VERSION_Q046
    assert collector.server_name == "www.example.org"


def test_gquic_q050_is_decrypted_with_googles_salt() -> None:
    frames = b"\x08" + varint(0) + varint(len(GOOGLE_CHLO)) + GOOGLE_CHLO + bytes(200)
    packet = protect_initial(
        frames, version=0x51303530, salt=SALT_Q050, pn_length=4, packet_number=1
    )
    assert parse_gquic(packet) == GQuicHello("www.example.org", "Q050", "Chrome/99 Linux")
    collector = QuicInitialCollector()
    collector.feed(packet)
    assert collector.gquic_hello is not None
    assert collector.client_hello is None


def test_gquic_q050_chlo_split_over_two_packets_waits_for_the_whole_map() -> None:
    def q050(offset: int, data: bytes, number: int) -> bytes:
        frames = b"\x08" + varint(offset) + varint(len(data)) + data + bytes(40)
        return protect_initial(frames, version=0x51303530, salt=SALT_Q050, packet_number=number)

    split = len(GOOGLE_CHLO) - 20  # the UAID value arrives in the second packet
    collector = QuicInitialCollector()
    collector.feed(q050(0, GOOGLE_CHLO[:split], 1))
    assert collector.gquic_hello is None
    assert not collector.done
    assert not collector.errors
    collector.feed(q050(split, GOOGLE_CHLO[split:], 2))
    assert collector.gquic_hello == GQuicHello("www.example.org", "Q050", "Chrome/99 Linux")


def test_chlo_length() -> None:
    assert gquic.chlo_length(GOOGLE_CHLO) == len(GOOGLE_CHLO)
    assert gquic.chlo_length(GOOGLE_CHLO[:20]) is None  # entry table incomplete
    assert gquic.chlo_length(chlo([])) == 8
    with pytest.raises(GQuicError):
        gquic.chlo_length(b"CHLO\xff\x7f\x00\x00")


def test_gquic_t051_carries_a_tls_client_hello() -> None:
    hello = client_hello("www.youtube.example", ("h3-T051",))
    frames = b"\x08" + varint(0) + varint(len(hello)) + hello + bytes(100)
    packet = protect_initial(frames, version=0x54303531, salt=SALT_T051)
    collector = QuicInitialCollector()
    collector.feed(packet)
    assert collector.client_hello is not None
    assert collector.server_name == "www.youtube.example"
    assert collector.alpn == ("h3-T051",)
    assert parse_gquic(packet) == GQuicHello("www.youtube.example", "T051", "")


def test_gquic_t051_with_ietf_frame_numbering_is_also_read() -> None:
    hello = client_hello("ietf-framed.example")
    packet = protect_initial(crypto_frame(0, hello) + bytes(50), version=0x54303531, salt=SALT_T051)
    collector = QuicInitialCollector()
    collector.feed(packet)
    assert collector.server_name == "ietf-framed.example"


def test_parse_gquic_ignores_ietf_quic_and_garbage() -> None:
    assert parse_gquic(RFC9001_CLIENT_INITIAL) is None
    assert parse_gquic(b"") is None
    assert parse_gquic(b"\x09" + bytes(8) + b"Q043") is None  # too short for a payload
    unknown_frame = b"\x09" + bytes(8) + b"Q043\x01" + bytes(12) + b"\x05"
    assert parse_gquic(unknown_frame) is None


# --- the shared nDPI captures ---------------------------------------------------------------

QUIC_CAPTURES = [
    "quic.pcap",
    "quic-29.pcap",
    "quic-mvfst-22.pcap",
    "quic-v2.pcapng",
    "quic046.pcap",
    "quic_0RTT.pcap",
    "quic_frags_ch_out_of_order_same_packet_craziness.pcapng",
    "quic_q50.pcap",
    "gquic.pcap",
    "youtube_quic.pcap",
    "doq_adguard.pcapng",
    "dlt_ppp.pcap",
    "http_ipv6.pcap",
]

# Flows where nDPI names a server and we do not, or the two disagree, with the reason.
# (None so far: all 135 named QUIC flows agree.)
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {}


def _ip_payload(link_type: int, frame: bytes) -> dpkt.Packet | None:
    if link_type == dpkt.pcap.DLT_EN10MB:
        return dpkt.ethernet.Ethernet(frame).data
    if link_type == dpkt.pcap.DLT_LINUX_SLL:
        return dpkt.sll.SLL(frame).data
    if link_type == dpkt.pcap.DLT_PPP:
        # RFC 1662 framing: optional 0xff03 address/control, then the 2-byte PPP protocol.
        if frame[:2] == b"\xff\x03":
            frame = frame[2:]
        protocol = int.from_bytes(frame[:2], "big")
        if protocol == 0x0021:
            return dpkt.ip.IP(frame[2:])
        if protocol == 0x0057:
            return dpkt.ip6.IP6(frame[2:])
    return None


def udp_datagrams(path: Path):
    """(src ip, src port, dst ip, dst port, payload) of every UDP datagram in a capture."""
    from tests.dpkt_frames import dpkt_frames

    for _, link_type, frame in dpkt_frames(path):
        try:
            ip = _ip_payload(link_type, frame)
        except (dpkt.UnpackError, IndexError, ValueError):
            continue
        if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
            continue
        if not isinstance(ip.data, dpkt.udp.UDP):
            continue
        family = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
        src = socket.inet_ntop(family, ip.src)
        dst = socket.inet_ntop(family, ip.dst)
        yield src, ip.data.sport, dst, ip.data.dport, bytes(ip.data.data)


def collect_flows(path: Path) -> dict[tuple[str, int, str, int], QuicInitialCollector]:
    """One collector per UDP flow, fed the datagrams of the side that sent first."""
    flows: dict[tuple[str, int, str, int], QuicInitialCollector] = {}
    for src, sport, dst, dport, payload in udp_datagrams(path):
        if (dst, dport, src, sport) in flows:
            continue
        flows.setdefault((src, sport, dst, dport), QuicInitialCollector()).feed(payload)
    return flows


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")).compressed, int(port)


def expected_quic_rows(ndpi_dir: Path, capture: str) -> list[dict[str, str]]:
    with (ndpi_dir / "expected" / "flows.tsv").open(newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return [
            r
            for r in rows
            if r["pcap"] == capture and r["l4"] == "UDP" and "QUIC" in r["ndpi_proto"]
        ]


@pytest.mark.parametrize("capture", QUIC_CAPTURES)
def test_shared_capture_quic_names_agree_with_ndpi(ndpi_dir: Path, capture: str) -> None:
    flows = {
        (ipaddress.ip_address(s).compressed, sp, ipaddress.ip_address(d).compressed, dp): c
        for (s, sp, d, dp), c in collect_flows(ndpi_dir / capture).items()
    }
    rows = expected_quic_rows(ndpi_dir, capture)
    assert rows, f"{capture}: nDPI lists no QUIC flow"
    agree = 0
    for row in rows:
        a, b = _endpoint(row["endpoint_a"]), _endpoint(row["endpoint_b"])
        collector = flows.get(a + b) or flows.get(b + a)
        assert collector is not None, (capture, row["flow_idx"])
        assert "internal_error" not in collector.errors
        expected = row["hostname_sni"]
        if (capture, row["flow_idx"]) in KNOWN_DIFFERENCES:
            continue
        if expected:
            where = (capture, row["flow_idx"], dict(collector.errors))
            assert collector.server_name == expected, where
            agree += 1
        else:
            # nDPI found no name: quic.pcap flow 3 is a Q033 CHLO without SNI (we agree: ""),
            # quic.pcap flow 10 / http_ipv6.pcap flow 9 start mid-connection (short headers only).
            assert collector.server_name == ""
    named = sum(1 for r in rows if r["hostname_sni"])
    assert agree == named


def test_shared_captures_agreement_count(ndpi_dir: Path) -> None:
    total_named = 0
    total_agree = 0
    for capture in QUIC_CAPTURES:
        flows = {
            (ipaddress.ip_address(s).compressed, sp, ipaddress.ip_address(d).compressed, dp): c
            for (s, sp, d, dp), c in collect_flows(ndpi_dir / capture).items()
        }
        for row in expected_quic_rows(ndpi_dir, capture):
            if not row["hostname_sni"]:
                continue
            total_named += 1
            a, b = _endpoint(row["endpoint_a"]), _endpoint(row["endpoint_b"])
            collector = flows.get(a + b) or flows.get(b + a)
            total_agree += collector is not None and collector.server_name == row["hostname_sni"]
    assert (total_agree, total_named) == (135, 135)


def test_every_shared_capture_agrees_and_nothing_breaks(ndpi_dir: Path) -> None:
    """All nDPI captures, not only the QUIC ones: every UDP flow (RTP, STUN, DTLS, DNS ...) goes
    through a collector without an internal error, and every QUIC flow nDPI names agrees."""
    named = agree = 0
    captures = sorted(p for p in ndpi_dir.iterdir() if p.suffix in (".pcap", ".pcapng"))
    for path in captures:
        flows = {
            (ipaddress.ip_address(s).compressed, sp, ipaddress.ip_address(d).compressed, dp): c
            for (s, sp, d, dp), c in collect_flows(path).items()
        }
        for collector in flows.values():
            assert "internal_error" not in collector.errors, path.name
        for row in expected_quic_rows(ndpi_dir, path.name):
            if row["hostname_sni"]:
                named += 1
                a, b = _endpoint(row["endpoint_a"]), _endpoint(row["endpoint_b"])
                collector = flows.get(a + b) or flows.get(b + a)
                agree += collector is not None and collector.server_name == row["hostname_sni"]
    # 135 in the QUIC captures above plus sites.pcapng (4) and google_meet.pcapng (1).
    assert (agree, named) == (140, 140)


def test_fast_long_header_constructor_fills_every_field_in_order() -> None:
    import dataclasses

    from inspector.dissect.quic import LongHeader, _new_long_header

    values = (0, 1200, 26, 0xC3, 1, "initial", b"d" * 8, b"s" * 4, b"")
    built = _new_long_header(*values)
    assert built == LongHeader(*values)
    assert [getattr(built, f.name) for f in dataclasses.fields(LongHeader)] == list(values)
