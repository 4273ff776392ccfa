"""Lint of every built-in signature file, the lookup indexes, and pinned errors for broken files."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from inspector.errors import SignatureError
from inspector.signatures import (
    BUILTIN_DIR,
    CATEGORIES,
    DETECTORS,
    KINDS,
    ROLES,
    domain_problem,
    load_signature_file,
    load_signatures,
    parse_port_spec,
    signature_summary,
)

TOML_FILES = sorted(BUILTIN_DIR.glob("*.toml"))
CIDR_FILES = sorted(BUILTIN_DIR.glob("*.cidrs.txt"))

CONFERENCING_IDS = {
    "zoom", "teams", "skype", "webex", "google-meet", "jitsi", "slack", "amazon-chime", "gotomeeting",
    "ringcentral", "bluejeans", "discord", "whatsapp", "signal", "telegram", "messenger", "facetime",
    "snapchat", "line", "viber", "kakaotalk", "webrtc",
}  # fmt: skip
TELEMETRY_IDS = {
    "google-analytics", "google-firebase", "google-ads", "meta-graph", "microsoft-appcenter",
    "microsoft-appinsights", "microsoft-telemetry", "sentry", "segment", "amplitude", "mixpanel",
    "datadog", "newrelic", "bugsnag", "appdynamics", "crittercism", "adjust", "appsflyer", "branch",
    "yandex-metrica", "amazon-analytics", "comscore", "walkme",
}  # fmt: skip


@pytest.fixture(scope="module")
def sigs():
    return load_signatures()


# -- lint of the built-in set ---------------------------------------------------------------------


def test_builtin_set_loads_with_every_required_service(sigs):
    assert CONFERENCING_IDS <= set(sigs.ids)
    assert TELEMETRY_IDS <= set(sigs.ids)
    assert len(sigs) == len(TOML_FILES)


@pytest.mark.parametrize("path", TOML_FILES, ids=lambda p: p.stem)
def test_each_file_is_valid_and_complete(path: Path):
    sig = load_signature_file(path)
    assert sig.id == path.stem
    assert sig.kind in KINDS and sig.category in CATEGORIES
    assert sig.references and all(r.strip() for r in sig.references)
    assert sig.updated.year >= 2024
    if sig.kind == "telemetry":
        assert sig.party in {"first", "third"}
        assert all(e.role == "telemetry" for e in sig.endpoints)
    for ep in sig.endpoints:
        assert ep.role in ROLES
        for d in ep.domains:
            assert domain_problem(d) == "", d
        for c in ep.cidrs:
            ipaddress.ip_network(c, strict=True)
    for rule in sig.payloads:
        assert rule.detector in DETECTORS


def test_vendor_telemetry_endpoints_are_first_party(sigs):
    for sig in sigs.signatures():
        if sig.kind == "conferencing":
            for ep in sig.endpoints:
                if ep.role == "telemetry":
                    assert ep.party in ("", "first"), sig.id


def test_every_vocabulary_value_is_documented_in_the_readme():
    readme = (BUILTIN_DIR / "README.md").read_text(encoding="utf-8")
    for value in sorted(KINDS | CATEGORIES | ROLES | DETECTORS):
        assert f"`{value}`" in readme, value


@pytest.mark.parametrize("path", CIDR_FILES, ids=lambda p: p.name)
def test_generated_cidr_files_name_source_and_date(path: Path):
    text = path.read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(re.match(r"# source: https://", line) for line in header), path.name
    assert any(re.match(r"# generated: \d{4}-\d{2}-\d{2}", line) for line in header), path.name
    referenced = any(f'"{path.name}"' in t.read_text(encoding="utf-8") for t in TOML_FILES)
    assert referenced, f"{path.name} is not used by any signature"


def test_no_undeclared_overlaps_in_builtin_set(sigs):
    # load_signatures raises on any undeclared overlap; the one declared sharing is visible.
    m = sigs.match_ip("99.77.130.9", "udp", 3478)
    assert (m.service, m.shared_with) == ("amazon-chime", ("slack",))


# -- indexes --------------------------------------------------------------------------------------


def test_domain_suffix_matches_only_on_label_boundary(sigs):
    assert sigs.match_domain("zoomfrn99mmr.zoom.us").service == "zoom"
    assert sigs.match_domain("ZOOM.US.").service == "zoom"
    assert sigs.match_domain("evilzoom.us") is None
    assert sigs.match_domain("zoom.us.evil.example") is None
    assert sigs.match_domain("") is None


def test_longest_domain_suffix_wins(sigs):
    m = sigs.match_domain("log.zoom.us")
    assert (m.service, m.kind, m.role, m.party, m.detail) == ("zoom", "telemetry", "telemetry", "first", "log.zoom.us")
    m = sigs.match_domain("northeurope.teams.events.data.microsoft.com")
    assert (m.service, m.detail) == ("teams", "teams.events.data.microsoft.com")
    assert sigs.match_domain("self.events.data.microsoft.com").service == "microsoft-telemetry"


def test_exact_match_endpoint_does_not_match_subdomains(sigs):
    assert sigs.match_domain("turn.l.google.com").service == "google-meet"
    assert sigs.match_domain("x.turn.l.google.com") is None
    assert sigs.match_domain("l.google.com") is None


def test_ip_longest_prefix_and_port_qualifier(sigs):
    media = sigs.match_ip("109.94.160.99", "udp", 8801)
    assert (media.service, media.role, media.source, media.detail) == ("zoom", "media", "cidr", "109.94.160.0/22")
    assert sigs.match_ip("109.94.160.99", "tcp", 443).role == "signalling"
    assert sigs.match_ip("52.114.250.152", "udp", 3479).role == "media"
    assert sigs.match_ip("2620:123:2000::1").service == "zoom"
    assert sigs.match_ip("::ffff:109.94.160.99").service == "zoom"
    assert sigs.match_ip("109.94.164.1") is None  # just past the /22
    for junk in ("", "not-an-ip", "1.2.3.4.5", "999.1.1.1", "1.2.3.4/24"):
        assert sigs.match_ip(junk) is None


def test_nested_ranges_pick_the_most_specific(tmp_path):
    _write(tmp_path, "outer-net", _sig(kind="other", category="web-services", body='[[endpoints]]\nrole = "web"\ncidrs = ["198.18.0.0/15"]\nshared_with = ["inner-net"]\n'))
    _write(tmp_path, "inner-net", _sig(body='[[endpoints]]\nrole = "media"\ncidrs = ["198.18.5.0/24"]\n'))
    s = load_signatures([tmp_path])
    assert s.match_ip("198.18.5.7").service == "inner-net"
    assert s.match_ip("198.18.6.7").service == "outer-net"
    assert s.match_ip("198.19.255.255").service == "outer-net"
    assert s.match_ip("198.20.0.0") is None


def test_port_only_rules(sigs):
    # Google's public STUN port is used by every WebRTC app (Signal in the nDPI sample): no rule.
    assert sigs.match_port("udp", 19302) is None
    assert sigs.match_port("udp", 22466).service == "slack"
    assert sigs.match_port("udp", 8805).service == "zoom"
    assert sigs.match_port("tcp", 8805) is None
    for port in (53, 80, 443, 3478, 3479):
        assert sigs.match_port("udp", port) is None
        assert sigs.match_port("tcp", port) is None


def test_detector_index(sigs):
    assert sigs.services_for_detector("zoom-media") == ("zoom",)
    assert sigs.services_for_detector("ms-turn") == ("teams", "skype")
    assert sigs.services_for_detector("rtp") == ("webrtc",)
    assert sigs.services_for_detector("wireguard") == ()


def test_first_party_relation(sigs):
    assert sigs.is_first_party("microsoft-telemetry", "teams")
    assert not sigs.is_first_party("microsoft-telemetry", "zoom")
    assert sigs.is_first_party("zoom", "zoom")
    assert not sigs.is_first_party("meta-graph", "zoom")


def test_digest_is_stable_and_tracks_content(tmp_path, sigs):
    assert sigs.digest == load_signatures().digest
    assert re.fullmatch(r"[0-9a-f]{64}", sigs.digest)
    _write(tmp_path, "extra-service", _sig())
    assert load_signatures([tmp_path]).digest != sigs.digest


def test_summary_rows(sigs):
    rows = {r.id: r for r in signature_summary(sigs)}
    assert rows["zoom"].kind == "conferencing"
    assert rows["zoom"].detectors == "zoom-media,zoom-p2p"
    assert rows["zoom"].networks > 40 and rows["zoom"].port_rules == 1
    assert rows["google-analytics"].party == "third"
    assert list(rows) == sorted(rows)


def test_lookup_speed(sigs):
    import time

    start = time.perf_counter()
    for i in range(20000):
        sigs.match_ip(f"10.{i % 256}.{i // 256 % 256}.1", "udp", 5000)
        sigs.match_domain(f"host{i}.example.com")
    assert time.perf_counter() - start < 2.0


# -- broken files: one line naming the file, the key and the problem --------------------------------


def _sig(kind: str = "conferencing", category: str = "video-conferencing", body: str | None = None, head: str = "") -> str:
    if body is None:
        body = '[[endpoints]]\nrole = "signalling"\ndomains = ["example-video.test"]\n'
    party = 'party = "third"\n' if kind == "telemetry" else ""
    return (
        f'schema = 1\nname = "X"\norganisation = "X Corp"\nkind = "{kind}"\ncategory = "{category}"\n{party}'
        f'references = ["https://example.test/doc"]\nupdated = 2026-11-25\n{head}\n{body}'
    )


def _write(directory: Path, stem: str, text: str) -> Path:
    path = directory / f"{stem}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str, stem: str = "broken") -> str:
    path = _write(tmp_path, stem, text)
    with pytest.raises(SignatureError) as info:
        load_signatures([tmp_path])
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path)) or msg.startswith(str(tmp_path))
    return msg[len(str(path)) :] if msg.startswith(str(path)) else msg


def test_bad_toml_names_the_line(tmp_path):
    msg = _error(tmp_path, 'schema = 1\nname = "X"\nkind = = "x"\n')
    assert msg.startswith(": invalid TOML:") and "line 3" in msg


def test_unknown_key(tmp_path):
    body = '[[endpoints]]\nrole = "signalling"\ndomain = ["example-video.test"]\n'
    assert _error(tmp_path, _sig(body=body)).startswith(": endpoints[0].domain: unknown key (allowed: ")


def test_unknown_top_level_key(tmp_path):
    assert _error(tmp_path, _sig(head='colour = "red"')).startswith(": colour: unknown key")


def test_wrong_type(tmp_path):
    text = _sig().replace('name = "X"', "name = 5")
    assert _error(tmp_path, text) == ": name: expected a string, got integer"


def test_value_outside_vocabulary(tmp_path):
    msg = _error(tmp_path, _sig(kind="video"))
    assert msg.startswith(": kind: 'video' is not one of conferencing, other, telemetry")
    body = '[[endpoints]]\nrole = "spying"\ndomains = ["example-video.test"]\n'
    assert _error(tmp_path, _sig(body=body)).startswith(": endpoints[0].role: 'spying' is not one of")


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        ("*.zoom.us", "write the bare domain"),
        ("Zoom.us", "must be lower-case"),
        ("zoom.us.", "no trailing dot"),
        ("localhost", "not a hostname"),
        ("bad_-.example..com", "not a hostname"),
    ],
)
def test_invalid_domain(tmp_path, domain, reason):
    body = f'[[endpoints]]\nrole = "signalling"\ndomains = ["{domain}"]\n'
    msg = _error(tmp_path, _sig(body=body))
    assert msg.startswith(f": endpoints[0].domains[0]: '{domain}': {reason}")


def test_invalid_cidr(tmp_path):
    body = '[[endpoints]]\nrole = "media"\ncidrs = ["10.0.0.1/8"]\n'
    msg = _error(tmp_path, _sig(body=body))
    assert msg.startswith(": endpoints[0].cidrs[0]: '10.0.0.1/8': invalid CIDR (10.0.0.1/8 has host bits set)")
    body = '[[endpoints]]\nrole = "media"\ncidrs = ["10.0.0.1"]\n'
    assert _error(tmp_path, _sig(body=body)) == ": endpoints[0].cidrs[0]: '10.0.0.1': not a CIDR (address/prefix length)"


def test_bad_line_in_cidrs_file_names_file_and_line(tmp_path):
    (tmp_path / "x.cidrs.txt").write_text("# source: https://example.test\n10.1.0.0/16\n10.2.0.0/33\n", encoding="utf-8")
    body = '[[endpoints]]\nrole = "media"\ncidrs_file = "x.cidrs.txt"\n'
    _write(tmp_path, "broken", _sig(body=body))
    with pytest.raises(SignatureError) as info:
        load_signatures([tmp_path])
    assert str(info.value).startswith(f"{tmp_path / 'x.cidrs.txt'}: line 3: '10.2.0.0/33': invalid CIDR")


def test_cidrs_file_must_stay_beside_the_signature(tmp_path):
    body = '[[endpoints]]\nrole = "media"\ncidrs_file = "../zoom.cidrs.txt"\n'
    msg = _error(tmp_path, _sig(body=body))
    assert msg.startswith(": endpoints[0].cidrs_file: '../zoom.cidrs.txt': must be a file name ending in .cidrs.txt")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("udp/9-1", "range ends before it starts"),
        ("udp/70000", "port outside 1-65535"),
        ("sctp/5000", "expected tcp/PORT or udp/LOW-HIGH"),
        ("8801", "expected tcp/PORT or udp/LOW-HIGH"),
    ],
)
def test_bad_port_spec(tmp_path, spec, reason):
    body = f'[[endpoints]]\nrole = "media"\nports = ["{spec}"]\n'
    assert _error(tmp_path, _sig(body=body)) == f": endpoints[0].ports[0]: '{spec}': {reason}"


def test_port_only_rule_on_generic_port_is_refused(tmp_path):
    body = '[[endpoints]]\nrole = "media"\nports = ["udp/400-500"]\n'
    msg = _error(tmp_path, _sig(body=body))
    assert msg == ": endpoints[0].ports[0]: port-only rule covers generic port 443 shared by many services; qualify it with cidrs"


def test_unknown_detector(tmp_path):
    msg = _error(tmp_path, _sig(body='[[payloads]]\ndetector = "wireguard"\n'))
    assert msg.startswith(": payloads[0].detector: unknown detector 'wireguard' (known: ")


def test_missing_references(tmp_path):
    text = _sig().replace('references = ["https://example.test/doc"]\n', "")
    assert _error(tmp_path, text) == ": references: missing: every signature must say where its facts come from"


def test_telemetry_file_must_state_party(tmp_path):
    text = _sig(kind="telemetry", category="analytics", body='[[endpoints]]\nrole = "telemetry"\ndomains = ["t.example.test"]\n')
    text = text.replace('party = "third"\n', "")
    assert _error(tmp_path, text) == ': party: a telemetry organisation must say party = "first" or "third"'


def test_id_must_match_file_name(tmp_path):
    assert _error(tmp_path, _sig(head='id = "other"')) == ": id: id 'other' must equal the file name stem 'broken'"


def test_duplicate_id(tmp_path):
    msg = _error(tmp_path, _sig(), stem="zoom")
    assert msg.startswith(": id: duplicate id 'zoom', already loaded from ")


def test_two_services_claiming_one_domain(tmp_path):
    body = '[[endpoints]]\nrole = "signalling"\ndomains = ["zoom.us"]\n'
    msg = _error(tmp_path, _sig(body=body))
    assert msg.startswith(": endpoints[0].domains[0]: domain 'zoom.us' is also claimed by zoom (zoom.toml endpoints[0].domains[0])")
    assert msg.endswith('declare shared_with = ["zoom"] if both are right')


def test_overlapping_range_is_a_conflict_unless_shared(tmp_path):
    body = '[[endpoints]]\nrole = "media"\ncidrs = ["170.114.10.0/24"]\n'
    msg = _error(tmp_path, _sig(body=body))
    assert "network 170.114.10.0/24 (overlaps 170.114.0.0/16) is also claimed by zoom (zoom.toml" in msg
    _write(tmp_path, "broken", _sig(body=body + 'shared_with = ["zoom"]\n'))
    s = load_signatures([tmp_path])
    assert s.match_ip("170.114.10.1").service == "broken"  # declared, and the longer prefix wins
    assert s.match_ip("170.114.11.1").service == "zoom"


def test_shared_detector_needs_declaration(tmp_path):
    msg = _error(tmp_path, _sig(body='[[payloads]]\ndetector = "zoom-media"\n'))
    assert msg.startswith(": payloads[0].detector: detector 'zoom-media' is also claimed by zoom")


def test_shared_with_must_name_a_known_signature(tmp_path):
    assert _error(tmp_path, _sig(head='shared_with = ["nobody"]')) == ": shared_with: names unknown signature 'nobody'"


def test_missing_directory(tmp_path):
    with pytest.raises(SignatureError, match=r"does-not-exist: signature directory does not exist$"):
        load_signatures([tmp_path / "does-not-exist"])


def test_user_directory_adds_a_service(tmp_path):
    _write(tmp_path, "example-video", _sig())
    s = load_signatures([tmp_path])
    m = s.match_domain("a.example-video.test")
    assert (m.service, m.organisation, m.role) == ("example-video", "X Corp", "signalling")


def test_parse_port_spec():
    pr = parse_port_spec("udp/8801-8810")
    assert (pr.transport, pr.low, pr.high, str(pr)) == ("udp", 8801, 8810, "udp/8801-8810")
    assert str(parse_port_spec("tcp/443")) == "tcp/443"


# -- scripts/update_ranges.py ---------------------------------------------------------------------


def _update_ranges():
    import importlib.util
    import sys

    if "update_ranges" in sys.modules:
        return sys.modules["update_ranges"]
    spec = importlib.util.spec_from_file_location("update_ranges", BUILTIN_DIR.parent / "scripts" / "update_ranges.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["update_ranges"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_update_ranges_parsers():
    ur = _update_ranges()
    assert ur.parse_prefix_lines("# c\n170.114.0.0/16\n\n2620:123:2000::/40  # v6\n") == ["170.114.0.0/16", "2620:123:2000::/40"]
    feed = '[{"id": 11, "serviceArea": "Skype", "ips": ["52.112.0.0/14", "2603:1063::/39"]},' \
           ' {"id": 1, "serviceArea": "Exchange", "ips": ["13.107.6.152/31"]}]'
    assert ur.parse_office365(feed) == ["52.112.0.0/14", "2603:1063::/39"]
    aws = '{"prefixes": [{"ip_prefix": "99.77.128.0/18", "service": "CHIME_MEETINGS"},' \
          ' {"ip_prefix": "3.5.140.0/22", "service": "AMAZON"}],' \
          ' "ipv6_prefixes": [{"ipv6_prefix": "2600:1f14::/35", "service": "CHIME_MEETINGS"}]}'
    assert ur.parse_aws(aws) == ["99.77.128.0/18", "2600:1f14::/35"]
    for bad in ("not json", "{}"):
        with pytest.raises(ur.FeedError):
            ur.parse_office365(bad)
    with pytest.raises(ur.FeedError, match="invalid prefix"):
        ur.parse_prefix_lines("170.114.0.0/16\n<html>\n")


def test_update_ranges_offline_is_one_line_and_exit_1(tmp_path, capsys):
    ur = _update_ranges()

    def offline(url, timeout):
        raise ur.FeedError("unreachable ([Errno -2] Name or service not known)")

    assert ur.main(["--dir", str(tmp_path)], fetcher=offline) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("update_ranges: zoom: https://assets.zoom.us/docs/ipranges/Zoom.txt: unreachable")
    assert list(tmp_path.iterdir()) == []


def test_update_ranges_writes_a_loadable_file(tmp_path, capsys):
    ur = _update_ranges()
    assert ur.main(["telegram", "--dir", str(tmp_path)], fetcher=lambda url, t: "91.108.4.0/22\n149.154.160.0/20\n") == 0
    written = tmp_path / "telegram.cidrs.txt"
    text = written.read_text(encoding="utf-8")
    assert re.search(r"^# source: https://core.telegram.org/resources/cidr.txt", text, re.M)
    assert re.search(r"^# generated: \d{4}-\d{2}-\d{2} by scripts/update_ranges.py", text, re.M)
    assert text.splitlines()[-2:] == ["91.108.4.0/22", "149.154.160.0/20"]
    body = '[[endpoints]]\nrole = "signalling"\ncidrs_file = "telegram.cidrs.txt"\n'
    (tmp_path / "my-telegram.toml").write_text(_sig(body=body, head='shared_with = ["telegram"]'), encoding="utf-8")
    assert load_signatures([tmp_path]).match_ip("91.108.5.1") is not None
