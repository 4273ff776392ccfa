"""Live capture on a veth pair between two network namespaces this test creates.

The capturing thread enters namespace A with setns(2) (only that thread moves), the sending thread
enters namespace B, so nothing touches the host's own interfaces. Tests that need root and
``ip netns`` skip with the reason; the evidence-writer and argument tests run anywhere.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import dpkt
import pytest

from inspector.capture.live import LiveCapture, LiveCaptureError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import netns_topology  # noqa: E402

PORT = 5555
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(name: str):
    """Move the calling thread into network namespace ``name`` (setns(2)), and back afterwards."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        yield
    finally:
        _libc.setns(original, CLONE_NEWNET)
        os.close(original)
        os.close(target)


@pytest.fixture(scope="module")
def veth():
    reason = netns_topology.netns_available()
    if reason:
        pytest.skip(f"live capture on a veth pair {reason}")
    topo = netns_topology.create()
    try:
        yield topo
    finally:
        topo.destroy()


def _sender(topo, payloads: list[bytes], delay_s: float = 0.3, gap_s: float = 0.0,
            stop: threading.Event | None = None) -> threading.Thread:
    """From namespace B, send ``payloads`` to A's PORT after ``delay_s`` (or until ``stop``)."""

    def run() -> None:
        with in_netns(topo.b.name):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                time.sleep(delay_s)
                for payload in payloads:
                    if stop is not None and stop.is_set():
                        return
                    s.sendto(payload, (topo.a.ip, PORT))
                    if gap_s:
                        time.sleep(gap_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _udp_payloads(packets: list[bytes]) -> list[bytes]:
    out = []
    for frame in packets:
        ip = dpkt.ethernet.Ethernet(frame).data
        if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP) and ip.data.dport == PORT:
            out.append(bytes(ip.data.data))
    return out


def _evidence(path: Path) -> list[tuple[float, bytes]]:
    with open(path, "rb") as f:
        return [(ts, bytes(frame)) for ts, frame in dpkt.pcapng.Reader(f)]


def _capture(topo, then=None, **kwargs) -> tuple[LiveCapture, list]:
    """Capture on A's veth; ``then()`` runs once the capture is set up (it starts the senders,
    whose first packet waits ``delay_s`` so the socket is open by then)."""
    with in_netns(topo.a.name):
        capture = LiveCapture(topo.a.iface, **kwargs)
        if then is not None:
            then()
        return capture, list(capture.batches())


@pytest.mark.netns
def test_known_udp_packets_reach_batches_and_evidence(veth, tmp_path):
    payloads = [b"inspector-%03d" % i for i in range(40)]
    evidence = tmp_path / "ev.pcapng"
    sent_after_ns = time.time_ns()
    capture, batches = _capture(veth, lambda: _sender(veth, payloads), bpf=f"udp dst port {PORT}",
                                count=len(payloads), duration_s=10,
                                evidence_path=evidence, batch_size=8)

    packets = [b.packet(i) for b in batches for i in range(len(b))]
    assert _udp_payloads(packets) == payloads
    assert [len(b) for b in batches] == [8] * 5
    assert [b.first_index for b in batches] == [0, 8, 16, 24, 32]
    on_disk = _evidence(evidence)
    assert [frame for _, frame in on_disk] == packets
    stamps = [int(t) for b in batches for t in b.ts_ns]
    assert stamps == sorted(stamps) and stamps[0] >= sent_after_ns - 1_000_000
    assert [round(ts, 6) for ts, _ in on_disk] == [round(t / 1e9, 6) for t in stamps]
    stats = capture.stats
    assert stats.packets_captured == stats.evidence_packets == len(payloads)
    assert stats.evidence_sha256 == hashlib.sha256(evidence.read_bytes()).hexdigest()
    assert (stats.first_ts_ns, stats.last_ts_ns) == (stamps[0], stamps[-1])
    assert stats.linktype == 1 and stats.interface == veth.a.iface
    assert stats.packets_dropped_by_kernel == 0
    assert all(int(b.wirelen[i]) == int(b.caplen[i]) for b in batches for i in range(len(b)))


@pytest.mark.netns
def test_filter_keeps_only_matching_packets(veth, tmp_path):
    payloads = [b"match-%d" % i for i in range(5)]

    def other() -> None:
        with in_netns(veth.b.name):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                time.sleep(0.2)
                for i in range(5):
                    s.sendto(b"other", (veth.a.ip, PORT + 1))

    def start() -> None:
        threading.Thread(target=other, daemon=True).start()
        _sender(veth, payloads, delay_s=0.4)

    _, batches = _capture(veth, start, bpf=f"udp dst port {PORT}", duration_s=1.2)
    packets = [b.packet(i) for b in batches for i in range(len(b))]
    assert _udp_payloads(packets) == payloads
    assert len(packets) == 5  # neither the other port nor ARP passed the filter


