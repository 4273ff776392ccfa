"""HTTP/1.x request head: method line check and the Host header (RFC 9112 §3, RFC 9110 §7.2).

Only the client's first request is read, from the start of the client->server stream. The method
must be one of the registered methods below (RFC 9110 §9, RFC 5789 PATCH), which keeps binary
protocols on port 80 from being misread. Weakness: HTTP/2 cleartext and pipelined later requests
are not read, and an absolute-form target's authority (proxy requests) is used only when Host is
missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

METHODS: Final = (
    b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"TRACE", b"PATCH",
)
# A request head larger than this is not a normal client request (RFC 9112 leaves the limit to
# the implementation; common servers use 8 KiB).
MAX_HEAD_BYTES: Final = 8192


class HttpError(ValueError):
    """Bytes that are not an HTTP/1.x request head; the reason is in ``.reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """method, request target and version as sent; host = Host header value ("" if absent)."""

    method: str
    target: str
    version: str
    host: str


def looks_like_request(data: bytes) -> bool:
    """True when ``data`` starts with a known method followed by a space."""
    return any(data.startswith(method + b" ") for method in METHODS)


def _strip_port(authority: str) -> str:
    """``host:port`` -> ``host``; ``[v6]:port`` -> ``v6`` (RFC 9110 §7.2, RFC 3986 §3.2.2)."""
    if authority.startswith("["):
        end = authority.find("]")
        return authority[1:end] if end > 0 else authority
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        return host
    return authority


def parse_request_head(data: bytes) -> HttpRequest | None:
    """Parses the request line and headers; None while the head is not yet complete.

    Raises HttpError when the bytes are not an HTTP/1.x request or the head exceeds
    MAX_HEAD_BYTES. Host is returned without its port; obs-fold continuation lines are ignored.
    """
    if not looks_like_request(data[:8]):
        raise HttpError("not_http_request")
    head_end = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
    if head_end < 0:
        if len(data) >= MAX_HEAD_BYTES + 4:
            raise HttpError("head_too_large")
        return None
    lines = data[:head_end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError("bad_request_line")
    method, target, version = parts
    host = ""
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        if name.strip().lower() == "host":
            host = _strip_port(value.strip())
            break
    if not host and "://" in target:
        authority = target.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
        host = _strip_port(authority)
    return HttpRequest(method=method, target=target, version=version, host=host)
