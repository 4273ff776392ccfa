"""Naming and classification labels of finished flows, decided as each flow ends.

A flow's facts are final when it ends (``pipeline.process_batches``), and its verdict depends on
its own facts only, except for P2P media with no service of its own (``classify.cross_flow_target``),
which ``classify_all``'s cross-flow rules may attribute through other flows' STUN. So the labeller
classifies every flow at once and keeps a small integer for it: a code into a ``LabelBook`` of
distinct label tuples (a run has thousands of flows to the same few servers, names and evidence
strings). Only the targets wait, their facts kept, and the flows that lend the rules something
(``classify.cross_flow_source``: STUN to a named service's server, a STUN USERNAME) keep a
small tuple beside their final label; ``resolve`` applies the rules to the targets in flow-id
order, exactly as ``classify_all`` over every flow would.
"""

from __future__ import annotations

from array import array
from typing import Final

import numpy as np

from inspector.classify import (
    CrossFlowSource,
    VerdictCache,
    attribute_across_flows,
    cross_flow_relevant,
    cross_flow_source,
    cross_flow_target,
)
from inspector.facts import DetectorHit, FlowFacts, facts_from_row, facts_to_row
from inspector.spill import SpilledItems
from inspector.summarize import LABEL_NAMES

#: The flows.csv columns a label tuple holds, in order: every label column but the call stage's.
LABEL_COLUMNS: Final = tuple(name for name in LABEL_NAMES if name != "session_id")
#: Code of the all-empty label (no payload inspection, or nothing recognised).
EMPTY: Final = 0
#: A flow whose label is not known yet (cross-flow rules, or a parallel worker's verdict).
PENDING: Final = -1
#: What a deferred item (flow id, kind, value) holds: a target's facts as ``facts_to_row``'s row,
#: or a source's ``CrossFlowSource``.
TARGET: Final = 0
SOURCE: Final = 1


class LabelBook:
    """Distinct label tuples (one value per ``LABEL_COLUMNS``) and their codes, from 0."""

    def __init__(self) -> None:
        empty = ("",) * len(LABEL_COLUMNS)
        self.rows: list[tuple[str, ...]] = [empty]
        self._codes: dict[tuple[str, ...], int] = {empty: EMPTY}

    def __len__(self) -> int:
        return len(self.rows)

    def code(self, row: tuple[str, ...]) -> int:
        code = self._codes.get(row)
        if code is None:
            code = self._codes[row] = len(self.rows)
            self.rows.append(row)
        return code

    def codes_of(self, rows: list[tuple[str, ...]]) -> np.ndarray:
        """This book's code for each of another book's rows (to re-map that book's codes)."""
        return np.array([self.code(tuple(row)) for row in rows], dtype=np.int32)

    def columns(self) -> dict[str, np.ndarray]:
        """Per label column: the value of each code (object arrays indexed by code)."""
        return {
            name: np.array([row[i] for row in self.rows], dtype=object) for i, name in enumerate(LABEL_COLUMNS)
        }


def label_row(f: FlowFacts, v) -> tuple[str, ...]:
    return (
        f.app_protocol, f.server_name, f.name_source, v.service, v.organisation, v.kind, v.category, v.role,
        v.evidence, v.confidence,
    )  # fmt: skip


