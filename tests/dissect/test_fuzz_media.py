"""Hypothesis: media parsers and MediaFlowState never raise on attacker-controlled bytes."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from inspector.dissect import media, rtp, stun, zoom
from inspector.dissect.detectors import MAX_PACKETS, MediaFlowState

COOKIE = b"\x21\x12\xa4\x42"

payloads = st.binary(max_size=1500)
#: Bytes that get past the first checks: a STUN header with the cookie and a matching length.
stun_like = st.binary(max_size=200).map(
    lambda body: struct.pack("!HH", 0x0001, len(body)) + COOKIE + b"\x00" * 12 + body
)
#: RTP/RTCP-looking: version 2 first byte.
rtp_like = st.tuples(st.integers(0x80, 0xBF), st.binary(max_size=300)).map(lambda t: bytes([t[0]]) + t[1])
#: Zoom-looking: outer 0x05 or a known inner type first.
zoom_first_bytes = st.sampled_from([0x05, 0x0F, 0x10, 0x0D, 0x1E, 0x21, 0x1F, 0x01, 0x02])
zoom_like = st.tuples(zoom_first_bytes, st.binary(max_size=300)).map(lambda t: bytes([t[0]]) + t[1])
dtls_like = st.tuples(st.sampled_from([20, 21, 22, 23, 0x2C, 0x3F]), st.binary(max_size=300)).map(
    lambda t: bytes([t[0], 0xFE, 0xFD]) + t[1]
)
any_payload = st.one_of(payloads, stun_like, rtp_like, zoom_like, dtls_like)


@settings(max_examples=400, deadline=None)
@given(any_payload)
def test_parsers_never_raise(data: bytes) -> None:
    message = stun.parse_stun(data)
    if message is not None:
        assert message.total_len == len(data)
        message.mapped_address  # noqa: B018 - decoding must not raise either
        stun.stun_service(message)
    stun.parse_stun(data, allow_trailing=True)
    stun.parse_stun_stream(data)
    stun.strip_ms_turn(data)
    header = rtp.parse_rtp(data)
    if header is not None:
        assert header.header_len <= len(data)
    packets = rtp.parse_rtcp_compound(data)
    assert sum(p.length_bytes for p in packets) <= len(data)
    rtp.rtcp_coverage(data, packets)
    rtp.is_rtcp(data)
    zoom.parse_server_media(data)
    zoom.parse_p2p_media(data)
    zoom.sfu_setup_id(data, True)
    zoom.sfu_setup_id(data, False)
    zoom.is_p2p_setup(data)
    media.parse_channel_data(data)
    media.parse_channel_data(data, stream=True)
    records = media.parse_dtls_records(data)
    assert sum(r.length for r in records) <= len(data)
    media.parse_discord_discovery(data)
    media.is_discord_keepalive(data)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["udp", "tcp"]), st.lists(st.tuples(st.booleans(), any_payload), max_size=40))
def test_flow_state_never_raises(transport: str, packets: list[tuple[bool, bytes]]) -> None:
    state = MediaFlowState(transport, 1234, 3478)
    for index, (from_client, payload) in enumerate(packets):
        state.feed(from_client, payload, index)
    hits = state.hits()
    assert all(hit.packets >= 1 for hit in hits)
    state.app_protocol()
    state.attributes()
    assert state.errors["internal_error"] == 0
    if sum(1 for _, payload in packets if payload) >= MAX_PACKETS:
        assert state.done
