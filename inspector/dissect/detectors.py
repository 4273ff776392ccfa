"""The one ordered registry of media payload detectors, and the per-flow state that feeds them.

The pipeline creates one ``MediaFlowState`` per flow that is not yet identified and feeds it the
flow's payload packets in capture order until ``done``. ``feed`` parses each payload once with
the protocol parsers (``stun``, ``rtp``, ``zoom``, ``media``) and keeps *evidence*: counts and a
few header fields. The detectors in ``DETECTORS`` are pure functions of that evidence, tried in
registry order; the order is also the strength order of the hits they return (vendor-specific
encapsulations first, generic RTP/RTCP last).

Why evidence over several packets: RTP has two fixed bits, ChannelData four, QUIC short headers
(RFC 9000 §17.3) and SRTP ciphertext look like anything, so single-packet guesses are how a
classifier ends up calling DNS "RTP". Each detector states how many packets it wants.

First-byte demultiplexing follows RFC 7983/RFC 9443 (facts §3.1): 0-3 STUN, 16-19 ZRTP, 20-63
DTLS, 64-79 TURN ChannelData, 128-191 RTP/RTCP. Zoom's and Discord's own formats cut across that
table (Zoom inner types 13-35, Discord type 0x0001): bytes the RFC 7983 parsers reject go on to
the vendor parsers, and each parser rejects foreign bytes by its own strict checks.
"""

from __future__ import annotations

import collections
import struct
import types
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Final, TypeVar

import numpy as np

from inspector.dissect import ErrorCounts, media, rtp, stun, whatsapp, zoom
from inspector.facts import DetectorHit

#: Payload packets after which a flow's verdict is final (nDPI gives up on most flows sooner).
MAX_PACKETS: Final = 32
#: Bound on the RTP headers kept per flow for the continuity check.
MAX_RTP_SAMPLES: Final = 64
MAX_TCP_FRAMES: Final = 16


class _Tally(dict):
    """A counter: a missing key reads as 0, as with ``collections.Counter``, without Counter's
    construction cost (a flow's evidence holds several and most flows never use them)."""

    __slots__ = ()

    def __missing__(self, key: object) -> int:
        return 0


#: The shared, read-only empty containers a flow's evidence starts with (``FlowEvidence``); a
#: write to one fails instead of reaching every flow.
_NO_ITEMS: Final[frozenset] = frozenset()
_NO_ENTRIES: Final[Mapping] = types.MappingProxyType({})

_Item = TypeVar("_Item")
_Key = TypeVar("_Key")
_Value = TypeVar("_Value")


def _own_set(items: AbstractSet[_Item]) -> set[_Item]:
    """``items`` to add to: itself once it is the flow's own set, else a new set of its items."""
    return items if isinstance(items, set) else set(items)


def _own_tally(tally: Mapping[_Key, int]) -> dict[_Key, int]:
    """``tally`` to count in (a ``_Tally``): itself once it is the flow's own, else a new one."""
    return tally if isinstance(tally, _Tally) else _Tally(tally)


def _own_dict(entries: Mapping[_Key, _Value]) -> dict[_Key, _Value]:
    """``entries`` to add to: itself once it is the flow's own dict, else a new dict of them."""
    return entries if isinstance(entries, dict) else dict(entries)


@dataclass(slots=True)
class _RtpTrack:
    """One RTP source seen in one direction: its payload type and sequence numbers."""

    payload_types: set[int]
    sequences: list[int]


