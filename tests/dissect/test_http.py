"""HTTP/1.x request head parsing (RFC 9112 §3 request line, RFC 9110 §7.2 Host)."""

from __future__ import annotations

import pytest

from inspector.dissect.http import (
    MAX_HEAD_BYTES,
    HttpError,
    HttpRequest,
    looks_like_request,
    parse_request_head,
)


def test_host_header_port_removed() -> None:
    request = parse_request_head(
        b"POST /v1/log HTTP/1.1\r\nUser-Agent: x\r\nhOsT:  Log.Zoom.US:8080 \r\n\r\nbody"
    )
    assert request == HttpRequest("POST", "/v1/log", "HTTP/1.1", "Log.Zoom.US")


def test_ipv6_literal_host() -> None:
    request = parse_request_head(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n")
    assert request is not None and request.host == "2001:db8::1"


def test_absolute_form_target_used_without_host() -> None:
    request = parse_request_head(b"GET http://user@proxy.example:3128/x HTTP/1.0\r\n\r\n")
    assert request is not None and request.host == "proxy.example"


def test_missing_host_is_empty() -> None:
    request = parse_request_head(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n")
    assert request is not None and request.host == ""


def test_incomplete_head_returns_none() -> None:
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: a.example\r\n") is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x16\x03\x01\x02\x00", "not_http_request"),
        (b"get / HTTP/1.1\r\n\r\n", "not_http_request"),
        (b"GET /a b HTTP/1.1\r\n\r\n", "bad_request_line"),
        (b"GET / HTTP/2.0\r\n\r\n", "bad_request_line"),
        (b"GET /" + b"a" * (MAX_HEAD_BYTES + 10), "head_too_large"),
    ],
)
def test_not_a_request(data: bytes, reason: str) -> None:
    with pytest.raises(HttpError) as caught:
        parse_request_head(data)
    assert caught.value.reason == reason


def test_method_check() -> None:
    assert looks_like_request(b"OPTIONS * HTTP/1.1")
    assert not looks_like_request(b"GETX / HTTP/1.1")
    assert not looks_like_request(b"HTTP/1.1 200 OK")
