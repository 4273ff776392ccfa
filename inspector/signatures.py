"""Load and validate the signature files (``signatures/*.toml``) into fast lookup indexes.

A signature file describes one service or organisation as data (DESIGN.md §3): which domains,
published address ranges, ports and payload detectors identify it, what kind of destination it is
(conferencing, telemetry, other) and where every fact comes from. This module is the edge where that
user-editable data is parsed into typed records once; every problem raises
``inspector.errors.SignatureError(path, key, reason)`` naming the file, the key and the problem, and
the rest of the program trusts the typed ``SignatureSet``.

Matching is explicit and boring:

* domains match as a suffix on a label boundary (``zoom.us`` matches ``a.zoom.us``, never
  ``evilzoom.us``) or exactly (``match = "exact"``); the longest matching name wins, an exact entry
  beats a suffix entry of the same name;
* address ranges match by longest prefix over sorted integer ranges (one bisect per lookup); a range
  endpoint that lists ``ports`` only matches flows to those ports (``udp/8801-8810``);
* an endpoint with only ``ports`` is a port-only rule (weakest evidence). Ports every service uses
  (53, 80, 443, STUN 3478/3479 ...) are refused as port-only rules, because they would turn common
  traffic into a service;
* payload rules name detectors from ``inspector/dissect`` (``zoom-media``, ``stun`` ...).

Two services may not claim the same domain, overlapping address ranges, overlapping port-only rules
or the same detector unless one of them declares the other in ``shared_with`` (the Slack huddle
range that is Amazon Chime's, the UDP 8801-8810 ports Zoom and RingCentral both document).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import ipaddress
import json
import re
import socket
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from inspector.bundled import bundled
from inspector.errors import SignatureError

BUILTIN_DIR: Final = bundled("signatures")

SCHEMA_VERSION: Final = 1

# Closed vocabularies; signatures/README.md documents each value. Keep the two in step.
KINDS: Final = frozenset({"conferencing", "telemetry", "other"})
CATEGORIES: Final = frozenset(
    {
        # conferencing
        "video-conferencing",
        "voice-messaging",
        "webrtc-media",
        # telemetry
        "analytics",
        "crash-reporting",
        "advertising",
        "vendor-telemetry",
        "tag-manager",
        "attribution",
        "performance-monitoring",
        "engagement",
        "ab-testing",
        "logging",
        # other
        "web-services",
        "cdn",
        "social-network",
    }
)
ROLES: Final = frozenset({"signalling", "media", "relay", "telemetry", "web", "api", "content", "push"})
PARTIES: Final = frozenset({"first", "third"})
MATCH_MODES: Final = frozenset({"suffix", "exact"})
TRANSPORTS: Final = frozenset({"tcp", "udp"})

# Payload detectors implemented in inspector/dissect (names agreed with the dissect engineer).
DETECTORS: Final = frozenset(
    {
        "stun",
        "turn",
        "turn-channel",
        "ms-turn",
        "dtls",
        "rtp",
        "rtcp",
        "zoom-media",
        "zoom-p2p",
        "discord-ip-discovery",
        "whatsapp-media",
        "whatsapp-chat",
    }
)

# Ports that many unrelated services use. A port-only rule on one of these would label ordinary
# DNS/web/STUN traffic as a service, so the loader refuses it (a range or a name must qualify them).
# 53 DNS, 80/443 web (RFC 9110), 123 NTP, 853 DoT/DoQ (RFC 7858, 9250), 3478/3479 and 5349
# STUN/TURN (RFC 8489 §9, RFC 8656), 5060/5061 SIP (RFC 3261), 5004/5005 RTP/RTCP (RFC 3551 default).
GENERIC_PORTS: Final = frozenset({53, 80, 123, 443, 853, 3478, 3479, 5004, 5005, 5060, 5061, 5349})

TOP_KEYS: Final = frozenset(
    {
        "schema",
        "id",
        "name",
        "organisation",
        "kind",
        "category",
        "party",
        "first_party_for",
        "generic",
        "shared_with",
        "references",
        "updated",
        "notes",
        "endpoints",
        "payloads",
    }
)
ENDPOINT_KEYS: Final = frozenset(
    {"role", "domains", "match", "cidrs", "cidrs_file", "ports", "category", "party", "shared_with", "notes"}
)
PAYLOAD_KEYS: Final = frozenset({"detector", "role", "shared_with", "notes"})

_LABEL: Final = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN_RE: Final = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
_ID_RE: Final = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_PORT_RE: Final = re.compile(r"^(tcp|udp)/(\d{1,5})(?:-(\d{1,5}))?$")
_CIDRS_FILE_RE: Final = re.compile(r"^[A-Za-z0-9_.-]+\.cidrs\.txt$")


@dataclass(frozen=True, slots=True)
class PortRange:
    """``transport/low-high`` (inclusive); ``udp/8801`` is ``PortRange("udp", 8801, 8801)``."""

    transport: str
    low: int
    high: int

    def admits(self, transport: str, port: int) -> bool:
        return transport == self.transport and self.low <= port <= self.high

    def __str__(self) -> str:
        tail = "" if self.low == self.high else f"-{self.high}"
        return f"{self.transport}/{self.low}{tail}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ``[[endpoints]]`` table: a role and what identifies it (names, ranges, ports)."""

    role: str
    domains: tuple[str, ...] = ()
    match: str = "suffix"
    cidrs: tuple[str, ...] = ()  # normalised networks, inline and from cidrs_file together
    cidrs_file: str = ""
    ports: tuple[PortRange, ...] = ()
    category: str = ""
    party: str = ""
    shared_with: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PayloadRule:
    """One ``[[payloads]]`` table: a named detector in inspector/dissect and the role it implies."""

    detector: str
    role: str = "media"
    shared_with: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Signature:
    """One validated signature file. ``path`` is where it was loaded from (not part of the digest)."""

    id: str
    name: str
    organisation: str
    kind: str
    category: str
    references: tuple[str, ...]
    updated: dt.date
    endpoints: tuple[Endpoint, ...] = ()
    payloads: tuple[PayloadRule, ...] = ()
    party: str = ""
    first_party_for: tuple[str, ...] = ()
    generic: bool = False
    shared_with: tuple[str, ...] = ()
    path: str = ""