class FlowEvidence:
    """What ``MediaFlowState.feed`` learned from the payloads; read by the detector functions.

    Plain counters and small sets, bounded by ``MAX_PACKETS`` and ``MAX_RTP_SAMPLES``.
    """

    # Scalar evidence starts as these class-level defaults and becomes per-instance on first
    # assignment (``ev.x += 1``): a media state is built for tens of thousands of flows, most of
    # which set few of them.
    packets: int = 0
    whatsapp_chat_version: str | None = None
    stun_cookie_messages: int = 0
    stun_classic_messages: int = 0
    turn_messages: int = 0
    stun_first_transaction: bytes = b""
    integrity_only_bindings: int = 0  # Binding requests whose only attribute is MESSAGE-INTEGRITY
    ms_turn_frames: int = 0
    ms_turn_stun_frames: int = 0  # frames whose inner bytes parse as STUN
    ms_turn_messages: int = 0  # TURN-method messages carrying Microsoft attributes
    dtls_packets: int = 0
    dtls_handshakes: int = 0
    rtp_samples: int = 0
    rtcp_packets: int = 0  # plain RTCP and SRTCP datagrams
    rtcp_plain: int = 0  # datagrams that are an exact RTCP compound
    rtcp_multi: int = 0  # datagrams holding an exact compound of >= 2 RTCP packets
    zoom_server_media: int = 0
    zoom_p2p_media: int = 0
    zoom_p2p_setup: int = 0
    discord_discovery: int = 0
    discord_address: str = ""
    discord_ssrc: int = -1
    discord_keepalives: int = 0

    # The containers start as shared read-only empties (``_NO_ITEMS``, ``_NO_ENTRIES``) and each
    # becomes the flow's own at its first entry (``_own_set``, ``_own_tally``, ``_own_dict``):
    # fifteen empty sets and dicts cost ~1.7 µs a flow to make and free, and most media flows
    # fill two or three of them. Tallies (``_Tally``) read a missing key as 0 once they are
    # the flow's own; before that they are empty, and their keys are all that is read.
    # STUN / TURN
    stun_classic_tids: Mapping[bytes, int] = _NO_ENTRIES
    turn_methods: AbstractSet[str] = _NO_ITEMS
    stun_services: Mapping[str, str] = _NO_ENTRIES  # service -> first evidence detail
    stun_text: Mapping[str, str] = _NO_ENTRIES  # attribute key -> first value
    stun_types: AbstractSet[int] = _NO_ITEMS
    bound_channels: AbstractSet[int] = _NO_ITEMS
    # ChannelData
    channels: Mapping[int, int] = _NO_ENTRIES
    # DTLS
    dtls_versions: AbstractSet[int] = _NO_ITEMS
    # RTP / RTCP
    rtp_tracks: Mapping[tuple[bool, int], _RtpTrack] = _NO_ENTRIES
    rtcp_senders: Mapping[tuple[bool, int], int] = _NO_ENTRIES
    # Zoom
    zoom_layouts: AbstractSet[str] = _NO_ITEMS
    zoom_kinds: AbstractSet[str] = _NO_ITEMS
    zoom_p2p_ssrcs: Mapping[int, int] = _NO_ENTRIES
    zoom_setup_client: AbstractSet[bytes] = _NO_ITEMS
    zoom_setup_server: AbstractSet[bytes] = _NO_ITEMS

    def __init__(self, transport: str, client_port: int, server_port: int) -> None:
        self.transport = transport
        self.client_port = client_port
        self.server_port = server_port

    def is_empty(self) -> bool:
        """Nothing any detector or attribute reads was seen (every detector needs at least one
        of these counters or collections non-zero, see each ``detect_*``): then there is no hit
        and no attribute, without asking each detector."""
        return not (
            self.stun_cookie_messages
            or self.stun_classic_messages
            or self.stun_types
            or self.stun_text
            or self.turn_messages
            or self.ms_turn_frames
            or self.ms_turn_messages
            or self.channels
            or self.dtls_packets
            or self.dtls_handshakes
            or self.dtls_versions
            or self.rtp_tracks
            or self.rtcp_packets
            or self.rtcp_plain
            or self.rtcp_multi
            or self.rtcp_senders
            or self.zoom_server_media
            or self.zoom_layouts
            or self.zoom_kinds
            or self.zoom_p2p_media
            or self.zoom_setup_client
            or self.zoom_setup_server
            or self.zoom_p2p_setup
            or self.discord_discovery
            or self.discord_address
            or self.discord_ssrc >= 0
            or self.discord_keepalives
            or self.whatsapp_chat_version is not None
        )

    def validated_rtp_tracks(self) -> list[tuple[tuple[bool, int], _RtpTrack]]:
        """RTP sources (one SSRC in one direction) with >= 3 packets, at most 2 payload types
        (media + RTX/FEC/DTMF) and at least two consecutive sequence steps of 1..64 (mod 2^16).
        This is RFC 3550 Appendix A.1's probation (a source is valid after MIN_SEQUENTIAL = 2
        in-order packets), relaxed to tolerate loss and reordering."""
        valid = []
        for key, track in self.rtp_tracks.items():
            if len(track.sequences) < 3 or len(track.payload_types) > 2:
                continue
            steps = sum(
                1 for a, b in zip(track.sequences, track.sequences[1:]) if 1 <= (b - a) % 65536 <= 64
            )
            if steps >= 2:
                valid.append((key, track))
        return valid


# --------------------------------------------------------------------------------------------
# Detector functions. Each reads the evidence and returns a hit or None.


def detect_zoom_media(ev: FlowEvidence) -> DetectorHit | None:
    """Zoom server-relayed media (facts §2.1/§2.3; Michel et al. IMC '22; nDPI zoom.c).

    Hit when >= 2 packets carry SFU type 0x05 with RTP/RTCP (version 2) at the documented inner
    offset, or when the SFU session setup is seen from both sides with the server echoing the
    client's 16-byte id (zoom.pcap), or one of each. Weakness: offsets drift between client
    versions (both the 2022 8-byte and the 2019 1-byte outer header are tried); a client version
    that changes both the setup and the inner layout goes undetected.
    """
    echoed = bool(ev.zoom_setup_client & ev.zoom_setup_server)
    setup = bool(ev.zoom_setup_client or ev.zoom_setup_server)
    if ev.zoom_server_media >= 2 or echoed or (ev.zoom_server_media and setup):
        kinds = ",".join(sorted(ev.zoom_kinds)) or "control"
        how = "setup-echo" if echoed and not ev.zoom_server_media else f"media={kinds}"
        return DetectorHit("zoom-media", "zoom", f"zoom sfu {how}", max(ev.zoom_server_media, 1))
    return None


def detect_zoom_p2p(ev: FlowEvidence) -> DetectorHit | None:
    """Zoom peer-to-peer media (facts §2.2/§2.3; zoom_p2p.pcapng; nDPI zoom.c P2P setup).

    Hit on a P2P setup packet (``1F 02 01`` + length-prefixed peer IP string), or on >= 3
    inner-header packets with RTP/RTCP at the documented offsets whose RTP SSRC recurs.
    Weakness: without setup packets this rests on one type byte plus RTP version bits per packet;
    a plain RTP flow never matches (its first byte 0x80-0xBF is no Zoom inner type).
    """
    if ev.zoom_p2p_setup or (
        ev.zoom_p2p_media >= 3 and any(count >= 2 for count in ev.zoom_p2p_ssrcs.values())
    ):
        detail = "zoom p2p setup" if ev.zoom_p2p_setup else "zoom p2p media"
        if ev.zoom_kinds:
            detail += " media=" + ",".join(sorted(ev.zoom_kinds))
        return DetectorHit("zoom-p2p", "zoom", detail, ev.zoom_p2p_setup + ev.zoom_p2p_media)
    return None


