"""``inspector live``: capture from an interface through the whole pipeline, with a live view.

The packets go from ``capture.live.LiveCapture`` (an AF_PACKET socket that writes the evidence
pcapng as packets arrive) through ``api.analyze_batches``, the same function ``analyze`` uses, so
``inspector analyze evidence.pcapng`` afterwards writes the same tables. SIGINT (Ctrl-C) and
SIGTERM end the capture cleanly: the packets already captured are flushed to the evidence file
and counted in the tables; the exit code is then 0.

Exit codes: 0 success; 2 the capture cannot start (no privilege, no such interface, invalid
filter, evidence file not writable), bad options or signature files; 1 failures while working.
Registered in ``inspector.cli`` as ``app.command("live")(live)``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

EVIDENCE_NAME = "evidence.pcapng"


def _fail(message: str, code: int) -> None:
    from rich.console import Console

    # One line: the message is ours, but may quote an interface name or filter the user typed.
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {_escape(message)}", markup=True)
    raise typer.Exit(code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(" ".join(text.split()))


def live(
    interface: str = typer.Option(..., "--interface", "-i", help="Interface to capture on (in this network namespace)."),
    bpf: Optional[str] = typer.Option(None, "--filter", help="BPF filter, tcpdump syntax (e.g. 'udp or tcp port 443')."),
    duration: Optional[float] = typer.Option(None, "--duration", min=0.001, help="Stop after this many seconds."),
    count: Optional[int] = typer.Option(None, "--count", min=1, help="Stop after this many packets."),
    write: Optional[Path] = typer.Option(
        None, "--write", "-w", help=f"Evidence pcapng, written as packets arrive. Default: OUT/{EVIDENCE_NAME}.",
        show_default=False,
    ),
    out: Path = typer.Option(Path("inspector-out"), "--out", "-o", help="Directory for the tables and manifest.json."),
    fmt: str = typer.Option("csv", "--format", "-f", help="Table format: csv, json or parquet."),
    idle_timeout: float = typer.Option(120.0, "--idle-timeout", min=0.001, help="Seconds without packets after which a flow ends."),
    signature_dirs: Optional[list[Path]] = typer.Option(
        None, "--signatures", help="Directory of extra signature files on top of the built-in set (repeatable)."
    ),
    view: Optional[bool] = typer.Option(
        None, "--view/--no-view", help="Live terminal view. Default: on when the output is a terminal.", show_default=False
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No terminal output except warnings and errors."),
) -> None:
    """Capture live (Ctrl-C to stop), show the current call, then write the same tables as analyze
    plus the evidence capture. Stops at --duration or --count if given (whichever comes first)."""
    from rich.console import Console

    from inspector.errors import InspectorError, SignatureError
    from inspector.export import FORMATS

    if fmt not in FORMATS:
        _fail(f"--format {fmt!r}: use one of {', '.join(FORMATS)}", 2)
    from inspector.cli import keep_pyarrow_unloaded

    keep_pyarrow_unloaded(fmt)
    evidence = write if write is not None else out / EVIDENCE_NAME
    if evidence.is_dir():
        _fail(f"--write {evidence}: is a directory; name the evidence pcapng file", 2)
    if evidence.exists():
        # Evidence of an earlier run is never overwritten.
        _fail(f"{evidence} already exists: name a new evidence file with --write, or another --out", 2)

    from inspector.capture.live import LiveCapture, LiveCaptureError
    from inspector.pipeline import AnalyzeOptions

    options = AnalyzeOptions(idle_timeout_s=idle_timeout, signature_dirs=tuple(signature_dirs or ()))
    try:
        from inspector.signatures import load_signatures

        signatures = load_signatures(tuple(options.signature_dirs))
    except SignatureError as e:
        _fail(str(e), 2)
    try:
        capture = LiveCapture(interface, bpf=bpf, duration_s=duration, count=count, evidence_path=evidence)
    except LiveCaptureError as e:
        _fail(str(e), 2)
    # Only now that the capture can start: create the output directory (the evidence goes there).
    for directory in (out, evidence.parent):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _fail(f"{directory}: cannot create output directory: {e.strerror}", 2)

    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    show_view = (console.is_terminal if view is None else view) and not quiet
    previous = _stop_on_signals(capture)
    try:
        analysis = _run(capture, bpf, evidence, options, signatures, duration, count, show_view, console, err, quiet)
        written = analysis.write(out, fmt)
    except LiveCaptureError as e:
        _fail(str(e), 2)
    except InspectorError as e:
        _fail(str(e), 1)
    finally:
        _restore_signals(previous)
    for w in analysis.warnings:
        err.print(f"[yellow]warning:[/] {_escape(w)}", markup=True)
    entry = analysis.manifest["inputs"][0]
    drops = entry.get("packets_dropped_by_kernel")
    if drops:
        err.print(f"[yellow]warning:[/] the kernel dropped {drops:,} packets (socket buffer full): "
                  "they are in neither the evidence nor the tables", markup=True)
    if not quiet:
        from inspector.cli import _render_summary

        _render_summary(console, analysis, 10)  # also the call answer (Analysis.call_summaries)
        console.print(f"evidence {evidence}: {entry['evidence_packets']:,} packets, sha256 {entry['evidence_sha256']}")
        console.print(f"wrote {', '.join(str(p) for p in written)}")


def _stop_on_signals(capture) -> dict:
    """SIGINT and SIGTERM stop the capture, from now until the tables are written.

    LiveCapture installs the same handlers while it reads, and puts these back when it ends; they
    cover the moments before its first read (a signal then ends an empty capture cleanly) and
    after its last (the tables of what was captured are still written, not lost half-way).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda _s, _f: capture.stop())
    return previous


def _restore_signals(previous: dict) -> None:
    import signal

    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _run(capture, bpf, evidence, options, signatures, duration, count, show_view, console, err, quiet):
    """Drive the capture through the pipeline, with the live view when asked."""
    from inspector.api import analyze_batches
    from inspector.streaming import live_input_stats

    def stats():
        return live_input_stats(capture, bpf, evidence, duration, count)

    name = evidence.name
    if not show_view:
        if not quiet:
            # Flushed at once: scripts (and the e2e test) wait for this line to know the capture
            # is about to start.
            err.print(f"capturing on {_escape(capture.interface)} into {_escape(str(evidence))} (Ctrl-C to stop)",
                      markup=False)
            sys.stderr.flush()
        return analyze_batches(capture.batches(), name, stats, options, command_line=sys.argv, path=str(evidence),
                               signatures=signatures)
    from rich.live import Live

    from inspector.live_view import LiveView

    live_view = LiveView(capture.interface, signatures)
    with Live(live_view, console=console, refresh_per_second=2, transient=False, redirect_stderr=False):
        return analyze_batches(capture.batches(), name, stats, options, command_line=sys.argv, path=str(evidence),
                               on_batch=live_view.update, signatures=signatures)
