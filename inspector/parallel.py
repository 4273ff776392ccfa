"""One capture on several cores: one process reads and counts, worker processes dissect.

The columnar stages (read, decode, flow table, the call stage's collectors) run once, in the
calling process. What costs is the per-packet Python of the dissectors, and it only ever looks at a
few packets per flow: the namer takes at most ``NAMER_CAP_PACKETS`` payload packets of a flow (all
of a DNS flow's), the detectors at most ``MEDIA_CAP_PACKETS``. So the reading process routes each
flow by its first payload packet exactly as ``payloads.PayloadStage`` does, and ships every payload
packet that may still reach a dissector, decided from those caps alone, to the worker that owns the
flow (``payloads.owner_of``: by flow id, worker 0 taking fewer since it also folds the RTP
headers); DNS flows go to every worker, since each flow's name needs all answers seen before it. A
worker runs ``PayloadStage.dissect`` on what it receives, so each dissector sees exactly the
packets it would see in one process (the worker applies the same "still wants it" rules; it is only
handed a superset). When a flow ends, the reader sends its identity (``flows.identity_columns``:
addresses, ports, times) to its owner, which takes the flow's facts and drops its state, as
``pipeline.process_batches`` does, and labels it (``labels.FlowLabeller``); at the end it returns
label codes, then the facts of the flows the cross-flow rules need, as the pickled blocks of at
most ``DEFERRED_BLOCK_ROWS`` its spill file holds; the reader files them as they arrive (to its own
spill file, still pickled, beyond a few thousand) and resolves them over every worker's. The RTP
collector's header columns go to one worker (``RTP_WORKER``), which folds them into the running
stream state the reader would have kept and returns it at the end. Messages keep capture order, so
the tables are identical to a one-process run whatever ``n`` is (tested). Memory stays bounded: a
pipe holds at most one message a worker has not read, and each side keeps state for active flows
only.

Weakness: the reading process does the columnar work alone, and the call stage after it is
serial (Amdahl); the dissectors spread over the workers.
"""

from __future__ import annotations

import mmap
import multiprocessing
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspector import warmup
from inspector.capture.files import open_capture
from inspector.decode import IPPROTO_TCP
from inspector.errors import InspectorError
from inspector.flows import identity_columns
from inspector.gcpause import paused_collector
from inspector.idlecores import IdleCores, usable_cores
from inspector.niceness import lower_priority
from inspector.ordering import run_first_positions, sorted_runs
from inspector.payloads import (
    MEDIA_CAP_PACKETS,
    NAMER_CAP_PACKETS,
    ROUTE_BOTH,
    ROUTE_DNS,
    ROUTE_MEDIA,
    ROUTE_NAMER,
    PayloadPackets,
    add_shipped,
    first_payload_routes,
    owner_of,
    owners_of,
    ship_new_routes,
    shipped_so_far,
)
from inspector.pipeline import AnalyzeOptions, CaptureResult, process_capture

@dataclass(slots=True)
class MergedPayloads:
    """Stands in for the PayloadStage of a parallel run (what the manifest reads of it)."""

    errors: Counter
    packets_inspected: int