def detect_ms_turn(ev: FlowEvidence) -> DetectorHit | None:
    """Microsoft's TURN dialect (facts §1.2; nDPI stun.c citing [MS-TURN] §2.2.3; teams.pcap).

    Hit on one 0xFF10 multiplexed-TURN frame whose length matches and whose inner bytes parse as
    STUN, on two such frames, or on a TURN-method message (Allocate, Refresh ...) carrying
    Microsoft attributes (0x8006, 0x8095 MS-Multiplexed-TURN-Session-ID ...). Weakness: only
    Teams/Skype relays speak it; Teams peer-to-peer checks are plain STUN with MS attributes and
    are attributed by the ``stun`` detector's service instead.
    """
    if ev.ms_turn_stun_frames or ev.ms_turn_frames >= 2:
        return DetectorHit("ms-turn", "teams", "ms-turn 0xff10 framing", ev.ms_turn_frames)
    if ev.ms_turn_messages:
        return DetectorHit("ms-turn", "teams", "ms-turn attributes on turn methods", ev.ms_turn_messages)
    return None


def detect_whatsapp_media(ev: FlowEvidence) -> DetectorHit | None:
    """WhatsApp call media: validated RTP on a flow whose STUN shows WhatsApp's markers.

    Evidence from the shared captures (wa_voice.pcap, whatsapp_login_call.pcap): the media flows
    interleave RTP (PT 120) and SRTCP with STUN Binding requests whose *only* attribute is
    MESSAGE-INTEGRITY (no USERNAME/PRIORITY/FINGERPRINT, unlike ICE, RFC 8445 §7.1), and the relay
    flows carry WhatsApp's 0x4000-range attributes (facts §1.13). RTP inside TURN ChannelData
    (rtc_code's description of WhatsApp relays) counts as RTP too; the shared captures show the
    relays carrying plain RTP right after the Allocate instead. Weakness: the integrity-only
    Binding is an observed habit, not a documented format; Messenger may share it.
    """
    marker = ev.stun_services.get("whatsapp") or (
        "stun binding integrity-only" if ev.integrity_only_bindings else ""
    )
    if not marker:
        return None
    tracks = ev.validated_rtp_tracks()
    if tracks:
        return DetectorHit("whatsapp-media", "whatsapp", f"rtp + {marker}", sum(len(t.sequences) for _, t in tracks))
    return None


def detect_discord_ip_discovery(ev: FlowEvidence) -> DetectorHit | None:
    """Discord voice IP discovery (facts §1.11; Discord voice-connections doc; nDPI discord.c).

    Hit on one 74-byte request/response with type 1/2, length 70 and a NUL-padded ASCII address
    field, or on >= 2 of the 8-byte ``13 37 CA FE`` keep-alives. Weakness: the keep-alive is
    4 fixed bytes; Discord could change either format without notice.
    """
    if ev.discord_discovery:
        detail = "discord ip-discovery"
        if ev.discord_address:
            detail += f" address={ev.discord_address}"
        return DetectorHit("discord-ip-discovery", "discord", detail, ev.discord_discovery)
    if ev.discord_keepalives >= 2:
        return DetectorHit("discord-ip-discovery", "discord", "discord keep-alive", ev.discord_keepalives)
    return None


def _stun_service(ev: FlowEvidence) -> tuple[str, str]:
    for service, detail in ev.stun_services.items():
        return service, detail
    return "", ""


def detect_turn(ev: FlowEvidence) -> DetectorHit | None:
    """TURN (RFC 5766/8656): a STUN message with a TURN-only method (Allocate, Refresh, Send,
    Data, CreatePermission, ChannelBind, RFC 6062 Connect...) (facts §3.2, as nDPI does).
    Weakness: inherits STUN's; a STUN server answering Allocate with an error is still "turn".
    """
    if ev.turn_messages:
        service, detail = _stun_service(ev)
        methods = ",".join(sorted(ev.turn_methods))
        text = f"turn methods={methods}" + (f"; {detail}" if detail else "")
        return DetectorHit("turn", service, text, ev.turn_messages)
    return None


def detect_stun(ev: FlowEvidence) -> DetectorHit | None:
    """STUN (RFC 5389/8489 with magic cookie; RFC 3489 classic) (facts §3.2).

    One cookie message suffices (32 fixed bits + a length that must match). Classic messages need
    two, or a request/response pair sharing a transaction id, or a vendor attribute. The service
    comes from ``stun.stun_service``. Weakness: vendor attribution rests on client-chosen
    attributes and REALM text; flows that only do plain Binding (e.g. Signal to Google's STUN)
    carry no vendor mark and nDPI's labels there come from its address cache.
    """
    if ev.stun_cookie_messages or (
        ev.stun_classic_messages
        and (
            ev.stun_classic_messages >= 2
            or any(n >= 2 for n in ev.stun_classic_tids.values())
            or ev.stun_services
        )
    ):
        service, detail = _stun_service(ev)
        count = ev.stun_cookie_messages + ev.stun_classic_messages
        kind = "stun" if ev.stun_cookie_messages else "stun classic"
        return DetectorHit("stun", service, detail or kind, count)
    return None


