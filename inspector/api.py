"""``analyze(paths) -> Analysis``: the Python API the CLI is a thin shell around."""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from inspector._version import __version__
from inspector import export, forked, native, prehash
from inspector.apart import CaptureReadApart
from inspector.errors import CaptureError, InspectorError
from inspector.export import FORMATS, write_frames, write_manifest, write_table
from inspector.flows_csv import EarlyFlowsCsv
from inspector.gcpause import return_free_memory
from inspector.batch import PacketBatch
from inspector.pipeline import AnalyzeOptions, BatchProgress, CaptureResult, process_batches, process_capture
from inspector.schema import DESTINATION_COLUMNS, MEDIA_COLUMNS, SESSION_COLUMNS, empty_frame
from inspector.flows import forget_endpoint_texts
from inspector.summarize import CaptureFlows, FinishedFlows, plain_chunks_of

if TYPE_CHECKING:  # pandas is imported where frames are made: the packet path never needs it
    import pandas as pd

TABLES = ("flows", "sessions", "destinations", "media")

#: flows.csv in a parallel run (``Analysis.write``): rows per slice, and the share of the slices
#: this process writes while a forked one writes the rest. Measured on the benchmark capture
#: (59.5 k flows, 2 cores): flows.csv is ~0.26 s of CPU, the other three tables ~0.11 s and the
#: terminal answer ~0.07 s, so this process keeps about a third of the rows, or a sixth when it
#: also prints the answer. Weakness: a fixed guess; a capture of few flows and many calls
#: leaves the forked process waiting.
SPLIT_SLICE_ROWS = 4096
SPLIT_SHARE = 1 / 3
SPLIT_SHARE_BUSY = 1 / 6


