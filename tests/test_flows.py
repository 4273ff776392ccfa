"""The flow table: direction, counters, idle and TCP-close splits, batch-size independence."""

from __future__ import annotations

import numpy as np

from inspector.batch import PacketBatch
from inspector.decode import decode_batch
from inspector.flows import (
    ENDPOINT_TEXTS_KEPT,
    Flow,
    FlowConfig,
    FlowTable,
    address_text,
    flow_endpoints,
    forget_endpoint_texts,
)
from inspector.slowpath import SlowDecoder
from tests import craft as C
from tests.conftest import pure_python_only

S = 1_000_000_000
T0 = C.T0_NS


def run(packets, batch_size=65536, idle_s=120.0, linktype=101):
    """packets: list of (seconds offset, raw IP bytes)."""
    table = FlowTable(FlowConfig(idle_timeout_s=idle_s))
    slow = SlowDecoder()
    done = []
    for i in range(0, len(packets), batch_size):
        chunk = packets[i : i + batch_size]
        b = PacketBatch.from_packets([p for _, p in chunk], [T0 + int(t * S) for t, _ in chunk], linktype)
        d, rows = decode_batch(b)
        slow.decode_rows(d, rows, b)
        table.add(d)
        done += table.expire()
    done += table.finish()
    return sorted(done, key=lambda f: f.flow_id)


def summary(flows):
    out = []
    for f in flows:
        c, s = flow_endpoints(f)
        out.append(
            (f.flow_id, f.proto, c, f.client_port, s, f.server_port, f.client_to_server_packets, f.client_to_server_bytes,
             f.server_to_client_packets, f.server_to_client_bytes, f.first_seen_ns, f.last_seen_ns)
        )
    return out


A, B_ = "10.0.0.1", "192.0.2.9"


def tcp_conversation(sport=40000, t=0.0):
    return [
        (t + 0.0, C.tcp4(A, B_, sport, 443, "S")),
        (t + 0.1, C.tcp4(B_, A, 443, sport, "SA")),
        (t + 0.2, C.tcp4(A, B_, sport, 443, "A")),
        (t + 0.3, C.tcp4(A, B_, sport, 443, "PA", b"x" * 100)),
        (t + 0.4, C.tcp4(B_, A, 443, sport, "PA", b"y" * 300)),
        (t + 0.5, C.tcp4(A, B_, sport, 443, "FA")),
        (t + 0.6, C.tcp4(B_, A, 443, sport, "FA")),
        (t + 0.7, C.tcp4(A, B_, sport, 443, "A")),
    ]


def test_tcp_client_is_the_syn_sender_and_counters_per_direction():
    flows = run(tcp_conversation())
    assert len(flows) == 1
    f = flows[0]
    c, s = flow_endpoints(f)
    assert (c, f.client_port, s, f.server_port) == (A, 40000, B_, 443)
    assert (f.client_to_server_packets, f.server_to_client_packets) == (5, 3)
    assert f.client_to_server_bytes == 4 * 40 + 140
    assert f.server_to_client_bytes == 2 * 40 + 340
    assert f.last_seen_ns - f.first_seen_ns == int(0.7 * S)


def test_syn_ack_first_means_receiver_is_client():
    flows = run(tcp_conversation()[1:])
    c, s = flow_endpoints(flows[0])
    assert c == A and flows[0].server_port == 443


def test_mid_flow_start_uses_service_port():
    # The capture starts with the server's data packet: 443 -> ephemeral.
    flows = run([(0, C.tcp4(B_, A, 443, 40000, "PA", b"z")), (0.1, C.tcp4(A, B_, 40000, 443, "A"))])
    c, s = flow_endpoints(flows[0])
    assert (c, s, flows[0].server_port) == (A, B_, 443)
    udp = run([(0, C.udp4(B_, A, 3478, 51000, b"stun")), (0.1, C.udp4(A, B_, 51000, 3478, b"x"))])
    assert flow_endpoints(udp[0])[0] == A


def test_udp_first_sender_is_client_between_ephemeral_ports():
    flows = run([(0, C.udp4(A, B_, 50000, 60000, b"a")), (1, C.udp4(B_, A, 60000, 50000, b"b"))])
    assert flow_endpoints(flows[0])[0] == A and flows[0].server_port == 60000


def test_idle_timeout_splits_and_same_tuple_is_a_new_flow():
    pkts = [(0, C.udp4(A, B_, 5000, 53, b"q")), (10, C.udp4(A, B_, 5000, 53, b"q")), (200, C.udp4(A, B_, 5000, 53, b"q"))]
    flows = run(pkts, idle_s=120)
    assert [f.client_to_server_packets for f in flows] == [2, 1]
    assert [f.flow_id for f in flows] == [1, 2]
    assert len(run(pkts, idle_s=500)) == 1