def detect_turn_channel(ev: FlowEvidence) -> DetectorHit | None:
    """TURN ChannelData (RFC 5766 §11.4; facts §3.2): 4-byte header, channel 0x4000-0x4FFF and a
    length matching the datagram. Hit when one channel recurs in >= 2 packets, or once on a
    channel this flow bound with ChannelBind. Weakness: QUIC short headers also start 0x40-0x4F;
    the exact length match and recurrence are what keep them out.
    """
    if not ev.channels:
        return None
    bound = [channel for channel in ev.channels if channel in ev.bound_channels]
    recurring = [channel for channel, count in ev.channels.items() if count >= 2]
    chosen = bound or recurring
    if chosen:
        channels = ",".join(f"0x{c:04x}" for c in sorted(chosen)[:4])
        return DetectorHit("turn-channel", "", f"turn channel={channels}", sum(ev.channels[c] for c in chosen))
    return None


def detect_dtls(ev: FlowEvidence) -> DetectorHit | None:
    """DTLS (RFC 6347, RFC 9147; facts §3.3): datagrams made exactly of records with a known
    content type and version (1.0/1.2/1.3, or OpenSSL's pre-RFC 0x0100). One datagram with a
    well-formed epoch-0 handshake header suffices, otherwise two. Weakness: encrypted records of
    an ongoing session (epoch > 0) are only 3 fixed bytes and a length each.
    """
    if ev.dtls_handshakes or ev.dtls_packets >= 2:
        names = {0xFEFF: "1.0", 0xFEFD: "1.2", 0xFEFC: "1.3", 0x0100: "pre-rfc"}
        versions = ",".join(sorted(names.get(v, "1.3") for v in ev.dtls_versions)) or "1.3"
        return DetectorHit("dtls", "", f"dtls version={versions}", ev.dtls_packets)
    return None


def detect_rtp(ev: FlowEvidence) -> DetectorHit | None:
    """RTP (RFC 3550 §5.1; facts §3.4) validated over several packets: one SSRC in one direction
    with >= 3 packets, at most two payload types, sequence numbers advancing (see
    ``FlowEvidence.validated_rtp_tracks``); RTP inside TURN ChannelData or RFC 4571 TCP framing
    counts, RTP inside Zoom's encapsulation is the Zoom detectors' evidence. Weakness: a stream
    whose first 32 payloads are lost or reordered beyond 64 is missed.
    """
    tracks = ev.validated_rtp_tracks() if ev.rtp_tracks else ()
    if tracks:
        types = sorted({pt for _, track in tracks for pt in track.payload_types})
        detail = "rtp pt=" + ",".join(map(str, types)) + f" ssrcs={len(tracks)}"
        return DetectorHit("rtp", "", detail, sum(len(track.sequences) for _, track in tracks))
    return None


def detect_rtcp(ev: FlowEvidence) -> DetectorHit | None:
    """RTCP and SRTCP (RFC 3550 §6, RFC 3711 §3.4; facts §3.4; see ``rtp.rtcp_layout``).

    Hit on two datagrams that are exact RTCP compounds (types 200-207 tiling the datagram), on
    one exact compound of two packets or more, or on two SRTCP datagrams from the same sender
    SSRC in the same direction (KakaoTalk_talk.pcap, stun_signal.pcapng carry SRTCP only).
    Weakness: a lone reduced-size RTCP packet (RFC 5506) is not enough.
    """
    if ev.rtcp_plain >= 2 or ev.rtcp_multi or any(count >= 2 for count in ev.rtcp_senders.values()):
        kind = "rtcp compound" if ev.rtcp_plain else "srtcp"
        return DetectorHit("rtcp", "", kind, ev.rtcp_packets)
    return None


@dataclass(frozen=True, slots=True)
class Detector:
    """A registered detector: its fixed name (used by signature files), the function, and the
    ``app_protocol`` a flow gets when this is its strongest hit ("" = defer to the next hit)."""

    name: str
    function: Callable[[FlowEvidence], DetectorHit | None]
    app_protocol: str


#: Tried in this order; hits come back in this order (strongest first).
def detect_whatsapp_chat(ev: FlowEvidence) -> DetectorHit | None:
    """WhatsApp's chat stream header (``WA`` + version) on the client's first TCP segment.

    Source: libprotoident lpi_whatsapp.cc, nDPI whatsapp.c, the shared WhatsApp captures (details
    in ``inspector.dissect.whatsapp``). Weakness: four plain-text bytes on one segment; another
    protocol opening with ``WA`` and a small version pair would match."""
    if ev.whatsapp_chat_version is None:
        return None
    return DetectorHit("whatsapp-chat", "whatsapp", f"WA stream header version {ev.whatsapp_chat_version}")