@pytest.mark.netns
def test_count_ends_the_capture_exactly(veth):
    capture, batches = _capture(veth, lambda: _sender(veth, [b"c%d" % i for i in range(12)]), bpf="udp",
                                count=5, duration_s=10, batch_size=100)
    assert sum(len(b) for b in batches) == 5 == capture.stats.packets_captured


@pytest.mark.netns
def test_duration_ends_an_idle_capture(veth):
    started = time.monotonic()
    capture, batches = _capture(veth, bpf=f"udp dst port {PORT + 7}", duration_s=0.5)
    assert batches == [] and capture.stats.packets_captured == 0
    assert 0.45 <= time.monotonic() - started < 1.5


@pytest.mark.netns
def test_a_partial_batch_is_yielded_after_the_interval(veth):
    """Three packets and a batch size of 1000: they still arrive, within batch_interval_s."""
    arrivals = []
    with in_netns(veth.a.name):
        capture = LiveCapture(veth.a.iface, bpf="udp", duration_s=2.5, batch_size=1000, batch_interval_s=0.2)
        _sender(veth, [b"a", b"b", b"c"])
        for batch in capture.batches():
            arrivals.append((time.time_ns(), batch))
    assert sum(len(b) for _, b in arrivals) == 3
    first_yield_ns, first_batch = arrivals[0]
    assert first_yield_ns - int(first_batch.ts_ns[0]) < 600_000_000  # 0.2 s interval + poll slack


@pytest.mark.netns
def test_stop_from_another_thread_loses_nothing(veth, tmp_path):
    evidence = tmp_path / "stop.pcapng"
    stop_sending = threading.Event()
    payloads = [b"seq-%05d" % i for i in range(100000)]
    with in_netns(veth.a.name):
        capture = LiveCapture(veth.a.iface, bpf=f"udp dst port {PORT}", duration_s=20, evidence_path=evidence,
                              batch_size=64)
        _sender(veth, payloads, delay_s=0.2, gap_s=0.001, stop=stop_sending)
        stopped_at = []
        timer = threading.Timer(1.0, lambda: (stopped_at.append(time.monotonic()), capture.stop()))
        timer.start()
        batches = list(capture.batches())
        ended_at = time.monotonic()
    stop_sending.set()
    got = _udp_payloads([b.packet(i) for b in batches for i in range(len(b))])
    assert len(got) > 50
    assert got == payloads[: len(got)]  # in order, no gap: nothing lost before the stop
    assert [frame for _, frame in _evidence(evidence)] == [b.packet(i) for b in batches for i in range(len(b))]
    assert capture.stats.evidence_packets == capture.stats.packets_captured == len(got)
    assert ended_at - stopped_at[0] < 0.5  # stop() is honoured promptly