def test_tcp_reuse_after_close_is_a_new_flow():
    pkts = tcp_conversation(t=0) + tcp_conversation(t=5)
    flows = run(pkts)
    assert len(flows) == 2
    assert [f.client_to_server_packets for f in flows] == [5, 5]


def test_rst_then_syn_is_a_new_flow_but_late_ack_is_not():
    pkts = [
        (0, C.tcp4(A, B_, 1234, 80, "S")),
        (0.1, C.tcp4(B_, A, 80, 1234, "R")),
        (0.2, C.tcp4(A, B_, 1234, 80, "A")),  # stray, stays in the closed flow
        (1.0, C.tcp4(A, B_, 1234, 80, "S")),
        (1.1, C.tcp4(B_, A, 80, 1234, "SA")),
    ]
    for bs in (1, 2, 3, 100):
        flows = run(pkts, batch_size=bs)
        assert [(f.client_to_server_packets, f.server_to_client_packets) for f in flows] == [(2, 1), (1, 1)], bs


def test_syn_retransmission_is_not_a_new_flow():
    pkts = [(0, C.tcp4(A, B_, 1, 80, "S")), (1, C.tcp4(A, B_, 1, 80, "S")), (3, C.tcp4(A, B_, 1, 80, "S"))]
    assert len(run(pkts)) == 1


def test_vlan_separates_flows():
    pkt = C.udp4(A, B_, 1, 2, b"x")
    frames = [(0, C.ether(pkt, vlans=[10])), (0.1, C.ether(pkt, vlans=[20])), (0.2, C.ether(pkt, vlans=[10]))]
    flows = run(frames, linktype=1)
    assert sorted((f.vlan_id, f.client_to_server_packets) for f in flows) == [(10, 2), (20, 1)]


def test_ipv6_and_icmp_flows():
    pkts = [
        (0, C.udp6("2001:db8::1", "2001:db8::2", 5353, 5353, b"m")),
        (0.1, C.ipv4(A, B_, 1, C.icmp())),
        (0.2, C.ipv4(B_, A, 1, C.icmp(0))),
    ]
    flows = run(pkts)
    assert len(flows) == 2
    icmp = [f for f in flows if f.proto == 1][0]
    assert (icmp.client_to_server_packets, icmp.server_to_client_packets) == (1, 1)


def test_results_do_not_depend_on_batch_size():
    pkts = []
    for k in range(6):
        pkts += tcp_conversation(sport=41000 + k, t=k * 0.05)
    pkts += [(i * 0.01, C.udp4(A, B_, 50000 + i % 3, 8801, b"m" * i)) for i in range(40)]
    pkts += [(300 + i, C.udp4(A, B_, 50000, 8801, b"late")) for i in range(3)]
    pkts.sort(key=lambda p: p[0])
    want = summary(run(pkts, batch_size=65536))
    for bs in (1, 7, 13):
        assert summary(run(pkts, batch_size=bs)) == want, bs


def test_timestamps_going_backwards_do_not_depend_on_batch_size():
    pkts = [
        (1000, C.udp4(A, B_, 1, 2, b"a")),
        (0, C.udp4(A, B_, 1, 2, b"b")),  # clock jumps back
        (1001, C.udp4(A, B_, 1, 2, b"c")),
        (1500, C.udp4(A, B_, 1, 2, b"d")),
    ]
    want = summary(run(pkts))
    assert [r[6] for r in want] == [3, 1]
    for bs in (1, 2, 3):
        assert summary(run(pkts, batch_size=bs)) == want


def _four_conversations_and_a_media_stream() -> list:
    """Packets of 4 TCP conversations and 20 UDP datagrams on 3 ports, interleaved in time."""
    pkts = []
    for k in range(4):
        pkts += tcp_conversation(sport=42000 + k, t=k * 0.05)
    pkts += [(i * 0.01, C.udp4(A, B_, 50000 + i % 3, 8801, b"m" * i)) for i in range(20)]
    pkts.sort(key=lambda p: p[0])
    return pkts


@pure_python_only
def test_hash_collisions_fall_back_to_exact_grouping(monkeypatch):
    """Every key hashing alike must give the same flows as distinct hashes (the collision guard)."""
    from inspector import flows as flows_module

    pkts = _four_conversations_and_a_media_stream()
    want = summary(run(pkts, batch_size=9))
    monkeypatch.setattr(flows_module, "_mix", lambda h, v: h * 0)  # every key hashes to 0
    assert summary(run(pkts, batch_size=9)) == want


@pure_python_only
def test_hashes_differing_only_where_the_row_index_goes_still_make_their_own_flows(monkeypatch):
    """The table groups rows by the hash's top bits (``ordering.stable_argsort`` puts the row
    index in the low ones): keys that differ only in the bits dropped share a group, and the
    collision guard must split them."""
    from inspector import flows as flows_module

    pkts = _four_conversations_and_a_media_stream()
    want = summary(run(pkts, batch_size=9))
    # Hashes below 16: all alike once the 4 bits of a 9-row batch's index are dropped.
    monkeypatch.setattr(flows_module, "_mix", lambda h, v: (h ^ v.astype(np.uint64)) & np.uint64(15))
    assert summary(run(pkts, batch_size=9)) == want