DETECTORS: Final[tuple[Detector, ...]] = (
    Detector("zoom-media", detect_zoom_media, "zoom-media"),
    Detector("zoom-p2p", detect_zoom_p2p, "zoom-media"),
    Detector("ms-turn", detect_ms_turn, "turn"),
    Detector("whatsapp-media", detect_whatsapp_media, ""),
    Detector("whatsapp-chat", detect_whatsapp_chat, ""),
    Detector("discord-ip-discovery", detect_discord_ip_discovery, ""),
    Detector("turn", detect_turn, "turn"),
    Detector("stun", detect_stun, "stun"),
    Detector("turn-channel", detect_turn_channel, "turn"),
    Detector("dtls", detect_dtls, "dtls"),
    Detector("rtp", detect_rtp, "rtp"),
    Detector("rtcp", detect_rtcp, "rtcp"),
)
DETECTOR_NAMES: Final = tuple(detector.name for detector in DETECTORS)
_APP_PROTOCOL: Final = {detector.name: detector.app_protocol for detector in DETECTORS}
#: Hits after which more packets cannot change the verdict: RTP media seen. Signalling-only
#: verdicts (STUN, TURN, MS-TURN, Zoom setup) and RTCP are not final: with RTP/RTCP multiplexing
#: (RFC 5761) the RTP and its payload types may come later.
_FINAL: Final = frozenset({"whatsapp-media", "rtp"})  # MediaFlowState._firm tests these directly
_ZOOM: Final = frozenset({"zoom-media", "zoom-p2p"})


