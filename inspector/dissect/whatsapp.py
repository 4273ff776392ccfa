"""WhatsApp's chat stream header: the first bytes a WhatsApp client sends on its TCP connection.

Facts: the client opens its chat connection (TCP 443 or 5222) with the two letters ``WA`` and a
two-byte protocol version (``57 41 01 05``, ``57 41 02 01`` ...), libprotoident
``lib/tcp/lpi_whatsapp.cc`` (match on ``WA 01 02`` / ``WA 01 05``); newer clients put an edge-routing
preamble in front: ``ED 00 01``, a 3-byte length, that many routing bytes, then ``WA`` and the version
(nDPI ``src/lib/protocols/whatsapp.c`` matches one such sequence byte for byte). Both forms appear in
the shared captures wa_voice.pcap, whatsapp_login_call.pcap and whatsapp_voice_and_message.pcap.

Weakness: four bytes of plain text; any protocol whose client starts with ``WA`` and a small version
pair would match. The major version is limited to 1-9 to keep that chance small.
"""

from __future__ import annotations

from typing import Final

EDGE_ROUTING: Final = b"ED\x00\x01"
MAX_ROUTING_BYTES: Final = 64


def chat_stream_version(payload: bytes) -> str | None:
    """``"1.5"`` for a client's first bytes ``WA 01 05`` (after an optional edge-routing
    preamble), None when the payload does not start a WhatsApp chat stream."""
    pos = 0
    if payload.startswith(EDGE_ROUTING):
        if len(payload) < 7:
            return None
        length = int.from_bytes(payload[4:7], "big")
        if length > MAX_ROUTING_BYTES:
            return None
        pos = 7 + length
    head = payload[pos : pos + 4]
    if len(head) < 4 or head[:2] != b"WA" or not 1 <= head[2] <= 9:
        return None
    return f"{head[2]}.{head[3]}"
