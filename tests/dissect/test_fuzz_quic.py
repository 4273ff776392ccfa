"""Property tests: QUIC/gQUIC parsers take attacker-controlled bytes and must never raise.

``QuicInitialCollector.feed`` and ``parse_gquic`` must not raise at all (and must not need their
last-resort ``internal_error`` guard); the lower-level readers may raise only their own error
types. Random bytes rarely get past the AEAD tag, so one family of tests protects fuzzed
plaintexts with real Initial keys to reach frame, CRYPTO and ClientHello parsing.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.dissect import gquic
from inspector.dissect.gquic import GQuicError
from inspector.dissect.quic import (
    SALT_Q050,
    SALT_T051,
    SALT_V1,
    CryptoReassembler,
    QuicError,
    QuicInitialCollector,
    is_quic_long_header,
    parse_gquic,
    parse_gquic_crypto_frames,
    parse_initial_frames,
)
from tests.dissect.test_quic import (
    GOOGLE_CHLO,
    RFC9001_CLIENT_INITIAL,
    RFC9369_CLIENT_INITIAL,
    RFC_CRYPTO_FRAME,
    client_hello,
    crypto_frame,
    gquic_public_packet,
    protect_initial,
    varint,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Q046_PACKET = (
    b"\xc3Q046\x50"
    + bytes(8)
    + b"\x00\x00\x00\x01"
    + bytes(12)
    + b"\xa0\x01"
    + len(GOOGLE_CHLO).to_bytes(2, "big")
    + GOOGLE_CHLO
)
Q050_PACKET = protect_initial(
    b"\x08" + varint(0) + varint(len(GOOGLE_CHLO)) + GOOGLE_CHLO + bytes(100),
    version=0x51303530,
    salt=SALT_Q050,
)
T051_PACKET = protect_initial(
    b"\x08" + varint(0) + varint(300) + client_hello(pad=200)[:300] + bytes(50),
    version=0x54303531,
    salt=SALT_T051,
)
SEEDS = [
    RFC9001_CLIENT_INITIAL,
    RFC9369_CLIENT_INITIAL,
    gquic_public_packet(b"Q043", GOOGLE_CHLO),
    gquic_public_packet(b"Q035", GOOGLE_CHLO, big_endian=False),
    Q046_PACKET,
    Q050_PACKET,
    T051_PACKET,
]


def _feed_all(datagrams: list[bytes]) -> QuicInitialCollector:
    collector = QuicInitialCollector()
    for datagram in datagrams:
        collector.feed(datagram)
    assert "internal_error" not in collector.errors, collector.errors
    assert sum(collector.errors.values()) <= len(datagrams)
    return collector


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed datagram with a few byte flips, a truncation, or an insertion."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        operation = draw(st.sampled_from(["flip", "set", "truncate", "insert"]))
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        if operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set":
            data[position] = draw(st.sampled_from([0x00, 0xFF, 0x40, 0x80, 0xC0, 0x3F]))
        elif operation == "truncate":
            del data[position:]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@FUZZ
@given(st.lists(st.binary(max_size=1500), min_size=1, max_size=4))
def test_random_datagrams_never_raise(datagrams: list[bytes]) -> None:
    _feed_all(datagrams)
    for datagram in datagrams:
        parse_gquic(datagram)
        is_quic_long_header(datagram)


@FUZZ
@given(st.lists(mutated(SEEDS), min_size=1, max_size=3))
def test_mutated_real_datagrams_never_raise(datagrams: list[bytes]) -> None:
    _feed_all(datagrams)
    for datagram in datagrams:
        result = parse_gquic(datagram)
        assert result is None or isinstance(result.server_name, str)


@FUZZ
@given(st.binary(min_size=1, max_size=3), st.binary(max_size=40))
def test_first_bytes_of_a_long_header_never_raise(prefix: bytes, tail: bytes) -> None:
    # Headers with every first byte / version start, short tails: the header walker's edges.
    for version in (b"\x00\x00\x00\x01", b"Q046", b"Q050", b"T051", b"\x6b\x33\x43\xcf"):
        datagram = prefix[:1] + version + tail
        _feed_all([datagram])
        parse_gquic(datagram)


@st.composite
def fuzzed_plaintext(draw: st.DrawFn) -> bytes:
    """Initial payloads: raw bytes, or frame soup built from real frame shapes and junk."""
    if draw(st.booleans()):
        return draw(st.binary(min_size=1, max_size=600))
    hello = draw(st.sampled_from([RFC_CRYPTO_FRAME[4:], client_hello(pad=100), GOOGLE_CHLO]))
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(hello) - 1))
        hello = hello[:cut] + bytes([draw(st.integers(0, 255))]) + hello[cut + 1 :]
    pieces = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["crypto", "gquic_crypto", "pad", "ping", "ack", "junk"]))
        if kind in ("crypto", "gquic_crypto"):
            start = draw(st.integers(0, len(hello)))
            end = draw(st.integers(start, len(hello)))
            offset = draw(st.sampled_from([start, start, draw(st.integers(0, 1 << 20))]))
            frame = crypto_frame(offset, hello[start:end])
            # gQUIC numbers its CRYPTO frame 0x08 (Q050/T05x), IETF 0x06.
            pieces.append(frame if kind == "crypto" else b"\x08" + frame[1:])
        elif kind == "pad":
            pieces.append(bytes(draw(st.integers(1, 20))))
        elif kind == "ping":
            pieces.append(b"\x01")
        elif kind == "ack":
            pieces.append(b"\x02" + draw(st.binary(max_size=12)))
        else:
            pieces.append(draw(st.binary(max_size=12)))
    return b"".join(pieces)


@FUZZ
@given(
    st.lists(fuzzed_plaintext(), min_size=1, max_size=3),
    st.sampled_from([(1, SALT_V1), (0x54303531, SALT_T051), (0x51303530, SALT_Q050)]),
)
def test_authentic_packets_with_fuzzed_frames_never_raise(
    plaintexts: list[bytes], version_and_salt: tuple[int, bytes]
) -> None:
    version, salt = version_and_salt
    datagrams = [
        protect_initial(plaintext, version=version, salt=salt, packet_number=number)
        for number, plaintext in enumerate(plaintexts)
    ]
    collector = _feed_all(datagrams)
    assert collector.client_hello is None or isinstance(collector.client_hello.server_name, str)
    for datagram in datagrams:
        parse_gquic(datagram)


@FUZZ
@given(st.binary(max_size=400))
def test_frame_and_chlo_readers_raise_only_their_own_errors(data: bytes) -> None:
    for reader in (parse_initial_frames, parse_gquic_crypto_frames):
        try:
            fragments = reader(data)
        except QuicError as error:
            assert error.reason
        else:
            assert sum(len(chunk) for _, chunk in fragments) <= len(data)
    for candidate in (data, b"CHLO" + data):
        try:
            gquic.parse_chlo(candidate, "Q043")
        except GQuicError as error:
            assert error.reason
        try:
            gquic.parse_cleartext(candidate)
        except GQuicError as error:
            assert error.reason
        try:
            length = gquic.chlo_length(candidate)
        except GQuicError as error:
            assert error.reason
        else:
            assert length is None or length >= 8


@FUZZ
@given(
    st.binary(min_size=1, max_size=300),
    st.lists(st.tuples(st.integers(0, 299), st.integers(1, 80)), max_size=12),
)
def test_reassembler_matches_a_simple_model(stream: bytes, pieces: list[tuple[int, int]]) -> None:
    reassembler = CryptoReassembler()
    covered = [False] * len(stream)
    for offset, length in pieces:
        offset = min(offset, len(stream) - 1)
        chunk = stream[offset : offset + length]
        reassembler.add(offset, chunk)
        for index in range(offset, offset + len(chunk)):
            covered[index] = True
        prefix = covered.index(False) if False in covered else len(covered)
        assert reassembler.contiguous() == stream[:prefix]


@FUZZ
@given(st.binary(min_size=4, max_size=400), st.data())
def test_single_packet_hello_shortcut_matches_the_reassembler(stream: bytes, data) -> None:
    """``_whole_client_hello`` (the first Initial's fragments joined directly) returns exactly
    the reassembler's stream whenever it answers, and answers for any tiling of a whole hello."""
    import itertools

    from inspector.dissect.quic import _whole_client_hello

    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
    bounds = [0, *cuts, len(stream)]
    fragments = [(a, stream[a:b]) for a, b in itertools.pairwise(bounds)]
    fragments = data.draw(st.permutations(fragments))
    if data.draw(st.booleans()):  # sometimes a duplicate or a gap
        offset = data.draw(st.integers(0, len(stream) - 1))
        fragments.append((offset + data.draw(st.integers(0, 3)), stream[offset : offset + 5]))
    reassembler = CryptoReassembler()
    for offset, chunk in fragments:
        reassembler.add(offset, chunk)
    shortcut = _whole_client_hello(list(fragments), 65536)
    if shortcut is not None:
        assert shortcut == reassembler.contiguous()
    else:
        hello_whole = stream[0] != 1 or 4 + int.from_bytes(stream[1:4], "big") <= len(stream)
        tiled = sorted(fragments) == sorted((a, stream[a:b]) for a, b in itertools.pairwise(bounds))
        assert not (hello_whole and tiled)


@FUZZ
@given(st.binary(max_size=100), st.binary(max_size=100))
def test_hmac_matches_the_standard_library(key: bytes, message: bytes) -> None:
    import hmac

    from inspector.dissect.quic import _hmac_sha256

    assert _hmac_sha256(key, message) == hmac.digest(key, message, "sha256")