class FlowLabeller:
    """Labels each flow as it ends (``label``); the cross-flow targets at the end (``resolve``)."""

    def __init__(self, signatures, book: LabelBook | None = None, deferred_in_memory: int | None = None) -> None:
        self.signatures = signatures
        self.book = book if book is not None else LabelBook()
        self._verdict = VerdictCache(signatures)
        # (flow id, TARGET or SOURCE, facts row or source tuple): beyond a few thousand, they wait
        # on disk (spill.py), so a live capture running for hours does not hold every P2P flow's
        # facts in memory. ``deferred_in_memory``: how many (``spill.DEFAULT_LIMIT_ITEMS`` if
        # None); they are written in blocks of one more.
        self._deferred = SpilledItems(deferred_in_memory)

    def label(self, flow_id: int, facts: FlowFacts) -> int:
        """The flow's label code, or ``PENDING`` when the cross-flow rules may still change it."""
        v = self._verdict(facts)
        if cross_flow_relevant(facts):
            if cross_flow_target(facts, v, self.signatures):
                self._deferred.append((flow_id, TARGET, facts_to_row(facts)))
                return PENDING
            source = cross_flow_source(facts, v, self.signatures)
            if source is not None:
                self._deferred.append((flow_id, SOURCE, source))
        return self.book.code(label_row(facts, v))

    def defer_pickled_rows(self, count: int, blob: bytes) -> None:
        """Keep ``count`` deferred items given as a block of ``take_deferred_pickled`` (a parallel
        worker's): written to disk as they are, never unpickled here before ``resolve``."""
        self._deferred.append_pickled(count, blob)

    @property
    def deferred_count(self) -> int:
        """Targets and sources kept for ``resolve``."""
        return len(self._deferred)

    def take_deferred_pickled(self):
        """The deferred items (flow id, TARGET or SOURCE, value), in the order deferred, as
        (count, pickled list of count items) blocks of at most ``deferred_in_memory + 1`` items,
        read from disk one at a time as they are consumed; they are no longer kept."""
        return self._deferred.take_pickled_blocks()

    def resolve(self) -> tuple[np.ndarray, np.ndarray]:
        """(flow ids, label codes) of the targets, with ``classify_all``'s cross-flow rules
        applied to them in flow-id order; the deferred items are released."""
        flow_ids, facts, sources = _deferred_by_flow_id(self._deferred.take_blocks())
        targets = [(flow_id, f, self._verdict(f)) for flow_id, f in zip(flow_ids.tolist(), facts)]
        verdicts = attribute_across_flows(targets, sources, self.signatures)
        codes = np.fromiter(
            (self.book.code(label_row(f, v)) for f, v in zip(facts, verdicts)), dtype=np.int32, count=len(facts)
        )
        return flow_ids, codes


def _deferred_by_flow_id(blocks) -> tuple[np.ndarray, list[FlowFacts], list[tuple[int, CrossFlowSource]]]:
    """The targets' flow ids (sorted) and facts, and the sources as (flow id, source) sorted by
    flow id, from blocks of deferred items read one block at a time (each block's items are
    dropped once read); the targets' equal values shared (``_SharedFacts``)."""
    shared = _SharedFacts()
    flow_ids = array("q")
    facts: list[FlowFacts] = []
    sources: list[tuple[int, CrossFlowSource]] = []
    for block in blocks:
        for flow_id, kind, value in block:
            if kind == TARGET:
                flow_ids.append(flow_id)
                facts.append(shared.facts(value))
            else:
                sources.append((flow_id, value))
    ids = np.frombuffer(flow_ids, dtype=np.int64) if flow_ids else np.zeros(0, dtype=np.int64)
    order = np.argsort(ids, kind="stable")  # flow ids are unique: the order sorted() would give
    sources.sort()  # flow ids are unique: only they are compared
    return ids[order], [facts[i] for i in order.tolist()], sources


class _SharedFacts:
    """``facts_from_row`` with one object per distinct value of the fields flows repeat: a host's
    address, the protocol and name strings, the detector hits and attribute tuples (a call's STUN
    and media flows carry the same few). Unpickled rows hold a copy of each per block, and
    ``classify_all`` holds every deferred flow's facts at once, so sharing them bounds what a flow
    costs beyond its own FlowFacts. Values only: the facts are equal to ``facts_from_row``'s."""

    def __init__(self) -> None:
        self._values: dict = {}
        self._hits: dict[tuple, tuple[DetectorHit, ...]] = {}

    def _one(self, value):
        return self._values.setdefault(value, value)

    def _hits_of(self, raw: tuple) -> tuple[DetectorHit, ...]:
        hits = self._hits.get(raw)
        if hits is None:
            hits = self._hits[raw] = tuple(DetectorHit(*h) for h in raw)
        return hits

    def facts(self, row: tuple) -> FlowFacts:
        return facts_from_row(row, self._one, self._hits_of)


__all__ = ["EMPTY", "LABEL_COLUMNS", "PENDING", "FlowLabeller", "LabelBook", "label_row"]