@pytest.mark.netns
def test_sigterm_ends_the_capture_cleanly(veth, tmp_path):
    """The main thread's capture turns SIGTERM into stop(); the old handler is back afterwards."""
    evidence = tmp_path / "term.pcapng"
    before = signal.getsignal(signal.SIGTERM)

    def start() -> None:
        _sender(veth, [b"t%d" % i for i in range(20)], delay_s=0.2, gap_s=0.01)
        threading.Timer(0.9, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()

    capture, batches = _capture(veth, start, bpf=f"udp dst port {PORT}", duration_s=20, evidence_path=evidence)
    got = _udp_payloads([b.packet(i) for b in batches for i in range(len(b))])
    assert got == [b"t%d" % i for i in range(20)]
    assert len(_evidence(evidence)) == 20
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.netns
def test_missing_interface_names_the_available_ones(veth):
    with in_netns(veth.a.name):
        with pytest.raises(LiveCaptureError) as e:
            LiveCapture("nope0")
    assert str(e.value) == f"no interface 'nope0'; available: lo, {veth.a.iface}"


@pytest.mark.netns
def test_invalid_filter_says_what_libpcap_said(veth):
    with in_netns(veth.a.name):
        with pytest.raises(LiveCaptureError, match=r"^invalid filter 'udp prot 53': .*syntax error"):
            LiveCapture(veth.a.iface, bpf="udp prot 53")


@pytest.mark.netns
def test_filter_without_libpcap_says_what_to_install(veth, monkeypatch):
    import scapy.arch.common

    def no_libpcap(*_args, **_kwargs):
        raise ImportError("libpcap is not available. Cannot compile filter !")

    monkeypatch.setattr(scapy.arch.common, "compile_filter", no_libpcap)
    with in_netns(veth.a.name):
        with pytest.raises(LiveCaptureError, match=r"^filter 'udp' needs libpcap.*apt-get install libpcap0\.8$"):
            LiveCapture(veth.a.iface, bpf="udp")


def _drop_cap_net_raw() -> None:
    """In the child before exec: remove CAP_NET_RAW (13) from the bounding set
    (prctl PR_CAPBSET_DROP = 24), so even root runs the new program without it (capabilities(7))."""
    if _libc.prctl(24, 13, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_NET_RAW)")


def test_without_privilege_the_message_says_how_to_grant_it():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop CAP_NET_RAW from a child")
    code = ("from inspector.capture.live import LiveCapture, LiveCaptureError\n"
            "try:\n    LiveCapture('lo')\nexcept LiveCaptureError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), preexec_fn=_drop_cap_net_raw, timeout=30)
    assert done.stdout.strip() == (
        "no permission to capture on 'lo': run as root or grant CAP_NET_RAW: "
        "sudo setcap cap_net_raw,cap_net_admin+eip $(which python3)"
    ), done.stderr


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be at least 1, not 0"),
    ({"count": 0}, "count must be at least 1, not 0"),
    ({"duration_s": -1}, "duration_s must be positive, not -1"),
    ({"batch_interval_s": 0}, "batch_interval_s must be positive, not 0"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(LiveCaptureError, match=f"^{re.escape(message)}$"):
        LiveCapture("lo", **kwargs)



@pytest.mark.netns
def test_a_link_without_ethernet_header_is_captured_in_cooked_mode(veth):
    """A tun device (ARPHRD_NONE) has no link header: packets come out as LINKTYPE_LINUX_SLL with
    the packet type, ARPHRD type and protocol in the 16-byte cooked header; a filter is refused."""
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun")
    import fcntl

    name = "ivtun" + veth.token
    ip_packet = bytes(dpkt.ip.IP(src=socket.inet_aton("10.78.0.2"), dst=socket.inet_aton("10.78.0.1"),
                                 p=dpkt.ip.IP_PROTO_UDP, data=dpkt.udp.UDP(sport=4000, dport=PORT, data=b"tun!")))
    with in_netns(veth.a.name):
        tun = os.open("/dev/net/tun", os.O_RDWR)
        try:
            # TUNSETIFF with IFF_TUN | IFF_NO_PI (linux/if_tun.h): raw IP packets, no extra header.
            fcntl.ioctl(tun, 0x400454CA, struct.pack("16sH", name.encode(), 0x0001 | 0x1000))
            subprocess.run(["ip", "-n", veth.a.name, "addr", "add", "10.78.0.1/24", "dev", name], check=True)
            subprocess.run(["ip", "-n", veth.a.name, "link", "set", name, "up"], check=True)
            with pytest.raises(LiveCaptureError, match="filters are supported on Ethernet-like interfaces only"):
                LiveCapture(name, bpf="udp")
            capture = LiveCapture(name, count=3, duration_s=5)
            threading.Timer(0.3, lambda: [os.write(tun, ip_packet) for _ in range(3)]).start()
            batches = list(capture.batches())
        finally:
            os.close(tun)
    packets = [b.packet(i) for b in batches for i in range(len(b))]
    assert capture.stats.linktype == 113 and {int(t) for b in batches for t in b.linktype} == {113}
    assert len(packets) == 3
    for packet in packets:
        pkttype, hatype, halen, _addr, protocol = struct.unpack(">HHH8sH", packet[:16])
        assert (pkttype, hatype, halen, protocol) == (0, 0xFFFE, 0, 0x0800)  # to us, ARPHRD_NONE, IPv4
        assert packet[16:] == ip_packet


@pytest.mark.netns
def test_leaving_the_loop_early_closes_the_evidence_with_what_was_handed_out(veth, tmp_path):
    evidence = tmp_path / "early.pcapng"
    with in_netns(veth.a.name):
        capture = LiveCapture(veth.a.iface, bpf=f"udp dst port {PORT}", duration_s=10, evidence_path=evidence,
                              batch_size=5)
        _sender(veth, [b"e%d" % i for i in range(20)])
        batches = capture.batches()
        first = next(batches)
        batches.close()  # what a consumer's ``break`` does
    assert _udp_payloads([first.packet(i) for i in range(len(first))]) == [b"e%d" % i for i in range(5)]
    assert [frame for _, frame in _evidence(evidence)] == [first.packet(i) for i in range(len(first))]
    assert capture.stats.evidence_packets == 5
    assert capture.stats.evidence_sha256 == hashlib.sha256(evidence.read_bytes()).hexdigest()
