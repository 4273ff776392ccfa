"""``analyze(paths) -> Analysis``: the Python API the CLI is a thin shell around."""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from inspector._version import __version__
from inspector.errors import CaptureError, InspectorError
from inspector.export import FORMATS, write_manifest, write_table
from inspector.pipeline import AnalyzeOptions, CaptureResult, process_capture
from inspector.schema import FLOW_COLUMNS, empty_frame
from inspector.summarize import flows_frame

TABLES = ("flows",)


@dataclass(slots=True)
class Analysis:
    """The result of ``analyze``: one DataFrame per table and the manifest.

    flows     one row per bidirectional flow (schema.FLOW_COLUMNS)
    manifest  chain of custody: tool version, inputs with SHA-256 and decode statistics ...
    warnings  one line each (truncated captures ...), also in the manifest
    """

    flows: pd.DataFrame
    manifest: dict
    warnings: list[str] = field(default_factory=list)

    def write(self, out_dir: str | os.PathLike, fmt: str = "csv") -> list[Path]:
        """Write every table as ``fmt`` and manifest.json (listing each output's SHA-256)."""
        if fmt not in FORMATS:
            raise InspectorError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InspectorError(f"{out}: cannot create output directory: {e.strerror}") from e
        written = [write_table(getattr(self, t), out / f"{t}.{fmt}", fmt) for t in TABLES]
        return written + [write_manifest(self.manifest, out, written)]


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
    if ns is None:
        return None
    return pd.Timestamp(ns, unit="ns", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _input_entry(r: CaptureResult) -> dict:
    s = r.reader_stats
    entry = {
        "path": r.path,
        "name": r.name,
        "bytes": s.size_bytes,
        "sha256": s.sha256,
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
    if r.payloads is not None:
        entry["payload_packets_inspected"] = r.payloads.packets_inspected
        entry["dissect_errors"] = dict(sorted(r.payloads.errors.items()))
    return entry


def _labels(r: CaptureResult, signatures) -> list[dict]:
    """Naming and classification columns for each flow of ``r``."""
    from inspector.classify import classify_all

    facts = [r.payloads.facts(f) for f in r.flows]
    verdicts = classify_all(facts, signatures)
    labels = []
    for fact, v in zip(facts, verdicts):
        labels.append(
            {
                "app_protocol": fact.app_protocol,
                "server_name": fact.server_name,
                "name_source": fact.name_source,
                "service": v.service,
                "organisation": v.organisation,
                "kind": v.kind,
                "category": v.category,
                "role": v.role,
                "evidence": v.evidence,
                "confidence": v.confidence,
            }
        )
    return labels


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
    signatures = None
    if options.inspect_payloads:
        from inspector.signatures import load_signatures

        signatures = load_signatures(tuple(options.signature_dirs))
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    results: list[CaptureResult] = []
    for path in inputs:
        total = path.stat().st_size
        cb = None
        if progress is not None:
            cb = lambda done, _p=str(path), _t=total: progress(_p, done, _t)  # noqa: E731
        stage = None
        if options.inspect_payloads:
            from inspector.payloads import PayloadStage

            stage = PayloadStage()
        results.append(process_capture(path, options, cb, stage))

    frames = [
        flows_frame(r.name, r.flows, _labels(r, signatures) if r.payloads is not None else None) for r in results
    ]
    flows = pd.concat(frames, ignore_index=True) if frames else empty_frame(FLOW_COLUMNS)
    warnings = []
    for r in results:
        s = r.reader_stats
        if s.truncated:
            warnings.append(f"{r.path}: capture is truncated ({s.truncation_detail}); the flows read so far are kept")
    manifest = {
        "tool": "inspector",
        "version": __version__,
        "created": created,
        "command_line": list(command_line) if command_line is not None else list(sys.argv),
        "options": {
            "batch_size": options.batch_size,
            "idle_timeout_s": options.idle_timeout_s,
            "inspect_payloads": options.inspect_payloads,
        },
        "signatures": (
            {"digest": signatures.digest, "count": len(signatures.ids)} if signatures is not None else None
        ),
        "inputs": [_input_entry(r) for r in results],
        "warnings": warnings,
    }
    return Analysis(flows=flows, manifest=manifest, warnings=warnings)