@dataclass(frozen=True, slots=True)
class EndpointMatch:
    """What a lookup found: the service, and the kind/category/role/party that endpoint implies.

    source   ``domain``, ``cidr`` or ``port``
    detail   what matched: the signature's domain, the network (``170.114.0.0/16``) or port spec
    shared_with  other services that declared the same claim (the match cannot tell them apart)
    """

    service: str
    organisation: str
    kind: str
    category: str
    role: str
    party: str
    source: str
    detail: str
    shared_with: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SignatureRow:
    """One row of ``inspector signatures list``."""

    id: str
    name: str
    organisation: str
    kind: str
    category: str
    party: str
    domains: int
    networks: int
    port_rules: int
    detectors: str
    updated: str
    path: str


@dataclass(frozen=True, slots=True)
class _Claim:
    """An endpoint of a signature with its resolved verdict fields (what a match returns)."""

    service: str
    organisation: str
    kind: str
    category: str
    role: str
    party: str
    ports: tuple[PortRange, ...]
    owner_rank: int  # 0 for the owner of a shared claim, 1 for a service that declared sharing


def _resolve(sig: Signature, ep: Endpoint) -> tuple[str, str, str]:
    """kind, category, party a match on ``ep`` reports.

    A telemetry endpoint inside a conferencing vendor's file is that vendor's own (first-party)
    telemetry; a telemetry organisation's file says its party at top level.
    """
    if ep.role == "telemetry":
        if sig.kind == "telemetry":
            return "telemetry", ep.category or sig.category, ep.party or sig.party
        return "telemetry", ep.category or "vendor-telemetry", ep.party or "first"
    return sig.kind, ep.category or sig.category, ""


