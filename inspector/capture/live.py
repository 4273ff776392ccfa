"""Live capture from a Linux interface -> PacketBatch, with an evidence pcapng written as packets arrive.

The capture uses a Linux ``AF_PACKET`` socket (packet(7)) directly: it gives kernel receive
timestamps in nanoseconds (``SO_TIMESTAMPNS``, socket(7)), the packet's real length even when it is
longer than the buffer (``MSG_TRUNC``, packet(7)) and the kernel's drop counter
(``PACKET_STATISTICS``). scapy is imported only to compile a BPF filter expression through libpcap
(``pcap_compile``), so a capture without a filter needs neither scapy nor libpcap.

Weaknesses: Linux only; a packet socket sees the traffic of its own network namespace only;
other link types than Ethernet and loopback are captured in Linux cooked mode (LINKTYPE_LINUX_SLL)
and refuse a filter (the kernel hands those packets over without their link header, so libpcap's
filter offsets would not apply); packets the kernel drops when the socket buffer (4 MiB asked)
overflows are counted, not recovered; timestamps are the kernel's receive time, not the NIC's.
"""

from __future__ import annotations

import ctypes
import re
import select
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from inspector.batch import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, PacketBatch
from inspector.capture.writer import PcapngWriter
from inspector.digest import sha256_file
from inspector.errors import InspectorError

__all__ = ["LiveCapture", "LiveCaptureError", "LiveStats", "SNAPLEN"]

SNAPLEN = 262144  # what tcpdump captures by default: whole packets, even GRO/TSO super-packets

# Linux constants (linux/if_ether.h, linux/if_packet.h, asm-generic/socket.h, linux/if_arp.h).
_ETH_P_ALL = 0x0003
_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_SO_TIMESTAMPNS = 35  # the control message type SCM_TIMESTAMPNS has the same value
_SO_ATTACH_FILTER = 26
_PACKET_OUTGOING = 4
_ARPHRD_ETHER = 1
_ARPHRD_LOOPBACK = 772  # lo carries a 14-byte all-zero Ethernet header

_STOP_POLL_S = 0.1  # how often the capture loop looks at stop(): its worst-case reaction time

_PRIVILEGE_HINT = (
    "run as root or grant CAP_NET_RAW: sudo setcap cap_net_raw,cap_net_admin+eip $(which python3)"
)


class LiveCaptureError(InspectorError):
    """A live capture cannot start: one line that says what is wrong and what to do."""


@dataclass(frozen=True, slots=True)
class LiveStats:
    """What a live capture saw; final once ``batches()`` has ended.

    packets_captured           packets handed out in batches (and written to the evidence file)
    packets_dropped_by_kernel  packets the kernel dropped because the socket buffer was full
                               (``PACKET_STATISTICS``); None when the kernel did not tell
    evidence_sha256            SHA-256 (hex) of the evidence pcapng, "" without an evidence file
    evidence_packets           packets written to the evidence file
    first_ts_ns, last_ts_ns    timestamps of the first and last packet, ns since the epoch; 0 if none
    linktype                   LINKTYPE_* of the packets (1 Ethernet, 113 Linux cooked)
    interface                  the interface name
    """

    packets_captured: int
    packets_dropped_by_kernel: int | None
    evidence_sha256: str
    evidence_packets: int
    first_ts_ns: int
    last_ts_ns: int
    linktype: int
    interface: str


def _available_interfaces() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