class MediaFlowState:
    """Per-flow media detection state. Feed payloads in capture order; read hits at any time.

    ``feed`` never raises: bytes that fit no format are ignored, bytes that start like a format
    but break it are counted in ``errors`` (``stun_malformed``, ``dtls_malformed`` ...).
    After ``done`` further packets are ignored.
    """

    def __init__(self, transport: str, client_port: int, server_port: int) -> None:
        self.transport = transport.lower()
        self.evidence = FlowEvidence(self.transport, client_port, server_port)
        self.errors: collections.Counter[str] = ErrorCounts()
        self._hits: tuple[DetectorHit, ...] | None = ()
        self._attributes: tuple[tuple[str, str], ...] | None = None
        self._done = False

    # -- feeding --------------------------------------------------------------------------

    def feed(self, from_client: bool, payload: bytes, ts_ns: int) -> None:
        """Parse one payload packet (UDP datagram or TCP segment) of this flow.

        ``ts_ns`` is part of the interface for detectors that need timing; none does yet (stream
        timing is ``inspector.media_stats``' job, over all packets rather than the first 32).
        """
        if self._done:
            return
        data = bytes(payload)  # also accepts memoryview / numpy uint8 slices
        if not data:
            return
        try:
            self._feed(bool(from_client), data)
        except Exception:  # a parser bug must not stop the capture; the parsers do not raise
            self.errors["internal_error"] += 1
        self._hits = None
        self._attributes = None
        if self.evidence.packets == 1 and _opaque_first_payload(self.transport, data):
            self._done = True
        elif self.evidence.packets >= MAX_PACKETS or self._firm():
            self._done = True

    def _firm(self) -> bool:
        ev = self.evidence
        if not (ev.rtp_samples or ev.rtcp_packets or ev.zoom_server_media or ev.zoom_p2p_media):
            return False
        # Only the detectors in _FINAL and _ZOOM can make the verdict firm, so only they run
        # here (every packet); the full registry runs once, when the hits are read.
        # Both _FINAL detectors need a validated RTP track, and detect_rtp hits on any.
        if ev.rtp_samples >= 3 and detect_rtp(ev) is not None:
            return True
        if ev.zoom_server_media + ev.zoom_p2p_media >= 4:
            return detect_zoom_media(ev) is not None or detect_zoom_p2p(ev) is not None
        return False

    def _feed(self, from_client: bool, payload: bytes) -> None:
        ev = self.evidence
        ev.packets += 1
        if self.transport == "tcp":
            self._feed_stream(from_client, payload)
            return
        # MS-TURN frames start with their magic 0xFF10: only then is there anything to strip.
        inner = stun.strip_ms_turn(payload) if payload[0] == 0xFF else None
        if inner is not None:
            ev.ms_turn_frames += 1
            message = stun.parse_stun(inner)
            if message is not None:
                ev.ms_turn_stun_frames += 1
                self._note_stun(message)
                return
            payload = inner
        self._feed_datagram(from_client, payload)

    def _feed_datagram(self, from_client: bool, payload: bytes) -> None:
        ev = self.evidence
        first = payload[0]
        if first <= 3:
            message = stun.parse_stun(payload)
            if message is not None:
                self._note_stun(message)
                return
            if len(payload) >= 8 and payload[4:8] == b"\x21\x12\xa4\x42":
                self.errors["stun_malformed"] += 1
        if 64 <= first <= 79:
            channel_data = media.parse_channel_data(payload)
            if channel_data is not None:
                channels = ev.channels = _own_tally(ev.channels)
                channels[channel_data.channel] += 1
                if channel_data.data:
                    self._feed_datagram_inner(from_client, channel_data.data)
                return
        if 20 <= first <= 63:
            records = media.parse_dtls_records(payload)
            if records:
                ev.dtls_packets += 1
                versions = [r.version for r in records if r.version]
                if versions:
                    dtls_versions = ev.dtls_versions = _own_set(ev.dtls_versions)
                    dtls_versions.update(versions)
                if any(r.handshake_type is not None for r in records):
                    ev.dtls_handshakes += 1
                return
            if first in media.DTLS_CONTENT_TYPES and payload[1:3] in (b"\xfe\xff", b"\xfe\xfd"):
                self.errors["dtls_malformed"] += 1
        if 128 <= first <= 191:
            if self._note_rtp_or_rtcp(from_client, payload):
                return
        self._note_vendor(from_client, payload)

    def _feed_datagram_inner(self, from_client: bool, data: bytes) -> None:
        """Application data inside ChannelData: STUN, DTLS or RTP/RTCP to the peer."""
        first = data[0]
        if first <= 3:
            message = stun.parse_stun(data)
            if message is not None:
                self._note_stun(message)
        elif 128 <= first <= 191:
            self._note_rtp_or_rtcp(from_client, data)
        elif 20 <= first <= 63 and media.parse_dtls_records(data):
            self.evidence.dtls_packets += 1

    def _feed_stream(self, from_client: bool, payload: bytes) -> None:
        """TCP: STUN back to back (RFC 5389 §7.2.2) or RFC 4571-framed STUN/RTP/RTCP/DTLS;
        the WhatsApp chat stream header on the client's first segment."""
        if from_client and self.evidence.packets == 1:
            version = whatsapp.chat_stream_version(payload)
            if version is not None:
                self.evidence.whatsapp_chat_version = version
                return
        messages = stun.parse_stun_stream(payload)
        if messages:
            for message in messages:
                self._note_stun(message)
            return
        if self._feed_turn_stream(from_client, payload):
            return
        if media.parse_dtls_records(payload):
            self.evidence.dtls_packets += 1
            return
        # RFC 4571: each RTP/RTCP packet prefixed by a 2-byte length.
        pos = 0
        frames: list[bytes] = []
        while pos + 2 <= len(payload) and len(frames) < MAX_TCP_FRAMES:
            frame_len = struct.unpack_from("!H", payload, pos)[0]
            if frame_len == 0 or pos + 2 + frame_len > len(payload):
                break
            frames.append(payload[pos + 2 : pos + 2 + frame_len])
            pos += 2 + frame_len
        if frames and pos == len(payload):
            for frame in frames:
                if 128 <= frame[0] <= 191:
                    self._note_rtp_or_rtcp(from_client, frame)
                elif frame[0] in media.DTLS_CONTENT_TYPES and media.parse_dtls_records(frame):
                    self.evidence.dtls_packets += 1

    def _feed_turn_stream(self, from_client: bool, payload: bytes) -> bool:
        """TURN over TCP (RFC 8656 §12.5): STUN messages and ChannelData (padded to 4 bytes)
        back to back in one segment. True when the whole segment was consumed that way.
        Weakness: a message split over two segments is not reassembled and the segment is skipped.
        """
        items: list[stun.StunMessage | media.ChannelData] = []
        pos = 0
        while pos < len(payload) and len(items) < MAX_TCP_FRAMES:
            first = payload[pos]
            item: stun.StunMessage | media.ChannelData | None = None
            if first <= 3:
                item = stun.parse_stun(payload[pos:], allow_trailing=True)
            elif 64 <= first <= 79:
                item = media.parse_channel_data(payload[pos:], stream=True)
            if item is None:
                return False
            items.append(item)
            pos += item.total_len
        if not items or pos != len(payload):
            return False
        for item in items:
            if isinstance(item, stun.StunMessage):
                self._note_stun(item)
            else:
                channels = self.evidence.channels = _own_tally(self.evidence.channels)
                channels[item.channel] += 1
                if item.data:
                    self._feed_datagram_inner(from_client, item.data)
        return True

    # -- evidence ---------------------------------------------------------------------------

    def _note_stun(self, message: stun.StunMessage) -> None:
        ev = self.evidence
        types = message.attribute_types
        if len(ev.stun_types) < 8:
            stun_types = ev.stun_types = _own_set(ev.stun_types)
            stun_types.add(message.message_type)
        if not ev.stun_first_transaction:
            ev.stun_first_transaction = message.transaction_id
        classic = message.classic
        if classic:
            ev.stun_classic_messages += 1
            tids = ev.stun_classic_tids = _own_tally(ev.stun_classic_tids)
            tids[message.transaction_id] += 1
        else:
            ev.stun_cookie_messages += 1
        method = message.method
        if method in stun.TURN_METHODS:  # message.is_turn
            ev.turn_messages += 1
            if not types.isdisjoint(stun.MS_ATTRIBUTES):
                ev.ms_turn_messages += 1
            turn_methods = ev.turn_methods = _own_set(ev.turn_methods)
            turn_methods.add(stun.METHOD_NAMES.get(method) or f"0x{method:03x}")
            if method == 0x009:
                number = message.attribute(stun.ATTR_CHANNEL_NUMBER)
                if number is not None and len(number) >= 2:
                    bound = ev.bound_channels = _own_set(ev.bound_channels)
                    bound.add(struct.unpack_from("!H", number)[0])
        if (
            not classic
            and message.message_type == 0x0001
            and types == {stun.ATTR_MESSAGE_INTEGRITY}
        ):
            ev.integrity_only_bindings += 1
        service, detail = stun.stun_service(message, types)
        if service and service not in ev.stun_services:
            services = ev.stun_services = _own_dict(ev.stun_services)
            services[service] = detail
        for key, attr_type in (
            ("stun_software", stun.ATTR_SOFTWARE),
            ("stun_realm", stun.ATTR_REALM),
            ("stun_username", stun.ATTR_USERNAME),
        ):
            if key not in ev.stun_text and attr_type in types:
                text = message.text(attr_type)
                if text:
                    stun_text = ev.stun_text = _own_dict(ev.stun_text)
                    stun_text[key] = text
        if "stun_mapped" not in ev.stun_text and message.message_class == "success":
            mapped = message.mapped_address
            if mapped:
                stun_text = ev.stun_text = _own_dict(ev.stun_text)
                stun_text["stun_mapped"] = mapped

    def _note_rtp_or_rtcp(self, from_client: bool, payload: bytes) -> bool:
        ev = self.evidence
        if len(payload) >= 2 and 192 <= payload[1] <= 223:
            layout, packets = rtp.rtcp_layout(payload)
            if not layout:
                return False
            ev.rtcp_packets += 1
            if layout == "plain":
                ev.rtcp_plain += 1
                if len(packets) >= 2:
                    ev.rtcp_multi += 1
            if len(ev.rtcp_senders) < 16:
                senders = ev.rtcp_senders = _own_tally(ev.rtcp_senders)
                senders[(from_client, packets[0].ssrc)] += 1
            return True
        header = rtp.parse_rtp(payload)
        if header is None:
            if len(payload) < rtp.RTP_MIN_HEADER:
                self.errors["rtp_truncated"] += 1
            return False
        self._note_rtp_header(from_client, header)
        return True

    def _note_rtp_header(self, from_client: bool, header: rtp.RtpHeader) -> None:
        ev = self.evidence
        if ev.rtp_samples >= MAX_RTP_SAMPLES:
            return
        key = (from_client, header.ssrc)
        track = ev.rtp_tracks.get(key)
        if track is None:
            if len(ev.rtp_tracks) >= 16:  # random payloads would each open a new "source"
                return
            tracks = ev.rtp_tracks = _own_dict(ev.rtp_tracks)
            track = tracks[key] = _RtpTrack(set(), [])
        if len(track.payload_types) < 8:
            track.payload_types.add(header.payload_type)
        track.sequences.append(header.sequence)
        ev.rtp_samples += 1

    def _note_vendor(self, from_client: bool, payload: bytes) -> None:
        """Formats outside the RFC 7983 table: Zoom, Discord."""
        ev = self.evidence
        server_media = zoom.parse_server_media(payload)
        if server_media is not None:
            ev.zoom_server_media += 1
            layouts = ev.zoom_layouts = _own_set(ev.zoom_layouts)
            layouts.add(server_media.layout)
            if server_media.media_kind:
                kinds = ev.zoom_kinds = _own_set(ev.zoom_kinds)
                kinds.add(server_media.media_kind)
            return
        setup_id = zoom.sfu_setup_id(payload, from_client)
        if setup_id is not None:
            if from_client:
                setups = ev.zoom_setup_client = _own_set(ev.zoom_setup_client)
            else:
                setups = ev.zoom_setup_server = _own_set(ev.zoom_setup_server)
            setups.add(setup_id)
            return
        if zoom.is_p2p_setup(payload):
            ev.zoom_p2p_setup += 1
            return
        p2p_media = zoom.parse_p2p_media(payload)
        if p2p_media is not None:
            ev.zoom_p2p_media += 1
            if p2p_media.media_kind:
                kinds = ev.zoom_kinds = _own_set(ev.zoom_kinds)
                kinds.add(p2p_media.media_kind)
            if p2p_media.rtp is not None and len(ev.zoom_p2p_ssrcs) < 16:
                ssrcs = ev.zoom_p2p_ssrcs = _own_tally(ev.zoom_p2p_ssrcs)
                ssrcs[p2p_media.rtp.ssrc] += 1
            return
        discovery = media.parse_discord_discovery(payload)
        if discovery is not None:
            ev.discord_discovery += 1
            ev.discord_ssrc = discovery.ssrc
            if discovery.address and not ev.discord_address:
                ev.discord_address = discovery.address
            return
        if media.is_discord_keepalive(payload):
            ev.discord_keepalives += 1

    # -- verdict ----------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once ``MAX_PACKETS`` payloads were seen, a media verdict is firm (validated RTP,
        WhatsApp media, Zoom with >= 4 media packets), or the first payload is TLS, HTTP or a
        QUIC Initial (see ``_opaque_first_payload``). Signalling-only verdicts (STUN, TURN,
        MS-TURN, Zoom setup) and RTCP are not firm: RTP and its payload types may follow."""
        return self._done

    def hits(self) -> tuple[DetectorHit, ...]:
        """Detector hits, strongest first (``DETECTORS`` order)."""
        if self._hits is None:
            if self.evidence.is_empty():
                self._hits = ()
                return self._hits
            found = []
            for detector in DETECTORS:
                hit = detector.function(self.evidence)
                if hit is not None:
                    found.append(hit)
            self._hits = tuple(found)
        return self._hits

    def app_protocol(self) -> str:
        """The strongest hit's protocol (``zoom-media``, ``turn``, ``stun``, ``dtls``, ``rtp``,
        ``rtcp``); a WebRTC flow mixing STUN, DTLS and RTP is ``stun`` as with nDPI. "" if none."""
        hits = self.hits()
        for hit in hits:
            protocol = _APP_PROTOCOL.get(hit.detector, "")
            if protocol:
                return protocol
        return hits[0].detector if hits else ""

    def stun_realm(self) -> str:
        """The first STUN REALM text seen (the ``stun_realm`` attribute), "" when none."""
        return self.evidence.stun_text.get("stun_realm", "")

    def attributes(self) -> tuple[tuple[str, str], ...]:
        """Facts for ``FlowFacts.attributes``: STUN SOFTWARE/REALM/USERNAME, mapped address,
        message types and first transaction id; RTP payload types and SSRCs; DTLS versions; Zoom
        media kinds and layout; TURN channels; Discord discovery address and SSRC. Text values
        come from the wire: exporters must neutralise them (DESIGN.md §2)."""
        if self._attributes is None:  # kept until the next ``feed``, like ``hits``
            self._attributes = () if self.evidence.is_empty() else self._read_attributes()
        return self._attributes

    def _read_attributes(self) -> tuple[tuple[str, str], ...]:
        ev = self.evidence
        out: list[tuple[str, str]] = [(key, ev.stun_text[key]) for key in sorted(ev.stun_text)]
        if ev.stun_types:
            out.append(("stun_message_types", ",".join(f"0x{t:04x}" for t in sorted(ev.stun_types))))
            out.append(("stun_transaction_id", ev.stun_first_transaction.hex()))
        tracks = ev.validated_rtp_tracks()
        if tracks:
            types = sorted({pt for _, track in tracks for pt in track.payload_types})
            out.append(("rtp_payload_types", ",".join(map(str, types))))
            out.append(("rtp_ssrcs", ",".join(f"0x{ssrc:08x}" for (_, ssrc), _ in tracks[:8])))
        if ev.dtls_versions:
            out.append(("dtls_versions", ",".join(f"0x{v:04x}" for v in sorted(ev.dtls_versions))))
        if ev.zoom_kinds:
            out.append(("zoom_media_kinds", ",".join(sorted(ev.zoom_kinds))))
        if ev.zoom_layouts:
            out.append(("zoom_layout", ",".join(sorted(ev.zoom_layouts))))
        if ev.channels:
            out.append(("turn_channels", ",".join(f"0x{c:04x}" for c in sorted(ev.channels)[:8])))
        if ev.discord_address:
            out.append(("discord_address", ev.discord_address))
        if ev.discord_ssrc >= 0:
            out.append(("discord_ssrc", f"0x{ev.discord_ssrc:08x}"))
        return tuple(out)


_HTTP_STARTS: Final = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"OPTIONS ", b"CONNECT ", b"DELETE ", b"HTTP/1.")
#: QUIC versions whose long header makes a flow QUIC from its first packet (RFC 9000 §15, RFC 9369).
_QUIC_VERSIONS: Final = frozenset({0x00000001, 0x6B3343CF})


def _opaque_first_payload(transport: str, payload: bytes) -> bool:
    """The flow's first payload shows a protocol whose later bytes no media detector can read.

    TCP starting with a TLS record header (type 20-23, version 3.x, RFC 8446 §5.1) or an HTTP
    request/status line; UDP starting with a QUIC v1/v2 long header (RFC 9000 §17.2). TURN over
    TLS and media inside QUIC are encrypted, so these flows are done after one packet, which
    keeps the per-flow Python cost of the common web flows at one call.
    Weakness: RFC 9443 lets QUIC share a 5-tuple with STUN/RTP; such a flow that starts with
    QUIC is not examined further.
    """
    if transport == "tcp":
        if len(payload) >= 5 and 20 <= payload[0] <= 23 and payload[1] == 3 and payload[2] <= 4:
            return True
        return payload.startswith(_HTTP_STARTS)
    if transport == "udp" and len(payload) >= 7 and payload[0] & 0xC0 == 0xC0:
        return struct.unpack_from("!I", payload, 1)[0] in _QUIC_VERSIONS
    return False


# --------------------------------------------------------------------------------------------
# Vectorised pre-filter for the columnar hot path.

_ZOOM_P2P_FIRST: Final = (0x01, 0x0D, 0x0F, 0x10, 0x1E, 0x1F, 0x21, 0x22, 0x23)


def media_candidate_mask(first_bytes: np.ndarray, payload_len: np.ndarray) -> np.ndarray:
    """Which packets could be STUN/TURN/DTLS/RTP/RTCP/Zoom/Discord media by their first byte.

    ``first_bytes`` is uint8[n] (byte 0 of each payload) or uint8[n, k] (the first k bytes; then
    byte 1 sharpens MS-TURN's 0xFF10 check). ``payload_len`` int[n]. Returns bool[n]. A False
    means no detector here can use the packet; True only means "worth feeding".
    Ranges: RFC 7983/9443 (facts §3.1) plus Zoom's outer/inner type bytes (facts §2),
    Discord's 0x00 type and 0x13 keep-alive (facts §1.11) and MS-TURN's 0xFF (facts §1.2).
    Weakness: by design permissive; 0x80-0xBF alone admits a quarter of random payloads.
    """
    fb = np.asarray(first_bytes)
    length = np.asarray(payload_len)
    b0 = fb[:, 0] if fb.ndim == 2 else fb
    b0 = b0.astype(np.int16)
    stun_like = (b0 <= 3) & (length >= 8)
    dtls_like = (b0 >= 20) & (b0 <= 63) & (length >= 4)
    channel_like = (b0 >= 64) & (b0 <= 79) & (length >= 4)
    rtp_like = (b0 >= 128) & (b0 <= 191) & (length >= 8)
    zoom_like = ((b0 == 0x05) | (b0 == 0x02) | np.isin(b0, _ZOOM_P2P_FIRST)) & (length >= 13)
    discord_like = (b0 == 0x13) & (length == 8)
    ms_turn = (b0 == 0xFF) & (length >= 13)
    if fb.ndim == 2 and fb.shape[1] >= 2:
        ms_turn &= fb[:, 1] == 0x10
    return stun_like | dtls_like | channel_like | rtp_like | zoom_like | discord_like | ms_turn