class SignatureSet:
    """Validated signatures with lookup indexes. Build it with ``load_signatures``."""

    def __init__(self, signatures: Sequence[Signature]) -> None:
        self._sigs: dict[str, Signature] = {s.id: s for s in signatures}
        self.ids: tuple[str, ...] = tuple(sorted(self._sigs))
        self._exact: dict[str, list[tuple[_Claim, str]]] = {}
        self._suffix: dict[str, list[tuple[_Claim, str]]] = {}
        self._ports: dict[tuple[str, int], list[tuple[_Claim, str]]] = {}
        self._detectors: dict[str, list[tuple[int, str]]] = {}
        ranges: dict[int, list[tuple[int, int, int, _Claim, str]]] = {4: [], 6: []}
        for sig in signatures:
            for ep in sig.endpoints:
                kind, category, party = _resolve(sig, ep)
                rank = 1 if (ep.shared_with or sig.shared_with) else 0
                claim = _Claim(sig.id, sig.organisation, kind, category, ep.role, party, ep.ports, rank)
                table = self._exact if ep.match == "exact" else self._suffix
                for d in ep.domains:
                    table.setdefault(d, []).append((claim, d))
                for c in ep.cidrs:
                    net = ipaddress.ip_network(c)
                    ranges[net.version].append(
                        (int(net.network_address), int(net.broadcast_address), net.prefixlen, claim, c)
                    )
                if ep.ports and not ep.domains and not ep.cidrs:
                    for pr in ep.ports:
                        for p in range(pr.low, pr.high + 1):
                            self._ports.setdefault((pr.transport, p), []).append((claim, str(pr)))
            for rule in sig.payloads:
                rank = 1 if (rule.shared_with or sig.shared_with) else 0
                self._detectors.setdefault(rule.detector, []).append((rank, sig.id))
        tables: tuple[dict[Any, list[tuple[_Claim, str]]], ...] = (self._exact, self._suffix, self._ports)
        for table in tables:
            for claims in table.values():
                claims.sort(key=lambda c: (c[0].owner_rank, c[0].service))
        self._intervals = {v: _elementary_intervals(ranges[v]) for v in (4, 6)}
        self.digest: str = _digest(signatures)
        # The fallback verdict for media nobody names (``webrtc``), "" when no such signature.
        self.generic_id: str = next((s.id for s in sorted(signatures, key=lambda s: s.id) if s.generic), "")

    # -- lookups ---------------------------------------------------------------------------------

    def __contains__(self, service: object) -> bool:
        return service in self._sigs

    def __len__(self) -> int:
        return len(self._sigs)

    def get(self, service: str) -> Signature | None:
        return self._sigs.get(service)

    def is_generic(self, service: str) -> bool:
        """Is this the generic media signature (names no operator)?"""
        sig = self._sigs.get(service)
        return sig is not None and sig.generic

    def signatures(self) -> tuple[Signature, ...]:
        return tuple(self._sigs[i] for i in self.ids)

    def match_domain(self, name: str) -> EndpointMatch | None:
        """Longest signature domain that ``name`` equals or ends with on a label boundary."""
        name = name.strip().rstrip(".").lower()
        if not name or len(name) > 253:
            return None
        hit = self._exact.get(name) or self._suffix.get(name)
        if hit:
            return _to_match(hit, "domain")
        pos = name.find(".")
        while pos != -1:
            hit = self._suffix.get(name[pos + 1 :])
            if hit:
                return _to_match(hit, "domain")
            pos = name.find(".", pos + 1)
        return None

    def match_ip(self, ip: str, transport: str = "", port: int = 0) -> EndpointMatch | None:
        """Longest published prefix containing ``ip`` whose port qualifier (if any) admits the flow.

        Without ``transport`` the port qualifiers are ignored. Returns None for anything that is
        not an IP address.
        """
        x = _dotted_quad(ip)
        if x is not None:
            starts, ends, cands = self._intervals[4]
        else:
            try:
                addr = ipaddress.ip_address(ip.strip())
            except (ValueError, AttributeError):
                return None
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped  # ::ffff:a.b.c.d is the IPv4 host
            starts, ends, cands = self._intervals[addr.version]
            x = int(addr)
        i = bisect.bisect_right(starts, x) - 1
        if i < 0 or x > ends[i]:
            return None
        best: list[tuple[_Claim, str]] = []
        best_key: tuple[int, int] | None = None
        for prefixlen, claim, net in cands[i]:
            if claim.ports:
                if transport and not any(p.admits(transport, port) for p in claim.ports):
                    continue
                specificity = 1 if transport else 0
            else:
                specificity = 0
            key = (prefixlen, specificity)
            if best_key is None or key > best_key:
                best, best_key = [(claim, net)], key
            elif key == best_key:
                best.append((claim, net))
        if not best:
            return None
        best.sort(key=lambda c: (c[0].owner_rank, c[0].service))
        return _to_match(best, "cidr")

    def match_port(self, transport: str, port: int) -> EndpointMatch | None:
        """A port-only rule for ``transport/port`` (weakest evidence), or None."""
        hit = self._ports.get((transport, port))
        return _to_match(hit, "port") if hit else None

    def services_for_detector(self, name: str) -> tuple[str, ...]:
        """Services whose payload rules name this detector, owner first."""
        return tuple(s for _, s in sorted(self._detectors.get(name, ())))

    def is_first_party(self, telemetry_service: str, call_service: str) -> bool:
        """Is ``telemetry_service`` the call's own vendor (same id or listed in first_party_for)?"""
        sig = self._sigs.get(telemetry_service)
        if sig is None or not call_service:
            return False
        return telemetry_service == call_service or call_service in sig.first_party_for

    def summary(self) -> list[SignatureRow]:
        return signature_summary(self)