@dataclass(slots=True)
class Analysis:
    """The result of ``analyze``: one DataFrame per table and the manifest.

    flows           one row per bidirectional flow (schema.FLOW_COLUMNS), made from
                    ``finished_flows`` on first use
    finished_flows  the same table in compact form (``summarize.FinishedFlows``): ``write``
                    streams it, so writing flows.csv never needs the whole frame in memory
    manifest        chain of custody: tool version, inputs with SHA-256 and decode statistics ...
    warnings        one line each (truncated captures ...), also in the manifest
    sessions        one row per detected call (schema.SESSION_COLUMNS)
    destinations    who received data during each call, and outside calls (schema.DESTINATION_COLUMNS)
    media           one row per RTP stream of a call (schema.MEDIA_COLUMNS)
    """

    finished_flows: FinishedFlows
    _manifest: dict
    warnings: list[str] = field(default_factory=list)
    sessions: pd.DataFrame = field(default_factory=lambda: empty_frame(SESSION_COLUMNS))
    destinations: pd.DataFrame = field(default_factory=lambda: empty_frame(DESTINATION_COLUMNS))
    media: pd.DataFrame = field(default_factory=lambda: empty_frame(MEDIA_COLUMNS))
    #: Service id -> the signature's display name, from the signature set the run used (extra
    #: ``--signatures`` included); None when the run loaded none (``--flows-only``).
    service_names: dict[str, str] | None = None
    _flows: pd.DataFrame | None = field(default=None, repr=False)
    #: flows.csv's rows being formatted in a forked process (``AnalyzeOptions.prepare_flows_csv``),
    #: for the first ``write`` as CSV; None when there is none or it was used or discarded.
    _early_flows_csv: EarlyFlowsCsv | None = field(default=None, repr=False)
    #: (manifest input entry, its capture's stats) whose "sha256" is filled in on first use of
    #: ``manifest``: an uncompressed file's digest is computed by a background thread of
    #: the lowest priority (``capture.files.HASH_NICENESS``), needed only for the manifest.
    _unhashed_inputs: list[tuple[dict, object]] = field(default_factory=list, repr=False)

    @property
    def manifest(self) -> dict:
        """The chain-of-custody dict, complete: reading it waits for an input's SHA-256 that is
        still being computed."""
        for entry, stats in self._unhashed_inputs:
            entry["sha256"] = stats.sha256  # type: ignore[attr-defined]
        self._unhashed_inputs = []
        return self._manifest

    @property
    def flows(self) -> pd.DataFrame:
        """The flows table as one DataFrame (made once, on first use)."""
        if self._flows is None:
            self._flows = self.finished_flows.frame()
        return self._flows

    def largest_flows(self, n: int) -> pd.DataFrame:
        """The ``n`` flows with the most bytes both ways, most first, without making the whole
        flows frame."""
        if self._flows is not None:
            total = self._flows["client_to_server_bytes"] + self._flows["server_to_client_bytes"]
            return self._flows.loc[total.nlargest(n).index].reset_index(drop=True)
        return self.finished_flows.largest(n)

    def call_summaries(self) -> list[str]:
        """A short readable answer per call, and one line for activity outside calls."""
        from inspector.report import call_summaries

        return call_summaries(self, self.service_names)

    def write(
        self, out_dir: str | os.PathLike, fmt: str = "csv", while_writing: Callable[[], None] | None = None
    ) -> list[Path]:
        """Write every table as ``fmt`` and manifest.json (listing each output's SHA-256).

        The flows table is written slice by slice from ``finished_flows`` unless ``flows`` was
        already made (then that frame is written, as the caller sees it). A run allowed several
        processes (``--workers``) writes flows.csv in a forked one while the other tables are
        written here (``forked.py``). ``while_writing`` (the command's terminal answer) is
        called once the other tables are written: while that process writes, when there is
        one, else before the manifest; this process then keeps less of flows.csv to itself.
        """
        if fmt not in FORMATS:
            raise InspectorError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InspectorError(f"{out}: cannot create output directory: {e.strerror}") from e
        written = []
        split = None  # flows.csv written in two parts (_SplitFlowsCsv)
        early, self._early_flows_csv = self._early_flows_csv, None
        if early is not None and (self._flows is not None or fmt != "csv"):
            early.discard()
            early = None
        try:
            for t in TABLES:
                path = out / f"{t}.{fmt}"
                if t == "flows" and early is not None:
                    early.send(path, self.finished_flows)
                    written.append(path)
                elif t == "flows" and self._flows is None and fmt == "csv":
                    split = self._start_flows_csv(path, while_writing is not None)
                    written.append(path)
                elif t == "flows" and self._flows is None:
                    written.append(write_frames(self.finished_flows.chunks(export.CHUNK_ROWS), path, fmt))
                else:
                    written.append(write_table(getattr(self, t), path, fmt))
            if while_writing is not None:
                while_writing()
            if split is not None:
                split.finish()
            if early is not None:
                early.finish()
        except BaseException:
            if split is not None:
                split.job.discard()
            if early is not None:
                early.discard()
            raise
        finally:
            if split is not None:
                split.rest.unlink(missing_ok=True)
        return written + [write_manifest(self.manifest, out, written)]

    def _start_flows_csv(self, path: Path, more_to_do: bool) -> _SplitFlowsCsv | None:
        """Write flows.csv from the compact table; or, in a run allowed several processes, fork
        one that writes its later rows beside it while this process writes the other tables
        (``_SplitFlowsCsv``; None when the file was written here). This process keeps the first
        ``SPLIT_SHARE`` of the slices, or ``SPLIT_SHARE_BUSY`` when it has ``more_to_do``."""
        slices = list(self.finished_flows.slices(SPLIT_SLICE_ROWS))
        first = round(len(slices) * (SPLIT_SHARE_BUSY if more_to_do else SPLIT_SHARE))
        if first and self._manifest.get("options", {}).get("workers", 1) > 1:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
            os.close(fd)
            rest = Path(name)
            job = forked.start("flows.csv", export.write_plain_csv, plain_chunks_of(slices[first:]), rest, False)
            if job is not None:
                return _SplitFlowsCsv(slices[:first], path, job, rest)
            rest.unlink()
        export.write_plain_csv(plain_chunks_of(slices), path)
        return None


@dataclass(frozen=True)
class _SplitFlowsCsv:
    """flows.csv being written in two parts: ``job`` (a forked process) writes the rows of the
    later slices, without the header, to ``rest``; ``finish`` writes the first slices to
    ``path`` and appends ``rest`` once the job is done."""

    first: list
    path: Path
    job: forked.Forked
    rest: Path

    def finish(self) -> None:
        export.write_plain_csv(plain_chunks_of(self.first), self.path)
        self.job.result()  # the rest is written; raises what the child raised
        with open(self.path, "ab") as whole, open(self.rest, "rb") as tail:
            shutil.copyfileobj(tail, whole, 1 << 20)


def _check_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise CaptureError(str(path), "no such file")
        if path.is_dir():
            raise CaptureError(str(path), "is a directory, not a capture file")
        out.append(path)
    return out