def _ranks(groups: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """For each element where ``mask``, how many earlier masked elements share its group
    (0 for the first); a large number elsewhere."""
    out = np.full(groups.shape[0], np.iinfo(np.int64).max // 2, dtype=np.int64)
    where = np.flatnonzero(mask)
    if where.shape[0] == 0:
        return out
    g = groups[where]
    order, starts = sorted_runs(g)
    positions = np.arange(order.shape[0])
    ranks = np.empty_like(positions)
    ranks[order] = positions - run_first_positions(starts)
    out[where] = ranks
    return out


#: Most deferred flows (``labels.FlowLabeller``) per message from a worker at the end: a pickled
#: block of (flow id, kind, facts row or source tuple) items, up to ~200 bytes each pickled
#: (~1.5 KB each as objects, which only the worker, one block at a time, and ``resolve`` make).
DEFERRED_BLOCK_ROWS = 4096

#: The worker that also folds the RTP headers into running stream state (``collect.RtpCollector``):
#: that fold is sequential per stream, so one process does all of it, off the reading process.
RTP_WORKER = 0

#: How much lower the dissect workers' scheduling priority is than the reading process's
#: (``os.nice`` increment). The reader is the pipeline's critical path: every worker waits on
#: its batches, and with as many workers as cores the three processes of a 2-core run share two
#: cores. Measured on the benchmark capture with two workers on 2 cores: the workers waited
#: 0.65-1.0 s each for batches with equal priority, 0.4-0.57 s at +10; wall time 3.40 -> 3.28 s
#: (hyperfine, 6 runs; +3 gave 3.34 s, +19 no more than +10).
#: Weakness: on a machine busy with other work the workers get less of it than equal priority
#: would give them; the reader's own share is unchanged.
WORKER_NICENESS = 10


#: Batches the reading process sends its workers before it starts importing the tables' pandas
#: (``warmup.py``). That import holds this process's GIL for ~0.17 s, so begun with the packets
#: it delays the first batches while the workers, their own imports done, wait for them.
#: Measured on the benchmark capture, 20 alternating runs each: 3.24 -> 3.18 s (median); after
#: 4 batches the import gains less. Weakness: a capture of fewer batches imports it at the end,
#: when ``close`` starts it, beside the workers' last batches.
WARMUP_AFTER_BATCHES = 2

#: Packets in the reader's first batch (``CaptureReader.first_batch_size``; the rest are
#: ``AnalyzeOptions.batch_size``). The workers start dissecting when it arrives: a full batch of
#: 65,536 took the reader ~0.085 s to read, decode, count and ship on the benchmark machine, with
#: the second core idle meanwhile; 8,192 take ~0.02 s. Measured there, 30 alternating runs each:
#: median 2.94 -> 2.85 s, mean 2.93 -> 2.88 s (4,096 and 16,384 no better). Any batch sizes give
#: the same tables.
FIRST_BATCH_PACKETS = 8192


class PayloadShipper:
    """Takes the PayloadStage's place in ``pipeline.process_batches`` in the reading process.

    It starts the tables' pandas import itself (``starts_warmup``), after
    ``WARMUP_AFTER_BATCHES`` batches."""

    starts_warmup = True

    def __init__(self, connections: list, file_bytes: np.ndarray | None = None) -> None:
        self.connections = connections
        # The capture file's mapped bytes (``CaptureReader.mapped_bytes``), which the workers
        # share: payloads inside it travel as file offsets, not bytes.
        self.file_bytes = file_bytes
        self.n = len(connections)
        self._ended: list[list] = [[] for _ in range(self.n)]
        self._dropped: list[list[int]] = [[] for _ in range(self.n)]
        self._rtp: list[tuple] = []
        self.dns_packets_shipped = 0
        self._batches_sent = 0

    def fold_rtp(self, columns: tuple) -> None:
        """The RTP collector's header columns of one batch, for ``RTP_WORKER`` to fold (sent with
        the batch's next message, so the worker folds them in capture order)."""
        self._rtp.append(columns)

    def feed(self, d, bf) -> None:
        n_workers = self.n
        packets = PayloadPackets(d, bf)
        if packets.index.shape[0] == 0:
            self._send([[] for _ in range(n_workers)], None)
            return
        idx, slot_of, prow, b0 = packets.index, packets.slot, packets.row, packets.first_byte
        flows = bf.flows
        n = len(flows)
        new_routes = ship_new_routes(flows, first_payload_routes(d, bf, packets), n_workers)
        route_of, namer_before, media_before = shipped_so_far(flows)
        route = route_of[slot_of]
        dtls = (b0 >= 20) & (b0 <= 63)
        # Which dissector may still take each packet (PayloadStage.dissect's "wants"): the namer
        # takes any payload of TLS/HTTP/QUIC and unknown flows but only DTLS records of a media
        # flow; the detectors take any payload of media and unknown flows.
        # Only the candidates of a flow whose cap is not reached yet are ranked: once a flow's
        # dissector has been shipped its cap, none of its later packets can go (most of a batch's
        # payload packets are RTP of media flows shipped their 10 in an earlier batch). A flow's
        # shipped count is the same for all its packets in the batch, so a flow's candidates are
        # ranked all or none, and the ranks are those among all its candidates.
        namer_candidate = ((route == ROUTE_NAMER) | (route == ROUTE_BOTH) | ((route == ROUTE_MEDIA) & dtls)) & (
            namer_before[slot_of] < NAMER_CAP_PACKETS
        )
        media_candidate = ((route == ROUTE_MEDIA) | (route == ROUTE_BOTH)) & (media_before[slot_of] < MEDIA_CAP_PACKETS)
        namer_rank = _ranks(slot_of, namer_candidate) + namer_before[slot_of]
        media_rank = _ranks(slot_of, media_candidate) + media_before[slot_of]
        ship = (
            (route == ROUTE_DNS)
            | (namer_candidate & (namer_rank < NAMER_CAP_PACKETS))
            | (media_candidate & (media_rank < MEDIA_CAP_PACKETS))
        )
        add_shipped(
            flows,
            np.bincount(slot_of[namer_candidate], minlength=n),
            np.bincount(slot_of[media_candidate], minlength=n),
        )
        if not ship.any():
            self._send(new_routes, None)
            return
        sel = np.flatnonzero(ship)
        fids = bf.flow_ids()[slot_of[sel]]
        srows = prow[sel]
        is_dns = route[sel] == ROUTE_DNS
        self.dns_packets_shipped += int(is_dns.sum())
        owner = owners_of(fids, n_workers)
        starts = d.payload_off[srows].astype(np.int64)
        lengths = d.payload_len[srows].astype(np.int64)
        # Payloads in the shared file mapping go as offsets into it; the others (reassembled
        # datagrams, decompressed or live batches) as bytes in the message's blob.
        in_blob = d.payload_in_extra[srows]
        if self.file_bytes is None or d.buffer is not self.file_bytes:
            in_blob = np.ones(sel.shape[0], dtype=bool)
        buffer, extra = memoryview(d.buffer), memoryview(d.extra)
        packets = []
        for k in range(n_workers):
            mine = np.flatnonzero(is_dns | (owner == k))
            if mine.shape[0] == 0:
                packets.append(None)
                continue
            blob_rows = mine[in_blob[mine]]
            at = starts[mine]
            blob = b""
            if blob_rows.shape[0]:
                s, n_bytes = starts[blob_rows], lengths[blob_rows]
                x = d.payload_in_extra[srows[blob_rows]].tolist()
                e = (s + n_bytes).tolist()
                blob = b"".join([(extra if xx else buffer)[a:b] for a, b, xx in zip(s.tolist(), e, x)])
                # Where each of those payloads starts in the blob.
                at[in_blob[mine]] = np.cumsum(n_bytes) - n_bytes
            r = srows[mine]
            packets.append(
                (
                    fids[mine],
                    bf.from_client[idx[sel[mine]]],
                    d.ts_ns[r],
                    np.where(d.proto[r] == IPPROTO_TCP, d.tcp_seq[r].astype(np.int64), -1),
                    b0[sel[mine]],
                    at,
                    lengths[mine],
                    in_blob[mine],
                    blob,
                )
            )
        self._send(new_routes, packets)

    def _send(self, new_routes: list[list[tuple]], packets: list | None) -> None:
        for k, conn in enumerate(self.connections):
            batch = packets[k] if packets is not None else None
            rtp = self._rtp if k == RTP_WORKER and self._rtp else None
            if not (self._ended[k] or self._dropped[k] or new_routes[k] or batch is not None or rtp):
                continue
            conn.send((identity_columns(self._ended[k]), self._dropped[k], new_routes[k], batch, rtp))
            self._ended[k] = []
            self._dropped[k] = []
            if rtp:
                self._rtp = []
        self._batches_sent += 1
        if self._batches_sent == WARMUP_AFTER_BATCHES:
            warmup.start()

    def facts(self, f):
        """A flow ended: its owner takes its facts (after the packets already shipped)."""
        owner = owner_of(f.flow_id, self.n)
        st = f.state
        if st is not None and st.route == ROUTE_DNS:
            for k in range(self.n):
                if k != owner:
                    self._dropped[k].append(f.flow_id)
        f.state = None
        self._ended[owner].append(f)
        return None

    def close(self, defer_pickled_rows, while_waiting=None) -> list:
        """Flush the last ended flows, stop the workers and return their results. Each worker's
        deferred flows follow its result in pickled blocks of at most ``DEFERRED_BLOCK_ROWS``;
        they go to ``defer_pickled_rows(count, blob)`` as they arrive, worker after worker, each
        in the order it deferred them, so one block at a time is held here, and as bytes.
        ``while_waiting()`` runs once everything is sent, while the workers finish."""
        self._send([[] for _ in range(self.n)], None)
        warmup.start()  # a no-op unless the capture had fewer batches than WARMUP_AFTER_BATCHES
        for conn in self.connections:
            conn.send(None)
        if while_waiting is not None:
            while_waiting()
        parts = []
        for conn in self.connections:
            parts.append(conn.recv())
            while (block := conn.recv()) is not None:
                defer_pickled_rows(*block)
        return parts


def _dissect_worker(conn, k: int, n: int, signatures, rtp_streams, reader=None) -> None:
    """One worker: replay the shipped packets into a PayloadStage that owns flows k mod n.

    ``reader`` is the capture's reader when its file is mapped (``CaptureReader.mapped_bytes``,
    inherited through fork): payloads at file offsets are read from that mapping, and its pages
    are released from this process as the batches pass, as the reading process does.
    """
    from inspector.labels import PENDING, FlowLabeller
    from inspector.payloads import FlowInspection, PayloadStage, open_inspections, payloads_at

    lower_priority(WORKER_NICENESS)
    stage = PayloadStage(partition=(k, n))
    # Its spill file's blocks are the messages that carry the deferred flows back at the end.
    labeller = FlowLabeller(signatures, deferred_in_memory=DEFERRED_BLOCK_ROWS - 1)
    streams = rtp_streams if k == RTP_WORKER else None
    states: dict[int, FlowInspection] = {}
    labelled_ids = array("q")  # 8 bytes per flow, not a Python int each
    labelled_codes = array("i")
    file_view = None
    if reader is not None:
        file_view = memoryview(reader.mapped_bytes())
    released_to = 0
    # The worker keeps tens of thousands of flows' dissectors alive, like the reading process of a
    # one-process run: the automatic collector's walks over them cost ~0.7 s of CPU per worker on
    # the benchmark capture, so it is paused here too, with a tick per message (one per batch).
    with paused_collector() as collector:
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the reading process stopped (an error there): nothing to report
                return
            if message is None:
                break
            collector.tick()
            ended, dropped, new_routes, batch, rtp = message
            for columns in rtp or ():
                streams.add(*columns)
            stage.take_ended(ended, states, labeller, PENDING, labelled_ids, labelled_codes)
            for flow_id in dropped:
                states.pop(flow_id, None)
            open_inspections(states, new_routes)
            if batch is None:
                continue
            fids, from_client, ts, seqs, first_bytes, at, lengths, in_blob, blob = batch
            # Every shipped flow's route came first (``open_inspections``).
            payloads = payloads_at(file_view, blob, at, lengths, in_blob)
            stage.dissect_shipped(states, fids, from_client, ts, seqs, first_bytes, payloads.__getitem__)
            if reader is not None and not in_blob.all():
                # Later messages only hold later batches' payloads, which start past these.
                end = int((at + lengths)[~in_blob].max())
                reader.release_pages(released_to, end)
                released_to = max(released_to, end - end % mmap.PAGESIZE)
    labels = (
        np.frombuffer(labelled_ids, dtype=np.int64),
        np.frombuffer(labelled_codes, dtype=np.int32),
        labeller.book.rows,
    )
    conn.send((labels, stage.errors, stage.packets_inspected, streams))
    # The deferred flows' facts follow in bounded messages, as the pickled blocks the spill file
    # holds (the reader files them as they are, unpickled only by ``resolve``); None ends them.
    for count, blob in labeller.take_deferred_pickled():
        conn.send((count, blob))
    conn.send(None)
    conn.close()


def process_capture_parallel(path: str | Path, options: AnalyzeOptions, workers: int, signatures) -> CaptureResult:
    """Like ``pipeline.process_capture`` with the payload stage, collectors and a labeller, with
    the dissectors in ``workers`` processes."""
    from inspector.collect import ActivityCollector, RtpCollector
    from inspector.labels import FlowLabeller

    # Opened (a bad file raises its CaptureError here) and mapped before the workers are
    # forked, so that they share the mapping (``feed``).
    reader = open_capture(path, batch_size=options.batch_size)
    reader.hash_after_reading = True  # the workers and this process keep every core busy meanwhile
    reader.first_batch_size = FIRST_BATCH_PACKETS
    file_bytes = reader.mapped_bytes()
    ctx = multiprocessing.get_context("fork")
    warmup.wait()  # an import on the warm-up thread ends before the forks, not inside them (forked.start)
    connections, processes = [], []
    for k in range(workers):
        ours, theirs = ctx.Pipe()
        args = (theirs, k, workers, signatures, RtpCollector().new_streams(), reader if file_bytes is not None else None)
        p = ctx.Process(target=_dissect_worker, args=args, daemon=True)
        p.start()
        theirs.close()
        connections.append(ours)
        processes.append(p)
    # The capture's hashing process (``prehash``) is paused while the packets are read, unless
    # the run leaves a core idle meanwhile (``idlecores``: a long call's few flows).
    reader.hash_gate = IdleCores([p.pid for p in processes], usable_cores())
    shipper = PayloadShipper(connections, file_bytes)
    rtp = RtpCollector(fold=shipper.fold_rtp)
    activity = ActivityCollector()
    labeller = FlowLabeller(signatures)
    try:
        result = process_capture(path, options, None, shipper, (activity, rtp), reader=reader)
        # The workers' last batches take ~0.1 s on the benchmark: the buckets' sort fits in it.
        # Their results and deferred facts make tens of thousands of objects: unpaused, the
        # collector walked every object of this process three times meanwhile (~55 ms).
        with paused_collector():
            parts = shipper.close(labeller.defer_pickled_rows, while_waiting=activity.sort_ranges)
    except (BrokenPipeError, EOFError) as e:
        # A worker died (killed, out of memory): its share of the facts is lost, so the run fails.
        raise InspectorError(f"{path}: a dissect worker stopped unexpectedly ({e.__class__.__name__})") from e
    finally:
        for conn in connections:
            conn.close()  # a worker still waiting for packets sees EOF and exits
        for p in processes:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    errors: Counter = Counter()
    inspected = 0
    for (flow_ids, codes, book_rows), part_errors, part_inspected, streams in parts:
        if streams is not None:
            rtp.adopt_streams(streams)
        # The worker's codes index its own book: re-map them into the run's.
        result.flows.set_labels(flow_ids, labeller.book.codes_of(book_rows)[codes])
        errors.update(part_errors)
        inspected += part_inspected
    # Every worker dissected every DNS packet; one process would have counted each once.
    inspected -= (workers - 1) * shipper.dns_packets_shipped
    result.labeller = labeller
    result.payloads = MergedPayloads(errors, inspected)
    return result