def _dotted_quad(ip: object) -> int | None:
    """The IPv4 address of a canonical dotted quad ("192.0.2.1") as an int, else None.

    A fast path for what the flow table writes; anything else (IPv6, spaces, leading zeros,
    which ``ipaddress`` rejects, RFC 6943 §3.1.1) returns None and takes the ``ipaddress`` path.
    """
    if type(ip) is not str or _DOTTED_QUAD.fullmatch(ip) is None:
        return None
    return int.from_bytes(socket.inet_aton(ip), "big")


_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_DOTTED_QUAD: Final = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def _to_match(hits: list[tuple[_Claim, str]], source: str) -> EndpointMatch:
    claim, detail = hits[0]
    others = tuple(dict.fromkeys(c.service for c, _ in hits[1:] if c.service != claim.service))
    return EndpointMatch(
        claim.service,
        claim.organisation,
        claim.kind,
        claim.category,
        claim.role,
        claim.party,
        source,
        detail,
        others,
    )


def _elementary_intervals(
    ranges: list[tuple[int, int, int, _Claim, str]],
) -> tuple[list[int], list[int], list[list[tuple[int, _Claim, str]]]]:
    """Cut possibly nested ranges into disjoint intervals, each with every range covering it.

    Nested prefixes are common (a /16 with a /24 inside for another role), so one bisect over the
    interval starts finds every candidate; the caller picks the longest prefix among them.
    """
    if not ranges:
        return [], [], []
    bounds = sorted({r[0] for r in ranges} | {r[1] + 1 for r in ranges})
    starts: list[int] = []
    ends: list[int] = []
    cands: list[list[tuple[int, _Claim, str]]] = []
    by_start = sorted(ranges, key=lambda r: r[0])
    active: list[tuple[int, int, int, _Claim, str]] = []
    j = 0
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1] - 1
        while j < len(by_start) and by_start[j][0] <= lo:
            active.append(by_start[j])
            j += 1
        active = [r for r in active if r[1] >= lo]
        if active:
            starts.append(lo)
            ends.append(hi)
            cands.append(sorted(((r[2], r[3], r[4]) for r in active), key=lambda c: -c[0]))
    return starts, ends, cands


def _digest(signatures: Iterable[Signature]) -> str:
    """SHA-256 over the canonical content (ids sorted, ranges resolved), for the manifest."""
    canon = []
    for sig in sorted(signatures, key=lambda s: s.id):
        canon.append(
            {
                "id": sig.id,
                "name": sig.name,
                "organisation": sig.organisation,
                "kind": sig.kind,
                "category": sig.category,
                "party": sig.party,
                "first_party_for": list(sig.first_party_for),
                "generic": sig.generic,
                "shared_with": list(sig.shared_with),
                "references": list(sig.references),
                "updated": sig.updated.isoformat(),
                "endpoints": [
                    {
                        "role": e.role,
                        "domains": list(e.domains),
                        "match": e.match,
                        "cidrs": list(e.cidrs),
                        "ports": [str(p) for p in e.ports],
                        "category": e.category,
                        "party": e.party,
                        "shared_with": list(e.shared_with),
                    }
                    for e in sig.endpoints
                ],
                "payloads": [
                    {"detector": p.detector, "role": p.role, "shared_with": list(p.shared_with)}
                    for p in sig.payloads
                ],
            }
        )
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def signature_summary(sigs: SignatureSet | None = None) -> list[SignatureRow]:
    """Rows for ``inspector signatures list``, sorted by id (the built-in set when ``sigs`` is None)."""
    if sigs is None:
        sigs = load_signatures()
    rows = []
    for sig in sigs.signatures():
        rows.append(
            SignatureRow(
                id=sig.id,
                name=sig.name,
                organisation=sig.organisation,
                kind=sig.kind,
                category=sig.category,
                party=sig.party,
                domains=sum(len(e.domains) for e in sig.endpoints),
                networks=sum(len(e.cidrs) for e in sig.endpoints),
                port_rules=sum(len(e.ports) for e in sig.endpoints if not e.domains and not e.cidrs),
                detectors=",".join(p.detector for p in sig.payloads),
                updated=sig.updated.isoformat(),
                path=sig.path,
            )
        )
    return rows


