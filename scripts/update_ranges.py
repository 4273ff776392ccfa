#!/usr/bin/env python3
"""Refresh the generated ``signatures/*.cidrs.txt`` files from the vendors' published lists.

    python3 scripts/update_ranges.py                 # every feed below
    python3 scripts/update_ranges.py zoom teams      # some of them
    python3 scripts/update_ranges.py --dry-run       # fetch and show counts, write nothing

Feeds (machine-readable lists only; HTML pages such as Webex's or Google Meet's are edited by hand):

  zoom          https://assets.zoom.us/docs/ipranges/Zoom.txt (one prefix per line). Zoom's IPv6
                prefixes are not in that list (nDPI utils/zoom_ip_addresses_download.sh says so), so
                the three from the Zoom firewall page are kept and added.
  teams         https://endpoints.office.com/endpoints/worldwide?clientrequestid=<uuid>, entries with
                serviceArea "Skype" (the Teams / Skype for Business sets 11 and 12, nDPI
                utils/microsoft_ip_addresses_download.sh uses the same selection).
  amazon-chime  https://ip-ranges.amazonaws.com/ip-ranges.json, service "CHIME_MEETINGS".
  telegram      https://core.telegram.org/resources/cidr.txt (one prefix per line).

All feeds are fetched before anything is written. When one cannot be fetched (no network, HTTP error,
unparseable answer) the script prints one line naming it and exits 1, leaving the committed files as
they are: they are the offline default.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SIGNATURES = Path(__file__).resolve().parents[1] / "signatures"
MAX_BYTES = 20 * 1024 * 1024  # the AWS list is ~2 MB; refuse anything absurd


class FeedError(Exception):
    """A feed could not be fetched or parsed."""


def parse_prefix_lines(text: str) -> list[str]:
    """One prefix per line, ``#`` comments and blank lines ignored (Zoom.txt, Telegram cidr.txt)."""
    out = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            out.append(_network(entry))
    return out


def parse_office365(text: str) -> list[str]:
    """IP prefixes of the serviceArea "Skype" entries of the Microsoft 365 endpoint feed."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FeedError(f"not JSON ({e})") from e
    if not isinstance(data, list):
        raise FeedError("expected a JSON array of endpoint sets")
    out = []
    for entry in data:
        if isinstance(entry, dict) and entry.get("serviceArea") == "Skype":
            for ip in entry.get("ips", []) or []:
                out.append(_network(str(ip)))
    return out


def parse_aws(text: str, service: str = "CHIME_MEETINGS") -> list[str]:
    """``ip_prefix`` / ``ipv6_prefix`` of one AWS service in ip-ranges.json."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FeedError(f"not JSON ({e})") from e
    if not isinstance(data, dict):
        raise FeedError("expected a JSON object")
    out = []
    for key, field in (("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")):
        for entry in data.get(key, []) or []:
            if isinstance(entry, dict) and entry.get("service") == service and field in entry:
                out.append(_network(str(entry[field])))
    return out


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError as e:
        raise FeedError(f"invalid prefix {text.strip()[:60]!r}") from e


@dataclass(frozen=True)
class Feed:
    id: str
    title: str
    url: str
    parse: Callable[[str], list[str]]
    extra: tuple[str, ...] = ()  # prefixes the vendor documents elsewhere


FEEDS = {
    f.id: f
    for f in (
        Feed(
            "zoom",
            "Zoom published address ranges.",
            "https://assets.zoom.us/docs/ipranges/Zoom.txt",
            parse_prefix_lines,
            ("2620:123:2000::/40", "2600:9000:2600::/48", "2407:30c0::/32"),
        ),
        Feed(
            "teams",
            "Microsoft Teams / Skype for Business Online ranges (serviceArea Skype).",
            "https://endpoints.office.com/endpoints/worldwide?clientrequestid={uuid}",
            parse_office365,
        ),
        Feed(
            "amazon-chime",
            "Amazon Chime meetings media ranges (service CHIME_MEETINGS).",
            "https://ip-ranges.amazonaws.com/ip-ranges.json",
            parse_aws,
        ),
        Feed(
            "telegram",
            "Telegram's address ranges.",
            "https://core.telegram.org/resources/cidr.txt",
            parse_prefix_lines,
        ),
    )
}


def fetch(url: str, timeout: float) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": "inspector-update-ranges/1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (https URLs above)
            body = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise FeedError(f"HTTP {e.code}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FeedError(f"unreachable ({reason})") from e
    if len(body) > MAX_BYTES:
        raise FeedError("answer larger than 20 MB")
    return body.decode("utf-8", errors="replace")


def render(feed: Feed, url: str, prefixes: list[str], today: dt.date) -> str:
    unique = {ipaddress.ip_network(p) for p in prefixes}
    nets = sorted(unique, key=lambda n: (n.version, n.network_address, n.prefixlen))
    header = [
        f"# {feed.title}",
        f"# source: {url.split('?')[0]} (refresh: python3 scripts/update_ranges.py {feed.id})",
        f"# generated: {today.isoformat()} by scripts/update_ranges.py from the vendor feed, {len(nets)} prefixes",
    ]
    if feed.extra:
        header.append("# plus prefixes the vendor documents outside this feed: " + ", ".join(feed.extra))
    return "\n".join(header + [str(n) for n in nets]) + "\n"


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None, fetcher: Callable[[str, float], str] = fetch) -> int:
    parser = argparse.ArgumentParser(description="Refresh signatures/*.cidrs.txt from vendor feeds.")
    parser.add_argument("feeds", nargs="*", help=f"some of: {', '.join(FEEDS)} (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="fetch and report, write nothing")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per request (default 20)")
    parser.add_argument("--dir", type=Path, default=SIGNATURES, help="signature directory to write into")
    args = parser.parse_args(argv)
    unknown = [f for f in args.feeds if f not in FEEDS]
    if unknown:
        print(f"update_ranges: unknown feed {unknown[0]!r} (known: {', '.join(FEEDS)})", file=sys.stderr)
        return 2
    selected = [FEEDS[f] for f in (args.feeds or FEEDS)]
    today = dt.datetime.now(dt.timezone.utc).date()
    results: list[tuple[Feed, str]] = []
    for feed in selected:
        url = feed.url.format(uuid=uuid.uuid4())
        try:
            prefixes = feed.parse(fetcher(url, args.timeout)) + list(feed.extra)
        except FeedError as e:
            print(
                f"update_ranges: {feed.id}: {url.split('?')[0]}: {e}; committed files are unchanged (offline default)",
                file=sys.stderr,
            )
            return 1
        if len(prefixes) == len(feed.extra):
            where = url.split("?")[0]
            print(f"update_ranges: {feed.id}: {where} listed no prefixes; committed files are unchanged", file=sys.stderr)
            return 1
        results.append((feed, render(feed, url, prefixes, today)))
    for feed, text in results:
        path = args.dir / f"{feed.id}.cidrs.txt"
        count = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        if args.dry_run:
            print(f"{feed.id}: {count} prefixes (dry run, {path.name} not written)")
        else:
            write_atomically(path, text)
            print(f"{feed.id}: {count} prefixes -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