def _compile_bpf(bpf: str, linktype: int) -> bytes:
    """Compile a filter expression with libpcap (through scapy) into classic BPF instructions
    (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k; linux/filter.h)."""
    try:
        from scapy.arch.common import compile_filter, free_filter
        from scapy.error import Scapy_Exception
    except ImportError as e:  # scapy itself missing
        raise LiveCaptureError(f"filter '{bpf}' needs scapy and libpcap: pip install scapy; "
                               f"apt-get install libpcap0.8 ({e})") from e
    try:
        program = compile_filter(bpf, linktype=linktype)
    except ImportError as e:
        raise LiveCaptureError(
            f"filter '{bpf}' needs libpcap, which is not installed: apt-get install libpcap0.8"
        ) from e
    except (Scapy_Exception, OSError) as e:
        text = str(e)
        match = re.search(r"\((.*)\)\s*$", text)
        raise LiveCaptureError(f"invalid filter '{bpf}': {match.group(1) if match else text}") from e
    try:
        raw = b"".join(
            struct.pack("HBBI", program.bf_insns[i].code, program.bf_insns[i].jt,
                        program.bf_insns[i].jf, program.bf_insns[i].k & 0xFFFFFFFF)
            for i in range(program.bf_len)
        )
    finally:
        free_filter(program)
    return raw


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _attach_bpf(sock: socket.socket, instructions: bytes) -> None:
    code = ctypes.create_string_buffer(instructions, len(instructions))
    prog = _SockFprog(len(instructions) // 8, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(prog))


class LiveCapture:
    """Capture packets from one interface, as batches, writing an evidence pcapng as they arrive.

    Validation happens in the constructor: the interface exists (in this network namespace), the
    process may open a packet socket, the filter compiles. ``batches()`` then runs the capture once.
    Memory is bounded by ``batch_size`` packets plus the evidence writer's buffer.
    """

    def __init__(
        self,
        interface: str,
        bpf: str | None = None,
        duration_s: float | None = None,
        count: int | None = None,
        evidence_path: Path | None = None,
        batch_size: int = 256,
        batch_interval_s: float = 0.5,
    ) -> None:
        if batch_size < 1:
            raise LiveCaptureError(f"batch_size must be at least 1, not {batch_size}")
        if batch_interval_s <= 0:
            raise LiveCaptureError(f"batch_interval_s must be positive, not {batch_interval_s}")
        if count is not None and count < 1:
            raise LiveCaptureError(f"count must be at least 1, not {count}")
        if duration_s is not None and duration_s <= 0:
            raise LiveCaptureError(f"duration_s must be positive, not {duration_s}")
        available = _available_interfaces()
        if interface not in available:
            raise LiveCaptureError(f"no interface '{interface}'; available: {', '.join(available)}")
        self.interface = interface
        self.bpf = bpf
        self.duration_s = duration_s
        self.count = count
        self.evidence_path = Path(evidence_path) if evidence_path is not None else None
        self.batch_size = batch_size
        self.batch_interval_s = batch_interval_s

        try:
            probe = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        except PermissionError as e:
            raise LiveCaptureError(f"no permission to capture on '{interface}': {_PRIVILEGE_HINT}") from e
        try:
            probe.bind((interface, 0))
            hatype = probe.getsockname()[3]
        except OSError as e:
            raise LiveCaptureError(f"cannot open interface '{interface}': {e.strerror or e}") from e
        finally:
            probe.close()
        # Ethernet and loopback frames are captured whole; any other link type in Linux cooked
        # mode (LINKTYPE_LINUX_SLL, the header is rebuilt from the packet socket's address).
        self._cooked = hatype not in (_ARPHRD_ETHER, _ARPHRD_LOOPBACK)
        self._is_loopback = hatype == _ARPHRD_LOOPBACK
        self.linktype = LINKTYPE_LINUX_SLL if self._cooked else LINKTYPE_ETHERNET
        self._bpf_code: bytes | None = None
        if bpf:
            if self._cooked:
                raise LiveCaptureError(
                    f"filters are supported on Ethernet-like interfaces only; '{interface}' is not one: "
                    "capture without a filter"
                )
            self._bpf_code = _compile_bpf(bpf, self.linktype)

        self._stop = threading.Event()
        self._started = False
        self._captured = 0
        self._written = 0
        self._dropped: int | None = None
        self._first_ts = 0
        self._last_ts = 0
        self._sha256 = ""

    # -- control -------------------------------------------------------------------------------

    def stop(self) -> None:
        """End the capture within ~0.1 s; safe from any thread and from a signal handler."""
        self._stop.set()

    @property
    def stats(self) -> LiveStats:
        return LiveStats(
            packets_captured=self._captured,
            packets_dropped_by_kernel=self._dropped,
            evidence_sha256=self._sha256,
            evidence_packets=self._written,
            first_ts_ns=self._first_ts,
            last_ts_ns=self._last_ts,
            linktype=self.linktype,
            interface=self.interface,
        )

    # -- capture -------------------------------------------------------------------------------

    def _open_socket(self) -> socket.socket:
        kind = socket.SOCK_DGRAM if self._cooked else socket.SOCK_RAW
        try:
            # Protocol 0 receives nothing until bound with a protocol, so the filter is in place
            # before the first packet is queued (no unfiltered packets slip in).
            sock = socket.socket(socket.AF_PACKET, kind, 0)
        except PermissionError as e:
            raise LiveCaptureError(f"no permission to capture on '{self.interface}': {_PRIVILEGE_HINT}") from e
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            except OSError:
                pass
            if self._bpf_code is not None:
                _attach_bpf(sock, self._bpf_code)
            sock.bind((self.interface, _ETH_P_ALL))
        except OSError as e:
            sock.close()
            raise LiveCaptureError(f"cannot capture on '{self.interface}': {e.strerror or e}") from e
        sock.setblocking(False)
        return sock

    def _read_drops(self, sock: socket.socket) -> None:
        try:
            raw = sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
        except OSError:
            return
        _, drops = struct.unpack("II", raw)  # reading resets the kernel's counters
        self._dropped = (self._dropped or 0) + drops

    def _install_signal_handlers(self) -> dict[int, object]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda _s, _f: self.stop())
        return previous

    def batches(self) -> Iterator[PacketBatch]:
        """Capture until duration, count or ``stop()``; yield packets as they arrive.

        A batch is yielded when it holds ``batch_size`` packets or when ``batch_interval_s`` has
        passed since its first packet. The evidence file is flushed after every batch, so a crash
        loses at most the packets of the batch being filled. SIGINT and SIGTERM (when called on
        the main thread) stop the capture cleanly; the previous handlers are restored at the end.
        """
        if self._started:
            raise LiveCaptureError("a LiveCapture runs once: create a new one to capture again")
        self._started = True
        writer = None
        if self.evidence_path is not None:
            try:
                fileobj = open(self.evidence_path, "wb")
            except OSError as e:
                raise LiveCaptureError(
                    f"cannot write the evidence file {self.evidence_path}: {e.strerror or e}") from e
            # if_tsresol 9: nanosecond timestamps, as the kernel gives them.
            writer = PcapngWriter(fileobj, interfaces=[(self.linktype, SNAPLEN, 9)])
        try:
            sock = self._open_socket()
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        previous_handlers = self._install_signal_handlers()
        try:
            yield from self._loop(sock, writer)
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
            self._read_drops(sock)
            sock.close()
            if writer is not None:
                writer.flush()
                writer.close()
                self._sha256 = sha256_file(self.evidence_path)  # type: ignore[arg-type]

    def _loop(self, sock: socket.socket, writer) -> Iterator[PacketBatch]:
        view = memoryview(bytearray(SNAPLEN))
        deadline = None if self.duration_s is None else time.monotonic() + self.duration_s
        pending = _Pending()
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)

        def batch_due() -> bool:
            return bool(pending.packets) and (
                len(pending.packets) >= self.batch_size
                or time.monotonic() - pending.started >= self.batch_interval_s
                or self._count_reached()
            )

        while not self._stop.is_set() and not self._count_reached():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait_s = _STOP_POLL_S
            if deadline is not None:
                wait_s = min(wait_s, deadline - now)
            if pending.packets:
                wait_s = min(wait_s, max(0.0, pending.started + self.batch_interval_s - now))
            poller.poll(int(wait_s * 1000) + 1)
            self._receive(sock, view, writer, pending)
            if batch_due():
                yield self._take_batch(pending, writer)
        # Packets the kernel had already queued when the capture ended are still delivered; the
        # first one stamped after the end closes the capture (a flood cannot keep it running).
        ended_ns = time.time_ns()
        while self._receive(sock, view, writer, pending, until_ns=ended_ns):
            if len(pending.packets) >= self.batch_size:
                yield self._take_batch(pending, writer)
        if pending.packets:
            yield self._take_batch(pending, writer)

    def _count_reached(self) -> bool:
        return self.count is not None and self._captured >= self.count

    def _receive(self, sock: socket.socket, view: memoryview, writer, pending: "_Pending",
                 until_ns: int | None = None) -> int:
        """Read the packets queued right now without blocking, until the batch is full or the
        count is reached (or a packet stamped after ``until_ns`` comes); write each to the
        evidence file. Returns how many were taken; 0 when a packet from after ``until_ns``
        came (it is left out: it arrived after the capture ended)."""
        taken = 0
        ancillary_size = socket.CMSG_SPACE(16)
        while len(pending.packets) < self.batch_size and not self._count_reached():
            try:
                nbytes, ancdata, _flags, address = sock.recvmsg_into([view], ancillary_size, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                break
            if self._is_loopback and address[2] == _PACKET_OUTGOING:
                continue  # lo shows every packet twice: once sent, once received
            # With MSG_TRUNC a packet socket returns the packet's real length (packet(7)).
            data = bytes(view[: min(nbytes, SNAPLEN)])
            wirelen = nbytes
            if self._cooked:
                header = _sll_header(address)
                data = header + data
                wirelen += len(header)
            ts_ns = _timestamp_ns(ancdata)
            if until_ns is not None and ts_ns > until_ns:
                return 0
            if not pending.packets:
                pending.started = time.monotonic()
            pending.packets.append(data)
            pending.ts_ns.append(ts_ns)
            pending.wirelen.append(wirelen)
            if writer is not None:
                writer.write_packet(0, ts_ns, data, wirelen)
                self._written += 1
            if self._captured == 0:
                self._first_ts = ts_ns
            self._last_ts = ts_ns
            self._captured += 1
            taken += 1
        return taken

    def _take_batch(self, pending: "_Pending", writer) -> PacketBatch:
        batch = PacketBatch.from_packets(
            pending.packets, pending.ts_ns, self.linktype, pending.wirelen,
            first_index=self._captured - len(pending.packets),
        )
        pending.packets = []
        pending.ts_ns = []
        pending.wirelen = []
        if writer is not None:
            writer.flush()
        return batch


class _Pending:
    """The batch being filled."""

    __slots__ = ("packets", "ts_ns", "wirelen", "started")

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.ts_ns: list[int] = []
        self.wirelen: list[int] = []
        self.started = 0.0


def _timestamp_ns(ancdata: list[tuple[int, int, bytes]]) -> int:
    """Kernel receive time from the SCM_TIMESTAMPNS control message (struct timespec), else now."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return seconds * 1_000_000_000 + nanoseconds
    return time.time_ns()


def _sll_header(address: tuple) -> bytes:
    """LINKTYPE_LINUX_SLL header (tcpdump.org/linktypes/LINKTYPE_LINUX_SLL.html): packet type,
    ARPHRD type, link-layer address length, 8 bytes of address, protocol; big-endian."""
    _ifname, proto, pkttype, hatype, addr = address
    return struct.pack(">HHH8sH", pkttype, hatype, len(addr), addr[:8], proto)