# -- loading and validation ----------------------------------------------------------------------


def load_signatures(extra_dirs: Sequence[Path | str] = ()) -> SignatureSet:
    """The built-in signatures plus every ``*.toml`` in ``extra_dirs`` (``--signatures DIR``).

    Raises ``SignatureError`` for the first problem found: bad TOML (with its line), unknown key,
    wrong type, value outside a vocabulary, invalid domain/CIDR/port, unknown detector, missing
    references, duplicate id, or two services claiming the same thing without ``shared_with``.
    """
    dirs = [BUILTIN_DIR, *(Path(d) for d in extra_dirs)]
    sigs: list[Signature] = []
    seen: dict[str, str] = {}
    for d in dirs:
        if not d.is_dir():
            raise SignatureError(str(d), "", "signature directory does not exist")
        for path in sorted(d.glob("*.toml")):
            sig = load_signature_file(path)
            if sig.id in seen:
                raise SignatureError(str(path), "id", f"duplicate id {sig.id!r}, already loaded from {seen[sig.id]}")
            seen[sig.id] = str(path)
            sigs.append(sig)
    _check_cross_references(sigs)
    _check_claims(sigs)
    return SignatureSet(sigs)


def load_signature_file(path: Path) -> Signature:
    """Parse and validate one signature file (cross-file checks happen in ``load_signatures``)."""
    p = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SignatureError(p, "", f"cannot read: {e.strerror or e}") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SignatureError(p, "", f"not UTF-8 text (byte {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise SignatureError(p, "", f"invalid TOML: {e}") from e
    return _parse(path, data)


def _err(path: Path, key: str, reason: str) -> SignatureError:
    return SignatureError(str(path), key, reason)


def _type_name(value: object) -> str:
    return {str: "string", int: "integer", bool: "boolean", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


def _get_str(path: Path, table: Mapping[str, Any], key: str, where: str, required: bool) -> str:
    if key not in table:
        if required:
            raise _err(path, where + key, "missing required key")
        return ""
    value = table[key]
    if not isinstance(value, str):
        raise _err(path, where + key, f"expected a string, got {_type_name(value)}")
    if required and not value.strip():
        raise _err(path, where + key, "must not be empty")
    return value


def _get_str_list(path: Path, table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise _err(path, where + key, f"expected an array of strings, got {_type_name(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _err(path, f"{where}{key}[{i}]", f"expected a string, got {_type_name(item)}")
    return tuple(value)


def _vocab(path: Path, key: str, value: str, allowed: frozenset[str]) -> None:
    if value not in allowed:
        raise _err(path, key, f"{value!r} is not one of {', '.join(sorted(allowed))} (see signatures/README.md)")


def _unknown_keys(path: Path, table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise _err(path, where + key, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _check_id_list(path: Path, key: str, ids: tuple[str, ...]) -> None:
    for i, v in enumerate(ids):
        if not _ID_RE.match(v):
            raise _err(path, f"{key}[{i}]", f"{v!r} is not a signature id")


def _parse(path: Path, data: dict[str, Any]) -> Signature:
    _unknown_keys(path, data, TOP_KEYS, "")
    schema = data.get("schema")
    if schema is None:
        raise _err(path, "schema", "missing required key")
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise _err(path, "schema", f"expected an integer, got {_type_name(schema)}")
    if schema != SCHEMA_VERSION:
        raise _err(path, "schema", f"unsupported schema {schema}, this inspector reads {SCHEMA_VERSION}")
    stem = path.name[: -len(".toml")]
    if not _ID_RE.match(stem):
        raise _err(path, "id", f"file name {stem!r} is not a valid id (lower-case words joined by '-')")
    sid = _get_str(path, data, "id", "", False) or stem
    if sid != stem:
        raise _err(path, "id", f"id {sid!r} must equal the file name stem {stem!r}")
    name = _get_str(path, data, "name", "", True)
    organisation = _get_str(path, data, "organisation", "", True)
    kind = _get_str(path, data, "kind", "", True)
    _vocab(path, "kind", kind, KINDS)
    category = _get_str(path, data, "category", "", True)
    _vocab(path, "category", category, CATEGORIES)
    party = _get_str(path, data, "party", "", False)
    if party:
        _vocab(path, "party", party, PARTIES)
    if kind == "telemetry" and not party:
        raise _err(path, "party", 'a telemetry organisation must say party = "first" or "third"')
    if kind != "telemetry" and party:
        raise _err(
            path, "party", "only telemetry files set a top-level party; vendor telemetry endpoints are first-party"
        )
    first_party_for = _get_str_list(path, data, "first_party_for", "")
    _check_id_list(path, "first_party_for", first_party_for)
    if first_party_for and party != "first":
        raise _err(path, "first_party_for", 'only meaningful with party = "first"')
    generic = data.get("generic", False)
    if not isinstance(generic, bool):
        raise _err(path, "generic", f"expected a boolean, got {_type_name(generic)}")
    shared_with = _get_str_list(path, data, "shared_with", "")
    _check_id_list(path, "shared_with", shared_with)
    references = _get_str_list(path, data, "references", "")
    if not references:
        raise _err(path, "references", "missing: every signature must say where its facts come from")
    for i, ref in enumerate(references):
        if not ref.strip():
            raise _err(path, f"references[{i}]", "must not be empty")
    if "updated" not in data:
        raise _err(path, "updated", "missing required key")
    updated = data["updated"]
    if isinstance(updated, dt.datetime) or not isinstance(updated, dt.date):
        raise _err(path, "updated", f"expected a date like 2026-11-25, got {_type_name(updated)}")
    if "notes" in data and not isinstance(data["notes"], str):
        raise _err(path, "notes", f"expected a string, got {_type_name(data['notes'])}")

    raw_endpoints = data.get("endpoints", [])
    if not isinstance(raw_endpoints, list):
        raise _err(path, "endpoints", "expected an array of tables ([[endpoints]])")
    endpoints = tuple(_parse_endpoint(path, i, ep, kind) for i, ep in enumerate(raw_endpoints))
    raw_payloads = data.get("payloads", [])
    if not isinstance(raw_payloads, list):
        raise _err(path, "payloads", "expected an array of tables ([[payloads]])")
    payloads = tuple(_parse_payload(path, i, pl) for i, pl in enumerate(raw_payloads))
    if not endpoints and not payloads:
        raise _err(path, "endpoints", "a signature needs at least one endpoint or payload rule")
    return Signature(
        id=sid,
        name=name,
        organisation=organisation,
        kind=kind,
        category=category,
        references=references,
        updated=updated,
        endpoints=endpoints,
        payloads=payloads,
        party=party,
        first_party_for=first_party_for,
        generic=generic,
        shared_with=shared_with,
        path=str(path),
    )


def _parse_endpoint(path: Path, i: int, table: object, kind: str) -> Endpoint:
    where = f"endpoints[{i}]."
    if not isinstance(table, dict):
        raise _err(path, f"endpoints[{i}]", f"expected a table, got {_type_name(table)}")
    _unknown_keys(path, table, ENDPOINT_KEYS, where)
    role = _get_str(path, table, "role", where, True)
    _vocab(path, where + "role", role, ROLES)
    if kind == "telemetry" and role != "telemetry":
        raise _err(path, where + "role", f"{role!r} in a telemetry file; every endpoint there is role 'telemetry'")
    match = _get_str(path, table, "match", where, False) or "suffix"
    _vocab(path, where + "match", match, MATCH_MODES)
    domains = _get_str_list(path, table, "domains", where)
    for j, d in enumerate(domains):
        problem = domain_problem(d)
        if problem:
            raise _err(path, f"{where}domains[{j}]", f"{d!r}: {problem}")
    if len(set(domains)) != len(domains):
        raise _err(path, where + "domains", "lists a domain twice")
    cidrs = list(_get_str_list(path, table, "cidrs", where))
    for j, c in enumerate(cidrs):
        problem = cidr_problem(c)
        if problem:
            raise _err(path, f"{where}cidrs[{j}]", f"{c!r}: {problem}")
    cidrs = [str(ipaddress.ip_network(c)) for c in cidrs]
    cidrs_file = _get_str(path, table, "cidrs_file", where, False)
    if cidrs_file:
        cidrs.extend(read_cidrs_file(path, where + "cidrs_file", cidrs_file))
    ports: list[PortRange] = []
    for j, spec in enumerate(_get_str_list(path, table, "ports", where)):
        pr = parse_port_spec(spec)
        if isinstance(pr, str):
            raise _err(path, f"{where}ports[{j}]", f"{spec!r}: {pr}")
        ports.append(pr)
    if not domains and not cidrs and not ports:
        raise _err(path, f"endpoints[{i}]", "needs domains, cidrs, cidrs_file or ports")
    if domains and (cidrs or ports):
        raise _err(
            path, f"endpoints[{i}]", "mixes domains with cidrs/ports; give names and addresses separate endpoints"
        )
    if ports and not cidrs:
        for j, pr in enumerate(ports):
            generic = sorted(p for p in GENERIC_PORTS if pr.low <= p <= pr.high)
            if generic:
                raise _err(
                    path,
                    f"{where}ports[{j}]",
                    f"port-only rule covers generic port {generic[0]} shared by many services; qualify it with cidrs",
                )
    category = _get_str(path, table, "category", where, False)
    if category:
        _vocab(path, where + "category", category, CATEGORIES)
    party = _get_str(path, table, "party", where, False)
    if party:
        _vocab(path, where + "party", party, PARTIES)
        if role != "telemetry":
            raise _err(path, where + "party", "party applies to telemetry endpoints only")
    shared_with = _get_str_list(path, table, "shared_with", where)
    _check_id_list(path, where + "shared_with", shared_with)
    return Endpoint(
        role=role,
        domains=domains,
        match=match,
        cidrs=tuple(dict.fromkeys(cidrs)),
        cidrs_file=cidrs_file,
        ports=tuple(ports),
        category=category,
        party=party,
        shared_with=shared_with,
    )


def _parse_payload(path: Path, i: int, table: object) -> PayloadRule:
    where = f"payloads[{i}]."
    if not isinstance(table, dict):
        raise _err(path, f"payloads[{i}]", f"expected a table, got {_type_name(table)}")
    _unknown_keys(path, table, PAYLOAD_KEYS, where)
    detector = _get_str(path, table, "detector", where, True)
    if detector not in DETECTORS:
        raise _err(path, where + "detector", f"unknown detector {detector!r} (known: {', '.join(sorted(DETECTORS))})")
    role = _get_str(path, table, "role", where, False) or "media"
    _vocab(path, where + "role", role, ROLES)
    shared_with = _get_str_list(path, table, "shared_with", where)
    _check_id_list(path, where + "shared_with", shared_with)
    return PayloadRule(detector, role, shared_with)


def domain_problem(name: str) -> str:
    """Why ``name`` is not a valid signature domain, or "" when it is."""
    if name.startswith("*."):
        return "write the bare domain; suffix matching on a label boundary is the default"
    if name != name.lower():
        return "must be lower-case"
    if name.endswith("."):
        return "no trailing dot"
    if len(name) > 253:
        return "longer than 253 characters"
    if not _DOMAIN_RE.match(name):
        return "not a hostname (labels of a-z, 0-9, '-', at least two labels)"
    return ""


def cidr_problem(text: str) -> str:
    """Why ``text`` is not a valid network in strict CIDR form, or "" when it is."""
    if "/" not in text:
        return "not a CIDR (address/prefix length)"
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        return f"invalid CIDR ({e})"
    return ""


def parse_port_spec(spec: str) -> PortRange | str:
    """``udp/8801-8810`` -> PortRange, or the reason it is invalid."""
    m = _PORT_RE.match(spec)
    if not m:
        return "expected tcp/PORT or udp/LOW-HIGH"
    low = int(m.group(2))
    high = int(m.group(3)) if m.group(3) else low
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        return "port outside 1-65535"
    if high < low:
        return "range ends before it starts"
    return PortRange(m.group(1), low, high)


def read_cidrs_file(path: Path, key: str, name: str) -> list[str]:
    """Networks from a generated ``<id>.cidrs.txt`` beside the signature (``#`` comments)."""
    if not _CIDRS_FILE_RE.match(name):
        raise _err(path, key, f"{name!r}: must be a file name ending in .cidrs.txt in the same directory")
    file = path.parent / name
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise _err(path, key, f"{name!r}: cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise _err(path, key, f"{name!r}: not UTF-8 text") from e
    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        problem = cidr_problem(entry)
        if problem:
            raise SignatureError(str(file), f"line {lineno}", f"{entry!r}: {problem}")
        out.append(str(ipaddress.ip_network(entry)))
    if not out:
        raise _err(path, key, f"{name!r}: contains no networks")
    return out


# -- cross-file checks ---------------------------------------------------------------------------


def _check_cross_references(sigs: Sequence[Signature]) -> None:
    ids = {s.id for s in sigs}
    for sig in sigs:
        path = Path(sig.path)
        refs = [("shared_with", sig.shared_with), ("first_party_for", sig.first_party_for)]
        refs += [(f"endpoints[{i}].shared_with", e.shared_with) for i, e in enumerate(sig.endpoints)]
        refs += [(f"payloads[{i}].shared_with", p.shared_with) for i, p in enumerate(sig.payloads)]
        for key, values in refs:
            for v in values:
                if v not in ids:
                    raise _err(path, key, f"names unknown signature {v!r}")
                if v == sig.id:
                    raise _err(path, key, "names its own id")


@dataclass(slots=True)
class _Owner:
    sig: Signature
    key: str
    shared: frozenset[str] = field(default_factory=frozenset)
    order: int = 0  # load order: a conflict is reported against the file loaded later


def _may_share(a: _Owner, b: _Owner) -> bool:
    return a.sig.id == b.sig.id or b.sig.id in a.shared or a.sig.id in b.shared


def _conflict(later: _Owner, earlier: _Owner, what: str) -> SignatureError:
    return _err(
        Path(later.sig.path),
        later.key,
        f"{what} is also claimed by {earlier.sig.id} ({Path(earlier.sig.path).name} {earlier.key});"
        f" declare shared_with = [\"{earlier.sig.id}\"] if both are right",
    )


def _check_claims(sigs: Sequence[Signature]) -> None:
    """Two services may not claim the same domain, range, port-only rule or detector undeclared."""
    domains: dict[str, _Owner] = {}
    detectors: dict[str, _Owner] = {}
    nets: dict[int, list[tuple[int, int, str, _Owner]]] = {4: [], 6: []}
    ports: dict[str, list[tuple[int, int, str, _Owner]]] = {"tcp": [], "udp": []}
    for order, sig in enumerate(sigs):
        for i, ep in enumerate(sig.endpoints):
            shared = frozenset(ep.shared_with) | frozenset(sig.shared_with)
            for j, d in enumerate(ep.domains):
                owner = _Owner(sig, f"endpoints[{i}].domains[{j}]", shared, order)
                prev = domains.get(d)
                if prev is not None and not _may_share(owner, prev):
                    raise _conflict(owner, prev, f"domain {d!r}")
                domains.setdefault(d, owner)
            for c in ep.cidrs:
                net = ipaddress.ip_network(c)
                owner = _Owner(sig, f"endpoints[{i}] {c}", shared, order)
                nets[net.version].append((int(net.network_address), int(net.broadcast_address), c, owner))
            if ep.ports and not ep.cidrs:
                for j, pr in enumerate(ep.ports):
                    owner = _Owner(sig, f"endpoints[{i}].ports[{j}]", shared, order)
                    ports[pr.transport].append((pr.low, pr.high, str(pr), owner))
        for i, rule in enumerate(sig.payloads):
            owner = _Owner(
                sig, f"payloads[{i}].detector", frozenset(rule.shared_with) | frozenset(sig.shared_with), order
            )
            prev = detectors.get(rule.detector)
            if prev is not None and not _may_share(owner, prev):
                raise _conflict(owner, prev, f"detector {rule.detector!r}")
            detectors.setdefault(rule.detector, owner)
    for what, table in (("network", nets), ("port rule", ports)):
        for items in table.values():
            _check_overlaps(items, what)


def _check_overlaps(items: list[tuple[int, int, str, _Owner]], what: str) -> None:
    """Sweep sorted intervals; any overlap between two services must be declared."""
    items = sorted(items, key=lambda t: (t[0], t[1]))
    active: list[tuple[int, int, str, _Owner]] = []
    for lo, hi, label, owner in items:
        active = [a for a in active if a[1] >= lo]
        for a_lo, a_hi, a_label, a_owner in active:
            if not _may_share(owner, a_owner):
                first, second = sorted([(a_owner, a_label), (owner, label)], key=lambda t: t[0].order)
                raise _conflict(second[0], first[0], f"{what} {second[1]} (overlaps {first[1]})")
        active.append((lo, hi, label, owner))
