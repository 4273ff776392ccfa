"""One capture on several cores: every worker reads and counts all packets, each dissects a share.

Reading, decoding and flow accounting are vectorised and cheap; the per-packet Python of the
dissectors is what costs. So each of ``n`` worker processes runs the whole columnar path over the
whole capture (flow ids and counters come out identical in every worker, because the flow table is
deterministic), but dissects only the flows whose id is ``k`` modulo ``n`` — plus every DNS flow,
since naming needs all answers. The call stage's collectors are dealt out too (collector ``i`` runs
in worker ``i`` modulo ``n``: activity buckets in worker 0, RTP headers in worker 1 on two cores),
so no worker carries them all. The parent takes the flows and counters from worker 0, each
collector from the worker that ran it and each flow's facts from the worker that owns it, so the
tables are identical to a single-process run whatever ``n`` is (tested).

Weakness: reading and decoding are repeated in every worker, so the speed-up is bounded by the
share of time the dissectors take (Amdahl); on two cores it is about 1.5-1.7x for conferencing
captures.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from inspector.pipeline import AnalyzeOptions, CaptureResult, process_capture


@dataclass(slots=True)
class _Part:
    facts: dict
    errors: Counter
    packets_inspected: int
    result: CaptureResult | None  # worker 0 only: flows, counters, reader stats
    collectors: dict  # position in the run's collector list -> the collector this worker ran


@dataclass(slots=True)
class MergedPayloads:
    """Stands in for the PayloadStage of a parallel run (what the manifest reads of it)."""

    errors: Counter
    packets_inspected: int

    def facts(self, f):  # every flow's facts were taken in its worker
        raise KeyError(f.flow_id)


def _work(args: tuple[str, AnalyzeOptions, int, int]) -> _Part:
    from inspector.collect import ActivityCollector, RtpCollector
    from inspector.payloads import PayloadStage

    path, options, k, n = args
    stage = PayloadStage(partition=(k, n))
    every = (ActivityCollector(), RtpCollector())
    mine = {i: c for i, c in enumerate(every) if i % n == k}
    r = process_capture(path, options, None, stage, tuple(mine.values()))
    owned = {fid: f for fid, f in r.facts.items() if f is not None}
    for f in r.flows:
        f.state = None
    r.payloads = None
    r.facts = {}
    r.collectors = ()
    return _Part(owned, stage.errors, stage.packets_inspected, r if k == 0 else None, mine)


def process_capture_parallel(path: str | Path, options: AnalyzeOptions, workers: int) -> CaptureResult:
    """Like ``pipeline.process_capture`` with the payload stage and collectors, on ``workers`` cores."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        parts = pool.map(_work, [(str(path), options, k, workers) for k in range(workers)])
    base = parts[0].result
    facts: dict = {}
    errors: Counter = Counter()
    inspected = 0
    collectors: dict = {}
    for part in parts:
        facts.update(part.facts)
        errors.update(part.errors)
        inspected += part.packets_inspected
        collectors.update(part.collectors)
    base.facts = facts
    base.collectors = tuple(collectors[i] for i in sorted(collectors))
    base.payloads = MergedPayloads(errors, inspected)
    return base