def test_ended_flows_cross_to_a_worker_as_identity_columns():
    # Ended flows travel to the dissect workers (parallel.py) as identity_columns, pickled, and
    # come back as flows that carry those fields: what PayloadStage.facts reads.
    import pickle

    from inspector.flows import IDENTITY_FIELDS, Flow, flows_of_identities, identity_columns
    from inspector.payloads import PayloadStage

    ended = run(tcp_conversation()) + run([(0.5, C.udp6("2001:db8::1", "2001:db8::2", 5353, 53, b"q" * 20))])
    assert len(ended) == 2
    for f in ended:
        f.state = None
    columns = pickle.loads(pickle.dumps(identity_columns(ended), protocol=pickle.HIGHEST_PROTOCOL))
    copies = flows_of_identities(columns)
    assert [type(c) for c in copies] == [Flow, Flow]
    for original, copy in zip(ended, copies):
        assert all(getattr(copy, name) == getattr(original, name) for name in IDENTITY_FIELDS)
        assert copy.state is None and copy.client_to_server_bytes is None  # counters stay behind
        stage = PayloadStage()
        assert stage.facts(copy) == stage.facts(original)
    assert identity_columns([]) == [[] for _ in IDENTITY_FIELDS]
    assert flows_of_identities(identity_columns([])) == []

def test_endpoint_texts_stay_right_past_the_cache_bound() -> None:
    """``flow_endpoints`` gives each address's text, IPv4 and IPv6, whether cached or not: the
    cache starts over once it holds ``ENDPOINT_TEXTS_KEPT`` addresses; an IPv4 address and the
    IPv6 address with the same halves (``::a.b.c.d``) keep their own texts."""
    import ipaddress

    def flow(version: int, client: int, server: int) -> Flow:
        f = Flow()
        f.ip_version = version
        f.client_hi, f.client_lo = client >> 64, client & (2**64 - 1)
        f.server_hi, f.server_lo = server >> 64, server & (2**64 - 1)
        return f

    forget_endpoint_texts()
    v6 = int(ipaddress.IPv6Address("2001:db8::1"))
    for i in range(ENDPOINT_TEXTS_KEPT + 3):
        client = 0x0A000000 + i
        assert flow_endpoints(flow(4, client, 0x08080808)) == (str(ipaddress.IPv4Address(client)), "8.8.8.8")
    for i in (0, 1, ENDPOINT_TEXTS_KEPT + 1):
        client = flow_endpoints(flow(4, 0x0A000000 + i, 0x08080808))[0]
        assert client == f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    assert flow_endpoints(flow(6, v6, v6 + 0xFFFF)) == ("2001:db8::1", "2001:db8::1:0")
    assert flow_endpoints(flow(6, v6, v6 + 0xFFFF)) == ("2001:db8::1", "2001:db8::1:0")
    forget_endpoint_texts()
    assert flow_endpoints(flow(4, 0xC0000201, 0xC0000202)) == ("192.0.2.1", "192.0.2.2")
    compatible = flow_endpoints(flow(6, 0xC0000201, 0xC0000202))  # ::192.0.2.1, after its IPv4 twin
    assert compatible == (address_text(6, 0, 0xC0000201), address_text(6, 0, 0xC0000202))
    assert compatible[0] != "192.0.2.1" and ":" in compatible[0]


def test_key_bytes_tell_keys_apart_exactly() -> None:
    """``_key_bytes``: equal keys give equal bytes and any difference in any column (ports as
    uint16, addresses and the packed meta word as uint64, top bit included) gives different
    bytes; each row's bytes hold its columns' values as 8-byte words."""
    from inspector.flows import _key_bytes

    top = np.uint64(1 << 63)
    words = np.array([0, 1, top, top + np.uint64(5), 2**64 - 1], dtype=np.uint64)
    ports = np.array([0, 1, 443, 65535, 443], dtype=np.uint16)
    keys = _key_bytes(np.array([0, 1, 2, 3, 4, 2]), (words, ports, words[::-1].copy()))
    assert all(isinstance(k, bytes) and len(k) == 24 for k in keys)
    assert keys[2] == keys[5] and len(set(keys)) == 5
    assert np.frombuffer(keys[3], dtype=np.uint64).tolist() == [int(words[3]), 65535, int(words[1])]
    # One column differing by one bit, the others equal.
    a = _key_bytes(np.array([0]), (words[:1], ports[:1]))
    b = _key_bytes(np.array([0]), (words[1:2], ports[:1]))
    assert a != b