def _iso(ns: int | None) -> str | None:
    import pandas as pd
    if ns is None:
        return None
    return pd.Timestamp(ns, unit="ns", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _input_entry(r: CaptureResult) -> dict:
    s = r.reader_stats
    entry = {
        "path": r.path,
        "name": r.name,
        "bytes": s.size_bytes,
        "sha256": "",  # filled in by Analysis.manifest (its digest may still be in the making)
        "format": s.format,
        "compression": s.compression,
        "packets": s.records_read,
        "first_timestamp": _iso(s.first_ts_ns),
        "last_timestamp": _iso(s.last_ts_ns),
        "link_types": list(s.link_types),
        "truncated": bool(s.truncated),
        "truncation_detail": s.truncation_detail,
        "records_skipped_by_reader": dict(s.records_skipped),
        "decode": r.decode.as_dict(),
        "flows": len(r.flows),
    }
    # Records the reader could not even hand out (caplen > snaplen ...) are skipped packets too.
    reader_skipped = sum(s.records_skipped.values())
    d = entry["decode"]
    d["packets_read"] += reader_skipped
    d["packets_skipped"] += reader_skipped
    for reason, n in s.records_skipped.items():
        d["skipped_by_reason"][reason] = d["skipped_by_reason"].get(reason, 0) + n
    entry.update(getattr(s, "manifest_extra", None) or {})
    if r.payloads is not None:
        entry["payload_packets_inspected"] = r.payloads.packets_inspected
        entry["dissect_errors"] = dict(sorted(r.payloads.errors.items()))
    return entry


def _labeller(signatures):
    if signatures is None:
        return None
    from inspector.labels import FlowLabeller

    return FlowLabeller(signatures)


def _capture_flows(r: CaptureResult) -> CaptureFlows:
    """The capture's flows table from its records: the cross-flow labels are decided first."""
    labels = None
    if r.labeller is not None:
        r.flows.set_labels(*r.labeller.resolve())
        labels = r.labeller.book.columns()
    return CaptureFlows(r.name, r.flows.records(), labels)


def _flows_frame(r: CaptureResult) -> pd.DataFrame:
    """The capture's flows table as a DataFrame."""
    return FinishedFlows([_capture_flows(r)]).frame()


def analyze(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    options: AnalyzeOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    command_line: Sequence[str] | None = None,
) -> Analysis:
    """Analyse captures (pcap/pcapng, optionally gzip-compressed) into tables.

    ``progress(path, bytes_done, bytes_total)`` is called as each capture is read.
    Raises CaptureError (missing file, directory, empty, not a capture) before reading anything.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    options = options or AnalyzeOptions()
    inputs = _check_inputs(paths)
    prehash.start(inputs)  # the manifest's SHA-256 begun beside the signatures (the command line began it already)
    signatures = _signature_set(options)
    created = _now_iso()
    if options.workers > 1 and len(inputs) > 1:
        results = _read_files(inputs, options, signatures, progress)
    else:
        results = [_read_here(path, options, signatures, progress) for path in inputs]
    return _build_analysis(results, signatures, options, created, command_line)


def _read_here(path: Path, options: AnalyzeOptions, signatures, progress) -> CaptureResult:
    """One capture read by this process (its dissection split over ``options.workers``
    processes, ``parallel.py``, when it may use several)."""
    total = path.stat().st_size
    cb = None
    if progress is not None:
        cb = lambda done, _p=str(path), _t=total: progress(_p, done, _t)  # noqa: E731
    if options.workers > 1 and options.inspect_payloads:
        from inspector.parallel import process_capture_parallel

        # A bad file raises its CaptureError there, before any worker is forked.
        result = process_capture_parallel(path, options, options.workers, signatures)
        if cb is not None:
            cb(total)
        return result
    return process_capture(path, options, cb, _payload_stage(options), _collectors(options), _labeller(signatures))


def _read_files(
    paths: list[Path], options: AnalyzeOptions, signatures, progress
) -> list[CaptureResult | CaptureReadApart]:
    """Several captures with several processes (``apart.py``): a file far larger than the rest
    read here first with every core, the others each whole by one of N processes that take
    them in turn."""
    from inspector import apart
    from inspector.collect import buckets_of_sorted_rows

    sizes = [p.stat().st_size for p in paths]
    alone = apart.alone_files(sizes, options.workers)
    results: list = [None] * len(paths)
    for i in sorted(alone):
        results[i] = _read_here(paths[i], options, signatures, progress)
    shared = [i for i in range(len(paths)) if i not in alone]

    def arrived(k: int, r: CaptureReadApart) -> None:
        if r.activity is not None:
            r.activity = buckets_of_sorted_rows(r.name, r.activity)
        if progress is not None:
            i = shared[k]
            progress(str(paths[i]), sizes[i], sizes[i])

    # What reading a capture imports is imported here once the first process has started, so
    # that every later one inherits it rather than importing it again.
    read = apart.map_in_processes(
        _read_apart, [(paths[i], options, signatures) for i in shared], options.workers, arrived, import_for_reading
    )
    for i, r in zip(shared, read):
        results[i] = r
    return results


#: The modules a one-process reading of a capture imports where it first needs them (the
#: dissectors, the collectors, pandas for the tables, ``cryptography`` for QUIC Initials):
#: ~50 ms for each process that reads a capture apart, imported once instead.
READING_MODULES = (
    "pandas",
    "inspector.payloads",
    "inspector.collect",
    "inspector.naming",
    "inspector.dissect.detectors",
    "inspector.dissect.quic",
    "inspector.dissect.x509names",
)


def import_for_reading() -> None:
    """Import ``READING_MODULES`` (one that fails to import is left to its first user)."""
    import importlib

    for name in READING_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _read_apart(path: Path, options: AnalyzeOptions, signatures):
    """In a serving process (``apart.map_in_processes``): read ``path`` as a one-process run
    does and make what the table stage needs of it (``apart.CaptureReadApart``)."""
    r = process_capture(path, options, None, _payload_stage(options), _collectors(options), _labeller(signatures))
    entry = _input_entry(r)
    stats = r.reader_stats
    stats.sha256 = stats.sha256  # waits for the digest: a text pickles, the function that waits does not
    activity, rtp, rtcp = _collected(r)
    if activity is not None:
        activity = activity.sorted_rows()
    r.payloads = None
    return CaptureReadApart(r.path, r.name, entry, stats, _capture_flows(r), activity, rtp, rtcp)


def analyze_batches(
    batches: Iterable[PacketBatch],
    name: str,
    reader_stats: Callable[[], object],
    options: AnalyzeOptions | None = None,
    command_line: Sequence[str] | None = None,
    path: str | None = None,
    on_batch: Callable[[BatchProgress], None] | None = None,
    signatures=None,
) -> Analysis:
    """Analyse a stream of PacketBatch (a live capture) into the same tables as ``analyze``.

    ``reader_stats()`` is called once the stream has ended and returns an object with the fields
    of ``capture.files.CaptureStats`` (the manifest's input entry); a ``manifest_extra`` dict
    attribute on it is added to that entry (interface, filter, evidence file, kernel drops).
    ``on_batch(BatchProgress)`` after each batch: see ``pipeline.process_batches``. ``signatures``: an already
    loaded SignatureSet (else loaded from ``options``). Reading a file through ``analyze`` and
    the same packets through this function give the same tables.
    """
    options = options or AnalyzeOptions()
    if signatures is None:
        signatures = _signature_set(options)
    created = _now_iso()
    result = process_batches(
        batches, path or name, name, reader_stats, options, _payload_stage(options), _collectors(options), on_batch,
        _labeller(signatures),
    )  # fmt: skip
    return _build_analysis([result], signatures, options, created, command_line)


def _signature_set(options: AnalyzeOptions):
    if not options.inspect_payloads:
        return None
    from inspector.signatures import load_signatures

    return load_signatures(tuple(options.signature_dirs))


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _payload_stage(options: AnalyzeOptions):
    if not options.inspect_payloads:
        return None
    from inspector.payloads import PayloadStage

    return PayloadStage()


def _collectors(options: AnalyzeOptions) -> tuple:
    """The per-batch collectors every capture runs through (one fresh set per capture): the
    call stage needs per-flow activity in time buckets and the RTP headers of media packets."""
    if not options.inspect_payloads:
        return ()
    from inspector.collect import ActivityCollector, RtpCollector

    return (ActivityCollector(), RtpCollector())


def _concat_released(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The frames as one, emptying the list (so only the result keeps their data alive)."""
    import pandas as pd
    parts = frames[:]
    frames.clear()
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def _take_all(items: list) -> list:
    """The list's items in a new list, emptying it (so only the callee keeps them alive)."""
    taken = items[:]
    items.clear()
    return taken


def _collected(r: CaptureResult) -> tuple:
    """(activity buckets, RTP stream segments, RTCP reports) that a capture's collectors hand
    over (``collect.ActivityCollector``, ``collect.RtpCollector``: a run has both or neither);
    Nones without them."""
    from inspector.collect import ActivityCollector, RtpCollector

    activity = rtp = rtcp = None
    for c in r.collectors:
        if isinstance(c, ActivityCollector):
            activity = c.buckets(r.name)
        elif isinstance(c, RtpCollector):
            rtp, rtcp = c.take_frame(r.name), c.rtcp_frame(r.name)
    return activity, rtp, rtcp


def _call_tables(results: list[CaptureResult | CaptureReadApart], flows: FinishedFlows, options: AnalyzeOptions):
    """sessions, destinations and media from the collectors; fills the flows' session_id."""
    from inspector.sessions import build_calls

    activity, rtp, rtcp = [], [], []
    for r in results:
        if isinstance(r, CaptureReadApart):
            collected = (r.activity, r.rtp, r.rtcp)
            r.activity = r.rtp = r.rtcp = None
        else:
            collected = _collected(r)
        if collected[0] is not None:
            activity.append(collected[0])
            rtp.append(collected[1])
            rtcp.append(collected[2])
    if not activity:
        return None
    # The buckets and frames are handed over as temporaries: build_calls drops them once it has
    # the buckets it needs, before the destinations are built (the run's peak memory).
    tables = build_calls(
        flows,
        _take_all(activity),
        _concat_released(rtp),
        _concat_released(rtcp),
        merge=options.merge,
        # A run allowed several processes counts the destinations in a second one.
        fork_destinations=options.workers > 1,
    )
    if len(tables.flow_session):
        flows.set_session_ids(tables.flow_session)
    return tables


def _build_analysis(
    results: list[CaptureResult | CaptureReadApart], signatures, options: AnalyzeOptions, created: str, command_line
) -> Analysis:
    """The tables and manifest from processed captures: the one place both ``analyze`` and
    ``analyze_batches`` build them."""
    from inspector.gcpause import paused_collector

    # Building the tables makes objects per flow while every flow's facts stay alive: without
    # the pause, the automatic collector walks them all again and again (gcpause docstring).
    with paused_collector():
        return _build_tables(results, signatures, options, created, command_line)


def _build_tables(
    results: list[CaptureResult | CaptureReadApart], signatures, options: AnalyzeOptions, created: str, command_line
) -> Analysis:
    # What the reading freed (batches, the flow table's dicts, dissector state) goes back to the
    # system before the tables are built: the run's peak memory is in the call stage.
    return_free_memory()
    parts, inputs, unhashed = [], [], []
    for r in results:
        if isinstance(r, CaptureReadApart):  # its process made these already
            inputs.append(r.entry)
            unhashed.append((r.entry, r.reader_stats))
            parts.append(r.flows_part)
            r.flows_part = None
            continue
        inputs.append(_input_entry(r))
        unhashed.append((inputs[-1], r.reader_stats))
        # The dissectors' state (the DNS answers' name map ...) has given the manifest its
        # counters: it goes before the tables are built, as do the labeller's verdict cache
        # and the store's temporary file once the flows table holds the records and labels.
        r.payloads = None
        forget_endpoint_texts()
        parts.append(_capture_flows(r))
        r.labeller = None
        r.flows.release()
    flows = FinishedFlows(parts)
    return_free_memory()
    early = None
    if options.prepare_flows_csv and options.workers > 1 and options.inspect_payloads:
        early = EarlyFlowsCsv.start(flows)
    try:
        calls = _call_tables(results, flows, options) if options.inspect_payloads else None
    except BaseException:
        if early is not None:
            early.discard()
        raise
    warnings = []
    for r in results:
        s = r.reader_stats
        if s.truncated:
            warnings.append(f"{r.path}: capture is truncated ({s.truncation_detail}); the flows read so far are kept")
    manifest = {
        "tool": "inspector",
        "version": __version__,
        # Which build of the dissectors ran: "compiled" (mypyc) or "pure ..." (inspector.native).
        "dissectors": native.mode,
        "created": created,
        "command_line": list(command_line) if command_line is not None else list(sys.argv),
        "options": {
            "batch_size": options.batch_size,
            "idle_timeout_s": options.idle_timeout_s,
            "inspect_payloads": options.inspect_payloads,
            "merge": options.merge,
            "workers": options.workers,
        },
        "signatures": (
            {"digest": signatures.digest, "count": len(signatures.ids)} if signatures is not None else None
        ),
        "inputs": inputs,
        "warnings": warnings,
    }
    if calls is None:
        return Analysis(flows, manifest, warnings, _unhashed_inputs=unhashed, _early_flows_csv=early)
    return Analysis(
        flows,
        manifest,
        warnings,
        _unhashed_inputs=unhashed,
        _early_flows_csv=early,
        service_names=None if signatures is None else {sig.id: sig.name for sig in signatures.signatures()},
        sessions=calls.sessions,
        destinations=calls.destinations,
        media=calls.media,
    )
